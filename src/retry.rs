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
/// At most one log line about failing attempts this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Failed attempts since the last connection.
#[derive(Debug, Default)]
pub struct Retry {
    down_since: Option<Instant>,
    attempts: u64,
    refused_delay: Duration,
    logged_at: Option<Instant>,
    attempts_logged: u64,
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
    /// A connection is up: the next failure starts over.
    pub fn connected(&mut self) {
        *self = Retry::default();
    }

    /// An attempt failed at `now`; `refused` when the hub answered and said no.
    pub fn failed(&mut self, now: Instant, refused: bool) -> Next {
        let since = *self.down_since.get_or_insert(now);
        self.attempts += 1;
        let down_for = now.saturating_duration_since(since);
        let delay = if refused {
            self.refused_delay = (self.refused_delay * 2).clamp(REFUSED_MIN, REFUSED_MAX);
            self.refused_delay
        } else if down_for < FAST_FOR {
            FAST
        } else {
            STEADY
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
