//! The pipeline under pressure: batches that fill, a settings change mid-stream, a hub that
//! withholds acknowledgements, and SIGTERM in the middle of a batch, all through real brokers.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// The `edgefilter` binary as a process, against the broker on `port`.
fn module_process(port: u16, stdout: Stdio, env: &[(&str, String)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("EdgeHubConnectionString", connection_string())
        .env("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{port}"))
        .env("EDGEFILTER_METRICS_ADDR", "off")
        .stdout(stdout)
        .spawn()
        .unwrap()
}

/// Starts and stops the module once so that its persistent session exists, then queues `n`
/// hot messages in it.
async fn queue_while_offline(broker: &Broker, n: u64, env: &[(&str, String)]) {
    let mut watch = SubscribedWatch::start(broker.port).await;
    let module = RunningModule::on(broker.port, env);
    watch.wait().await;
    module.stop().await.unwrap();
    let sensor = Peer::connect(broker.port, "sensor", true, &[]).await;
    for seq in 1..=n {
        let (topic, body) = hot(seq, 30.0);
        sensor.publish(&topic, body).await;
    }
    sensor.wait_confirmed(n).await;
}

fn sequence(p: &rumqttc::Publish) -> u64 {
    bag_value(&p.topic, "sequenceNumber").unwrap().parse().unwrap()
}

/// Alerts seen upstream, by sequence number, and how many came again.
#[derive(Default)]
struct Seen {
    sequences: BTreeSet<u64>,
    duplicates: u64,
}

impl Seen {
    fn add(&mut self, alerts: impl IntoIterator<Item = rumqttc::Publish>) {
        for p in alerts {
            if !self.sequences.insert(sequence(&p)) {
                self.duplicates += 1;
            }
        }
    }

    /// Takes alerts from `upstream` until `n` different ones came, or none did for `wait`.
    async fn until(&mut self, upstream: &mut Peer, n: usize, wait: Duration) {
        while self.sequences.len() < n {
            let Some(p) = upstream.next(wait).await else { break };
            self.add([p]);
        }
    }

    fn len(&self) -> usize {
        self.sequences.len()
    }

