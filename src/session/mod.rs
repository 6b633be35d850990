//! The module's protocol as a sans-I/O core: every decision of the connection to edgeHub, made
//! from events that carry the time, with no socket, no timer and no clock inside.
//!
//! The shell ([`crate::module`]) owns the socket, the TLS session and one timer. It tells the core
//! what happened ([`Session::on_connected`], [`Session::on_read`], [`Session::on_timer`],
//! [`Session::on_token`], [`Session::on_lost`], [`Session::on_stop`], …), writes what the core
//! queued when [`Session::transmit`] says so, does what [`Session::poll`] asks (sign a token,
//! connect, close, exit) and sleeps until [`Session::deadline`]. It is the split of rumqttc's
//! `MqttState` and `EventLoop`, of quinn-proto's `Connection` and of rustls's unbuffered API: the
//! core takes bytes and `now` and hands back what to send and when it next wants to be woken, so
//! every decision (when to acknowledge, hold back, send again, renew, ping, report or stop) is
//! tested with a simulated clock (`tests/session.rs`).
//!
//! What the core owns, by file:
//! - here: the connection's lifecycle (connect, back off, close, stop), the token's, the
//!   deadlines (keep-alive and dead-peer detection, renewal, twin retries, reports, the drain),
//!   and the write: which acknowledgements are due and whether they go now ([`acks_flush`]);
//! - [`inbound`]: the data path, one turn top to bottom (decide each input, forward its alerts,
//!   hold input back while too many alerts await confirmation, give up alerts that cannot be
//!   delivered);
//! - [`twin`]: the twin exchange and the settings it yields.

mod inbound;
mod twin;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{info, warn};
use rumqttc::mqttbytes::v4::{Packet, PubAck};

use crate::config::Config;
use crate::delivery::Delivery;
use crate::gather::Gather;
use crate::mqtt::{ConnectOptions, LinkError, Message, Received};
use crate::retry::{Failure, Next, Retry};
use crate::settings::{Rejection, Settings};
use crate::stats::{record_us, Stats, Turnaround};
use crate::topic;

/// The Python SDK's keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// A connection on which nothing was read for this long is dead: 1.5 × keep-alive, as MQTT 3.1.1
/// (§3.1.2.10) has a server judge its client; the hub answers every PINGREQ.
pub const DEAD_AFTER: Duration = Duration::from_secs(90);
/// How long a stop waits for in-flight alerts to be confirmed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a twin response before asking again.
pub const TWIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait before signing again after a signing failed (0.5 s, doubling, up to this).
pub const SIGN_RETRY_MAX: Duration = Duration::from_secs(5);
/// The encoded size of a PUBACK.
const PUBACK_LEN: usize = 4;
/// Packets decoded per read at most.
pub const READ_BATCH: usize = 1024;

/// What the shell is asked to do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Sign a fresh SAS token and report it with [`Session::on_token`]; the data path goes on
    /// meanwhile.
    Sign,
    /// Open a connection with these options; report [`Session::on_connected`] or
    /// [`Session::on_connect_failed`].
    Connect(ConnectOptions),
    /// Write what is queued (it ends with a DISCONNECT), wait for the hub to close the
    /// connection, then report [`Session::on_closed`]: the module reconnects at once.
    Close,
    /// Write what is queued (a DISCONNECT when connected), close, and stop.
    Exit,
}

/// The connection, as the core sees it.
#[derive(Debug)]
enum Phase {
    /// Not connected; the next attempt at this time.
    Offline(Instant),
    /// An [`Action::Connect`] is out.
    Connecting,
    Up(Box<Conn>),
    /// An [`Action::Close`] is out.
    Closing,
    /// An [`Action::Exit`] is out.
    Stopped,
}

