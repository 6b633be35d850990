//! When to try the hub again after a connection failed, and when to say so in the log.
//!
//! edgeHub runs on the same device and restarts with every deployment, so the module should be
//! back the moment it accepts connections again: a refused TCP connection to a local hub costs
//! next to nothing, and there is no crowd of clients to protect it from. So an unreachable hub is
//! tried every [`FAST`] for the first [`FAST_FOR`], then every [`STEADY`] (200 attempts a
//! minute) for as long as it stays down: alerts resume within half a second of the hub's return,
//! whether it was down for one second or an hour. A hub that answers and refuses the module
//! (wrong identity or key) is different: asking again at once changes nothing, so those attempts
//! back off exponentially from 0.5 s to 30 s. Every delay is jittered by ±20%.
//!
//! A hub that accepts the connection and then drops it is the same as one that refuses: a TLS
//! handshake or CONNECT that fails after the TCP connection was made, or a connection that ends in
//! an error within [`HEALTHY_AFTER`] of its CONNACK (one large alert over TLS did this on every
//! connection, 20,858 CONNECTs a minute). Those back off from 0.5 s to 30 s too: with the jitter at
//! its low end the delays are 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, then 24 s at least, so such a hub gets
//! at most 8 attempts in the first minute and 3 a minute after that. A connection that was healthy
//! for longer (the hub restarting under a module that ran for a while) is followed by an attempt at
//! once, and then the fast retries above: resuming after a hub restart stays as fast as it was.
//!
//! The log gets the first failure, then one line every [`LOG_EVERY`] at most, counting the
//! attempts in between.

use std::time::{Duration, Instant};

/// How often an unreachable hub is tried at first…
pub const FAST: Duration = Duration::from_millis(100);
/// …for this long…
pub const FAST_FOR: Duration = Duration::from_secs(10);
/// …and then.
pub const STEADY: Duration = Duration::from_millis(300);
/// The first and the longest delay after the hub refused the connection.
pub const REFUSED_MIN: Duration = Duration::from_millis(500);
pub const REFUSED_MAX: Duration = Duration::from_secs(30);
/// A connection that ends in an error sooner than this after its CONNACK counts as a failed
/// attempt, and the next one backs off.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// At most one log line about failing attempts this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Failed attempts since the last connection.
#[derive(Debug, Default)]
pub struct Retry {
    down_since: Option<Instant>,
    /// When the current connection's CONNACK came.
    connected_at: Option<Instant>,
    attempts: u64,
    refused_delay: Duration,
    logged_at: Option<Instant>,
    attempts_logged: u64,
    /// [`Failure::Dropped`] failures since the last healthy connection.
    dropped: u64,
}

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Failure {
    /// Nothing answered (the TCP connection was refused or timed out): the hub is down.
    Unreachable,
    /// The hub answered and refused the module (a CONNACK with an error code).
    Refused,
    /// The hub accepted the connection and it failed then: the TLS handshake, the CONNECT, or
    /// the connection itself soon after its CONNACK.
    Dropped,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq)]
pub struct Next {
    /// Wait this long (before jitter) and try again.
    pub delay: Duration,
    /// Log this failure, with how many attempts failed since the last line, if so.
    pub log: Option<u64>,
    /// For how long the hub has been unreachable.
    pub down_for: Duration,
}

