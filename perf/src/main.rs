//! `edgefilter-perf`: generate, record and replay telemetry traces against an edgefilter module,
//! run a pass-through in the module's place (the baseline), compare two runs, and `bench`, which
//! needs nothing running. See docs/performance.md, "Load testing".

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edgefilter::topic::ModuleId;
use edgefilter_perf::trace::{self, Generate, Message};
use edgefilter_perf::{output, replay, Hub, Pace, ReplayOptions, Report};

/// Replay load tester for edgefilter: plays edgeHub's side of the conversation against any MQTT hub.
#[derive(Parser)]
#[command(name = "edgefilter-perf", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a trace of SimulatedTemperatureSensor messages (its ramp, or --alert-ratio above 25)
    Generate(GenerateArgs),
    /// Capture the messages on a live topic into a trace
    Record(RecordArgs),
    /// Replay a trace at a module and check every alert (exit 1 when alerts are missing or unexpected)
    Replay(Box<ReplayArgs>),
    /// Forward every input unchanged to output1, in the module's place: a baseline for the module
    Passthrough(PassthroughArgs),
    /// Compare two replay reports (--json files): a table of the differences and one plot
    Compare(CompareArgs),
    /// Start the embedded hub and the module in this process, replay at full speed, then the same
    /// load through a pass-through (the hub's own ceiling)
    Bench(BenchArgs),
    /// Run the embedded hub alone (plain MQTT on 127.0.0.1), delivering to module identities as
    /// edgeHub does: one message in flight, the module's publishes confirmed late if asked
    Hub(StandInHubArgs),
}

#[derive(Args)]
struct StandInHubArgs {
    /// The port to listen on
    #[arg(long)]
    port: u16,
    /// The hub's host name (the SAS tokens' audience)
    #[arg(long, default_value = "h")]
    hostname: String,
    /// The device id of the module identities
    #[arg(long, default_value = "local-device")]
    device: String,
    /// A module identity (repeatable), each with the key of --key
    #[arg(long = "module", required = true)]
    modules: Vec<String>,
    /// The modules' shared access key (base64)
    #[arg(long)]
    key: String,
    /// Messages in flight to a module (edgeHub: 1)
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Confirm a module's publishes this many ms late, or MIN-MAX (e.g. 0.5-2), as edgeHub does
    /// while it persists them
    #[arg(long, default_value = "0")]
    ack_delay_ms: String,
}

