//! Differential fuzzing of alert rules: for any bytes under any of a family of rule sets, which
//! rules match must be what serde_json gives (paths by key, last duplicate wins, numbers as f64),
//! and reading in place must agree with reading a copy. The first byte picks the rule set's paths
//! and comparisons; the rest is the document.
#![no_main]

use edgefilter::filter::{decide_rules, Matched, Reason};
use edgefilter::rules::{Op, Rules, MAX_RULES};
use edgefilter::scan::{scan_paths, scan_paths_in_place};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// Paths on ASCII keys and on non-ASCII ones, which documents may write with `\uXXXX` escapes
/// (System.Text.Json does), surrogate pairs for `🌡`; the last is too long for one fixed read.
const PATHS: [&str; 12] = [
    "machine.temperature",
    "machine.pressure",
    "ambient.temperature",
    "a",
    "a.b",
    "a.b.c",
    "a\\.b",
    "machine",
    "machine.température",
    "🌡",
    "温度.🌡",
    "température extérieure",
];

fn rule_set(pick: u8) -> Rules {
    let rules: Map<String, Value> = (0..4)
        .filter(|i| pick & (1 << i) != 0 || *i == 0)
        .map(|i| {
            let path = PATHS[(usize::from(pick) + i * 3) % PATHS.len()];
            let op = Op::ALL[(usize::from(pick >> 4) + i) % Op::ALL.len()];
            let value = [25.0, 0.0, 1.5, -0.0][i];
            (format!("r{i}"), json!({"path": path, "op": op.as_str(), "value": value, "output": "o"}))
        })
        .collect();
    Rules::parse(&rules).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, doc)) = data.split_first() else { return };
    let rules = rule_set(pick);
    let (mut a, mut b) = ([0.0; MAX_RULES], [0.0; MAX_RULES]);
    assert_eq!(scan_paths(doc, &rules.matcher, &mut a), scan_paths_in_place(doc, &rules.matcher, &mut b));
    assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits));
    let reference = serde_json::from_slice::<Value>(doc).ok().map(|v| {
        let mut mask = 0u16;
        for (i, r) in rules.rules.iter().enumerate() {
            let x = r.path.iter().try_fold(&v, |v, k| v.as_object()?.get(k)).and_then(Value::as_f64);
            if x.is_some_and(|x| r.op.holds(x, r.value)) {
                mask |= 1 << i;
            }
        }
        mask
    });
    let ours = match decide_rules(doc, &rules) {
        Matched::Rules(mask) => Some(mask),
        Matched::Drop(Reason::NoRuleMatched) => Some(0),
        Matched::Drop(Reason::Malformed(_)) => None,
        Matched::Drop(Reason::TooLarge) => return,
        other => panic!("{other:?}"),
    };
    assert_eq!(ours, reference);
});
