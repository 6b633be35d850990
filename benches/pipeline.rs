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
use edgefilter::topic::ModuleId;

#[path = "competitors.rs"]
mod competitors;
#[path = "path.rs"]
mod path;
#[path = "worker.rs"]
mod worker;
use competitors::SENSOR as BODY;
use path::{path, wire, Scratch, Stage};
use worker::{decide_inline, Worker};

fn bench_path(c: &mut Criterion) {
    let id = ModuleId::new("dev", "filter");
    let mut g = c.benchmark_group("path");
    for n in [1usize, 100] {
        let input = wire(n, BODY);
        g.throughput(Throughput::Elements(n as u64));
        let mut delivery = Delivery::new();
        let mut tx = BytesMut::with_capacity(1 << 16);
        let mut scratch = Scratch::default();
        g.bench_with_input(BenchmarkId::new("alert", n), &input, |b, input| {
            b.iter(|| path(&id, black_box(input.clone()), &mut delivery, &mut tx, &mut scratch, Stage::All))
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
