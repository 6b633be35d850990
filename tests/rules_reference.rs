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

/// Issue 22, defect 5: System.Text.Json, the C# default, writes `température` as
/// `temp\u00E9rature`. A rule on a non-ASCII key finds it however the document spells it; a
/// spelling of another key, or a lone surrogate, matches nothing.
#[test]
fn non_ascii_keys_match_however_they_are_escaped() {
    let r = rules(json!({
        "Hot": {"path": "machine.température", "op": ">", "value": 25, "output": "o"},
        "Thermometer": {"path": "🌡", "op": ">", "value": 25, "output": "o"},
        "Outside": {"path": "température extérieure", "op": ">", "value": 25, "output": "o"}
    }));
    let (hot, thermometer, outside) = (1 << 0, 1 << 2, 1 << 1);
    for (doc, want) in [
        (r#"{"machine":{"température":30}}"#, Some(hot)),
        (r#"{"machine":{"temp\u00e9rature":30}}"#, Some(hot)),
        (r#"{"machine":{"temp\u00E9rature":30}}"#, Some(hot)),
        (r#"{"m\u0061chine":{"\u0074\u0065\u006d\u0070\u00e9\u0072\u0061\u0074\u0075\u0072\u0065":30}}"#, Some(hot)),
        (r#"{"machine":{"temp\u00e9rature":30,"température":20}}"#, Some(0)),
        (r#"{"machine":{"temp\u00c3\u00a9rature":30}}"#, Some(0)),
        (r#"{"machine":{"temp\u00e8rature":30}}"#, Some(0)),
        (r#"{"machine":{"temperature":30}}"#, Some(0)),
        (r#"{"\ud83c\udf21":30}"#, Some(thermometer)),
        (r#"{"\uD83C\uDF21":30}"#, Some(thermometer)),
        (r#"{"🌡":30}"#, Some(thermometer)),
        (r#"{"\ud83c\udf22":30}"#, Some(0)),
        (r#"{"temp\u00e9rature ext\u00e9rieure":30}"#, Some(outside)),
        (r#"{"température extérieure":30}"#, Some(outside)),
        (r#"{"\ud83c":30}"#, None),
        (r#"{"\udf21":30}"#, None),
        (r#"{"\udf21\ud83c":30}"#, None),
        (r#"{"\ud83c\u0041":30}"#, None),
        (r#"{"\ud83c\ud83c":30}"#, None),
        (r#"{"\ud83c":30,"🌡":30}"#, None),
    ] {
        let got = match decide_rules(doc.as_bytes(), &r) {
            Matched::Rules(mask) => Some(mask),
            Matched::Drop(Reason::NoRuleMatched) => Some(0),
            Matched::Drop(Reason::Malformed(_)) => None,
            other => panic!("{other:?} for {doc}"),
        };
        assert_eq!(got, want, "{doc}");
        check(doc.as_bytes(), &r);
    }
}

/// Keys the generated documents and paths share: ASCII, non-ASCII of two, three and four bytes
/// in UTF-8 (the last a surrogate pair when escaped), characters System.Text.Json escapes, and
/// one too long for the scanner's one fixed read.
const KEYS: [&str; 11] =
    ["a", "b", "machine", "temperature", "a.b", "t", "température", "温度", "🌡", "a<b+c", "température extérieure"];

/// How a document writes a key.
#[derive(Clone, Copy, Debug)]
enum Spelling {
    /// As serde_json writes it: non-ASCII as raw UTF-8.
    Plain,
    /// Every character as `\uxxxx`, surrogate pairs beyond the BMP.
    Escaped,
    /// As System.Text.Json (the C# default) writes it: non-ASCII and `<>&'+` as `\uXXXX`.
    SystemTextJson,
    /// With a lone or misordered surrogate: no key at all, the document is malformed.
    BadSurrogate(u8),
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        20 => Just(Spelling::Plain),
        8 => Just(Spelling::Escaped),
        8 => Just(Spelling::SystemTextJson),
        1 => (0u8..5).prop_map(Spelling::BadSurrogate),
    ]
}

fn json_key(key: &str, spelling: Spelling) -> String {
    let units = |c: char, upper: bool| -> String {
        let mut buf = [0; 2];
        c.encode_utf16(&mut buf)
            .iter()
            .map(|u| if upper { format!("\\u{u:04X}") } else { format!("\\u{u:04x}") })
            .collect()
    };
    match spelling {
        Spelling::Plain => serde_json::to_string(key).unwrap(),
        Spelling::Escaped => format!("\"{}\"", key.chars().map(|c| units(c, false)).collect::<String>()),
        Spelling::SystemTextJson => {
            let plain = serde_json::to_string(key).unwrap();
            plain
                .chars()
                .map(|c| if c.is_ascii() && !"<>&'+".contains(c) { c.to_string() } else { units(c, true) })
                .collect()
        }
        Spelling::BadSurrogate(how) => {
            let bad = [r"\ud83c", r"\udf21", r"\udf21\ud83c", r"\ud83c\u0041", r"\ud83c\ud83c"][usize::from(how)];
            let plain = serde_json::to_string(key).unwrap();
            format!("\"{bad}{}", &plain[1..])
        }
    }
}

/// Numbers, a few of them out of range or not JSON (which makes the whole document malformed).
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (-40i64..60).prop_map(|n| n.to_string()),
        8 => (-4000i64..6000).prop_map(|n| format!("{}.{:02}", n / 100, (n % 100).abs())),
        2 => Just("-0".to_string()),
        2 => Just("1.5".to_string()),
        2 => Just("25".to_string()),
        2 => Just("2.5e1".to_string()),
        2 => Just("18446744073709551616".to_string()),
        1 => Just("1e400".to_string()),
        1 => Just("01".to_string()),
    ]
}

/// An object of up to four members of the shared keys, in any spelling.
fn object(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop::collection::vec((0..KEYS.len(), spelling(), value), 0..5).prop_map(|members| {
        let body: Vec<String> = members.iter().map(|(k, e, v)| format!("{}:{v}", json_key(KEYS[*k], *e))).collect();
        format!("{{{}}}", body.join(","))
    })
}

/// Documents that are mostly objects, mostly of numbers and objects. Few of them hold a rule's
/// path: [`rules_and_document_along_their_paths`] lays documents along the paths instead.
fn document() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => number(),
        1 => Just("\"x\"".to_string()),
        1 => Just("true".to_string()),
        1 => Just("null".to_string()),
        1 => Just("[]".to_string()),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            3 => object(inner.clone()),
            1 => prop::collection::vec(inner, 0..3).prop_map(|items| format!("[{}]", items.join(","))),
        ]
    });
    prop_oneof![9 => object(value.clone()), 1 => value]
}

/// Rule sets on paths of the shared keys, and some whose every path is the tutorial's (decided by
/// the tutorial's own scanner).
fn rule_set() -> impl Strategy<Value = Rules> {
    let length = prop_oneof![3 => Just(1), 2 => Just(2), 1 => Just(3)];
    let path = length
        .prop_flat_map(|n| prop::collection::vec(0..KEYS.len(), n))
        .prop_map(|ks| ks.iter().map(|&k| KEYS[k].replace('.', "\\.")).collect::<Vec<_>>().join("."));
    let path = prop_oneof![6 => path, 1 => Just("machine.temperature".to_string())];
    let value = prop_oneof![Just(0.0), Just(1.5), Just(25.0), Just(-1.0), Just(-0.0)];
    let sets = prop::collection::vec((path, 0..Op::ALL.len(), value), 1..7);
    let tutorial_only = prop::collection::vec(
        (Just("machine.temperature".to_string()), 0..Op::ALL.len(), prop_oneof![Just(25.0), Just(0.0), Just(-0.0)]),
        1..4,
    );
    prop_oneof![4 => sets, 1 => tutorial_only].prop_map(|rs| {
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

/// A rule set and a document laid out along its own paths, each key in any spelling, the paths
/// in members of the top-level object (a later one with the same first key replaces an earlier),
/// so that most rules find a number and the spellings decide.
fn rules_and_document_along_their_paths() -> impl Strategy<Value = (Rules, String)> {
    rule_set().prop_flat_map(|rules| {
        let members: Vec<_> = rules
            .rules
            .iter()
            .map(|r| {
                let path = r.path.clone();
                (prop::collection::vec(spelling(), path.len()), number()).prop_map(move |(spellings, n)| {
                    let nested = path
                        .iter()
                        .zip(spellings)
                        .rev()
                        .fold(n, |inner, (key, s)| format!("{{{}:{inner}}}", json_key(key, s)));
                    nested[1..nested.len() - 1].to_string()
                })
            })
            .collect();
        (Just(rules), members).prop_map(|(rules, members)| (rules, format!("{{{}}}", members.join(","))))
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

    #[test]
    fn documents_along_the_rules_paths_agree_with_the_reference((rules, doc) in rules_and_document_along_their_paths(), cut in any::<prop::sample::Index>()) {
        check(doc.as_bytes(), &rules);
        check(&doc.as_bytes()[..cut.index(doc.len().max(1))], &rules);
    }
}
