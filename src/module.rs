//! The module's I/O shell: the socket and TLS link to edgeHub, one timer, token signing and the
//! metrics endpoint, around the sans-I/O session core ([`crate::session`]) that makes every
//! decision.
//!
//! One task runs the loop, each turn top to bottom:
//!
//! 1. write what the core queued, if it says the write is due ([`Session::transmit`]): alerts and
//!    the acknowledgements that ride with them, sealed into TLS records and sent in one system
//!    call ([`Link::flush`]);
//! 2. do what the core asks ([`Session::poll`]): sign a token (a future beside the data path,
//!    never awaited inside it), connect, close, or exit;
//! 3. wait for one of four things: the stop signal, the connection (a connect attempt finishing,
//!    or packets to read), the token being signed, or the core's next deadline;
//! 4. tell the core, with the time: a read turn reads everything the connection has ready
//!    ([`Link::read_batch`], then [`Link::read_ready`] while the core's batch is open).
//!
//! Decisions run here, on the I/O task, not on a worker thread: measured, handing a batch to a
//! crossbeam worker and back costs more than deciding it (see docs/performance.md, the pipeline).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{error, info};
use tokio::time::{sleep, sleep_until, Instant};

use crate::config::{Config, Credentials};
use crate::limits::MAX_INCOMING_PACKET_SIZE;
use crate::mqtt::{ConnectOptions, Link, LinkError, Received};
use crate::session::{Action, Session, READ_BATCH};
use crate::statefile::Saver;
use crate::stats::Stats;

pub use crate::limits::MAX_PACKET_SIZE;
pub use crate::sas::{now_secs, renewal_margin};
pub use crate::session::{acks_flush, batch_closes};
pub use crate::tls::{crypto_provider, tls_config};
pub use crate::topic::{username, API_VERSION};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the hub to close a connection the module disconnected, before reconnecting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
            _ = sleep(delay.mul_f64(0.8 + (seed() % 1000) as f64 / 2500.0)) => {}
            _ = shutdown.as_mut() => return None,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

type Signing<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
type Connecting = Pin<Box<dyn Future<Output = Result<(Link, bool), LinkError>> + Send>>;

/// The connection, as the shell holds it.
enum Io {
    Offline,
    Connecting(Connecting),
    Up(Link),
}

/// What woke the loop.
enum Event {
    Stop,
    Connected(Result<(Link, bool), LinkError>),
    Read(Result<(), LinkError>),
    Signed(Result<String, String>),
    Timer,
}

/// Runs the module until `shutdown` resolves and in-flight work is done (or the drain times out).
pub async fn run(config: Config, stats: Arc<Stats>, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let mut shutdown = std::pin::pin!(shutdown);
    info!(
        "edgefilter {} starting as {} for {}:{} ({})",
        env!("CARGO_PKG_VERSION"),
        config.identity.module.client_id(),
        config.endpoint.host,
        config.endpoint.port,
        if config.endpoint.tls.is_some() { "TLS" } else { "plain TCP" },
    );
    let tls = match &config.endpoint.tls {
        Some(trust) => {
            let get = || crate::tls::trust_pem(&config, trust);
            let Some(pem) = until_ok("cannot get the CA certificates", get, &mut shutdown).await else {
                return Ok(());
            };
            Some(tls_config(pem.as_deref())?)
        }
        None => None,
    };
    let metrics = serve_metrics(&config, &stats).await;
    let mut session = Session::new(&config, stats.clone(), std::time::Instant::now(), seed());
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    session.set_wall_clock(std::time::Instant::now(), unix_ms);
    let saver = restore(&config, &stats, &mut session);
    let mut shell = Shell {
        config: &config,
        stats: &stats,
        tls,
        session,
        io: Io::Offline,
        signing: None,
        timer: Timer::default(),
        saver,
        now: std::time::Instant::now(),
    };
    let mut stopping = false;
    while shell.act().await {
        let event = shell.wait(&mut shutdown, stopping).await;
        stopping |= matches!(event, Event::Stop);
        shell.handle(event);
    }
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(saver) = &mut shell.saver {
        saver.finish();
    }
    info!("stopped: {}", stats.summary());
    Ok(())
}

