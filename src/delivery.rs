//! At-least-once bookkeeping: when may an input be acknowledged, and which alerts are unconfirmed.
//!
//! An input message is acknowledged to the hub only once it is fully handled: a dropped message
//! as soon as it is decided, an alert's input once the hub has acknowledged the alert. MQTT wants
//! acknowledgements in the order the messages arrived, so a decided message waits behind an
//! earlier one whose alert is still unconfirmed. If the module dies before acknowledging, the
//! hub redelivers the input; the alert may then go out twice, never zero times.
//!
//! This is also where the module's packet identifiers come from: an alert keeps its identifier
//! until the hub confirms it, across reconnections (MQTT asks for unconfirmed publishes to be sent
//! again, marked DUP, when the session resumes). Inputs belong to one connection: after a
//! reconnect their identifiers mean nothing and the hub redelivers them, so pending input
//! acknowledgements are forgotten then. Alerts are never forgotten here.
//!
//! Unconfirmed alerts wait in a queue in the order they were sent, which is the order a hub
//! confirms them in (MQTT 3.1.1 §4.6): a confirmation takes its alert out and the queue's front
//! moves past what is done, so steady traffic allocates nothing here.
//!
//! Messages the module emits on its own (aggregate summaries, [`Delivery::emit`]) come from no
//! input: they wait in a queue of their own, share the packet ids, are sent again with the alerts
//! after a reconnect, and nothing input-related ever waits for them (no input's acknowledgement,
//! and not [`Delivery::alerts_pending`], which holds input back).
//!
//! Pure state, no I/O: the MQTT shell feeds it events and does what it says.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use crate::pkid::PacketIds;

/// Packet ids are 16-bit counters: a multiplicative hash spreads them well enough, at a fraction
/// of SipHash's cost on every alert and confirmation.
#[derive(Default)]
struct PkidHasher(u64);

impl Hasher for PkidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type PkidMap<V> = HashMap<u16, V, BuildHasherDefault<PkidHasher>>;
type PkidSet = HashSet<u16, BuildHasherDefault<PkidHasher>>;

#[derive(Debug)]
struct Input {
    pkid: u16,
    /// When it arrived, if the shell said, and whether it made alerts.
    received: Option<Instant>,
    alerted: bool,
    /// The orders of the alerts this input waits for (several under alert rules: one per
    /// matching rule; none when it was dropped).
    alerts: std::ops::Range<u64>,
}

/// See the module docs. `A` is whatever the shell keeps of an alert until it is confirmed.
#[derive(Debug)]
pub struct Delivery<A> {
    inputs: VecDeque<Input>,
    /// Alerts in the order they were sent, from order `first_order` on; `None` once confirmed.
    alerts: VecDeque<Option<(u16, A)>>,
    first_order: u64,
    /// The order of each unconfirmed alert, by packet id.
    order_of: PkidMap<u64>,
    /// Packet ids held by other requests (SUBSCRIBE) until their acknowledgement.
    others: PkidSet,
    /// Emitted messages not yet confirmed, oldest first, with their packet ids.
    emits: VecDeque<(u16, A)>,
    ids: PacketIds,
    /// Every packet id in use (an unconfirmed alert or emitted message, another request), one
    /// bit each: the allocator's check is one load, not two hash lookups and a walk of `emits`.
    in_use: IdSet,
}

/// A set of packet ids as 65,536 bits (8 KB).
#[derive(Debug)]
struct IdSet(Box<[u32]>);

impl IdSet {
    fn new() -> IdSet {
        IdSet(vec![0; 1 << 11].into_boxed_slice())
    }

    fn contains(&self, id: u16) -> bool {
        self.0[usize::from(id >> 5)] & (1 << (id & 31)) != 0
    }

    fn insert(&mut self, id: u16) {
        self.0[usize::from(id >> 5)] |= 1 << (id & 31);
    }

    fn remove(&mut self, id: u16) {
        self.0[usize::from(id >> 5)] &= !(1 << (id & 31));
    }
}

