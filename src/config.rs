//! Start-up configuration: who the module is, where edgeHub is, how it proves its identity.
//!
//! Resolved once from the environment (and `--mqtt-url`) into a [`Config`]; anything missing or
//! malformed is a [`ConfigError`] that names the variable and what is wrong, and the binary exits
//! with code 2. Sources, as in the official SDKs (contract §4–5):
//!
//! - `EdgeHubConnectionString` (`HostName=…;GatewayHostName=…;DeviceId=…;ModuleId=…;
//!   SharedAccessKey=…`), as written by the IoT Edge hub dev tool, with
//!   `EdgeModuleCACertificateFile` as the CA that edgeHub's certificate chains to;
//! - `EDGEFILTER_MQTT_URL` / `--mqtt-url` (`mqtt://host:port` plain TCP, `mqtts://host:port`
//!   TLS), which overrides where the connection goes, for local brokers;
//! - `EDGEFILTER_TOKEN_TTL_SECS`: the SAS token lifetime, 3600 s by default like the SDKs;
//! - `EDGEFILTER_METRICS_ADDR`: where `/metrics` is served, `0.0.0.0:9600` by default, `off` for
//!   nowhere;
//! - `EDGEFILTER_MAX_UNCONFIRMED`: the most alerts awaiting the hub's confirmation (1000 by
//!   default), and the most input held back meanwhile: the bound on the memory a slow hub can
//!   make the module hold.
//! - `EDGEFILTER_MAX_DELIVERY_ATTEMPTS`: after how many failed connections in a row an alert is
//!   given up (`delivery_failed`, 5 by default, 1 to 100).
//! - `EDGEFILTER_STATE_DIR`: where the aggregates' open windows are saved (docs/aggregates.md);
//!   unset: nowhere, and a restart starts every window afresh.
//!
//! On an IoT Edge device edgeAgent sets `IOTEDGE_*` instead, and the security daemon's workload
//! API signs the tokens and serves the CA bundle ([`crate::workload`]). As in the Python SDK these
//! take precedence over `EdgeHubConnectionString`.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{self, Settings};
use crate::topic::ModuleId;

/// What the module needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub identity: Identity,
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    pub token_ttl: Duration,
    /// Settings from the environment over the defaults: the base the twin applies to.
    pub settings: Settings,
    /// Where `/metrics` is served (`EDGEFILTER_METRICS_ADDR`, default `0.0.0.0:9600`; `off`: nowhere).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The most alerts awaiting confirmation (`EDGEFILTER_MAX_UNCONFIRMED`), and the most input
    /// held back meanwhile.
    pub max_unconfirmed: usize,
    /// Connections in a row that may fail with an alert the oldest unconfirmed before it is given
    /// up (`EDGEFILTER_MAX_DELIVERY_ATTEMPTS`).
    pub max_delivery_attempts: u8,
    /// The module has its thread to itself (the binary's module mode): a read pause sleeps the
    /// thread. On a shared runtime (local mode, tests) it waits on a timer instead, which lets
    /// the other tasks run but wakes for every packet that arrives meanwhile.
    pub dedicated_thread: bool,
    /// Where the aggregates' checkpoint is kept (`EDGEFILTER_STATE_DIR`; None: nowhere).
    pub state_dir: Option<PathBuf>,
}

impl Config {
    /// A module on this machine's hub (local mode, the perf tool): plain TCP to 127.0.0.1:`port`,
    /// a key of its own, the default token lifetime and settings, no metrics endpoint.
    pub fn local(hub_hostname: &str, module: ModuleId, port: u16, key: Vec<u8>) -> Config {
        Config {
            identity: Identity { hub_hostname: hub_hostname.to_string(), module },
            endpoint: Endpoint { host: "127.0.0.1".into(), port, tls: None },
            credentials: Credentials::Key(key),
            token_ttl: Duration::from_secs(3600),
            settings: Settings::default(),
            metrics_addr: None,
            max_unconfirmed: DEFAULT_MAX_UNCONFIRMED,
            max_delivery_attempts: crate::limits::MAX_DELIVERY_ATTEMPTS,
            dedicated_thread: false,
            state_dir: None,
        }
    }
}

/// The module identity and the IoT Hub it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The IoT Hub hostname: used in the username and the token's audience, never dialled.
    pub hub_hostname: String,
    pub module: ModuleId,
}

/// Where the MQTT connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<Trust>,
}

/// Which certificate authorities the server certificate must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// A PEM file (`EdgeModuleCACertificateFile`).
    CaFile(PathBuf),
    /// The operating system's roots.
    SystemRoots,
    /// The security daemon's trust bundle (`GET /trust-bundle`).
    WorkloadBundle,
}

