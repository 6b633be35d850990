//! Local mode's embedded hub, checked with third-party clients (mosquitto_pub / mosquitto_sub) and
//! with the module itself; and the `edgefilter` binary as a user runs it.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use edgefilter::hub::Hub;
use edgefilter::topic::ModuleId;

/// The sensor module of [`embedded_hub`].
const SENSOR: &str = "sensor";

async fn start_hub(desired: serde_json::Value) -> (Arc<Hub>, u16) {
    embedded_hub(desired).await
}

fn credentials(module: &str, ttl: u64) -> (String, String) {
    let id = ModuleId::new(DEVICE, module);
    let key = edgefilter::sas::decode_key(KEY_B64).unwrap();
    let expiry = edgefilter::module::now_secs() + ttl;
    (edgefilter::module::username(HUB, &id), edgefilter::sas::token_from_key(&key, HUB, &id, expiry))
}

fn sensor_topic(seq: u64) -> String {
    format!("devices/{DEVICE}/modules/{SENSOR}/messages/events/%24.on=temperatureOutput&%24.ct=application%2Fjson&%24.ce=utf-8&sequenceNumber={seq}")
}

/// Runs a mosquitto client to completion (bounded by `-W` in its arguments).
async fn mosquitto(tool: &str, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(tool).args(args).stdin(Stdio::null()).output();
    tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("mosquitto client hung")
        .expect("mosquitto-clients installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_clients_use_the_hub_as_a_broker_and_as_edgehub() {
    let (hub, port) = start_hub(serde_json::json!({"TemperatureThreshold": 25})).await;
    let p = port.to_string();

    // Plain pub/sub between anonymous clients, with wildcards.
    let sub_args: Vec<String> = ["-p", &p, "-t", "plant/+/temp", "-C", "1", "-W", "10", "-v", "-q", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sub = tokio::spawn(async move {
        let a: Vec<&str> = sub_args.iter().map(String::as_str).collect();
        mosquitto("mosquitto_sub", &a).await
    });
    wait_until("subscribed", Duration::from_secs(10), || hub.subscribers("plant/+/temp") == 1).await;
    let out = mosquitto("mosquitto_pub", &["-p", &p, "-t", "plant/line1/temp", "-m", "42", "-q", "1"]).await;
    assert!(out.status.success());
    let got = sub.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "plant/line1/temp 42");

    // A module identity with a SAS token: `$iothub` subscriptions and desired pushes work.
    let (user, token) = credentials(MODULE, 3600);
    let client_id = format!("{DEVICE}/{MODULE}");
    let args = [
        "-p",
        &p,
        "-i",
        &client_id,
        "-u",
        &user,
        "-P",
        &token,
        "-t",
        "$iothub/twin/PATCH/properties/desired/#",
        "-C",
        "1",
        "-W",
        "10",
        "-v",
        "-q",
        "1",
    ];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let sub = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mosquitto("mosquitto_sub", &args).await
    });
    let desired = "$iothub/twin/PATCH/properties/desired/#";
    wait_until("subscribed", Duration::from_secs(10), || hub.subscribers(desired) == 1).await;
    let out = mosquitto(
        "mosquitto_pub",
        &["-p", &p, "-t", &format!("local/twin/{MODULE}/desired"), "-m", r#"{"TemperatureThreshold":30}"#],
    )
    .await;
    assert!(out.status.success());
    let got = sub.await.unwrap();
    let line = String::from_utf8_lossy(&got.stdout).trim().to_string();
    let (topic, body) = line.split_once(' ').unwrap();
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        serde_json::json!({"TemperatureThreshold": 30, "$version": 2})
    );

    // A wrong token, a token for another module, or a client id that is not the identity: refused.
    let (_, other_token) = credentials(SENSOR, 3600);
    for (id, password) in [
        (client_id.as_str(), "SharedAccessSignature sr=x&sig=y&se=1"),
        (client_id.as_str(), other_token.as_str()),
        ("dev/other", token.as_str()),
    ] {
        let out = mosquitto(
            "mosquitto_sub",
            &["-p", &p, "-i", id, "-u", &user, "-P", password, "-t", "x", "-C", "1", "-W", "3"],
        )
        .await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("refused") || err.contains("not authorised") || err.contains("identifier"), "{err}");
    }
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_twin_and_token_renewal_through_the_hub() {
    let (hub, port) = start_hub(serde_json::json!({"TemperatureThreshold": 30})).await;
    let mut upstream =
        Peer::connect(port, "upstream-watch", true, &["local/upstream/#", "local/twin/filter/reported"]).await;
    let mut env = vec![("EDGEFILTER_TOKEN_TTL_SECS", "10".to_string())];
    env.push(("EdgeHubConnectionString", connection_string()));
    env.push(("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{port}")));
    let module = RunningModule::start(&env);
    // The twin from the hub: 30 is reported.
    let reported = upstream.next(Duration::from_secs(5)).await.expect("reported properties");
    assert_eq!(reported.topic, "local/twin/filter/reported");
    let reported: serde_json::Value = serde_json::from_slice(&reported.payload).unwrap();
    assert_eq!(reported["TemperatureThreshold"], 30.0);

    let (user, token) = credentials(SENSOR, 3600);
    let mut options = rumqttc::MqttOptions::new(format!("{DEVICE}/{SENSOR}"), "127.0.0.1", port);
    options.set_credentials(user, token);
    let sensor = Peer::connect_with(options, false, &[]).await;
    sensor.publish(&sensor_topic(1), r#"{"machine":{"temperature":28}}"#).await;
    sensor.publish(&sensor_topic(2), r#"{"machine":{"temperature":31}}"#).await;
    let alert = upstream.next(Duration::from_secs(5)).await.expect("routed alert");
    assert_eq!(alert.topic, "local/upstream/filter/output1");
    assert_eq!(alert.payload.as_ref(), br#"{"machine":{"temperature":31}}"#);

    // A desired change through the hub applies live.
    hub.set_desired(MODULE, serde_json::json!({"TemperatureThreshold": 27}).as_object().unwrap()).unwrap();
    let reported = upstream.next(Duration::from_secs(5)).await.expect("reported after patch");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&reported.payload).unwrap()["TemperatureThreshold"], 27.0);
    sensor.publish(&sensor_topic(3), r#"{"machine":{"temperature":28}}"#).await;
    assert_eq!(
        upstream.next(Duration::from_secs(5)).await.expect("28 > 27").payload.as_ref(),
        br#"{"machine":{"temperature":28}}"#
    );

    // With a 10 s token the module renews after 8 s, reconnects, and alerts keep flowing; the hub
    // would refuse an expired token, so the new connection proves the renewal.
    wait_until("renewed and reconnected", Duration::from_secs(15), || module.stats.connections.load(Relaxed) >= 2)
        .await;
    sensor.publish(&sensor_topic(4), r#"{"machine":{"temperature":40}}"#).await;
    loop {
        let p = upstream.next(Duration::from_secs(5)).await.expect("alert after renewal");
        if p.topic.starts_with("local/upstream/") && p.payload.as_ref() == br#"{"machine":{"temperature":40}}"# {
            break;
        }
    }
    module.stop().await.unwrap();
}

fn edgefilter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgefilter"))
}

