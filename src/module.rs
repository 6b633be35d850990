//! The module: the thin I/O shell around the filter, speaking edgeHub's MQTT dialect.
//!
//! One task owns the connection and follows each batch top to bottom:
//!
//! 1. read: everything the connection has ready ([`Link::read_batch`], then [`Link::read_ready`]
//!    while more is ready, up to `BatchSize` alerts or `BatchIntervalMs`);
//! 2. for each input publish on `devices/{d}/modules/{m}/inputs/input1/{bag}`: classify the topic
//!    ([`topic::classify`]), decide the body ([`filter::decide`]) against the settings read
//!    lock-free from the [`SettingsCell`], and queue the alert to `…/messages/events/{bag}` with
//!    the same body bytes (`Bytes`, never copied) under a packet id from [`Delivery`];
//! 3. queue the acknowledgements that are due: an input is acknowledged once decided, or once
//!    the hub has confirmed its alert, in arrival order ([`Delivery::ready`]);
//! 4. write the whole batch, alerts and acknowledgements, in one system call ([`Link::flush`]).
//!    Acknowledgements with no alert to ride along wait while confirmations are on their way
//!    ([`acks_flush`]);
//! 5. when input arrives faster than a few messages per pause, leave the connection unread for a
//!    bounded time so that the next turn reads a batch, not one message ([`Gather`]): a live
//!    stream arrives one message per publish, and waking for each costs more than the message.
//!
//! Memory stays bounded when the hub is slower than the module: at most `max_unconfirmed` alerts
//! await confirmation; input beyond that is held back (still read, because confirmations arrive
//! on the same connection), up to as many again, and beyond that left unacknowledged for the hub
//! to redeliver after a reconnect (`Shell::hold_back`).
//!
//! Around that: the module twin (full fetch on every connection, live desired patches published
//! to the data path through the cell, reported settings and statistics), SAS token renewal (a
//! reconnect with a fresh token before expiry, as the Python SDK does), reconnection with
//! back-off that resends unconfirmed alerts, keep-alive pings, and a graceful stop that takes no
//! more input and waits for what is in flight.
//!
//! Decisions run here, on the I/O task, not on a worker thread: measured, handing a batch to a
//! crossbeam worker and back costs more than deciding it (see docs/performance.md, the pipeline).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytes::BytesMut;
use log::{debug, error, info, warn};
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::QoS;
use tokio::time::{sleep, sleep_until, Instant};

use crate::config::{Config, Credentials, Trust};
use crate::delivery::Delivery;
use crate::filter::{self, Decision, Matched, Reason};
use crate::gather::Gather;
use crate::limits::MAX_MESSAGE_SIZE;
use crate::mqtt::{ConnectOptions, Link, LinkError, Message, Received};
use crate::retry::Failure;
use crate::rules::Rules;
use crate::settings::{self, Rejection, Settings, SettingsCell, SettingsReader, Source};
use crate::stats::{record_us, Stats};
use crate::topic::{self, Inbound};

pub use crate::limits::{MAX_INCOMING_PACKET_SIZE, MAX_PACKET_SIZE};
/// The Python SDK's keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// The Python SDK's `api-version`.
pub const API_VERSION: &str = "2019-10-01";
/// How long a stop waits for in-flight alerts to be confirmed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a twin response before asking again.
const TWIN_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the hub to close a connection the module disconnected, before reconnecting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How soon a failed token renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(5);
/// The encoded size of a PUBACK.
const PUBACK_LEN: usize = 4;
/// How often holding input back is logged at most.
const OVERLOAD_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Packets decoded per read at most.
const READ_BATCH: usize = 1024;
/// The size of each new arena that alert topics are written into.
const TOPIC_ARENA: usize = 64 * 1024;

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
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// ring's cipher suites; on 32-bit ARM, which has no AES instructions, only ChaCha20-Poly1305
/// and AES-128-GCM, in that order. Measured on armv7 (docs/performance.md, "TLS cipher suites"):
/// AES-256-GCM, which ring offers first and OpenSSL-based servers prefer, costs the most there.
/// Leaving it out matters more than the order: mosquitto (and OpenSSL servers set to their own
/// preference) choose by the server's order, which puts ChaCha20-Poly1305 before AES-128-GCM.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if cfg!(target_arch = "arm") {
        provider.cipher_suites.retain(|s| is_chacha(s.suite()) || is_aes128(s.suite()));
        provider.cipher_suites.sort_by_key(|s| !is_chacha(s.suite()));
    }
    provider
}

