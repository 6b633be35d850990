//! The connection's lifecycle and the write, from the session's side: a connection coming up
//! (subscribe, send unconfirmed alerts again, ask for the twin), failing (back off, or not) or
//! closed on purpose, the stop and its drain, and what goes on the wire when: the acknowledgements
//! that are due, written at once or held for company ([`super::acks_flush`]).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use log::{info, warn};
use rumqttc::mqttbytes::v4::Packet;

use super::{acks_flush, Action, Conn, Phase, Session, DRAIN_TIMEOUT, MAX_OUT, PUBACK_LEN};
use crate::mqtt::{write_puback, LinkError};
use crate::retry::{Failure, Next};
use crate::stats::{record_us, Turnaround};

impl Session {
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
            // Left for the next start: so is every acknowledgement after them on this connection.
            let held = c.deferred.drain(..).filter(|h| h.pkid() != 0).count();
            c.left_unacknowledged += held as u64;
        }
    }

    /// Says goodbye, asks for the last save, and stops.
    pub(super) fn exit(&mut self, now: Instant) {
        self.final_save(now);
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
        let (alerts, emits, inputs) =
            (self.delivery.alerts_pending(), self.delivery.emits_pending(), self.delivery.inputs_pending());
        if draining && self.connected() && alerts == 0 && emits == 0 && inputs == 0 {
            info!("all alerts confirmed and inputs acknowledged (aggregate messages too)");
            self.exit(now);
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
        if c.acked.is_empty() && c.unflushed.is_empty() {
            return;
        }
        // One lock for the whole write. Inputs read in one turn share their arrival time (the
        // turn's), so each run of equal times is one record per outcome, of as many observations:
        // one time subtraction per run, not per message (64-bit arithmetic on armv7).
        let mut l = self.stats.latency();
        for run in c.acked.chunk_by(|a, b| a.0 == b.0) {
            let took = now.saturating_duration_since(run[0].0);
            let alerts = run.iter().filter(|(_, alerted)| *alerted).count() as u64;
            for (outcome, n) in [(Turnaround::Alert, alerts), (Turnaround::Dropped, run.len() as u64 - alerts)] {
                if n > 0 {
                    record_us(&mut l.turnaround_us[outcome as usize], took, n);
                }
            }
        }
        c.acked.clear();
        if !c.unflushed.is_empty() {
            let _ = l.batch_alerts.record(c.unflushed.len() as u64);
            let mut run: Option<(Instant, u64)> = None;
            for pkid in c.unflushed.drain(..) {
                let Some(held) = self.delivery.alert_mut(pkid) else { continue };
                held.written = Some(now);
                match &mut run {
                    Some((at, n)) if *at == held.received => *n += 1,
                    _ => {
                        if let Some((at, n)) = run.replace((held.received, 1)) {
                            record_us(&mut l.to_socket_us, now.saturating_duration_since(at), n);
                        }
                    }
                }
            }
            if let Some((at, n)) = run {
                record_us(&mut l.to_socket_us, now.saturating_duration_since(at), n);
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
            write_puback(&mut self.tx, pkid);
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