#[test]
fn configuration_errors_exit_2_with_one_line() {
    for (env, want) in [
        (vec![], "edgefilter: EdgeHubConnectionString: not set"),
        (
            vec![("EdgeHubConnectionString", "HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0")],
            "edgefilter: EdgeHubConnectionString: ModuleId is missing",
        ),
        (
            vec![("EdgeHubConnectionString", connection_string().leak() as &str), ("EDGEFILTER_MQTT_URL", "ftp://x")],
            "edgefilter: EDGEFILTER_MQTT_URL:",
        ),
    ] {
        let out = edgefilter().env_clear().envs(env).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(want), "{err}");
    }
    // Unknown options and bad values are refused with exit code 2, naming them.
    for (args, named) in [
        (&["--bogus"][..], "--bogus"),
        (&["local", "--rat", "5"], "--rat"),
        (&["local", "--port", "abc"], "--port"),
        (&["local", "--port", "70000"], "--port"),
        (&["local", "--metrics", "nowhere"], "--metrics"),
        (&["local", "--port"], "--port"),
        (&["extra"], "extra"),
    ] {
        let out = edgefilter().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Help for each command, and the version, on standard output ending with a newline.
    for args in [&["--help"][..], &["local", "--help"], &["--version"]] {
        let out = edgefilter().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stdout.ends_with(b"\n") && out.stdout.len() > 10, "{args:?}");
    }
}

#[test]
fn the_module_binary_stops_cleanly_on_sigterm_with_an_alert_in_flight() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (hub, port) = rt.block_on(start_hub(serde_json::json!({"TemperatureThreshold": 25})));
    let mut upstream = rt.block_on(Peer::connect(port, "upstream-watch", true, &["local/upstream/#"]));
    // The hub routes the module's alerts but does not confirm them: an alert stays in flight.
    hub.withhold_acks(Some(&format!("{DEVICE}/{MODULE}")));
    let child = edgefilter()
        .env("EdgeHubConnectionString", connection_string())
        .env("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{port}"))
        .env("EDGEFILTER_METRICS_ADDR", "off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped::new(child);
    let lines = log_lines([Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>]);
    let sensor = rt.block_on(Peer::connect(port, "sensor-anon", true, &[]));
    let hot: Vec<(String, String)> =
        (1..=100).map(|seq| (sensor_topic(seq), format!(r#"{{"machine":{{"temperature":{}}}}}"#, 30 + seq))).collect();
    // Hot messages until the first alert reaches the hub, which holds its PUBACK: that alert is in
    // flight when the signal comes. (Those sent before the module subscribed go nowhere.)
    let mut alert = None;
    for (topic, body) in &hot {
        rt.block_on(sensor.publish(topic, body.as_str()));
        alert = rt.block_on(upstream.next(Duration::from_millis(200)));
        if alert.is_some() {
            break;
        }
    }
    let alert = alert.expect("an alert routed upstream");
    assert!(hot.iter().any(|(_, body)| alert.payload.as_ref() == body.as_bytes()));
    terminate(&child);
    let mut log = String::new();
    let read_until = |want: &str, log: &mut String| -> String {
        loop {
            let line = lines.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|_| panic!("no {want:?} in {log}"));
            log.push_str(&line);
            log.push('\n');
            if line.contains(want) {
                return line;
            }
        }
    };
    let stop = read_until("stop requested", &mut log);
    let waiting: u64 = stop
        .split("waiting for ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stop}"));
    assert!(waiting >= 1, "an alert was in flight when SIGTERM came: {stop}");
    // The hub confirms it now; the module finishes the drain and exits cleanly.
    hub.withhold_acks(None);
    read_until("all alerts confirmed", &mut log);
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(15)) {
        log.push_str(&line);
        log.push('\n');
    }
    assert_eq!(child.wait().unwrap().code(), Some(0), "{log}");
    assert!(log.contains("[INF] - SIGTERM received"), "{log}");
    assert!(log.lines().all(|l| l.starts_with('<')), "every line is an IoT Edge log line: {log}");
}

