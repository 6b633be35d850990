//! The Prometheus text format (0.0.4) of the stats, as IoT Edge's metrics-collector parses it:
//! no timestamps, no exemplars, every series labelled like edgeHub's (`iothub`, `edge_device`,
//! plus `module_name` as edgeAgent does, and `instance_number`, new at each start), label values
//! escaped. Written by hand into one `String`: a client library was measured against it
//! ([docs/metrics.md](../../../docs/metrics.md#library-or-hand-written)).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::{Snapshot, Stats, QUANTILES};
use crate::aggregate::series::Dropped;
use crate::config::Identity;
use crate::filter::Reason;

/// The labels every series carries, rendered once: `iothub="…",edge_device="…",…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels(String);

impl Labels {
    pub fn new(iothub: &str, edge_device: &str, module_name: &str, instance_number: &str) -> Labels {
        let mut s = String::new();
        for (i, (name, value)) in [
            ("iothub", iothub),
            ("edge_device", edge_device),
            ("module_name", module_name),
            ("instance_number", instance_number),
        ]
        .into_iter()
        .enumerate()
        {
            s.push_str(if i == 0 { "" } else { "," });
            s.push_str(name);
            s.push_str("=\"");
            escape(&mut s, value);
            s.push('"');
        }
        Labels(s)
    }

    /// The module's labels, with a fresh instance number.
    pub fn for_module(identity: &Identity) -> Labels {
        let m = &identity.module;
        Labels::new(&identity.hub_hostname, &m.device_id, &m.module_id, &instance_number())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A random (version 4) UUID, like edgeHub's `Guid.NewGuid()`.
pub fn instance_number() -> String {
    let mut bytes = [0u8; 16];
    // The system's random source failing leaves the zero UUID's shape: still a valid label.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    uuid_v4(bytes)
}

fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// A latency series: its family, its own label, and its unit in the base unit's (a division by
/// a power of ten writes `0.008127`, where a multiplication by its inverse may not).
pub struct Summary {
    pub name: &'static str,
    pub help: &'static str,
    pub label: Option<(&'static str, &'static str)>,
    pub per_base_unit: f64,
}

/// The series of [`super::Latency::recorders`], in that order.
pub const SUMMARIES: [Summary; 6] = {
    const TURNAROUND: &str = "From reading an input to writing its acknowledgement (PUBACK).";
    [
        Summary {
            name: "alert_to_socket_seconds",
            help: "From receiving a message to writing its alert.",
            label: None,
            per_base_unit: 1e6,
        },
        Summary {
            name: "alert_to_ack_seconds",
            help: "From writing an alert to the hub's acknowledgement.",
            label: None,
            per_base_unit: 1e6,
        },
        Summary { name: "decide_seconds", help: "Deciding one message.", label: None, per_base_unit: 1e9 },
        Summary {
            name: "turnaround_seconds",
            help: TURNAROUND,
            label: Some(("outcome", "dropped")),
            per_base_unit: 1e6,
        },
        Summary { name: "turnaround_seconds", help: TURNAROUND, label: Some(("outcome", "alert")), per_base_unit: 1e6 },
        Summary { name: "batch_alerts", help: "Alerts per write.", label: None, per_base_unit: 1.0 },
    ]
};

/// The text a scrape returns.
pub fn render(stats: &Stats, latency: &[Snapshot; 6], labels: &Labels) -> String {
    let mut t = Text { out: String::with_capacity(16 * 1024), labels: labels.as_str() };
    let counters = [
        ("messages_received_total", "Input messages received.", &stats.received),
        ("alerts_total", "Alerts sent to output1.", &stats.alerts),
        ("alerts_confirmed_total", "Alerts acknowledged by the hub.", &stats.alerts_confirmed),
        ("batches_total", "Writes to the hub.", &stats.batches),
        ("connections_total", "Connections to the hub.", &stats.connections),
        ("twin_updates_total", "Desired-property updates applied.", &stats.twin_updates),
        ("twin_rejections_total", "Desired values rejected.", &stats.twin_rejections),
        ("overloaded_total", "Input messages held back, or left for the hub to redeliver, while EDGEFILTER_MAX_UNCONFIRMED alerts await confirmation.", &stats.overloaded),
        ("dead_lettered_total", "Malformed messages sent to DeadLetterOutput.", &stats.dead_lettered),
        ("metrics_accept_failures_total", "Connections to /metrics that could not be accepted.", &stats.metrics_accept_failures),
        ("aggregates_emitted_total", "Aggregate messages (a closed window's summary or body) queued to the hub.", &stats.aggregates_emitted),
        ("aggregates_confirmed_total", "Aggregate messages the hub acknowledged.", &stats.aggregates_confirmed),
        ("aggregates_overflow_total", "Aggregate messages forgotten unsent: more awaited the hub than the module keeps.", &stats.aggregates_overflow),
        ("checkpoints_saved_total", "Checkpoints of the aggregates' windows written to the state directory.", &stats.checkpoints_saved),
        ("checkpoint_failures_total", "Checkpoints of the aggregates' windows that could not be written.", &stats.checkpoint_failures),
        ("restore_failures_total", "State files found at start and not restored (corrupt, stale, another version, unreadable).", &stats.restore_failures),
    ];
    for (name, help, value) in counters {
        t.family(name, "counter", help);
        t.sample(name, "", &[], value.load(Relaxed));
    }
    let heap = "heap_allocations_total";
    t.family(heap, "counter", "Heap allocations by the process (0 when the counting allocator is not installed).");
    t.sample(heap, "", &[], crate::alloc::allocations());
    let dropped = "messages_dropped_total";
    t.family(dropped, "counter", "Messages dropped, by reason.");
    for r in Reason::ALL {
        t.sample(dropped, "", &[("reason", r.name())], stats.dropped(r));
    }
    let not_counted = "aggregate_readings_dropped_total";
    t.family(
        not_counted,
        "counter",
        "Readings an aggregate did not count, by aggregate and reason (as of the last checkpoint or closed window).",
    );
    for a in stats.aggregate_drops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
        let mut name = String::new();
        escape(&mut name, &a.aggregate);
        for d in Dropped::ALL {
            t.sample(not_counted, "", &[("aggregate", &name), ("reason", d.name())], a.dropped[d as usize]);
        }
    }
    let mut previous = "";
    for (s, snapshot) in SUMMARIES.iter().zip(latency) {
        if s.name != previous {
            t.family(s.name, "summary", s.help);
            previous = s.name;
        }
        t.summary(s, snapshot);
    }
    t.out
}

/// The text being written, and the labels every sample gets.
struct Text<'a> {
    out: String,
    labels: &'a str,
}