/// The state of one connection. A new connection starts from nothing but what outlives it:
/// unconfirmed alerts, the settings and the token.
#[derive(Debug)]
struct Conn {
    last_read: Instant,
    next_ping: Instant,
    /// The hub answered this connection's SUBSCRIBE.
    subscribed: bool,
    /// Alerts queued since the last write.
    unflushed: Vec<u16>,
    /// Input acknowledgements queued since the last write, and since when ([`acks_flush`]).
    acks_held: usize,
    acks_since: Option<Instant>,
    /// Inputs acknowledged in the queued write: when each arrived and whether it alerted.
    acked: Vec<(Instant, bool)>,
    /// Reading waits until then, for input to gather ([`Gather`]).
    read_after: Option<Instant>,
    /// Publishes held back while too many alerts await confirmation, with when they arrived.
    deferred: VecDeque<(Message, Instant)>,
    /// Publishes neither handled nor held back on this connection ([`Session::hold_back`]).
    left_unacknowledged: u64,
    /// The outstanding full-twin request: its rid and when it was sent.
    twin_request: Option<(String, Instant)>,
    /// A DISCONNECT is queued: nothing more goes out on this connection.
    closing: bool,
    /// When the current read turn began, and the inputs it handled so far.
    turn_started: Option<Instant>,
    turn_inputs: u64,
}

impl Conn {
    fn new(now: Instant) -> Conn {
        Conn {
            last_read: now,
            next_ping: now + KEEP_ALIVE,
            subscribed: false,
            unflushed: Vec::new(),
            acks_held: 0,
            acks_since: None,
            acked: Vec::new(),
            read_after: None,
            deferred: VecDeque::new(),
            left_unacknowledged: 0,
            twin_request: None,
            closing: false,
            turn_started: None,
            turn_inputs: 0,
        }
    }
}

/// An alert held until the hub confirms it.
#[derive(Debug)]
pub struct Held {
    /// The alert's topic and body: slices of the topic arena and of the read buffer.
    topic: Bytes,
    payload: Bytes,
    /// When its input arrived.
    received: Instant,
    /// When it was last written.
    written: Option<Instant>,
    /// The connection it was last written on.
    connection: u64,
    /// Connections in a row that failed while it was the oldest unconfirmed alert.
    strikes: u8,
    /// A dead letter: never dead-lettered again.
    dead_letter: bool,
}

/// The SAS token: what the next CONNECT presents, and when to sign the next one.
#[derive(Debug, Default)]
struct Token {
    password: Option<String>,
    /// When to sign again (None: now).
    renew_at: Option<Instant>,
    /// An [`Action::Sign`] is out.
    signing: bool,
    /// Signings failed in a row.
    failures: u32,
}

/// The module's protocol state; see the module docs.
pub struct Session {
    id: topic::ModuleId,
    username: String,
    max_unconfirmed: usize,
    max_delivery_attempts: u8,
    token_ttl: Duration,
    stats: Arc<Stats>,
    /// The settings in effect: replaced whole when the twin changes them, so that a change
    /// applies from the next message on and is never half-applied.
    settings: Arc<Settings>,
    /// The settings from the environment over the defaults: what the twin applies to.
    base: Settings,
    /// Settings refused and not set since, with why ([`crate::settings::still_rejected`]).
    rejected: Vec<Rejection>,
    /// The `$version` of the desired properties last applied.
    desired_version: Option<u64>,
    next_rid: u64,
    phase: Phase,
    token: Token,
    retry: Retry,
    /// The drain's deadline, once a stop was asked for.
    draining: Option<Instant>,
    next_report: Instant,
    delivery: Delivery<Held>,
    /// MQTT bytes to write.
    tx: BytesMut,
    /// The packets read and not yet handled (the shell reads into it).
    inbox: Vec<Received>,
    /// Where alert topics are written: each alert's topic is a slice of it, so that building one
    /// allocates only when the arena is renewed.
    topics: BytesMut,
    bag: topic::BagScratch,
    gather: Gather,
    /// Connections made so far; the current one's number.
    connection: u64,
    /// The last alerts given up on, as (body length, hash of topic and body): a copy made again
    /// from a redelivered input is given up at once instead of failing again.
    given_up: VecDeque<(usize, u64)>,
    /// When holding back was last logged.
    overload_warned: Option<Instant>,
    /// The state of a pseudo-random sequence for jitter, seeded by the shell.
    seed: u64,
    actions: VecDeque<Action>,
}

