//! A client's session in the embedded hub: its subscriptions, the messages queued for it, the
//! ones in flight, and how many may be in flight at once.
//!
//! edgeHub delivers to a module one message at a time: `DeviceMessageHandler.SendMessageAsync`
//! sends a message and awaits its PUBACK (or `MessageAckTimeoutSecs`, 30 s) before the next one
//! goes out (docs/protocol.md, "Delivery to a module"). So a module identity's window is
//! [`Delivery::inflight`], 1 unless widened for an experiment. Twin traffic (`$iothub/…`: twin
//! responses, desired pushes) does not go through that path in edgeHub and does not count
//! against the window here: a module waiting for its twin is not held up by an input it has not
//! acknowledged yet. Plain clients (mosquitto_sub, the load tester's subscriber) are not modules:
//! they get a broker's window, [`BROKER_WINDOW`], as mosquitto gives them its
//! `max_inflight_messages`.
//!
//! PUBACKs are taken in the order of the publishes, as edgeHub's protocol gateway takes them
//! (`RequestAckPairProcessor`, Azure/azure-iot-protocol-gateway): one for any other packet than
//! the oldest unacknowledged is ignored (with `AbortOnOutOfOrderPubAck` at its default, false),
//! and that message stays in flight until the next connection.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttc::{Packet, Publish};
use tokio::sync::Notify;

use super::acks::AckDelay;
use crate::pkid::PacketIds;

/// Unacknowledged QoS 1 messages sent to a plain client (not a module identity) at most: a
/// bounded window like a broker's. (edgeHub's `MaxPendingInboundAcknowledgements`, 16, bounds the
/// other direction: how many of a client's own publishes it reads ahead of processing them.)
pub const BROKER_WINDOW: usize = 16;
/// Messages kept for one client before the oldest are dropped.
const QUEUE_LIMIT: usize = 100_000;

/// How the hub delivers to module identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Messages in flight to a module at most: edgeHub's 1 by default; more only to experiment.
    pub inflight: usize,
    /// How late the hub acknowledges a module's publishes (edgeHub persists each one first).
    pub ack_delay: AckDelay,
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery { inflight: 1, ack_delay: AckDelay::NONE }
    }
}

#[derive(Clone)]
pub(super) struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub dup: bool,
}

impl Message {
    pub fn new(topic: String, payload: Bytes, qos: QoS) -> Message {
        Message { topic, payload, qos, dup: false }
    }

    /// Twin traffic, which a module's window does not count.
    fn is_twin(&self) -> bool {
        self.topic.starts_with("$iothub/")
    }
}

#[derive(Default)]
pub(super) struct Session {
    pub subscriptions: Vec<(String, QoS)>,
    /// Messages waiting, oldest first, apart from…
    queue: VecDeque<Message>,
    /// …twin traffic, which goes out ahead of them and outside the window.
    twin_queue: VecDeque<Message>,
    /// Messages sent and not yet acknowledged, with their packet ids, in the order they were sent:
    /// the order their PUBACKs must come in.
    inflight: VecDeque<(u16, Message)>,
    /// Messages (not twin traffic) among `inflight`.
    windowed: usize,
    /// Most messages in flight: set at each connection.
    pub window: usize,
    ids: PacketIds,
    pub clean: bool,
    /// The live connection: its number and how to wake it.
    pub connection: Option<(u64, Arc<Notify>)>,
    /// Acknowledgements held back by fault injection, sent on release.
    pub withheld: Vec<u16>,
}

impl Session {
    /// Whether connection `me` is the session's live one (a newer one may have taken it over).
    pub fn held_by(&self, me: u64) -> bool {
        self.connection.as_ref().is_some_and(|(n, _)| *n == me)
    }

    fn next_pkid(&mut self) -> u16 {
        let inflight = &self.inflight;
        self.ids.next(|id| inflight.iter().any(|(i, _)| *i == id))
    }

    pub fn granted(&self, topic: &str) -> Option<QoS> {
        self.subscriptions.iter().filter(|(f, _)| filter_matches(f, topic)).map(|(_, q)| *q).max_by_key(|q| *q as u8)
    }

    /// A new connection took the session: what was in flight goes out again first, marked DUP.
    pub fn resume(&mut self, window: usize) {
        self.window = window;
        self.windowed = 0;
        for (_, mut m) in std::mem::take(&mut self.inflight).into_iter().rev() {
            m.dup = true;
            if m.is_twin() {
                self.twin_queue.push_front(m);
            } else {
                self.queue.push_front(m);
            }
        }
    }

    /// The client's PUBACK for `pkid`: Err with the packet id expected instead, when it is not
    /// the oldest in flight (ignored, as edgeHub's protocol gateway ignores it).
    pub fn acknowledged(&mut self, pkid: u16) -> Result<(), Option<u16>> {
        match self.inflight.front() {
            Some((oldest, _)) if *oldest == pkid => {}
            other => return Err(other.map(|(oldest, _)| *oldest)),
        }
        if let Some((_, m)) = self.inflight.pop_front() {
            self.windowed -= usize::from(!m.is_twin());
        }
        Ok(())
    }

