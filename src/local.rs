//! Local mode: the embedded hub, the simulated sensor and the module on one machine.
//!
//! `edgefilter local` starts a hub on 127.0.0.1 with two module identities (the sensor and the
//! filter, fresh keys each run), the routes of iotedgedev's template, and the filter's twin
//! seeded with `{"TemperatureThreshold":25}` or a file. The sensor and the module connect to it
//! with the same MQTT code and SAS tokens they use against edgeHub. The console shows the
//! upstream (the alerts), reported properties and statistics; a line typed on standard input
//! (`TemperatureThreshold=30`, or a JSON patch) changes the filter's desired properties live.
//!
//! The ASA tutorial's loop is routed too: the filter's output `alert` goes to the sensor's
//! `control` input, where `{"command":"reset"}` restarts its ramp; `docs/asa-tutorial.twin.json`
//! is the tutorial's job as a twin (`edgefilter local --twin docs/asa-tutorial.twin.json`). The
//! module keeps its aggregates' windows in `--state-dir` (`edgefilter-state` in the current
//! directory by default).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use log::{info, warn};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::hub::{routes, Delivery, Hub, HubConfig, HubEvent};
use crate::sensor::{self, Sensor};
use crate::settings::Settings;
use crate::stats::Stats;
use crate::topic::ModuleId;

/// The device and hub names local mode uses.
pub const DEVICE_ID: &str = "local-device";
pub const HUB_HOSTNAME: &str = "local-hub.azure-devices.net";
pub const FILTER_MODULE: &str = "edgefilter";
pub const SENSOR_MODULE: &str = "SimulatedTemperatureSensor";

#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub port: u16,
    /// Time between sensor messages.
    pub interval: Duration,
    /// Stop the sensor after this many messages (None: never).
    pub messages: Option<u64>,
    /// Desired properties to seed the filter's twin with (a JSON object file).
    pub twin_file: Option<PathBuf>,
    /// Settings from the environment: the module's base.
    pub settings: Settings,
    /// Where the module serves `/metrics`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How the hub delivers to the modules (`--inflight`, `--ack-delay-ms`).
    pub delivery: Delivery,
    /// Where the module keeps its aggregates' windows (`--state-dir`; None: nowhere).
    pub state_dir: Option<PathBuf>,
}

/// The output the tutorial's reset command leaves the filter on, routed to the sensor's `control`.
pub const CONTROL_OUTPUT: &str = "alert";

/// A fresh random key.
fn new_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).ok();
    key
}

/// Runs local mode until `shutdown` resolves.
pub async fn run(options: LocalOptions, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let desired = match &options.twin_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--twin {}: {e}", path.display()))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                _ => return Err(format!("--twin {}: must hold a JSON object of desired properties", path.display())),
            }
        }
        None => serde_json::from_str(r#"{"TemperatureThreshold":25}"#).unwrap_or_default(),
    };
    let (filter_key, sensor_key) = (new_key(), new_key());
    let config = HubConfig {
        hub_hostname: HUB_HOSTNAME.into(),
        device_id: DEVICE_ID.into(),
        keys: [(FILTER_MODULE.to_string(), filter_key.clone()), (SENSOR_MODULE.to_string(), sensor_key.clone())].into(),
        routes: local_routes(),
        desired: [(FILTER_MODULE.to_string(), desired)].into(),
        delivery: options.delivery,
    };
    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e} (choose another --port)", options.port))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let hub = Hub::new(config, Some(events_tx));
    let hub_task = tokio::spawn(hub.clone().serve(listener));
    println!(
        "edgefilter local mode: hub on 127.0.0.1:{port}, sensor every {} ms\n\
         Change the threshold: type `TemperatureThreshold=30` and Enter, or\n  \
         mosquitto_pub -p {port} -t local/twin/{FILTER_MODULE}/desired -m '{{\"TemperatureThreshold\":30}}'\n\
         Watch alerts from another shell: mosquitto_sub -p {port} -t 'local/upstream/#' -v\n",
        options.interval.as_millis()
    );

    let stats = Arc::new(Stats::default());
    let module_config = Config {
        settings: options.settings,
        metrics_addr: options.metrics_addr,
        state_dir: options.state_dir,
        ..Config::local(HUB_HOSTNAME, ModuleId::new(DEVICE_ID, FILTER_MODULE), port, filter_key)
    };
    let sensor_task = tokio::spawn(run_sensor(port, sensor_key, options.interval, options.messages));
    let console_task = tokio::spawn(console(events_rx, stats.clone()));
    let stdin_task = tokio::spawn(desired_from_stdin(hub.clone()));
    let result = crate::module::run(module_config, stats, shutdown).await;
    for task in [sensor_task, console_task, stdin_task] {
        task.abort();
    }
    hub_task.abort();
    result
}

