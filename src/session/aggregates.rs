//! Windowed aggregates from the session's side: every input on a known input folded into the
//! twin's `Aggregates` ([`crate::aggregate::Aggregator`]) beside the filter's decision, windows
//! closed when the clock gets there, their messages sent at least once, and the open windows
//! handed to the shell to save ([`Action::Save`]) every `CheckpointSeconds` and at the stop.
//!
//! **Time.** Windows are in Unix time; the core reads no clock. The shell reads the wall clock once
//! and anchors it to an `Instant` ([`Session::set_wall_clock`]); the core's Unix time is then that
//! anchor plus the monotonic time since. A step of the device's clock (NTP's first sync on a board
//! without a real-time clock) is therefore not followed until the module restarts: arrival-time
//! windows keep the time the module started with, and event-time windows follow the messages'
//! own times (the watermark is the later of the two). The step never moves a watermark back.
//!
//! **Delivery.** A window's message is held in [`crate::delivery::Delivery`]'s queue of emitted
//! messages until the hub confirms it, sent again with DUP after a reconnect, and sent on the next
//! connection when it closed while offline. Nothing input-related waits for it: not an input's
//! acknowledgement, not the hold-back of input. At most [`MAX_EMITS_HELD`] wait; beyond that the
//! oldest is forgotten (`aggregates_overflow`, and a log line).
//!
//! **Restart.** The shell reads the state file at start ([`Session::restore_state`]); the bytes
//! wait for the first twin, which says which aggregates are set. Until it answers, input is held
//! back (one message under edgeHub's one-in-flight stream) so that no reading lands before its
//! window is restored. The windows' messages the hub had not confirmed at the checkpoint are in
//! it too, and are sent again then (at least once: a stop whose drain gave up on an absent hub
//! loses none of them). See docs/aggregates.md, "Durability", for what a stop and a crash lose.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{info, warn};

use super::message_id::{id_hash, BatchHash};
use super::{Action, Held, Phase, Session};
use crate::aggregate::checkpoint::Unsent;
use crate::aggregate::series::Dropped;
use crate::aggregate::{AggregateSet, Aggregator, Emitted, Scanned};
use crate::filter::Temperature;
use crate::limits::MAX_MESSAGE_SIZE;
use crate::mqtt::write_publish;
use crate::stats::AggregateDrops;
use crate::topic::{self, BagId};

/// The most aggregate messages kept while the hub has not confirmed them (offline, say): 1,024
/// windows, 8.5 hours of the tutorial's 30-second aggregate.
pub const MAX_EMITS_HELD: usize = 1024;
/// How often readings not counted are logged at most (the metric follows every checkpoint).
const DROPS_LOGGED_EVERY: Duration = Duration::from_secs(60);

/// The aggregates' state in the session.
#[derive(Debug)]
pub(super) struct Aggregates {
    pub(super) running: Option<Aggregator>,
    /// The Unix time in milliseconds at an instant.
    wall: (Instant, i64),
    /// A state file read at start, waiting for the first twin's set.
    restore: Option<Vec<u8>>,
    /// When to save next, and whether anything changed since the last save.
    next_save: Option<Instant>,
    dirty: bool,
    /// Overflow was logged since the queue last emptied.
    overflow_warned: bool,
    /// The hash of the last input's batch part (see [`id_hash`]).
    batch_hash: BatchHash,
    /// The readings not counted as last logged, and when (at most one line a minute).
    drops_logged: (Vec<AggregateDrops>, Option<Instant>),
    /// [`Aggregates::instant`]'s last answer.
    last_instant: std::cell::Cell<Option<(i64, Instant)>>,
}

impl Aggregates {
    pub(super) fn new(set: Option<&Arc<AggregateSet>>, now: Instant) -> Aggregates {
        Aggregates {
            running: set.map(|s| Aggregator::new(s.clone(), 0)),
            wall: (now, 0),
            restore: None,
            next_save: None,
            dirty: false,
            overflow_warned: false,
            batch_hash: BatchHash::default(),
            drops_logged: (Vec::new(), None),
            last_instant: std::cell::Cell::new(None),
        }
    }

    /// (In 64-bit integers: `Duration::as_millis` is 128-bit, library calls on armv7.)
    fn unix_ms(&self, at: Instant) -> i64 {
        let ms = |d: Duration| d.as_secs() as i64 * 1000 + i64::from(d.subsec_millis());
        let (anchor, unix) = self.wall;
        match at.checked_duration_since(anchor) {
            Some(d) => unix + ms(d),
            None => unix - ms(anchor.duration_since(at)),
        }
    }

