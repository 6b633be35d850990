//! The replay's alert subscriber ends with the replay: it leaves the hub and never comes back, so
//! a second replay in the same process (as `bench` runs them) does not fight a leftover one for
//! the persistent session, and no subscription is left behind for the hub to queue alerts to.

use std::collections::HashMap;
use std::time::Duration;

use edgefilter::hub::{Hub, HubConfig, HubEvent};
use edgefilter::topic::ModuleId;
use edgefilter_perf::trace::{self, Generate};
use edgefilter_perf::{replay, Pace, ReplayOptions};
use tokio::sync::mpsc;

/// How long a subscriber that came back would take at most (it retried every 200 ms).
const WATCH: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_leaves_with_the_replay_and_does_not_subscribe_again() {
    let target = ModuleId::new("dev", "edgefilter");
    let config = HubConfig {
        hub_hostname: "h.azure-devices.net".into(),
        device_id: target.device_id.clone(),
        keys: HashMap::new(),
        routes: Vec::new(),
        desired: HashMap::new(),
        delivery: Default::default(),
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(Hub::new(config, Some(tx)).serve(listener));
    let messages = trace::generate(&Generate {
        count: 20,
        rate: 1000.0,
        alert_ratio: Some(0.0),
        size: None,
        seed: 1,
        start: None,
    });
    let options = ReplayOptions {
        hub: edgefilter_perf::Hub::local(port),
        target,
        pace: Pace::Max,
        threshold: 25.0,
        rules: None,
        settle: Duration::from_millis(100),
        deadline: Duration::from_secs(30),
        pid: None,
        progress: false,
        aggregates: None,
    };
    for run in 0..2 {
        let report = replay(&messages, &options).await.unwrap();
        assert_eq!((report.sent, report.expected), (20, 0));
        // The subscriber's connection ends…
        let left = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.recv().await {
                    Some(HubEvent::Disconnected { client_id }) if client_id.starts_with("perf-sub-") => return,
                    Some(_) => {}
                    None => panic!("the hub stopped"),
                }
            }
        })
        .await;
        assert!(left.is_ok(), "run {run}: the subscriber is still connected after the replay");
        // …and it does not connect again.
        let back = tokio::time::timeout(WATCH, async {
            loop {
                match events.recv().await {
                    Some(HubEvent::Connected { client_id }) if client_id.starts_with("perf-sub-") => return client_id,
                    Some(_) => {}
                    None => std::future::pending().await,
                }
            }
        })
        .await;
        assert!(back.is_err(), "run {run}: {} connected again after the replay", back.unwrap_or_default());
    }
}
