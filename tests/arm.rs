//! The armv7 release binary, run under qemu-arm against a real broker: alerts flow, a twin patch
//! applies, SIGTERM exits cleanly. Needs `EDGEFILTER_ARM_BINARY` (scripts/test.sh builds the binary
//! with scripts/build-release.sh and sets it); without it the test says so and does nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn armv7_binary_filters_applies_twin_and_stops_cleanly() {
    let Ok(binary) = std::env::var("EDGEFILTER_ARM_BINARY") else {
        eprintln!("EDGEFILTER_ARM_BINARY is not set: the armv7 test did not run (scripts/test.sh runs it)");
        return;
    };
    let broker = Broker::start("");
    let mut edge = Peer::connect(broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let child = Command::new("qemu-arm")
        .args(["-L", "/usr/arm-linux-gnueabihf", &binary])
        .env("EdgeHubConnectionString", connection_string())
        .env("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{}", broker.port))
        .stdout(Stdio::piped())
        .spawn()
        .expect("qemu-arm (apt-get install qemu-user)");
    let reported =
        answer_twin(&mut edge, &json!({"TemperatureThreshold": 28, "$version": 1}), Duration::from_secs(5)).await;
    assert_eq!(reported.last().expect("reported properties from the ARM module")["TemperatureThreshold"], json!(28.0));

    for (seq, t) in [(1, 27.0), (2, 29.0)] {
        let (topic, body) = hot(seq, t);
        edge.publish(&topic, body).await;
    }
    let alert = edge.next(Duration::from_secs(5)).await.expect("alert from the ARM module");
    assert_eq!(bag_value(&alert.topic, "sequenceNumber").as_deref(), Some("2"));

    edge.publish("$iothub/twin/PATCH/properties/desired/?$version=2", r#"{"TemperatureThreshold":26,"$version":2}"#)
        .await;
    let reported = answer_twin(&mut edge, &json!({}), Duration::from_secs(1)).await;
    assert_eq!(reported.last().unwrap()["TemperatureThreshold"], json!(26.0));
    let (topic, body) = hot(3, 27.0);
    edge.publish(&topic, body).await;
    let alert = edge.next(Duration::from_secs(5)).await.expect("27 > 26 after the patch");
    assert_eq!(bag_value(&alert.topic, "sequenceNumber").as_deref(), Some("3"));

    terminate(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}
