//! The `edgefilter` binary: wires the configuration, the signals and the chosen mode together.

use std::time::Duration;

use edgefilter::{config, local, logging, module, settings, stats::Stats};

#[global_allocator]
static GLOBAL: edgefilter::alloc::Counting = edgefilter::alloc::Counting;

/// mimalloc's options, set before Rust's runtime makes its first allocation.
#[used]
#[link_section = ".init_array"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn configure() {
        edgefilter::alloc::configure();
    }
    configure
};

const USAGE: &str = "\
edgefilter: the IoT Edge temperature filter module

USAGE:
    edgefilter [--mqtt-url URL]      run as a module (identity from IOTEDGE_* or EdgeHubConnectionString)
    edgefilter local [OPTIONS]       run the embedded hub, a simulated sensor and the module
    edgefilter --help | --version

OPTIONS:
    --mqtt-url URL     mqtt://host:port or mqtts://host:port: where to connect instead of the gateway

ENVIRONMENT:
    EdgeHubConnectionString      HostName=...;GatewayHostName=...;DeviceId=...;ModuleId=...;SharedAccessKey=...
    EdgeModuleCACertificateFile  the CA that edgeHub's certificate chains to
    EDGEFILTER_MQTT_URL          as --mqtt-url
    EDGEFILTER_TOKEN_TTL_SECS    SAS token lifetime (default 3600)
    EDGEFILTER_METRICS_ADDR      where /metrics is served (default 0.0.0.0:9600; off: nowhere)
    EDGEFILTER_MAX_UNCONFIRMED   most alerts awaiting the hub's confirmation (default 1000)
    EDGEFILTER_STATE_DIR         where the aggregates' windows are saved (default: nowhere)
    IOTEDGE_*                    set by IoT Edge: identity and the workload API (take precedence)
    TemperatureThreshold, BatchSize, BatchIntervalMs, ReportIntervalSecs, CheckpointSeconds,
    DeadLetterOutput             settings when the twin sets none (defaults 25, 100, 10, 60, 5, none)
    RuntimeLogLevel / RUST_LOG   log level (info)
";

const LOCAL_USAGE: &str = "\
edgefilter local: the embedded hub, a simulated SimulatedTemperatureSensor and the module, on 127.0.0.1

USAGE:
    edgefilter local [OPTIONS]

OPTIONS:
    --port N           the hub's port (default 1884; 0 picks a free one)
    --interval-ms N    time between sensor messages (default 1000)
    --messages N       stop the sensor after N messages (default: never; 0: no sensor)
    --twin FILE        the filter's initial desired properties (a JSON object)
    --metrics ADDR     where the module serves /metrics (default 127.0.0.1:9600; off: nowhere)
    --inflight N       messages the hub has in flight to a module (default 1, as edgeHub)
    --ack-delay-ms T   the hub acknowledges a module's publishes T ms late (or MIN-MAX, e.g.
                       0.5-2), as edgeHub does while it persists them (default 0)
    --state-dir DIR    where the module keeps its aggregates' windows (default ./edgefilter-state;
                       off: nowhere)
    -h, --help         this help

Type TemperatureThreshold=40 and Enter while it runs to change the module twin.
";

fn main() {
    let env = |name: &str| std::env::var(name).ok();
    logging::init(env);
    let code = match run() {
        Ok(()) => 0,
        Err(Failure::Usage(msg)) => {
            eprintln!("edgefilter: {msg}\nTry 'edgefilter --help'.");
            2
        }
        Err(Failure::Config(msg)) => {
            eprintln!("edgefilter: {msg}");
            2
        }
        Err(Failure::Runtime(msg)) => {
            log::error!("{msg}");
            1
        }
    };
    std::process::exit(code);
}

enum Failure {
    Usage(String),
    Config(String),
    Runtime(String),
}

impl From<lexopt::Error> for Failure {
    fn from(e: lexopt::Error) -> Self {
        Failure::Usage(e.to_string())
    }
}