impl<A> Default for Delivery<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A> Delivery<A> {
    pub fn new() -> Self {
        Delivery {
            inputs: VecDeque::new(),
            alerts: VecDeque::new(),
            first_order: 0,
            order_of: PkidMap::default(),
            others: PkidSet::default(),
            emits: VecDeque::new(),
            ids: PacketIds::default(),
            in_use: IdSet::new(),
        }
    }

    /// A free packet id (1..=65535, none in use).
    fn allocate(&mut self) -> u16 {
        let in_use = &self.in_use;
        let pkid = self.ids.next(|id| in_use.contains(id));
        self.in_use.insert(pkid);
        pkid
    }

    /// A packet id for another request, held until [`Delivery::released`].
    pub fn reserve(&mut self) -> u16 {
        let pkid = self.allocate();
        self.others.insert(pkid);
        pkid
    }

    /// The other request with this packet id was acknowledged.
    pub fn released(&mut self, pkid: u16) {
        if self.others.remove(&pkid) {
            self.in_use.remove(pkid);
        }
    }

    /// A decided input that needs no alert (pkid 0: QoS 0, nothing to acknowledge).
    pub fn dropped(&mut self, pkid: u16) {
        self.decided(pkid, 0);
    }

    /// A decided input with its alert; returns the alert's packet id.
    pub fn alerted(&mut self, pkid: u16, alert: A) -> u16 {
        let alert_pkid = self.send(alert);
        self.decided(pkid, 1);
        alert_pkid
    }

    /// An alert to send; returns its packet id. The input it comes from is then [`decided`]
    /// with the number of alerts sent for it.
    ///
    /// [`decided`]: Delivery::decided
    pub fn send(&mut self, alert: A) -> u16 {
        let alert_pkid = self.allocate();
        let order = self.first_order + self.alerts.len() as u64;
        self.alerts.push_back(Some((alert_pkid, alert)));
        self.order_of.insert(alert_pkid, order);
        alert_pkid
    }

    /// An input is decided, and the last `alerts` alerts sent are its own: it is acknowledged
    /// once every one of them is confirmed (at once when there are none).
    pub fn decided(&mut self, pkid: u16, alerts: usize) {
        self.decided_at(pkid, alerts, None, alerts > 0);
    }

    /// [`Delivery::decided`], with when the input arrived and whether it made alerts (even
    /// when it waits for none of them: acknowledged in `pipelined` mode), for its turnaround.
    pub fn decided_at(&mut self, pkid: u16, alerts: usize, received: Option<Instant>, alerted: bool) {
        if pkid != 0 {
            let end = self.first_order + self.alerts.len() as u64;
            self.inputs.push_back(Input { pkid, received, alerted, alerts: end - alerts as u64..end });
        }
    }

    /// A message emitted on its own, from no input; returns its packet id.
    pub fn emit(&mut self, message: A) -> u16 {
        let pkid = self.allocate();
        self.emits.push_back((pkid, message));
        pkid
    }

    /// Emitted messages not yet confirmed.
    pub fn emits_pending(&self) -> usize {
        self.emits.len()
    }

    /// Emitted messages not yet confirmed, oldest first.
    pub fn emits(&self) -> impl ExactSizeIterator<Item = &A> {
        self.emits.iter().map(|(_, m)| m)
    }

    /// Forgets the oldest unconfirmed emitted message (to keep their number bounded).
    pub fn evict_oldest_emit(&mut self) -> Option<A> {
        let (pkid, m) = self.emits.pop_front()?;
        self.in_use.remove(pkid);
        Some(m)
    }

    /// The hub acknowledged the publish with this packet id: the emitted message, if it was one.
    pub fn confirmed_emit(&mut self, pkid: u16) -> Option<A> {
        let at = self.emits.iter().position(|(p, _)| *p == pkid)?;
        self.in_use.remove(pkid);
        self.emits.remove(at).map(|(_, m)| m)
    }

    /// The hub acknowledged the publish with this packet id: the alert, if it was one. Always
    /// inlined: as a call, the alert moved out to its caller is a `memcpy` per confirmation on
    /// armv7 (68 bytes of the session's `Held`, of which the caller reads one field).
    #[inline(always)]
    pub fn confirmed(&mut self, pkid: u16) -> Option<A> {
        let order = self.order_of.remove(&pkid)?;
        self.in_use.remove(pkid);
        let alert = self.alerts.get_mut((order - self.first_order) as usize)?.take().map(|(_, a)| a);
        while self.alerts.front().is_some_and(Option::is_none) {
            self.alerts.pop_front();
            self.first_order += 1;
        }
        alert
    }