/// How SAS tokens are signed.
#[derive(Clone)]
pub enum Credentials {
    /// A shared access key held by the module.
    Key(Vec<u8>),
    /// The security daemon signs with the module's key, which the module never sees.
    Workload(crate::workload::Workload),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Key(_) => f.write_str("Key(<redacted>)"),
            Credentials::Workload(w) => write!(f, "Workload({:?})", w.uri),
        }
    }
}

/// A configuration problem: the variable, and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { variable, problem: problem.into() }
}

const CONNECTION_STRING: &str = "EdgeHubConnectionString";
const CA_FILE: &str = "EdgeModuleCACertificateFile";
const MQTT_URL: &str = "EDGEFILTER_MQTT_URL";
const TOKEN_TTL: &str = "EDGEFILTER_TOKEN_TTL_SECS";
const METRICS_ADDR: &str = "EDGEFILTER_METRICS_ADDR";
const MAX_UNCONFIRMED: &str = "EDGEFILTER_MAX_UNCONFIRMED";
const MAX_DELIVERY_ATTEMPTS: &str = "EDGEFILTER_MAX_DELIVERY_ATTEMPTS";
const STATE_DIR: &str = "EDGEFILTER_STATE_DIR";
/// Alerts awaiting confirmation at most, by default. Throughput needs the alerts of one hub
/// round trip in flight (at 30,000 alerts/s and a few milliseconds, about 100); more only queues
/// at the hub, adding latency and memory (10,000 held 17 MB at peak under full load).
pub const DEFAULT_MAX_UNCONFIRMED: usize = 1_000;

/// The fields of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub gateway_host_name: Option<String>,
    pub device_id: String,
    pub module_id: String,
    pub shared_access_key: String,
}

/// Parses `Key=value;Key=value`. Values may contain `=` (base64 keys end in it).
pub fn parse_connection_string(s: &str) -> Result<ConnectionString, ConfigError> {
    let mut cs = ConnectionString::default();
    let mut seen_module = false;
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| err(CONNECTION_STRING, format!("`{}` is not Key=value", redact(part))))?;
        match k {
            "HostName" => cs.host_name = v.to_string(),
            "GatewayHostName" => cs.gateway_host_name = Some(v.to_string()),
            "DeviceId" => cs.device_id = v.to_string(),
            "ModuleId" => {
                cs.module_id = v.to_string();
                seen_module = true;
            }
            "SharedAccessKey" => cs.shared_access_key = v.to_string(),
            "SharedAccessKeyName" | "SharedAccessSignature" | "x509" => {
                return Err(err(CONNECTION_STRING, format!("{k} is not supported: use a module's SharedAccessKey")))
            }
            other => return Err(err(CONNECTION_STRING, format!("unknown key {other}"))),
        }
    }
    for (name, value) in
        [("HostName", &cs.host_name), ("DeviceId", &cs.device_id), ("SharedAccessKey", &cs.shared_access_key)]
    {
        if value.is_empty() {
            return Err(err(CONNECTION_STRING, format!("{name} is missing")));
        }
    }
    if !seen_module || cs.module_id.is_empty() {
        return Err(err(
            CONNECTION_STRING,
            "ModuleId is missing: this is a device connection string, a module's is needed",
        ));
    }
    Ok(cs)
}

fn redact(part: &str) -> &str {
    part.split_once('=').map_or(part, |(k, _)| k)
}

/// Parses `mqtt://host:port` or `mqtts://host:port`.
pub fn parse_mqtt_url(url: &str, trust: Trust) -> Result<Endpoint, String> {
    let (tls, rest, default_port) = if let Some(r) = url.strip_prefix("mqtts://") {
        (Some(trust), r, 8883)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (None, r, 1883)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("{url:?} has an invalid port {p:?}"))?)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?} has no valid host"));
    }
    Ok(Endpoint { host: host.to_string(), port, tls })
}

/// The `IOTEDGE_*` variables edgeAgent sets for a module.
const EDGE_VARIABLES: [&str; 7] = [
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_WORKLOADURI",
    "IOTEDGE_AUTHSCHEME",
];

