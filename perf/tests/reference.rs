//! The reference of `replay --aggregates` on hand-computed windows, and the check against it:
//! a right summary matches, a wrong, missing or extra one is a mismatch.

use edgefilter::aggregate::time::format_iso;
use edgefilter::aggregate::AggregateSet;
use edgefilter_perf::check::{check, Summaries};
use edgefilter_perf::reference::{Reference, Run, Tri};
use edgefilter_perf::trace::Message;
use serde_json::{json, Value};

/// 2026-12-02T07:18:30Z, a multiple of 10 s.
const T0: i64 = 1_796_195_910_000;

fn set(v: Value) -> AggregateSet {
    AggregateSet::parse(v.as_object().unwrap()).unwrap()
}

fn message(body: Value) -> Message {
    Message { t: 0.0, properties: Vec::new(), body: body.to_string() }
}

/// Readings (value, event time) sent at `sent`, the patch taken 10 s before T0.
fn event_time(readings: &[(f64, i64)], sent: &[i64]) -> (Vec<Message>, Run) {
    let messages = readings
        .iter()
        .map(|(v, t)| message(json!({"machine": {"temperature": v}, "timeCreated": format_iso(*t)})))
        .collect();
    let run = Run { sent_ms: sent.to_vec(), patch_sent_ms: T0 - 10_000, reported_ms: T0 - 9_990, tolerance_ms: 250 };
    (messages, run)
}

fn stats(window: Value) -> Value {
    json!({"S": {"path": "machine.temperature", "window": window, "time": {"path": "timeCreated", "lateSeconds": 1},
        "functions": "count,sum,avg,min,max,stdev,first,last,p50,p90", "output": "aggregates"}})
}

#[test]
fn event_time_windows_hold_what_a_hand_count_says() {
    // (0, 10] holds 1, the reading exactly at its end, 3, and 2, which comes after it but within
    // lateSeconds; (10, 20] the next two.
    let readings = [(1.0, T0 + 500), (3.0, T0 + 10_000), (2.0, T0 + 9_500), (4.0, T0 + 10_001), (6.0, T0 + 19_000)];
    let sent: Vec<i64> = (0..5).map(|i| T0 - 5_000 + i * 10).collect();
    let (messages, run) = event_time(&readings, &sent);
    let reference = Reference::new(&set(stats(json!({"kind": "tumbling", "seconds": 10}))), &messages, &run);
    let s = &reference.series[0];
    let windows: Vec<i64> = s.windows(T0 + 60_000).into_iter().map(|(_, end)| end - T0).collect();
    assert_eq!(windows, [10_000, 20_000]);
    let first = s.expected("", T0 + 10_000);
    assert!(first.exact());
    let values: Vec<Option<f64>> =
        ["count", "sum", "avg", "min", "max", "stdev", "first", "last", "p50", "p90"].map(|f| first.value(f)).into();
    // first and last by time, not by arrival: 1 at :00.5, 3 at :10 (2 came after it).
    let want = [3.0, 6.0, 2.0, 1.0, 3.0, 1.0, 1.0, 3.0, 2.0, 3.0].map(Some);
    assert_eq!(values, want);
    let second = s.expected("", T0 + 20_000);
    assert_eq!((second.value("count"), second.value("stdev")), (Some(2.0), Some(2f64.sqrt())));
    assert_eq!(s.exists(T0 + 10_000), Tri::Yes);
    // The last reading moves the watermark to 19 − 1 s: (0, 10] closes when it is read.
    assert_eq!(s.due(T0 + 10_000), sent[4] + 250);
}

#[test]
fn percentiles_are_the_nearest_rank() {
    let readings: Vec<(f64, i64)> = (1..=10).map(|i| (i as f64, T0 + i * 100)).collect();
    let sent: Vec<i64> = (0..10).map(|i| T0 - 5_000 + i).collect();
    let (messages, run) = event_time(&readings, &sent);
    let reference = Reference::new(&set(stats(json!({"kind": "tumbling", "seconds": 10}))), &messages, &run);
    let e = reference.series[0].expected("", T0 + 10_000);
    assert_eq!(["p50", "p90", "p95", "p99"].map(|p| e.value(p)), [5.0, 9.0, 10.0, 10.0].map(Some));
}

#[test]
fn a_hopping_windows_reading_is_in_every_window_that_holds_it() {
    let (messages, run) = event_time(&[(7.0, T0 + 7_000)], &[T0 - 5_000]);
    let hopping = stats(json!({"kind": "hopping", "seconds": 10, "hopSeconds": 5}));
    let reference = Reference::new(&set(hopping), &messages, &run);
    let ends: Vec<i64> = reference.series[0].windows(T0 + 60_000).into_iter().map(|(_, e)| e - T0).collect();
    assert_eq!(ends, [10_000, 15_000]);
}

#[test]
fn late_readings_and_readings_without_the_path_do_not_count() {
    // The third is 5 s behind the latest: late by the watermark (19 − 1 s), dropped.
    let (mut messages, run) = event_time(&[(1.0, T0 + 1_000), (2.0, T0 + 19_000), (3.0, T0 + 14_000)], &[0, 1, 2]);
    let run = Run { sent_ms: vec![T0 - 5_000, T0 - 4_990, T0 - 4_980, T0 - 4_970], ..run };
    messages.push(message(json!({"machine": {"pressure": 1}, "timeCreated": format_iso(T0 + 2_000)})));
    let reference = Reference::new(&set(stats(json!({"kind": "tumbling", "seconds": 10}))), &messages, &run);
    let s = &reference.series[0];
    assert_eq!(s.expected("", T0 + 10_000).value("count"), Some(1.0));
    assert_eq!(s.expected("", T0 + 20_000).value("count"), Some(1.0));
}

