//! Differential fuzzing of the scanner: for any bytes, `scan` must agree with serde_json.
#![no_main]

use edgefilter::scan::{scan, Scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|doc: &[u8]| {
    let reference = serde_json::from_slice::<serde_json::Value>(doc).ok().map(|v| {
        v.get("machine").and_then(|m| m.as_object()).and_then(|m| m.get("temperature")).and_then(|t| t.as_f64())
    });
    match (scan(doc), reference) {
        (Scan::Malformed(_), None) | (Scan::Missing(_), Some(None)) => {}
        (Scan::Temperature(t), Some(Some(r))) if t.to_bits() == r.to_bits() => {}
        (ours, theirs) => panic!("scan {ours:?}, serde_json {theirs:?}"),
    }
});