/// Reads the aggregates' state file into the core, and starts the writer of new ones; None
/// without a state directory.
fn restore(config: &Config, stats: &Arc<Stats>, session: &mut Session) -> Option<Saver> {
    let Some(dir) = &config.state_dir else {
        info!("aggregates' windows are not kept across restarts (EDGEFILTER_STATE_DIR is not set)");
        return None;
    };
    match crate::statefile::read(dir) {
        Ok(Some(bytes)) => {
            info!("aggregates' state file read from {} ({} bytes)", dir.display(), bytes.len());
            session.restore_state(bytes);
        }
        Ok(None) => info!("aggregates' state in {}: no file yet", dir.display()),
        Err(e) => {
            stats.restore_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::warn!("cannot read the aggregates' state file in {}: {e}; windows start afresh", dir.display());
        }
    }
    Some(Saver::new(dir.clone(), stats.clone()))
}

/// The shell's state between turns: the session core and what it does I/O for.
struct Shell<'a> {
    config: &'a Config,
    stats: &'a Stats,
    tls: Option<Arc<rustls::ClientConfig>>,
    session: Session,
    io: Io,
    signing: Option<Signing<'a>>,
    timer: Timer,
    /// Writes the aggregates' checkpoints (None: no state directory).
    saver: Option<Saver>,
    /// The clock's last reading, taken after whatever last waited or took time (the wait for
    /// an event, a read turn, a write): one clock read serves the steps after it in a turn.
    now: std::time::Instant,
}

impl<'a> Shell<'a> {
    /// Writes what the core queued and does what it asks; false once it asked to exit.
    async fn act(&mut self) -> bool {
        self.write().await;
        while let Some(action) = self.session.poll(self.now) {
            match action {
                Action::Sign => {
                    let config = self.config;
                    self.signing = Some(Box::pin(async move { fresh_token(config).await.map(|(t, _)| t) }));
                }
                Action::Connect(options) => self.io = Io::Connecting(connect(self.config, self.tls.clone(), options)),
                Action::Close => {
                    self.write().await;
                    if let Io::Up(mut link) = std::mem::replace(&mut self.io, Io::Offline) {
                        link.closed_by_hub(CLOSE_TIMEOUT).await;
                    }
                    self.now = std::time::Instant::now();
                    self.session.on_closed(self.now);
                }
                Action::Save(bytes) => {
                    if let Some(saver) = &self.saver {
                        saver.save(bytes);
                    }
                }
                Action::Exit => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.write()).await;
                    return false;
                }
            }
        }
        true
    }

    /// Writes what the core says is due.
    async fn write(&mut self) {
        let Io::Up(link) = &mut self.io else { return };
        let now = self.now;
        let Some(tx) = self.session.transmit(now) else { return };
        match link.send(tx).await {
            Ok(()) => {
                self.now = std::time::Instant::now();
                self.session.on_written(self.now);
            }
            Err(e) => {
                self.session.on_lost(now, &e);
                self.io = Io::Offline;
            }
        }
    }

    /// Waits for the next event: the stop, the connection, the signing or the core's deadline.
    async fn wait(&mut self, shutdown: &mut Pin<&mut impl Future<Output = ()>>, stopping: bool) -> Event {
        if let (true, Some(at), Io::Up(link)) = (self.config.dedicated_thread, self.session.read_after(), &mut self.io)
        {
            // A read pause on a thread of its own: sleeping costs one system call and no wake-ups,
            // where a timer would be woken by every packet meanwhile.
            std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
            link.paused();
            return Event::Timer;
        }
        self.timer.set(self.session.deadline().map(Instant::from_std));
        let (paused, work) = (self.session.read_after().is_some(), self.session.has_work());
        tokio::select! {
            biased;
            _ = shutdown.as_mut(), if !stopping => Event::Stop,
            e = next_io(&mut self.io, self.session.inbox(), paused, work) => e,
            r = pending_or(&mut self.signing) => Event::Signed(r),
            _ = &mut self.timer.sleep, if self.timer.armed() => {
                self.timer.fired();
                Event::Timer
            }
        }
    }

    /// Tells the core what happened.
    fn handle(&mut self, event: Event) {
        let now = std::time::Instant::now();
        self.now = now;
        let session = &mut self.session;
        match event {
            Event::Stop => session.on_stop(now),
            Event::Signed(r) => {
                self.signing = None;
                session.on_token(now, r);
            }
            Event::Timer => {
                let paused = session.read_after().is_some();
                session.on_timer(now);
                if let (true, Io::Up(link)) = (paused && session.read_after().is_none(), &mut self.io) {
                    link.paused();
                }
            }
            Event::Connected(Ok((link, present))) => {
                session.on_connected(now, present, link.tls_description());
                self.io = Io::Up(link);
            }
            Event::Connected(Err(e)) => {
                session.on_connect_failed(now, &e);
                self.io = Io::Offline;
            }
            Event::Read(r) => {
                let Io::Up(link) = &mut self.io else { return };
                match r.and_then(|()| read_turn(session, link, self.stats, now)) {
                    Ok(ended) => self.now = ended,
                    Err(e) => {
                        session.on_lost(now, &e);
                        self.io = Io::Offline;
                    }
                }
            }
        }
    }
}

