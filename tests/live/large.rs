//! Large messages and large batches, over TLS and plain TCP, through a real mosquitto: a path that
//! only TLS takes (sealing a batch into records) must not go untested again (issue 20).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::common::proxy::{Budget, Proxy};
use crate::common::*;
use edgefilter::filter::Reason;
use serde_json::json;

/// edgeHub's delivery: one message in flight, and nothing dropped for a slow consumer.
const EDGEHUB_SHAPE: &str = "max_inflight_messages 1\nmax_queued_messages 100000";

/// A hot body of about `size` bytes.
fn big(size: usize) -> String {
    let head = r#"{"machine":{"temperature":30},"pad":""#;
    format!("{head}{}\"}}", "x".repeat(size.saturating_sub(head.len() + 2)))
}

fn seq(p: &rumqttc::Publish) -> u64 {
    bag_value(&p.topic, "sequenceNumber").and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Collects alerts until every one of `want` arrived (or `within` passes): sequence number ->
/// (copies, body sizes seen).
async fn collect(edge: &mut Peer, want: usize, within: Duration) -> BTreeMap<u64, Vec<usize>> {
    let mut seen: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    while seen.len() < want && tokio::time::Instant::now() < deadline {
        if let Some(p) = edge.next(Duration::from_millis(100)).await {
            if p.topic.contains("/messages/events/") {
                seen.entry(seq(&p)).or_default().push(p.payload.len());
            }
        }
    }
    seen
}

async fn stream_with_200_and_250_kb_alerts(transport: Transport) {
    let hub = Hub::start(transport, EDGEHUB_SHAPE);
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = hub.module(&[]);
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    let sizes: BTreeMap<u64, usize> = [(40, 200 * 1024), (80, 250 * 1024)].into();
    for n in 1..=120u64 {
        let (topic, body) = hot(n, 30.0);
        edge.publish(&topic, sizes.get(&n).map_or(body, |&s| big(s))).await;
    }
    let seen = collect(&mut edge, 120, Duration::from_secs(60)).await;
    let missing: Vec<u64> = (1..=120).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "{transport:?}: alerts missing {missing:?}");
    assert_eq!(seen[&40], vec![big(200 * 1024).len()], "{transport:?}: the 200 KB alert once, whole");
    assert_eq!(seen[&80], vec![big(250 * 1024).len()], "{transport:?}: the 250 KB alert once, whole");
    assert_eq!(module.stats.connections.load(Relaxed), 1, "{transport:?}: no reconnection");
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_200_and_250_kb_alerts_delivers_every_alert_over_tls() {
    stream_with_200_and_250_kb_alerts(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_200_and_250_kb_alerts_delivers_every_alert_over_tcp() {
    stream_with_200_and_250_kb_alerts(Transport::Tcp).await;
}

/// 300 alerts of 1 KB unconfirmed when the connection is cut: sent again in one batch of about
/// 360 KB (over five times rustls's 64 KiB), which over TLS failed and reconnected without end.
async fn three_hundred_alerts_sent_again(transport: Transport) {
    let hub = Hub::start(transport, "max_inflight_messages 0\nmax_queued_messages 100000");
    let proxy = Proxy::start(hub.module_port).await;
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = RunningModule::start(&hub.module_env(proxy.port));
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    proxy.hold_upstream();
    for n in 1..=300u64 {
        edge.publish(&hot(n, 30.0).0, big(1024)).await;
    }
    wait_until("300 alerts are unconfirmed", Duration::from_secs(30), || module.stats.alerts.load(Relaxed) >= 300)
        .await;
    assert_eq!(module.stats.alerts_confirmed.load(Relaxed), 0, "held: nothing reached the broker");
    proxy.cut();
    let seen = collect(&mut edge, 300, Duration::from_secs(60)).await;
    let missing: Vec<u64> = (1..=300).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "{transport:?}: alerts missing {missing:?}");
    wait_until("the resent alerts are confirmed", Duration::from_secs(30), || {
        module.stats.alerts_confirmed.load(Relaxed) >= 300
    })
    .await;
    let connections = module.stats.connections.load(Relaxed);
    assert_eq!(connections, 2, "{transport:?}: one reconnection, not a storm ({connections})");
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_unconfirmed_alerts_are_sent_again_in_one_batch_over_tls() {
    three_hundred_alerts_sent_again(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_unconfirmed_alerts_are_sent_again_in_one_batch_over_tcp() {
    three_hundred_alerts_sent_again(Transport::Tcp).await;
}

/// Two rules copy one 200 KB message to two outputs: a 400 KB write.
async fn rules_copy_a_200_kb_message_to_two_outputs(transport: Transport) {
    let hub = Hub::start(transport, EDGEHUB_SHAPE);
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = hub.module(&[]);
    let rules = json!({
        "Hot": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1"},
        "HotToo": {"path": "machine.temperature", "op": ">", "value": 20, "output": "output2"}
    });
    serve_twin(&mut edge, &module, &json!({"Rules": rules, "$version": 1})).await;
    edge.publish(&hot(1, 30.0).0, big(200 * 1024)).await;
    edge.publish(&hot(2, 30.0).0, big(100)).await;
    let mut outputs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outputs.len() < 4 && tokio::time::Instant::now() < deadline {
        if let Some(p) = edge.next(Duration::from_millis(100)).await {
            if p.topic.contains("/messages/events/") {
                outputs.push((seq(&p), bag_value(&p.topic, "$.on").unwrap_or_default(), p.payload.len()));
            }
        }
    }
    let (b200, b100) = (big(200 * 1024).len(), big(100).len());
    assert_eq!(
        outputs,
        vec![
            (1, "output1".into(), b200),
            (1, "output2".into(), b200),
            (2, "output1".into(), b100),
            (2, "output2".into(), b100)
        ],
        "{transport:?}"
    );
    assert_eq!(module.stats.connections.load(Relaxed), 1, "{transport:?}: no reconnection");
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_copy_a_200_kb_message_to_two_outputs_over_tls() {
    rules_copy_a_200_kb_message_to_two_outputs(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_copy_a_200_kb_message_to_two_outputs_over_tcp() {
    rules_copy_a_200_kb_message_to_two_outputs(Transport::Tcp).await;
}

/// Publishes 1..=20 hot, number 11 with a 200 KB body; returns the alerts seen until every one
/// but 11 came: sequence number -> outputs.
async fn stream_with_a_poison_alert(edge: &mut Peer, until_also: Option<&str>) -> BTreeMap<u64, Vec<String>> {
    for n in 1..=20u64 {
        let (topic, body) = hot(n, 30.0);
        edge.publish(&topic, if n == 11 { big(200 * 1024) } else { body }).await;
    }
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = |seen: &BTreeMap<u64, Vec<String>>| {
        (1..=20).filter(|&n| n != 11).all(|n| seen.contains_key(&n))
            && until_also.is_none_or(|o| seen.get(&11).is_some_and(|v| v.iter().any(|x| x == o)))
    };
    while !done(&seen) && tokio::time::Instant::now() < deadline {
        if let Some(p) = edge.next(Duration::from_millis(100)).await {
            if p.topic.contains("/messages/events/") {
                let output = bag_value(&p.topic, "$.on").unwrap_or_default();
                let error = bag_value(&p.topic, "FilterError").map_or_else(String::new, |e| format!(":{e}"));
                seen.entry(seq(&p)).or_default().push(format!("{output}{error}"));
            }
        }
    }
    seen
}

/// A hub that drops the connection whenever the 200 KB alert comes (a proxy with a 150 KB budget
/// per connection, answering what came before): the alert is given up after
/// EDGEFILTER_MAX_DELIVERY_ATTEMPTS connections, counted, and every alert before and after it
/// is delivered.
async fn an_alert_that_breaks_every_connection_is_given_up(transport: Transport) {
    let hub = Hub::start(transport, EDGEHUB_SHAPE);
    let budget = Budget { bytes: 150 * 1024, connections: u64::MAX };
    let proxy = Proxy::start_with(hub.module_port, Some(budget)).await;
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let mut env = hub.module_env(proxy.port);
    env.push(("EDGEFILTER_MAX_DELIVERY_ATTEMPTS", "2".into()));
    let module = RunningModule::start(&env);
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    let seen = stream_with_a_poison_alert(&mut edge, None).await;
    let missing: Vec<u64> = (1..=20).filter(|&n| n != 11 && !seen.contains_key(&n)).collect();
    assert!(missing.is_empty(), "{transport:?}: alerts missing {missing:?}");
    assert!(!seen.contains_key(&11), "{transport:?}: the hub never took the 200 KB alert");
    let s = &module.stats;
    assert!(s.dropped(Reason::DeliveryFailed) >= 1, "{transport:?}: counted as delivery_failed");
    let connections = s.connections.load(Relaxed);
    assert!((3..=5).contains(&connections), "{transport:?}: two failed, then one that worked: {connections}");
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_that_breaks_every_connection_is_given_up_and_the_stream_goes_on_over_tls() {
    an_alert_that_breaks_every_connection_is_given_up(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_that_breaks_every_connection_is_given_up_and_the_stream_goes_on_over_tcp() {
    an_alert_that_breaks_every_connection_is_given_up(Transport::Tcp).await;
}

/// The same, with DeadLetterOutput set and a hub that chokes only on the first two connections:
/// the alert given up goes to the dead-letter output with FilterError=delivery_failed.
async fn an_alert_given_up_goes_to_the_dead_letter_output(transport: Transport) {
    let hub = Hub::start(transport, EDGEHUB_SHAPE);
    let proxy = Proxy::start_with(hub.module_port, Some(Budget { bytes: 150 * 1024, connections: 2 })).await;
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let mut env = hub.module_env(proxy.port);
    env.push(("EDGEFILTER_MAX_DELIVERY_ATTEMPTS", "2".into()));
    env.push(("DeadLetterOutput", "deadletter".into()));
    let module = RunningModule::start(&env);
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    let seen = stream_with_a_poison_alert(&mut edge, Some("deadletter:delivery_failed")).await;
    let missing: Vec<u64> = (1..=20).filter(|&n| n != 11 && !seen.contains_key(&n)).collect();
    assert!(missing.is_empty(), "{transport:?}: alerts missing {missing:?}");
    assert_eq!(seen.get(&11).cloned().unwrap_or_default(), vec!["deadletter:delivery_failed"], "{transport:?}");
    assert_eq!(module.stats.dead_lettered.load(Relaxed), 1);
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_given_up_goes_to_the_dead_letter_output_over_tls() {
    an_alert_given_up_goes_to_the_dead_letter_output(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_given_up_goes_to_the_dead_letter_output_over_tcp() {
    an_alert_given_up_goes_to_the_dead_letter_output(Transport::Tcp).await;
}

/// An input just under edgeHub's limit whose alert, with its properties, would be over it: given
/// up at once (alert_too_large), its input acknowledged, the stream going on.
async fn an_alert_over_edgehubs_limit_is_given_up(transport: Transport) {
    let hub = Hub::start(transport, EDGEHUB_SHAPE);
    let mut edge = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = hub.module(&[]);
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    for n in 1..=20u64 {
        let (topic, body) = hot(n, 30.0);
        edge.publish(&topic, if n == 11 { big(262_000) } else { body }).await;
    }
    let seen = collect(&mut edge, 19, Duration::from_secs(30)).await;
    let missing: Vec<u64> = (1..=20).filter(|&n| n != 11 && !seen.contains_key(&n)).collect();
    assert!(missing.is_empty(), "{transport:?}: alerts missing {missing:?}");
    assert!(!seen.contains_key(&11));
    assert_eq!(module.stats.dropped(Reason::AlertTooLarge), 1);
    assert_eq!(module.stats.dropped(Reason::TooLarge), 0, "the input itself was within the limit");
    assert_eq!(module.stats.connections.load(Relaxed), 1);
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_over_edgehubs_limit_is_given_up_over_tls() {
    an_alert_over_edgehubs_limit_is_given_up(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_over_edgehubs_limit_is_given_up_over_tcp() {
    an_alert_over_edgehubs_limit_is_given_up(Transport::Tcp).await;
}
