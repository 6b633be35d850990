//! Alert rules against the reference: for every body and every rule set, which rules match must be
//! what a full serde_json parse gives (`Value`, last duplicate key wins, depth 128, numbers as
//! correctly rounded f64), and reading in place must agree with reading a copy.

use edgefilter::filter::{decide_rules, Matched, Reason};
use edgefilter::rules::{Op, Rules, MAX_RULES};
use edgefilter::scan::{scan_paths, scan_paths_in_place};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The reference: serde_json's `Value`, then each rule's path by key, as f64. None: malformed.
fn reference(doc: &[u8], rules: &Rules) -> Option<u16> {
    let v: Value = serde_json::from_slice(doc).ok()?;
    let mut mask = 0;
    for (i, r) in rules.rules.iter().enumerate() {
        let found = r.path.iter().try_fold(&v, |v, k| v.as_object()?.get(k)).and_then(Value::as_f64);
        if found.is_some_and(|x| r.op.holds(x, r.value)) {
            mask |= 1 << i;
        }
    }
    Some(mask)
}

fn check(doc: &[u8], rules: &Rules) {
    let text = String::from_utf8_lossy(doc);
    let (mut copied, mut in_place) = ([0.0; MAX_RULES], [0.0; MAX_RULES]);
    let a = scan_paths(doc, &rules.matcher, &mut copied);
    let b = scan_paths_in_place(doc, &rules.matcher, &mut in_place);
    assert_eq!(a, b, "read in place and copied: {text:?}");
    assert_eq!(copied.map(f64::to_bits), in_place.map(f64::to_bits), "{text:?}");
    let ours = match decide_rules(doc, rules) {
        Matched::Rules(mask) => Some(mask),
        Matched::Drop(Reason::NoRuleMatched) => Some(0),
        Matched::Drop(Reason::Malformed(_)) => None,
        other => panic!("{other:?} for {text:?}"),
    };
    assert_eq!(ours, reference(doc, rules), "{text:?} under {:?}", rules.reported());
}

fn rules(v: Value) -> Rules {
    Rules::parse(v.as_object().unwrap()).unwrap()
}

fn the_issues_rules() -> Rules {
    rules(json!({
        "HighTemperature": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1", "properties": {"MessageType": "Alert"}},
        "HighPressure": {"path": "machine.pressure", "op": ">=", "value": 1.5, "output": "output2", "properties": {"MessageType": "PressureAlert"}},
        "LowBattery": {"path": "battery", "op": "<", "value": 20, "output": "maintenance"}
    }))
}

#[test]
fn named_cases_agree_with_the_reference() {
    let r = the_issues_rules();
    let deep = |n: usize| format!("{{\"battery\":5,\"x\":{}{}}}", "[".repeat(n), "]".repeat(n));
    for doc in [
        r#"{"machine":{"temperature":25.59846067945704,"pressure":1.523875267279916},"ambient":{"temperature":21,"humidity":26},"timeCreated":"2026-11-26T07:06:23Z"}"#.to_string(),
        r#"{"machine":{"temperature":30,"pressure":1.5},"battery":19.99}"#.into(),
        r#"{"machine":{"temperature":30},"machine":{"pressure":2}}"#.into(),
        r#"{"machine":{"temperature":30},"machine":5,"battery":1}"#.into(),
        r#"{"m\u0061chine":{"temp\u0065rature":26},"batter\u0079":"low"}"#.into(),
        r#"{"battery":5,"battery":null}"#.into(),
        r#"{"machine":{"temperature":"30","pressure":[2]}}"#.into(),
        r#"{"a":{"machine":{"temperature":99}},"battery":20}"#.into(),
        r#"[{"battery":1}]"#.into(),
        r#"{"battery":1e400}"#.into(),
        r#"{"battery":-0,"machine":{"temperature":1e2,"pressure":15e-1}}"#.into(),
        r#"{"battery":5,}"#.into(),
        "".into(),
        deep(126),
        deep(127),
    ] {
        check(doc.as_bytes(), &r);
    }
}

