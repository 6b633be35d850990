//! Differential fuzzing of the scanner: for any bytes, `scan` must agree with serde_json, and
//! reading in place must agree with reading a copy.
#![no_main]

use edgefilter::scan::{scan, scan_in_place, Scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|doc: &[u8]| {
    let reference = serde_json::from_slice::<serde_json::Value>(doc).ok().map(|v| {
        v.get("machine").and_then(|m| m.as_object()).and_then(|m| m.get("temperature")).and_then(|t| t.as_f64())
    });
    let ours = scan(doc);
    match (scan_in_place(doc), ours) {
        (Scan::Temperature(a), Scan::Temperature(b)) => assert_eq!(a.to_bits(), b.to_bits()),
        (a, b) => assert_eq!(a, b),
    }
    match (ours, reference) {
        (Scan::Malformed(_), None) | (Scan::Missing(_), Some(None)) => {}
        (Scan::Temperature(t), Some(Some(r))) if t.to_bits() == r.to_bits() => {}
        (ours, theirs) => panic!("scan {ours:?}, serde_json {theirs:?}"),
    }
});
