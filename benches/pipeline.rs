//! The in-process path of one message, and where deciding should run.
//!
//! `path`: what the module does per input between the socket's bytes and the alert's bytes:
//! decode the PUBLISH, classify the topic and read its property bag, decide, build the alert's
//! topic and bag, book it for at-least-once, encode the alert and the input's PUBACK.
//!
//! `decide-inline` vs `decide-on-worker`: the same batch decided on the calling thread, or handed
//! to a worker thread over crossbeam channels and the decisions handed back (what a worker pool
//! would cost), for batches of 1 and 100 messages. `cargo bench --bench pipeline`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgefilter::delivery::Delivery;
use edgefilter::filter::{self, Decision};
use edgefilter::mqtt::{read_publish, write_publish};
use edgefilter::topic::{self, classify, write_output_topic, BagScratch, Inbound, ModuleId};
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
use rumqttc::mqttbytes::QoS;

#[path = "competitors.rs"]
mod competitors;
#[path = "worker.rs"]
mod worker;
use competitors::SENSOR as BODY;
use worker::{decide_inline, Worker};

const TOPIC: &str = "devices/dev/modules/filter/inputs/input1/sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor";

/// `n` encoded input PUBLISH packets, as they arrive on the socket.
fn wire(n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..n {
        let mut p = Publish::from_bytes(TOPIC, QoS::AtLeastOnce, Bytes::from_static(BODY));
        p.pkid = (i % 60_000 + 1) as u16;
        Packet::Publish(p).write(&mut buf, 1 << 20).unwrap();
    }
    buf
}

/// The module's per-message path over a batch read from the socket; returns bytes written.
fn path(
    id: &ModuleId,
    mut rx: BytesMut,
    delivery: &mut Delivery<Bytes>,
    tx: &mut BytesMut,
    scratch: &mut Scratch,
) -> usize {
    tx.clear();
    while let Ok(Some(p)) = read_publish(&mut rx, 1 << 20) {
        if let Ok(Inbound::Input { input, bag }) = classify(id, p.topic()) {
            if topic::input_is(input, filter::INPUT) && filter::decide(&p.payload, 25.0) == Decision::Alert {
                if scratch.topics.capacity() - scratch.topics.len() < 1024 {
                    scratch.topics = BytesMut::with_capacity(64 * 1024);
                }
                write_output_topic(
                    &mut scratch.topics,
                    id,
                    bag,
                    filter::OUTPUT,
                    filter::ALERT_PROPERTY,
                    &mut scratch.bag,
                )
                .unwrap();
                let topic = scratch.topics.split().freeze();
                let pkid = delivery.alerted(p.pkid, p.payload.clone());
                write_publish(tx, &topic, pkid, &p.payload, false).unwrap();
                delivery.confirmed(pkid); // the hub's PUBACK, as if it came back at once
            } else {
                delivery.dropped(p.pkid);
            }
        }
    }
    while let Some(pkid) = delivery.next_ready() {
        Packet::PubAck(PubAck::new(pkid)).write(tx, 16).unwrap();
    }
    tx.len()
}

/// What the module keeps between messages: the topic arena and the bag scratch.
#[derive(Default)]
struct Scratch {
    topics: BytesMut,
    bag: BagScratch,
}

fn bench_path(c: &mut Criterion) {
    let id = ModuleId::new("dev", "filter");
    let mut g = c.benchmark_group("path");
    for n in [1usize, 100] {
        let input = wire(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut delivery = Delivery::new();
        let mut tx = BytesMut::with_capacity(1 << 16);
        let mut scratch = Scratch::default();
        g.bench_with_input(BenchmarkId::new("alert", n), &input, |b, input| {
            b.iter(|| path(&id, black_box(input.clone()), &mut delivery, &mut tx, &mut scratch))
        });
    }
    g.finish();
}

fn bench_where(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    let worker = Worker::spawn();
    for n in [1usize, 100] {
        let batch: Vec<Bytes> = (0..n).map(|_| Bytes::from_static(BODY)).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("inline", n), &batch, |b, batch| {
            b.iter(|| decide_inline(black_box(batch)))
        });
        g.bench_with_input(BenchmarkId::new("on-worker", n), &batch, |b, batch| {
            b.iter(|| worker.decide(black_box(batch.clone())))
        });
    }
    g.finish();
    worker.stop();
}

criterion_group!(benches, bench_path, bench_where);
criterion_main!(benches);
