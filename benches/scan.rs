//! The scanner against full parsers on three messages (x86; `examples/scan_insns.rs` counts the
//! same comparisons on armv7). `cargo bench --bench scan`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

#[path = "competitors.rs"]
mod competitors;
use competitors::*;

fn bench(c: &mut Criterion) {
    for (name, doc) in messages() {
        for f in [
            edgefilter_scan,
            edgefilter_scan_in_place,
            serde_value,
            serde_typed,
            simd_borrowed_fn,
            simd_tape_fn,
            unvalidated,
        ] {
            assert_eq!(f(&doc), Some(31.13), "{name}");
        }
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(doc.len() as u64));
        g.bench_with_input(BenchmarkId::new("edgefilter-scan", name), &doc, |b, d| {
            b.iter(|| edgefilter_scan(black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("edgefilter-scan-in-place", name), &doc, |b, d| {
            b.iter(|| edgefilter_scan_in_place(black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("serde_json-Value", name), &doc, |b, d| {
            b.iter(|| serde_value(black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("serde_json-typed", name), &doc, |b, d| {
            b.iter(|| serde_typed(black_box(d)))
        });
        let mut scratch = Vec::new();
        g.bench_with_input(BenchmarkId::new("simd-json-borrowed", name), &doc, |b, d| {
            b.iter(|| simd_borrowed(black_box(d), &mut scratch))
        });
        let mut buffers = simd_json::Buffers::new(doc.len());
        g.bench_with_input(BenchmarkId::new("simd-json-tape", name), &doc, |b, d| {
            b.iter(|| simd_tape(black_box(d), &mut scratch, &mut buffers))
        });
        g.bench_with_input(BenchmarkId::new("unvalidated-search", name), &doc, |b, d| {
            b.iter(|| unvalidated(black_box(d)))
        });
        g.finish();
    }
}

fn simd_borrowed_fn(d: &[u8]) -> Option<f64> {
    simd_borrowed(d, &mut Vec::new())
}

fn simd_tape_fn(d: &[u8]) -> Option<f64> {
    simd_tape(d, &mut Vec::new(), &mut simd_json::Buffers::new(d.len()))
}

criterion_group!(benches, bench);
criterion_main!(benches);