fn is_aes128(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

fn is_chacha(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
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

/// Whether a batch is complete before the connection runs dry: it holds `BatchSize` alerts, or
/// it has been gathering for `BatchIntervalMs` (0: one read per batch). A batch also ends when
/// nothing more is ready to read, so under light load every message goes out at once.
pub fn batch_closes(settings: &Settings, alerts: usize, gathering: Duration) -> bool {
    alerts >= settings.batch_size as usize || settings.batch_interval_ms == 0 || gathering >= settings.batch_interval()
}

/// Whether input acknowledgements queued on their own should be written now. They ride along
/// with the next write of alerts for free; alone, they wait while alerts are unconfirmed (their
/// confirmations are on the way and make more acknowledgements due, so one write carries them
/// all), for `BatchIntervalMs` at most. With no alert unconfirmed nothing else is coming, and the
/// hub may be holding messages back until it sees them: they go at once.
pub fn acks_flush(settings: &Settings, alerts_unconfirmed: usize, waited: Duration) -> bool {
    alerts_unconfirmed == 0 || waited >= settings.batch_interval()
}

/// What ended a connection.
enum End {
    /// Stop: the drain finished or timed out.
    Stop,
    /// Reconnect, as the module asked (a renewed token to present, input to be redelivered).
    Reconnect,
    /// The connection failed.
    Lost(LinkError),
}

/// Runs the module until `shutdown` resolves and in-flight work is done (or the drain times out).
pub async fn run(config: Config, stats: Arc<Stats>, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let id = config.identity.module.clone();
    let mut shutdown = std::pin::pin!(shutdown);
    info!(
        "edgefilter {} starting as {} for {}:{} ({})",
        env!("CARGO_PKG_VERSION"),
        id.client_id(),
        config.endpoint.host,
        config.endpoint.port,
        if config.endpoint.tls.is_some() { "TLS" } else { "plain TCP" },
    );
    let tls = match &config.endpoint.tls {
        Some(trust) => {
            let Some(pem) =
                until_ok("cannot get the CA certificates", || trust_pem(&config, trust), &mut shutdown).await
            else {
                return Ok(());
            };
            Some(tls_config(pem.as_deref())?)
        }
        None => None,
    };
    let Some((token, _)) = until_ok("cannot sign a SAS token", || fresh_token(&config), &mut shutdown).await else {
        return Ok(());
    };
    let mut connect = ConnectOptions {
        client_id: id.client_id(),
        username: username(&config.identity.hub_hostname, &id),
        password: token,
        keep_alive: KEEP_ALIVE,
        clean_session: false,
    };
    let metrics = match config.metrics_addr {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                info!("metrics on http://{}/metrics", listener.local_addr().map_or(addr, |a| a));
                Some(tokio::spawn(crate::stats::serve_metrics(listener, stats.clone())))
            }
            Err(e) => {
                error!("cannot serve metrics on {addr}: {e} (set EDGEFILTER_METRICS_ADDR, or off)");
                None
            }
        },
        None => None,
    };

    let cell = SettingsCell::new(config.settings.clone());
    let mut shell = Shell {
        config: &config,
        stats: &stats,
        delivery: Delivery::new(),
        reader: cell.reader(),
        cell,
        rejected: Vec::new(),
        desired_version: None,
        twin_request: None,
        next_rid: 1,
        draining: false,
        unflushed: Vec::new(),
        packets: Vec::with_capacity(READ_BATCH),
        topics: BytesMut::new(),
        bag: topic::BagScratch::default(),
        acks_held: 0,
        acks_since: None,
        read_after: None,
        gather: Gather::new(),
        deferred: VecDeque::new(),
        overload_warned: None,
        left_unacknowledged: 0,
        connection: 0,
        given_up: VecDeque::new(),
        subscribed: false,
    };
    let margin = renewal_margin(config.token_ttl);
    let mut renew_at = Instant::now() + config.token_ttl - margin;
    let mut drain_deadline: Option<Instant> = None;
    let mut retry = crate::retry::Retry::default();
    let mut next_report = Instant::now() + Duration::from_secs(u64::from(shell.settings().report_interval_secs));
    'connections: loop {
        if shell.draining && shell.delivery.alerts_pending() == 0 {
            break;
        }
        let (host, port) = (config.endpoint.host.as_str(), config.endpoint.port);
        let attempt = Link::connect(host, port, tls.clone(), &connect, MAX_INCOMING_PACKET_SIZE, CONNECT_TIMEOUT);
        let connected = tokio::select! {
            r = attempt => r,
            _ = &mut shutdown, if !shell.draining => {
                stopped_offline(&shell);
                break 'connections;
            }
            _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => break 'connections,
        };
        let (mut link, session_present) = match connected {
            Ok(c) => c,
            Err(e) => {
                let failure = match e {
                    LinkError::Refused(_) => Failure::Refused,
                    LinkError::Unreachable(_) => Failure::Unreachable,
                    _ => Failure::Dropped,
                };
                let next = retry.failed(std::time::Instant::now(), failure);
                if let Some(attempts) = next.log {
                    let every = next.delay.as_secs_f64();
                    match &e {
                        LinkError::Refused(code) => error!(
                            "edgeHub refused the connection ({code:?}): check the module identity and its key; retrying in {every:.1} s"
                        ),
                        other if failure == Failure::Dropped => warn!(
                            "cannot connect to {host}:{port} ({attempts} attempts since the last line): {other}; retrying in {every:.1} s"
                        ),
                        other if attempts <= 1 => {
                            warn!("cannot connect to {host}:{port}: {other}; retrying every {every:.1} s")
                        }
                        other => warn!(
                            "cannot connect to {host}:{port} for {:.0} s ({attempts} attempts since the last line): {other}; retrying every {every:.1} s",
                            next.down_for.as_secs_f64()
                        ),
                    }
                }
                tokio::select! {
                    _ = sleep(jitter(next.delay)) => {}
                    _ = &mut shutdown, if !shell.draining => {
                        stopped_offline(&shell);
                        break 'connections;
                    }
                }
                continue;
            }
        };
        retry.connected(std::time::Instant::now());
        let resumed = match shell.connected(&mut link, session_present, !retry.quiet()) {
            Ok(()) => link.flush().await,
            Err(e) => Err(e),
        };
        let end = if let Err(e) = resumed {
            End::Lost(e)
        } else {
            let mut last_read = Instant::now();
            let mut next_ping = Instant::now() + KEEP_ALIVE;
            let mut t = Timers::default();
            loop {
                if config.dedicated_thread {
                    // A read pause on a thread of its own: sleeping costs one system call and no
                    // wake-ups, where a timer would be woken by every packet meanwhile (and
                    // registering it costs one more). Nothing else on this thread needs it.
                    if let Some(at) = shell.read_after.take() {
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        link.paused();
                    }
                }
                t.drain.set(drain_deadline);
                t.renew.set(Some(renew_at));
                t.ping.set(Some(next_ping));
                t.twin.set(shell.twin_request.as_ref().map(|(_, at)| *at + TWIN_TIMEOUT));
                t.acks.set(shell.acks_since.map(|at| at + shell.settings().batch_interval()));
                t.report.set(Some(next_report));
                t.read.set(shell.read_after);
                let step: Result<Option<End>, LinkError> = tokio::select! {
                    biased;
                    _ = &mut shutdown, if !shell.draining => {
                        info!("stop requested: taking no more input, waiting for {} alerts in flight", shell.delivery.alerts_pending());
                        shell.draining = true;
                        shell.deferred.clear();
                        drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                        Ok(None)
                    }
                    _ = &mut t.drain.sleep, if t.drain.armed() => {
                        warn!("stopping with {} alerts unconfirmed: the hub redelivers their inputs", shell.delivery.alerts_pending());
                        Ok(Some(End::Stop))
                    }
                    _ = &mut t.renew.sleep, if t.renew.armed() => match fresh_token(&config).await {
                        Ok((token, expiry)) => {
                            connect.password = token;
                            renew_at = Instant::now() + config.token_ttl - margin;
                            info!("SAS token renewed (valid until {expiry}): reconnecting with it");
                            link.queue(Packet::Disconnect).map(|()| Some(End::Reconnect))
                        }
                        Err(e) => {
                            // Keep the connection on the current token while it lasts.
                            renew_at = Instant::now() + RENEW_RETRY;
                            warn!("SAS token renewal failed: {e}; keeping the current token, retrying in {} s", RENEW_RETRY.as_secs());
                            Ok(None)
                        }
                    },
                    _ = &mut t.ping.sleep, if t.ping.armed() => {
                        if last_read.elapsed() > KEEP_ALIVE * 3 / 2 {
                            Err(LinkError::Timeout)
                        } else {
                            next_ping = Instant::now() + KEEP_ALIVE;
                            link.queue(Packet::PingReq).map(|()| None)
                        }
                    }
                    _ = &mut t.twin.sleep, if t.twin.armed() => {
                        warn!("no answer to the twin request in {} s: asking again", TWIN_TIMEOUT.as_secs());
                        shell.request_twin(&mut link).map(|()| None)
                    }
                    _ = &mut t.acks.sleep, if t.acks.armed() => {
                        // Written below whatever else is queued; the timer is done with.
                        t.acks.fired();
                        Ok(None)
                    }
                    _ = &mut t.report.sleep, if t.report.armed() => {
                        next_report = Instant::now() + Duration::from_secs(u64::from(shell.settings().report_interval_secs));
                        shell.report(&mut link).map(|()| None)
                    }
                    _ = &mut t.read.sleep, if t.read.armed() => {
                        shell.read_after = None;
                        link.paused();
                        Ok(None)
                    }
                    _ = std::future::ready(()), if shell.resumable() => shell.batch(&mut link).map(|()| None),
                    r = link.read_batch(&mut shell.packets, READ_BATCH), if shell.read_after.is_none() => match r {
                        Ok(()) => {
                            last_read = Instant::now();
                            shell.batch(&mut link).map(|()| None)
                        }
                        Err(e) => Err(e),
                    },
                };
                let end = match step {
                    Ok(end) => end,
                    Err(e) => break End::Lost(e),
                };
                shell.due_acks(&mut link);
                let end = match shell.left_for_redelivery(&mut link) {
                    Ok(true) => Some(End::Reconnect),
                    Ok(false) => end,
                    Err(e) => break End::Lost(e),
                };
                if let Err(e) = shell.flush(&mut link).await {
                    break End::Lost(e);
                }
                if shell.draining && shell.delivery.alerts_pending() == 0 && shell.delivery.inputs_pending() == 0 {
                    info!("all alerts confirmed and inputs acknowledged");
                    break End::Stop;
                }
                if let Some(end) = end {
                    break end;
                }
            }
        };
        // A reconnection the module asked for (token renewal, redelivery): let the hub finish
        // with the old connection, so that the acknowledgements written with the DISCONNECT count.
        if let End::Reconnect = end {
            link.closed_by_hub(CLOSE_TIMEOUT).await;
        }
        if let End::Lost(e) = &end {
            shell.connection_failed();
            match retry.lost(std::time::Instant::now()) {
                None => warn!("connection to {host}:{port} lost: {e}; reconnecting"),
                Some(next) => {
                    if let Some(attempts) = next.log {
                        warn!(
                            "connection to {host}:{port} failed soon after edgeHub accepted it ({attempts} times since the last line): {e}; retrying in {:.1} s",
                            next.delay.as_secs_f64()
                        );
                    }
                    tokio::select! {
                        _ = sleep(jitter(next.delay)) => {}
                        _ = &mut shutdown, if !shell.draining => {
                            stopped_offline(&shell);
                            break 'connections;
                        }
                    }
                }
            }
        }
        if let End::Stop = end {
            // Say goodbye so the hub does not wait for the keep-alive.
            if link.queue(Packet::Disconnect).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), link.flush()).await;
            }
            break;
        }
        if shell.draining && drain_deadline.is_some_and(|d| d <= Instant::now()) {
            break;
        }
    }
    if let Some(m) = metrics {
        m.abort();
    }
    info!("stopped: {}", stats.summary());
    Ok(())
}