#[test]
fn arrival_time_readings_near_an_edge_may_fall_on_either_side() {
    let definition = json!({"A": {"path": "v", "window": {"kind": "tumbling", "seconds": 1}, "functions": "count,max",
        "output": "aggregates", "groupBy": "line"}});
    // Sent at 0.5 s, 0.9 s (within 250 ms of the edge at 1 s) and 1.5 s; the last on another line.
    let messages: Vec<Message> =
        [json!({"v": 1, "line": "a"}), json!({"v": 2, "line": "a"}), json!({"v": 3, "line": 7})].map(message).into();
    let run = Run {
        sent_ms: vec![T0 + 500, T0 + 900, T0 + 1_500],
        patch_sent_ms: T0 - 2_000,
        reported_ms: T0 - 1_990,
        tolerance_ms: 250,
    };
    let reference = Reference::new(&set(definition), &messages, &run);
    let s = &reference.series[0];
    let first = s.expected("\"a\"", T0 + 1_000);
    assert_eq!((first.certain.len(), first.possible, first.exact()), (1, 1, false));
    let second = s.expected("\"a\"", T0 + 2_000);
    assert_eq!((second.certain.len(), second.possible), (0, 1));
    let other = s.expected("7", T0 + 2_000);
    assert!(other.exact() && other.value("max") == Some(3.0));
}

/// A summary as the module writes it.
fn summary(name: &str, start: i64, end: i64, fields: Value) -> Vec<u8> {
    let mut body = json!({"aggregate": name, "windowStart": format_iso(start), "windowEnd": format_iso(end)});
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    body.to_string().into_bytes()
}

#[test]
fn a_wrong_missing_or_extra_summary_is_a_mismatch() {
    let definition = json!({"S": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 10}, "time": {"path": "timeCreated"},
        "functions": "count,avg,stdev,p90", "output": "aggregates"}});
    let readings = [(1.0, T0 + 1_000), (2.0, T0 + 2_000), (4.0, T0 + 12_000)];
    let (messages, run) = event_time(&readings, &[T0 - 5_000, T0 - 4_990, T0 - 4_980]);
    let reference = Reference::new(&set(definition), &messages, &run);
    let right = json!({"count": 2, "avg": 1.5, "stdev": 0.5f64.sqrt(), "p90": 2.0 * 1.005});
    let (until, now) = (T0 + 60_000, T0 + 61_000);

    let mut got = Summaries::default();
    got.record("aggregates", &summary("S", T0, T0 + 10_000, right.clone()));
    got.record(
        "aggregates",
        &summary("S", T0 + 10_000, T0 + 20_000, json!({"count": 1, "avg": 4.0, "stdev": null, "p90": 4.0})),
    );
    let c = check(&reference, &got, until, now);
    assert_eq!((c.matched, c.mismatches.len()), (2, 0), "{:?}", c.mismatches);

    let mut wrong = Summaries::default();
    wrong.record(
        "aggregates",
        &summary("S", T0, T0 + 10_000, json!({"count": 2, "avg": 1.25, "stdev": right["stdev"], "p90": 2.1})),
    );
    wrong.record(
        "aggregates",
        &summary("S", T0 + 20_000, T0 + 30_000, json!({"count": 1, "avg": 4.0, "stdev": null, "p90": 4.0})),
    );
    let c = check(&reference, &wrong, until, now);
    let found: Vec<(String, String, String, String)> =
        c.mismatches.iter().map(|m| (m.window.clone(), m.field.clone(), m.got.clone(), m.want.clone())).collect();
    let window = |a: i64, b: i64| format!("({}, {}]", format_iso(T0 + a), format_iso(T0 + b));
    assert_eq!(
        found,
        [
            (window(0, 10_000), "avg".into(), "1.25".into(), "1.5".into()),
            (window(0, 10_000), "p90".into(), "2.1".into(), "2.0".into()),
            (window(20_000, 30_000), "window".into(), "count 1".into(), "no window (no reading)".into()),
            (window(10_000, 20_000), "window".into(), "missing".into(), "sent, with count 1".into()),
            ("every window received".into(), "sum of counts".into(), "3".into(), "2".into()),
        ],
        "{:?}",
        c.mismatches
    );
    assert_eq!(c.matched, 0);
}

#[test]
fn a_body_is_counted_per_window_that_passes_having() {
    let definition = json!({"H": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 10},
        "time": {"path": "timeCreated"}, "functions": "avg", "having": {"function": "avg", "op": ">", "value": 2},
        "body": {"command": "reset"}, "output": "alert"}});
    let readings = [(1.0, T0 + 1_000), (5.0, T0 + 12_000), (1.0, T0 + 25_000)];
    let (messages, run) = event_time(&readings, &[T0 - 5_000, T0 - 4_990, T0 - 4_980]);
    let reference = Reference::new(&set(definition), &messages, &run);
    let body = json!({"command": "reset"}).to_string();
    let mut got = Summaries::default();
    got.record("alert", body.as_bytes());
    let c = check(&reference, &got, T0 + 60_000, T0 + 61_000);
    assert_eq!((c.matched, c.mismatches.len()), (1, 0), "{:?}", c.mismatches);
    got.record("alert", body.as_bytes());
    let c = check(&reference, &got, T0 + 60_000, T0 + 61_000);
    assert_eq!(c.mismatches.len(), 1, "two resets where one window passed: {:?}", c.mismatches);
}
