//! What an aggregate does not count, reason by reason, and groups at the cap.
//!
//! Each drop reason (docs/aggregates.md, "What does not count") has a test that feeds readings
//! which should count beside readings which should not, then checks the count of every reason
//! (so a reading counted under the wrong one fails) and the windows sent (so a reading dropped
//! that should count, or counted that should not, fails). Event-time cases keep their readings in
//! time order and within `lateSeconds` of each other, and close their windows with a clock far
//! ahead, so that they hold whatever the watermark's rule for the clock.
//!
//! Groups at the cap (at most 1,000 open per aggregate; a group closes with its last window) are
//! checked against a model written from the docs: around 1,000 group keys read in random order
//! over a few windows, the windows closing as the clock passes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefilter::aggregate::time::format_iso;
use edgefilter::aggregate::{AggregateSet, Aggregator, Emitted};
use proptest::prelude::*;
use serde_json::{json, Value};

/// 2026-12-02T07:18:30Z, on a half minute: 10-s and 30-s windows start here.
const T0: i64 = 1_796_195_910_000;

fn set(v: Value) -> Arc<AggregateSet> {
    Arc::new(AggregateSet::parse(v.as_object().expect("an object")).expect("a valid set"))
}

/// A tumbling arrival-time aggregate of `v` with `count` and `sum`, and `extra` fields.
fn def(seconds: i64, extra: Value) -> Value {
    let mut a = json!({"path": "v", "window": {"kind": "tumbling", "seconds": seconds}, "functions": "count,sum", "output": "agg"});
    for (k, v) in extra.as_object().expect("an object") {
        a[k] = v.clone();
    }
    a
}

/// The readings not counted, per aggregate and reason: only the reasons with any.
fn dropped(agg: &Aggregator) -> BTreeMap<(String, &'static str), u64> {
    agg.dropped().filter(|&(_, _, n)| n > 0).map(|(a, d, n)| ((a.to_string(), d.name()), n)).collect()
}

