//! The hub's side of the session core's simulated-clock tests (tests/session.rs and
//! tests/session_aggregates.rs): it reads what the core writes, packet by packet, answers with
//! packets of its own, runs the core's actions (tokens signed, connections accepted, saves kept)
//! and moves the clock on deadline by deadline. No socket and no real time.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use edgefilter::config::Config;
use edgefilter::mqtt::{read_publish, write_publish, Message, Received};
use edgefilter::session::{Action, Session};
use edgefilter::stats::Stats;
use edgefilter::topic::ModuleId;
use rumqttc::mqttbytes::v4::{Packet, PubAck, SubAck};
use rumqttc::SubscribeReasonCode;
use serde_json::{json, Value};

/// The input topic of the simulated sensor's messages.
pub const INPUT: &str = "devices/dev/modules/filter/inputs/input1/sequenceNumber=1&%24.cdid=dev&%24.cmid=sensor";

/// What the module wrote, as the hub reads it.
#[derive(Debug)]
pub enum Out {
    Publish { topic: String, pkid: u16, dup: bool, body: Vec<u8> },
    Other(Packet),
}

pub struct Sim {
    pub s: Session,
    pub now: Instant,
    pub stats: Arc<Stats>,
    /// The next packet id the hub gives an input.
    pub next_input: u16,
    /// The passwords the module connected with.
    pub passwords: Vec<String>,
    /// Checkpoints the core asked the shell to save ([`Sim::settle_all`]).
    pub saves: Vec<Vec<u8>>,
    /// The core asked to exit ([`Sim::settle_all`]).
    pub exited: bool,
}

/// The module `dev/filter` on `hub.example`, changed by `tweak`.
pub fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::local("hub.example", ModuleId::new("dev", "filter"), 1883, b"key".to_vec());
    tweak(&mut c);
    c
}

impl Sim {
    pub fn new(c: Config) -> Sim {
        let stats = Arc::new(Stats::default());
        let now = Instant::now();
        let s = Session::new(&c, stats.clone(), now, 42);
        Sim { s, now, stats, next_input: 1, passwords: Vec::new(), saves: Vec::new(), exited: false }
    }

    /// Runs the core's actions: signs tokens as `token-N`, connects (the hub accepts); returns
    /// the others.
    pub fn settle(&mut self) -> Vec<Action> {
        let mut other = Vec::new();
        while let Some(a) = self.s.poll(self.now) {
            match a {
                Action::Sign => {
                    let n = self.passwords.len();
                    self.s.on_token(self.now, Ok(format!("token-{n}")));
                }
                Action::Connect(o) => {
                    self.passwords.push(o.password);
                    self.s.on_connected(self.now, true, None);
                }
                a => other.push(a),
            }
        }
        other
    }

