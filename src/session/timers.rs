//! The session's deadlines: when the core next wants [`Session::on_timer`], and what it does
//! then (close or save aggregate windows, ping, judge the connection dead, ask for the twin
//! again, report, end a read pause, give up the drain).

use std::time::{Duration, Instant};

use log::warn;
use rumqttc::mqttbytes::v4::Packet;

use super::{Conn, Phase, Session, DEAD_AFTER, KEEP_ALIVE, MAX_OUT, TWIN_TIMEOUT};
use crate::mqtt::LinkError;

impl Session {
    /// When the core next wants [`Session::on_timer`]. Asked every turn: a few compares, and an
    /// addition only for a deadline that is an offset from a time (`Instant + Duration` is
    /// 64-bit arithmetic with overflow checks on armv7) and set at all.
    pub fn deadline(&self) -> Option<Instant> {
        let mut at = match &self.phase {
            Phase::Offline(at) => Some(*at),
            Phase::Up(c) => Some(self.conn_deadline(c)),
            Phase::Stopped => return earliest(self.renew_deadline(), self.draining),
            _ => None,
        };
        at = earliest(at, self.renew_deadline());
        at = earliest(at, self.draining);
        earliest(at, self.aggregates_deadline())
    }

    fn renew_deadline(&self) -> Option<Instant> {
        self.token.renew_at.filter(|_| !self.token.signing)
    }

    /// The connection's earliest deadline: ping, dead peer, twin retry, acknowledgements held,
    /// report, end of a read pause.
    fn conn_deadline(&self, c: &Conn) -> Instant {
        let mut at = c.next_ping.min(self.next_report);
        if let Some(pause) = c.read_after {
            at = at.min(pause);
        }
        if let Some(since) = c.acks_since {
            at = at.min(since + self.settings.batch_interval());
        }
        if let Some((_, sent)) = &c.twin_request {
            at = at.min(*sent + TWIN_TIMEOUT);
        }
        // The real dead-peer deadline is at or after its floor: later than `at` when it is.
        if c.dead_floor < at {
            at = at.min(c.last_read + DEAD_AFTER);
        }
        at
    }

    /// A deadline passed: close aggregate windows or save them, ping, judge the connection dead,
    /// ask for the twin again, report, end a read pause, or give up the drain.
    pub fn on_timer(&mut self, now: Instant) {
        self.aggregates_timer(now);
        let Phase::Up(c) = &mut self.phase else { return };
        if self.draining.is_some_and(|d| now >= d) {
            warn!(
                "stopping with {} alerts unconfirmed: the hub redelivers their inputs",
                self.delivery.alerts_pending()
            );
            self.exit(now);
            return;
        }
        if now >= c.dead_floor {
            c.dead_floor = c.last_read + DEAD_AFTER;
            if now >= c.dead_floor {
                let silent = (now - c.last_read).as_secs();
                self.on_lost(now, &LinkError::Protocol(format!("nothing from the hub for {silent} s")));
                return;
            }
        }
        if c.read_after.is_some_and(|at| now >= at) {
            c.read_after = None;
        }
        if now >= c.next_ping {
            c.next_ping = now + KEEP_ALIVE;
            // Moved on with the ping, so that it stays after the next one while reads come.
            c.dead_floor = c.last_read + DEAD_AFTER;
            let _ = Packet::PingReq.write(&mut self.tx, MAX_OUT);
        }
        let twin_late = c.twin_request.as_ref().is_some_and(|(_, at)| now >= *at + TWIN_TIMEOUT);
        if twin_late {
            warn!("no answer to the twin request in {} s: asking again", TWIN_TIMEOUT.as_secs());
            self.request_twin(now);
        }
        if now >= self.next_report {
            self.next_report = now + Duration::from_secs(u64::from(self.settings.report_interval_secs));
            self.report();
        }
    }
}

/// The earlier of two deadlines, either of which may be unset.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