/// A `Rules` object from a file, validated as the module validates it.
fn read_rules(path: &std::path::Path) -> Result<edgefilter::rules::Rules, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(o)) => {
            edgefilter::rules::Rules::parse(&o).map_err(|e| format!("{}: {e}", path.display()))
        }
        Ok(_) => Err(format!("{}: not a JSON object of rules", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Where the hub is.
#[derive(Args)]
struct HubArgs {
    /// mqtt://HOST:PORT or mqtts://HOST:PORT
    #[arg(long, value_name = "URL")]
    hub: String,
    /// PEM CA file that an mqtts:// hub's certificate chains to (default: the system roots)
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl HubArgs {
    fn hub(&self) -> Result<Hub, String> {
        Hub::parse(&self.hub, self.ca.as_deref())
    }
}

/// Which module the messages are for.
#[derive(Args)]
struct TargetArgs {
    /// The module's device id
    #[arg(long, default_value = "local-device")]
    device: String,
    /// The module's id
    #[arg(long, default_value = "edgefilter")]
    module: String,
}

impl TargetArgs {
    fn id(&self) -> ModuleId {
        ModuleId::new(self.device.clone(), self.module.clone())
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// Messages to write
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Messages per second in the trace's timing
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// The fraction of messages above 25 °C (default: the sensor's ramp)
    #[arg(long, value_name = "R")]
    alert_ratio: Option<f64>,
    /// Pad every body to this many bytes
    #[arg(long, value_name = "BYTES")]
    size: Option<usize>,
    /// Random seed
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The first message's timeCreated, Unix seconds (default 1790000000: 2026-09-21)
    #[arg(long, value_name = "UNIX_SECONDS")]
    start: Option<u64>,
    /// Output file (default: standard output)
    #[arg(short = 'o', value_name = "FILE")]
    output: Option<String>,
}

#[derive(Args)]
struct RecordArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The topic filter to capture
    #[arg(long, value_name = "FILTER")]
    topic: String,
    /// Stop after this many seconds
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop after this many messages
    #[arg(long)]
    count: Option<usize>,
    /// Output file (default: standard output)
    #[arg(short = 'o', value_name = "FILE")]
    output: Option<String>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("pace").args(["speed", "rate", "max", "closed"])))]
struct ReplayArgs {
    /// The trace (JSON lines, as generate and record write)
    trace: PathBuf,
    #[command(flatten)]
    hub: HubArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// The trace's own timing, times X
    #[arg(long, value_name = "X")]
    speed: Option<f64>,
    /// A fixed rate, messages per second
    #[arg(long, value_name = "HZ")]
    rate: Option<f64>,
    /// As fast as the hub takes them
    #[arg(long)]
    max: bool,
    /// A closed loop: at most N messages outstanding (sent, with no alert yet for it or a later
    /// one); latency counted from the actual send
    #[arg(long, value_name = "N")]
    closed: Option<u64>,
    /// The module's TemperatureThreshold (which messages must alert)
    #[arg(long, default_value_t = 25.0, allow_negative_numbers = true)]
    threshold: f64,
    /// The module's alert rules: a JSON file holding its twin's `Rules` object. The expected
    /// copies and their outputs come from the module's own decision function
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Aggregates for the module to run: a JSON file holding its twin's `Aggregates` object, set
    /// with a desired patch before the replay; the windows that come back are compared with a
    /// reference computed from the messages sent (a mismatch makes the exit status 1)
    #[arg(long, value_name = "FILE")]
    aggregates: Option<PathBuf>,
    /// Milliseconds within which the module's time of a reading may differ from its send time:
    /// with arrival time, a reading this near a window's edge may fall on either side
    #[arg(long, value_name = "MS", default_value_t = 250)]
    aggregate_tolerance: u64,
    /// The module's process: its CPU time and peak RSS
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds to wait for the last alerts
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Seconds the whole run may take
    #[arg(long, default_value_t = 600.0)]
    deadline: f64,
    #[command(flatten)]
    out: ReportFiles,
}

/// Where to write a report.
#[derive(Args)]
struct ReportFiles {
    /// The report as JSON (what compare reads)
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The latency distribution in HdrHistogram's percentile format
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// A plot of latency by percentile and of alerts per second
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct PassthroughArgs {
    #[command(flatten)]
    hub: HubArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Log in as the module identity with this shared access key (base64), so that a hub that
    /// delivers to modules one at a time (the embedded hub) treats it as the module
    #[arg(long)]
    key: Option<String>,
    /// The hub's host name, for --key
    #[arg(long, default_value = "h")]
    hostname: String,
}

#[derive(Args)]
struct CompareArgs {
    /// The baseline run's report (replay --json)
    a: PathBuf,
    /// The run to compare with it
    b: PathBuf,
    /// One plot with both runs
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Messages measured
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Messages replayed first, not measured
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let code = match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgefilter-perf: {e}");
            2
        }
    };
    std::process::exit(code);
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

async fn run(command: Command) -> Result<i32, String> {
    match command {
        Command::Generate(a) => {
            let g = Generate {
                count: a.count,
                rate: a.rate,
                alert_ratio: a.alert_ratio,
                size: a.size,
                seed: a.seed,
                start: a.start,
            };
            let text: String = trace::generate(&g).iter().map(|m| m.to_line() + "\n").collect();
            write_out(a.output.as_deref(), &text)?;
            Ok(0)
        }
        Command::Record(a) => {
            let hub = a.hub.hub()?;
            let seconds = Duration::from_secs_f64(a.seconds);
            let messages = record(&hub, &a.topic, seconds, a.count.unwrap_or(usize::MAX)).await?;
            eprintln!("recorded {} messages", messages.len());
            write_out(a.output.as_deref(), &messages.iter().map(|m| m.to_line() + "\n").collect::<String>())?;
            Ok(0)
        }
        Command::Replay(a) => {
            let path = a.trace.display().to_string();
            let text = std::fs::read_to_string(&a.trace).map_err(|e| format!("{path}: {e}"))?;
            let messages = trace::read(&text).map_err(|e| format!("{path}: {e}"))?;
            let pace = match (a.max, a.closed, a.rate, a.speed) {
                (true, _, _, _) => Pace::Max,
                (_, Some(n), _, _) => Pace::Closed(n),
                (_, _, Some(rate), _) => Pace::Rate(rate),
                (_, _, _, speed) => Pace::Trace(speed.unwrap_or(1.0)),
            };
            let options = ReplayOptions {
                hub: a.hub.hub()?,
                target: a.target.id(),
                pace,
                threshold: a.threshold,
                rules: a.rules.as_deref().map(read_rules).transpose()?,
                settle: Duration::from_secs_f64(a.settle),
                deadline: Duration::from_secs_f64(a.deadline),
                pid: a.pid,
                progress: true,
                aggregates: a
                    .aggregates
                    .as_deref()
                    .map(edgefilter_perf::aggregates::Aggregates::read)
                    .transpose()?
                    .map(|set| edgefilter_perf::aggregates::Aggregates {
                        tolerance: Duration::from_millis(a.aggregate_tolerance),
                        ..set
                    }),
            };
            let report = replay(&messages, &options).await.map_err(|e| e.to_string())?;
            finish(&report, &a.out, "replay")
        }
        Command::Passthrough(a) => {
            let hub = a.hub.hub()?;
            let login = match &a.key {
                Some(key) => {
                    let key = edgefilter::sas::decode_key(key).map_err(|e| format!("--key: {e}"))?;
                    let expiry = edgefilter::module::now_secs() + 24 * 3600;
                    let token = edgefilter::sas::token_from_key(&key, &a.hostname, &a.target.id(), expiry);
                    Some((edgefilter::module::username(&a.hostname, &a.target.id()), token))
                }
                None => None,
            };
            tokio::select! {
                r = pass_through(hub, a.target.id(), login) => r.map(|()| 0),
                _ = tokio::signal::ctrl_c() => Ok(0),
                _ = terminated() => Ok(0),
            }
        }
        Command::Compare(a) => compare(&a),
        Command::Bench(a) => bench(a.count, a.warmup).await,
        Command::Hub(a) => stand_in_hub(&a).await,
    }
}

/// The embedded hub alone, until SIGTERM or Ctrl-C.
async fn stand_in_hub(a: &StandInHubArgs) -> Result<i32, String> {
    let key = edgefilter::sas::decode_key(&a.key).map_err(|e| format!("--key: {e}"))?;
    let ack_delay = edgefilter::hub::AckDelay::parse(&a.ack_delay_ms).map_err(|e| format!("--ack-delay-ms: {e}"))?;
    let config = edgefilter::hub::HubConfig {
        hub_hostname: a.hostname.clone(),
        device_id: a.device.clone(),
        keys: a.modules.iter().map(|m| (m.clone(), key.clone())).collect(),
        routes: Vec::new(),
        desired: HashMap::new(),
        delivery: edgefilter::hub::Delivery { inflight: a.inflight, ack_delay },
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", a.port)).await.map_err(|e| e.to_string())?;
    let hub = edgefilter::hub::Hub::new(config, None);
    tokio::select! {
        () = hub.serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated() => {}
    }
    Ok(0)
}

/// Resolves on SIGTERM.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn finish(report: &Report, out: &ReportFiles, title: &str) -> Result<i32, String> {
    println!("{}", report.summary());
    let write = |p: &PathBuf, text: String| std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()));
    if let Some(p) = &out.json {
        write(p, serde_json::to_string_pretty(&report.to_json()).unwrap_or_default())?;
    }
    if let Some(p) = &out.hgrm {
        write(p, output::hgrm(&report.latency_us))?;
    }
    if let Some(p) = &out.svg {
        write(p, output::svg(&[output::Run::of(title, report)], title))?;
    }
    Ok(if report.complete() { 0 } else { 1 })
}