    /// The instant of a Unix time, the last one asked for kept: the session asks every turn
    /// for the same window's end.
    fn instant(&self, unix_ms: i64) -> Instant {
        match self.last_instant.get() {
            Some((u, at)) if u == unix_ms => at,
            _ => {
                let (anchor, unix) = self.wall;
                let at = anchor + Duration::from_millis(unix_ms.saturating_sub(unix).max(0) as u64);
                self.last_instant.set(Some((unix_ms, at)));
                at
            }
        }
    }
}

impl Session {
    /// The wall clock: `now` is `unix_ms` milliseconds after the Unix epoch. The shell calls it
    /// once, at start, before anything else.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: i64) {
        self.aggregates.wall = (now, unix_ms);
        self.aggregates.last_instant.set(None);
        if let Some(set) = self.settings.aggregates.clone() {
            self.aggregates.running = Some(Aggregator::new(set, unix_ms));
        }
    }

    /// A state file the shell read at start: restored when the first twin says which aggregates
    /// are set.
    pub fn restore_state(&mut self, bytes: Vec<u8>) {
        self.aggregates.restore = Some(bytes);
    }

    /// The aggregates running, if any (for tests and the load tester).
    pub fn aggregator(&self) -> Option<&Aggregator> {
        self.aggregates.running.as_ref()
    }

    /// Input waits for the first twin: a state file waits for it to be restored.
    pub(super) fn awaiting_restore(&self, c: &super::Conn) -> bool {
        self.aggregates.restore.is_some() && c.twin_request.is_some()
    }

    /// The aggregates' one scan of an input's body, and what the filter's decision needs from it
    /// (`machine.temperature`, see [`Aggregator::temperature`]): None without aggregates, or for
    /// a body over edgeHub's limit (the decision refuses it unread).
    pub(super) fn aggregates_scan(&mut self, body: &[u8]) -> Option<(Scanned, Option<Temperature>)> {
        let running = self.aggregates.running.as_mut().filter(|_| body.len() <= MAX_MESSAGE_SIZE)?;
        let scanned = running.scan(body);
        Some((scanned, running.temperature(scanned)))
    }

    /// Folds one input into every aggregate (a message id from its bag counts a redelivery
    /// once), then sends the windows it closed. `scanned`: [`Session::aggregates_scan`]'s, if made.
    pub(super) fn aggregate(
        &mut self,
        body: &[u8],
        id: &BagId,
        scanned: Option<Scanned>,
        received: Instant,
        now: Instant,
    ) {
        if self.aggregates.running.is_none() {
            return; // no aggregates set: not even the wall-clock time
        }
        let time = self.aggregates.unix_ms(received);
        let Aggregates { running: Some(running), batch_hash, dirty, .. } = &mut self.aggregates else { return };
        let hash = id_hash(batch_hash, id);
        let scanned = scanned.unwrap_or_else(|| running.scan(body));
        // A message that is not JSON is counted per aggregate (`malformed`) by the fold.
        let _ = running.fold_scanned(body, scanned, hash, time);
        *dirty = true;
        // Under a live stream the input was read now: its time is the clock's.
        let unix = if received == now { time } else { self.aggregates.unix_ms(now) };
        self.close_windows_at(now, unix);
    }

    /// Sends the messages of the windows the clock at `now` has closed.
    fn close_windows(&mut self, now: Instant) {
        self.close_windows_at(now, self.aggregates.unix_ms(now));
    }

    /// [`Session::close_windows`] with `now`'s Unix time already known.
    fn close_windows_at(&mut self, now: Instant, unix: i64) {
        let Some(running) = &mut self.aggregates.running else { return };
        let emitted = running.close(unix);
        if emitted.is_empty() {
            return;
        }
        self.aggregates.dirty = true;
        for e in emitted {
            self.emit(e, now);
        }
        self.publish_drops(now);
    }

    /// Queues one window's message, at least once.
    fn emit(&mut self, e: Emitted, now: Instant) {
        if self.topics.capacity() - self.topics.len() < 1024 {
            self.topics = BytesMut::with_capacity(super::inbound::TOPIC_ARENA);
        }
        let (output, properties) = (e.output.as_str(), &e.properties);
        if topic::write_output_topic(&mut self.topics, &self.id, "", output, properties, &mut self.bag).is_err() {
            return; // an empty bag and validated names: cannot fail
        }
        let topic = self.topics.split().freeze();
        self.hold_emit(topic, Bytes::from(e.body.into_bytes()), now);
        self.stats.aggregates_emitted.fetch_add(1, Relaxed);
    }

    /// Holds a window's message until the hub confirms it, and writes it when connected.
    fn hold_emit(&mut self, topic: Bytes, payload: Bytes, now: Instant) {
        if self.delivery.emits_pending() >= MAX_EMITS_HELD {
            self.delivery.evict_oldest_emit();
            self.stats.aggregates_overflow.fetch_add(1, Relaxed);
            if !std::mem::replace(&mut self.aggregates.overflow_warned, true) {
                warn!(
                    "{MAX_EMITS_HELD} aggregate messages await the hub: forgetting the oldest unsent (aggregates_overflow counts them)"
                );
            }
        }
        let held = Held {
            topic: topic.clone(),
            payload: payload.clone(),
            received: now,
            written: None,
            connection: self.connection,
            strikes: 0,
            dead_letter: false,
        };
        let pkid = self.delivery.emit(held);
        if let Phase::Up(c) = &mut self.phase {
            if !c.closing {
                c.unflushed.push(pkid);
                let _ = write_publish(&mut self.tx, &topic, pkid, &payload, false);
            }
        }
    }

    /// The hub confirmed an aggregate message.
    pub(super) fn emit_confirmed(&mut self) {
        self.stats.aggregates_confirmed.fetch_add(1, Relaxed);
        self.aggregates.dirty = true; // the next checkpoint holds one unsent message fewer
        if self.delivery.emits_pending() == 0 {
            self.aggregates.overflow_warned = false;
        }
    }

    /// The settings changed: start, change, restore or stop the aggregates.
    pub(super) fn aggregates_changed(&mut self, now: Instant) {
        let unix = self.aggregates.unix_ms(now);
        let every = self.checkpoint_every();
        let a = &mut self.aggregates;
        let restore = a.restore.take();
        let mut unsent = Vec::new();
        match (self.settings.aggregates.clone(), &mut a.running) {
            (Some(set), Some(running)) if *running.set != *set => {
                running.apply(set, unix).iter().for_each(|l| info!("{l}"))
            }
            (Some(_), Some(_)) => {}
            (Some(set), None) => {
                let running;
                (running, unsent) = restored(set, restore, unix, &self.stats);
                a.running = Some(running);
            }
            (None, Some(running)) => {
                let open: usize =
                    running.set.aggregates.iter().zip(&running.series).map(|(d, s)| s.open_windows(d)).sum();
                info!("Aggregates removed: {open} open windows discarded");
                a.running = None;
            }
            (None, None) if restore.is_some() => {
                info!("the twin sets no Aggregates: the state file's windows are discarded")
            }
            (None, None) => {}
        }
        a.dirty = a.running.is_some();
        a.next_save = match (&a.running, a.next_save) {
            (None, _) => None,
            (Some(_), Some(at)) => Some(at.min(now + every)),
            (Some(_), None) => Some(now + every),
        };
        self.resend_unsent(unsent, now);
        self.publish_drops(now);
    }

    fn checkpoint_every(&self) -> Duration {
        Duration::from_secs(u64::from(self.settings.checkpoint_secs))
    }

    /// When the aggregates next want [`Session::on_timer`]: a window to close, a save due.
    pub(super) fn aggregates_deadline(&self) -> Option<Instant> {
        let a = &self.aggregates;
        let running = a.running.as_ref().filter(|_| self.draining.is_none())?;
        let close = running.next_deadline().map(|unix| a.instant(unix));
        [close, a.next_save.filter(|_| a.dirty)].into_iter().flatten().min()
    }

    /// A deadline passed: close what the clock closed, save when due.
    pub(super) fn aggregates_timer(&mut self, now: Instant) {
        if self.draining.is_some() || self.aggregates.running.is_none() {
            return;
        }
        self.close_windows(now);
        if self.aggregates.next_save.is_some_and(|at| now >= at) {
            self.aggregates.next_save = Some(now + self.checkpoint_every());
            self.save(now);
        }
    }

    /// Asks the shell to save the open windows, when anything changed since the last save.
    fn save(&mut self, now: Instant) {
        let a = &mut self.aggregates;
        let Some(running) = a.running.as_ref().filter(|_| a.dirty) else { return };
        a.dirty = false;
        let unsent = self.delivery.emits().map(|h| (&h.topic[..], &h.payload[..]));
        self.actions.push_back(Action::Save(running.checkpoint_with_unsent(a.unix_ms(now), unsent)));
        self.publish_drops(now);
    }

    /// Hands each aggregate's readings not counted to the metrics, and logs what grew since the
    /// last such line, at most once a minute.
    fn publish_drops(&mut self, now: Instant) {
        let drops: Vec<AggregateDrops> = self.aggregates.running.as_ref().map_or_else(Vec::new, |r| {
            let names = r.set.aggregates.iter().map(|a| a.name.clone());
            names.zip(&r.series).map(|(aggregate, s)| AggregateDrops { aggregate, dropped: s.dropped }).collect()
        });
        let (logged, at) = &mut self.aggregates.drops_logged;
        if at.is_none_or(|at| now.saturating_duration_since(at) >= DROPS_LOGGED_EVERY) {
            let mut any = false;
            for d in &drops {
                let before =
                    logged.iter().find(|l| l.aggregate == d.aggregate).map_or([0; Dropped::ALL.len()], |l| l.dropped);
                let grew: Vec<String> = Dropped::ALL
                    .iter()
                    .map(|&r| (r, d.dropped[r as usize], before[r as usize]))
                    .filter(|&(_, now, then)| now != then)
                    .map(|(r, now, then)| format!("{} {}", if now > then { now - then } else { now }, r.name()))
                    .collect();
                if !grew.is_empty() {
                    any = true;
                    info!(
                        "aggregate {:?}: readings not counted since the last such line: {}",
                        d.aggregate,
                        grew.join(", ")
                    );
                }
            }
            if any {
                (*logged, *at) = (drops.clone(), Some(now));
            }
        }
        *self.stats.aggregate_drops.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = drops;
    }

    /// The stop: the last save. Windows stay open in it (none is closed while draining) and close
    /// after the restart; messages of windows closed and still unconfirmed are in it too.
    pub(super) fn final_save(&mut self, now: Instant) {
        let unsent = self.delivery.emits_pending();
        if unsent > 0 {
            warn!(
                "stopping with {unsent} aggregate messages unconfirmed by the hub: kept in the state file and sent again after the restart (without EDGEFILTER_STATE_DIR they are lost)"
            );
            self.aggregates.dirty = true;
        }
        self.save(now);
    }

    /// The state file's unconfirmed messages, sent again (those for another module's topic, from
    /// a state directory moved between modules, are left out with a log line).
    fn resend_unsent(&mut self, unsent: Vec<Unsent>, now: Instant) {
        if unsent.is_empty() {
            return;
        }
        let ours = format!("devices/{}/modules/{}/messages/events/", self.id.device_id, self.id.module_id);
        let (mine, others): (Vec<_>, Vec<_>) = unsent.into_iter().partition(|u| u.topic.starts_with(&ours));
        if !others.is_empty() {
            warn!("the state file holds {} aggregate messages for another module's topic: not sent", others.len());
        }
        info!("{} aggregate messages unconfirmed before the restart: sent again", mine.len());
        for u in mine {
            self.hold_emit(Bytes::from(u.topic.into_bytes()), Bytes::from(u.body), now);
        }
    }
}

/// The aggregates of `set`, from the state file when there is one that fits.
/// The windows' messages the hub had not confirmed come with them.
fn restored(
    set: Arc<AggregateSet>,
    bytes: Option<Vec<u8>>,
    unix: i64,
    stats: &crate::stats::Stats,
) -> (Aggregator, Vec<Unsent>) {
    let Some(bytes) = bytes else { return (Aggregator::new(set, unix), Vec::new()) };
    match Aggregator::restore_with_unsent(set.clone(), &bytes, unix) {
        Ok((running, log, unsent)) => {
            log.iter().for_each(|l| info!("{l}"));
            let open: usize = running.set.aggregates.iter().zip(&running.series).map(|(d, s)| s.open_windows(d)).sum();
            info!("Aggregates restored from the state file: {open} open windows");
            (running, unsent)
        }
        Err(e) => {
            stats.restore_failures.fetch_add(1, Relaxed);
            warn!("the aggregates' state file is not used ({e}): every window starts afresh");
            (Aggregator::new(set, unix), Vec::new())
        }
    }
}
