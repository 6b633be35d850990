//! The twin's aggregates end to end: the module binary against a real mosquitto, over TLS and
//! plain TCP, this test playing edgeHub. A summary arrives with the readings' count and average;
//! a SIGTERM mid-window loses nothing (the checkpoint written at the stop is restored at the
//! start, and the window is sent once); a SIGKILL loses at most what came since the last
//! checkpoint; a hostile `Aggregates` is refused whole and reported, and the module carries on.
//!
//! Windows are 1 s, on event time (`timeCreated`, no lateness), placed 10 s ahead of the clock so
//! that every reading lands in the window the test means, however slow the machine; a reading
//! stamped after the window's end moves the watermark past it and closes it at once (event time's
//! rule), so no test waits for the clock.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{input_topic, Hub, Peer, Transport, EDGE_SIDE};
use crate::process::{state_file, EdgeSide, ModuleProcess};
use edgefilter::aggregate::time::format_iso;
use edgefilter::aggregate::{AggregateSet, Aggregator};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The start of a 1-s window at least `ahead_ms` from now.
fn window_ahead(ahead_ms: i64) -> i64 {
    (unix_ms() + ahead_ms) / 1000 * 1000 + 1000
}

fn aggregates() -> Value {
    json!({"T1s": {
        "path": "machine.temperature",
        "window": {"kind": "tumbling", "seconds": 1},
        "functions": ["count", "avg", "min", "max"],
        "time": {"path": "timeCreated", "lateSeconds": 0},
        "output": "aggregates",
        "properties": {"MessageType": "Aggregate"}
    }})
}

fn desired() -> Value {
    json!({"$version": 1, "CheckpointSeconds": 1, "Aggregates": aggregates()})
}

async fn edge_side(hub: &Hub) -> EdgeSide {
    let peer = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    EdgeSide { peer, desired: desired(), reported: Vec::new() }
}

