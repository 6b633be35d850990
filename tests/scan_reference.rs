//! The scanner against the reference: for every body, `scan` must agree with a full serde_json
//! parse (`Value`, correctly rounded floats) on whether it alerts and on the temperature.

use std::sync::Arc;

use edgefilter::aggregate::{AggregateSet, Aggregator};
use edgefilter::filter::{decide, decide_rules, decide_rules_scanned, decide_scanned, Decision, Reason};
use edgefilter::rules::Rules;
use edgefilter::rules::{Matcher, MAX_RULES};
use edgefilter::scan::{scan, scan_in_place, scan_paths_strings, scan_with_top_member, Malformed, Missing, Scan};
use proptest::prelude::*;

/// The reference: serde_json's `Value`, then `machine.temperature` as f64.
fn reference(doc: &[u8]) -> Option<Option<f64>> {
    let v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    Some(v.get("machine").and_then(|m| m.as_object()).and_then(|m| m.get("temperature")).and_then(|t| t.as_f64()))
}

/// Two answers are the same: the same variant and reason, and a temperature to the bit.
fn assert_same(a: Scan, b: Scan, context: &str) {
    match (a, b) {
        (Scan::Temperature(a), Scan::Temperature(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{context}"),
        (a, b) => assert_eq!(a, b, "{context}"),
    }
}

fn check(doc: &[u8]) {
    let ours = scan(doc);
    // A document too long to copy is read in place: the same answer.
    assert_same(scan_in_place(doc), ours, &format!("read in place and copied, {:?}", String::from_utf8_lossy(doc)));
    let want = reference(doc);
    match (ours, want) {
        (Scan::Malformed(_), None) => {}
        (Scan::Temperature(t), Some(Some(r))) => {
            assert_eq!(t.to_bits(), r.to_bits(), "{:?}", String::from_utf8_lossy(doc))
        }
        (Scan::Missing(_), Some(None)) => {}
        (ours, want) => panic!("scan {ours:?} but reference {want:?} for {:?}", String::from_utf8_lossy(doc)),
    }
    for threshold in [25.0, -1.0e300, 0.0, 1e300] {
        let alert = matches!(want, Some(Some(t)) if t > threshold);
        assert_eq!(
            decide(doc, threshold) == Decision::Alert,
            alert,
            "{:?} @ {threshold}",
            String::from_utf8_lossy(doc)
        );
    }
    shared_scans_decide_alike(doc);
    top_member_agrees_with_the_paths_scan(doc);
}

/// `scan_with_top_member` reads `machine.temperature` as `scan` does and the top-level member as
/// `scan_paths_strings` does.
fn top_member_agrees_with_the_paths_scan(doc: &[u8]) {
    let context = String::from_utf8_lossy(doc);
    let (found, member) = scan_with_top_member(doc, b"timeCreated");
    assert_same(found, scan(doc), &format!("the decision, {context:?}"));
    let paths = [vec!["machine".to_string(), "temperature".to_string()], vec!["timeCreated".to_string()]];
    let matcher = Matcher::new(paths.iter().map(Vec::as_slice));
    let (mut values, mut strings) = ([f64::NAN; MAX_RULES], [None; MAX_RULES]);
    match scan_paths_strings(doc, &matcher, &mut values, &mut strings) {
        Err(_) => assert!(matches!(found, Scan::Malformed(_)), "{context:?}"),
        Ok(()) => {
            let slot = usize::from(matcher.slot_of[1]);
            assert_eq!(member.number.to_bits(), values[slot].to_bits(), "{context:?}");
            assert_eq!(member.string, strings[slot], "{context:?}");
        }
    }
}

/// Aggregate sets whose one scan of a body also serves the filter's decision: one on the
/// tutorial's path, one on another path (the tutorial's is added as a slot), and 16 paths that
/// leave no room for it (the decision scans on its own).
fn aggregators() -> Vec<Aggregator> {
    let one = |path: &str| serde_json::json!({"path": path, "window": {"kind": "tumbling", "seconds": 30}, "functions": ["count"], "output": "o"});
    let sets = [
        serde_json::json!({"t": one("machine.temperature")}),
        serde_json::json!({"p": one("machine.pressure"), "g": one("machine.temperature.x")}),
        serde_json::json!({"tutorial": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 30},
            "functions": ["avg"], "time": {"path": "timeCreated"}, "output": "o"}}),
        serde_json::Value::Object((0..16).map(|i| (format!("a{i}"), one(&format!("machine.p{i}")))).collect()),
    ];
    sets.iter().map(|v| Aggregator::new(Arc::new(AggregateSet::parse(v.as_object().unwrap()).unwrap()), 0)).collect()
}