    /// Fails naming the sequence numbers of 1..=n that never came.
    fn assert_none_missing(&self, n: u64) {
        let missing: Vec<u64> = (1..=n).filter(|s| !self.sequences.contains(s)).collect();
        assert!(missing.is_empty(), "lost {}: {:?}", missing.len(), &missing[..missing.len().min(20)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_in_batches_of_at_most_batch_size() {
    let broker = Broker::start("max_inflight_messages 1000\nmax_queued_messages 0");
    let mut upstream =
        Peer::connect(broker.port, "upstream", true, &["devices/dev/modules/filter/messages/events/#"]).await;
    let env = [("BatchSize", "5".to_string())];
    queue_while_offline(&broker, 200, &env).await;
    let module = RunningModule::on(broker.port, &env);
    let alerts = upstream.drain(Duration::from_secs(2)).await;
    assert_eq!(alerts.len(), 200);
    let seqs: Vec<u64> = alerts.iter().map(sequence).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "in order");
    let (max_batch, batches) = {
        let l = module.stats.latency();
        (l.batch_alerts.max(), l.batch_alerts.len())
    };
    assert!(max_batch <= 5, "no write carries more than BatchSize alerts: {max_batch}");
    assert!(batches >= 40, "{batches} writes with alerts");
    assert!(max_batch >= 2, "a backlog is written several alerts at a time: {max_batch}");
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_short_of_batch_size_goes_out_when_input_pauses_and_so_do_its_acknowledgements() {
    // The longest interval and a batch that never fills: each alert still goes out at once, and
    // the inputs are acknowledged once their alerts are confirmed, not an interval later. The
    // broker delivers as edgeHub does, one message in flight: alert k + 1 coming out proves that
    // input k was acknowledged.
    let broker = Broker::start("max_queued_messages 0\nmax_inflight_messages 1");
    let mut upstream =
        Peer::connect(broker.port, "upstream", true, &["devices/dev/modules/filter/messages/events/#"]).await;
    let env = [("BatchSize", "10000".to_string()), ("BatchIntervalMs", "60000".to_string())];
    let mut watch = SubscribedWatch::start(broker.port).await;
    let mut module = module_process(broker.port, Stdio::null(), &env);
    watch.wait().await;
    let sensor = Peer::connect(broker.port, "sensor", true, &[]).await;
    for seq in 1..=6 {
        let (topic, body) = hot(seq, 30.0);
        sensor.publish(&topic, body).await;
        let alert = upstream.next(Duration::from_secs(2)).await.expect("the alert went out without its batch filling");
        assert_eq!(sequence(&alert), seq);
    }
    // No graceful stop (which would write whatever is queued): the process dies here.
    module.kill().unwrap();
    module.wait().unwrap();
    // Had the acknowledgements waited for the interval, the broker would redeliver inputs 1..=5
    // now, ahead of a new one; at most input 6 may come again.
    let again = RunningModule::on(broker.port, &env);
    watch.wait().await;
    let (topic, body) = hot(7, 30.0);
    sensor.publish(&topic, body).await;
    let mut after = Vec::new();
    while after.last() != Some(&7) {
        after.push(sequence(&upstream.next(Duration::from_secs(5)).await.expect("the alert of input 7")));
    }
    assert!(after == [7] || after == [6, 7], "every input before the last was acknowledged: {after:?}");
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_change_applies_from_the_next_message() {
    let broker = Broker::start("");
    let mut edge = Peer::connect(broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let module = RunningModule::on(broker.port, &[]);
    answer_twin(&mut edge, &json!({"TemperatureThreshold": 30, "$version": 1}), Duration::from_secs(2)).await;
    // Inputs and the patch from one publisher arrive in publish order: 1..=50 at 30,
    // then 51..=100 at 20. A 28° message alerts exactly when it comes after the patch.
    for seq in 1..=100 {
        if seq == 51 {
            edge.publish(
                "$iothub/twin/PATCH/properties/desired/?$version=2",
                r#"{"TemperatureThreshold":20,"$version":2}"#,
            )
            .await;
        }
        let (topic, body) = hot(seq, 28.0);
        edge.publish(&topic, body).await;
    }
    // Alerts arrive in order: any wrong one would come before the last.
    let mut alerts = Vec::new();
    while alerts.last() != Some(&100) && alerts.len() <= 100 {
        let p = edge.next_matching(Duration::from_secs(10), |p| p.topic.contains("/messages/events/")).await;
        alerts.push(sequence(&p));
    }
    assert_eq!(alerts, (51..=100).collect::<Vec<_>>());
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_stops_acknowledging_stops_the_module_reading_then_it_recovers() {
    let (module, mut upstream, hub) = withheld(&[]).await;
    let window = WIDE_WINDOW as u64;
    let held = module.stats.alerts.load(Relaxed);
    assert_eq!(held, window, "the module holds only the hub's window of inputs, unacknowledged");
    assert_eq!(module.stats.alerts_confirmed.load(Relaxed), 0);
    tokio::time::sleep(Duration::from_millis(500)).await; // a window to see nothing in
    assert_eq!(module.stats.alerts.load(Relaxed), held, "and reads nothing more while the hub is silent");

    hub.withhold_acks(None);
    let mut upstream_alerts = 0;
    while upstream_alerts < 300 {
        if upstream.next(Duration::from_secs(5)).await.is_none() {
            break;
        }
        upstream_alerts += 1;
    }
    // Alerts held back are redelivered (at least once), so the upstream sees every one.
    assert!(upstream_alerts >= 300, "{upstream_alerts}");
    // The hub routes an alert before the module has read its PUBACK: let the last ones arrive.
    let stats = module.stats.clone();
    wait_until("all confirmed", Duration::from_secs(10), || stats.alerts_confirmed.load(Relaxed) >= 300).await;
    assert_eq!(module.stats.alerts_confirmed.load(Relaxed), 300, "all alerts confirmed after recovery");
    assert_eq!(module.stats.received.load(Relaxed), 300);
    module.stop().await.unwrap();
}

/// The hub's window towards the module in the hold-back tests: wider than edgeHub's one message,
/// so that the module has several inputs to hold back.
const WIDE_WINDOW: usize = 16;

/// Sends 300 hot messages (with `seq` in the body) through the embedded hub, with
/// [`WIDE_WINDOW`] messages in flight to the module, while it withholds the acknowledgements of a
/// module started with `env`; returns the running module, the upstream peer and the hub once it
/// has taken the window's inputs.
async fn withheld(env: &[(&str, String)]) -> (RunningModule, Peer, Arc<edgefilter::hub::Hub>) {
    let delivery = edgefilter::hub::Delivery { inflight: WIDE_WINDOW, ..Default::default() };
    let (hub, port) = embedded_hub_with(json!({}), delivery).await;
    let upstream = Peer::connect(port, "upstream", true, &["local/upstream/#"]).await;
    let module = RunningModule::on(port, env);
    wait_until("subscribed", Duration::from_secs(10), || hub.subscribers("devices/dev/modules/filter/inputs/#") == 1)
        .await;
    hub.withhold_acks(Some("dev/filter"));
    let sensor = Peer::connect(port, "sensor-anon", true, &[]).await;
    for seq in 1..=300 {
        let topic = format!("devices/dev/modules/sensor/messages/events/%24.on=temperatureOutput&sequenceNumber={seq}");
        sensor.publish(&topic, format!(r#"{{"machine":{{"temperature":30}},"seq":{seq}}}"#)).await;
    }
    sensor.wait_confirmed(300).await;
    // Every input of the window either alerted or was held back (or left to the hub).
    let stats = module.stats.clone();
    wait_until("the window's inputs taken", Duration::from_secs(10), || {
        stats.alerts.load(Relaxed) + stats.overloaded.load(Relaxed) >= WIDE_WINDOW as u64
    })
    .await;
    (module, upstream, hub)
}

/// Lets the hub acknowledge again, then checks that every message came through.
async fn recovers(module: RunningModule, mut upstream: Peer, hub: Arc<edgefilter::hub::Hub>) {
    hub.withhold_acks(None);
    let mut seen = BTreeSet::new();
    while seen.len() < 300 {
        let Some(p) = upstream.next(Duration::from_secs(10)).await else { break };
        let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        seen.insert(body["seq"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=300).collect(), "every alert reaches the upstream, at least once");
    let stats = module.stats.clone();
    wait_until("all confirmed", Duration::from_secs(10), || stats.alerts_confirmed.load(Relaxed) >= 300).await;
    assert!(module.stats.alerts_confirmed.load(Relaxed) >= 300);
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_beyond_the_unconfirmed_limit_is_held_back_then_handled_in_order() {
    // The hub sends 16 unacknowledged messages; the module lets 8 alerts await confirmation and
    // holds the other 8 inputs back, unacknowledged, on the same connection.
    let (module, upstream, hub) = withheld(&[("EDGEFILTER_MAX_UNCONFIRMED", "8".into())]).await;
    assert_eq!(module.stats.alerts.load(Relaxed), 8, "no more than EDGEFILTER_MAX_UNCONFIRMED alerts in flight");
    assert_eq!(module.stats.overloaded.load(Relaxed), 8, "the rest of the window is held back");
    assert_eq!(module.stats.connections.load(Relaxed), 1);
    recovers(module, upstream, hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_held_back_limit_input_is_left_for_the_hub_to_redeliver() {
    // 4 alerts in flight, 4 inputs held back, and the other 8 of the hub's window left
    // unacknowledged rather than growing the module's memory.
    let (module, upstream, hub) = withheld(&[("EDGEFILTER_MAX_UNCONFIRMED", "4".into())]).await;
    assert_eq!(module.stats.alerts.load(Relaxed), 4);
    assert_eq!(module.stats.overloaded.load(Relaxed), 12, "4 held back, 8 left to the hub");
    assert_eq!(module.stats.connections.load(Relaxed), 1, "no reconnection while alerts are unconfirmed");
    // Once everything before them is done the module reconnects for the hub to redeliver them,
    // 8 messages per round here.
    recovers(module, upstream, hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_loses_nothing() {
    let broker = Broker::start("max_inflight_messages 100\nmax_queued_messages 0");
    let mut upstream =
        Peer::connect(broker.port, "upstream", false, &["devices/dev/modules/filter/messages/events/#"]).await;
    const N: u64 = 3000;
    queue_while_offline(&broker, N, &[]).await;
    let run = || module_process(broker.port, Stdio::piped(), &[]);
    let mut seen = Seen::default();
    // Stopped while the backlog streams through it.
    let first = run();
    let mut early = Vec::new();
    while early.len() < 200 {
        early.push(upstream.next(Duration::from_secs(10)).await.expect("alerts flow"));
    }
    terminate(&first);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stop requested"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    seen.add(early);
    seen.add(upstream.drain(Duration::from_millis(500)).await);
    assert!(seen.len() < N as usize, "stopped mid-stream ({} of {N} done)", seen.len());
    // The next start picks up where the hub kept the unacknowledged inputs.
    let second = run();
    seen.add(upstream.drain(Duration::from_secs(3)).await);
    terminate(&second);
    assert_eq!(second.wait_with_output().unwrap().status.code(), Some(0));
    seen.assert_none_missing(N);
    eprintln!("SIGTERM mid-stream: {N} sent, 0 lost, {} duplicated", seen.duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing() {
    let broker = Broker::start("max_inflight_messages 100\nmax_queued_messages 0");
    let mut upstream =
        Peer::connect(broker.port, "upstream", false, &["devices/dev/modules/filter/messages/events/#"]).await;
    const N: u64 = 3000;
    queue_while_offline(&broker, N, &[]).await;
    let run = || module_process(broker.port, Stdio::null(), &[]);
    let mut seen = Seen::default();
    let mut first = run();
    seen.until(&mut upstream, 200, Duration::from_secs(10)).await;
    assert!(seen.len() >= 200, "alerts flow");
    first.kill().unwrap(); // SIGKILL: no drain, no goodbye
    first.wait().unwrap();
    let mut second = run();
    seen.add(upstream.drain(Duration::from_secs(3)).await);
    terminate(&second);
    assert_eq!(second.wait().unwrap().code(), Some(0));
    seen.assert_none_missing(N);
    eprintln!("SIGKILL mid-stream: {N} sent, 0 lost, {} duplicated", seen.duplicates);
}

/// A TCP proxy between the module and the broker that can cut every connection and refuse new
/// ones until restored: the network to the hub going away and coming back.
struct Cable {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Cable {
    async fn to(target: u16) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (u, c) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !u.load(Relaxed) {
                    continue; // dropped: connection refused-ish
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Cable { port, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Relaxed);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_cut_and_restored_mid_stream_loses_nothing() {
    let broker = Broker::start("max_inflight_messages 100\nmax_queued_messages 0");
    let cable = Cable::to(broker.port).await;
    let mut upstream =
        Peer::connect(broker.port, "upstream", false, &["devices/dev/modules/filter/messages/events/#"]).await;
    let sensor = Peer::connect(broker.port, "sensor", true, &[]).await;
    let mut watch = SubscribedWatch::start(broker.port).await;
    let module = RunningModule::on(cable.port, &[]);
    watch.wait().await;
    const N: u64 = 600;
    for seq in 1..=N {
        let (topic, body) = hot(seq, 30.0);
        sensor.publish(&topic, body).await;
        if seq == N / 3 {
            cable.cut();
        }
        if seq == 2 * N / 3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cable.restore();
        }
    }
    let mut seen = Seen::default();
    seen.until(&mut upstream, N as usize, Duration::from_secs(20)).await;
    seen.assert_none_missing(N);
    assert!(module.stats.connections.load(Relaxed) >= 2, "reconnected after the cut");
    eprintln!("network cut mid-stream: {N} sent, 0 lost, {} duplicated", seen.duplicates);
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_rounds_repeat_no_alert() {
    // A backlog far beyond what the module holds (mosquitto sends a resumed session's whole queue
    // at once): the module leaves the rest unacknowledged and reconnects for the hub to redeliver
    // it, round after round. Its acknowledgements go with its DISCONNECT, and it waits for the hub
    // to close the old connection before opening the next; otherwise the hub takes the session
    // over first, drops them, and delivers those messages again.
    let broker = Broker::start("max_queued_messages 0");
    let mut upstream =
        Peer::connect(broker.port, "upstream", false, &["devices/dev/modules/filter/messages/events/#"]).await;
    const N: u64 = 3000;
    let env = [("EDGEFILTER_MAX_UNCONFIRMED", "200".to_string())];
    queue_while_offline(&broker, N, &env).await;
    let module = RunningModule::on(broker.port, &env);
    let mut seen = Seen::default();
    // It returns once all have come: 60 s only bounds a machine loaded by other work (once, at 20 s,
    // a loaded run saw 143 of 3,000 in time).
    seen.until(&mut upstream, N as usize, Duration::from_secs(60)).await;
    seen.add(upstream.drain(Duration::from_millis(500)).await);
    assert_eq!(
        seen.len(),
        N as usize,
        "every alert arrives (duplicates so far: {}, connections: {})",
        seen.duplicates,
        module.stats.connections.load(Relaxed)
    );
    assert!(module.stats.connections.load(Relaxed) >= 3, "the backlog took several redelivery rounds");
    assert_eq!(seen.duplicates, 0, "no alert repeated across redelivery rounds");
    module.stop().await.unwrap();
}