/// A reading at `at` (Unix ms) with machine temperature `t` and message id `mid`.
async fn reading(edge: &EdgeSide, mid: &str, t: f64, at: i64) {
    let body = format!(r#"{{"machine":{{"temperature":{t}}},"timeCreated":"{}"}}"#, format_iso(at));
    edge.peer.publish(&input_topic(&format!("%24.mid={mid}&%24.cdid=dev&%24.cmid=sensor")), body).await;
}

/// A reading stamped after the window from `start` ends: the watermark passes it, it closes.
async fn close(edge: &EdgeSide, start: i64) {
    reading(edge, &format!("close{start}"), 0.0, start + 1500).await;
}

/// Sends a hot reading (it alerts) and waits for its alert: then the module has folded it.
async fn folded(edge: &mut EdgeSide, mid: &str, t: f64, at: i64) {
    reading(edge, mid, t, at).await;
    let want = format!("%24.mid={mid}");
    edge.until(&format!("the alert of {mid}"), WAIT, |p| p.topic.contains(&want)).await;
}

/// The summary of the window starting at `start`.
async fn summary(edge: &mut EdgeSide, start: i64) -> Value {
    let want = format_iso(start);
    let p = edge
        .until(&format!("the summary of the window from {want}"), WAIT, |p| {
            p.topic.contains("%24.on=aggregates&MessageType=Aggregate")
                && serde_json::from_slice::<Value>(&p.payload).is_ok_and(|b| b["windowStart"] == want)
        })
        .await;
    serde_json::from_slice(&p.payload).unwrap()
}

/// The readings the state file holds in open windows.
fn checkpointed(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(state_file(dir)).ok()?;
    let set = std::sync::Arc::new(AggregateSet::parse(aggregates().as_object().unwrap()).unwrap());
    let (agg, _) = Aggregator::restore(set, &bytes, unix_ms()).ok()?;
    Some(agg.series.iter().flat_map(|s| &s.groups).flat_map(|(_, panes)| panes).map(|(_, s)| s.count).sum())
}

async fn a_summary_arrives_with_the_readings_count_and_average(transport: Transport) {
    let hub = Hub::start(transport, "");
    let dir = tempfile::tempdir().unwrap();
    let mut edge = edge_side(&hub).await;
    let module = ModuleProcess::start(&hub, dir.path(), &[]);
    edge.reported_until("the aggregates are in effect", WAIT, |r| r["Aggregates"]["T1s"].is_object()).await;
    let start = window_ahead(10_000);
    for (i, t) in [20.0, 22.5, 24.0, 21.5].into_iter().enumerate() {
        reading(&edge, &format!("m{i}"), t, start + 100 + 200 * i as i64).await;
    }
    close(&edge, start).await;
    let s = summary(&mut edge, start).await;
    assert_eq!(s["count"], 4, "{s}\n{}", module.log_text());
    assert_eq!((s["min"].as_f64(), s["max"].as_f64()), (Some(20.0), Some(24.0)));
    assert!((s["avg"].as_f64().unwrap() - 22.0).abs() < 1e-12, "{s}");
    assert_eq!(s["windowEnd"], format_iso(start + 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_arrives_with_the_readings_count_and_average_over_tls() {
    a_summary_arrives_with_the_readings_count_and_average(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_arrives_with_the_readings_count_and_average_over_tcp() {
    a_summary_arrives_with_the_readings_count_and_average(Transport::Tcp).await;
}

async fn sigterm_mid_window_then_a_restart_loses_no_reading(transport: Transport) {
    let hub = Hub::start(transport, "");
    let dir = tempfile::tempdir().unwrap();
    let mut edge = edge_side(&hub).await;
    let first = ModuleProcess::start(&hub, dir.path(), &[]);
    edge.reported_until("the aggregates are in effect", WAIT, |r| r["Aggregates"]["T1s"].is_object()).await;
    let start = window_ahead(10_000);
    folded(&mut edge, "a", 30.0, start + 100).await;
    folded(&mut edge, "b", 40.0, start + 200).await;
    let status = first.terminate().await;
    assert!(status.success(), "{status}");
    assert_eq!(checkpointed(dir.path()), Some(2), "the stop's checkpoint holds the open window");
    let second = ModuleProcess::start(&hub, dir.path(), &[]);
    folded(&mut edge, "c", 50.0, start + 300).await;
    assert!(unix_ms() < start, "the restart took 10 s");
    close(&edge, start).await;
    let s = summary(&mut edge, start).await;
    assert_eq!(s["count"], 3, "{s}\n{}", second.log_text());
    assert_eq!(s["avg"], 40.0);
    let log = second.log_text();
    assert!(log.contains("restored from the state file: 1 open windows"), "{log}");
    // Sent once: nothing more for that window by the time the module has stopped again.
    assert!(second.terminate().await.success());
    let rest = edge.peer.drain(Duration::from_millis(200)).await;
    let want = format_iso(start);
    assert!(!rest.iter().any(|p| String::from_utf8_lossy(&p.payload).contains(&want)), "sent twice: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_window_then_a_restart_loses_no_reading_over_tls() {
    sigterm_mid_window_then_a_restart_loses_no_reading(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_window_then_a_restart_loses_no_reading_over_tcp() {
    sigterm_mid_window_then_a_restart_loses_no_reading(Transport::Tcp).await;
}

/// A restart that takes longer than lateSeconds: the readings the sensor made meanwhile, which
/// the hub delivers once the module is back, are older than the clock by up to the downtime,
/// and still count (the clock moves an event-time watermark only once input stops, not while
/// readings come on time). Stamped with the real clock, one reading per 1-s window; each window
/// is sent once, counting its one reading.
async fn the_backlog_after_a_restart_longer_than_late_seconds_counts(transport: Transport) {
    let hub = Hub::start(transport, "");
    let dir = tempfile::tempdir().unwrap();
    let mut set = aggregates();
    set["T1s"]["time"]["lateSeconds"] = json!(2);
    let peer = Peer::connect(hub.broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let desired = json!({"$version": 1, "CheckpointSeconds": 1, "Aggregates": set});
    let mut edge = EdgeSide { peer, desired, reported: Vec::new() };
    let first = ModuleProcess::start(&hub, dir.path(), &[]);
    edge.reported_until("the aggregates are in effect", WAIT, |r| r["Aggregates"]["T1s"].is_object()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // windows start after the aggregate
    let mut sent = vec![unix_ms()];
    folded(&mut edge, "a", 30.0, sent[0]).await;
    let first_log = first.log_text();
    assert!(first.terminate().await.success());
    // The sensor goes on while the module is down; the hub keeps its messages for the module.
    for mid in ["b", "c", "d", "e"] {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        sent.push(unix_ms());
        reading(&edge, mid, 30.0, *sent.last().unwrap()).await;
    }
    let window = |at: i64| (at - 1).div_euclid(1000) * 1000;
    close(&edge, window(*sent.last().unwrap())).await;
    let second = ModuleProcess::start(&hub, dir.path(), &[]);
    let want: Vec<String> = sent.iter().map(|&at| format_iso(window(at))).collect();
    let mut summaries = std::collections::BTreeMap::new();
    let all = tokio::time::timeout(
        WAIT,
        edge.until("the summary of every reading's window", WAIT * 3, |p| {
            if p.topic.contains("%24.on=aggregates&MessageType=Aggregate") {
                let b: Value = serde_json::from_slice(&p.payload).unwrap();
                summaries.entry(b["windowStart"].as_str().unwrap().to_string()).or_insert_with(Vec::new).push(b);
            }
            want.iter().all(|w| summaries.contains_key(w))
        }),
    )
    .await;
    assert!(all.is_ok(), "want {want:?}, got {summaries:?}\n{first_log}\n{}", second.log_text());
    for w in &want {
        let s = &summaries[w];
        assert_eq!(s.len(), 1, "the window from {w} sent once: {s:?}");
        assert_eq!(s[0]["count"], 1, "the window from {w}: {s:?}\n{}", second.log_text());
    }
    let log = second.log_text();
    assert!(!log.contains(" late"), "no reading was late: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_after_a_restart_longer_than_late_seconds_counts_over_tls() {
    the_backlog_after_a_restart_longer_than_late_seconds_counts(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_after_a_restart_longer_than_late_seconds_counts_over_tcp() {
    the_backlog_after_a_restart_longer_than_late_seconds_counts(Transport::Tcp).await;
}

/// A crash loses what was folded since the last checkpoint: here, the one reading after it; an
/// input the module had not acknowledged yet is redelivered and counted after all. The window
/// holds between the checkpointed readings and every reading.
async fn sigkill_loses_at_most_what_came_since_the_last_checkpoint(transport: Transport) {
    let hub = Hub::start(transport, "");
    let dir = tempfile::tempdir().unwrap();
    let mut edge = edge_side(&hub).await;
    let first = ModuleProcess::start(&hub, dir.path(), &[]);
    edge.reported_until("the aggregates are in effect", WAIT, |r| r["Aggregates"]["T1s"].is_object()).await;
    let start = window_ahead(10_000);
    folded(&mut edge, "a", 30.0, start + 100).await;
    folded(&mut edge, "b", 40.0, start + 200).await;
    crate::common::wait_until("the checkpoint holds a and b", WAIT, || checkpointed(dir.path()) == Some(2)).await;
    folded(&mut edge, "c", 50.0, start + 300).await;
    first.kill();
    let saved = checkpointed(dir.path()).unwrap();
    assert!((2..=3).contains(&saved), "{saved}");
    let second = ModuleProcess::start(&hub, dir.path(), &[]);
    folded(&mut edge, "d", 60.0, start + 400).await;
    close(&edge, start).await;
    let s = summary(&mut edge, start).await;
    let count = s["count"].as_u64().unwrap();
    assert!((saved + 1..=4).contains(&count), "checkpointed {saved}, counted {count}: {s}\n{}", second.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_what_came_since_the_last_checkpoint_over_tls() {
    sigkill_loses_at_most_what_came_since_the_last_checkpoint(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_what_came_since_the_last_checkpoint_over_tcp() {
    sigkill_loses_at_most_what_came_since_the_last_checkpoint(Transport::Tcp).await;
}

async fn a_hostile_aggregates_patch_is_refused_whole_and_the_module_carries_on(transport: Transport) {
    let hub = Hub::start(transport, "");
    let dir = tempfile::tempdir().unwrap();
    let mut edge = edge_side(&hub).await;
    let mut module = ModuleProcess::start(&hub, dir.path(), &[]);
    edge.reported_until("the aggregates are in effect", WAIT, |r| r["Aggregates"]["T1s"].is_object()).await;
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("A{i}"), aggregates()["T1s"].clone())).collect();
    let patches = [
        (json!({"Aggregates": many, "$version": 2}), "at most 16 aggregates"),
        (
            json!({"Aggregates": {"Bad": {"path": "x", "window": {"kind": "tumbling", "seconds": 0}, "functions": "avg", "output": "o"}}, "$version": 3}),
            "Bad",
        ),
        (json!({"Aggregates": {"T1s": {"window": {"kind": "sliding", "seconds": 5}}}, "$version": 4}), "T1s"),
        (json!({"CheckpointSeconds": 1e9, "$version": 5}), "out of range"),
    ];
    for (patch, why) in patches {
        edge.peer.publish("$iothub/twin/PATCH/properties/desired/?$version=2", patch.to_string()).await;
        let name = if why == "out of range" { "CheckpointSeconds" } else { "Aggregates" };
        edge.reported_until(&format!("{name} is reported refused ({why})"), WAIT, |r| {
            r["RejectedSettings"][name].as_str().is_some_and(|reason| reason.contains(why))
        })
        .await;
    }
    assert!(module.running(), "{}", module.log_text());
    // The set in effect is the one before: its window still sends.
    let start = window_ahead(10_000);
    reading(&edge, "m", 21.0, start + 100).await;
    close(&edge, start).await;
    assert_eq!(summary(&mut edge, start).await["count"], 1, "{}", module.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_aggregates_patch_is_refused_whole_and_the_module_carries_on_over_tls() {
    a_hostile_aggregates_patch_is_refused_whole_and_the_module_carries_on(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_aggregates_patch_is_refused_whole_and_the_module_carries_on_over_tcp() {
    a_hostile_aggregates_patch_is_refused_whole_and_the_module_carries_on(Transport::Tcp).await;
}

/// The ASA tutorial's job as one twin entry in local mode: its reset command leaves on `alert`,
/// local mode routes it to the simulated sensor's `control` input, and the sensor's ramp restarts
/// (alerts above 70 are followed by readings back near the minimum, 21). A 1-s window and a
/// 10-ms sensor make it quick; the entry is otherwise the tutorial's (docs/asa-tutorial.twin.json).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorials_asa_job_resets_the_simulated_sensor_in_local_mode() {
    let dir = tempfile::tempdir().unwrap();
    let twin = json!({"TemperatureThreshold": 25, "Aggregates": {"ResetWhenHot": {
        "path": "machine.temperature",
        "window": {"kind": "tumbling", "seconds": 1},
        "functions": "avg",
        "time": {"path": "timeCreated", "lateSeconds": 0},
        "having": {"function": "avg", "op": ">", "value": 70},
        "output": "alert",
        "body": {"command": "reset"}
    }}});
    let twin_file = dir.path().join("twin.json");
    std::fs::write(&twin_file, twin.to_string()).unwrap();
    let (mut local, port) = crate::common::spawn_listening(|port| {
        let log = std::fs::File::create(dir.path().join("local.log")).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edgefilter"));
        command
            .args(["local", "--port", &port.to_string(), "--interval-ms", "10", "--metrics", "off"])
            .arg("--twin")
            .arg(&twin_file)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(std::process::Stdio::null())
            .stdout(log);
        command
    });
    let mut upstream = Peer::connect(port, "console", true, &["local/upstream/#"]).await;
    let temperature = |p: &rumqttc::Publish| {
        serde_json::from_slice::<Value>(&p.payload).ok().and_then(|b| b["machine"]["temperature"].as_f64())
    };
    let (mut hottest, mut reset) = (0.0f64, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let cooled = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = upstream.next(left).await else { break None };
        if p.topic.ends_with("/alert") {
            assert_eq!(serde_json::from_slice::<Value>(&p.payload).unwrap(), json!({"command": "reset"}));
            reset = true;
        } else if let Some(t) = temperature(&p) {
            hottest = hottest.max(t);
            if reset && t < 30.0 {
                break Some(t);
            }
        }
    };
    let _ = local.kill();
    let _ = local.wait();
    let log = std::fs::read_to_string(dir.path().join("local.log")).unwrap_or_default();
    assert!(reset, "no reset command reached the upstream (hottest alert {hottest})\n{log}");
    assert!(hottest > 70.0, "{hottest}");
    assert!(cooled.is_some(), "the sensor never restarted its ramp after the reset\n{log}");
    assert!(log.contains("sensor: reset command received"), "{log}");
}

/// After a restart with a state file, edgeHub's backlog reaches the module before the answer to
/// its twin request: the module holds that input until the twin restores the windows, takes the
/// twin at once, and acknowledges both in the order the hub sent them. The local hub takes
/// PUBACKs only in that order, as edgeHub's protocol gateway does; the twin's first would be
/// ignored there, and every input after it would wait for a PUBACK the hub had ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_backlog_and_the_twin_are_acknowledged_in_the_hubs_order() {
    use crate::common::{embedded_hub, wait_until, RunningModule};
    let count = json!({"Count": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 3600},
        "functions": "count", "output": "aggregates"}});
    let (hub, port) = embedded_hub(json!({"CheckpointSeconds": 1, "Aggregates": count})).await;
    let mut upstream = Peer::connect(port, "upstream", true, &["local/upstream/#"]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("EDGEFILTER_STATE_DIR", dir.path().display().to_string())];
    let sensor = Peer::connect(port, "sensor-anon", true, &[]).await;
    let send = |seq: u64| {
        let topic = format!("devices/dev/modules/sensor/messages/events/%24.on=temperatureOutput&sequenceNumber={seq}");
        let sensor = &sensor;
        async move { sensor.publish(&topic, format!(r#"{{"machine":{{"temperature":30}},"seq":{seq}}}"#)).await }
    };
    let first = RunningModule::on(port, &env);
    wait_until("subscribed", WAIT, || hub.subscribers("devices/dev/modules/filter/inputs/#") == 1).await;
    send(1).await;
    assert!(upstream.next(WAIT).await.is_some(), "the first alert");
    first.stop().await.unwrap();
    assert!(state_file(dir.path()).exists(), "the stop's checkpoint");
    for seq in 2..=6 {
        send(seq).await;
    }
    sensor.wait_confirmed(6).await;
    let second = RunningModule::on(port, &env);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let Some(p) = upstream.next(WAIT).await else { break };
        if let Ok(body) = serde_json::from_slice::<Value>(&p.payload) {
            seen.extend(body["seq"].as_u64());
        }
    }
    assert_eq!(seen, [2, 3, 4, 5, 6], "the backlog drains, in order");
    assert_eq!(hub.out_of_order_acks(), 0, "every PUBACK in the hub's order");
    second.stop().await.unwrap();
}
