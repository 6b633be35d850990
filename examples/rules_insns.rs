//! Decides the 129-byte sensor message N times under one rule set: the program
//! `scripts/arm-rules-insns.sh` counts on armv7 to give instructions per message (a run with N = 0
//! subtracted).
//!
//!     cargo build --release --target armv7-unknown-linux-gnueabihf --example rules_insns
//!     tools/arm-insn-count/count target/armv7-unknown-linux-gnueabihf/release/examples/rules_insns SET N
//!
//! SET: `tutorial` (no rules: `filter::decide` against TemperatureThreshold, as the module does
//! without `Rules`), `rules-1` (the tutorial's rule written as a rule), `rules-4` (four rules on
//! four different paths: machine.temperature, machine.pressure, ambient.temperature,
//! ambient.humidity).

use std::hint::black_box;

use edgefilter::filter::{decide, decide_rules, Decision, Matched};
use edgefilter::rules::Rules;
use serde_json::json;

#[path = "../benches/competitors.rs"]
mod competitors;

fn rules(set: &str) -> Option<Rules> {
    let rule = |path: &str, op: &str, value: f64, output: &str| json!({"path": path, "op": op, "value": value, "output": output});
    let set = match set {
        "tutorial" => return None,
        "rules-1" => json!({"HighTemperature": rule("machine.temperature", ">", 25.0, "output1")}),
        "rules-4" => json!({
            "HighTemperature": rule("machine.temperature", ">", 25.0, "output1"),
            "HighPressure": rule("machine.pressure", ">=", 1.5, "output2"),
            "HotRoom": rule("ambient.temperature", ">", 30.0, "output3"),
            "Humid": rule("ambient.humidity", ">", 60.0, "output4"),
        }),
        other => panic!("unknown rule set {other}"),
    };
    Some(Rules::parse(set.as_object().expect("an object")).expect("valid rules"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: rules_insns tutorial|rules-1|rules-4 N");
        std::process::exit(2);
    }
    let doc = competitors::messages().swap_remove(0).1;
    let n: u64 = args[2].parse().expect("N is a count");
    let rules = rules(&args[1]);
    let mut alerts = 0u64;
    for _ in 0..n {
        alerts += match &rules {
            None => u64::from(decide(black_box(&doc), 25.0) == Decision::Alert),
            Some(r) => match decide_rules(black_box(&doc), r) {
                Matched::Rules(mask) => u64::from(mask.count_ones()),
                Matched::Drop(_) => 0,
            },
        };
    }
    println!("{} {} bytes: {alerts} alerts from {n} messages", args[1], doc.len());
}
