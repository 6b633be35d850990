//! Folds N sensor readings into one aggregate: the program `scripts/arm-aggregate-insns.sh`
//! counts on armv7 to give instructions per message (a run with N = 0 subtracted). The readings
//! (4,000 of the tutorial's sensor, 5 s apart) are made before the loop in every run, so their
//! cost cancels out.
//!
//!     cargo build --release --target armv7-unknown-linux-gnueabihf --example aggregate_insns
//!     tools/arm-insn-count/count target/armv7-unknown-linux-gnueabihf/release/examples/aggregate_insns MODE N
//!
//! MODE `fold-SET` folds a reading whose value (and time) the scanner has already read into one
//! aggregate of SET, whose windows are made a week long so that every reading goes to a pane that
//! exists (what 5 of 6 readings do in the tutorial's 30-s window); `loop` is the same loop without
//! the fold, to subtract. `run-SET` folds into the windows as configured, and closes and sends them
//! when `next_deadline` says one is due, as the module does: its extra cost per window sent is
//! making the window's pane, closing it and writing its message. SET: `tutorial` (the ASA tutorial's job: event time, having, a
//! reset body), `arrival` (avg min max count, arrival time), `hopping` (60 s every 5 s, eight
//! functions), `percentiles` (avg and p50 p90 p95 p99), `grouped` (ten groups). `scan` is the
//! scanner's pass over the body for the tutorial job's two paths; `message` is all of it from the
//! body: scan, the `timeCreated` string, the message id, fold, close and send.

use std::hint::black_box;
use std::sync::Arc;

use edgefilter::aggregate::extract::Reading;
use edgefilter::aggregate::{AggregateSet, Aggregator};
use edgefilter::sensor::Sensor;
use serde_json::json;

const READINGS: usize = 4000;
const START: i64 = 1_796_195_910_000;

fn aggregate(mode: &str) -> serde_json::Value {
    let tumbling = json!({"kind": "tumbling", "seconds": 30});
    let mut a = json!({"path": "machine.temperature", "window": tumbling, "functions": "avg,min,max,count", "output": "aggregates"});
    match mode.trim_start_matches("fold-").trim_start_matches("run-") {
        "tutorial" | "scan" | "message" => {
            a["functions"] = json!("avg");
            a["time"] = json!({"path": "timeCreated"});
            a["having"] = json!({"function": "avg", "op": ">", "value": 70});
            a["body"] = json!({"command": "reset"});
        }
        "arrival" => {}
        "hopping" => {
            a["window"] = json!({"kind": "hopping", "seconds": 60, "hopSeconds": 5});
            a["functions"] = json!("count,sum,avg,min,max,stdev,first,last");
        }
        "percentiles" => a["functions"] = json!("avg,p50,p90,p95,p99"),
        "grouped" | "loop" => a["groupBy"] = json!("machine.id"),
        other => panic!("unknown mode {other}"),
    }
    if mode.starts_with("fold-") || mode == "loop" {
        let hops = a["window"]["seconds"].as_u64().unwrap_or(30) / a["window"]["hopSeconds"].as_u64().unwrap_or(30);
        let week = 7 * 86_400;
        a["window"]["seconds"] = json!(week / hops * hops);
        if hops > 1 {
            a["window"]["hopSeconds"] = json!(week / hops);
        }
    }
    json!({ "A": a })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: aggregate_insns MODE N");
        std::process::exit(2);
    }
    let mode = args[1].as_str();
    let n: usize = args[2].parse().expect("N is a count");
    assert!(n <= READINGS, "at most {READINGS} messages");
    let set = Arc::new(AggregateSet::parse(aggregate(mode).as_object().expect("an object")).expect("a valid set"));
    let mut sensor = Sensor::new(1);
    let at = |i: usize| START + 1000 + i as i64 * 5000;
    let bodies: Vec<String> = (0..READINGS)
        .map(|i| sensor.next_reading(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at(i) as u64)).body)
        .collect();
    let ids: Vec<String> = (0..READINGS).map(|i| i.to_string()).collect();
    let mut values = edgefilter::aggregate::extract::Scan::default();
    let readings: Vec<(f64, i64)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            set.extractor.scan(b.as_bytes(), &mut values).expect("valid JSON");
            let mut key = String::new();
            let r: Reading = set.extractor.reading(0, b.as_bytes(), &values, &mut key);
            (r.value, r.time.unwrap_or(at(i)))
        })
        .collect();
    let groups: Vec<String> = (0..10).map(|g| format!("\"m{g}\"")).collect();
    // The week-long windows start at the week's start, so that the readings fall in one.
    let a = &set.aggregates[0];
    let since = if mode.starts_with("fold-") { START - START.rem_euclid(a.window_ms) } else { START };
    let mut agg = Aggregator::new(set.clone(), since);
    let mut sent = 0usize;
    let mut due = None;
    let mut group = 0;
    for i in 0..n {
        let now = black_box(at(i) + 20);
        match mode {
            "scan" => {
                set.extractor.scan(black_box(bodies[i].as_bytes()), &mut values).expect("valid JSON");
                sent += usize::from(values.values[0] > 70.0);
            }
            "message" => agg.fold(black_box(bodies[i].as_bytes()), Some(ids[i].as_bytes()), now).expect("valid JSON"),
            "loop" => {
                let (x, t) = black_box(readings[i]);
                black_box((x, t, &groups[group], now));
                group = if group == 9 { 0 } else { group + 1 };
            }
            _ => {
                let (x, t) = black_box(readings[i]);
                agg.series[0].fold(a, x, Some(t), Some(&groups[group]), now);
                group = if group == 9 { 0 } else { group + 1 };
            }
        }
        if mode.starts_with("run-") || mode == "message" {
            // As the module's shell does: close when the core's deadline comes (or a reading
            // carried the watermark past a window's end: the deadline is then already past).
            due = due.or_else(|| agg.next_deadline());
            if due.is_some_and(|d| d <= now) {
                sent += agg.close(now).len();
                due = None;
            }
        }
    }
    let counted: u64 = agg.series[0].groups.iter().flat_map(|(_, p)| p).map(|(_, s)| s.count).sum();
    println!("{mode}: {sent} windows sent from {n} messages, {counted} readings in open windows");
}
