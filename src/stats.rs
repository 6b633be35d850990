//! What the module counts and times: messages in, alerts out, drops by reason, batches, and
//! latency histograms (hdrhistogram), rendered as Prometheus text for `/metrics` and as a short
//! summary for the log and the reported properties.
//!
//! Counters are relaxed atomics written by the connection task. Histograms sit behind a mutex
//! that the connection task takes once per batch, and the metrics endpoint once per scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::filter::Reason;

/// Latency distributions, in microseconds (decide time in nanoseconds), and batch sizes.
#[derive(Debug)]
pub struct Latency {
    /// From receiving a message to handing its alert to the socket.
    pub to_socket_us: Histogram<u64>,
    /// From handing an alert to the socket to the hub's acknowledgement.
    pub to_ack_us: Histogram<u64>,
    /// Deciding one message (measured per batch, divided by its size).
    pub decide_ns: Histogram<u64>,
    /// Alerts per write.
    pub batch_alerts: Histogram<u64>,
    /// The module's turnaround: from reading an input to writing its acknowledgement, for
    /// inputs dropped and inputs that alerted.
    pub turnaround_us: [Histogram<u64>; 2],
}

/// What became of an input, for its turnaround.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turnaround {
    Dropped,
    Alert,
}

impl Default for Latency {
    fn default() -> Self {
        // Three significant digits, up to an hour in µs: a few tens of KiB each.
        let h = |max| Histogram::new_with_bounds(1, max, 3).expect("valid histogram bounds");
        Latency {
            to_socket_us: h(3_600_000_000),
            to_ack_us: h(3_600_000_000),
            decide_ns: h(60_000_000_000),
            batch_alerts: h(100_000),
            turnaround_us: [h(3_600_000_000), h(3_600_000_000)],
        }
    }
}

/// Records a duration in µs, saturating at the histogram's top.
pub fn record_us(h: &mut Histogram<u64>, d: Duration, count: u64) {
    let v = (d.as_micros() as u64).clamp(1, h.high());
    let _ = h.record_n(v, count);
}

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
    /// Writes to the hub carrying alerts or acknowledgements.
    pub batches: AtomicU64,
    /// Connections established (the first one included).
    pub connections: AtomicU64,
    /// Desired-property updates applied (full twins and patches).
    pub twin_updates: AtomicU64,
    /// Desired values or documents rejected.
    pub twin_rejections: AtomicU64,
    /// Inputs left unacknowledged because too many alerts awaited confirmation.
    pub overloaded: AtomicU64,
    /// Malformed messages sent to `DeadLetterOutput`.
    pub dead_lettered: AtomicU64,
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
    pub latency: Mutex<Latency>,
}

