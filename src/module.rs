//! The module: the thin I/O shell around the filter, speaking edgeHub's MQTT dialect.
//!
//! One task owns the MQTT event loop and follows each message top to bottom:
//! a publish arrives on `devices/{d}/modules/{m}/inputs/input1/{bag}` → its topic is classified
//! ([`topic::classify`]) → the body is decided ([`filter::decide`]) → an alert is queued to
//! `…/messages/events/{bag}` with the same body bytes (`Bytes`, never copied) → the hub's PUBACK
//! for the alert releases the input's acknowledgement ([`Delivery`]) → the input is acknowledged,
//! in arrival order. Because everything runs on one task, nothing here blocks on the client's
//! request queue: requests that do not fit wait in a local outbox until the next turn.
//!
//! Around that: the module twin (full fetch on every connection, live desired patches, reported
//! settings), SAS token renewal (a reconnect with a fresh token before expiry, as the Python SDK
//! does), reconnection with back-off, and a graceful stop that stops taking input and waits for
//! what is in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt as _;
use log::{debug, error, info, warn};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, Publish, QoS, SubscribeFilter, Transport};
use tokio::time::{sleep, sleep_until, Instant};

use crate::config::{Config, Credentials, Trust};
use crate::delivery::{Alert, Delivery};
use crate::filter::{self, Decision, Reason};
use crate::settings::{self, Rejection, Settings, Source};
use crate::stats::Stats;
use crate::topic::{self, Inbound};

/// edgeHub's largest message (256 KiB) plus room for the topic and the packet header.
pub const MAX_PACKET_SIZE: usize = 256 * 1024 + 8 * 1024;
/// The Python SDK's keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// The Python SDK's `api-version`.
pub const API_VERSION: &str = "2019-10-01";
/// How long a stop waits for in-flight alerts to be confirmed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a twin response before asking again.
const TWIN_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How soon a failed token renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(5);
/// How often the counters go to the log.
const STATS_INTERVAL: Duration = Duration::from_secs(60);

