//! The armv7 release binary, run under qemu-arm against a real broker: alerts flow, a twin patch
//! applies, SIGTERM exits cleanly. Needs `EDGEFILTER_ARM_BINARY`, the binary's path
//! (scripts/test.sh builds it with scripts/build-release.sh and sets it). Without it the test
//! fails, so that a run that never reached the binary cannot pass; `EDGEFILTER_SKIP_ARM=1` skips
//! it on purpose (a machine without qemu-arm or the cross toolchain).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn armv7_binary_filters_applies_twin_and_stops_cleanly() {
    let Some(binary) = arm_binary() else {
        eprintln!("EDGEFILTER_SKIP_ARM=1: the armv7 test is skipped");
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
    let child = Reaped::new(child);
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
    let out = child.into_inner().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The binary to run, or None when the test is skipped on purpose. Panics when neither is said.
fn arm_binary() -> Option<String> {
    match (std::env::var("EDGEFILTER_ARM_BINARY"), std::env::var("EDGEFILTER_SKIP_ARM")) {
        (Ok(binary), _) => {
            assert!(std::path::Path::new(&binary).is_file(), "EDGEFILTER_ARM_BINARY={binary}: no such file");
            Some(binary)
        }
        (Err(_), Ok(skip)) if skip == "1" => None,
        (Err(_), _) => panic!(
            "EDGEFILTER_ARM_BINARY is not set: build the armv7 binary and name it \
             (scripts/build-release.sh armv7-unknown-linux-gnueabihf dist/armv7; \
             EDGEFILTER_ARM_BINARY=$PWD/dist/armv7/edgefilter), run scripts/test.sh, \
             or skip this test on purpose with EDGEFILTER_SKIP_ARM=1"
        ),
    }
}
