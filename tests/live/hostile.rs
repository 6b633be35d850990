//! Hostile input, through a real broker, over TLS and over plain TCP: each refused with a counted
//! reason and no crash, the module carrying on; hostile twins; TLS that does not verify; no secret
//! in any log line.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::common::*;
use edgefilter::filter::Reason;
use edgefilter::scan::{Malformed, Missing};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_counted_and_dropped_and_the_module_carries_on_over_tls() {
    hostile_bodies(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_counted_and_dropped_and_the_module_carries_on_over_tcp() {
    hostile_bodies(Transport::Tcp).await;
}

async fn hostile_bodies(transport: Transport) {
    let hub = Hub::start(transport, "max_packet_size 8000000");
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = hub.module(&[]);
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    let deep = format!("{{\"machine\":{{\"temperature\":30}},\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
    let bodies: Vec<(Vec<u8>, &str)> = vec![
        (vec![b' '; 2 * 1024 * 1024], "megabytes of whitespace"),
        (
            format!("{{\"machine\":{{\"temperature\":30}},\"pad\":\"{}\"}}", "x".repeat(300 * 1024)).into_bytes(),
            "over 256 KiB",
        ),
        (deep.into_bytes(), "200 levels deep"),
        (br#"{"machine":{"temperature":1e999}}"#.to_vec(), "a number out of range"),
        (format!("{{\"machine\":{{\"temperature\":{}}}}}", "9".repeat(400)).into_bytes(), "a 400-digit number"),
        (b"{\"machine\":{\"temperature\":30},\"a\":\"\xff\xfe\"}".to_vec(), "invalid UTF-8"),
        ((0..=255u8).cycle().take(4096).collect(), "binary garbage"),
        (br#"{"machine":{"temperature":"hot"}}"#.to_vec(), "a string temperature"),
        (br#"{"machine":[30]}"#.to_vec(), "machine is an array"),
        (b"".to_vec(), "an empty body"),
    ];
    for (seq, (body, _)) in bodies.iter().enumerate() {
        let (topic, _) = hot(seq as u64 + 1, 0.0);
        edge.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, body.clone()).await.unwrap();
    }
    let (topic, body) = hot(99, 30.0);
    edge.publish(&topic, body).await;
    // Generous for the sentinel (megabytes go through a debug build): it comes after them all, as
    // the broker delivers in order, so anything else forwarded would have come before it.
    // (The module's reported properties may come first, on a topic of their own.)
    let sentinel = edge.next_matching(Duration::from_secs(20), |p| p.topic.contains("/messages/events/")).await;
    assert_eq!(
        bag_value(&sentinel.topic, "sequenceNumber").as_deref(),
        Some("99"),
        "{transport:?}: only the sentinel alerts"
    );
    let s = &module.stats;
    assert_eq!(s.received.load(Relaxed), bodies.len() as u64 + 1);
    assert_eq!(s.dropped(Reason::TooLarge), 2);
    assert_eq!(s.dropped(Reason::Malformed(Malformed::TooDeep)), 1);
    assert_eq!(s.dropped(Reason::Malformed(Malformed::NumberOutOfRange)), 2);
    assert_eq!(s.dropped(Reason::Malformed(Malformed::InvalidUtf8)), 1);
    assert_eq!(s.dropped(Reason::Malformed(Malformed::InvalidJson)), 2);
    assert_eq!(s.dropped(Reason::Missing(Missing::TemperatureNotANumber)), 1);
    assert_eq!(s.dropped(Reason::Missing(Missing::MachineNotAnObject)), 1);
    assert_eq!(s.connections.load(Relaxed), 1, "{transport:?}: no message broke the connection");
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_twins_are_rejected_and_a_patch_flood_under_load_settles_on_the_last_over_tls() {
    hostile_twins(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_twins_are_rejected_and_a_patch_flood_under_load_settles_on_the_last_over_tcp() {
    hostile_twins(Transport::Tcp).await;
}

async fn hostile_twins(transport: Transport) {
    let hub = Hub::start(transport, "max_queued_messages 0");
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = hub.module(&[]);
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    let nested = format!("{{\"TemperatureThreshold\":{}1{}}}", "[".repeat(300), "]".repeat(300));
    for (v, patch) in [
        r#"{"TemperatureThreshold":"NaN"}"#.to_string(),
        r#"{"BatchSize":-5,"BatchIntervalMs":1e12,"ReportIntervalSecs":0}"#.to_string(),
        r#"{"Unknown":{"deep":[1,2,3]},"TemperatureThreshold":{"$ref":1}}"#.to_string(),
        nested,
        "\u{0}\u{1}garbage".to_string(),
        "[]".to_string(),
    ]
    .iter()
    .enumerate()
    {
        edge.publish(&format!("$iothub/twin/PATCH/properties/desired/?$version={}", v + 2), patch.clone()).await;
    }
    // A flood of valid patches while messages stream at 28°: the last patch (20) wins.
    for i in 0..500u64 {
        let threshold = if i == 499 { 20 } else { 30 + i % 7 };
        let version = 10 + i;
        edge.publish(
            &format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            format!(r#"{{"TemperatureThreshold":{threshold},"$version":{version}}}"#),
        )
        .await;
        let (topic, body) = hot(1000 + i, 28.0);
        edge.publish(&topic, body).await;
    }
    let (topic, body) = hot(1, 28.0);
    edge.publish(&topic, body).await;
    // Everything up to the sentinel's alert (28 > 20 once the last patch is in).
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !got.iter().any(|p: &rumqttc::Publish| {
        p.topic.contains("/messages/events/") && bag_value(&p.topic, "sequenceNumber").as_deref() == Some("1")
    }) {
        assert!(tokio::time::Instant::now() < deadline, "{transport:?}: no alert for the sentinel at 28 > 20");
        got.extend(edge.next(Duration::from_millis(100)).await);
    }
    // The report of the last patch may come after the sentinel's alert: wait for it.
    let last_reported = |got: &[rumqttc::Publish]| {
        got.iter()
            .filter(|p| p.topic.starts_with("$iothub/twin/PATCH/properties/reported/"))
            .filter_map(|p| serde_json::from_slice::<serde_json::Value>(&p.payload).ok())
            .filter(|r| r.get("TemperatureThreshold").is_some())
            .last()
    };
    while last_reported(&got).is_none_or(|r| r["TemperatureThreshold"] != json!(20.0)) {
        assert!(tokio::time::Instant::now() < deadline, "{transport:?}: the last patch never reported");
        got.extend(edge.next(Duration::from_millis(100)).await);
    }
    let s = &module.stats;
    assert!(s.twin_rejections.load(Relaxed) >= 7, "{}", s.twin_rejections.load(Relaxed));
    assert_eq!(s.connections.load(Relaxed), 1);
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (_broker, tls_port, ca) = tls_broker(certs.path()); // certificate for "localhost"
    let proxy = crate::common::proxy::Proxy::start(tls_port).await;
    let module = RunningModule::start(&[
        ("EdgeHubConnectionString", connection_string()),
        ("EDGEFILTER_MQTT_URL", format!("mqtts://127.0.0.1:{}", proxy.port)),
        ("EdgeModuleCACertificateFile", ca.display().to_string()),
    ]);
    // Two attempts reached the broker (so the module did try), and neither connected.
    wait_until("the module tried twice", Duration::from_secs(10), || proxy.accepted.load(Relaxed) >= 2).await;
    assert_eq!(module.stats.connections.load(Relaxed), 0, "the name 127.0.0.1 is not on the certificate");
    module.stop().await.unwrap();
}

#[test]
fn no_secret_reaches_the_log_even_at_verbose() {
    let broker = Broker::start("");
    let token_sig_marker = "sig=";
    let child = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .env("EdgeHubConnectionString", connection_string())
        .env("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{}", broker.port))
        .env("EDGEFILTER_METRICS_ADDR", "off")
        .env("EDGEFILTER_TOKEN_TTL_SECS", "10")
        .env("RuntimeLogLevel", "verbose")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped::new(child);
    for seq in 0..5 {
        let (topic, body) = hot(seq, 30.0);
        Command::new("mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1", "-t", &topic, "-m", &body])
            .status()
            .unwrap();
    }
    // Both streams read as they come, until a token renewal (after 8 s of a 10 s token).
    let lines = log_lines([
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]);
    let mut log = String::new();
    let renewed = Instant::now() + Duration::from_secs(20);
    while !log.contains("SAS token renewed") {
        let Ok(line) = lines.recv_timeout(renewed.saturating_duration_since(Instant::now())) else { break };
        log.push_str(&line);
        log.push('\n');
    }
    terminate(&child);
    child.wait().unwrap();
    // The rest, until both streams end.
    for line in lines {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(log.contains("SAS token renewed"), "{log}");
    for secret in [KEY_B64, "SharedAccessSignature", token_sig_marker, "SharedAccessKey="] {
        assert!(!log.contains(secret), "{secret:?} appears in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_output_when_one_is_set_over_tls() {
    dead_letters(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_output_when_one_is_set_over_tcp() {
    dead_letters(Transport::Tcp).await;
}

/// Publishes until the alert of a sentinel (hot, sequence number `seq`) arrives; returns what came.
async fn until_alert(edge: &mut Peer, seq: u64) -> Vec<rumqttc::Publish> {
    let (topic, body) = hot(seq, 30.0);
    edge.publish(&topic, body).await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let want = seq.to_string();
    while !got.iter().any(|p: &rumqttc::Publish| bag_value(&p.topic, "sequenceNumber").as_deref() == Some(&want)) {
        assert!(tokio::time::Instant::now() < deadline, "no alert for sentinel {seq}");
        got.extend(edge.next(Duration::from_millis(100)).await);
    }
    got
}

async fn dead_letters(transport: Transport) {
    let hub = Hub::start(transport, "");
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = hub.module(&[]);
    serve_twin(&mut edge, &module, &json!({"DeadLetterOutput": "deadLetters", "$version": 1})).await;
    let (topic, _) = hot(1, 0.0);
    edge.publish(&topic, "{not json").await;
    let (topic, _) = hot(2, 0.0);
    edge.publish(&topic, r#"{"machine":{"temperature":"hot"}}"#).await; // valid JSON: dropped, not dead-lettered
    let got = until_alert(&mut edge, 3).await;
    let out: Vec<(String, String, String)> = got
        .iter()
        .filter(|p| p.topic.contains("/messages/events/"))
        .map(|p| {
            (
                bag_value(&p.topic, "$.on").unwrap(),
                bag_value(&p.topic, "sequenceNumber").unwrap(),
                bag_value(&p.topic, "FilterError").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        out,
        vec![
            ("deadLetters".to_string(), "1".to_string(), "invalid_json".to_string()),
            ("output1".to_string(), "3".to_string(), String::new())
        ]
    );
    assert_eq!(got.iter().find(|p| p.topic.contains("deadLetters")).unwrap().payload.as_ref(), b"{not json");
    // Turned off: malformed messages are dropped again.
    let updates = module.stats.twin_updates.load(Relaxed);
    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=2", r#"{"DeadLetterOutput":"","$version":2}"#).await;
    wait_until("the patch applied", Duration::from_secs(10), || module.stats.twin_updates.load(Relaxed) > updates)
        .await;
    let (topic, _) = hot(4, 0.0);
    edge.publish(&topic, "\u{0}").await;
    let got = until_alert(&mut edge, 5).await;
    let forwarded: Vec<_> = got.iter().filter_map(|p| bag_value(&p.topic, "sequenceNumber")).collect();
    assert_eq!(forwarded, vec!["5"], "{transport:?}: nothing forwarded once off but the sentinel");
    assert_eq!(module.stats.dead_lettered.load(Relaxed), 1);
    module.stop().await.unwrap();
}
