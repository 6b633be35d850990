//! `edgefilter-perf`: generate, record and replay telemetry traces against an edgefilter module,
//! and `bench`, which needs nothing running. See docs/performance.md, "Load testing".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgefilter::topic::ModuleId;
use edgefilter_perf::trace::{self, Generate, Message};
use edgefilter_perf::{output, replay, Pace, ReplayOptions, Report};

const USAGE: &str = "\
edgefilter-perf: replay load tester for edgefilter

USAGE:
    edgefilter-perf generate [--count N] [--rate HZ] [--alert-ratio R] [--size BYTES] [--seed S] [-o FILE]
    edgefilter-perf record --hub mqtt://HOST:PORT --topic FILTER [--seconds S] [--count N] [-o FILE]
    edgefilter-perf replay TRACE --hub mqtt://HOST:PORT [--device D] [--module M]
                           [--speed X | --rate HZ | --max] [--threshold T] [--pid PID]
                           [--settle SECS] [--deadline SECS] [--json FILE] [--hgrm FILE] [--svg FILE]
    edgefilter-perf bench [--count N] [--warmup N]

generate writes SimulatedTemperatureSensor messages: its ramp, or --alert-ratio of them above 25.
replay exits 1 when alerts are missing or unexpected, 2 on bad arguments or an unreadable trace.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let code = match runtime.block_on(run(&args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgefilter-perf: {e}");
            2
        }
    };
    std::process::exit(code);
}

struct Flags(HashMap<String, String>, Vec<String>);

impl Flags {
    fn parse(args: &[String], switches: &[&str]) -> Result<Flags, String> {
        let (mut named, mut positional) = (HashMap::new(), Vec::new());
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if switches.contains(&a.as_str()) {
                named.insert(a.clone(), String::new());
            } else if a.starts_with('-') {
                let v = it.next().ok_or(format!("{a} needs a value"))?;
                named.insert(a.clone(), v.clone());
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Flags(named, positional))
    }
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name}: {v:?} is not valid")),
        }
    }
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn write_out(path: Option<&str>, text: &str) -> Result<(), String> {
    match path {
        None | Some("-") => {
            print!("{text}");
            Ok(())
        }
        Some(p) => std::fs::write(p, text).map_err(|e| format!("{p}: {e}")),
    }
}

fn hub_address(url: &str) -> Result<(String, u16), String> {
    let e = edgefilter::config::parse_mqtt_url(url, edgefilter::config::Trust::SystemRoots)?;
    if e.tls.is_some() {
        return Err("--hub: the perf tool speaks plain MQTT (mqtt://): run it next to the hub".into());
    }
    Ok((e.host, e.port))
}

async fn run(args: &[String]) -> Result<i32, String> {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    match command.as_str() {
        "generate" => {
            let f = Flags::parse(rest, &[])?;
            let g = Generate {
                count: f.get("--count", 1000)?,
                rate: f.get("--rate", 10.0)?,
                alert_ratio: f
                    .str("--alert-ratio")
                    .map(|v| v.parse::<f64>().map_err(|_| format!("--alert-ratio: {v:?}")))
                    .transpose()?,
                size: f.str("--size").map(|v| v.parse::<usize>().map_err(|_| format!("--size: {v:?}"))).transpose()?,
                seed: f.get("--seed", 1)?,
            };
            let text: String = trace::generate(&g).iter().map(|m| m.to_line() + "\n").collect();
            write_out(f.str("-o"), &text)?;
            Ok(0)
        }
        "record" => {
            let f = Flags::parse(rest, &[])?;
            let (host, port) = hub_address(f.str("--hub").ok_or("record needs --hub")?)?;
            let topic = f.str("--topic").ok_or("record needs --topic")?;
            let seconds: f64 = f.get("--seconds", 10.0)?;
            let count: usize = f.get("--count", usize::MAX)?;
            let messages = record(&host, port, topic, Duration::from_secs_f64(seconds), count).await?;
            eprintln!("recorded {} messages", messages.len());
            write_out(f.str("-o"), &messages.iter().map(|m| m.to_line() + "\n").collect::<String>())?;
            Ok(0)
        }
        "replay" => {
            let f = Flags::parse(rest, &["--max"])?;
            let path = f.1.first().ok_or("replay needs a TRACE file")?;
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let messages = trace::read(&text).map_err(|e| format!("{path}: {e}"))?;
            let (host, port) = hub_address(f.str("--hub").ok_or("replay needs --hub mqtt://HOST:PORT")?)?;
            let pace = if f.has("--max") {
                Pace::Max
            } else if f.has("--rate") {
                Pace::Rate(f.get("--rate", 100.0)?)
            } else {
                Pace::Trace(f.get("--speed", 1.0)?)
            };
            let options = ReplayOptions {
                host,
                port,
                target: ModuleId::new(
                    f.get("--device", "local-device".to_string())?,
                    f.get("--module", "edgefilter".to_string())?,
                ),
                pace,
                threshold: f.get("--threshold", 25.0)?,
                settle: Duration::from_secs_f64(f.get("--settle", 5.0)?),
                deadline: Duration::from_secs_f64(f.get("--deadline", 600.0)?),
                pid: f.str("--pid").map(|p| p.parse().map_err(|_| format!("--pid: {p:?}"))).transpose()?,
                progress: true,
            };
            let report = replay(&messages, &options).await.map_err(|e| e.to_string())?;
            finish(&report, &f, "replay")
        }
        "bench" => {
            let f = Flags::parse(rest, &[])?;
            bench(f.get("--count", 20_000)?, f.get("--warmup", 2_000)?).await
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(0)
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}

fn finish(report: &Report, f: &Flags, title: &str) -> Result<i32, String> {
    println!("{}", report.summary());
    if let Some(p) = f.str("--json") {
        std::fs::write(p, serde_json::to_string_pretty(&report.to_json()).unwrap_or_default())
            .map_err(|e| format!("{p}: {e}"))?;
    }
    if let Some(p) = f.str("--hgrm") {
        std::fs::write(p, output::hgrm(&report.latency_us)).map_err(|e| format!("{p}: {e}"))?;
    }
    if let Some(p) = f.str("--svg") {
        std::fs::write(p, output::svg(&report.latency_us, &report.rate_over_time, title))
            .map_err(|e| format!("{p}: {e}"))?;
    }
    Ok(if report.complete() { 0 } else { 1 })
}

/// Captures the messages on `topic` with their timing.
async fn record(host: &str, port: u16, topic: &str, seconds: Duration, count: usize) -> Result<Vec<Message>, String> {
    let mut options = rumqttc::MqttOptions::new(format!("perf-record-{}", std::process::id()), host, port);
    options.set_max_packet_size(300_000, 300_000);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    client.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let start = tokio::time::Instant::now();
    let end = start + seconds;
    let mut first: Option<tokio::time::Instant> = None;
    while out.len() < count {
        let event = match tokio::time::timeout_at(end, eventloop.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(format!("cannot record from {host}:{port}: {e}")),
            Ok(Ok(e)) => e,
        };
        if let rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p)) = event {
            let now = tokio::time::Instant::now();
            let t0 = *first.get_or_insert(now);
            let bag = p
                .topic
                .split_once("/inputs/")
                .and_then(|(_, r)| r.split_once('/'))
                .map(|(_, b)| b)
                .or_else(|| p.topic.split_once("/messages/events/").map(|(_, b)| b))
                .unwrap_or("");
            out.push(Message {
                t: now.duration_since(t0).as_secs_f64(),
                properties: edgefilter::topic::parse_bag(bag).unwrap_or_default(),
                body: String::from_utf8_lossy(&p.payload).into_owned(),
            });
        }
    }
    Ok(out)
}

