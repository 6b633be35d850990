//! What the module counts and times: messages in, alerts out, drops by reason, batches, and
//! latencies, served at `/metrics` the way IoT Edge's metrics-collector reads edgeHub's
//! ([docs/metrics.md](../../docs/metrics.md)), and summed up for the log and the reported
//! properties.
//!
//! Counters are relaxed atomics written by the connection task. Latencies are recorded into
//! [`Latency`] behind a mutex the connection task takes once per write; the scrape side swaps it
//! for an empty one under that mutex and does everything else, the window ([`window`]) and the
//! text ([`exposition`]), outside it.

mod exposition;
mod serve;
mod window;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use exposition::{instance_number, Labels};
pub use serve::serve_metrics;
use window::Window;
pub use window::{Recorder, Snapshot, QUANTILES, STEP, WINDOW};

use crate::aggregate::series::Dropped;
use crate::filter::Reason;

/// One aggregate's readings not counted, by [`Dropped`] reason (`Dropped as usize`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateDrops {
    pub aggregate: String,
    pub dropped: [u64; Dropped::ALL.len()],
}

/// Latency distributions, in microseconds (decide time in nanoseconds), and batch sizes, since
/// the last drain.
#[derive(Debug)]
pub struct Latency {
    /// From receiving a message to handing its alert to the socket.
    pub to_socket_us: Recorder,
    /// From handing an alert to the socket to the hub's acknowledgement.
    pub to_ack_us: Recorder,
    /// Deciding one message (measured per batch, divided by its size).
    pub decide_ns: Recorder,
    /// Alerts per write.
    pub batch_alerts: Recorder,
    /// The module's turnaround: from reading an input to writing its acknowledgement, for
    /// inputs dropped and inputs that alerted ([`Turnaround`]).
    pub turnaround_us: [Recorder; 2],
}

/// What became of an input, for its turnaround.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turnaround {
    Dropped,
    Alert,
}

/// An hour in µs: latencies beyond it are recorded as an hour.
const HOUR_US: u64 = 3_600_000_000;

impl Default for Latency {
    fn default() -> Self {
        Latency {
            to_socket_us: Recorder::new(HOUR_US),
            to_ack_us: Recorder::new(HOUR_US),
            decide_ns: Recorder::new(1_000_000_000),
            batch_alerts: Recorder::new(65_536),
            turnaround_us: [Recorder::new(HOUR_US), Recorder::new(HOUR_US)],
        }
    }
}

impl Latency {
    /// Every recorder, in [`exposition::SUMMARIES`]' order.
    fn recorders(&mut self) -> [&mut Recorder; 6] {
        let [dropped, alert] = &mut self.turnaround_us;
        [&mut self.to_socket_us, &mut self.to_ack_us, &mut self.decide_ns, dropped, alert, &mut self.batch_alerts]
    }
}

/// Indices of the series in [`Latency::recorders`].
const TO_SOCKET: usize = 0;
const TO_ACK: usize = 1;

/// Records a duration in µs, saturating at the recorder's top.
pub fn record_us(r: &mut Recorder, d: Duration, count: u64) {
    // Whole µs without Duration::as_micros' 128-bit arithmetic (library calls on armv7).
    let us = d.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(d.subsec_micros()));
    let _ = r.record_n(us.max(1), count);
}

/// The scrape side: the window, and the empty recorders swapped in at the next drain.
#[derive(Debug)]
struct Scrape {
    window: Window,
    spare: Latency,
}

#[derive(Debug)]
pub struct Stats {
    /// Input messages received (every input, redeliveries included).
    pub received: AtomicU64,
    /// Alerts queued to the hub.
    pub alerts: AtomicU64,
    /// Alerts the hub acknowledged.
    pub alerts_confirmed: AtomicU64,
    /// Dropped messages, by [`Reason::index`].
    pub dropped: [AtomicU64; Reason::ALL.len()],
    /// Writes to the hub carrying alerts or acknowledgements.
    pub batches: AtomicU64,
    /// Connections established (the first one included).
    pub connections: AtomicU64,
    /// Desired-property updates applied (full twins and patches).
    pub twin_updates: AtomicU64,
    /// Desired values or documents rejected.
    pub twin_rejections: AtomicU64,
    /// Inputs held back or left unacknowledged because too many alerts awaited confirmation
    /// (twin messages are never held back).
    pub overloaded: AtomicU64,
    /// Malformed messages sent to `DeadLetterOutput`.
    pub dead_lettered: AtomicU64,
    /// Connections to `/metrics` that could not be accepted.
    pub metrics_accept_failures: AtomicU64,
    /// Aggregate messages (a closed window's summary or `body`) queued to the hub.
    pub aggregates_emitted: AtomicU64,
    /// Aggregate messages the hub acknowledged.
    pub aggregates_confirmed: AtomicU64,
    /// Aggregate messages forgotten unsent: more were waiting for the hub than the module keeps.
    pub aggregates_overflow: AtomicU64,
    /// Checkpoints of the aggregates' windows written to the state directory, and writes failed.
    pub checkpoints_saved: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    /// State files found at start and not restored (corrupt, stale, another version, unreadable).
    pub restore_failures: AtomicU64,
    /// Readings each aggregate did not count, by [`Dropped`] reason, as the session core last
    /// published them (at each checkpoint and each closed window).
    pub aggregate_drops: Mutex<Vec<AggregateDrops>>,
    pub latency: Mutex<Latency>,
    scrape: Mutex<Scrape>,
}

