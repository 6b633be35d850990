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
    edgefilter [--mqtt-url URL]      run as a module (identity from EdgeHubConnectionString)
    edgefilter local [OPTIONS]       run the embedded hub, a simulated sensor and the module

LOCAL OPTIONS:
    --port N           the hub's port on 127.0.0.1 (default 1884; 0 picks a free one)
    --interval-ms N    time between sensor messages (default 1000)
    --messages N       stop the sensor after N messages (default: never)
    --twin FILE        the filter's initial desired properties (a JSON object)
    --metrics ADDR     where the module serves /metrics (default 127.0.0.1:9600; off: nowhere)

ENVIRONMENT:
    EdgeHubConnectionString      HostName=…;GatewayHostName=…;DeviceId=…;ModuleId=…;SharedAccessKey=…
    EdgeModuleCACertificateFile  the CA that edgeHub's certificate chains to
    EDGEFILTER_MQTT_URL          mqtt://host:port or mqtts://host:port: where to connect instead
    EDGEFILTER_TOKEN_TTL_SECS    SAS token lifetime (default 3600)
    EDGEFILTER_METRICS_ADDR      where /metrics is served (default 0.0.0.0:9600; off: nowhere)
    IOTEDGE_*                    set by IoT Edge: identity and the workload API (take precedence)
    TemperatureThreshold, BatchSize, BatchIntervalMs, ReportIntervalSecs
                                 settings when the twin sets none (defaults 25, 100, 10, 60)
    RuntimeLogLevel / RUST_LOG   log level (info)
";

fn main() {
    let env = |name: &str| std::env::var(name).ok();
    logging::init(env);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(Failure::Usage(msg)) => {
            eprintln!("edgefilter: {msg}\n\n{USAGE}");
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

fn run(args: &[String]) -> Result<(), Failure> {
    let mut args = args.iter().map(String::as_str);
    let mode = args.clone().next();
    if matches!(mode, Some("-h" | "--help" | "help")) {
        print!("{USAGE}");
        return Ok(());
    }
    if matches!(mode, Some("-V" | "--version")) {
        println!("edgefilter {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    if mode == Some("local") {
        args.next();
        let options = local_options(args)?;
        return runtime.block_on(local::run(options, shutdown_signal())).map_err(Failure::Runtime);
    }
    let mut mqtt_url = None;
    while let Some(arg) = args.next() {
        match arg {
            "--mqtt-url" => {
                mqtt_url = Some(args.next().ok_or_else(|| Failure::Usage("--mqtt-url needs a URL".into()))?)
            }
            other => return Err(Failure::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let mut config =
        config::resolve(|n| std::env::var(n).ok(), mqtt_url).map_err(|e| Failure::Config(e.to_string()))?;
    // The runtime is the module's alone (plus its metrics endpoint).
    config.dedicated_thread = true;
    runtime
        .block_on(module::run(config, std::sync::Arc::new(Stats::default()), shutdown_signal()))
        .map_err(Failure::Runtime)
}

fn local_options<'a>(mut args: impl Iterator<Item = &'a str>) -> Result<local::LocalOptions, Failure> {
    let settings = settings::from_env(|n| std::env::var(n).ok()).map_err(Failure::Config)?;
    let mut options = local::LocalOptions {
        port: 1884,
        interval: Duration::from_secs(1),
        messages: None,
        twin_file: None,
        settings,
        metrics_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9600))),
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| Failure::Usage(format!("{name} needs a value")));
        let number = |name: &str, v: &str| {
            v.parse::<u64>().map_err(|_| Failure::Usage(format!("{name}: {v:?} is not a whole number")))
        };
        match arg {
            "--port" => {
                let v = value("--port")?;
                options.port =
                    u16::try_from(number("--port", v)?).map_err(|_| Failure::Usage("--port: too large".into()))?;
            }
            "--interval-ms" => {
                let v = value("--interval-ms")?;
                options.interval = Duration::from_millis(number("--interval-ms", v)?.max(1));
            }
            "--messages" => {
                let v = value("--messages")?;
                options.messages = Some(number("--messages", v)?);
            }
            "--twin" => options.twin_file = Some(value("--twin")?.into()),
            "--metrics" => {
                let v = value("--metrics")?;
                options.metrics_addr = if v == "off" {
                    None
                } else {
                    Some(v.parse().map_err(|_| Failure::Usage(format!("--metrics: {v:?} is not host:port or off")))?)
                };
            }
            other => return Err(Failure::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(options)
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