/// iotedgedev's routes, and the tutorial's: the filter's `alert` output into the sensor's
/// `control` input.
pub fn local_routes() -> Vec<routes::Route> {
    let mut r = routes::local_routes(SENSOR_MODULE, FILTER_MODULE);
    r.push(routes::Route {
        module: FILTER_MODULE.into(),
        output: CONTROL_OUTPUT.into(),
        sink: routes::Sink::ModuleInput { module: SENSOR_MODULE.into(), input: sensor::CONTROL_INPUT.into() },
    });
    r
}

/// The simulated sensor as a module of its own, publishing over MQTT like the real one, and
/// taking commands on its `control` input.
async fn run_sensor(port: u16, key: Vec<u8>, interval: Duration, messages: Option<u64>) {
    let id = ModuleId::new(DEVICE_ID, SENSOR_MODULE);
    let mut options = MqttOptions::new(id.client_id(), "127.0.0.1", port);
    let expiry = crate::sas::now_secs() + 365 * 86_400;
    options.set_clean_session(false).set_keep_alive(Duration::from_secs(60)).set_credentials(
        crate::topic::username(HUB_HOSTNAME, &id),
        crate::sas::token_from_key(&key, HUB_HOSTNAME, &id, expiry),
    );
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let _ = client.subscribe(id.inputs_filter(), QoS::AtLeastOnce).await;
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let sensor = Arc::new(std::sync::Mutex::new(Sensor::new(seed)));
    let shared = sensor.clone();
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut sent = 0u64;
        while messages.is_none_or(|m| sent < m) {
            tick.tick().await;
            let reading = shared.lock().unwrap_or_else(|p| p.into_inner()).next_reading(SystemTime::now());
            let topic = id.events_topic(&reading.properties.to_output_bag(sensor::OUTPUT));
            if client.publish(topic, QoS::AtLeastOnce, false, reading.body.into_bytes()).await.is_err() {
                break;
            }
            sent += 1;
        }
    });
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => info!("sensor: connected"),
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let before = sensor.lock().unwrap_or_else(|p| p.into_inner()).machine_temperature();
                match sensor.lock().unwrap_or_else(|p| p.into_inner()).control(&p.payload) {
                    sensor::Control::Reset => {
                        info!("sensor: reset command received at machine temperature {before:.2}")
                    }
                    sensor::Control::NoOperation => {}
                    sensor::Control::Unreadable(e) => warn!("sensor: control message not understood: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!("sensor: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if publisher.is_finished() && eventloop.state.inflight() == 0 {
            break;
        }
    }
}

/// Prints what reaches the upstream, reported properties and periodic statistics.
async fn console(mut events: mpsc::UnboundedReceiver<HubEvent>, stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(HubEvent::Upstream { module, output, properties, body }) => {
                    let props: Vec<String> = properties.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "upstream <- {module}/{}: {} [{}]",
                        output.as_deref().unwrap_or("-"),
                        String::from_utf8_lossy(&body),
                        props.join(" ")
                    );
                }
                Some(HubEvent::Reported { module, reported }) => println!("twin reported by {module}: {reported}"),
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => println!(
                "stats: {} | twin updates={} rejected={}",
                stats.summary(),
                stats.twin_updates.load(Relaxed),
                stats.twin_rejections.load(Relaxed)
            ),
        }
    }
}

/// Reads desired-property changes from standard input.
async fn desired_from_stdin(hub: Arc<Hub>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match parse_desired_line(&line) {
            Ok(Some(patch)) => match hub.set_desired(FILTER_MODULE, &patch) {
                Ok(v) => {
                    println!("desired properties of {FILTER_MODULE} are now version {v}: {}", Value::Object(patch))
                }
                Err(e) => println!("{e}"),
            },
            Ok(None) => {}
            Err(e) => println!("not understood ({e}): type Name=value, e.g. TemperatureThreshold=30, or a JSON object"),
        }
    }
}

/// `Name=value` (value as JSON, else a string) or a JSON object; blank lines are nothing.
pub fn parse_desired_line(line: &str) -> Result<Option<Map<String, Value>>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if line.starts_with('{') {
        return match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(_) => Err("not a JSON object".into()),
            Err(e) => Err(e.to_string()),
        };
    }
    let (name, value) = line.split_once('=').ok_or("no `=`")?;
    let name = name.trim();
    if name.is_empty() {
        return Err("empty name".into());
    }
    let value = value.trim();
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok(Some([(name.to_string(), value)].into_iter().collect()))
}