impl Default for Stats {
    fn default() -> Self {
        let mut spare = Latency::default();
        let window = Window::new(&spare.recorders(), Instant::now());
        Stats {
            received: AtomicU64::default(),
            alerts: AtomicU64::default(),
            alerts_confirmed: AtomicU64::default(),
            dropped: Default::default(),
            batches: AtomicU64::default(),
            connections: AtomicU64::default(),
            twin_updates: AtomicU64::default(),
            twin_rejections: AtomicU64::default(),
            overloaded: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            metrics_accept_failures: AtomicU64::default(),
            aggregates_emitted: AtomicU64::default(),
            aggregates_confirmed: AtomicU64::default(),
            aggregates_overflow: AtomicU64::default(),
            checkpoints_saved: AtomicU64::default(),
            checkpoint_failures: AtomicU64::default(),
            restore_failures: AtomicU64::default(),
            aggregate_drops: Mutex::default(),
            latency: Mutex::new(Latency::default()),
            scrape: Mutex::new(Scrape { window, spare }),
        }
    }
}

impl Stats {
    pub fn drop(&self, reason: Reason) {
        self.dropped[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn dropped(&self, reason: Reason) -> u64 {
        self.dropped[reason.index()].load(Relaxed)
    }

    /// The data path's recorders (held for a write's worth of recording at most).
    pub fn latency(&self) -> MutexGuard<'_, Latency> {
        self.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Swaps what the data path recorded for the empty recorders in `spare`: all that happens
    /// under the data path's lock.
    pub fn take_latency(&self, spare: &mut Latency) {
        std::mem::swap(&mut *self.latency(), spare);
    }

    /// Every latency series as of `now`, in [`exposition::SUMMARIES`]' order: what the data path
    /// recorded is moved into the window first.
    pub fn snapshots(&self, now: Instant) -> [Snapshot; 6] {
        let mut guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let scrape = &mut *guard;
        self.take_latency(&mut scrape.spare);
        scrape.window.absorb(&mut scrape.spare.recorders(), now);
        let mut out = [Snapshot::default(); 6];
        scrape.window.snapshots(&mut out);
        out
    }

    /// Prometheus text (format 0.0.4), every series labelled with `labels`.
    pub fn prometheus(&self, labels: &Labels) -> String {
        exposition::render(self, &self.snapshots(Instant::now()), labels)
    }

    /// One line: `received=… alerts=… confirmed=… below_threshold=… …` (reasons with a zero
    /// count are left out), with the window's alert latency percentiles once there are any.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "received={} alerts={} confirmed={} batches={}",
            self.received.load(Relaxed),
            self.alerts.load(Relaxed),
            self.alerts_confirmed.load(Relaxed),
            self.batches.load(Relaxed)
        );
        for r in Reason::ALL {
            let n = self.dropped(r);
            if n > 0 {
                let _ = write!(s, " {}={n}", r.name());
            }
        }
        let l = self.snapshots(Instant::now());
        if let (Some(socket), Some(ack)) = (l[TO_SOCKET].quantiles, l[TO_ACK].quantiles) {
            let ms = |us: u64| us as f64 / 1000.0;
            let _ = write!(
                s,
                " to-socket-ms p50={:.2} p99={:.2} to-ack-ms p50={:.2} p99={:.2}",
                ms(socket[1]),
                ms(socket[3]),
                ms(ack[1]),
                ms(ack[3])
            );
        }
        s
    }

    /// The summary that goes to the reported properties under `Statistics`.
    pub fn reported(&self) -> serde_json::Value {
        let mut dropped = serde_json::Map::new();
        for r in Reason::ALL {
            dropped.insert(r.name().to_string(), self.dropped(r).into());
        }
        let l = self.snapshots(Instant::now());
        let ms = |s: &Snapshot| {
            let [_, p50, _, p99] = s.quantiles.unwrap_or_default();
            serde_json::json!({"p50": p50 as f64 / 1000.0, "p99": p99 as f64 / 1000.0})
        };
        serde_json::json!({
            "received": self.received.load(Relaxed),
            "alerts": self.alerts.load(Relaxed),
            "alertsConfirmed": self.alerts_confirmed.load(Relaxed),
            "batches": self.batches.load(Relaxed),
            "deadLettered": self.dead_lettered.load(Relaxed),
            "dropped": dropped,
            "toSocketMs": ms(&l[TO_SOCKET]),
            "toAckMs": ms(&l[TO_ACK]),
        })
    }
}
