//! At-least-once bookkeeping: when may an input be acknowledged, and which alerts are unconfirmed.
//!
//! An input message is acknowledged to the hub only once it is fully handled: a dropped message
//! as soon as it is decided, an alert's input once the hub has acknowledged the alert. MQTT wants
//! acknowledgements in the order the messages arrived, so a decided message waits behind an
//! earlier one whose alert is still unconfirmed. If the module dies before acknowledging, the
//! hub redelivers the input; the alert may then go out twice, never zero times.
//!
//! Alerts are matched to the hub's PUBACKs by packet id. The MQTT client assigns packet ids as it
//! writes publishes, in the order they were queued, and reports each write, so the n-th write of
//! a new packet id belongs to the n-th queued alert. The state here is connection-aware:
//!
//! - inputs belong to one connection: after a reconnect their packet ids mean nothing, the hub
//!   redelivers them (persistent session), so pending input acknowledgements are forgotten;
//! - alerts outlive connections: the client retransmits unconfirmed alerts with their packet ids
//!   when the session resumes; when the hub reports no session, the client drops them, so this
//!   tracker hands them back to be queued again. Alerts are never lost here.
//!
//! Pure state, no I/O: the MQTT shell feeds it events and does what it says.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// An alert held until the hub confirms it.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert<P> {
    pub topic: String,
    pub payload: P,
}

#[derive(Debug)]
struct Input {
    pkid: u16,
    /// The alert this input waits for, if any.
    alert: Option<u64>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Delivery<P> {
    inputs: VecDeque<Input>,
    alerts: BTreeMap<u64, Alert<P>>,
    next_alert: u64,
    /// Alerts queued to the client whose packet id is not yet known, in queue order.
    unassigned: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
    /// An alert the client holds back because its packet id is still in use (acks came out of
    /// order); it is written under that id once the earlier publish is confirmed.
    collided: Option<(u16, u64)>,
}

impl<P: Clone> Default for Delivery<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Clone> Delivery<P> {
    pub fn new() -> Self {
        Delivery {
            inputs: VecDeque::new(),
            alerts: BTreeMap::new(),
            next_alert: 0,
            unassigned: VecDeque::new(),
            by_pkid: HashMap::new(),
            collided: None,
        }
    }

    /// A decided input that needs no alert (pkid 0: QoS 0, nothing to acknowledge).
    pub fn dropped(&mut self, pkid: u16) {
        if pkid != 0 {
            self.inputs.push_back(Input { pkid, alert: None });
        }
    }

    /// A decided input whose alert the caller queues to the client right after this call.
    pub fn alerted(&mut self, pkid: u16, alert: Alert<P>) {
        let id = self.next_alert;
        self.next_alert += 1;
        self.alerts.insert(id, alert);
        self.unassigned.push_back(id);
        if pkid != 0 {
            self.inputs.push_back(Input { pkid, alert: Some(id) });
        }
    }

    /// The client wrote a QoS 1 publish with this packet id. Retransmissions of known ids and
    /// publishes that are not alerts (none are queued) change nothing.
    pub fn written(&mut self, pkid: u16) {
        if pkid == 0 || self.by_pkid.contains_key(&pkid) {
            return;
        }
        if let Some(id) = self.unassigned.pop_front() {
            self.by_pkid.insert(pkid, id);
        }
    }

    /// The client holds the next queued alert back until `pkid` is confirmed.
    pub fn collided(&mut self, pkid: u16) {
        if let Some(id) = self.unassigned.pop_front() {
            self.collided = Some((pkid, id));
        }
    }

    /// The hub acknowledged the publish with this packet id; true when it was an alert.
    pub fn confirmed(&mut self, pkid: u16) -> bool {
        let alert = self.by_pkid.remove(&pkid).is_some_and(|id| self.alerts.remove(&id).is_some());
        if let Some((held, id)) = self.collided {
            if held == pkid {
                self.by_pkid.insert(pkid, id);
                self.collided = None;
            }
        }
        alert
    }

    /// Input packet ids that may now be acknowledged, in arrival order.
    pub fn ready(&mut self) -> Vec<u16> {
        let mut out = Vec::new();
        while let Some(front) = self.inputs.front() {
            if front.alert.is_some_and(|id| self.alerts.contains_key(&id)) {
                break;
            }
            out.push(front.pkid);
            self.inputs.pop_front();
        }
        out
    }

    /// A new connection. Pending input acknowledgements are forgotten (the hub redelivers).
    /// When the session was not resumed the client dropped its unconfirmed publishes: those
    /// alerts are returned, in order, to be queued again.
    pub fn reconnected(&mut self, session_present: bool) -> Vec<Alert<P>> {
        self.inputs.clear();
        if session_present {
            return Vec::new();
        }
        self.by_pkid.clear();
        self.collided = None;
        self.unassigned = self.alerts.keys().copied().collect();
        self.alerts.values().cloned().collect()
    }

    /// Input acknowledgements still owed.
    pub fn inputs_pending(&self) -> usize {
        self.inputs.len()
    }

    /// Alerts not yet confirmed by the hub.
    pub fn alerts_pending(&self) -> usize {
        self.alerts.len()
    }
}