thread_local! {
    static AGGREGATORS: std::cell::RefCell<Vec<Aggregator>> = std::cell::RefCell::new(aggregators());
    static TUTORIAL_RULES: Rules = Rules::parse(serde_json::json!({
        "hot": {"path": "machine.temperature", "op": ">", "value": 25, "output": "o"},
        "cold": {"path": "machine.temperature", "op": "<=", "value": -3.5, "output": "o"},
    }).as_object().unwrap()).unwrap();
}

/// The decision from the aggregates' scan is the decision from the filter's own.
fn shared_scans_decide_alike(doc: &[u8]) {
    AGGREGATORS.with_borrow_mut(|aggregators| {
        for (i, a) in aggregators.iter_mut().enumerate() {
            let scanned = a.scan(doc);
            let t = a.temperature(scanned);
            if matches!(t, None | Some(Ok(_))) {
                assert_eq!(
                    t.is_none(),
                    a.set.aggregates.len() == 16,
                    "only the 16-path set leaves no slot for the tutorial's path"
                );
            }
            for threshold in [25.0, -1.0e300, 0.0, 1e300] {
                let context = format!("set {i}, {:?} @ {threshold}", String::from_utf8_lossy(doc));
                assert_eq!(decide_scanned(doc, t, threshold), decide(doc, threshold), "{context}");
            }
            TUTORIAL_RULES.with(|rules| {
                assert_eq!(
                    decide_rules_scanned(doc, t, rules),
                    decide_rules(doc, rules),
                    "set {i}, {:?}",
                    String::from_utf8_lossy(doc)
                );
            });
        }
    });
}

const SENSOR: &str = r#"{"machine":{"temperature":25.59846067945704,"pressure":1.523875267279916},"ambient":{"temperature":21.139304866042014,"humidity":26},"timeCreated":"2026-11-26T07:06:23.7813658Z"}"#;

