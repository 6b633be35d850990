//! The data path, one read turn top to bottom: for each input publish on
//! `devices/{d}/modules/{m}/inputs/input1/{bag}`, classify the topic ([`topic::classify`]), decide
//! the body ([`filter::decide`], or [`filter::decide_rules`] under alert rules) against the
//! settings in effect, and queue its alert(s) to `…/messages/events/{bag}` with the same body
//! bytes (`Bytes`, never copied) under a packet id from [`Delivery`]; beside the decision, fold it
//! into the aggregates. With aggregates set, their one scan of the body also reads
//! `machine.temperature` for the decision ([`filter::decide_scanned`]): one pass, not two. Then
//! the turn's end decides whether to leave the connection unread for input to gather ([`Gather`]).
//!
//! Memory stays bounded when the hub is slower than the module: input is held back, and beyond
//! a bound left for the hub to redeliver (`holdback.rs`, [`Session::hold_back`]).
//!
//! An alert that cannot be delivered does not stop the stream: one over edgeHub's limit is given
//! up as it is made (`alert_too_large`), one whose connections keep failing with it the oldest
//! unconfirmed is given up after `EDGEFILTER_MAX_DELIVERY_ATTEMPTS` (`delivery_failed`), and
//! its input is acknowledged.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::BytesMut;
use log::{debug, error, warn};
use rumqttc::mqttbytes::v4::{Packet, Subscribe, SubscribeFilter};
use rumqttc::mqttbytes::QoS;

use super::{batch_closes, Held, Phase, Session, Turn, MAX_OUT};
use crate::filter::{self, Decision, Matched, Reason};
use crate::limits::{EDGEHUB_ADDED_PROPERTIES, MAX_MESSAGE_SIZE};
use crate::mqtt::{write_publish, Message, Received};
use crate::rules::Rules;
use crate::settings::AckMode;
use crate::stats::Stats;
use crate::topic::{self, Inbound};