/// A deadline kept across turns of the connection loop. A tokio timer made anew each turn is
/// registered anew each turn, and registering one earlier than the event loop's next planned
/// wake-up writes to its eventfd (measured: three writes per turn under a live stream, half of
/// the module's system calls); one kept and reset only when its deadline changes costs nothing.
struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Option<Instant>,
}

impl Default for Timer {
    fn default() -> Self {
        Timer { sleep: Box::pin(sleep_until(Instant::now())), at: None }
    }
}

impl Timer {
    /// Arms the timer for `at`, or disarms it; a deadline that did not change leaves it be.
    fn set(&mut self, at: Option<Instant>) {
        if at != self.at {
            self.at = at;
            if let Some(at) = at {
                self.sleep.as_mut().reset(at);
            }
        }
    }

    fn armed(&self) -> bool {
        self.at.is_some()
    }

    /// It fired and nothing re-arms it with the same deadline: disarm it until it is set again.
    fn fired(&mut self) {
        self.at = None;
    }
}

/// The connection loop's deadlines.
#[derive(Default)]
struct Timers {
    drain: Timer,
    renew: Timer,
    ping: Timer,
    twin: Timer,
    acks: Timer,
    report: Timer,
    read: Timer,
}

/// A stop asked for while no connection is up: what is not confirmed stays with the hub.
fn stopped_offline(shell: &Shell) {
    info!(
        "stop requested while not connected: {} alerts unconfirmed; the hub redelivers their inputs",
        shell.delivery.alerts_pending()
    );
}

