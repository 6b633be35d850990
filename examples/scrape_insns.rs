//! `/metrics` scrapes without the HTTP around them, for `tools/arm-insn-count` to count what one
//! costs on armv7 and for its size: `scripts/arm-scrape-insns.sh` runs every stage.
//!
//!     scrape_insns STAGE N
//!
//! STAGE: `record` (the traffic between two scrapes: 100 observations in each latency series,
//! N times), `scrape` (the same traffic, then a whole scrape's text, N times), `lock` (what a
//! scrape does under the data path's lock: swapping the recorders, N times), `text` (prints one
//! scrape), `histogram` (prints one scrape with each summary's histogram form added, a
//! `_bucket{le}` line per bucket of Prometheus' default ladder, to weigh the two forms in bytes).

use std::hint::black_box;
use std::time::Duration;

use edgefilter::stats::{record_us, Labels, Latency, Stats};

/// Prometheus' default buckets (client_golang's `DefBuckets`), in seconds.
const LADDER: [&str; 12] = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let stage = args.get(1).map_or("scrape", String::as_str);
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100);
    let labels =
        Labels::new("myhub.azure-devices.net", "gateway-01", "edgefilter", "0f8fad5b-d9cb-469f-a165-70867728950e");
    let stats = Stats::default();
    counters(&stats);
    traffic(&stats, 10_000);
    let mut total = 0;
    match stage {
        "record" => (0..n).for_each(|_| traffic(&stats, 100)),
        "scrape" => {
            for _ in 0..n {
                traffic(&stats, 100);
                total += black_box(stats.prometheus(&labels)).len();
            }
        }
        "lock" => {
            let mut spare = Latency::default();
            for _ in 0..n {
                stats.take_latency(black_box(&mut spare));
            }
        }
        "text" => return print!("{}", stats.prometheus(&labels)),
        "histogram" => return print!("{}", with_buckets(stats.prometheus(&labels), &labels)),
        _ => {
            eprintln!("usage: scrape_insns record|scrape|lock|text|histogram N");
            std::process::exit(2);
        }
    }
    println!("{total}");
}

/// A module that has run a while: counters of a few digits.
fn counters(stats: &Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    stats.received.store(1_234_567, Relaxed);
    stats.alerts.store(823_045, Relaxed);
    stats.alerts_confirmed.store(823_001, Relaxed);
    stats.batches.store(400_321, Relaxed);
    stats.connections.store(3, Relaxed);
    stats.twin_updates.store(2, Relaxed);
    stats.dropped[0].store(411_522, Relaxed);
}

/// `n` observations in every latency series, spread like a live stream's.
fn traffic(stats: &Stats, n: u64) {
    let mut l = stats.latency();
    for i in 0..n {
        let us = Duration::from_micros(200 + (i * 7919) % 5000);
        record_us(&mut l.to_socket_us, us, 1);
        record_us(&mut l.to_ack_us, us * 3, 1);
        let _ = l.decide_ns.record(1500 + (i * 31) % 900);
        record_us(&mut l.turnaround_us[(i % 3 == 2) as usize], us * 2, 1);
        let _ = l.batch_alerts.record(1 + i % 8);
    }
}

/// `text` with a histogram's `_bucket` lines after each summary's `_count` (the counts are
/// placeholders of plausible width: the figure wanted is bytes).
fn with_buckets(text: String, labels: &Labels) -> String {
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        let Some((name, rest)) = line.split_once("_count{") else { continue };
        let own = rest.rsplit_once('}').map_or("", |(l, _)| l).strip_prefix(labels.as_str()).unwrap_or("");
        for (i, le) in LADDER.iter().enumerate() {
            out.push_str(&format!("{name}_bucket{{{}{own},le=\"{le}\"}} {}\n", labels.as_str(), 1000 * (i + 1)));
        }
    }
    out
}