    /// The unconfirmed alert, or emitted message, with this packet id.
    pub fn alert_mut(&mut self, pkid: u16) -> Option<&mut A> {
        let Some(&order) = self.order_of.get(&pkid) else {
            return self.emits.iter_mut().find(|(p, _)| *p == pkid).map(|(_, m)| m);
        };
        self.alerts.get_mut((order - self.first_order) as usize)?.as_mut().map(|(_, a)| a)
    }

    /// The oldest unconfirmed alert, with its packet id.
    pub fn oldest_mut(&mut self) -> Option<(u16, &mut A)> {
        self.alerts.iter_mut().flatten().next().map(|(pkid, a)| (*pkid, a))
    }

    /// Every unconfirmed alert with its packet id, oldest first.
    pub fn unconfirmed(&self) -> impl Iterator<Item = (u16, &A)> {
        self.alerts.iter().flatten().map(|(pkid, a)| (*pkid, a))
    }

    /// The next input packet id that may now be acknowledged, in arrival order.
    pub fn next_ready(&mut self) -> Option<u16> {
        self.next_ready_at().map(|(pkid, _, _)| pkid)
    }

    /// [`Delivery::next_ready`], with when the input arrived and whether it made alerts.
    pub fn next_ready_at(&mut self) -> Option<(u16, Option<Instant>, bool)> {
        let front = self.inputs.front()?;
        let unconfirmed = |order: u64| {
            order >= self.first_order
                && self.alerts.get((order - self.first_order) as usize).is_some_and(Option::is_some)
        };
        if front.alerts.clone().any(unconfirmed) {
            return None;
        }
        self.inputs.pop_front().map(|i| (i.pkid, i.received, i.alerted))
    }

    /// Every input packet id that may now be acknowledged, in arrival order.
    pub fn ready(&mut self) -> Vec<u16> {
        std::iter::from_fn(|| self.next_ready()).collect()
    }

    /// A new connection: pending input acknowledgements are forgotten (the hub redelivers), the
    /// other requests' ids are free again, and every unconfirmed alert, then every unconfirmed
    /// emitted message, is to be sent again, in order, with its packet id.
    pub fn reconnected(&mut self) -> impl Iterator<Item = (u16, &mut A)> {
        self.inputs.clear();
        for pkid in self.others.drain() {
            self.in_use.remove(pkid);
        }
        let emits = self.emits.iter_mut().map(|(pkid, m)| (*pkid, &mut *m));
        self.alerts.iter_mut().flatten().map(|(pkid, a)| (*pkid, &mut *a)).chain(emits)
    }

    /// Input acknowledgements still owed.
    pub fn inputs_pending(&self) -> usize {
        self.inputs.len()
    }

    /// Alerts not yet confirmed by the hub.
    pub fn alerts_pending(&self) -> usize {
        self.order_of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_use_are_skipped_and_freed_ones_come_back_after_going_round() {
        let mut d: Delivery<u8> = Delivery::new();
        let (evicted, emitted, released) = (d.emit(1), d.emit(2), d.reserve());
        assert_eq!((evicted, emitted, released), (1, 2, 3));
        assert_eq!(d.evict_oldest_emit(), Some(1));
        d.released(released);
        let forgotten = d.reserve();
        assert_eq!(forgotten, 4);
        let _ = d.reconnected().count();
        for want in 5..=u16::MAX {
            let p = d.send(0);
            assert_eq!(p, want);
            assert_eq!(d.confirmed(p), Some(0));
        }
        assert_eq!(d.send(0), 1, "evicted");
        assert_eq!(d.send(0), 3, "released (2 is an unconfirmed emit)");
        assert_eq!(d.send(0), 4, "forgotten at the reconnection");
        assert_eq!(d.confirmed_emit(2), Some(2));
        assert!(!d.in_use.contains(2), "a confirmed emit's id is free");
    }
}