/// What a read turn did.
#[derive(Debug, PartialEq, Eq)]
pub struct Turn {
    /// Input messages handled.
    pub inputs: u64,
    /// The batch is still open: read more now if anything is ready (then [`Session::on_read`]
    /// again), else [`Session::end_turn`].
    pub more: bool,
}

impl Session {
    /// A session for `config` from `now`, with no token yet (the first [`Session::poll`] asks for
    /// one). `seed` seeds the jitter of reconnection delays.
    pub fn new(config: &Config, stats: Arc<Stats>, now: Instant, seed: u64) -> Session {
        let report = Duration::from_secs(u64::from(config.settings.report_interval_secs));
        Session {
            id: config.identity.module.clone(),
            username: crate::module::username(&config.identity.hub_hostname, &config.identity.module),
            max_unconfirmed: config.max_unconfirmed,
            max_delivery_attempts: config.max_delivery_attempts,
            token_ttl: config.token_ttl,
            stats,
            settings: Arc::new(config.settings.clone()),
            base: config.settings.clone(),
            rejected: Vec::new(),
            desired_version: None,
            next_rid: 1,
            phase: Phase::Offline(now),
            token: Token::default(),
            retry: Retry::default(),
            draining: None,
            next_report: now + report,
            delivery: Delivery::new(),
            tx: BytesMut::with_capacity(64 * 1024),
            inbox: Vec::with_capacity(READ_BATCH),
            topics: BytesMut::new(),
            bag: topic::BagScratch::default(),
            gather: Gather::new(),
            connection: 0,
            given_up: VecDeque::new(),
            overload_warned: None,
            seed: seed | 1,
            actions: VecDeque::new(),
        }
    }

    /// The settings in effect.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    /// Where the shell reads packets into; [`Session::on_read`] handles them.
    pub fn inbox(&mut self) -> &mut Vec<Received> {
        &mut self.inbox
    }

    /// Whether a connection is up.
    pub fn connected(&self) -> bool {
        matches!(self.phase, Phase::Up(_))
    }

    /// Alerts not yet confirmed by the hub.
    pub fn alerts_pending(&self) -> usize {
        self.delivery.alerts_pending()
    }

    /// Until when the connection is left unread for input to gather, if it is.
    pub fn read_after(&self) -> Option<Instant> {
        self.conn().and_then(|c| c.read_after)
    }

    /// Whether there is input to handle without reading: a full batch left some, or input held
    /// back may go now.
    pub fn has_work(&self) -> bool {
        self.conn().is_some_and(|c| c.read_after.is_none() && (!self.inbox.is_empty() || self.resumable(c)))
    }

    fn conn(&self) -> Option<&Conn> {
        match &self.phase {
            Phase::Up(c) => Some(c),
            _ => None,
        }
    }

