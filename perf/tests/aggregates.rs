//! `replay --aggregates` through mosquitto and the real module: the aggregates are set by a
//! desired patch, and every window they send matches the replay's reference, computed from the
//! messages sent: event time with eight functions (stdev and a percentile among them), a hopping
//! window, a groupBy by arrival time, and a `having` that sends a `body`.

use std::time::Duration;

#[path = "../../tests/common/mod.rs"]
mod common;

use edgefilter::aggregate::time::format_iso;
use edgefilter_perf::aggregates::Aggregates;
use edgefilter_perf::trace::Message;
use edgefilter_perf::{replay, unix_ms, Pace, ReplayOptions};

/// `count` messages 10 ms apart whose `timeCreated` starts `ahead_ms` ahead of the clock (so that
/// none is late and all come after the first windows start), on three lines; every ninth has no
/// temperature.
fn trace(count: usize, ahead_ms: i64) -> Vec<Message> {
    let start = unix_ms() + ahead_ms;
    (0..count)
        .map(|i| {
            let line = ["a", "b", "c"][i % 3];
            let time = format_iso(start + i as i64 * 10);
            // Quarters, so that sums are exact.
            let temperature = 20.0 + (i * 7 % 40) as f64 / 4.0;
            let body = if i % 9 == 4 {
                serde_json::json!({"machine": {"pressure": 1.0}, "timeCreated": time, "line": line})
            } else {
                serde_json::json!({"machine": {"temperature": temperature}, "timeCreated": time, "line": line})
            };
            Message { t: i as f64 / 100.0, properties: Vec::new(), body: body.to_string() }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_the_module_sends_matches_the_reference() {
    let broker = common::Broker::start("");
    let module = common::RunningModule::on(broker.port, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aggregates.json");
    let time = serde_json::json!({"path": "timeCreated", "lateSeconds": 1});
    let set = serde_json::json!({
        "Stats2s": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 2}, "time": time,
            "functions": "count,sum,avg,min,max,stdev,first,last,p90", "output": "aggregates"},
        "Hop3s": {"path": "machine.temperature", "window": {"kind": "hopping", "seconds": 3, "hopSeconds": 1},
            "time": time, "functions": "count,avg,max,p50", "output": "aggregates"},
        "ByLine": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 1}, "groupBy": "line",
            "functions": "count,min,max,avg", "output": "aggregates"},
        "Hot": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 1}, "time": time,
            "functions": "avg", "having": {"function": "avg", "op": ">", "value": 24.6},
            "body": {"command": "reset"}, "output": "alert"},
    });
    std::fs::write(&file, set.to_string()).unwrap();
    let aggregates = Aggregates::read(&file).unwrap();
    let messages = trace(400, 6000);
    let options = ReplayOptions {
        hub: edgefilter_perf::Hub::local(broker.port),
        target: edgefilter::topic::ModuleId::new(common::DEVICE, common::MODULE),
        pace: Pace::Rate(100.0),
        threshold: 25.0,
        rules: None,
        // The last event-time windows close about 7 s after the last send.
        settle: Duration::from_secs(15),
        deadline: Duration::from_secs(60),
        pid: None,
        progress: false,
        aggregates: Some(aggregates),
    };
    let report = replay(&messages, &options).await.unwrap();
    let check = report.aggregates.as_ref().unwrap();
    assert_eq!(check.mismatches, Vec::new(), "{}", report.summary());
    assert_eq!((report.missing, report.unexpected), (0, 0), "{}", report.summary());
    // 4 s of readings: at least two windows of 2 s, four hopping ones, a window per line and second.
    assert!(check.matched >= 2 + 4 + 3 * 3, "{}", report.summary());
    assert!(report.complete());
    module.stop().await.unwrap();
}