/// A minimal pass-through in the module's place: every input straight to `output1`.
async fn pass_through(port: u16, target: ModuleId) {
    let mut options = rumqttc::MqttOptions::new("perf-pass-through", "127.0.0.1", port);
    options.set_max_packet_size(300_000, 300_000).set_inflight(1000);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
    let inputs = target.inputs_filter();
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                let _ = client.subscribe(inputs.clone(), rumqttc::QoS::AtLeastOnce).await;
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                let bag = p.topic.splitn(7, '/').nth(6).unwrap_or("");
                let topic = target.events_topic(&format!("%24.on=output1&{bag}"));
                let c = client.clone();
                tokio::spawn(async move {
                    let _ = c.publish_bytes(topic, rumqttc::QoS::AtLeastOnce, false, p.payload).await;
                });
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The embedded hub and the module in this process; a warm-up and a measured replay at full
/// speed; then the same load through a pass-through in the module's place.
async fn bench(count: u64, warmup: u64) -> Result<i32, String> {
    let key = vec![7u8; 32];
    let target = ModuleId::new("bench-device", "edgefilter");
    let config = edgefilter::hub::HubConfig {
        hub_hostname: "bench-hub.azure-devices.net".into(),
        device_id: target.device_id.clone(),
        keys: HashMap::from([(target.module_id.clone(), key.clone())]),
        routes: Vec::new(),
        desired: HashMap::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let hub = edgefilter::hub::Hub::new(config, None);
    tokio::spawn(hub.clone().serve(listener));
    let trace =
        trace::generate(&Generate { count: count + warmup, rate: 1000.0, alert_ratio: Some(1.0), size: None, seed: 3 });
    let (warm, measured) = trace.split_at(warmup as usize);
    let options = ReplayOptions {
        host: "127.0.0.1".into(),
        port,
        target: target.clone(),
        pace: Pace::Max,
        threshold: 25.0,
        settle: Duration::from_secs(10),
        deadline: Duration::from_secs(300),
        pid: None,
        progress: false,
    };
    let module_config = edgefilter::config::Config::local("bench-hub.azure-devices.net", target.clone(), port, key);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let module = tokio::spawn(edgefilter::module::run(module_config, Arc::new(Default::default()), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("warm-up: {warmup} messages");
    replay(warm, &options).await.map_err(|e| e.to_string())?;
    eprintln!("measured: {count} messages through the module");
    let with_module = replay(measured, &options).await.map_err(|e| e.to_string())?;
    let _ = stop.send(());
    let _ = module.await;

    let baseline_task = tokio::spawn(pass_through(port, target.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    replay(warm, &options).await.map_err(|e| e.to_string())?;
    eprintln!("baseline: {count} messages through a pass-through in the module's place");
    let baseline = replay(measured, &options).await.map_err(|e| e.to_string())?;
    baseline_task.abort();

    println!(
        "== edgefilter\n{}\n\n== baseline (pass-through, the hub's own ceiling)\n{}\n",
        with_module.summary(),
        baseline.summary()
    );
    let p = |r: &Report, q: f64| r.latency_us.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "edgefilter / baseline: rate {:.2}x, p50 latency {:.2}x, p99 latency {:.2}x",
        with_module.achieved_rate / baseline.achieved_rate,
        p(&with_module, 0.5) / p(&baseline, 0.5).max(1e-9),
        p(&with_module, 0.99) / p(&baseline, 0.99).max(1e-9)
    );
    Ok(if with_module.complete() { 0 } else { 1 })
}
