//! Runs one parser over one message N times: the program `arm-insn-count` counts to give
//! instructions per message on armv7 (subtract a run with N = 0).
//!
//!     cargo build --release --target armv7-unknown-linux-gnueabihf --example scan_insns
//!     tools/arm-insn-count/count target/armv7-unknown-linux-gnueabihf/release/examples/scan_insns PARSER MESSAGE N
//!
//! PARSER: edgefilter-scan, edgefilter-scan-in-place, serde_json-Value, serde_json-typed, simd-json-borrowed,
//! simd-json-tape, unvalidated-search. MESSAGE: 0 (129 B sensor), 1 (4 KiB), 2 (64 KiB).

use std::hint::black_box;

#[path = "../benches/competitors.rs"]
mod competitors;
use competitors::*;

/// One parser under test.
type Parser = dyn FnMut(&[u8]) -> Option<f64>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: scan_insns PARSER MESSAGE N");
        std::process::exit(2);
    }
    let messages = messages();
    let doc = &messages[args[2].parse::<usize>().expect("MESSAGE is 0, 1 or 2")].1;
    let n: u64 = args[3].parse().expect("N is a count");
    let mut scratch = Vec::with_capacity(doc.len());
    let mut buffers = simd_json::Buffers::new(doc.len());
    let mut parse: Box<Parser> = match args[1].as_str() {
        "edgefilter-scan" => Box::new(edgefilter_scan),
        "edgefilter-scan-in-place" => Box::new(edgefilter_scan_in_place),
        "serde_json-Value" => Box::new(serde_value),
        "serde_json-typed" => Box::new(serde_typed),
        "simd-json-borrowed" => Box::new(move |d| simd_borrowed(d, &mut scratch)),
        "simd-json-tape" => Box::new(move |d| simd_tape(d, &mut scratch, &mut buffers)),
        "unvalidated-search" => Box::new(unvalidated),
        other => panic!("unknown parser {other}"),
    };
    let mut found = 0u64;
    for _ in 0..n {
        found += u64::from(parse(black_box(doc)) == Some(31.13));
    }
    println!("{} {} bytes: {found}/{n} found", args[1], doc.len());
}