    /// As [`Sim::settle`], and the rest too: saves kept, an exit noted, a close answered.
    pub fn settle_all(&mut self) {
        loop {
            let actions = self.settle();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Save(bytes) => self.saves.push(bytes),
                    Action::Exit => self.exited = true,
                    Action::Close => self.s.on_closed(self.now),
                    Action::Sign | Action::Connect(_) => unreachable!("settle runs them"),
                }
            }
        }
    }

    /// Connected, the SUBSCRIBE and the twin request answered with `desired`.
    pub fn up(c: Config, desired: Value) -> Sim {
        let mut sim = Sim::new(c);
        sim.connect(desired);
        sim
    }

    /// Connects and answers the new connection's SUBSCRIBE and twin request with `desired`;
    /// returns what else was written.
    pub fn connect(&mut self, desired: Value) -> Vec<Out> {
        self.settle_all();
        assert!(self.s.connected());
        let out = self.written();
        self.answer(out, desired)
    }

    /// Answers a new connection's SUBSCRIBE and twin request, as `out` wrote them; returns the
    /// rest of `out` and what the core wrote next.
    pub fn answer(&mut self, out: Vec<Out>, desired: Value) -> Vec<Out> {
        let mut rest = Vec::new();
        for o in out {
            match o {
                Out::Other(Packet::Subscribe(s)) => {
                    let ack = SubAck::new(s.pkid, vec![SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce); 3]);
                    self.hub_sends(Received::Other(Packet::SubAck(ack)));
                }
                Out::Publish { topic, .. } if topic.starts_with("$iothub/twin/GET/") => {
                    let rid = topic.rsplit("$rid=").next().unwrap().to_string();
                    let body = json!({"desired": desired, "reported": {}}).to_string();
                    self.hub_publishes(&edgefilter::topic::twin_response(200, &rid), body.as_bytes(), 0);
                }
                o => rest.push(o),
            }
        }
        rest.extend(self.written());
        rest
    }

    /// What the core writes now (decoded), marked written.
    pub fn written(&mut self) -> Vec<Out> {
        let Some(tx) = self.s.transmit(self.now) else { return Vec::new() };
        let mut bytes = tx.clone();
        self.s.on_written(self.now);
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if bytes[0] >> 4 == 3 {
                let dup = bytes[0] & 0x08 != 0;
                let m = read_publish(&mut bytes, 1 << 20).unwrap().unwrap();
                out.push(Out::Publish { topic: m.topic().to_string(), pkid: m.pkid, dup, body: m.payload.to_vec() });
            } else {
                out.push(Out::Other(Packet::read(&mut bytes, 1 << 20).unwrap()));
            }
        }
        out
    }

    pub fn hub_sends(&mut self, packet: Received) {
        self.s.inbox().push_back(packet);
        let turn = self.s.on_read(self.now);
        if turn.more {
            self.s.end_turn(self.now, 0);
        }
    }

    pub fn hub_publishes(&mut self, topic: &str, body: &[u8], pkid: u16) {
        self.hub_sends(Received::Publish(message(topic, body, pkid)));
    }

    /// An input with `body` on [`INPUT`]; returns its packet id.
    pub fn input(&mut self, body: &str) -> u16 {
        self.input_on(INPUT, body)
    }

    /// An input with `body` on `topic`; returns its packet id.
    pub fn input_on(&mut self, topic: &str, body: &str) -> u16 {
        let pkid = self.next_input;
        self.next_input += 1;
        self.hub_publishes(topic, body.as_bytes(), pkid);
        pkid
    }

    pub fn puback(&mut self, pkid: u16) {
        self.hub_sends(Received::Other(Packet::PubAck(PubAck::new(pkid))));
    }

    /// Moves the clock on by `d`, firing every deadline on the way, at its time (the actions
    /// they ask for are left to the test).
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.s.deadline().filter(|at| *at > self.now && *at <= end) {
            self.now = at;
            self.s.on_timer(at);
        }
        self.now = end;
        self.s.on_timer(end);
    }

    /// As [`Sim::advance`], running every action at its time ([`Sim::settle_all`]).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.s.deadline().filter(|at| *at > self.now && *at <= end) {
            self.now = at;
            self.s.on_timer(at);
            self.settle_all();
        }
        self.now = end;
        self.s.on_timer(end);
        self.settle_all();
    }
}

/// A PUBLISH as the hub's decoder hands it to the core (`pkid` 0: QoS 0).
pub fn message(topic: &str, body: &[u8], pkid: u16) -> Message {
    let mut b = BytesMut::new();
    write_publish(&mut b, topic.as_bytes(), pkid.max(1), body, false).unwrap();
    let mut m = read_publish(&mut b, 1 << 20).unwrap().unwrap();
    m.pkid = pkid;
    m
}

/// The PUBACKs written, by packet id.
pub fn pubacks(out: &[Out]) -> Vec<u16> {
    out.iter()
        .filter_map(|o| match o {
            Out::Other(Packet::PubAck(a)) => Some(a.pkid),
            _ => None,
        })
        .collect()
}
