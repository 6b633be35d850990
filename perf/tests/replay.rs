//! The replay tool against the embedded hub with the real module (exact counts), and against
//! peers that lose and duplicate on purpose (detected and reported as such).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[path = "../../tests/common/mod.rs"]
mod common;

use edgefilter::topic::ModuleId;
use edgefilter_perf::trace::{self, Generate};
use edgefilter_perf::{replay, Pace, ReplayOptions};

async fn hub(target: &ModuleId, key: Vec<u8>) -> u16 {
    hub_with(target, key, serde_json::Map::new()).await
}

/// The embedded hub, the module's twin seeded with `desired`.
async fn hub_with(target: &ModuleId, key: Vec<u8>, desired: serde_json::Map<String, serde_json::Value>) -> u16 {
    let config = edgefilter::hub::HubConfig {
        hub_hostname: "h.azure-devices.net".into(),
        device_id: target.device_id.clone(),
        keys: HashMap::from([(target.module_id.clone(), key)]),
        routes: Vec::new(),
        desired: HashMap::from([(target.module_id.clone(), desired)]),
        delivery: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(edgefilter::hub::Hub::new(config, None).serve(listener));
    port
}

fn options(port: u16, target: &ModuleId, pace: Pace) -> ReplayOptions {
    ReplayOptions {
        hub: edgefilter_perf::Hub::local(port),
        target: target.clone(),
        pace,
        threshold: 25.0,
        rules: None,
        settle: Duration::from_secs(3),
        deadline: Duration::from_secs(60),
        pid: None,
        progress: false,
        aggregates: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_replay_report_through_the_module() {
    let target = ModuleId::new("dev", "edgefilter");
    let key = vec![1u8; 32];
    let port = hub(&target, key.clone()).await;
    let config = edgefilter::config::Config::local("h.azure-devices.net", target.clone(), port, key);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let module = tokio::spawn(edgefilter::module::run(config, Arc::new(Default::default()), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A trace written and read back as a user would: generate → file → replay.
    let generated = trace::generate(&Generate {
        count: 400,
        rate: 1000.0,
        alert_ratio: Some(0.5),
        size: Some(300),
        seed: 9,
        start: None,
    });
    let text: String = generated.iter().map(|m| m.to_line() + "\n").collect();
    let messages = trace::read(&text).unwrap();
    assert!(messages == generated, "a trace reads back as written");
    assert!(messages.iter().all(|m| m.body.len() >= 300));
    let expected = messages
        .iter()
        .filter(|m| edgefilter::filter::decide(m.body.as_bytes(), 25.0) == edgefilter::filter::Decision::Alert)
        .count() as u64;
    assert!((150..=250).contains(&expected), "about half alert: {expected}");

    let report = replay(&messages, &options(port, &target, Pace::Trace(2.0))).await.unwrap();
    assert_eq!(report.sent, 400);
    assert_eq!(report.expected, expected);
    assert_eq!(report.received, expected);
    assert_eq!((report.missing, report.duplicated, report.unexpected), (0, 0, 0));
    assert_eq!(report.out_of_order, 0);
    assert_eq!(report.latency_us.len(), expected);
    assert!(report.complete());
    let json = report.to_json();
    assert_eq!(json["alerts"]["received"], expected);
    assert!(edgefilter_perf::output::hgrm(&report.latency_us).contains("Percentile"));
    let svg = edgefilter_perf::output::svg(&[edgefilter_perf::output::Run::of("t", &report)], "t");
    assert!(svg.starts_with("<svg") && svg.contains("seconds into the run") && svg.contains("latency (ms, log scale)"));
    let _ = stop.send(());
    module.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_rules_every_copy_is_expected_on_its_output() {
    let target = ModuleId::new("dev", "edgefilter");
    let key = vec![2u8; 32];
    let rules = serde_json::json!({
        "HighTemperature": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1", "properties": {"MessageType": "Alert"}},
        "Pressure": {"path": "machine.pressure", "op": ">", "value": -1e6, "output": "pressure"}
    });
    let desired = serde_json::json!({ "Rules": rules.clone() }).as_object().unwrap().clone();
    let port = hub_with(&target, key.clone(), desired).await;
    let config = edgefilter::config::Config::local("h.azure-devices.net", target.clone(), port, key);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let module = tokio::spawn(edgefilter::module::run(config, Arc::new(Default::default()), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = trace::generate(&Generate {
        count: 300,
        rate: 1000.0,
        alert_ratio: Some(0.5),
        size: None,
        seed: 4,
        start: None,
    });
    let mut o = options(port, &target, Pace::Trace(2.0));
    o.rules = Some(edgefilter::rules::Rules::parse(rules.as_object().unwrap()).unwrap());
    let hot = messages.iter().filter(|m| edgefilter_perf::expected_outputs(m.body.as_bytes(), &o).len() == 2).count();
    assert!((100..=200).contains(&hot), "about half have two copies: {hot}");
    let report = replay(&messages, &o).await.unwrap();
    assert_eq!(report.expected, 300 + hot as u64, "a copy to `pressure` for each, one to output1 for the hot ones");
    assert_eq!(report.received, report.expected);
    assert_eq!((report.missing, report.duplicated, report.unexpected), (0, 0, 0));
    let _ = stop.send(());
    module.await.unwrap().unwrap();
}

/// Stands in for a faulty module: forwards inputs to output1, but drops every `drop_every`-th
/// and sends every `dup_every`-th twice. `persistent`: with a persistent session, so that it gets
/// what the broker queued for it while it was down.
async fn faulty_peer(port: u16, target: ModuleId, drop_every: u64, dup_every: u64, persistent: bool) {
    let mut options = rumqttc::MqttOptions::new("faulty", "127.0.0.1", port);
    options.set_max_packet_size(300_000, 300_000).set_clean_session(!persistent);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                client.subscribe(target.inputs_filter(), rumqttc::QoS::AtLeastOnce).await.unwrap();
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                let bag = p.topic.splitn(7, '/').nth(6).unwrap_or("").to_string();
                let seq: u64 = edgefilter::topic::parse_bag(&bag)
                    .unwrap()
                    .into_iter()
                    .find(|(k, _)| k == "sequenceNumber")
                    .unwrap()
                    .1
                    .parse()
                    .unwrap();
                let topic = target.events_topic(&format!("%24.on=output1&{bag}"));
                let copies = if seq.is_multiple_of(drop_every) {
                    0
                } else if seq.is_multiple_of(dup_every) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    client.try_publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, p.payload.to_vec()).unwrap();
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_duplicating_peer_is_reported_as_such() {
    let target = ModuleId::new("dev", "edgefilter");
    let port = hub(&target, vec![2u8; 32]).await;
    let peer = tokio::spawn(faulty_peer(port, target.clone(), 10, 7, false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = trace::generate(&Generate {
        count: 200,
        rate: 500.0,
        alert_ratio: Some(1.0),
        size: None,
        seed: 4,
        start: None,
    });
    let report = replay(&messages, &options(port, &target, Pace::Rate(400.0))).await.unwrap();
    let dropped = (1..=200u64).filter(|s| s.is_multiple_of(10)).count() as u64;
    let doubled = (1..=200u64).filter(|s| !s.is_multiple_of(10) && s.is_multiple_of(7)).count() as u64;
    assert_eq!(report.expected, 200);
    assert_eq!(report.missing, dropped);
    assert_eq!(report.received, 200 - dropped);
    assert_eq!(report.duplicated, doubled);
    assert!(!report.complete());
    assert!(report.summary().contains(&format!("missing {dropped}, duplicated {doubled}")), "{}", report.summary());
    peer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hub_and_a_bad_trace_fail_fast() {
    let started = std::time::Instant::now();
    let target = ModuleId::new("dev", "edgefilter");
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = replay(&[], &options(unused, &target, Pace::Max)).await.unwrap_err();
    assert!(err.0.contains("cannot connect") || err.0.contains("did not answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = trace::read("{\"t\":0,\"body\":\"{}\"}\nnot json\n").unwrap_err();
    assert!(err.starts_with("line 2: not JSON"), "{err}");
    assert!(trace::read("{\"t\":-1,\"body\":\"x\"}").unwrap_err().contains("\"t\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_replay_loses_none_of_the_publishers_messages() {
    // mosquitto with persistence, restarted while the replay publishes: every message the
    // publisher had not seen acknowledged is sent again after it reconnects.
    let mut broker = common::Broker::start("max_queued_messages 0");
    let target = ModuleId::new("dev", "edgefilter");
    let peer = tokio::spawn(faulty_peer(broker.port, target.clone(), u64::MAX, u64::MAX, true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = trace::generate(&Generate {
        count: 1500,
        rate: 500.0,
        alert_ratio: Some(1.0),
        size: None,
        seed: 5,
        start: None,
    });
    let mut o = options(broker.port, &target, Pace::Rate(500.0));
    o.settle = Duration::from_secs(15);
    let replay = tokio::spawn(async move { replay(&messages, &o).await });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let restarted = tokio::task::spawn_blocking(move || {
        broker.restart(Duration::from_millis(700));
        broker
    });
    let report = replay.await.unwrap().unwrap();
    let _broker = restarted.await.unwrap();
    assert!(report.publisher_reconnects >= 1, "the publisher reconnected: {}", report.summary());
    assert_eq!(report.sent, 1500);
    assert_eq!(report.missing, 0, "{}", report.summary());
    assert_eq!(report.received, 1500);
    peer.abort();
}

#[test]
fn the_command_line_refuses_what_it_does_not_know() {
    let perf = || std::process::Command::new(env!("CARGO_BIN_EXE_edgefilter-perf"));
    for args in [
        &["replay", "t.jsonl", "--hub", "mqtt://127.0.0.1:1", "--rat", "500"][..],
        &["generate", "--count", "many"],
        &["replay", "t.jsonl", "--hub", "mqtt://127.0.0.1:1", "--rate", "5", "--max"],
        &["frobnicate"],
    ] {
        let out = perf().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error:"), "{args:?}: {err}");
    }
    assert!(String::from_utf8_lossy(
        &perf().args(["replay", "x", "--hub", "h", "--rat", "5"]).output().unwrap().stderr
    )
    .contains("--rat"));
    for args in [&["--help"][..], &["replay", "--help"], &["compare", "--help"], &["--version"]] {
        let out = perf().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stdout.ends_with(b"\n"));
    }
}

#[test]
fn compare_puts_two_runs_side_by_side() {
    let run = |p50: f64, rate: f64| {
        serde_json::json!({"sent": 100, "achievedRate": rate,
            "alerts": {"missing": 0, "duplicated": 1},
            "latencyMs": {"p50": p50, "p90": p50 * 2.0, "p99": p50 * 3.0, "p99.9": p50 * 4.0, "max": p50 * 5.0},
            "module": {"cpuSeconds": 1.0, "peakRssKb": 5000},
            "latencyPercentilesMs": [[0.0, p50 / 2.0], [0.5, p50], [0.99, p50 * 3.0]],
            "alertsPerSecond": [10, 50, 40]})
    };
    let (a, b) = (run(2.0, 100.0), run(1.0, 200.0));
    let table = edgefilter_perf::output::compare_table(&a, &b, "runs/before.json", "runs/after.json").unwrap();
    assert!(table.contains("before.json") && table.contains("after.json"), "{table}");
    let p50 = table.lines().find(|l| l.starts_with("latency p50 ms")).unwrap();
    assert!(p50.contains("2.00") && p50.contains("1.00") && p50.ends_with("0.50x"), "{p50}");
    assert!(table.lines().any(|l| l.starts_with("achieved msg/s") && l.ends_with("2.00x")), "{table}");
    assert!(edgefilter_perf::output::compare_table(&serde_json::json!({}), &b, "x", "y").is_err());
    let runs = [
        edgefilter_perf::output::Run::from_json("before", &a).unwrap(),
        edgefilter_perf::output::Run::from_json("after", &b).unwrap(),
    ];
    let svg = edgefilter_perf::output::svg(&runs, "before against after");
    assert!(svg.contains(">before<") && svg.contains(">after<"), "a legend names both runs");
    assert_eq!(svg.matches("<polyline").count(), 4, "two curves in each panel");
}
