//! `replay --aggregates` through mosquitto and the real module: the aggregates are set by a
//! desired patch, and their windows' counts add up to every message sent, each once.

use std::time::Duration;

#[path = "../../tests/common/mod.rs"]
mod common;

use edgefilter_perf::aggregates::Aggregates;
use edgefilter_perf::trace::{self, Generate};
use edgefilter_perf::{replay, Pace, ReplayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sets_the_aggregates_and_their_counts_add_up_to_every_message() {
    let broker = common::Broker::start("");
    let module = common::RunningModule::on(broker.port, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aggregates.json");
    let set = serde_json::json!({"Count1s": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 1},
        "functions": "count,avg", "output": "aggregates"}});
    std::fs::write(&file, set.to_string()).unwrap();
    let aggregates = Aggregates::read(&file).unwrap();
    assert_eq!((aggregates.outputs.clone(), aggregates.counting), (vec!["aggregates".to_string()], 1));
    let messages = trace::generate(&Generate {
        count: 300,
        rate: 1000.0,
        alert_ratio: Some(0.5),
        size: None,
        seed: 4,
        start: None,
    });
    let options = ReplayOptions {
        hub: edgefilter_perf::Hub::local(broker.port),
        target: edgefilter::topic::ModuleId::new(common::DEVICE, common::MODULE),
        pace: Pace::Rate(600.0),
        threshold: 25.0,
        rules: None,
        settle: Duration::from_secs(5),
        deadline: Duration::from_secs(60),
        pid: None,
        progress: false,
        aggregates: Some(aggregates),
    };
    let report = replay(&messages, &options).await.unwrap();
    assert_eq!((report.missing, report.unexpected), (0, 0), "{}", report.summary());
    assert_eq!((report.summaries.readings, report.expected_readings), (300, 300), "{}", report.summary());
    assert!(report.summaries.messages >= 1, "{}", report.summary());
    assert!(report.complete());
    module.stop().await.unwrap();
}
