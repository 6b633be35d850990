//! `/metrics` as IoT Edge's metrics-collector and Prometheus read it: the module on a real
//! mosquitto, its endpoint scraped over HTTP and parsed with a Prometheus text parser
//! (`prometheus-parse`); and the endpoint of a process out of file descriptors, which must back
//! off, count and recover rather than spin. `promtool check metrics` and a real Prometheus server
//! check the same text in `scripts/prometheus.sh`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::common::*;
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

/// `GET /metrics` on an open (kept-alive) connection: the body.
fn get(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the endpoint closed the connection: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let head = text[..end].to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        if got.len() >= end + 4 + length {
            return String::from_utf8(got[end + 4..end + 4 + length].to_vec()).unwrap();
        }
    }
}

fn scrape(port: u16) -> String {
    get(&mut TcpStream::connect(("127.0.0.1", port)).unwrap())
}

fn parse(text: &str) -> Vec<Sample> {
    let samples = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap().samples;
    // Nothing was skipped: one sample per line, a summary's quantile lines making one.
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let quantile_lines = lines.iter().filter(|l| l.contains("quantile=")).count();
    assert_eq!(samples.len(), lines.len() - quantile_lines + quantile_lines / 4, "{text}");
    samples
}

/// The value of the series whose line starts with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn is_uuid_v4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

/// Every sample's `instance_number`, having checked its other three labels.
fn instance_numbers(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .map(|s| {
            let l = &s.labels;
            assert_eq!(
                (l.get("iothub"), l.get("edge_device"), l.get("module_name")),
                (Some(HUB), Some(DEVICE), Some(MODULE)),
                "{s:?}"
            );
            let instance = l.get("instance_number").unwrap_or_else(|| panic!("no instance_number: {s:?}"));
            assert!(is_uuid_v4(instance), "{instance} is not a UUID v4");
            instance.to_string()
        })
        .collect()
}