/// One read turn: the core handles what was read, and while its batch is open, whatever more is
/// ready. Each step's time per input message is the decide latency (the first step's from `now`,
/// read just before it). Returns when the last step ended.
fn read_turn(
    session: &mut Session,
    link: &mut Link,
    stats: &Stats,
    now: std::time::Instant,
) -> Result<std::time::Instant, LinkError> {
    let mut started = now;
    loop {
        let turn = session.on_read(now);
        let ended = std::time::Instant::now();
        if turn.inputs > 0 {
            let per_message = per_input_ns(ended.saturating_duration_since(started), turn.inputs);
            let mut l = stats.latency();
            let high = l.decide_ns.high();
            let _ = l.decide_ns.record_n(per_message.clamp(1, high), turn.inputs);
        }
        if !turn.more {
            return Ok(ended);
        }
        if !link.read_ready(session.inbox(), READ_BATCH)? {
            session.end_turn(now, 0);
            return Ok(ended);
        }
        started = std::time::Instant::now();
    }
}

/// `took` per input of `inputs` (at least one), in ns: in 32 bits when it fits, as it nearly
/// always does (a 64-bit division is a library call on armv7, and `as_nanos` 128-bit).
fn per_input_ns(took: Duration, inputs: u64) -> u64 {
    let ns = took.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(took.subsec_nanos()));
    match (u32::try_from(ns), u32::try_from(inputs)) {
        (_, Ok(1)) => ns,
        (Ok(ns), Ok(n)) => u64::from(ns / n),
        _ => ns / inputs,
    }
}

/// The connection's next event: a connect attempt finishing, or packets read (at once when the
/// core has input to handle without reading; never while it leaves the connection unread).
async fn next_io(io: &mut Io, inbox: &mut std::collections::VecDeque<Received>, paused: bool, work: bool) -> Event {
    match io {
        Io::Offline => std::future::pending().await,
        Io::Connecting(attempt) => Event::Connected(attempt.await),
        Io::Up(_) if work => Event::Read(Ok(())),
        Io::Up(_) if paused => std::future::pending().await,
        Io::Up(link) => Event::Read(link.read_batch(inbox, READ_BATCH).await),
    }
}

/// The signing's result when there is one out, else never.
async fn pending_or(signing: &mut Option<Signing<'_>>) -> Result<String, String> {
    match signing {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// A connect attempt to the configured endpoint.
fn connect(config: &Config, tls: Option<Arc<rustls::ClientConfig>>, options: ConnectOptions) -> Connecting {
    let (host, port) = (config.endpoint.host.clone(), config.endpoint.port);
    Box::pin(async move { Link::connect(&host, port, tls, &options, MAX_INCOMING_PACKET_SIZE, CONNECT_TIMEOUT).await })
}

/// Serves `/metrics` where configured.
async fn serve_metrics(config: &Config, stats: &Arc<Stats>) -> Option<tokio::task::JoinHandle<()>> {
    let addr = config.metrics_addr?;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            info!("metrics on http://{}/metrics", listener.local_addr().map_or(addr, |a| a));
            let labels = crate::stats::Labels::for_module(&config.identity);
            Some(tokio::spawn(crate::stats::serve_metrics(listener, stats.clone(), labels)))
        }
        Err(e) => {
            error!("cannot serve metrics on {addr}: {e} (set EDGEFILTER_METRICS_ADDR, or off)");
            None
        }
    }
}

/// A seed for the session's jitter, from the clock's nanoseconds: reconnecting modules should not
/// stampede.
fn seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |t| t.as_nanos() as u64)
}

/// The loop's one timer, kept across turns. A tokio timer made anew each turn is registered anew
/// each turn, and registering one earlier than the event loop's next planned wake-up writes to its
/// eventfd (measured: three writes per turn under a live stream, half of the module's system
/// calls); one kept and reset only when its deadline changes costs nothing.
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