fn reasons<const N: usize>(want: [(&str, &'static str, u64); N]) -> BTreeMap<(String, &'static str), u64> {
    want.into_iter().map(|(a, d, n)| ((a.to_string(), d), n)).collect()
}

/// A window sent: its aggregate, end, group (JSON text, empty without `groupBy`), count and sum.
type Window = (String, String, String, u64, f64);

fn windows(sent: &[Emitted]) -> Vec<Window> {
    sent.iter()
        .map(|e| {
            let b: Value = serde_json::from_str(&e.body).expect("a summary");
            let group = b.get("group").map_or(String::new(), Value::to_string);
            let end = b["windowEnd"].as_str().expect("an end").to_string();
            (
                e.aggregate.clone(),
                end,
                group,
                b["count"].as_u64().expect("a count"),
                b["sum"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

fn window(aggregate: &str, end: i64, group: &str, count: u64, sum: f64) -> Window {
    (aggregate.to_string(), format_iso(end), group.to_string(), count, sum)
}

/// Folds each message (its time, its id, its body) as the session does, closing after each; then
/// closes at `end`. Returns what was sent.
fn run(agg: &mut Aggregator, messages: &[(i64, Option<&str>, &str)], end: i64) -> Vec<Emitted> {
    let mut sent = Vec::new();
    for &(now, id, body) in messages {
        // A body that is not JSON is an error here, and counted (`malformed`).
        let _ = agg.fold(body.as_bytes(), id.map(str::as_bytes), now);
        sent.extend(agg.close(now));
    }
    sent.extend(agg.close(end));
    sent
}

/// The windows sent, in a fixed order (by aggregate, end, group).
fn sorted(sent: &[Emitted]) -> Vec<Window> {
    let mut w = windows(sent);
    w.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    w
}

const DAY: i64 = 86_400_000;

#[test]
fn readings_without_a_number_at_the_path_count_as_no_value() {
    let mut agg = Aggregator::new(set(json!({"A": def(10, json!({}))})), T0);
    let now = T0 + 1000;
    let bodies = [
        r#"{"v": 2.5}"#,
        r#"{"w": 1}"#,
        r#"{"v": "3"}"#,
        r#"{"v": null}"#,
        r#"{"v": {"v": 4}}"#,
        r#"{"v": [5]}"#,
        r#"{"v": true}"#,
        r#"[{"v": 6}]"#,
        r#"7"#,
        r#"{"v": -1}"#,
    ];
    let messages: Vec<_> = bodies.iter().map(|&b| (now, None, b)).collect();
    let sent = run(&mut agg, &messages, T0 + DAY);
    assert_eq!(sorted(&sent), [window("A", T0 + 10_000, "", 2, 1.5)]);
    assert_eq!(dropped(&agg), reasons([("A", "no_value", 8)]), "JSON without a number at v is no_value, not malformed");
}

#[test]
fn bodies_that_are_not_json_count_as_malformed_in_every_aggregate() {
    let mut agg = Aggregator::new(set(json!({"A": def(10, json!({})), "G": def(10, json!({"groupBy": "g"}))})), T0);
    let now = T0 + 1000;
    let bad: [&[u8]; 9] = [
        br#"{"v": 2, "g": "a""#,
        b"v=2",
        b"",
        br#"{"v": 2, "g": "a",}"#,
        br#"{"v": 2, "g": "a"} {"v": 2}"#,
        br#"{"v": 1e400, "g": "a"}"#,
        b"{\"v\": 2, \"g\": \"\xff\"}",
        br#"{'v': 2, 'g': 'a'}"#,
        br#"{"v": 02, "g": "a"}"#,
    ];
    agg.fold(br#"{"v": 1, "g": "a"}"#, None, now).expect("JSON");
    for b in bad {
        assert!(agg.fold(b, None, now).is_err(), "{}", String::from_utf8_lossy(b));
    }
    agg.fold(br#"{"v": 4, "g": "a"}"#, None, now).expect("JSON");
    let sent = agg.close(T0 + DAY);
    assert_eq!(sorted(&sent), [window("A", T0 + 10_000, "", 2, 5.0), window("G", T0 + 10_000, "\"a\"", 2, 5.0)]);
    assert_eq!(dropped(&agg), reasons([("A", "malformed", 9), ("G", "malformed", 9)]));
}

/// Event times: ISO-8601 in UTC (`Z` or `+00:00`, up to 9 fraction digits) or epoch seconds as a
/// number. Anything else is `no_time` for the event-time aggregate, and nothing to the one that
/// uses arrival time.
#[test]
fn readings_without_a_usable_event_time_count_as_no_time() {
    let event = def(30, json!({"time": {"path": "t", "lateSeconds": 5}}));
    let mut agg = Aggregator::new(set(json!({"A": def(30, json!({})), "E": event})), T0);
    // Every time within 5 s of the clock and of each other, in order: none is late whatever the
    // watermark's rule for the clock.
    let now = T0 + 5000;
    let bodies = [
        r#"{"v": 1, "t": "2026-12-02T07:18:31Z"}"#,
        r#"{"v": 2}"#,
        r#"{"v": 2, "t": true}"#,
        r#"{"v": 2, "t": null}"#,
        r#"{"v": 2, "t": {"t": "2026-12-02T07:18:31Z"}}"#,
        r#"{"v": 2, "t": ["2026-12-02T07:18:31Z"]}"#,
        r#"{"v": 2, "t": "yesterday"}"#,
        r#"{"v": 2, "t": "2026-12-02T07:18:32"}"#,
        r#"{"v": 2, "t": "2026-12-02T08:18:32+01:00"}"#,
        r#"{"v": 2, "t": "2026-12-02T07:18:32.1234567891Z"}"#,
        r#"{"v": 2, "t": "2026-02-30T07:18:32Z"}"#,
        r#"{"v": 2, "t": "1796195912"}"#,
        r#"{"v": 4, "t": "2026-12-02T07:18:32.5+00:00"}"#,
        r#"{"v": 8, "t": 1796195913.25}"#,
        r#"{"v": 16, "t": "2026-12-02T07:18:34.123456789Z"}"#,
    ];
    let messages: Vec<_> = bodies.iter().map(|&b| (now, None, b)).collect();
    let sent = run(&mut agg, &messages, T0 + DAY);
    assert_eq!(
        sorted(&sent),
        [window("A", T0 + 30_000, "", 15, 51.0), window("E", T0 + 30_000, "", 4, 29.0)],
        "E counts the four readings with a time, A all of them"
    );
    assert_eq!(dropped(&agg), reasons([("E", "no_time", 11)]));
}

/// Group keys are strings or numbers (`7` and `7.0` are one group, the string `"7"` another);
/// anything else is `no_group` for the aggregate with `groupBy`, and nothing to one without.
#[test]
fn readings_without_a_usable_group_key_count_as_no_group() {
    let mut agg = Aggregator::new(set(json!({"A": def(10, json!({})), "G": def(10, json!({"groupBy": "g"}))})), T0);
    let now = T0 + 1000;
    let bodies = [
        r#"{"v": 1, "g": "m1"}"#,
        r#"{"v": 2, "g": 7}"#,
        r#"{"v": 4, "g": "7"}"#,
        r#"{"v": 8, "g": 7.0}"#,
        r#"{"v": 16, "g": "m\u0031"}"#,
        r#"{"v": 32}"#,
        r#"{"v": 64, "g": {"g": "m1"}}"#,
        r#"{"v": 128, "g": ["m1"]}"#,
        r#"{"v": 256, "g": null}"#,
        r#"{"v": 512, "g": true}"#,
        r#"{"v": 1024, "g": 2.5}"#,
    ];
    let messages: Vec<_> = bodies.iter().map(|&b| (now, None, b)).collect();
    let sent = run(&mut agg, &messages, T0 + DAY);
    let end = T0 + 10_000;
    assert_eq!(
        sorted(&sent),
        [
            window("A", end, "", 11, 2047.0),
            window("G", end, "\"7\"", 1, 4.0),
            window("G", end, "\"m1\"", 2, 17.0),
            window("G", end, "2.5", 1, 1024.0),
            window("G", end, "7", 2, 10.0),
        ]
    );
    assert_eq!(dropped(&agg), reasons([("G", "no_group", 5)]));
}

/// Early: an event time more than 5 minutes (300,000 ms) ahead of the clock, after rounding up to
/// the millisecond. Exactly 5 minutes ahead counts.
#[test]
fn event_times_more_than_five_minutes_ahead_count_as_early() {
    let mut agg = Aggregator::new(set(json!({"E": def(60, json!({"time": {"path": "t", "lateSeconds": 5}}))})), T0);
    let now = T0 + 30_000; // 07:19:00Z, a minute's start
    let ahead = now + 300_000; // a window's end
    let iso = |ms: i64| format!(r#""{}""#, format_iso(ms));
    let body = |v: i64, t: String| format!(r#"{{"v": {v}, "t": {t}}}"#);
    let sub_ms = format!(r#""{}""#, format_iso(ahead).replace('Z', ".0000001Z"));
    let messages = [
        (now, body(1, iso(ahead))),
        (now, body(2, iso(ahead + 1))),
        (now, body(4, sub_ms)), // rounded up to ahead + 1
        (now, body(8, format!("{}", ahead / 1000))),
        (now, body(16, format!("{}.001", ahead / 1000))),
        (now + 1, body(32, iso(ahead + 1))), // the clock moved on a millisecond
        (now + 1, body(64, iso(ahead + 2))),
    ];
    let messages: Vec<_> = messages.iter().map(|(now, b)| (*now, None, b.as_str())).collect();
    let sent = run(&mut agg, &messages, now + DAY);
    assert_eq!(sorted(&sent), [window("E", ahead, "", 2, 9.0), window("E", ahead + 60_000, "", 1, 32.0)]);
    assert_eq!(dropped(&agg), reasons([("E", "early", 4)]));
}

/// After a live change, the changed aggregates open their first window at the next hop boundary;
/// a reading only in earlier windows is `before_start`. The unchanged aggregate counts it.
#[test]
fn readings_in_windows_before_a_change_count_as_before_start() {
    let event = |late: i64| def(10, json!({"time": {"path": "t", "lateSeconds": late}}));
    let before = json!({"A": def(10, json!({})), "E": event(30), "U": def(10, json!({}))});
    let hopping = json!({"path": "v", "window": {"kind": "hopping", "seconds": 20, "hopSeconds": 10}, "functions": "count,sum", "output": "agg"});
    let after = json!({"A": hopping, "E": event(20), "U": def(10, json!({}))});
    let mut agg = Aggregator::new(set(before), T0);
    let at = |ms: i64, v: i64| (T0 + ms, format!(r#"{{"v": {v}, "t": "{}"}}"#, format_iso(T0 + ms)));
    let (now, first) = at(1000, 1);
    let mut sent = run(&mut agg, &[(now, None, &first)], now);
    let change = T0 + 3000;
    let log = agg.apply(set(after), change);
    assert_eq!(
        log,
        [
            r#"Aggregates: "A" changed: 1 open windows discarded; new windows from 2026-12-02T07:18:33Z"#,
            r#"Aggregates: "E" changed: 1 open windows discarded; new windows from 2026-12-02T07:18:33Z"#,
        ]
    );
    // Times in order and within 20 s of each other: none is late.
    let messages = [
        at(4000, 2),    // in (T0, T0 + 10 s]: before A's and E's first window
        at(10_000, 4),  // that window's end: still before
        at(10_001, 8),  // the first window's first millisecond
        at(25_000, 32), // a later window
    ];
    let messages: Vec<_> = messages.iter().map(|(now, b)| (*now, None, b.as_str())).collect();
    sent.extend(run(&mut agg, &messages, T0 + DAY));
    assert_eq!(
        sorted(&sent),
        [
            // Hopping 20 s every 10 s from T0 + 10 s: the window (T0, T0 + 20 s] started before.
            window("A", T0 + 30_000, "", 2, 40.0),
            window("A", T0 + 40_000, "", 1, 32.0),
            window("E", T0 + 20_000, "", 1, 8.0),
            window("E", T0 + 30_000, "", 1, 32.0),
            window("U", T0 + 10_000, "", 3, 7.0),
            window("U", T0 + 20_000, "", 1, 8.0),
            window("U", T0 + 30_000, "", 1, 32.0),
        ]
    );
    assert_eq!(dropped(&agg), reasons([("A", "before_start", 2), ("E", "before_start", 2)]));
}

/// A message id seen lately counts once, in every aggregate, whatever the first one held (a
/// malformed message's redelivery is a duplicate, not malformed again); no id counts every time.
#[test]
fn a_message_id_seen_before_counts_as_duplicate() {
    let mut agg = Aggregator::new(set(json!({"A": def(10, json!({})), "G": def(10, json!({"groupBy": "g"}))})), T0);
    let now = T0 + 1000;
    let messages = [
        (now, Some("m1"), r#"{"v": 1, "g": "a"}"#),
        (now, Some("m2"), r#"{"v": 2, "g": "a"}"#),
        (now, Some("m1"), r#"{"v": 1, "g": "a"}"#),
        (now, Some("m3"), r#"{"v": 1, "g": "a""#),
        (now, Some("m3"), r#"{"v": 1, "g": "a""#),
        (now, Some("m4"), r#"{"w": 1, "g": "a"}"#),
        (now, Some("m4"), r#"{"v": 4, "g": "a"}"#),
        (now, None, r#"{"v": 8, "g": "b"}"#),
        (now, None, r#"{"v": 8, "g": "b"}"#),
        (now, Some("m2"), r#"{"v": 2, "g": "a"}"#),
        (T0 + 11_000, Some("m1"), r#"{"v": 1, "g": "a"}"#), // after its window closed
        (T0 + 11_000, Some("m5"), r#"{"v": 16, "g": "a"}"#),
    ];
    let sent = run(&mut agg, &messages, T0 + DAY);
    assert_eq!(
        sorted(&sent),
        [
            window("A", T0 + 10_000, "", 4, 19.0),
            window("A", T0 + 20_000, "", 1, 16.0),
            window("G", T0 + 10_000, "\"a\"", 2, 3.0),
            window("G", T0 + 10_000, "\"b\"", 2, 16.0),
            window("G", T0 + 20_000, "\"a\"", 1, 16.0),
        ]
    );
    let each = |a| [(a, "duplicate", 5), (a, "malformed", 1), (a, "no_value", 1)];
    let want: BTreeMap<_, _> = reasons(each("A")).into_iter().chain(reasons(each("G"))).collect();
    assert_eq!(dropped(&agg), want);
}

/// The most groups open in one aggregate (docs/aggregates.md, `groupBy`).
const MAX_GROUPS: usize = 1000;

/// The documented rules for an arrival-time window of `hops` hops with `groupBy`: a reading of a
/// group that is not open, while 1,000 are, is `too_many_groups`; a group is open while one of its
/// windows holding a reading has not closed; a window closes when the clock passes its end.
struct Model {
    hop: i64,
    hops: i64,
    first_start: i64,
    /// Windows ending at or before this have closed.
    closed: i64,
    /// The open groups, by key (as JSON text): count and sum per pane (pane j: (j·hop, (j+1)·hop]).
    groups: BTreeMap<String, BTreeMap<i64, (u64, i64)>>,
    too_many_groups: u64,
    before_start: u64,
}

impl Model {
    fn new(hop: i64, hops: i64, since: i64) -> Model {
        let first_start = (since + hop - 1).div_euclid(hop) * hop;
        let closed = first_start + (hops - 1) * hop;
        Model { hop, hops, first_start, closed, groups: BTreeMap::new(), too_many_groups: 0, before_start: 0 }
    }

    fn fold(&mut self, now: i64, group: &str, value: i64) {
        let pane = (now - 1).div_euclid(self.hop);
        if pane * self.hop < self.first_start {
            self.before_start += 1;
            return;
        }
        // Closed by the clock, sent or not: a window ending at or before the last end it passed.
        let passed = self.closed.max((now - 1).div_euclid(self.hop) * self.hop);
        let open = |p: &BTreeMap<i64, (u64, i64)>| p.keys().any(|&j| (j + self.hops) * self.hop > passed);
        let open_groups = self.groups.values().filter(|p| open(p)).count();
        if !self.groups.contains_key(group) && open_groups >= MAX_GROUPS {
            self.too_many_groups += 1;
            return;
        }
        let (count, sum) = self.groups.entry(group.to_string()).or_default().entry(pane).or_default();
        *count += 1;
        *sum += value;
    }

    /// The windows the clock at `now` has closed, oldest first, groups in key order: (end, group,
    /// count, sum).
    fn close(&mut self, now: i64) -> Vec<(String, String, u64, f64)> {
        let last = (now - 1).div_euclid(self.hop) * self.hop;
        let mut out = Vec::new();
        if last <= self.closed {
            return out;
        }
        // The last window any reading is in, for a clock that jumped ahead.
        let newest =
            self.groups.values().filter_map(|p| p.keys().next_back()).max().map_or(0, |j| (j + self.hops) * self.hop);
        let mut end = self.closed + self.hop;
        while end <= last.min(newest) {
            let panes = end / self.hop - self.hops..end / self.hop;
            for (group, p) in &self.groups {
                let (count, sum) = p.range(panes.clone()).fold((0, 0), |(c, s), (_, &(n, x))| (c + n, s + x));
                if count > 0 {
                    out.push((format_iso(end), group.clone(), count, sum as f64));
                }
            }
            end += self.hop;
        }
        self.closed = self.closed.max(last);
        let hops = self.hops;
        let hop = self.hop;
        for p in self.groups.values_mut() {
            p.retain(|&j, _| (j + hops) * hop > last);
        }
        self.groups.retain(|_, p| !p.is_empty());
        out
    }
}

/// Group key `i` as JSON text: the numbers 0, 1, … and the strings "0", "1", … (a number and the
/// string of its digits are two groups).
fn key(i: usize) -> String {
    if i.is_multiple_of(2) {
        (i / 2).to_string()
    } else {
        format!("\"{}\"", i / 2)
    }
}

/// One case: how many keys, hops per window, the start's offset from a hop boundary, and the
/// readings (ms since the last one, key, value). The keys come in rounds, each a shuffle of all
/// of them, so that a window that holds a whole round of more than 1,000 keys meets the cap.
fn cap_case() -> impl Strategy<Value = (i64, i64, Vec<(i64, usize, i64)>)> {
    (900usize..1100, 1i64..=2, 9_500i64..=10_000, 3usize..6).prop_flat_map(|(keys, hops, offset, rounds)| {
        let round = Just((0..keys).collect::<Vec<usize>>()).prop_shuffle();
        // About 2,000 readings per 10-s hop, and now and then a pause of seconds.
        let advance = prop_oneof![2000 => 0i64..10, 1 => 5000i64..25_000];
        let steps = prop::collection::vec((advance, -50i64..50), keys * rounds);
        (Just(hops), Just(offset), prop::collection::vec(round, rounds), steps).prop_map(
            |(hops, offset, rounds, steps)| {
                let readings = rounds.concat().into_iter().zip(steps).map(|(k, (dt, v))| (dt, k, v)).collect();
                (hops, offset, readings)
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Groups at the cap: which readings count, which are `too_many_groups` or `before_start`,
    /// and every window's count and sum per group, as the model says, with the clock closing
    /// windows mid-stream.
    #[test]
    fn groups_at_the_cap_match_the_model((hops, offset, readings) in cap_case()) {
        let hop = 10_000;
        let window = json!({"kind": "hopping", "seconds": hops * 10, "hopSeconds": 10});
        let window = if hops == 1 { json!({"kind": "tumbling", "seconds": 10}) } else { window };
        let since = T0 + offset;
        let mut agg = Aggregator::new(set(json!({"G": def(10, json!({"groupBy": "g", "window": window}))})), since);
        let mut model = Model::new(hop, hops, since);
        let mut now = since;
        let mut compared = 0;
        let mut check = |agg: &mut Aggregator, model: &mut Model, now: i64| -> Result<(), TestCaseError> {
            let got: Vec<_> = windows(&agg.close(now)).into_iter().map(|(_, end, g, n, s)| (end, g, n, s)).collect();
            let want = model.close(now);
            prop_assert_eq!(&got, &want, "at {}", now);
            compared += got.len();
            Ok(())
        };
        for &(dt, k, v) in &readings {
            now += dt;
            // Folded, then closed, as the session does: a group whose windows the clock has
            // passed no longer counts against the cap, though its windows are sent only by the
            // close that follows.
            agg.fold(format!(r#"{{"v": {v}, "g": {}}}"#, key(k)).as_bytes(), None, now).expect("JSON");
            model.fold(now, &key(k), v);
            check(&mut agg, &mut model, now)?;
        }
        check(&mut agg, &mut model, now + DAY)?;
        prop_assert!(compared > 0, "windows were sent");
        prop_assert!(model.groups.is_empty(), "every window closed");
        let want = reasons([("G", "too_many_groups", model.too_many_groups), ("G", "before_start", model.before_start)]);
        let want: BTreeMap<_, _> = want.into_iter().filter(|&(_, n)| n > 0).collect();
        prop_assert_eq!(dropped(&agg), want);
    }
}