#[test]
fn one_rule_on_the_tutorials_path_decides_as_the_tutorial() {
    let r =
        rules(json!({"HighTemperature": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1"}}));
    for (doc, alert) in [
        (r#"{"machine":{"temperature":25.000001}}"#, true),
        (r#"{"machine":{"temperature":25}}"#, false),
        (r#"{"machine":{"temperature":99},"machine":{"temperature":1}}"#, false),
    ] {
        let want = if alert { Matched::Rules(1) } else { Matched::Drop(Reason::NoRuleMatched) };
        assert_eq!(decide_rules(doc.as_bytes(), &r), want, "{doc}");
        assert_eq!(edgefilter::filter::decide(doc.as_bytes(), 25.0) == edgefilter::filter::Decision::Alert, alert);
    }
}

#[test]
fn rules_on_the_tutorials_path_only_take_its_scanner_and_agree() {
    let r = rules(json!({
        "Hot": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1"},
        "Freezing": {"path": "machine.temperature", "op": "<=", "value": 0, "output": "output2"},
        "Zero": {"path": "machine.temperature", "op": "!=", "value": 0, "output": "output3"}
    }));
    assert!(r.matcher.tutorial_path_only);
    for doc in [
        r#"{"machine":{"temperature":30}}"#,
        r#"{"machine":{"temperature":-0}}"#,
        r#"{"machine":{"temperature":"x"}}"#,
        r#"{"machine":{}}"#,
        r#"{"machine":{"temperature":1e999}}"#,
    ] {
        check(doc.as_bytes(), &r);
    }
}

#[test]
fn paths_on_nested_and_overlapping_keys() {
    let r = rules(json!({
        "A": {"path": "a", "op": "==", "value": 1, "output": "o"},
        "AB": {"path": "a.b", "op": "!=", "value": 0, "output": "o"},
        "ABC": {"path": "a.b.c", "op": "<=", "value": 2, "output": "o"},
        "Dot": {"path": "a\\.b", "op": ">", "value": 0, "output": "o"},
        "Slash": {"path": "x\\\\.y", "op": "<", "value": 0, "output": "o"}
    }));
    for doc in [
        r#"{"a":1,"a.b":2,"x\\":{"y":-1}}"#,
        r#"{"a":{"b":{"c":2}},"a":{"b":3}}"#,
        r#"{"a":{"b":{"c":2},"b":{"c":3}}}"#,
        r#"{"a":{"b":{"c":2,"c":"x"}}}"#,
        r#"{"a\u002eb":5,"a":{"b\u0000":1}}"#,
        r#"{"a":{"b":{"c":1}},"a.b":{"c":1},"a.b\":3}"#,
    ] {
        check(doc.as_bytes(), &r);
    }
}

/// Keys the generated documents and paths share, some spelled with escapes in documents.
const KEYS: [&str; 6] = ["a", "b", "machine", "temperature", "a.b", "t"];

fn json_key(key: &str, escape: bool) -> String {
    if escape {
        let escaped: String = key.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
        format!("\"{escaped}\"")
    } else {
        serde_json::to_string(key).unwrap()
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (-40i64..60).prop_map(|n| n.to_string()),
        (-4000i64..6000).prop_map(|n| format!("{}.{:02}", n / 100, (n % 100).abs())),
        Just("-0".to_string()),
        Just("1.5".to_string()),
        Just("25".to_string()),
        Just("2.5e1".to_string()),
        Just("1e400".to_string()),
        Just("18446744073709551616".to_string()),
        Just("01".to_string()),
    ]
}

fn document() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        number(),
        Just("\"x\"".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("[]".to_string()),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec((0..KEYS.len(), any::<bool>(), inner.clone()), 0..5).prop_map(|members| {
                let body: Vec<String> =
                    members.iter().map(|(k, e, v)| format!("{}:{v}", json_key(KEYS[*k], *e))).collect();
                format!("{{{}}}", body.join(","))
            }),
            prop::collection::vec(inner, 0..3).prop_map(|items| format!("[{}]", items.join(","))),
        ]
    })
}

/// Rule sets on paths of the shared keys, and some whose every path is the tutorial's (decided by
/// the tutorial's own scanner).
fn rule_set() -> impl Strategy<Value = Rules> {
    let path = prop::collection::vec(0..KEYS.len(), 1..4)
        .prop_map(|ks| ks.iter().map(|&k| KEYS[k].replace('.', "\\.")).collect::<Vec<_>>().join("."));
    let path = prop_oneof![3 => path, 1 => Just("machine.temperature".to_string())];
    let value = prop_oneof![Just(0.0), Just(1.5), Just(25.0), Just(-1.0), Just(-0.0)];
    let sets = prop::collection::vec((path, 0..Op::ALL.len(), value), 1..7);
    let tutorial_only = prop::collection::vec(
        (Just("machine.temperature".to_string()), 0..Op::ALL.len(), prop_oneof![Just(25.0), Just(0.0), Just(-0.0)]),
        1..4,
    );
    prop_oneof![sets, tutorial_only].prop_map(|rs| {
        let set: Map<String, Value> = rs
            .into_iter()
            .enumerate()
            .map(|(i, (path, op, value))| {
                (format!("r{i}"), json!({"path": path, "op": Op::ALL[op].as_str(), "value": value, "output": "o"}))
            })
            .collect();
        Rules::parse(&set).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn any_document_under_any_rule_set_agrees_with_the_reference(doc in document(), rules in rule_set(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        check(doc.as_bytes(), &rules);
        // The same document broken: cut short, or a byte replaced.
        let bytes = doc.as_bytes();
        let at = cut.index(bytes.len().max(1));
        check(&bytes[..at], &rules);
        let mut changed = bytes.to_vec();
        if let Some(b) = changed.get_mut(at) {
            *b = byte;
        }
        check(&changed, &rules);
    }
}