fn summary<'a>(samples: &'a [Sample], name: &str, outcome: Option<&str>) -> &'a [prometheus_parse::SummaryCount] {
    let s = samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("outcome") == outcome)
        .unwrap_or_else(|| panic!("no {name} {outcome:?}"));
    match &s.value {
        Value::Summary(q) => q,
        other => panic!("{name} is not a summary: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_carries_the_hub_device_module_and_a_new_instance_number() {
    let broker = Broker::start("");
    let mut edge = Peer::connect(broker.port, "edgehub-side", true, &EDGE_SIDE).await;
    let port = free_port();
    let module = RunningModule::on(broker.port, &[("EDGEFILTER_METRICS_ADDR", format!("127.0.0.1:{port}"))]);
    serve_twin(&mut edge, &module, &json!({"$version": 1})).await;
    let fresh = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
    let samples = parse(&fresh);
    assert!(summary(&samples, "edgefilter_alert_to_ack_seconds", None).iter().all(|q| q.count.is_nan()), "{fresh}");

    for (seq, t) in [(1, 30.0), (2, 31.0), (3, 20.0), (4, 32.0)] {
        let (topic, body) = hot(seq, t);
        edge.publish(&topic, body).await;
    }
    wait_until("3 alerts confirmed", Duration::from_secs(10), || module.stats.alerts_confirmed.load(Relaxed) == 3)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        // The PUBACK of the input that dropped is written a moment after the alerts' confirmation.
        let text = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
        if value(&text, "edgefilter_turnaround_seconds_count{") >= 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "no turnaround of a dropped input:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let samples = parse(&text);
    let instances = instance_numbers(&samples);
    assert!(instances.iter().all(|i| *i == instances[0]), "one instance number per process");
    assert_eq!(value(&text, "edgefilter_alerts_confirmed_total{"), 3.0);
    assert_eq!(value(&text, "edgefilter_messages_received_total{"), 4.0);
    let alert_count = samples
        .iter()
        .find(|s| s.metric == "edgefilter_turnaround_seconds_count" && s.labels.get("outcome") == Some("alert"));
    assert_eq!(alert_count.map(|s| &s.value), Some(&Value::Untyped(3.0)), "{text}");
    let quantiles: Vec<f64> =
        summary(&samples, "edgefilter_turnaround_seconds", Some("alert")).iter().map(|q| q.quantile).collect();
    assert_eq!(quantiles, [0.1, 0.5, 0.9, 0.99]);
    let to_ack = summary(&samples, "edgefilter_alert_to_ack_seconds", None);
    assert!(to_ack.iter().all(|q| q.count > 0.0 && q.count < 10.0), "seconds, not µs: {to_ack:?}");
    module.stop().await.unwrap();

    // The next start has a new instance number.
    let port2 = free_port();
    let again = RunningModule::on(broker.port, &[("EDGEFILTER_METRICS_ADDR", format!("127.0.0.1:{port2}"))]);
    wait_for_listener(std::process::id(), port2);
    let text2 = tokio::task::spawn_blocking(move || scrape(port2)).await.unwrap();
    let instances2 = instance_numbers(&parse(&text2));
    assert_ne!(instances2[0], instances[0]);
    again.stop().await.unwrap();
}

#[test]
fn out_of_file_descriptors_the_endpoint_backs_off_counts_and_recovers() {
    let broker = Broker::start("");
    let port = free_port();
    // A process allowed 64 descriptors: the connections below take the rest.
    let child = Command::new("sh")
        .args(["-c", "ulimit -n 64 && exec \"$0\""])
        .arg(env!("CARGO_BIN_EXE_edgefilter"))
        .env("EdgeHubConnectionString", connection_string())
        .env("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{}", broker.port))
        .env("EDGEFILTER_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = Reaped::new(child);
    wait_for_listener(child.id(), port);
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&get(&mut kept), "edgefilter_connections_total{") < 1.0 {
        assert!(Instant::now() < deadline, "the module did not connect to mosquitto");
        std::thread::sleep(Duration::from_millis(10));
    }

    let held: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failures = value(&get(&mut kept), "edgefilter_metrics_accept_failures_total{");
        if failures >= 3.0 {
            // Pauses of 10, 20, 40 ms… make the third failure ~70 ms after the first; a loop
            // retrying at once would have failed thousands of times by now.
            assert!(failures < 50.0, "{failures} failed accepts: the endpoint spins");
            break;
        }
        assert!(Instant::now() < deadline, "accepting never failed ({failures})");
        std::thread::sleep(Duration::from_millis(10));
    }

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        // A new connection is accepted once the held ones are closed.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut probe = s.try_clone().unwrap();
            if probe.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").is_ok() {
                let mut first = [0u8; 12];
                if s.read_exact(&mut first).is_ok() && first.starts_with(b"HTTP/1.1 200") {
                    break get(&mut kept);
                }
            }
        }
        assert!(Instant::now() < deadline, "the endpoint did not recover");
    };
    assert!(value(&text, "edgefilter_metrics_accept_failures_total{") >= 3.0);
    terminate(&child);
    let out = child.into_inner().wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    // Once per episode: a warning when accepting starts failing, a line when it works again. The
    // module may accept one connection from the backlog (a descriptor freed) and fail again, a
    // second episode; a log line per failure would be dozens.
    let (failing, recovered) =
        (log.matches("cannot accept a connection").count(), log.matches("accepting again after").count());
    assert!(failing >= 1 && recovered >= 1, "{log}");
    assert!(failing <= recovered + 1 && failing < 5, "logged once per episode:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_is_disconnected_and_scrapes_go_on() {
    let broker = Broker::start("");
    let port = free_port();
    let _module = RunningModule::on(broker.port, &[("EDGEFILTER_METRICS_ADDR", format!("127.0.0.1:{port}"))]);
    tokio::task::spawn_blocking(move || slow_clients_are_disconnected(port)).await.unwrap();
}

fn slow_clients_are_disconnected(port: u16) {
    wait_for_listener(std::process::id(), port);
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut trickling = TcpStream::connect(("127.0.0.1", port)).unwrap();
    trickling.write_all(b"GET /metrics HTTP/1.1\r\nHost: te").unwrap();
    assert!(scrape(port).contains("edgefilter_messages_received_total{"), "others are served meanwhile");
    for (what, s) in [("silent", &mut silent), ("trickling", &mut trickling)] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("the {what} client was not disconnected: {e}"));
        assert_eq!(n, 0, "the {what} client got {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "closed after {took:?}, before the header-read timeout of 10 s");
    assert!(scrape(port).contains("edgefilter_messages_received_total{"));
}