/// Resolves the configuration from environment variables (`lookup`) and an optional `--mqtt-url`.
pub fn resolve(lookup: impl Fn(&str) -> Option<String>, mqtt_url_flag: Option<&str>) -> Result<Config, ConfigError> {
    let edge = EDGE_VARIABLES.iter().any(|v| lookup(v).is_some());
    let (identity, gateway, credentials, trust) =
        if edge { from_edge(&lookup)? } else { from_connection_string(&lookup)? };
    let endpoint = match mqtt_url_flag.map(str::to_string).or_else(|| lookup(MQTT_URL)) {
        Some(url) => parse_mqtt_url(&url, trust).map_err(|p| err(MQTT_URL, p))?,
        None => Endpoint { host: gateway, port: 8883, tls: Some(trust) },
    };
    let token_ttl =
        Duration::from_secs(whole_number(&lookup, TOKEN_TTL, "whole seconds", 10..=86_400 * 365)?.unwrap_or(3600));
    let settings = settings::from_env(&lookup).map_err(|problem| {
        let variable = settings::names().find(|n| problem.starts_with(n)).unwrap_or("settings");
        err(variable, problem.split_once(": ").map_or(problem.clone(), |(_, p)| p.to_string()))
    })?;
    let metrics_addr = match lookup(METRICS_ADDR).as_deref().map(str::trim) {
        None => Some(std::net::SocketAddr::from(([0, 0, 0, 0], 9600))),
        Some("" | "off") => None,
        Some(v) => Some(
            v.parse().map_err(|_| err(METRICS_ADDR, format!("{v:?} is not host:port (e.g. 0.0.0.0:9600) or off")))?,
        ),
    };
    // Packet ids are 16 bits: the alerts in flight must leave some free.
    let max_unconfirmed = whole_number(&lookup, MAX_UNCONFIRMED, "a whole number", 1..=60_000)?
        .map_or(DEFAULT_MAX_UNCONFIRMED, |n| n as usize);
    let max_delivery_attempts = whole_number(&lookup, MAX_DELIVERY_ATTEMPTS, "a whole number", 1..=100)?
        .map_or(crate::limits::MAX_DELIVERY_ATTEMPTS, |n| n as u8);
    Ok(Config {
        identity,
        endpoint,
        credentials,
        token_ttl,
        settings,
        metrics_addr,
        max_unconfirmed,
        max_delivery_attempts,
        dedicated_thread: false,
        state_dir: lookup(STATE_DIR).filter(|v| !v.trim().is_empty()).map(PathBuf::from),
    })
}

/// The variable `name` as a whole number in `range`, if set (`what` names the unit in errors).
fn whole_number(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    what: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigError> {
    let Some(v) = lookup(name) else { return Ok(None) };
    match v.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(err(name, format!("expected {what} from {} to {}, got {v:?}", range.start(), range.end()))),
    }
}

type Resolved = (Identity, String, Credentials, Trust);

/// The development path: a connection string with the module's key.
fn from_connection_string(lookup: &impl Fn(&str) -> Option<String>) -> Result<Resolved, ConfigError> {
    let raw = lookup(CONNECTION_STRING).ok_or_else(|| {
        err(
            CONNECTION_STRING,
            "not set: the module needs its identity (HostName=…;DeviceId=…;ModuleId=…;SharedAccessKey=…), or the IOTEDGE_* variables IoT Edge sets",
        )
    })?;
    let cs = parse_connection_string(&raw)?;
    let key = crate::sas::decode_key(&cs.shared_access_key)
        .map_err(|_| err(CONNECTION_STRING, "SharedAccessKey is not valid base64"))?;
    let trust = match lookup(CA_FILE).filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(err(CA_FILE, format!("{} is not a readable file", path.display())));
            }
            Trust::CaFile(path)
        }
        None => Trust::SystemRoots,
    };
    let gateway = cs.gateway_host_name.clone().unwrap_or_else(|| cs.host_name.clone());
    let identity = Identity { hub_hostname: cs.host_name, module: ModuleId::new(cs.device_id, cs.module_id) };
    Ok((identity, gateway, Credentials::Key(key), trust))
}

/// The device path: edgeAgent's variables and the security daemon.
fn from_edge(lookup: &impl Fn(&str) -> Option<String>) -> Result<Resolved, ConfigError> {
    let get = |name: &'static str| {
        lookup(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| err(name, "not set, but other IOTEDGE_* variables are: IoT Edge sets all of them"))
    };
    let scheme = get("IOTEDGE_AUTHSCHEME")?;
    if !scheme.eq_ignore_ascii_case("sasToken") {
        return Err(err("IOTEDGE_AUTHSCHEME", format!("{scheme:?} is not supported: only sasToken")));
    }
    let uri = get("IOTEDGE_WORKLOADURI")?;
    let workload = crate::workload::Workload {
        uri: crate::workload::parse_uri(&uri).map_err(|p| err("IOTEDGE_WORKLOADURI", p))?,
        module_id: get("IOTEDGE_MODULEID")?,
        generation_id: get("IOTEDGE_MODULEGENERATIONID")?,
        api_version: lookup("IOTEDGE_APIVERSION").filter(|v| !v.is_empty()).unwrap_or_else(|| "2018-06-28".into()),
    };
    let identity = Identity {
        hub_hostname: get("IOTEDGE_IOTHUBHOSTNAME")?,
        module: ModuleId::new(get("IOTEDGE_DEVICEID")?, workload.module_id.clone()),
    };
    let gateway = get("IOTEDGE_GATEWAYHOSTNAME")?;
    Ok((identity, gateway, Credentials::Workload(workload), Trust::WorkloadBundle))
}
