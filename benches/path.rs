//! The module's in-process path for one input, shared by `benches/pipeline.rs` (timed) and
//! `examples/path_insns.rs` (counted on armv7): from the socket's bytes to the alert's bytes,
//! the same functions the module calls, stopping after `Stage` to see what each step costs.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use edgefilter::delivery::Delivery;
use edgefilter::filter::{self, Decision};
use edgefilter::mqtt::{read_publish, write_publish};
use edgefilter::topic::{self, classify, write_output_topic, BagScratch, Inbound, ModuleId};
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
use rumqttc::mqttbytes::QoS;

/// How far [`path`] goes.
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
pub enum Stage {
    /// Decode the PUBLISH.
    Decode,
    /// …and classify its topic (the bag checked).
    Classify,
    /// …and decide the body (the scan).
    Decide,
    /// …and write the alert's topic.
    Topic,
    /// …and book it, encode the alert and the PUBACK: everything.
    All,
}

pub const TOPIC: &str = "devices/dev/modules/filter/inputs/input1/sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor";

/// `n` encoded input PUBLISH packets, as they arrive on the socket.
pub fn wire(n: usize, body: &'static [u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..n {
        let mut p = Publish::from_bytes(TOPIC, QoS::AtLeastOnce, Bytes::from_static(body));
        p.pkid = (i % 60_000 + 1) as u16;
        Packet::Publish(p).write(&mut buf, 1 << 20).unwrap();
    }
    buf
}

/// The module's per-message path over a batch read from the socket, up to `stage`; returns
/// bytes written (a byte per message for the stages that write nothing, so none is optimised out).
pub fn path(
    id: &ModuleId,
    mut rx: BytesMut,
    delivery: &mut Delivery<Bytes>,
    tx: &mut BytesMut,
    scratch: &mut Scratch,
    stage: Stage,
) -> usize {
    tx.clear();
    while let Ok(Some(p)) = read_publish(&mut rx, 1 << 20) {
        if stage == Stage::Decode {
            tx.extend_from_slice(&p.payload[..1]);
            continue;
        }
        let Ok(Inbound::Input { input, bag, .. }) = classify(id, p.topic()) else { continue };
        if stage == Stage::Classify {
            tx.extend_from_slice(&bag.as_bytes()[..1]);
            continue;
        }
        if !(topic::input_is(input, filter::INPUT) && filter::decide(&p.payload, 25.0) == Decision::Alert) {
            delivery.dropped(p.pkid);
            continue;
        }
        if stage == Stage::Decide {
            tx.extend_from_slice(b"a");
            continue;
        }
        if scratch.topics.capacity() - scratch.topics.len() < 1024 {
            scratch.topics = BytesMut::with_capacity(64 * 1024);
        }
        write_output_topic(&mut scratch.topics, id, bag, filter::OUTPUT, &[filter::ALERT_PROPERTY], &mut scratch.bag)
            .unwrap();
        let topic = scratch.topics.split().freeze();
        if stage == Stage::Topic {
            tx.extend_from_slice(&topic[..1]);
            continue;
        }
        let pkid = delivery.alerted(p.pkid, p.payload.clone());
        write_publish(tx, &topic, pkid, &p.payload, false).unwrap();
        delivery.confirmed(pkid); // the hub's PUBACK, as if it came back at once
    }
    while let Some(pkid) = delivery.next_ready() {
        Packet::PubAck(PubAck::new(pkid)).write(tx, 16).unwrap();
    }
    tx.len()
}

/// What the module keeps between messages: the topic arena and the bag scratch.
#[derive(Default)]
pub struct Scratch {
    topics: BytesMut,
    bag: BagScratch,
}