    /// Encodes into `out` what may go out now: the twin traffic, then messages up to the window.
    pub fn send_ready(&mut self, out: &mut BytesMut) -> Result<(), String> {
        while let Some(m) = self.twin_queue.pop_front() {
            self.send(m, out)?;
        }
        while self.windowed < self.window {
            let Some(m) = self.queue.pop_front() else { break };
            self.send(m, out)?;
        }
        Ok(())
    }

    fn send(&mut self, m: Message, out: &mut BytesMut) -> Result<(), String> {
        let mut p = Publish::from_bytes(m.topic.clone(), m.qos, m.payload.clone());
        p.dup = m.dup;
        if m.qos != QoS::AtMostOnce {
            p.pkid = self.next_pkid();
            self.windowed += usize::from(!m.is_twin());
            self.inflight.push_back((p.pkid, m));
        }
        super::write(out, Packet::Publish(p))
    }

    /// Queues `msg` and wakes the connection; returns how many old messages were dropped (0 or 1).
    pub fn enqueue(&mut self, msg: Message) -> u64 {
        if self.connection.is_none() && (self.clean || msg.qos == QoS::AtMostOnce) {
            return 0;
        }
        let queue = if msg.is_twin() { &mut self.twin_queue } else { &mut self.queue };
        let mut dropped = 0;
        if queue.len() >= QUEUE_LIMIT {
            queue.pop_front();
            dropped = 1;
        }
        queue.push_back(msg);
        if let Some((_, n)) = &self.connection {
            n.notify_one();
        }
        dropped
    }
}

/// MQTT topic matching (3.1.1 §4.7): `+` one level, `#` the rest; a wildcard in the first level
/// does not match topics that start with `$` (so `#` does not see `$iothub/…`).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(n: u32) -> Message {
        Message::new(format!("devices/d/modules/m/inputs/input1/n={n}"), Bytes::new(), QoS::AtLeastOnce)
    }

    fn sent(out: &mut BytesMut) -> Vec<(String, u16, bool)> {
        let mut got = Vec::new();
        while let Ok(Packet::Publish(p)) = Packet::read(out, 1 << 20) {
            got.push((p.topic, p.pkid, p.dup));
        }
        got
    }

    #[test]
    fn pubacks_are_taken_only_in_the_order_of_the_publishes() {
        let mut s = Session { window: 1, connection: None, ..Session::default() };
        s.queue.push_back(input(1));
        s.twin_queue.push_back(Message::new("$iothub/twin/res/200/?$rid=1".into(), Bytes::new(), QoS::AtLeastOnce));
        let mut out = BytesMut::new();
        s.send_ready(&mut out).unwrap();
        let first = sent(&mut out);
        let (twin, input) = (first[0].1, first[1].1);
        assert_eq!(s.acknowledged(input), Err(Some(twin)), "the twin response went first");
        s.send_ready(&mut out).unwrap();
        assert!(sent(&mut out).is_empty(), "the input is still in flight: its PUBACK was ignored");
        assert_eq!(s.acknowledged(twin), Ok(()));
        assert_eq!(s.acknowledged(twin), Err(Some(input)), "once");
        assert_eq!(s.acknowledged(input), Ok(()));
        assert_eq!(s.acknowledged(input), Err(None), "nothing in flight");
    }

    #[test]
    fn a_window_of_one_sends_the_next_message_only_after_the_ack() {
        let mut s = Session { window: 1, connection: None, ..Session::default() };
        s.subscriptions.push(("#".into(), QoS::AtLeastOnce));
        for n in 1..=3 {
            s.queue.push_back(input(n));
        }
        s.twin_queue.push_back(Message::new("$iothub/twin/res/200/?$rid=1".into(), Bytes::new(), QoS::AtLeastOnce));
        let mut out = BytesMut::new();
        s.send_ready(&mut out).unwrap();
        let first = sent(&mut out);
        assert_eq!(first.len(), 2, "the twin response and one input: {first:?}");
        assert!(first[0].0.starts_with("$iothub/") && first[1].0.ends_with("n=1"));
        s.send_ready(&mut out).unwrap();
        assert!(sent(&mut out).is_empty(), "nothing more before the PUBACK");
        s.acknowledged(first[0].1).unwrap(); // the twin response's ack frees nothing
        s.send_ready(&mut out).unwrap();
        assert!(sent(&mut out).is_empty());
        s.acknowledged(first[1].1).unwrap();
        s.send_ready(&mut out).unwrap();
        let next = sent(&mut out);
        assert_eq!(next.len(), 1);
        assert!(next[0].0.ends_with("n=2"));
        // A new connection: the unacknowledged one again, DUP, and still alone.
        s.resume(1);
        s.send_ready(&mut out).unwrap();
        let again = sent(&mut out);
        assert_eq!(again.len(), 1);
        assert!(again[0].0.ends_with("n=2") && again[0].2);
    }
}