impl Retry {
    /// A connection is up (its CONNACK came at `now`). The back-off is kept until the connection
    /// proves healthy ([`Retry::lost`]).
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
        self.down_since = None;
    }

    /// Whether connections keep failing soon after they are accepted (twice or more in a row):
    /// then each new one is not worth a log line of its own, the failures' count line says it.
    pub fn quiet(&self) -> bool {
        self.dropped > 1
    }

    /// The connection ended in an error at `now`. A healthy one (up for [`HEALTHY_AFTER`] or
    /// more) starts over and the next attempt goes at once (None); one that failed sooner counts as
    /// a failed attempt ([`Failure::Dropped`]).
    pub fn lost(&mut self, now: Instant) -> Option<Next> {
        let healthy = self.connected_at.take().is_none_or(|at| now.saturating_duration_since(at) >= HEALTHY_AFTER);
        if healthy {
            *self = Retry::default();
            return None;
        }
        Some(self.failed(now, Failure::Dropped))
    }

    /// An attempt failed at `now`.
    pub fn failed(&mut self, now: Instant, failure: Failure) -> Next {
        let since = *self.down_since.get_or_insert(now);
        self.attempts += 1;
        let down_for = now.saturating_duration_since(since);
        self.dropped += u64::from(failure == Failure::Dropped);
        let delay = match failure {
            Failure::Refused | Failure::Dropped => {
                self.refused_delay = (self.refused_delay * 2).clamp(REFUSED_MIN, REFUSED_MAX);
                self.refused_delay
            }
            Failure::Unreachable if down_for < FAST_FOR => FAST,
            Failure::Unreachable => STEADY,
        };
        let log = match self.logged_at {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => None,
            _ => {
                self.logged_at = Some(now);
                let n = self.attempts - self.attempts_logged;
                self.attempts_logged = self.attempts;
                Some(n)
            }
        };
        Next { delay, log, down_for }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub that accepts every connection and drops it at once gets the refused back-off, and a
    /// log line every [`LOG_EVERY`] with the count, not one per attempt.
    #[test]
    fn a_hub_that_accepts_and_drops_at_once_is_backed_off_from() {
        let mut r = Retry::default();
        let mut now = Instant::now();
        let (mut delays, mut logged) = (Vec::new(), Vec::new());
        let mut attempts_in_first_minute = 0;
        let start = now;
        for _ in 0..12 {
            if now.duration_since(start) < Duration::from_secs(60) {
                attempts_in_first_minute += 1;
            }
            r.connected(now);
            now += Duration::from_millis(5);
            let next = r.lost(now).expect("a connection of 5 ms is a failed attempt");
            delays.push(next.delay.as_millis());
            logged.extend(next.log);
            now += next.delay.mul_f64(0.8); // the jitter at its shortest
        }
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000, 30000]);
        assert!(attempts_in_first_minute <= 8, "{attempts_in_first_minute} attempts in the first minute");
        assert_eq!(logged.iter().sum::<u64>(), 12, "every attempt counted once in the log lines");
        assert!(logged.len() < 12, "not a line per attempt: {logged:?}");
    }

    /// After a healthy connection the hub is tried again at once, then every 100 ms: the resume
    /// after a hub restart is as fast as before.
    #[test]
    fn a_healthy_connection_lost_is_retried_at_once_then_fast() {
        let mut r = Retry::default();
        let now = Instant::now();
        r.connected(now);
        assert_eq!(r.lost(now + HEALTHY_AFTER), None);
        assert_eq!(r.failed(now + HEALTHY_AFTER, Failure::Unreachable).delay, FAST);
        // Even after a run of short-lived connections: a healthy one starts over.
        for i in 0..5 {
            r.connected(now + Duration::from_secs(i));
            r.lost(now + Duration::from_secs(i) + Duration::from_millis(1));
        }
        let later = now + Duration::from_secs(100);
        r.connected(later);
        assert_eq!(r.lost(later + HEALTHY_AFTER), None);
        assert_eq!(r.failed(later + HEALTHY_AFTER, Failure::Dropped).delay, REFUSED_MIN);
    }

    #[test]
    fn an_unreachable_hub_is_tried_fast_then_steadily_and_a_refusal_backs_off() {
        let mut r = Retry::default();
        let now = Instant::now();
        assert_eq!(r.failed(now, Failure::Unreachable).delay, FAST);
        assert_eq!(r.failed(now + FAST_FOR, Failure::Unreachable).delay, STEADY);
        let mut r = Retry::default();
        let delays: Vec<_> = (0..3).map(|_| r.failed(now, Failure::Refused).delay).collect();
        assert_eq!(delays, [REFUSED_MIN, REFUSED_MIN * 2, REFUSED_MIN * 4]);
    }
}