/// ±20% around `d`, from the clock's nanoseconds: reconnecting modules should not stampede.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.8 + f64::from(nanos % 1000) / 2500.0)
}

/// An alert held until the hub confirms it.
struct Held {
    /// The alert's topic and body: slices of the topic arena and of the read buffer.
    topic: Bytes,
    payload: Bytes,
    /// When its input arrived.
    received: Instant,
    /// When it was last written to the socket.
    written: Option<Instant>,
    /// The connection it was last written on ([`Shell::connection`]).
    connection: u64,
    /// Connections in a row that failed while it was the oldest unconfirmed alert.
    strikes: u8,
    /// A dead letter: never dead-lettered again.
    dead_letter: bool,
}

/// The module's state between events.
struct Shell<'a> {
    config: &'a Config,
    stats: &'a Stats,
    delivery: Delivery<Held>,
    /// Where the twin listener publishes settings…
    cell: Arc<SettingsCell>,
    /// …and where the data path reads them.
    reader: SettingsReader,
    rejected: Vec<Rejection>,
    /// The `$version` of the desired properties last applied.
    desired_version: Option<u64>,
    /// The outstanding full-twin request: its rid and when it was sent.
    twin_request: Option<(String, Instant)>,
    next_rid: u64,
    draining: bool,
    /// Alerts queued since the last flush.
    unflushed: Vec<u16>,
    /// The read batch (reused).
    packets: Vec<Received>,
    /// Where alert topics are written: each alert's topic is a slice of it, so that building one
    /// allocates only when the arena is renewed (every [`TOPIC_ARENA`] bytes).
    topics: BytesMut,
    /// Room for reading a property bag (reused).
    bag: topic::BagScratch,
    /// Input acknowledgements queued since the last write, and since when (see [`acks_flush`]).
    acks_held: usize,
    acks_since: Option<Instant>,
    /// Reading waits until then, for input to gather ([`Gather`]).
    read_after: Option<Instant>,
    gather: Gather,
    /// Publishes held back while too many alerts await confirmation, with when they arrived.
    deferred: VecDeque<(Message, Instant)>,
    /// When holding back was last logged.
    overload_warned: Option<Instant>,
    /// Publishes neither handled nor held back on this connection (see [`Shell::hold_back`]).
    left_unacknowledged: u64,
    /// Connections made so far; the current one's number.
    connection: u64,
    /// The last alerts given up on, as (body length, hash of topic and body): a copy made again
    /// from a redelivered input is given up at once instead of failing again.
    given_up: VecDeque<(usize, u64)>,
    /// The hub answered this connection's SUBSCRIBE.
    subscribed: bool,
}