    /// The next thing for the shell to do, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if !self.token.signing && self.token.renew_at.is_none_or(|at| now >= at) {
            self.token.signing = true;
            return Some(Action::Sign);
        }
        let Phase::Offline(at) = self.phase else { return None };
        // Stopping while not connected: in `confirmed` mode the inputs of unconfirmed alerts were
        // not acknowledged and the hub redelivers them; in `pipelined` mode they were, so the
        // module tries to deliver the alerts until the drain's deadline.
        let confirmed = self.settings.ack_mode == crate::settings::AckMode::Confirmed;
        let pending = self.delivery.alerts_pending();
        if self.draining.is_some_and(|d| now >= d || pending == 0 || confirmed) {
            if pending > 0 {
                info!("stopping while not connected: {pending} alerts unconfirmed; the hub redelivers their inputs");
            }
            self.phase = Phase::Stopped;
            return Some(Action::Exit);
        }
        // Never a CONNECT with a token past its renewal time: a hub away for longer than a token's
        // lifetime would refuse the old one for ever. The renewal is out; its answer wakes us.
        let fresh = self.token.renew_at.is_some_and(|r| now < r) && self.token.password.is_some();
        if now < at || !fresh {
            return None;
        }
        self.phase = Phase::Connecting;
        Some(Action::Connect(ConnectOptions {
            client_id: self.id.client_id(),
            username: self.username.clone(),
            password: self.token.password.clone().unwrap_or_default(),
            keep_alive: KEEP_ALIVE,
            clean_session: false,
        }))
    }

    /// When the core next wants [`Session::on_timer`].
    pub fn deadline(&self) -> Option<Instant> {
        let renew = self.token.renew_at.filter(|_| !self.token.signing);
        let phase = match &self.phase {
            Phase::Offline(at) => Some(*at),
            Phase::Up(c) => [
                Some(c.next_ping),
                Some(c.last_read + DEAD_AFTER),
                c.twin_request.as_ref().map(|(_, at)| *at + TWIN_TIMEOUT),
                c.acks_since.map(|at| at + self.settings.batch_interval()),
                Some(self.next_report),
                c.read_after,
            ]
            .into_iter()
            .flatten()
            .min(),
            _ => None,
        };
        [renew, phase, self.draining].into_iter().flatten().min()
    }

    /// A deadline passed: ping, judge the connection dead, ask for the twin again, report,
    /// end a read pause, or give up the drain.
    pub fn on_timer(&mut self, now: Instant) {
        let Phase::Up(c) = &mut self.phase else { return };
        if self.draining.is_some_and(|d| now >= d) {
            warn!(
                "stopping with {} alerts unconfirmed: the hub redelivers their inputs",
                self.delivery.alerts_pending()
            );
            self.exit();
            return;
        }
        if now >= c.last_read + DEAD_AFTER {
            let silent = (now - c.last_read).as_secs();
            self.on_lost(now, &LinkError::Protocol(format!("nothing from the hub for {silent} s")));
            return;
        }
        if c.read_after.is_some_and(|at| now >= at) {
            c.read_after = None;
        }
        if now >= c.next_ping {
            c.next_ping = now + KEEP_ALIVE;
            let _ = Packet::PingReq.write(&mut self.tx, MAX_OUT);
        }
        let twin_late = c.twin_request.as_ref().is_some_and(|(_, at)| now >= *at + TWIN_TIMEOUT);
        if twin_late {
            warn!("no answer to the twin request in {} s: asking again", TWIN_TIMEOUT.as_secs());
            self.request_twin(now);
        }
        if now >= self.next_report {
            self.next_report = now + Duration::from_secs(u64::from(self.settings.report_interval_secs));
            self.report();
        }
    }

    /// A token was signed (with its expiry), or signing failed.
    pub fn on_token(&mut self, now: Instant, signed: Result<String, String>) {
        self.token.signing = false;
        match signed {
            Ok(password) => {
                let margin = crate::module::renewal_margin(self.token_ttl);
                let renewal = self.token.password.is_some();
                self.token = Token {
                    password: Some(password),
                    renew_at: Some(now + self.token_ttl - margin),
                    signing: false,
                    failures: 0,
                };
                // Present it: reconnect (the Python SDK's way), unless stopping.
                if renewal && self.draining.is_none() {
                    if let Phase::Up(c) = &mut self.phase {
                        info!("SAS token renewed: reconnecting with it");
                        c.closing = true;
                        let _ = Packet::Disconnect.write(&mut self.tx, MAX_OUT);
                        self.phase = Phase::Closing;
                        self.actions.push_back(Action::Close);
                    }
                }
            }
            Err(e) => {
                let delay = (Duration::from_millis(500) * 2u32.saturating_pow(self.token.failures)).min(SIGN_RETRY_MAX);
                self.token.failures += 1;
                self.token.renew_at = Some(now + delay);
                let keeping = if self.connected() { "; keeping the current connection and token" } else { "" };
                warn!("cannot sign a SAS token: {e}{keeping}; retrying in {:.1} s", delay.as_secs_f64());
            }
        }
    }

    /// A connection is up: forget the old one's state, subscribe, send unconfirmed alerts again,
    /// ask for the twin. `tls` describes the TLS session, if there is one.
    pub fn on_connected(&mut self, now: Instant, session_present: bool, tls: Option<String>) {
        self.retry.connected(now);
        // Packets read on the old connection belong to it: their ids mean nothing now and the hub
        // redelivers them. What was queued for the old socket went with it.
        self.inbox.clear();
        self.tx.clear();
        self.gather.reset();
        self.connection += 1;
        let n = self.stats.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let quiet = self.retry.quiet();
        let tls = tls.map_or_else(String::new, |t| format!(", {t}"));
        let resuming = if n > 0 { ", resuming" } else { "" };
        if quiet {
            log::debug!("connected to edgeHub (session present: {session_present}{tls}){resuming}");
        } else {
            info!("connected to edgeHub (session present: {session_present}{tls}){resuming}");
        }
        self.phase = Phase::Up(Box::new(Conn::new(now)));
        self.subscribe();
        let resent = self.send_unconfirmed(now);
        if resent > 0 && !quiet {
            warn!("sending {resent} unconfirmed alerts again");
        }
        self.request_twin(now);
    }

    /// An attempt to connect failed.
    pub fn on_connect_failed(&mut self, now: Instant, e: &LinkError) {
        let failure = match e {
            LinkError::Refused(_) => Failure::Refused,
            LinkError::Unreachable(_) => Failure::Unreachable,
            _ => Failure::Dropped,
        };
        let next = self.retry.failed(now, failure);
        if let Some(attempts) = next.log {
            let every = next.delay.as_secs_f64();
            match e {
                LinkError::Refused(code) => warn!(
                    "edgeHub refused the connection ({code:?}): check the module identity and its key; retrying in {every:.1} s"
                ),
                other if failure == Failure::Dropped || attempts > 1 => warn!(
                    "cannot connect to edgeHub for {:.0} s ({attempts} attempts since the last line): {other}; retrying in {every:.1} s",
                    next.down_for.as_secs_f64()
                ),
                other => warn!("cannot connect to edgeHub: {other}; retrying every {every:.1} s"),
            }
        }
        self.offline(now, Some(next));
    }

    /// The connection failed (a read or write error, or judged dead): the oldest unconfirmed
    /// alert may be to blame ([`Session::connection_failed`]); reconnect at once after a healthy
    /// connection, or back off after one that failed soon after it was accepted.
    pub fn on_lost(&mut self, now: Instant, e: &LinkError) {
        if !matches!(self.phase, Phase::Up(_) | Phase::Closing) {
            return;
        }
        self.connection_failed();
        let next = self.retry.lost(now);
        match &next {
            None => warn!("connection to edgeHub lost: {e}; reconnecting"),
            Some(Next { log: Some(n), delay, .. }) => warn!(
                "connection to edgeHub failed soon after it was accepted ({n} times since the last line): {e}; retrying in {:.1} s",
                delay.as_secs_f64()
            ),
            Some(_) => {}
        }
        self.offline(now, next);
    }

    /// The connection the module closed ([`Action::Close`]) is closed: reconnect at once.
    pub fn on_closed(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closing) {
            self.phase = Phase::Offline(now);
        }
    }

    fn offline(&mut self, now: Instant, next: Option<Next>) {
        self.tx.clear();
        self.inbox.clear();
        let at = next.map_or(now, |n| now + self.jitter(n.delay));
        self.phase = Phase::Offline(at);
    }

    /// Stop: take no more input, wait up to [`DRAIN_TIMEOUT`] for what is in flight.
    pub fn on_stop(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        info!("stop requested: taking no more input, waiting for {} alerts in flight", self.delivery.alerts_pending());
        self.draining = Some(now + DRAIN_TIMEOUT);
        if let Phase::Up(c) = &mut self.phase {
            c.deferred.clear();
        }
    }

    /// Says goodbye and stops.
    fn exit(&mut self) {
        if self.connected() {
            let _ = Packet::Disconnect.write(&mut self.tx, MAX_OUT);
        }
        self.phase = Phase::Stopped;
        self.actions.push_back(Action::Exit);
    }

    /// After an event: queues the acknowledgements that are due, and returns the bytes to write
    /// now, if any. Acknowledgements queued on their own may wait for company ([`acks_flush`]).
    pub fn transmit(&mut self, now: Instant) -> Option<&mut BytesMut> {
        self.due_acks(now);
        self.left_for_redelivery();
        let draining = self.draining.is_some();
        if draining && self.connected() && self.delivery.alerts_pending() == 0 && self.delivery.inputs_pending() == 0 {
            info!("all alerts confirmed and inputs acknowledged");
            self.exit();
        }
        if self.tx.is_empty() {
            return None;
        }
        if let Phase::Up(c) = &self.phase {
            let only_acks = self.tx.len() == c.acks_held * PUBACK_LEN;
            let waited = c.acks_since.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
            // In `pipelined` mode a confirmation makes no acknowledgement due: nothing to wait for.
            let pipelined = self.settings.ack_mode == crate::settings::AckMode::Pipelined;
            if only_acks
                && !draining
                && !pipelined
                && !acks_flush(&self.settings, self.delivery.alerts_pending(), waited)
            {
                return None;
            }
        }
        Some(&mut self.tx)
    }

    /// What [`Session::transmit`] returned was written at `now`: time its alerts and the
    /// turnaround of the inputs it acknowledged.
    pub fn on_written(&mut self, now: Instant) {
        self.tx.clear();
        let Phase::Up(c) = &mut self.phase else { return };
        c.acks_held = 0;
        c.acks_since = None;
        self.stats.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (received, alerted) in c.acked.drain(..) {
            let outcome = if alerted { Turnaround::Alert } else { Turnaround::Dropped };
            self.stats.record_turnaround(outcome, now.saturating_duration_since(received));
        }
        let mut l = self.stats.latency();
        if !c.unflushed.is_empty() {
            let _ = l.batch_alerts.record(c.unflushed.len() as u64);
            for pkid in c.unflushed.drain(..) {
                if let Some(held) = self.delivery.alert_mut(pkid) {
                    held.written = Some(now);
                    record_us(&mut l.to_socket_us, now.saturating_duration_since(held.received), 1);
                }
            }
        }
    }

    /// Queues the input acknowledgements that are due.
    fn due_acks(&mut self, now: Instant) {
        let Phase::Up(c) = &mut self.phase else { return };
        if c.closing {
            return;
        }
        while let Some((pkid, received, alerted)) = self.delivery.next_ready_at() {
            let _ = Packet::PubAck(PubAck::new(pkid)).write(&mut self.tx, MAX_OUT);
            c.acks_held += 1;
            c.acks_since.get_or_insert(now);
            if let Some(received) = received {
                c.acked.push((received, alerted));
            }
        }
    }

    /// ±20% around `d`, from the session's pseudo-random sequence (xorshift).
    fn jitter(&mut self, d: Duration) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        d.mul_f64(0.8 + (self.seed % 1000) as f64 / 2500.0)
    }
}

/// The largest packet the module writes.
const MAX_OUT: usize = crate::limits::MAX_PACKET_SIZE;

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