/// The MQTT username edgeHub expects from a module (contract §1).
pub fn username(hub_hostname: &str, id: &topic::ModuleId) -> String {
    let client_type = topic::quote(concat!("edgefilter/", env!("CARGO_PKG_VERSION")));
    format!(
        "{hub_hostname}/{}/{}/?api-version={API_VERSION}&DeviceClientType={client_type}",
        id.device_id, id.module_id
    )
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When to renew a token of lifetime `ttl`: 120 s before expiry like the Python SDK, or a fifth of
/// the lifetime for short test lifetimes.
pub fn renewal_margin(ttl: Duration) -> Duration {
    Duration::from_secs(120).min(ttl / 5)
}

/// The PEM certificates to trust, for a trust choice (the workload's bundle is fetched).
async fn trust_pem(config: &Config, trust: &Trust) -> Result<Option<Vec<u8>>, String> {
    match trust {
        Trust::SystemRoots => Ok(None),
        Trust::CaFile(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| format!("EdgeModuleCACertificateFile: cannot read {}: {e}", path.display())),
        Trust::WorkloadBundle => match &config.credentials {
            Credentials::Workload(w) => {
                w.trust_bundle().await.map(|pem| Some(pem.into_bytes())).map_err(|e| e.to_string())
            }
            Credentials::Key(_) => Err("the trust bundle comes from the workload API, which is not configured".into()),
        },
    }
}

/// The rustls client configuration trusting `pem` (or the system roots), with the ring provider.
pub fn tls_config(pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("CA certificates: not PEM: {e}"))?;
            if certs.is_empty() {
                return Err("CA certificates: no PEM certificate found".into());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("CA certificates: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no system root certificates found: set EdgeModuleCACertificateFile".into());
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Signs a fresh token valid for the configured lifetime; returns it with its expiry.
async fn fresh_token(config: &Config) -> Result<(String, u64), String> {
    let expiry = now_secs() + config.token_ttl.as_secs();
    let (hub, id) = (&config.identity.hub_hostname, &config.identity.module);
    let token = match &config.credentials {
        Credentials::Key(key) => crate::sas::token_from_key(key, hub, id, expiry),
        Credentials::Workload(w) => {
            let sr = crate::sas::encoded_resource(hub, id);
            let digest = w.sign(crate::sas::string_to_sign(&sr, expiry).as_bytes()).await.map_err(|e| e.to_string())?;
            crate::sas::token(&sr, &digest, expiry)
        }
    };
    Ok((token, expiry))
}

/// Retries `step` with back-off until it succeeds or `shutdown` resolves (None then).
async fn until_ok<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    mut step: impl FnMut() -> F,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<T> {
    let mut delay = BACKOFF_MIN;
    loop {
        match step().await {
            Ok(v) => return Some(v),
            Err(e) => error!("{what}: {e}; retrying in {:.1} s", delay.as_secs_f64()),
        }
        tokio::select! {
            _ = sleep(jitter(delay)) => {}
            _ = shutdown.as_mut() => return None,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// A request that did not fit the client's queue yet.
enum Pending {
    Alert { topic: String, payload: Bytes },
    Ack(u16),
    Twin { topic: String, payload: Bytes },
}

/// Runs the module until `shutdown` resolves and in-flight work is done (or the drain times out).
pub async fn run(config: Config, stats: Arc<Stats>, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let id = config.identity.module.clone();
    let mut options = MqttOptions::new(id.client_id(), config.endpoint.host.clone(), config.endpoint.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        .set_inflight(100);
    let mut shutdown = std::pin::pin!(shutdown);
    if let Some(trust) = &config.endpoint.tls {
        let Some(pem) = until_ok("cannot get the CA certificates", || trust_pem(&config, trust), &mut shutdown).await
        else {
            return Ok(());
        };
        options
            .set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls_config(pem.as_deref())?)));
    }
    let user = username(&config.identity.hub_hostname, &id);
    let Some((token, _)) = until_ok("cannot sign a SAS token", || fresh_token(&config), &mut shutdown).await else {
        return Ok(());
    };
    options.set_credentials(user.clone(), token);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);

    let mut shell = Shell {
        config: &config,
        client,
        stats: &stats,
        delivery: Delivery::new(),
        outbox: VecDeque::new(),
        settings: config.settings,
        rejected: Vec::new(),
        desired_version: None,
        twin_request: None,
        next_rid: 1,
        draining: false,
    };
    info!(
        "edgefilter {} starting as {} on {}:{} ({}), TemperatureThreshold={}",
        env!("CARGO_PKG_VERSION"),
        id.client_id(),
        config.endpoint.host,
        config.endpoint.port,
        if config.endpoint.tls.is_some() { "TLS" } else { "plain TCP" },
        shell.settings.temperature_threshold
    );

    let mut backoff = BACKOFF_MIN;
    let mut drain_deadline = None;
    let mut next_stats = Instant::now() + STATS_INTERVAL;
    let margin = renewal_margin(config.token_ttl);
    let mut renew_at = Instant::now() + config.token_ttl - margin;
    loop {
        let twin_retry = shell.twin_request.as_ref().map(|(_, at)| *at + TWIN_TIMEOUT);
        tokio::select! {
            biased;
            _ = &mut shutdown, if !shell.draining => {
                info!("stop requested: taking no more input, waiting for {} alerts in flight", shell.delivery.alerts_pending());
                shell.draining = true;
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            }
            _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                warn!(
                    "stopping with {} alerts unconfirmed: the hub redelivers their inputs",
                    shell.delivery.alerts_pending()
                );
                break;
            }
            _ = sleep_until(renew_at) => match fresh_token(&config).await {
                Ok((token, expiry)) => {
                    eventloop.mqtt_options.set_credentials(user.clone(), token);
                    renew_at = Instant::now() + config.token_ttl - margin;
                    info!("SAS token renewed (valid until {expiry}): reconnecting with it");
                    eventloop.clean();
                }
                Err(e) => {
                    // Keep the connection on the current token while it lasts; try again soon.
                    renew_at = Instant::now() + RENEW_RETRY;
                    warn!("SAS token renewal failed: {e}; keeping the current token, retrying in {} s", RENEW_RETRY.as_secs());
                }
            },
            _ = sleep_until(twin_retry.unwrap_or_else(Instant::now)), if twin_retry.is_some() => {
                warn!("no answer to the twin request in {}s: asking again", TWIN_TIMEOUT.as_secs());
                shell.request_twin();
            }
            _ = sleep_until(next_stats) => {
                next_stats = Instant::now() + STATS_INTERVAL;
                info!("stats: {}", stats.summary());
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    backoff = BACKOFF_MIN;
                    shell.connected(ack.session_present);
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => shell.publish(publish),
                Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                    if shell.delivery.confirmed(ack.pkid) {
                        stats.alerts_confirmed.fetch_add(1, Relaxed);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shell.delivery.written(pkid),
                Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => shell.delivery.collided(pkid),
                Ok(_) => {}
                Err(e) => {
                    match &e {
                        rumqttc::ConnectionError::ConnectionRefused(code) => error!(
                            "edgeHub refused the connection ({code:?}): check the module identity and its key"
                        ),
                        other => warn!("connection to {}:{} lost or failed: {other}; retrying in {:.1}s",
                            config.endpoint.host, config.endpoint.port, backoff.as_secs_f64()),
                    }
                    tokio::select! {
                        _ = sleep(jitter(backoff)) => {}
                        _ = &mut shutdown, if !shell.draining => {
                            shell.draining = true;
                            drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                        }
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            },
        }
        shell.flush();
        if shell.draining
            && shell.delivery.alerts_pending() == 0
            && shell.delivery.inputs_pending() == 0
            && shell.outbox.is_empty()
        {
            info!("all alerts confirmed and inputs acknowledged");
            break;
        }
    }
    // Say goodbye so the hub does not wait for the keep-alive; give it a moment to go out.
    if shell.client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    info!("stopped: {}", stats.summary());
    Ok(())
}

/// ±20% around `d`, from the clock's nanoseconds: reconnecting modules should not stampede.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.8 + f64::from(nanos % 1000) / 2500.0)
}

/// The module's state between events.
struct Shell<'a> {
    config: &'a Config,
    client: AsyncClient,
    stats: &'a Stats,
    delivery: Delivery<Bytes>,
    outbox: VecDeque<Pending>,
    settings: Settings,
    rejected: Vec<Rejection>,
    /// The `$version` of the desired properties last applied.
    desired_version: Option<u64>,
    /// The outstanding full-twin request: its rid and when it was sent.
    twin_request: Option<(String, Instant)>,
    next_rid: u64,
    draining: bool,
}

impl Shell<'_> {
    /// A (re)connection: subscribe, re-queue what the session lost, fetch the twin.
    fn connected(&mut self, session_present: bool) {
        let n = self.stats.connections.fetch_add(1, Relaxed);
        info!("connected to edgeHub (session present: {session_present}){}", if n > 0 { ", resuming" } else { "" });
        let id = &self.config.identity.module;
        let filters = [
            SubscribeFilter::new(id.inputs_filter(), QoS::AtLeastOnce),
            SubscribeFilter::new(topic::TWIN_RESPONSES.into(), QoS::AtLeastOnce),
            SubscribeFilter::new(topic::TWIN_DESIRED_PATCHES.into(), QoS::AtLeastOnce),
        ];
        if let Err(e) = self.client.try_subscribe_many(filters) {
            error!("could not queue the subscriptions: {e}");
        }
        // Acknowledgements for the old connection's inputs are void: the hub redelivers them.
        self.outbox.retain(|p| matches!(p, Pending::Alert { .. }));
        let lost = self.delivery.reconnected(session_present);
        if !lost.is_empty() {
            warn!("the hub kept no session: sending {} unconfirmed alerts again", lost.len());
            self.outbox.clear();
            self.outbox.extend(lost.into_iter().map(|a| Pending::Alert { topic: a.topic, payload: a.payload }));
        }
        self.request_twin();
    }

    fn request_twin(&mut self) {
        let rid = self.rid();
        // QoS 0 as the C SDK does: twin requests are answered or asked again, never stored.
        self.outbox.push_back(Pending::Twin { topic: topic::twin_get(&rid), payload: Bytes::from_static(b" ") });
        self.twin_request = Some((rid, Instant::now()));
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        self.next_rid.to_string()
    }

    /// One incoming publish, top to bottom.
    fn publish(&mut self, publish: Publish) {
        let id = &self.config.identity.module;
        let topic = publish.topic.clone();
        match topic::classify(id, &topic) {
            Ok(Inbound::Input { input, properties }) => {
                if self.draining {
                    // Not acknowledged: the hub keeps it for the next start.
                    return;
                }
                self.stats.received.fetch_add(1, Relaxed);
                let decision = if input == filter::INPUT {
                    filter::decide(&publish.payload, self.settings.temperature_threshold)
                } else {
                    Decision::Drop(Reason::UnknownInput)
                };
                match decision {
                    Decision::Alert => {
                        let properties = filter::alert_properties(properties);
                        let topic = id.events_topic(&properties.to_output_bag(filter::OUTPUT));
                        debug!("alert: {} bytes to {}", publish.payload.len(), filter::OUTPUT);
                        self.stats.alerts.fetch_add(1, Relaxed);
                        self.delivery
                            .alerted(publish.pkid, Alert { topic: topic.clone(), payload: publish.payload.clone() });
                        self.outbox.push_back(Pending::Alert { topic, payload: publish.payload });
                    }
                    Decision::Drop(reason) => {
                        if reason != Reason::BelowThreshold {
                            debug!("dropped a message on {input}: {}", reason.name());
                        }
                        self.stats.drop(reason);
                        self.delivery.dropped(publish.pkid);
                    }
                }
            }
            Ok(Inbound::TwinResponse { status, rid }) => {
                let rid = rid.to_string();
                self.delivery.dropped(publish.pkid);
                self.twin_response(status, &rid, &publish.payload);
            }
            Ok(Inbound::DesiredPatch) => {
                self.delivery.dropped(publish.pkid);
                self.desired(&publish.payload, Source::Patch);
            }
            Ok(Inbound::Other) => {
                debug!("ignored a message on {topic}");
                self.delivery.dropped(publish.pkid);
            }
            Err(e) => {
                warn!("dropped a message with an unreadable topic ({}): {topic}", e.name());
                self.stats.received.fetch_add(1, Relaxed);
                self.stats.drop(Reason::BadPropertyBag);
                self.delivery.dropped(publish.pkid);
            }
        }
    }

    fn twin_response(&mut self, status: u16, rid: &str, body: &[u8]) {
        if self.twin_request.as_ref().is_none_or(|(r, _)| r != rid) {
            // The response to a reported-properties patch (204), or a stale request.
            if status >= 300 {
                warn!("edgeHub answered twin request {rid} with status {status}");
            }
            return;
        }
        self.twin_request = None;
        if status != 200 {
            warn!("edgeHub answered the twin request with status {status}: keeping the current settings");
            return;
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut twin)) => match twin.remove("desired") {
                Some(desired) => self.desired_value(desired, Source::FullTwin),
                None => warn!("the twin has no desired properties: keeping the current settings"),
            },
            Ok(_) => warn!("the twin is not a JSON object: keeping the current settings"),
            Err(e) => warn!("the twin is not valid JSON ({e}): keeping the current settings"),
        }
    }

    fn desired(&mut self, body: &[u8], source: Source) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => self.desired_value(v, source),
            Err(e) => {
                self.stats.twin_rejections.fetch_add(1, Relaxed);
                warn!("desired properties ignored: not valid JSON ({e})");
            }
        }
    }

    fn desired_value(&mut self, desired: serde_json::Value, source: Source) {
        let serde_json::Value::Object(desired) = desired else {
            self.stats.twin_rejections.fetch_add(1, Relaxed);
            warn!("desired properties ignored: not a JSON object");
            return;
        };
        let version = settings::desired_version(&desired);
        if source == Source::Patch {
            if let (Some(v), Some(applied)) = (version, self.desired_version) {
                if v <= applied {
                    debug!("desired patch $version {v} is not newer than {applied}: ignored");
                    return;
                }
            }
        }
        let applied = settings::apply_desired(&self.settings, &self.config.settings, &desired, source);
        for name in &applied.changed {
            info!("{name} is now {}", setting_value(&applied.settings, name));
        }
        for r in &applied.rejected {
            warn!("{} rejected: {}; keeping {}", r.name, r.reason, setting_value(&applied.settings, r.name));
        }
        self.stats.twin_updates.fetch_add(1, Relaxed);
        self.stats.twin_rejections.fetch_add(applied.rejected.len() as u64, Relaxed);
        self.desired_version = version.or(self.desired_version);
        self.settings = applied.settings;
        self.rejected = applied.rejected;
        let reported = settings::reported(&self.settings, &self.rejected);
        let rid = self.rid();
        self.outbox
            .push_back(Pending::Twin { topic: topic::twin_reported(&rid), payload: Bytes::from(reported.to_string()) });
    }

    /// Hands what it can to the client: acknowledgements that are due, then queued requests.
    fn flush(&mut self) {
        for pkid in self.delivery.ready() {
            self.outbox.push_back(Pending::Ack(pkid));
        }
        while let Some(next) = self.outbox.pop_front() {
            let sent = match &next {
                Pending::Alert { topic, payload } => {
                    publish_now(&self.client, topic, QoS::AtLeastOnce, payload.clone())
                }
                Pending::Twin { topic, payload } => publish_now(&self.client, topic, QoS::AtMostOnce, payload.clone()),
                Pending::Ack(pkid) => {
                    let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
                    p.pkid = *pkid;
                    self.client.try_ack(&p).is_ok()
                }
            };
            if !sent {
                self.outbox.push_front(next);
                break;
            }
        }
    }
}

/// Queues a publish without waiting: false when the client's queue is full.
fn publish_now(client: &AsyncClient, topic: &str, qos: QoS, payload: Bytes) -> bool {
    matches!(client.publish_bytes(topic, qos, false, payload).now_or_never(), Some(Ok(())))
}

fn setting_value(s: &Settings, name: &str) -> String {
    settings::reported(s, &[]).get(name).map_or_else(String::new, ToString::to_string)
}