impl Shell<'_> {
    fn settings(&mut self) -> Settings {
        self.reader.get().clone()
    }

    /// A (re)connection: forget the old connection's state, subscribe, resend unconfirmed alerts,
    /// fetch the twin.
    fn connected(&mut self, link: &mut Link, session_present: bool, loud: bool) -> Result<(), LinkError> {
        // Packets read but not handled on the old connection belong to it: their packet ids mean
        // nothing now (acknowledging one would acknowledge another message), and the hub
        // redelivers them. What was queued for the old socket went with it.
        self.packets.clear();
        self.unflushed.clear();
        self.acks_held = 0;
        self.acks_since = None;
        self.read_after = None;
        self.gather.reset();
        self.deferred.clear();
        self.left_unacknowledged = 0;
        let n = self.stats.connections.fetch_add(1, Relaxed);
        self.connection += 1;
        self.subscribed = false;
        let tls = link.tls_description().map_or_else(String::new, |t| format!(", {t}"));
        let resuming = if n > 0 { ", resuming" } else { "" };
        if loud {
            info!("connected to edgeHub (session present: {session_present}{tls}){resuming}");
        } else {
            debug!("connected to edgeHub (session present: {session_present}{tls}){resuming}");
        }
        let id = &self.config.identity.module;
        let mut subscribe = Subscribe::new_many([
            SubscribeFilter::new(id.inputs_filter(), QoS::AtLeastOnce),
            SubscribeFilter::new(topic::TWIN_RESPONSES.into(), QoS::AtLeastOnce),
            SubscribeFilter::new(topic::TWIN_DESIRED_PATCHES.into(), QoS::AtLeastOnce),
        ]);
        subscribe.pkid = self.delivery.reserve();
        link.queue(Packet::Subscribe(subscribe))?;
        let now = Instant::now();
        let mut resent = 0;
        let connection = self.connection;
        for (pkid, held) in self.delivery.reconnected() {
            let again = held.written.is_some();
            held.written = Some(now);
            held.connection = connection;
            link.queue_publish(&held.topic, pkid, &held.payload, again)?;
            resent += usize::from(again);
        }
        if resent > 0 && loud {
            warn!("sending {resent} unconfirmed alerts again");
        }
        self.request_twin(link)
    }

    fn request_twin(&mut self, link: &mut Link) -> Result<(), LinkError> {
        let rid = self.rid();
        // QoS 0 as the C SDK does: twin requests are answered or asked again, never stored.
        let p = Publish::from_bytes(topic::twin_get(&rid), QoS::AtMostOnce, Bytes::from_static(b" "));
        self.twin_request = Some((rid, Instant::now()));
        link.queue(Packet::Publish(p))
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        self.next_rid.to_string()
    }

    /// One read batch, then whatever else is ready, up to the batch limits.
    fn batch(&mut self, link: &mut Link) -> Result<(), LinkError> {
        let started = Instant::now();
        let settings = self.settings();
        let mut turn_inputs = 0;
        loop {
            let handle_started = Instant::now();
            let mut inputs = 0u64;
            // A full batch leaves the rest of what was read for the next turn, after the write.
            let mut packets = std::mem::take(&mut self.packets);
            let mut handled = 0;
            for packet in packets.iter() {
                inputs += u64::from(self.packet(link, packet, started)?);
                handled += 1;
                if self.unflushed.len() >= settings.batch_size as usize {
                    break;
                }
            }
            packets.drain(..handled);
            self.packets = packets;
            inputs += self.resume(link, &settings)?;
            turn_inputs += inputs;
            if let Some(per_message) = (handle_started.elapsed().as_nanos() as u64).checked_div(inputs) {
                let mut l = self.stats.latency();
                let high = l.decide_ns.high();
                let _ = l.decide_ns.record_n(per_message.clamp(1, high), inputs);
            }
            if !self.packets.is_empty() {
                return Ok(());
            }
            if batch_closes(&settings, self.unflushed.len(), started.elapsed())
                || !link.read_ready(&mut self.packets, READ_BATCH)?
            {
                let now = Instant::now();
                let pause =
                    self.gather.turn(now.into_std(), turn_inputs as usize, self.delivery.inputs_pending(), &settings);
                self.read_after = pause.map(|d| now + d);
                return Ok(());
            }
        }
    }

    /// One packet; true when it was an input message.
    fn packet(&mut self, link: &mut Link, packet: &Received, received: Instant) -> Result<bool, LinkError> {
        let packet = match packet {
            Received::Publish(p) if self.holding_back() => {
                self.hold_back(p, received);
                return Ok(false);
            }
            Received::Publish(p) => return self.publish(link, p, received),
            Received::Other(packet) => packet,
        };
        match packet {
            Packet::PubAck(ack) => {
                if let Some(held) = self.delivery.confirmed(ack.pkid) {
                    self.stats.alerts_confirmed.fetch_add(1, Relaxed);
                    if let Some(written) = held.written {
                        record_us(&mut self.stats.latency().to_ack_us, written.elapsed(), 1);
                    }
                }
                Ok(false)
            }
            Packet::SubAck(ack) => {
                self.delivery.released(ack.pkid);
                self.subscribed = true;
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    error!("edgeHub refused a subscription: {:?}", ack.return_codes);
                }
                Ok(false)
            }
            Packet::PingResp => Ok(false),
            other => Err(LinkError::Protocol(format!("unexpected packet from the hub: {other:?}"))),
        }
    }

    /// Whether incoming publishes wait: `max_unconfirmed` alerts await confirmation, or earlier
    /// ones wait already, or are left for redelivery (acknowledgements keep arrival order).
    fn holding_back(&self) -> bool {
        !self.draining
            && (!self.deferred.is_empty()
                || self.left_unacknowledged > 0
                || self.delivery.alerts_pending() >= self.config.max_unconfirmed)
    }

    /// Keeps a publish for when the hub has confirmed enough alerts. The connection keeps being
    /// read, because the confirmations arrive on it; what arrives meanwhile is bounded by the hub's
    /// in-flight window, and held back only up to `max_unconfirmed`. Beyond that a publish (and
    /// every later one on this connection, since acknowledgements keep arrival order) is left
    /// unacknowledged; once everything before it is done the module reconnects and the hub
    /// redelivers it ([`Shell::left_for_redelivery`]).
    fn hold_back(&mut self, publish: &Message, received: Instant) {
        self.stats.overloaded.fetch_add(1, Relaxed);
        if self.left_unacknowledged > 0 || self.deferred.len() >= self.config.max_unconfirmed {
            if self.left_unacknowledged == 0 {
                warn!(
                    "{} messages held back: leaving the rest unacknowledged for the hub to redeliver",
                    self.deferred.len()
                );
            }
            self.left_unacknowledged += 1;
            return;
        }
        if self.deferred.is_empty() && self.overload_warned.is_none_or(|at| at.elapsed() >= OVERLOAD_WARNING_EVERY) {
            warn!(
                "{} alerts await the hub's confirmation: holding input back until it confirms some (overloaded_total counts the messages)",
                self.delivery.alerts_pending()
            );
            self.overload_warned = Some(Instant::now());
        }
        self.deferred.push_back((publish.clone(), received));
    }

    /// Handles held-back publishes, in arrival order, once the hub has confirmed half of
    /// `max_unconfirmed` (so that they go out in full batches, not a few at a time), while alerts
    /// may be sent and the batch has room; returns how many inputs it handled.
    fn resume(&mut self, link: &mut Link, settings: &Settings) -> Result<u64, LinkError> {
        let mut inputs = 0;
        if !self.resumable() {
            return Ok(0);
        }
        while self.delivery.alerts_pending() < self.config.max_unconfirmed
            && self.unflushed.len() < settings.batch_size as usize
        {
            let Some((publish, received)) = self.deferred.pop_front() else { break };
            inputs += u64::from(self.publish(link, &publish, received)?);
        }
        Ok(inputs)
    }

    /// When publishes were left unacknowledged and everything before them is done: queues a
    /// DISCONNECT so that the module reconnects and the hub redelivers them. True then.
    fn left_for_redelivery(&mut self, link: &mut Link) -> Result<bool, LinkError> {
        if self.left_unacknowledged == 0
            || self.draining
            || !self.deferred.is_empty()
            || self.delivery.alerts_pending() > 0
            || self.delivery.inputs_pending() > 0
        {
            return Ok(false);
        }
        info!("reconnecting for the hub to redeliver {} messages left unacknowledged", self.left_unacknowledged);
        link.queue(Packet::Disconnect)?;
        Ok(true)
    }

    /// Held-back publishes can go now, without waiting for a read.
    fn resumable(&self) -> bool {
        !self.deferred.is_empty() && self.delivery.alerts_pending() <= self.config.max_unconfirmed / 2
    }

    /// One incoming publish, top to bottom; true when it was an input message.
    fn publish(&mut self, link: &mut Link, publish: &Message, received: Instant) -> Result<bool, LinkError> {
        let id = &self.config.identity.module;
        match topic::classify(id, publish.topic()) {
            Ok(Inbound::Input { input, bag }) => {
                if self.draining {
                    return Ok(false); // not acknowledged: the hub keeps it for the next start
                }
                self.stats.received.fetch_add(1, Relaxed);
                let settings = self.reader.get();
                let decision = match (topic::input_is(input, filter::INPUT), &settings.rules) {
                    (false, _) => Decision::Drop(Reason::UnknownInput),
                    (true, None) => filter::decide(&publish.payload, settings.temperature_threshold),
                    (true, Some(rules)) => match filter::decide_rules(&publish.payload, rules) {
                        Matched::Rules(mask) => {
                            let rules = rules.clone();
                            let sent = self.send_copies(link, publish, bag, &rules, mask, received)?;
                            self.delivery.decided(publish.pkid, sent);
                            return Ok(true);
                        }
                        Matched::Drop(reason) => Decision::Drop(reason),
                    },
                };
                // Malformed messages go to the dead-letter output when one is set; the rest of
                // the drops are acknowledged and counted.
                let dead_letter = match decision {
                    Decision::Drop(Reason::Malformed(_)) => Some(self.reader.get().dead_letter_output),
                    _ => None,
                };
                let sent = match (decision, dead_letter.as_ref().and_then(|o| o.get())) {
                    (Decision::Alert, _) => {
                        let sent =
                            self.send(link, publish, bag, filter::OUTPUT, &[filter::ALERT_PROPERTY], received)?;
                        self.stats.alerts.fetch_add(u64::from(sent), Relaxed);
                        sent
                    }
                    (Decision::Drop(reason), Some(output)) => {
                        debug!("dead-lettered a message on {} to {output}: {}", topic::unquote(input), reason.name());
                        self.stats.drop(reason);
                        self.stats.dead_lettered.fetch_add(1, Relaxed);
                        let property = (filter::DEAD_LETTER_PROPERTY, reason.name());
                        self.send(link, publish, bag, output, &[property], received)?
                    }
                    (Decision::Drop(reason), None) => {
                        if !matches!(reason, Reason::BelowThreshold | Reason::NoRuleMatched) {
                            debug!("dropped a message on {}: {}", topic::unquote(input), reason.name());
                        }
                        self.stats.drop(reason);
                        false
                    }
                };
                self.delivery.decided(publish.pkid, usize::from(sent));
                Ok(true)
            }
            Ok(Inbound::TwinResponse { status, rid }) => {
                self.delivery.dropped(publish.pkid);
                let rid = rid.to_string();
                self.twin_response(link, status, &rid, &publish.payload)?;
                Ok(false)
            }
            Ok(Inbound::DesiredPatch) => {
                self.delivery.dropped(publish.pkid);
                self.desired(link, &publish.payload, Source::Patch)?;
                Ok(false)
            }
            Ok(Inbound::Other) => {
                debug!("ignored a message on {}", publish.topic());
                self.delivery.dropped(publish.pkid);
                Ok(false)
            }
            Err(e) => {
                warn!("dropped a message with an unreadable topic ({}): {}", e.name(), publish.topic());
                self.stats.received.fetch_add(1, Relaxed);
                self.stats.drop(Reason::BadPropertyBag);
                self.delivery.dropped(publish.pkid);
                Ok(true)
            }
        }
    }

    /// Sends one copy of an input per rule in `mask`, in name order, each to the rule's output
    /// with its properties; returns how many were sent, for the input to wait for.
    fn send_copies(
        &mut self,
        link: &mut Link,
        input: &Message,
        bag: &str,
        rules: &Rules,
        mask: u16,
        received: Instant,
    ) -> Result<usize, LinkError> {
        let mut sent = 0;
        for (_, rule) in rules.rules.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
            sent += usize::from(self.send(link, input, bag, rule.output.as_str(), &rule.properties, received)?);
        }
        self.stats.alerts.fetch_add(sent as u64, Relaxed);
        Ok(sent)
    }

    /// Sends an input's body on to `output` with its properties and `set` (an alert, or a dead
    /// letter), at least once: true when it was sent; the caller then says how many copies the
    /// input waits for ([`Delivery::decided`]). The topic is written into the arena and the body
    /// is the input's buffer: nothing is copied but into the outgoing buffer, and nothing
    /// allocated.
    fn send<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        link: &mut Link,
        input: &Message,
        bag: &str,
        output: &str,
        set: &[(K, V)],
        received: Instant,
    ) -> Result<bool, LinkError> {
        if self.topics.capacity() - self.topics.len() < 1024 {
            self.topics = BytesMut::with_capacity(TOPIC_ARENA);
        }
        let id = &self.config.identity.module;
        // classify checked the bag, so this cannot fail; the input would still be acknowledged
        // (with one copy fewer to wait for), never lost.
        if topic::write_output_topic(&mut self.topics, id, bag, output, set, &mut self.bag).is_err() {
            return Ok(false);
        }
        let topic = self.topics.split().freeze();
        // SAFETY-free: the arena holds only what write_output_topic wrote, which is ASCII.
        let size = topic::message_size(input.payload.len(), std::str::from_utf8(&topic).unwrap_or(""));
        if size > MAX_MESSAGE_SIZE {
            self.stats.drop(Reason::AlertTooLarge);
            warn!(
                "gave up an alert to {output}: {size} bytes as edgeHub counts them, over its {MAX_MESSAGE_SIZE}-byte limit (alert_too_large); its input is acknowledged"
            );
            return Ok(false);
        }
        if self.is_given_up(&topic, &input.payload) {
            self.stats.drop(Reason::DeliveryFailed);
            debug!("an alert given up on came again (its input redelivered): acknowledging its input");
            return Ok(false);
        }
        let held = Held {
            topic: topic.clone(),
            payload: input.payload.clone(),
            received,
            written: None,
            connection: self.connection,
            strikes: 0,
            dead_letter: self.reader.get().dead_letter_output.get() == Some(output),
        };
        let pkid = self.delivery.send(held);
        self.unflushed.push(pkid);
        link.queue_publish(&topic, pkid, &input.payload, false)?;
        Ok(true)
    }

    /// The connection failed: the oldest unconfirmed alert, if it was written on it, gets a strike,
    /// and is given up after `EDGEFILTER_MAX_DELIVERY_ATTEMPTS` in a row. Everything before it was
    /// confirmed (a hub confirms in order), so it is the likeliest cause: a broker that drops the
    /// connection on one message would otherwise stop the stream for good.
    fn connection_failed(&mut self) {
        let (connection, attempts) = (self.connection, self.config.max_delivery_attempts);
        // Only when the hub read what went before the alert (the SUBSCRIBE, answered): a hub that
        // drops every connection unread says nothing about the alert, and gives nothing up.
        if !self.subscribed {
            return;
        }
        let Some((pkid, held)) = self.delivery.oldest_mut() else { return };
        if held.connection != connection || held.written.is_none() {
            return;
        }
        held.strikes += 1;
        if held.strikes >= attempts {
            self.give_up(pkid);
        }
    }

    /// Gives up an alert that failed on `EDGEFILTER_MAX_DELIVERY_ATTEMPTS` connections (`delivery_failed`),
    /// and every unconfirmed copy of it (made again from its input, redelivered); sends it to
    /// `DeadLetterOutput` when one is set and it is not a dead letter already. Its input was
    /// received on a connection that is gone: the hub redelivers it, and [`Shell::send`] then gives
    /// up its alert at once ([`Shell::is_given_up`]) and acknowledges it.
    fn give_up(&mut self, pkid: u16) {
        let Some(held) = self.delivery.confirmed(pkid) else { return };
        let key = fingerprint(&held.topic, &held.payload);
        let copies: Vec<u16> = self
            .delivery
            .unconfirmed()
            .filter(|(_, h)| fingerprint(&h.topic, &h.payload) == key)
            .map(|(p, _)| p)
            .collect();
        for p in &copies {
            self.delivery.confirmed(*p);
        }
        self.stats.drop(Reason::DeliveryFailed);
        self.given_up.push_back(key);
        if self.given_up.len() > GIVEN_UP_KEPT {
            self.given_up.pop_front();
        }
        let settings = self.settings();
        let dead_letter = settings.dead_letter_output.get().filter(|_| !held.dead_letter);
        warn!(
            "gave up an alert of {} bytes after {} connections in a row failed with it unconfirmed (delivery_failed; {} copies with it){}",
            held.payload.len(),
            self.config.max_delivery_attempts,
            copies.len(),
            dead_letter.map_or_else(String::new, |o| format!("; sending it to {o}"))
        );
        let Some(output) = dead_letter else { return };
        let topic_str = std::str::from_utf8(&held.topic).unwrap_or("");
        let bag = topic_str.split_once("/messages/events/").map_or("", |(_, b)| b);
        let id = &self.config.identity.module;
        let property = [(filter::DEAD_LETTER_PROPERTY, Reason::DeliveryFailed.name())];
        let mut topics = BytesMut::new();
        if topic::write_output_topic(&mut topics, id, bag, output, &property, &mut self.bag).is_ok() {
            self.stats.dead_lettered.fetch_add(1, Relaxed);
            let held = Held { topic: topics.freeze(), written: None, strikes: 0, dead_letter: true, ..held };
            // Sent with the other unconfirmed alerts when the next connection is up.
            self.delivery.send(held);
        }
    }

    /// Whether an alert with this topic and body was given up on lately.
    fn is_given_up(&self, topic: &[u8], payload: &[u8]) -> bool {
        self.given_up.iter().any(|(len, _)| *len == payload.len())
            && self.given_up.contains(&fingerprint(topic, payload))
    }

    fn twin_response(&mut self, link: &mut Link, status: u16, rid: &str, body: &[u8]) -> Result<(), LinkError> {
        if self.twin_request.as_ref().is_none_or(|(r, _)| r != rid) {
            // The response to a reported-properties patch (204), or a stale request.
            if status >= 300 {
                warn!("edgeHub answered twin request {rid} with status {status}");
            }
            return Ok(());
        }
        self.twin_request = None;
        if status != 200 {
            warn!("edgeHub answered the twin request with status {status}: keeping the current settings");
            return Ok(());
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut twin)) => match twin.remove("desired") {
                Some(desired) => return self.desired_value(link, desired, Source::FullTwin),
                None => warn!("the twin has no desired properties: keeping the current settings"),
            },
            Ok(_) => warn!("the twin is not a JSON object: keeping the current settings"),
            Err(e) => warn!("the twin is not valid JSON ({e}): keeping the current settings"),
        }
        Ok(())
    }

    fn desired(&mut self, link: &mut Link, body: &[u8], source: Source) -> Result<(), LinkError> {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => self.desired_value(link, v, source),
            Err(e) => {
                self.stats.twin_rejections.fetch_add(1, Relaxed);
                warn!("desired properties ignored: not valid JSON ({e})");
                Ok(())
            }
        }
    }

    fn desired_value(&mut self, link: &mut Link, desired: serde_json::Value, source: Source) -> Result<(), LinkError> {
        let serde_json::Value::Object(desired) = desired else {
            self.stats.twin_rejections.fetch_add(1, Relaxed);
            warn!("desired properties ignored: not a JSON object");
            return Ok(());
        };
        let version = settings::desired_version(&desired);
        if source == Source::Patch {
            if let (Some(v), Some(applied)) = (version, self.desired_version) {
                if v <= applied {
                    debug!("desired patch $version {v} is not newer than {applied}: ignored");
                    return Ok(());
                }
            }
        }
        let current = self.settings();
        let applied = settings::apply_desired(&current, &self.config.settings, &desired, source);
        for name in &applied.changed {
            info!("{name} is now {}", setting_value(&applied.settings, name));
        }
        for r in &applied.rejected {
            warn!("{} rejected: {}; keeping {}", r.name, r.reason, setting_value(&applied.settings, r.name));
        }
        self.stats.twin_updates.fetch_add(1, Relaxed);
        self.stats.twin_rejections.fetch_add(applied.rejected.len() as u64, Relaxed);
        self.desired_version = version.or(self.desired_version);
        let reported = settings::reported(&applied.settings, current.rules.as_deref(), &applied.rejected);
        self.cell.publish(applied.settings);
        self.rejected = applied.rejected;
        self.report_properties(link, reported)
    }

    /// Statistics to the log and the reported properties.
    fn report(&mut self, link: &mut Link) -> Result<(), LinkError> {
        info!("stats: {}", self.stats.summary());
        let reported = serde_json::json!({ "Statistics": self.stats.reported() });
        self.report_properties(link, reported)
    }

    fn report_properties(&mut self, link: &mut Link, patch: serde_json::Value) -> Result<(), LinkError> {
        let rid = self.rid();
        let p = Publish::from_bytes(topic::twin_reported(&rid), QoS::AtMostOnce, Bytes::from(patch.to_string()));
        link.queue(Packet::Publish(p))
    }

    /// Queues the input acknowledgements that are due.
    fn due_acks(&mut self, link: &mut Link) {
        while let Some(pkid) = self.delivery.next_ready() {
            // Encoding a PUBACK cannot fail; the error path exists for oversized publishes.
            let _ = link.queue(Packet::PubAck(PubAck::new(pkid)));
            self.acks_held += 1;
            self.acks_since.get_or_insert_with(Instant::now);
        }
    }

    /// Writes the batch and times its alerts. Acknowledgements queued on their own may wait for
    /// company ([`acks_flush`]).
    async fn flush(&mut self, link: &mut Link) -> Result<(), LinkError> {
        if link.queued() == 0 {
            return Ok(());
        }
        let only_acks = link.queued() == self.acks_held * PUBACK_LEN;
        if only_acks && !self.draining {
            let waited = self.acks_since.map_or(Duration::ZERO, |at| at.elapsed());
            if !acks_flush(&self.settings(), self.delivery.alerts_pending(), waited) {
                return Ok(());
            }
        }
        link.flush().await?;
        self.acks_held = 0;
        self.acks_since = None;
        self.stats.batches.fetch_add(1, Relaxed);
        if !self.unflushed.is_empty() {
            let now = Instant::now();
            let mut l = self.stats.latency();
            let _ = l.batch_alerts.record(self.unflushed.len() as u64);
            for pkid in self.unflushed.drain(..) {
                if let Some(held) = self.delivery.alert_mut(pkid) {
                    held.written = Some(now);
                    record_us(&mut l.to_socket_us, now - held.received, 1);
                }
            }
        }
        Ok(())
    }
}

/// How many alerts given up on are remembered ([`Shell::given_up`]).
const GIVEN_UP_KEPT: usize = 16;

/// An alert's body length and a hash of its topic and body.
fn fingerprint(topic: &[u8], payload: &[u8]) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    (payload.len(), h.finish())
}

fn setting_value(s: &Settings, name: &str) -> String {
    settings::reported(s, None, &[]).get(name).map_or_else(String::new, ToString::to_string)
}
