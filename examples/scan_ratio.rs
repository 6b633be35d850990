//! The scanner's time against serde_json `Value`, interleaved: many short rounds, each timing a
//! batch of one parser and then a batch of the other, so that both see the same machine. On a
//! shared, noisy machine the per-round ratio is steadier than two benchmarks run seconds apart.
//!
//!     cargo run --release --example scan_ratio [MESSAGE] [ROUNDS]
//!
//! MESSAGE: 0 (129 B sensor, default), 1 (4 KiB), 2 (64 KiB). Prints the median and the spread
//! (10th to 90th percentile) of the per-round ratio, and each parser's fastest round.

use std::hint::black_box;
use std::time::Instant;

#[path = "../benches/competitors.rs"]
mod competitors;
use competitors::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let message = args.get(1).map_or(0, |a| a.parse().expect("MESSAGE is 0, 1 or 2"));
    let rounds: usize = args.get(2).map_or(2000, |a| a.parse().expect("ROUNDS is a count"));
    let (name, doc) = &messages()[message];
    // About 100 µs of serde_json per round.
    let batch = (100_000 / doc.len()).max(1);
    let time = |parse: fn(&[u8]) -> Option<f64>| {
        let start = Instant::now();
        for _ in 0..batch {
            assert_eq!(parse(black_box(doc)), Some(31.13));
        }
        start.elapsed().as_nanos() as f64 / batch as f64
    };
    for _ in 0..rounds / 10 {
        time(edgefilter_scan);
        time(serde_value);
    }
    let mut ratios = Vec::with_capacity(rounds);
    let (mut best_scan, mut best_serde) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let scan = time(edgefilter_scan);
        let serde = time(serde_value);
        best_scan = best_scan.min(scan);
        best_serde = best_serde.min(serde);
        ratios.push(serde / scan);
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q) as usize];
    println!(
        "{name}: serde_json Value / edgefilter scan, {rounds} interleaved rounds of {batch}: median {:.1}x \
         (p10 {:.1}x, p90 {:.1}x); fastest rounds {best_scan:.0} ns against {best_serde:.0} ns ({:.1}x)",
        at(0.5),
        at(0.1),
        at(0.9),
        best_serde / best_scan
    );
}