/// `compare A B`: the differences between two reports, and one plot of both.
fn compare(a: &CompareArgs) -> Result<i32, String> {
    let read = |p: &PathBuf| -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a replay report: {e}", p.display()))
    };
    let (ja, jb) = (read(&a.a)?, read(&a.b)?);
    let (la, lb) = (a.a.display().to_string(), a.b.display().to_string());
    print!("{}", output::compare_table(&ja, &jb, &la, &lb)?);
    if let Some(p) = &a.svg {
        let runs = [output::Run::from_json(&la, &ja)?, output::Run::from_json(&lb, &jb)?];
        std::fs::write(p, output::svg(&runs, &format!("{la} against {lb}")))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(0)
}

/// Captures the messages on `topic` with their timing.
async fn record(hub: &Hub, topic: &str, seconds: Duration, count: usize) -> Result<Vec<Message>, String> {
    let mut options = hub.mqtt_options(&format!("perf-record-{}", std::process::id()));
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
            Ok(Err(e)) => return Err(format!("cannot record from {hub:?}: {e}")),
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

/// A plain client in the module's place: every input straight to `output1` at QoS 1, each
/// publish on its own, as a straightforward rumqttc client (or an SDK module) would do it. With
/// `login` (username, SAS token) it connects as the module identity, so that a hub that delivers
/// to modules one message at a time does so to it too.
async fn pass_through(hub: Hub, target: ModuleId, login: Option<(String, String)>) -> Result<(), String> {
    let mut options = match &login {
        Some((user, token)) => {
            let mut o = hub.mqtt_options(&target.client_id());
            o.set_credentials(user, token);
            o
        }
        None => hub.mqtt_options("perf-pass-through"),
    };
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
            Err(e) => {
                eprintln!("passthrough: {e}; reconnecting");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The embedded hub and the module in this process; a warm-up and a measured replay at full
/// speed; then the same load through a pass-through in the module's place.
async fn bench(count: u64, warmup: u64) -> Result<i32, String> {
    const HOST: &str = "bench-hub.azure-devices.net";
    let key = vec![7u8; 32];
    let target = ModuleId::new("bench-device", "edgefilter");
    let config = edgefilter::hub::HubConfig {
        hub_hostname: HOST.into(),
        device_id: target.device_id.clone(),
        keys: HashMap::from([(target.module_id.clone(), key.clone())]),
        routes: Vec::new(),
        desired: HashMap::new(),
        delivery: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let hub = edgefilter::hub::Hub::new(config, None);
    tokio::spawn(hub.clone().serve(listener));
    let trace = trace::generate(&Generate {
        count: count + warmup,
        rate: 1000.0,
        alert_ratio: Some(1.0),
        size: None,
        seed: 3,
        start: None,
    });
    let (warm, measured) = trace.split_at(warmup as usize);
    let options = ReplayOptions {
        hub: Hub::local(port),
        target: target.clone(),
        pace: Pace::Max,
        threshold: 25.0,
        rules: None,
        settle: Duration::from_secs(10),
        deadline: Duration::from_secs(300),
        pid: None,
        progress: false,
        aggregates: None,
    };
    let module_config = edgefilter::config::Config::local(HOST, target.clone(), port, key.clone());
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

    // As the module's identity, so that the hub delivers to it as to the module: one at a time.
    let token = edgefilter::sas::token_from_key(&key, HOST, &target, edgefilter::module::now_secs() + 3600);
    let login = (edgefilter::module::username(HOST, &target), token);
    let baseline_task = tokio::spawn(pass_through(Hub::local(port), target.clone(), Some(login)));
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