impl Stats {
    pub fn drop(&self, reason: Reason) {
        self.dropped[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn dropped(&self, reason: Reason) -> u64 {
        self.dropped[reason.index()].load(Relaxed)
    }

    /// Records an input's turnaround.
    pub fn record_turnaround(&self, outcome: Turnaround, d: Duration) {
        record_us(&mut self.latency().turnaround_us[outcome as usize], d, 1);
    }

    pub fn latency(&self) -> std::sync::MutexGuard<'_, Latency> {
        self.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One line: `received=… alerts=… confirmed=… below_threshold=… …` (reasons with a zero
    /// count are left out), with alert latency percentiles once there are any.
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
        let l = self.latency();
        if !l.to_ack_us.is_empty() {
            let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(
                s,
                " to-socket-ms p50={:.2} p99={:.2} to-ack-ms p50={:.2} p99={:.2}",
                ms(&l.to_socket_us, 0.5),
                ms(&l.to_socket_us, 0.99),
                ms(&l.to_ack_us, 0.5),
                ms(&l.to_ack_us, 0.99)
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
        let l = self.latency();
        let q = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        serde_json::json!({
            "received": self.received.load(Relaxed),
            "alerts": self.alerts.load(Relaxed),
            "alertsConfirmed": self.alerts_confirmed.load(Relaxed),
            "batches": self.batches.load(Relaxed),
            "deadLettered": self.dead_lettered.load(Relaxed),
            "dropped": dropped,
            "toSocketMs": {"p50": q(&l.to_socket_us, 0.5), "p99": q(&l.to_socket_us, 0.99)},
            "toAckMs": {"p50": q(&l.to_ack_us, 0.5), "p99": q(&l.to_ack_us, 0.99)},
        })
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP edgefilter_{name} {help}\n# TYPE edgefilter_{name} counter\nedgefilter_{name} {v}"
            );
        };
        counter(&mut out, "messages_received_total", "Input messages received.", self.received.load(Relaxed));
        counter(
            &mut out,
            "heap_allocations_total",
            "Heap allocations by the process (0 when the counting allocator is not installed).",
            crate::alloc::allocations(),
        );
        counter(&mut out, "alerts_total", "Alerts sent to output1.", self.alerts.load(Relaxed));
        counter(
            &mut out,
            "alerts_confirmed_total",
            "Alerts acknowledged by the hub.",
            self.alerts_confirmed.load(Relaxed),
        );
        counter(&mut out, "batches_total", "Writes to the hub.", self.batches.load(Relaxed));
        counter(&mut out, "connections_total", "Connections to the hub.", self.connections.load(Relaxed));
        counter(&mut out, "twin_updates_total", "Desired-property updates applied.", self.twin_updates.load(Relaxed));
        counter(&mut out, "twin_rejections_total", "Desired values rejected.", self.twin_rejections.load(Relaxed));
        counter(
            &mut out,
            "overloaded_total",
            "Messages held back, or left for the hub to redeliver, while EDGEFILTER_MAX_UNCONFIRMED alerts await confirmation.",
            self.overloaded.load(Relaxed),
        );
        out.push_str("# HELP edgefilter_messages_dropped_total Messages dropped, by reason.\n# TYPE edgefilter_messages_dropped_total counter\n");
        for r in Reason::ALL {
            let _ = writeln!(out, "edgefilter_messages_dropped_total{{reason=\"{}\"}} {}", r.name(), self.dropped(r));
        }
        let l = self.latency();
        summary(
            &mut out,
            "alert_to_socket_seconds",
            "From receiving a message to writing its alert.",
            &l.to_socket_us,
            1e-6,
        );
        summary(
            &mut out,
            "alert_to_ack_seconds",
            "From writing an alert to the hub's acknowledgement.",
            &l.to_ack_us,
            1e-6,
        );
        summary(&mut out, "decide_seconds", "Deciding one message.", &l.decide_ns, 1e-9);
        for (i, outcome) in ["dropped", "alert"].iter().enumerate() {
            summary(
                &mut out,
                &format!("turnaround_seconds_{outcome}"),
                "From reading an input to writing its acknowledgement.",
                &l.turnaround_us[i],
                1e-6,
            );
        }
        summary(&mut out, "batch_alerts", "Alerts per write.", &l.batch_alerts, 1.0);
        out
    }
}

fn summary(out: &mut String, name: &str, help: &str, h: &Histogram<u64>, scale: f64) {
    let _ = writeln!(out, "# HELP edgefilter_{name} {help}\n# TYPE edgefilter_{name} summary");
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 * scale };
        let _ = writeln!(out, "edgefilter_{name}{{quantile=\"{q}\"}} {v}");
    }
    let sum: f64 =
        h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() * scale;
    let _ = writeln!(out, "edgefilter_{name}_sum {sum}\nedgefilter_{name}_count {}", h.len());
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: tokio::net::TcpListener, stats: std::sync::Arc<Stats>) {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let stats = stats.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header("Content-Type", "text/plain; version=0.0.4")
                            .body(Full::new(bytes::Bytes::from(stats.prometheus())))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(bytes::Bytes::from_static(b"see /metrics\n")))
                    };
                    response
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
