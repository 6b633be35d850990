//! The parsers the scanner is measured against, and the three test messages. Shared by the
//! criterion bench (x86) and the `scan_insns` example (instruction counts on armv7).
#![allow(dead_code)]

use serde::Deserialize;
use simd_json::prelude::*;

/// SimulatedTemperatureSensor's message as the real module sends it (129 bytes).
pub const SENSOR: &[u8] = br#"{"machine":{"temperature":31.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}"#;

/// A message of about `size` bytes with `machine` last, behind plausible telemetry.
pub fn padded(size: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"ambient":{"temperature":20.97,"humidity":25},"readings":["#);
    let mut i = 0;
    while s.len() + 120 < size {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(r#"{{"id":"sensor-{i:05}","value":{}.{},"ok":true,"unit":"°C"}}"#, i % 97, i % 13));
        i += 1;
    }
    s.push_str(r#"],"timeCreated":"2026-11-26T07:06:23Z","machine":{"temperature":31.13,"pressure":2.15}}"#);
    while s.len() < size {
        s.insert(s.len() - 1, ' ');
    }
    s.into_bytes()
}

/// (name, bytes) of the three messages.
pub fn messages() -> Vec<(&'static str, Vec<u8>)> {
    vec![("sensor-129B", SENSOR.to_vec()), ("machine-last-4KiB", padded(4096)), ("machine-last-64KiB", padded(65536))]
}

pub fn edgefilter_scan(doc: &[u8]) -> Option<f64> {
    temperature(edgefilter::scan::scan(doc))
}

pub fn edgefilter_scan_in_place(doc: &[u8]) -> Option<f64> {
    temperature(edgefilter::scan::scan_in_place(doc))
}

fn temperature(scan: edgefilter::scan::Scan) -> Option<f64> {
    match scan {
        edgefilter::scan::Scan::Temperature(t) => Some(t),
        _ => None,
    }
}

pub fn serde_value(doc: &[u8]) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    v.get("machine")?.get("temperature")?.as_f64()
}

#[derive(Deserialize)]
struct Doc {
    machine: Option<Machine>,
}

#[derive(Deserialize)]
struct Machine {
    temperature: Option<f64>,
}

pub fn serde_typed(doc: &[u8]) -> Option<f64> {
    serde_json::from_slice::<Doc>(doc).ok()?.machine?.temperature
}

/// simd-json needs a mutable copy of the input; the copy is part of its cost.
pub fn simd_borrowed(doc: &[u8], scratch: &mut Vec<u8>) -> Option<f64> {
    scratch.clear();
    scratch.extend_from_slice(doc);
    let v = simd_json::to_borrowed_value(scratch).ok()?;
    v.get("machine")?.get("temperature")?.as_f64()
}

pub fn simd_tape(doc: &[u8], scratch: &mut Vec<u8>, buffers: &mut simd_json::Buffers) -> Option<f64> {
    scratch.clear();
    scratch.extend_from_slice(doc);
    let tape = simd_json::to_tape_with_buffers(scratch, buffers).ok()?;
    let v = tape.as_value();
    v.get("machine")?.get("temperature")?.as_f64()
}

/// No validation at all: find `"machine"`, then `"temperature":`, parse the number. Wrong on
/// many inputs; the floor of what any scan can cost.
pub fn unvalidated(doc: &[u8]) -> Option<f64> {
    fn find(h: &[u8], n: &[u8]) -> Option<usize> {
        h.windows(n.len()).position(|w| w == n)
    }
    let m = find(doc, b"\"machine\"")?;
    let t = m + find(&doc[m..], b"\"temperature\":")? + 14;
    let end = t + doc[t..].iter().position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))?;
    std::str::from_utf8(&doc[t..end]).ok()?.parse().ok()
}