/// The size of each new arena that alert topics are written into.
pub(super) const TOPIC_ARENA: usize = 64 * 1024;
/// How many alerts given up on are remembered ([`Session::given_up`]).
const GIVEN_UP_KEPT: usize = 16;
/// How often holding input back is logged at most.
pub(super) const OVERLOAD_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Session {
    /// Handles what was read into the inbox at `now`, then input held back if it may go now, up
    /// to the batch's limits. A full batch leaves the rest for the next turn, after the write.
    pub fn on_read(&mut self, now: Instant) -> Turn {
        let Phase::Up(c) = &mut self.phase else {
            self.inbox.clear();
            return Turn { inputs: 0, more: false };
        };
        if !self.inbox.is_empty() {
            c.last_read = now;
        }
        let batch_size = self.settings.batch_size as usize;
        let mut packets = std::mem::take(&mut self.inbox);
        let (mut inputs, mut handled) = (0u64, 0);
        for packet in packets.iter() {
            inputs += u64::from(self.packet(packet, now));
            handled += 1;
            if self.unflushed() >= batch_size {
                break;
            }
        }
        packets.drain(..handled);
        self.inbox = packets;
        inputs += self.resume(now);
        if !self.inbox.is_empty() {
            // A full batch: written now, and the rest handled next, without reading or pausing.
            if let Phase::Up(c) = &mut self.phase {
                (c.turn_inputs, c.turn_started) = (0, None);
            }
            return Turn { inputs, more: false };
        }
        let started = self.conn().and_then(|c| c.turn_started).unwrap_or(now);
        let more = !batch_closes(&self.settings, self.unflushed(), now.saturating_duration_since(started));
        if let Phase::Up(c) = &mut self.phase {
            c.turn_inputs += inputs;
            c.turn_started.get_or_insert(now);
        }
        if !more {
            self.end_turn(now, 0);
        }
        Turn { inputs, more }
    }

    /// The turn is over (nothing more was ready to read): whether to leave the connection unread
    /// for a while, for input to gather.
    pub fn end_turn(&mut self, now: Instant, inputs: u64) {
        let owed = self.delivery.inputs_pending();
        let Phase::Up(c) = &mut self.phase else { return };
        let turn_inputs = std::mem::take(&mut c.turn_inputs) + inputs;
        c.turn_started = None;
        let pause = self.gather.turn(now, turn_inputs as usize, owed, &self.settings);
        c.read_after = pause.map(|d| now + d);
    }

    pub(super) fn unflushed(&self) -> usize {
        self.conn().map_or(0, |c| c.unflushed.len())
    }

    /// One packet; true when it was an input message.
    fn packet(&mut self, packet: &Received, now: Instant) -> bool {
        let packet = match packet {
            Received::Publish(p) if self.holding_back() && !topic::is_twin(p.topic()) => {
                self.hold_back(p, now);
                return false;
            }
            Received::Publish(p) => return self.publish(p, now),
            Received::Other(packet) => packet,
        };
        match packet {
            Packet::PubAck(ack) => {
                if let Some(held) = self.delivery.confirmed(ack.pkid) {
                    self.stats.alerts_confirmed.fetch_add(1, Relaxed);
                    if let Some(written) = held.written {
                        crate::stats::record_us(&mut self.stats.latency().to_ack_us, now - written, 1);
                    }
                } else if self.delivery.confirmed_emit(ack.pkid).is_some() {
                    self.emit_confirmed();
                }
            }
            Packet::SubAck(ack) => {
                self.delivery.released(ack.pkid);
                if let Phase::Up(c) = &mut self.phase {
                    c.subscribed = true;
                }
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    error!("edgeHub refused a subscription: {:?}", ack.return_codes);
                }
            }
            Packet::PingResp => {}
            other => warn!("ignored an unexpected packet from the hub: {other:?}"),
        }
        false
    }

    fn publish(&mut self, publish: &Message, now: Instant) -> bool {
        self.publish_at(publish, None, now)
    }

    /// One incoming publish, top to bottom; true when it was an input message. `held`: when it
    /// arrived, if it was held back (then everything before it is acknowledged or queued to be);
    /// None when it arrived now.
    pub(super) fn publish_at(&mut self, publish: &Message, held: Option<Instant>, now: Instant) -> bool {
        match topic::classify(&self.id, publish.topic()) {
            Ok(Inbound::Input { input, bag, id }) => {
                if self.draining.is_some() {
                    // Not acknowledged: the hub keeps it for the next start, and nothing after it
                    // is acknowledged on this connection either.
                    self.leave_unacknowledged(publish.pkid);
                    return false;
                }
                let received = held.unwrap_or(now);
                self.stats.received.fetch_add(1, Relaxed);
                let known = topic::input_is(input, filter::INPUT);
                // Beside the decision: one message can alert and count, from one scan of its body.
                let scanned = if known { self.aggregates_scan(&publish.payload) } else { None };
                self.decide(publish, input, bag, known, received, scanned.as_ref().and_then(|s| s.1));
                if known {
                    self.aggregate(&publish.payload, &id, scanned.map(|s| s.0), received, now);
                }
                true
            }
            Ok(Inbound::TwinResponse { status, rid }) => {
                self.acknowledge_not_input(publish.pkid, held);
                let rid = rid.to_string();
                self.twin_response(now, status, &rid, &publish.payload);
                false
            }
            Ok(Inbound::DesiredPatch) => {
                self.acknowledge_not_input(publish.pkid, held);
                self.desired(now, &publish.payload, crate::settings::Source::Patch);
                false
            }
            Ok(Inbound::Other) => {
                debug!("ignored a message on {}", publish.topic());
                self.acknowledge_not_input(publish.pkid, held);
                false
            }
            Err(e) => {
                warn!("dropped a message with an unreadable topic ({}): {}", e.name(), publish.topic());
                self.stats.received.fetch_add(1, Relaxed);
                Stats::drop(&self.stats, Reason::BadPropertyBag);
                self.acknowledge_not_input(publish.pkid, held);
                true
            }
        }
    }

    /// What is not input is acknowledged at once, but never ahead of what came before it: from
    /// the hold-back queue (`held`) everything before it is done; as it arrives, it takes its
    /// turn ([`Session::acknowledge_in_turn`]).
    fn acknowledge_not_input(&mut self, pkid: u16, held: Option<Instant>) {
        match held {
            Some(_) => self.delivery.dropped(pkid),
            None => self.acknowledge_in_turn(pkid),
        }
    }

    /// Decides an input on `input` (`known`: the filter's own) and sends its alerts, or its dead
    /// letter, or drops it.
    /// `scanned`: `machine.temperature` as the aggregates' scan of the body read it, if it did.
    fn decide(
        &mut self,
        publish: &Message,
        input: &str,
        bag: &str,
        known: bool,
        received: Instant,
        scanned: Option<filter::Temperature>,
    ) {
        let (body, threshold) = (&publish.payload[..], self.settings.temperature_threshold);
        // The rules' Arc is cloned only under rules (sending borrows the session).
        let decision = match (known, self.settings.rules.clone()) {
            (false, _) => Decision::Drop(Reason::UnknownInput),
            (true, None) => filter::decide_scanned(body, scanned, threshold),
            (true, Some(rules)) => match filter::decide_rules_scanned(body, scanned, &rules) {
                Matched::Rules(mask) => {
                    let sent = self.send_copies(publish, bag, &rules, mask, received);
                    self.decided(publish.pkid, sent, received);
                    return;
                }
                Matched::Drop(reason) => Decision::Drop(reason),
            },
        };
        // Malformed messages go to the dead-letter output when one is set; the rest of
        // the drops are acknowledged and counted.
        // (Copied only then: a copy of the name for every input was a 65-byte memset.)
        let dead_letter = match decision {
            Decision::Drop(Reason::Malformed(_)) => Some(self.settings.dead_letter_output),
            _ => None,
        };
        let sent = match (decision, dead_letter.as_ref().and_then(crate::names::OutputName::get)) {
            (Decision::Alert, _) => {
                let sent = self.send(publish, bag, filter::OUTPUT, &[filter::ALERT_PROPERTY], received);
                self.stats.alerts.fetch_add(u64::from(sent), Relaxed);
                sent
            }
            (Decision::Drop(reason), Some(output)) => {
                debug!("dead-lettered a message on {} to {output}: {}", topic::unquote(input), reason.name());
                Stats::drop(&self.stats, reason);
                self.stats.dead_lettered.fetch_add(1, Relaxed);
                self.send(publish, bag, output, &[(filter::DEAD_LETTER_PROPERTY, reason.name())], received)
            }
            (Decision::Drop(reason), None) => {
                if !matches!(reason, Reason::BelowThreshold | Reason::NoRuleMatched) {
                    debug!("dropped a message on {}: {}", topic::unquote(input), reason.name());
                }
                Stats::drop(&self.stats, reason);
                false
            }
        };
        self.decided(publish.pkid, usize::from(sent), received);
    }

    /// An input is decided with `sent` alerts: `confirmed` acknowledges it once they are
    /// confirmed, `pipelined` right behind them (they are still kept until confirmed).
    fn decided(&mut self, pkid: u16, sent: usize, received: Instant) {
        let wait_for = match self.settings.ack_mode {
            AckMode::Confirmed => sent,
            AckMode::Pipelined => 0,
        };
        self.delivery.decided_at(pkid, wait_for, Some(received), sent > 0);
    }

    /// Sends one copy of an input per rule in `mask`, in name order, each to the rule's output
    /// with its properties; returns how many were sent, for the input to wait for.
    fn send_copies(&mut self, input: &Message, bag: &str, rules: &Rules, mask: u16, received: Instant) -> usize {
        let mut sent = 0;
        for (_, rule) in rules.rules.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
            sent += usize::from(self.send(input, bag, rule.output.as_str(), &rule.properties, received));
        }
        self.stats.alerts.fetch_add(sent as u64, Relaxed);
        sent
    }

    /// Sends an input's body on to `output` with its properties and `set` (an alert, or a dead
    /// letter), at least once: true when it was sent. The topic is written into the arena and the
    /// body is the input's buffer: nothing is copied but into the outgoing buffer, and nothing
    /// allocated. An alert over edgeHub's limit, or one given up on already, is not sent.
    fn send<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        input: &Message,
        bag: &str,
        output: &str,
        set: &[(K, V)],
        received: Instant,
    ) -> bool {
        if self.topics.capacity() - self.topics.len() < 1024 {
            self.topics = BytesMut::with_capacity(TOPIC_ARENA);
        }
        // classify checked the bag, so this cannot fail; the input would still be acknowledged
        // (with one copy fewer to wait for), never lost.
        if topic::write_output_topic(&mut self.topics, &self.id, bag, output, set, &mut self.bag).is_err() {
            return false;
        }
        let topic = self.topics.split().freeze();
        // The topic's length bounds its bag's, so nearly every alert is known to fit without
        // measuring it (`message_size` cost 300 x86 instructions an alert, its UTF-8 check included).
        if input.payload.len() + topic.len() + EDGEHUB_ADDED_PROPERTIES > MAX_MESSAGE_SIZE {
            // The arena holds only what write_output_topic wrote, which is ASCII.
            let size = topic::message_size(input.payload.len(), std::str::from_utf8(&topic).unwrap_or(""));
            if size > MAX_MESSAGE_SIZE {
                Stats::drop(&self.stats, Reason::AlertTooLarge);
                warn!(
                    "gave up an alert to {output}: {size} bytes as edgeHub counts them, over its {MAX_MESSAGE_SIZE}-byte limit (alert_too_large); its input is acknowledged"
                );
                return false;
            }
        }
        if self.is_given_up(&topic, &input.payload) {
            Stats::drop(&self.stats, Reason::DeliveryFailed);
            debug!("an alert given up on came again (its input redelivered): acknowledging its input");
            return false;
        }
        let dead_letter = self.settings.dead_letter_output.get() == Some(output);
        let held = Held {
            topic: topic.clone(),
            payload: input.payload.clone(),
            received,
            written: None,
            connection: self.connection,
            strikes: 0,
            dead_letter,
        };
        let pkid = self.delivery.send(held);
        let Phase::Up(c) = &mut self.phase else { return true };
        c.unflushed.push(pkid);
        // Within the limit just checked, so encoding cannot fail.
        let _ = write_publish(&mut self.tx, &topic, pkid, &input.payload, false);
        true
    }

    /// The SUBSCRIBE of a new connection: inputs, twin responses and desired patches.
    pub(super) fn subscribe(&mut self) {
        let mut subscribe = Subscribe::new_many([
            SubscribeFilter::new(self.id.inputs_filter(), QoS::AtLeastOnce),
            SubscribeFilter::new(topic::TWIN_RESPONSES.into(), QoS::AtLeastOnce),
            SubscribeFilter::new(topic::TWIN_DESIRED_PATCHES.into(), QoS::AtLeastOnce),
        ]);
        subscribe.pkid = self.delivery.reserve();
        let _ = Packet::Subscribe(subscribe).write(&mut self.tx, MAX_OUT);
    }

    /// Queues every unconfirmed alert again, in order, with its packet id (DUP when it was written
    /// before); returns how many were sent again.
    pub(super) fn send_unconfirmed(&mut self, now: Instant) -> usize {
        let connection = self.connection;
        let mut resent = 0;
        for (pkid, held) in self.delivery.reconnected() {
            let again = held.written.is_some();
            held.written = Some(now);
            held.connection = connection;
            let _ = write_publish(&mut self.tx, &held.topic, pkid, &held.payload, again);
            resent += usize::from(again);
        }
        resent
    }

    /// The connection failed: the oldest unconfirmed alert, if it was written on it, gets a
    /// strike, and is given up after `EDGEFILTER_MAX_DELIVERY_ATTEMPTS` in a row. Everything before
    /// it was confirmed (a hub confirms in order), so it is the likeliest cause: a broker that
    /// drops the connection on one message would otherwise stop the stream for good. Only when the
    /// hub read what went before the alert (it answered the SUBSCRIBE): a hub that drops every
    /// connection unread says nothing about the alert, and nothing is given up.
    pub(super) fn connection_failed(&mut self) {
        let (connection, attempts) = (self.connection, self.max_delivery_attempts);
        if !self.conn().is_some_and(|c| c.subscribed) {
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

    /// Gives up an alert (`delivery_failed`) and every unconfirmed copy of it (made again from its
    /// input, redelivered); sends it to `DeadLetterOutput` when one is set and it is not a dead
    /// letter already. Its input came on a connection that is gone: the hub redelivers it, and
    /// [`Session::send`] then gives its alert up at once and the input is acknowledged.
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
        Stats::drop(&self.stats, Reason::DeliveryFailed);
        self.given_up.push_back(key);
        if self.given_up.len() > GIVEN_UP_KEPT {
            self.given_up.pop_front();
        }
        let dead_letter = self.settings.dead_letter_output.get().filter(|_| !held.dead_letter).map(str::to_string);
        warn!(
            "gave up an alert of {} bytes after {} connections in a row failed with it unconfirmed (delivery_failed; {} copies with it){}",
            held.payload.len(),
            self.max_delivery_attempts,
            copies.len(),
            dead_letter.as_ref().map_or_else(String::new, |o| format!("; sending it to {o}"))
        );
        let Some(output) = dead_letter else { return };
        let topic_str = std::str::from_utf8(&held.topic).unwrap_or("");
        let bag = topic_str.split_once("/messages/events/").map_or("", |(_, b)| b);
        let property = [(filter::DEAD_LETTER_PROPERTY, Reason::DeliveryFailed.name())];
        let mut topics = BytesMut::new();
        if topic::write_output_topic(&mut topics, &self.id, bag, &output, &property, &mut self.bag).is_ok() {
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
}

/// An alert's body length and a hash of its topic and body.
fn fingerprint(topic: &[u8], payload: &[u8]) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    (payload.len(), h.finish())
}
