//! The scanner's time against serde_json `Value`, interleaved: many short rounds, each timing a
//! batch of one parser and then a batch of the other, so that both see the same machine. On a
//! shared, noisy machine the per-round ratio is steadier than two benchmarks run seconds apart.
//!
//!     cargo run --release --example scan_ratio [MESSAGE] [ROUNDS]
//!
//! MESSAGE: 0 (129 B sensor, default), 1 (4 KiB), 2 (64 KiB). Prints the median and the spread
//! (10th to 90th percentile) of the per-round ratio, and each parser's median and fastest round.

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
    let (mut ratios, mut scans, mut serdes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let scan = time(edgefilter_scan);
        let serde = time(serde_value);
        ratios.push(serde / scan);
        scans.push(scan);
        serdes.push(serde);
    }
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q) as usize]
    };
    let (ratio, p10, p90) = (quantile(&mut ratios, 0.5), quantile(&mut ratios, 0.1), quantile(&mut ratios, 0.9));
    let (scan, fastest_scan) = (quantile(&mut scans, 0.5), quantile(&mut scans, 0.0));
    let (serde, fastest_serde) = (quantile(&mut serdes, 0.5), quantile(&mut serdes, 0.0));
    println!(
        "{name}: serde_json Value / edgefilter scan, {rounds} interleaved rounds of {batch}: median ratio \
         {ratio:.1}x (p10 {p10:.1}x, p90 {p90:.1}x); median rounds {scan:.0} ns against {serde:.0} ns; \
         fastest rounds {fastest_scan:.0} ns against {fastest_serde:.0} ns ({:.1}x)",
        fastest_serde / fastest_scan
    );
}