/// What the command line asks for.
enum Mode {
    Help(&'static str),
    Version,
    Module { mqtt_url: Option<String> },
    Local(Box<local::LocalOptions>),
}

fn run() -> Result<(), Failure> {
    let mode = parse(lexopt::Parser::from_env())?;
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))
    };
    match mode {
        Mode::Help(text) => print!("{text}"),
        Mode::Version => println!("edgefilter {}", env!("CARGO_PKG_VERSION")),
        Mode::Local(options) => {
            return runtime()?.block_on(local::run(*options, shutdown_signal())).map_err(Failure::Runtime)
        }
        Mode::Module { mqtt_url } => {
            let mut config = config::resolve(|n| std::env::var(n).ok(), mqtt_url.as_deref())
                .map_err(|e| Failure::Config(e.to_string()))?;
            // The runtime is the module's alone (plus its metrics endpoint).
            config.dedicated_thread = true;
            return runtime()?
                .block_on(module::run(config, std::sync::Arc::new(Stats::default()), shutdown_signal()))
                .map_err(Failure::Runtime);
        }
    }
    Ok(())
}

/// Reads the command line; unknown arguments and bad values are refused, naming them.
fn parse(mut args: lexopt::Parser) -> Result<Mode, Failure> {
    use lexopt::prelude::*;
    let mut mqtt_url = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Mode::Help(USAGE)),
            Short('V') | Long("version") => return Ok(Mode::Version),
            Long("mqtt-url") => mqtt_url = Some(args.value()?.string()?),
            Value(v) if v == "local" && mqtt_url.is_none() => return local_options(args),
            Value(v) if v == "help" => return Ok(Mode::Help(USAGE)),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Mode::Module { mqtt_url })
}

fn local_options(mut args: lexopt::Parser) -> Result<Mode, Failure> {
    use lexopt::prelude::*;
    let settings = settings::from_env(|n| std::env::var(n).ok()).map_err(Failure::Config)?;
    let mut options = local::LocalOptions {
        port: 1884,
        interval: Duration::from_secs(1),
        messages: None,
        twin_file: None,
        settings,
        metrics_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9600))),
        delivery: Default::default(),
        state_dir: Some("edgefilter-state".into()),
    };
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Mode::Help(LOCAL_USAGE)),
            Long("port") => options.port = number(&mut args, "--port")?,
            Long("interval-ms") => {
                options.interval = Duration::from_millis(number::<u64>(&mut args, "--interval-ms")?.max(1))
            }
            Long("messages") => options.messages = Some(number(&mut args, "--messages")?),
            Long("twin") => options.twin_file = Some(args.value()?.into()),
            Long("inflight") => {
                options.delivery.inflight = number(&mut args, "--inflight")?;
                if options.delivery.inflight == 0 {
                    return Err(Failure::Usage("--inflight: at least 1".into()));
                }
            }
            Long("ack-delay-ms") => {
                let v = args.value()?.string()?;
                options.delivery.ack_delay =
                    edgefilter::hub::AckDelay::parse(&v).map_err(|e| Failure::Usage(format!("--ack-delay-ms: {e}")))?;
            }
            Long("state-dir") => {
                let v = args.value()?.string()?;
                options.state_dir = (v != "off").then(|| v.into());
            }
            Long("metrics") => {
                let v = args.value()?.string()?;
                options.metrics_addr = if v == "off" {
                    None
                } else {
                    Some(v.parse().map_err(|_| Failure::Usage(format!("--metrics: {v:?} is not host:port or off")))?)
                };
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(Mode::Local(Box::new(options)))
}

/// The whole number after option `name`, or why not.
fn number<T: std::str::FromStr>(args: &mut lexopt::Parser, name: &str) -> Result<T, Failure> {
    use lexopt::ValueExt as _;
    let v = args.value()?.string()?;
    v.parse().map_err(|_| Failure::Usage(format!("{name}: {v:?} is not a whole number in range")))
}

/// Resolves on SIGTERM (what `docker stop` and edgeAgent send) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => log::info!("Ctrl-C received"),
    }
}
