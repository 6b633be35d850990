//! Counters the module keeps: what came in, what went out, what was dropped and why.
//!
//! Plain relaxed atomics, written by the connection task and read by whoever reports them (the
//! periodic log line, local mode's console).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::filter::Reason;

#[derive(Default, Debug)]
pub struct Stats {
    /// Input messages received (every input, redeliveries included).
    pub received: AtomicU64,
    /// Alerts queued to the hub.
    pub alerts: AtomicU64,
    /// Alerts the hub acknowledged.
    pub alerts_confirmed: AtomicU64,
    /// Dropped messages, by [`Reason::index`].
    pub dropped: [AtomicU64; Reason::ALL.len()],
    /// Connections established (the first one included).
    pub connections: AtomicU64,
    /// Desired-property updates applied (full twins and patches).
    pub twin_updates: AtomicU64,
    /// Desired values rejected.
    pub twin_rejections: AtomicU64,
}

impl Stats {
    pub fn drop(&self, reason: Reason) {
        self.dropped[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn dropped(&self, reason: Reason) -> u64 {
        self.dropped[reason.index()].load(Relaxed)
    }

    /// One line: `received=… alerts=… confirmed=… dropped: below_threshold=… …` (reasons with
    /// a zero count are left out).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "received={} alerts={} confirmed={}",
            self.received.load(Relaxed),
            self.alerts.load(Relaxed),
            self.alerts_confirmed.load(Relaxed)
        );
        for r in Reason::ALL {
            let n = self.dropped(r);
            if n > 0 {
                s.push_str(&format!(" {}={n}", r.name()));
            }
        }
        s
    }
}