impl Text<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP edgefilter_{name} {help}\n# TYPE edgefilter_{name} {kind}");
    }

    /// `edgefilter_{name}{suffix}{labels,label...} value`; `value` a whole number or a float;
    /// the label values already escaped.
    #[inline(never)]
    fn sample(&mut self, name: &str, suffix: &str, label: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "edgefilter_{name}{suffix}{{{}", self.labels);
        for (k, v) in label {
            let _ = write!(self.out, ",{k}=\"{v}\"");
        }
        let _ = writeln!(self.out, "}} {value}");
    }

    /// Quantiles (NaN while the window is empty, as edgeHub's), `_sum` and `_count`.
    #[inline(never)]
    fn summary(&mut self, s: &Summary, snapshot: &Snapshot) {
        for (i, q) in QUANTILES.iter().enumerate() {
            let _ = write!(self.out, "edgefilter_{}{{{}", s.name, self.labels);
            if let Some((k, v)) = s.label {
                let _ = write!(self.out, ",{k}=\"{v}\"");
            }
            let _ = match snapshot.quantiles {
                Some(values) => writeln!(self.out, ",quantile=\"{q}\"}} {}", values[i] as f64 / s.per_base_unit),
                None => writeln!(self.out, ",quantile=\"{q}\"}} NaN"),
            };
        }
        self.sample(s.name, "_sum", s.label.as_slice(), snapshot.sum as f64 / s.per_base_unit);
        self.sample(s.name, "_count", s.label.as_slice(), snapshot.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let l = Labels::new("h\\b", "d\"q", "m\nn", "i");
        assert_eq!(l.as_str(), r#"iothub="h\\b",edge_device="d\"q",module_name="m\nn",instance_number="i""#);
    }

    #[test]
    fn instance_numbers_are_version_4_uuids_and_new_each_time() {
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        let (a, b) = (instance_number(), instance_number());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