#[test]
fn named_cases_agree_with_the_reference() {
    let deep_ok = format!("{{\"machine\":{{\"temperature\":30}},\"x\":{}{}}}", "[".repeat(126), "]".repeat(126));
    let deep_bad = format!("{{\"machine\":{{\"temperature\":30}},\"x\":{}{}}}", "[".repeat(127), "]".repeat(127));
    let cases: Vec<(&str, String, Scan)> = vec![
        ("sensor message", SENSOR.into(), Scan::Temperature(25.59846067945704)),
        ("escaped key", r#"{"machine":{"temp\u0065rature":26}}"#.into(), Scan::Temperature(26.0)),
        ("escaped machine", r#"{"m\u0061chine":{"temperature":26}}"#.into(), Scan::Temperature(26.0)),
        (
            "key with escaped quote is another key",
            r#"{"machine":{"temperature\"":26}}"#.into(),
            Scan::Missing(Missing::NoTemperature),
        ),
        (
            "braces in strings",
            r#"{"a":"}{\"machine\":{","machine":{"x":"{\"temperature\":99}","temperature":1}}"#.into(),
            Scan::Temperature(1.0),
        ),
        (
            "nested machine does not count",
            r#"{"a":{"machine":{"temperature":99}}}"#.into(),
            Scan::Missing(Missing::NoMachine),
        ),
        (
            "nested temperature does not count",
            r#"{"machine":{"a":{"temperature":99}}}"#.into(),
            Scan::Missing(Missing::NoTemperature),
        ),
        (
            "duplicate machine, last wins",
            r#"{"machine":{"temperature":99},"machine":{"temperature":1}}"#.into(),
            Scan::Temperature(1.0),
        ),
        (
            "later machine not an object wins",
            r#"{"machine":{"temperature":99},"machine":3}"#.into(),
            Scan::Missing(Missing::MachineNotAnObject),
        ),
        (
            "duplicate temperature, last wins",
            r#"{"machine":{"temperature":99,"temperature":"x"}}"#.into(),
            Scan::Missing(Missing::TemperatureNotANumber),
        ),
        ("top-level array", r#"[{"machine":{"temperature":99}}]"#.into(), Scan::Missing(Missing::NotAnObject)),
        ("exponent", r#"{"machine":{"temperature":2.5e1}}"#.into(), Scan::Temperature(25.0)),
        ("negative zero", r#"{"machine":{"temperature":-0}}"#.into(), Scan::Temperature(-0.0)),
        (
            "huge integer",
            r#"{"machine":{"temperature":123456789012345678901234567890}}"#.into(),
            Scan::Temperature(1.2345678901234568e29),
        ),
        (
            "out of range temperature",
            r#"{"machine":{"temperature":1e400}}"#.into(),
            Scan::Malformed(Malformed::NumberOutOfRange),
        ),
        (
            "out of range elsewhere",
            r#"{"machine":{"temperature":30},"x":-1e309}"#.into(),
            Scan::Malformed(Malformed::NumberOutOfRange),
        ),
        ("tiny underflows to zero", r#"{"machine":{"temperature":1e-400}}"#.into(), Scan::Temperature(0.0)),
        ("leading zero", r#"{"machine":{"temperature":030}}"#.into(), Scan::Malformed(Malformed::InvalidJson)),
        ("bare dot", r#"{"machine":{"temperature":30.}}"#.into(), Scan::Malformed(Malformed::InvalidJson)),
        ("plus sign", r#"{"machine":{"temperature":+30}}"#.into(), Scan::Malformed(Malformed::InvalidJson)),
        ("truncated", SENSOR[..60].into(), Scan::Malformed(Malformed::InvalidJson)),
        ("trailing bytes", format!("{SENSOR}x"), Scan::Malformed(Malformed::InvalidJson)),
        ("trailing whitespace", format!(" \n{SENSOR}\t\r\n "), Scan::Temperature(25.59846067945704)),
        ("trailing comma", r#"{"machine":{"temperature":30},}"#.into(), Scan::Malformed(Malformed::InvalidJson)),
        (
            "control character in string",
            "{\"machine\":{\"temperature\":30},\"a\":\"\u{1}\"}".into(),
            Scan::Malformed(Malformed::InvalidJson),
        ),
        (
            "lone trailing surrogate",
            r#"{"machine":{"temperature":30},"a":"\udc00"}"#.into(),
            Scan::Malformed(Malformed::InvalidJson),
        ),
        (
            "lone leading surrogate",
            r#"{"machine":{"temperature":30},"a":"\ud800x"}"#.into(),
            Scan::Malformed(Malformed::InvalidJson),
        ),
        ("paired surrogates", r#"{"machine":{"temperature":30},"a":"\ud83d\ude00"}"#.into(), Scan::Temperature(30.0)),
        ("bad escape", r#"{"machine":{"temperature":30},"a":"\x"}"#.into(), Scan::Malformed(Malformed::InvalidJson)),
        ("non-ASCII text", r#"{"machine":{"temperature":30},"a":"température °C"}"#.into(), Scan::Temperature(30.0)),
        ("depth 127 is fine", deep_ok, Scan::Temperature(30.0)),
        ("depth 128 is too deep", deep_bad, Scan::Malformed(Malformed::TooDeep)),
        ("literals", r#"{"machine":{"temperature":30,"a":[true,false,null]}}"#.into(), Scan::Temperature(30.0)),
        ("bad literal", r#"{"machine":{"temperature":30,"a":nul}}"#.into(), Scan::Malformed(Malformed::InvalidJson)),
        ("empty", "".into(), Scan::Malformed(Malformed::InvalidJson)),
        (
            "temperature null",
            r#"{"machine":{"temperature":null}}"#.into(),
            Scan::Missing(Missing::TemperatureNotANumber),
        ),
    ];
    for (name, doc, want) in cases {
        let got = scan(doc.as_bytes());
        assert_same(got, want, name);
        check(doc.as_bytes());
    }
}

#[test]
fn invalid_utf8_anywhere_is_malformed() {
    let mut doc = br#"{"machine":{"temperature":30},"a":"xx"}"#.to_vec();
    let at = doc.len() - 3;
    doc[at] = 0xff;
    assert_eq!(scan(&doc), Scan::Malformed(Malformed::InvalidUtf8));
    check(&doc);
    let mut doc = br#"{"machine":{"temperature":30}}"#.to_vec();
    doc.insert(1, 0xc3);
    assert_eq!(scan(&doc), Scan::Malformed(Malformed::InvalidJson));
    check(&doc);
}

/// Around the longest document the scanner copies (65,504 bytes), and after a longer one has left
/// its bytes in the copy buffer: truncations are refused, the whole is found.
#[test]
fn lengths_around_the_copy_limit_and_stale_bytes() {
    let head = r#"{"machine":{"temperature":30.5},"a":""#;
    for len in 65_490..65_520 {
        let doc = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
        assert_eq!(doc.len(), len);
        assert_eq!(scan(doc.as_bytes()), Scan::Temperature(30.5), "length {len}");
        for cut in [len - 1, len - 2, len - 17, len - 40, len / 2, head.len(), head.len() - 1, 1, 0] {
            assert!(matches!(scan(&doc.as_bytes()[..cut]), Scan::Malformed(_)), "length {len} cut at {cut}");
        }
    }
}

/// The temperature's fast path (at most 19 digits, at most 2^53, at most 22 fraction digits) and
/// every way out of it agree with the reference.
#[test]
fn temperatures_at_the_edges_of_the_fast_path() {
    let texts = [
        "0",
        "-0",
        "0.0",
        "-0.0",
        "00",
        "01",
        "1.",
        "1.e5",
        "-",
        "-a",
        ".5",
        "-.5",
        "-.0",
        "-.",
        "-e5",
        "--1",
        "0.5",
        "-0.5",
        "1e5",
        "0.1e1",
        "1E+2",
        "9007199254740992",
        "9007199254740993",
        "900719925474099.3",
        "900719925474099.5",
        "1234567890123456789",
        "12345678901234567890",
        "18446744073709551621",
        "1844674407370955162.1",
        "1.234567890123456789",
        "0.0000000000000000000001",
        "0.00000000000000000000001",
        "3.0000000000000000000001",
        "25.59846067945704",
        "1.7976931348623157e308",
        "1e309",
        "-1e309",
        "123456789012345678901234567890",
        "31.13",
        "31.130",
        "031.13",
        "31.13.1",
        "31..13",
        "2.5E-3",
    ];
    for t in texts {
        check(format!(r#"{{"machine":{{"temperature":{t}}}}}"#).as_bytes());
        check(format!(r#"{{"machine":{{"temperature":{t},"pressure":1}}}}"#).as_bytes());
        check(format!(r#"{{"machine":{{"temperature":{t} }}}}"#).as_bytes());
    }
}

#[test]
fn decision_is_strictly_greater() {
    assert_eq!(decide(br#"{"machine":{"temperature":25}}"#, 25.0), Decision::Drop(Reason::BelowThreshold));
    assert_eq!(decide(br#"{"machine":{"temperature":25.000001}}"#, 25.0), Decision::Alert);
    assert_eq!(decide(b"garbage", 25.0), Decision::Drop(Reason::Malformed(Malformed::InvalidJson)));
}

/// JSON documents with `machine` / `temperature` at random places, random whitespace, escapes
/// and numbers.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f}")),
        any::<i64>().prop_map(|i| i.to_string()),
        (any::<i32>(), -400i32..400, any::<bool>())
            .prop_map(|(m, e, up)| format!("{m}{}{e}", if up { "E" } else { "e" })),
        "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("machine".to_string()),
        Just("temperature".to_string()),
        Just("m\\u0061chine".to_string()),
        Just("temp\\u0065rature".to_string()),
        Just("temperatur\\u00e9".to_string()),
        Just("temp\\u00E9rature".to_string()),
        Just("\\ud83c\\udf21".to_string()),
        Just("timeCreated".to_string()),
        Just("timeCr\\u0065ated".to_string()),
        "[a-z]{0,6}",
        "[a-z\\\\\"{}:,é]{0,6}".prop_map(|s| s.replace('\\', "\\\\").replace('"', "\\\"")),
    ]
}

fn ws() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[ \t\n\r]{1,3}"]
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        number(),
        Just("true".to_string()),
        Just("null".to_string()),
        "[a-z {}\\[\\]:,]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone()), 0..4).prop_map(|v| format!(
                "[{}]",
                v.into_iter().map(|(w, x)| format!("{w}{x}")).collect::<Vec<_>>().join(",")
            )),
            prop::collection::vec((key(), ws(), inner), 0..5).prop_map(|v| format!(
                "{{{}}}",
                v.into_iter().map(|(k, w, x)| format!("\"{k}\"{w}:{w}{x}")).collect::<Vec<_>>().join(",")
            )),
        ]
    })
}

/// A document shaped like telemetry, with the interesting keys more likely at the top.
fn document() -> impl Strategy<Value = String> {
    (prop::collection::vec((key(), ws(), value()), 0..4), prop::collection::vec((key(), number()), 0..3), ws())
        .prop_map(|(top, machine, w)| {
            let inner: Vec<String> = machine.into_iter().map(|(k, n)| format!("\"{k}\":{w}{n}")).collect();
            let mut members = vec![format!("\"machine\":{w}{{{}}}", inner.join(","))];
            members.extend(top.into_iter().map(|(k, w, v)| format!("\"{k}\"{w}:{v}")));
            format!("{w}{{{}}}{w}", members.join(","))
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
}

fn mutate(doc: &str, m: &Mutation) -> Vec<u8> {
    let mut b = doc.as_bytes().to_vec();
    match m {
        Mutation::Truncate(i) => b.truncate(i % (b.len() + 1)),
        Mutation::Flip(i, x) => {
            if !b.is_empty() {
                let i = i % b.len();
                b[i] ^= x;
            }
        }
        Mutation::Insert(i, bytes) => {
            let i = i % (b.len() + 1);
            b.splice(i..i, bytes.iter().copied());
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn generated_documents_agree(doc in document()) {
        check(doc.as_bytes());
    }

    #[test]
    fn mutated_documents_agree(
        doc in document(),
        m in prop_oneof![
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
            (any::<usize>(), prop::collection::vec(any::<u8>(), 1..4)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        ],
    ) {
        check(&mutate(&doc, &m));
    }

    #[test]
    fn arbitrary_bytes_agree(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        check(&bytes);
    }
}
