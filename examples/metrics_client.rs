//! The module's `/metrics` series written with the `prometheus-client` crate (0.26) instead of by
//! hand, for `scripts/metrics-library.sh`: the same counters and labels (the registry's constant
//! labels), the latencies as histograms (the crate has no summary type), printed once. The
//! difference in armv7 binary size against `examples/metrics_hand.rs` is what the crate would add.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use edgefilter::filter::Reason;
use edgefilter::stats::Stats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

fn main() {
    let stats = Stats::default();
    stats.received.fetch_add(std::env::args().count() as u64, Relaxed);
    let labels = [
        ("iothub", "myhub.azure-devices.net".to_string()),
        ("edge_device", "gateway-01".to_string()),
        ("module_name", "edgefilter".to_string()),
        ("instance_number", edgefilter::stats::instance_number()),
    ];
    let mut registry = Registry::with_prefix_and_labels(
        "edgefilter",
        labels.into_iter().map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v))),
    );
    let counters = [
        ("messages_received", "Input messages received", &stats.received),
        ("alerts", "Alerts sent to output1", &stats.alerts),
        ("alerts_confirmed", "Alerts acknowledged by the hub", &stats.alerts_confirmed),
        ("batches", "Writes to the hub", &stats.batches),
        ("connections", "Connections to the hub", &stats.connections),
        ("twin_updates", "Desired-property updates applied", &stats.twin_updates),
        ("twin_rejections", "Desired values rejected", &stats.twin_rejections),
        ("overloaded", "Messages held back", &stats.overloaded),
        ("dead_lettered", "Malformed messages sent to DeadLetterOutput", &stats.dead_lettered),
        (
            "metrics_accept_failures",
            "Connections to /metrics that could not be accepted",
            &stats.metrics_accept_failures,
        ),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, ConstCounter::new(value.load(Relaxed)));
    }
    let dropped = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    for r in Reason::ALL {
        dropped.get_or_create(&vec![("reason", r.name())]).inc_by(stats.dropped(r));
    }
    registry.register("messages_dropped", "Messages dropped, by reason", dropped);
    let turnaround = Family::<Vec<(&'static str, &'static str)>, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.0001, 4.0, 11))
    });
    for outcome in ["dropped", "alert"] {
        turnaround.get_or_create(&vec![("outcome", outcome)]).observe(0.002);
    }
    registry.register("turnaround_seconds", "From reading an input to writing its acknowledgement", turnaround);
    for (name, help) in [
        ("alert_to_socket_seconds", "From receiving a message to writing its alert"),
        ("alert_to_ack_seconds", "From writing an alert to the hub's acknowledgement"),
        ("decide_seconds", "Deciding one message"),
        ("batch_alerts", "Alerts per write"),
    ] {
        let h = Histogram::new(exponential_buckets(0.0001, 4.0, 11));
        h.observe(0.001);
        registry.register(name, help, h);
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String");
    print!("{out}");
}
