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
//! - here and [`connection`]: the connection's lifecycle (connect, back off, close, stop), the
//!   token's, and the write: which acknowledgements are due and whether they go now
//!   ([`acks_flush`]);
//! - [`timers`]: the deadlines (keep-alive and dead-peer detection, renewal, twin retries,
//!   reports, the drain), worked out in a few compares per turn, and what each one does;
//! - [`inbound`]: the data path, one turn top to bottom (decide each input, forward its alerts,
//!   hold input back while too many alerts await confirmation, give up alerts that cannot be
//!   delivered);
//! - [`twin`]: the twin exchange and the settings it yields;
//! - [`aggregates`]: the twin's windowed aggregates, beside the data path: folding, closing,
//!   sending at least once, and the checkpoints the shell saves.

mod aggregates;
mod connection;
mod holdback;
mod inbound;
mod message_id;
mod timers;
mod twin;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{info, warn};
use rumqttc::mqttbytes::v4::Packet;

use crate::config::Config;
use crate::delivery::Delivery;
use crate::gather::Gather;
use crate::mqtt::{ConnectOptions, Message, Received};
use crate::retry::Retry;
use crate::settings::{Rejection, Settings};
use crate::stats::Stats;
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
    /// Save these bytes (the aggregates' open windows) to the state file, replacing it atomically;
    /// the last one before an [`Action::Exit`] is to be written before the process ends.
    Save(Vec<u8>),
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
    /// `last_read + DEAD_AFTER` as of the last time it was worked out: never later than the
    /// connection's real dead-peer deadline, as reads only move it on. [`Session::deadline`]
    /// adds the real one only when this floor would be the earliest deadline, which, with a
    /// ping due within [`KEEP_ALIVE`], it is only after 30 s without a read.
    dead_floor: Instant,
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
    /// What is held back while too many alerts await confirmation, in arrival order.
    deferred: VecDeque<HeldBack>,
    /// Publishes not acknowledged on this connection and not held back: past the hold-back bound
    /// ([`Session::hold_back`]), or while a stop drains. Every acknowledgement after the first of
    /// them waits for the next connection ([`Session::acknowledge_in_turn`]).
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
            dead_floor: now + DEAD_AFTER,
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

    /// Whether what arrives now is left unacknowledged rather than held back: something already
    /// was, or `max` wait held back.
    fn past_hold_back_bound(&self, max: usize) -> bool {
        self.left_unacknowledged > 0 || self.deferred.len() >= max
    }
}

/// What waits, in arrival order, while input is held back ([`Session::hold_back`]).
#[derive(Debug)]
enum HeldBack {
    /// A publish, with when it arrived.
    Publish(Message, Instant),
    /// The acknowledgement of a twin message handled at once: only its PUBACK waits its turn.
    TwinAck(u16),
}

impl HeldBack {
    fn pkid(&self) -> u16 {
        match self {
            HeldBack::Publish(p, _) => p.pkid,
            HeldBack::TwinAck(pkid) => *pkid,
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
    inbox: VecDeque<Received>,
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
    aggregates: aggregates::Aggregates,
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
            username: crate::topic::username(&config.identity.hub_hostname, &config.identity.module),
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
            inbox: VecDeque::with_capacity(READ_BATCH),
            topics: BytesMut::new(),
            bag: topic::BagScratch::default(),
            gather: Gather::new(),
            connection: 0,
            given_up: VecDeque::new(),
            overload_warned: None,
            seed: seed | 1,
            actions: VecDeque::new(),
            aggregates: aggregates::Aggregates::new(config.settings.aggregates.as_ref(), now),
        }
    }

    /// The settings in effect.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    /// Where the shell reads packets into; [`Session::on_read`] handles them.
    pub fn inbox(&mut self) -> &mut VecDeque<Received> {
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

    /// Aggregate messages not yet confirmed by the hub.
    pub fn emits_pending(&self) -> usize {
        self.delivery.emits_pending()
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
            self.final_save(now);
            self.actions.push_back(Action::Exit);
            return self.actions.pop_front();
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

    /// A token was signed (with its expiry), or signing failed.
    pub fn on_token(&mut self, now: Instant, signed: Result<String, String>) {
        self.token.signing = false;
        match signed {
            Ok(password) => {
                let margin = crate::sas::renewal_margin(self.token_ttl);
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