/// `edgefilter local` on `port` with piped console, sensor every 20 ms, plus `extra` arguments.
fn local(port: u16, extra: &[&str]) -> Command {
    let mut command = edgefilter();
    command.args(["local", "--port", &port.to_string(), "--interval-ms", "20"]).args(extra);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    command
}

/// At most `count` messages local mode's hub sends upstream within `secs`, one `TOPIC BODY`
/// line each.
fn upstream(port: u16, count: u32, secs: u32) -> String {
    let (port, count, secs) = (port.to_string(), count.to_string(), secs.to_string());
    let out = Command::new("mosquitto_sub")
        .args(["-p", &port, "-t", "local/upstream/#", "-C", &count, "-W", &secs, "-v"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Types `line` at local mode's console; returns the filter's next reported properties.
fn typed(child: &mut std::process::Child, port: u16, line: &str) -> String {
    use std::io::{BufRead as _, Write as _};
    // `-d` prints the client's protocol events: the line is typed once its SUBACK is in (stdbuf:
    // line by line, as a pipe would otherwise hold them until the client exits).
    let mut sub = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-d",
            "-p",
            &port.to_string(),
            "-t",
            "local/twin/edgefilter/reported",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sub.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert!(lines.by_ref().any(|l| l.contains("received SUBACK")), "mosquitto_sub never subscribed");
    child.stdin.as_mut().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    let body = lines.find(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed")).unwrap_or_default();
    let _ = sub.wait();
    body
}

#[test]
fn local_mode_shows_alerts_and_applies_a_threshold_change() {
    let (mut child, port) = spawn_listening(|port| local(port, &[]));
    // Alerts reach the upstream (the sensor ramps from 21 past 25 within a few dozen messages).
    let text = upstream(port, 3, 15);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("local/upstream/edgefilter/output1 {\"machine\"")).count(),
        3,
        "{text}"
    );
    // Raise the threshold out of reach by typing on the console: the filter reports it and the
    // alerts stop.
    let reported = typed(&mut child, port, "TemperatureThreshold=1000");
    assert!(reported.contains(r#""TemperatureThreshold":1000.0"#), "{reported}");
    let after = upstream(port, 1, 2);
    assert!(after.is_empty(), "no alert above 1000: {after}");
    terminate(&child);
    let out = child.into_inner().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("TemperatureThreshold is now 1000"), "{console}");
}

#[test]
fn local_mode_takes_rules_from_the_twin_file_and_the_console() {
    let twin = std::env::temp_dir().join(format!("edgefilter-rules-{}.json", std::process::id()));
    let rules = r#"{"Rules":{"Everything":{"path":"machine.temperature","op":"<","value":1000,"output":"everything","properties":{"Kind":"all"}}}}"#;
    std::fs::write(&twin, rules).unwrap();
    let (mut child, port) = spawn_listening(|port| {
        let mut command = local(port, &["--twin", twin.to_str().unwrap()]);
        command.env("EDGEFILTER_METRICS_ADDR", "off"); // the other local-mode test has the default port
        command
    });
    // Every message matches the one rule: on its output, with its property.
    let text = upstream(port, 3, 15);
    assert_eq!(text.lines().filter(|l| l.starts_with("local/upstream/edgefilter/everything {")).count(), 3, "{text}");
    // A patch typed at the console replaces the rule with one nothing matches.
    let patch =
        r#"{"Rules":{"Everything":null,"Never":{"path":"machine.temperature","op":">","value":1000,"output":"x"}}}"#;
    let reported = typed(&mut child, port, patch);
    // The hub shows the reported document after merging the module's patch: the removed rule gone.
    assert!(reported.contains(r#""Never":{"#) && !reported.contains("Everything"), "{reported}");
    let after = upstream(port, 1, 2);
    assert!(after.is_empty(), "nothing above 1000: {after}");
    terminate(&child);
    let out = child.into_inner().wait_with_output().unwrap();
    let _ = std::fs::remove_file(&twin);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Rules is now"));
}
