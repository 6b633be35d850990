//! The module against a real mosquitto broker, with this test playing edgeHub's side: inputs on
//! the module's input topic with edgeHub's property bag, twin answers, TLS with real certificates,
//! a broker restart mid-stream.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_keep_body_and_properties_and_everything_else_is_dropped() {
    let broker = Broker::start("");
    let mut edge = Peer::connect(broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = RunningModule::on(broker.port, &[]);
    let reported = answer_twin(&mut edge, &json!({"$version": 1}), Duration::from_secs(2)).await;
    assert_eq!(reported.last().unwrap()["TemperatureThreshold"], json!(25.0));

    let body = r#"{"machine":{"temperature":25.5,"pressure":1.5},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:00:00Z"}"#;
    let bag = "sequenceNumber=1&batchId=b%2F1&%24.ce=utf-8&%24.ct=application%2Fjson&%24.mid=m1&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor";
    edge.publish(&input_topic(bag), body).await;
    let inputs: Vec<(String, Vec<u8>)> = vec![
        (input_topic("sequenceNumber=2"), br#"{"machine":{"temperature":25}}"#.to_vec()),
        (input_topic("sequenceNumber=3"), b"not json".to_vec()),
        (input_topic("sequenceNumber=4"), br#"{"machine":{"temperature":"99"}}"#.to_vec()),
        (input_topic("sequenceNumber=5"), vec![0xff, 0xfe, b'{']),
        (
            "devices/dev/modules/filter/inputs/input2/sequenceNumber=6".into(),
            br#"{"machine":{"temperature":99}}"#.to_vec(),
        ),
        (input_topic("sequenceNumber=7&broken"), br#"{"machine":{"temperature":99}}"#.to_vec()),
        (input_topic(""), br#"{"machine":{"temperature":1e3}}"#.to_vec()),
    ];
    for (topic, body) in &inputs {
        edge.client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, body.clone()).await.unwrap();
    }
    let alerts = edge.drain(Duration::from_secs(2)).await;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(
        alerts[0].topic,
        "devices/dev/modules/filter/messages/events/%24.on=output1&%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&MessageType=Alert&batchId=b%2F1&sequenceNumber=1"
    );
    assert_eq!(alerts[0].payload.as_ref(), body.as_bytes());
    assert_eq!(alerts[1].topic, "devices/dev/modules/filter/messages/events/%24.on=output1&MessageType=Alert");
    assert_eq!(alerts[1].payload.as_ref(), br#"{"machine":{"temperature":1e3}}"#);

    let stats = module.stats.clone();
    module.stop().await.unwrap();
    use edgefilter::filter::Reason;
    use edgefilter::scan::{Malformed, Missing};
    assert_eq!(stats.received.load(std::sync::atomic::Ordering::Relaxed), 8);
    assert_eq!(stats.dropped(Reason::BelowThreshold), 1);
    assert_eq!(stats.dropped(Reason::Malformed(Malformed::InvalidJson)), 2);
    assert_eq!(stats.dropped(Reason::Missing(Missing::TemperatureNotANumber)), 1);
    assert_eq!(stats.dropped(Reason::UnknownInput), 1);
    assert_eq!(stats.dropped(Reason::BadPropertyBag), 1);
    assert_eq!(stats.alerts_confirmed.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_sets_the_threshold_live_and_bad_values_are_rejected() {
    let broker = Broker::start("");
    let mut edge = Peer::connect(broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = RunningModule::on(broker.port, &[("TemperatureThreshold", "10".into())]);
    // The full twin at start: 30 overrides the environment's 10.
    let reported =
        answer_twin(&mut edge, &json!({"TemperatureThreshold": 30, "$version": 3}), Duration::from_secs(2)).await;
    assert_eq!(reported.last().unwrap()["TemperatureThreshold"], json!(30.0));

    let send = |seq: u64, t: f64| hot(seq, t);
    let (topic, body) = send(1, 28.0);
    edge.publish(&topic, body).await;
    assert!(edge.next_event(Duration::from_secs(1)).await.is_none(), "28 is below 30");

    // A live patch lowers it.
    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=4", r#"{"TemperatureThreshold":20,"$version":4}"#)
        .await;
    let reported = answer_twin(&mut edge, &json!({}), Duration::from_millis(500)).await;
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0]["TemperatureThreshold"], json!(20.0));
    assert_eq!(reported[0]["RejectedSettings"]["TemperatureThreshold"], json!(null));
    let (topic, body) = send(2, 28.0);
    edge.publish(&topic, body).await;
    let alert = edge.next_event(Duration::from_secs(2)).await.expect("28 is above 20");
    assert_eq!(bag_value(&alert.topic, "sequenceNumber").as_deref(), Some("2"));

    // A bad value is rejected, the previous one stays, and both the log and reported say so.
    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=5", r#"{"TemperatureThreshold":"hot","$version":5}"#)
        .await;
    let reported = answer_twin(&mut edge, &json!({}), Duration::from_millis(500)).await;
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0]["TemperatureThreshold"], json!(20.0));
    assert_eq!(reported[0]["RejectedSettings"]["TemperatureThreshold"], json!("expected a number, got a string"));
    // A stale patch (older $version) is ignored; garbage is ignored.
    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=2", r#"{"TemperatureThreshold":99,"$version":2}"#)
        .await;
    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=6", r#"[[[["#).await;
    let (topic, body) = send(3, 21.0);
    edge.publish(&topic, body).await;
    let alert = edge.next_event(Duration::from_secs(2)).await.expect("21 is above 20");
    assert_eq!(bag_value(&alert.topic, "sequenceNumber").as_deref(), Some("3"));

    // Removing the desired value falls back to the environment's 10.
    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=7", r#"{"TemperatureThreshold":null,"$version":7}"#)
        .await;
    let reported = answer_twin(&mut edge, &json!({}), Duration::from_millis(500)).await;
    assert_eq!(reported.last().unwrap()["TemperatureThreshold"], json!(10.0));
    let stats = module.stats.clone();
    module.stop().await.unwrap();
    assert_eq!(stats.twin_rejections.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_broker_whose_certificate_chains_to_the_module_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (broker, tls_port, ca) = tls_broker(certs.path()); // certificate for "localhost"
    let mut edge = Peer::connect(broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let proxy = crate::common::proxy::Proxy::start(tls_port).await;
    let env = |ca: &std::path::Path| {
        vec![
            ("EdgeHubConnectionString", connection_string()),
            ("EDGEFILTER_MQTT_URL", format!("mqtts://localhost:{}", proxy.port)),
            ("EdgeModuleCACertificateFile", ca.display().to_string()),
        ]
    };
    let module = RunningModule::start(&env(&ca));
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    let (topic, body) = hot(1, 40.0);
    edge.publish(&topic, body).await;
    let alert = edge.next_event(Duration::from_secs(3)).await.expect("an alert over TLS");
    assert_eq!(bag_value(&alert.topic, "MessageType").as_deref(), Some("Alert"));
    module.stop().await.unwrap();

    // A CA the server's certificate does not chain to: the module never connects.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = certificates(other.path());
    let tried = proxy.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let module = RunningModule::start(&env(&wrong_ca));
    // Two attempts reached the broker (so the module did try), and neither connected.
    wait_until("the module tried twice", Duration::from_secs(10), || {
        proxy.accepted.load(std::sync::atomic::Ordering::Relaxed) >= tried + 2
    })
    .await;
    let (topic, body) = hot(2, 40.0);
    edge.publish(&topic, body).await;
    assert!(edge.next_event(Duration::from_millis(500)).await.is_none());
    assert_eq!(module.stats.connections.load(std::sync::atomic::Ordering::Relaxed), 0);
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_no_alert() {
    let mut broker = Broker::start("");
    // Persistent sessions on both sides: the sensor side publishes at QoS 1, the upstream side
    // collects alerts, both survive the restart.
    let mut upstream =
        Peer::connect(broker.port, "upstream", false, &["devices/dev/modules/filter/messages/events/#"]).await;
    let sensor = Peer::connect(broker.port, "sensor", false, &[]).await;
    let mut watch = SubscribedWatch::start(broker.port).await;
    let module = RunningModule::on(broker.port, &[]);
    watch.wait().await;

    const N: u64 = 400;
    for seq in 1..=N {
        let (topic, body) = hot(seq, 30.0 + seq as f64 / 100.0);
        sensor.publish(&topic, body).await;
        if seq == N / 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            broker.restart(Duration::from_millis(500));
        }
        if seq % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    while seen.len() < N as usize {
        let Some(p) = upstream.next(Duration::from_secs(20)).await else { break };
        let seq: u64 = bag_value(&p.topic, "sequenceNumber").unwrap().parse().unwrap();
        if !seen.insert(seq) {
            duplicates += 1;
        }
    }
    let missing: Vec<u64> = (1..=N).filter(|s| !seen.contains(s)).collect();
    assert!(missing.is_empty(), "lost {} alerts: {missing:?} (duplicates: {duplicates})", missing.len());
    eprintln!("broker restart mid-stream: {N} sent, 0 lost, {duplicates} duplicated");
    assert!(module.stats.connections.load(std::sync::atomic::Ordering::Relaxed) >= 2, "the module reconnected");
    module.stop().await.unwrap();
}

/// The output and MessageType of each publish, in the order they came.
fn outputs(alerts: &[rumqttc::Publish]) -> Vec<(String, Option<String>)> {
    alerts
        .iter()
        .map(|p| (bag_value(&p.topic, "$.on").unwrap_or_default(), bag_value(&p.topic, "MessageType")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_in_the_twin_change_what_is_forwarded_from_the_next_message() {
    let broker = Broker::start("");
    let mut edge = Peer::connect(broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = RunningModule::on(broker.port, &[]);
    let rules = json!({
        "HighTemperature": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1", "properties": {"MessageType": "Alert"}},
        "LowBattery": {"path": "battery", "op": "<", "value": 20, "output": "maintenance"}
    });
    let reported = answer_twin(&mut edge, &json!({"Rules": rules, "$version": 1}), Duration::from_secs(2)).await;
    assert_eq!(reported.last().unwrap()["Rules"]["LowBattery"]["output"], json!("maintenance"));
    let body = r#"{"machine":{"temperature":30,"pressure":2},"battery":10}"#;
    let message = |seq: u64| (hot(seq, 0.0).0, body.to_string());
    let (topic, body1) = message(1);
    edge.publish(&topic, body1).await;
    let alerts = edge.drain(Duration::from_millis(700)).await;
    let want = |o: &str, t: Option<&str>| (o.to_string(), t.map(String::from));
    assert_eq!(
        outputs(&alerts),
        vec![want("output1", Some("Alert")), want("maintenance", None)],
        "one copy per rule, by name"
    );
    assert!(alerts.iter().all(|a| a.payload == body.as_bytes()), "the body unchanged");

    // A patch, and at once a message: the message is decided under the patched rules.
    edge.publish(
        "$iothub/twin/PATCH/properties/desired/?$version=2",
        r#"{"Rules":{"HighPressure":{"path":"machine.pressure","op":">=","value":1.5,"output":"output2","properties":{"MessageType":"PressureAlert"}},"LowBattery":null},"$version":2}"#,
    )
    .await;
    let (topic, body2) = message(2);
    edge.publish(&topic, body2).await;
    let got = edge.drain(Duration::from_millis(700)).await;
    let alerts: Vec<_> = got.iter().filter(|p| !p.topic.starts_with("$iothub")).cloned().collect();
    assert_eq!(outputs(&alerts), vec![want("output2", Some("PressureAlert")), want("output1", Some("Alert"))]);
    let reported: Vec<serde_json::Value> = got
        .iter()
        .filter(|p| p.topic.starts_with("$iothub/twin/PATCH/properties/reported/"))
        .map(|p| serde_json::from_slice(&p.payload).unwrap())
        .collect();
    let patch = reported.iter().find(|r| r.get("Rules").is_some()).expect("the rules reported");
    assert_eq!(patch["Rules"]["LowBattery"], json!(null));
    assert_eq!(patch["Rules"]["HighPressure"]["output"], json!("output2"));

    // An invalid patch is refused whole: the rules stay, and the reason is reported.
    edge.publish(
        "$iothub/twin/PATCH/properties/desired/?$version=3",
        r#"{"Rules":{"HighPressure":{"op":"~"}},"$version":3}"#,
    )
    .await;
    let reported = answer_twin(&mut edge, &json!({}), Duration::from_millis(500)).await;
    assert!(reported[0]["RejectedSettings"]["Rules"].as_str().unwrap().contains("rule \"HighPressure\": op"));
    let (topic, body3) = message(3);
    edge.publish(&topic, body3).await;
    assert_eq!(outputs(&edge.drain(Duration::from_millis(700)).await).len(), 2, "the previous rules still apply");

    // A message no rule matches is counted as such.
    let (topic, _) = message(4);
    edge.publish(&topic, r#"{"machine":{"temperature":20,"pressure":1},"battery":90}"#).await;
    assert!(edge.drain(Duration::from_millis(500)).await.is_empty());

    // "Rules": null: back to the tutorial's rule on TemperatureThreshold.
    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=4", r#"{"Rules":null,"$version":4}"#).await;
    let (topic, body5) = message(5);
    edge.publish(&topic, body5).await;
    let got = edge.drain(Duration::from_millis(700)).await;
    let alerts: Vec<_> = got.iter().filter(|p| !p.topic.starts_with("$iothub")).cloned().collect();
    assert_eq!(outputs(&alerts), vec![want("output1", Some("Alert"))]);
    let stats = module.stats.clone();
    module.stop().await.unwrap();
    assert_eq!(stats.dropped(edgefilter::filter::Reason::NoRuleMatched), 1);
    assert_eq!(stats.alerts.load(std::sync::atomic::Ordering::Relaxed), 7);
}
