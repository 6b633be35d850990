//! Holding input back when the hub is slower than the module: at most `max_unconfirmed` alerts
//! await confirmation; input beyond that is held back (still read, because confirmations arrive
//! on the same connection), up to as many again, and beyond that left unacknowledged for the hub
//! to redeliver after a reconnect. Held-back input goes on, in arrival order, once the hub has
//! confirmed half of `max_unconfirmed`. Input also waits while the aggregates' state file waits
//! for the first twin.
//!
//! A twin message (a response, a desired patch) is not input and is never held back: it takes
//! effect at once, so that a setting never waits for the hub's confirmations and the state file's
//! restore never waits for its own answer. Only its PUBACK keeps its place behind the input held
//! back before it ([`Session::acknowledge_in_turn`]): edgeHub's protocol gateway expects PUBACKs
//! in the order of its publishes, and ignores, or closes the connection on, any other.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use log::{debug, warn};
use rumqttc::mqttbytes::v4::Packet;

use super::inbound::OVERLOAD_WARNING_EVERY;
use super::{HeldBack, Phase, Session, MAX_OUT};
use crate::mqtt::Message;

impl Session {
    /// Whether incoming publishes wait: `max_unconfirmed` alerts await confirmation, or earlier
    /// ones wait already, or are left for redelivery (acknowledgements keep arrival order), or
    /// the aggregates' state file waits for the first twin.
    pub(super) fn holding_back(&self) -> bool {
        self.draining.is_none()
            && self.conn().is_some_and(|c| {
                !c.deferred.is_empty()
                    || c.left_unacknowledged > 0
                    || self.delivery.alerts_pending() >= self.max_unconfirmed
                    || self.awaiting_restore(c)
            })
    }

    /// Keeps a publish for when the hub has confirmed enough alerts. The connection keeps being
    /// read, because the confirmations arrive on it; what arrives meanwhile is bounded by the hub's
    /// in-flight window, and held back only up to `max_unconfirmed`. Beyond that a publish (and
    /// every later one on this connection, since acknowledgements keep arrival order) is left
    /// unacknowledged; once everything before it is done the module reconnects and the hub
    /// redelivers it ([`Session::left_for_redelivery`]).
    pub(super) fn hold_back(&mut self, publish: &Message, now: Instant) {
        let (pending, max) = (self.delivery.alerts_pending(), self.max_unconfirmed);
        let restoring = self.conn().is_some_and(|c| self.awaiting_restore(c));
        let warned = if restoring { Some(now) } else { self.overload_warned };
        if !restoring {
            self.stats.overloaded.fetch_add(1, Relaxed);
        }
        let Phase::Up(c) = &mut self.phase else { return };
        if c.past_hold_back_bound(max) {
            if publish.pkid == 0 {
                // QoS 0: no hub sends it again, and it has no acknowledgement to keep in order.
                debug!("dropped a QoS 0 message past the hold-back bound on {}", publish.topic());
                return;
            }
            if c.left_unacknowledged == 0 {
                warn!(
                    "{} messages held back: leaving the rest unacknowledged for the hub to redeliver",
                    c.deferred.len()
                );
            }
            c.left_unacknowledged += 1;
            return;
        }
        if c.deferred.is_empty() && warned.is_none_or(|at| now.saturating_duration_since(at) >= OVERLOAD_WARNING_EVERY)
        {
            warn!(
                "{pending} alerts await the hub's confirmation: holding input back until it confirms some (overloaded_total counts the messages)"
            );
            self.overload_warned = Some(now);
        }
        c.deferred.push_back(HeldBack::Publish(publish.clone(), now));
    }

    /// A publish not acknowledged on this connection (a stop is draining it): nothing after it is
    /// acknowledged either ([`Session::acknowledge_in_turn`]).
    pub(super) fn leave_unacknowledged(&mut self, pkid: u16) {
        if let Phase::Up(c) = &mut self.phase {
            c.left_unacknowledged += u64::from(pkid != 0);
        }
    }

    /// The acknowledgement of a publish handled as it arrives, in arrival order: behind what is
    /// held back or left unacknowledged before it (within the same bound as input), else at once.
    pub(super) fn acknowledge_in_turn(&mut self, pkid: u16) {
        let max = self.max_unconfirmed;
        match &mut self.phase {
            Phase::Up(c) if pkid != 0 && c.past_hold_back_bound(max) => c.left_unacknowledged += 1,
            Phase::Up(c) if pkid != 0 && !c.deferred.is_empty() => c.deferred.push_back(HeldBack::TwinAck(pkid)),
            _ => self.delivery.dropped(pkid),
        }
    }

    /// Held-back publishes can go now: the hub has confirmed half of `max_unconfirmed` (so that
    /// they go out in full batches, not a few at a time).
    pub(super) fn resumable(&self, c: &super::Conn) -> bool {
        !c.deferred.is_empty()
            && self.delivery.alerts_pending() <= self.max_unconfirmed / 2
            && !self.awaiting_restore(c)
    }

    /// Handles held-back publishes, in arrival order, while alerts may be sent and the batch has
    /// room; returns how many inputs it handled.
    pub(super) fn resume(&mut self, now: Instant) -> u64 {
        let mut inputs = 0;
        if !self.conn().is_some_and(|c| self.resumable(c)) {
            return 0;
        }
        while self.delivery.alerts_pending() < self.max_unconfirmed
            && self.unflushed() < self.settings.batch_size as usize
        {
            let Phase::Up(c) = &mut self.phase else { break };
            match c.deferred.pop_front() {
                Some(HeldBack::Publish(publish, received)) => {
                    inputs += u64::from(self.publish_at(&publish, Some(received), now))
                }
                Some(HeldBack::TwinAck(pkid)) => self.delivery.dropped(pkid),
                None => break,
            }
        }
        inputs
    }

    /// When publishes were left unacknowledged and everything before them is done: queues a
    /// DISCONNECT so that the module reconnects and the hub redelivers them.
    pub(super) fn left_for_redelivery(&mut self) {
        let done = self.delivery.alerts_pending() == 0 && self.delivery.inputs_pending() == 0;
        let Phase::Up(c) = &mut self.phase else { return };
        if c.left_unacknowledged == 0 || self.draining.is_some() || !c.deferred.is_empty() || !done || c.closing {
            return;
        }
        log::info!("reconnecting for the hub to redeliver {} messages left unacknowledged", c.left_unacknowledged);
        c.closing = true;
        let _ = Packet::Disconnect.write(&mut self.tx, MAX_OUT);
        self.phase = Phase::Closing;
        self.actions.push_back(super::Action::Close);
    }
}
