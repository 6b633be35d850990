//! The `Aggregates` setting and the aggregator's behaviour a user sees: parsing and rejection,
//! patches, reported properties, the tutorial's ASA job as one twin entry, duplicates, late
//! readings, and checkpoints (round trip, corrupt, stale, changed definitions).

use std::sync::Arc;

use edgefilter::aggregate::checkpoint::{checksum, RestoreError, Unsent, MAX_UNSENT};
use edgefilter::aggregate::time::parse_iso;
use edgefilter::aggregate::{AggregateSet, Aggregator};
use edgefilter::sensor::Sensor;
use edgefilter::settings::{apply_desired, reported, Settings, Source};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// The issue's example.
fn machine_temperature_30s() -> Value {
    json!({
        "path": "machine.temperature",
        "window": {"kind": "tumbling", "seconds": 30},
        "functions": ["avg", "min", "max", "count"],
        "time": {"path": "timeCreated", "lateSeconds": 5, "late": "drop"},
        "groupBy": "machine.id",
        "having": {"function": "avg", "op": ">", "value": 70},
        "output": "aggregates",
        "properties": {"MessageType": "Aggregate"},
        "body": {"command": "reset"}
    })
}

/// The ASA tutorial's job: `SELECT 'reset' AS command INTO alert FROM temperature TIMESTAMP BY
/// timeCreated GROUP BY TumblingWindow(second,30) HAVING Avg(machine.temperature) > 70`.
fn tutorial() -> Value {
    json!({"ResetWhenHot": {
        "path": "machine.temperature",
        "window": {"kind": "tumbling", "seconds": 30},
        "functions": "avg",
        "time": {"path": "timeCreated"},
        "having": {"function": "avg", "op": ">", "value": 70},
        "output": "alert",
        "body": {"command": "reset"}
    }})
}

fn set(v: Value) -> Result<AggregateSet, String> {
    AggregateSet::parse(&obj(v))
}

#[test]
fn the_issues_example_parses_and_reads_back_from_its_report() {
    let s = set(json!({ "MachineTemperature30s": machine_temperature_30s() })).unwrap();
    let a = &s.aggregates[0];
    assert_eq!((a.window_ms, a.hop_ms, a.output.as_str()), (30_000, 30_000, "aggregates"));
    assert_eq!(a.time.as_ref().unwrap().late_ms, 5000);
    assert_eq!(a.body.as_deref(), Some(r#"{"command":"reset"}"#));
    let reported = s.reported();
    assert_eq!(
        reported["MachineTemperature30s"]["functions"],
        json!("avg,min,max,count"),
        "a string: no arrays in twins"
    );
    assert_eq!(set(reported).unwrap().aggregates, s.aggregates);
}

#[test]
fn invalid_aggregates_are_refused_with_the_aggregate_and_field_named() {
    let with = |field: &str, v: Value| {
        let mut a = machine_temperature_30s();
        if v.is_null() {
            a.as_object_mut().unwrap().remove(field);
        } else {
            a[field] = v;
        }
        set(json!({ "A": a })).unwrap_err()
    };
    let cases = [
        ("path", json!("a..b"), "aggregate \"A\": path"),
        ("path", Value::Null, "path: missing"),
        ("window", json!({"kind": "sliding", "seconds": 5}), "window: kind"),
        ("window", json!({"kind": "tumbling", "seconds": 0}), "window: seconds"),
        ("window", json!({"kind": "tumbling", "seconds": 604_801}), "window: seconds"),
        ("window", json!({"kind": "hopping", "seconds": 30, "hopSeconds": 7}), "multiple of hopSeconds"),
        ("window", json!({"kind": "hopping", "seconds": 61, "hopSeconds": 1}), "at most 60"),
        ("window", json!({"kind": "tumbling", "seconds": 5, "hopSeconds": 1}), "unknown field \"hopSeconds\""),
        ("functions", json!(["avg", "median"]), "functions: \"median\""),
        ("functions", json!("avg,avg"), "twice"),
        ("functions", json!([]), "functions: empty"),
        ("time", json!({"path": "t", "late": "keep"}), "time: late"),
        ("time", json!({"path": "t", "lateSeconds": -1}), "time: lateSeconds"),
        ("time", json!({"lateSeconds": 1}), "time: path: missing"),
        ("time", json!({"path": "t", "lateSeconds": 1801}), "at most 60 hops of the window (1800 s)"),
        ("groupBy", json!(5), "groupBy: expected a path string"),
        ("having", json!({"function": "avg", "op": "=>", "value": 1}), "having: op"),
        ("having", json!({"function": "mode", "op": ">", "value": 1}), "having: function"),
        ("output", json!(""), "output: empty"),
        ("output", json!("a/b"), "output"),
        ("properties", json!({"$.ct": "x"}), "properties"),
        ("body", json!("reset"), "body: expected an object"),
        ("body", json!({"k": "x".repeat(5000)}), "body: at most 4096 bytes"),
        ("emitEmpty", json!(true), "emitEmpty: not with groupBy"),
        ("emitEmpty", json!(1), "emitEmpty: expected a boolean"),
        ("extra", json!(1), "unknown field \"extra\""),
    ];
    for (field, v, want) in cases {
        let e = with(field, v.clone());
        assert!(e.contains(want), "{field} = {v}: {e}");
    }
    let many: Map<String, Value> = (0..17).map(|i| (format!("a{i}"), machine_temperature_30s())).collect();
    assert!(AggregateSet::parse(&many).unwrap_err().contains("at most 16"));
    let paths: Map<String, Value> = (0..9)
        .map(|i| (format!("a{i}"), json!({"path": format!("v{i}"), "window": {"kind": "tumbling", "seconds": 5}, "functions": "count", "output": "o", "groupBy": format!("g{i}")})))
        .collect();
    assert!(AggregateSet::parse(&paths).unwrap_err().contains("at most 16 distinct paths"));
    assert!(set(json!({"A": 1})).unwrap_err().contains("expected an object"));
}

#[test]
fn aggregates_are_a_setting_merged_refused_and_reported_like_rules() {
    let base = Settings::default();
    let full =
        apply_desired(&base, &base, &obj(json!({"Aggregates": {"M": machine_temperature_30s()}})), Source::FullTwin);
    assert!(full.rejected.is_empty());
    assert_eq!(full.changed, ["Aggregates"]);
    let s1 = full.settings;
    assert_eq!(s1.aggregates.as_ref().unwrap().aggregates[0].name, "M");
    let first_report = reported(&s1, &base, &[]);
    assert_eq!(first_report["Aggregates"]["M"]["window"]["seconds"], json!(30));

    // A patch changes one field of one aggregate and adds another.
    let patch = json!({"Aggregates": {"M": {"window": {"seconds": 60}}, "N": {"path": "a", "window": {"kind": "tumbling", "seconds": 5}, "functions": "count", "output": "o"}}});
    let p = apply_desired(&s1, &base, &obj(patch), Source::Patch);
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    let s2 = p.settings;
    let names: Vec<&str> = s2.aggregates.as_ref().unwrap().aggregates.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["M", "N"]);
    assert_eq!(s2.aggregates.as_ref().unwrap().aggregates[0].window_ms, 60_000);
    let r = reported(&s2, &s1, &[]);
    assert_eq!(
        r["Aggregates"],
        json!({"M": {"window": {"seconds": 60}}, "N": s2.aggregates.as_ref().unwrap().reported()["N"]})
    );

    // An invalid patch is refused whole: the set stays, and the reason is reported.
    let bad = apply_desired(
        &s2,
        &base,
        &obj(json!({"Aggregates": {"N": {"functions": "mode"}, "O": {"path": "x"}}})),
        Source::Patch,
    );
    assert_eq!(bad.settings.aggregates, s2.aggregates);
    assert_eq!(bad.rejected.len(), 1);
    assert_eq!(bad.rejected[0].name, "Aggregates");
    let r = reported(&bad.settings, &s2, &bad.rejected);
    assert!(r["RejectedSettings"]["Aggregates"].as_str().unwrap().contains("aggregate \"N\": functions"));
    assert_eq!(r["Aggregates"], json!({}), "nothing changed");

    // null removes one, then all; the report says so.
    let one = apply_desired(&s2, &base, &obj(json!({"Aggregates": {"N": null}})), Source::Patch).settings;
    assert_eq!(reported(&one, &s2, &[])["Aggregates"], json!({"N": null}));
    let none = apply_desired(&one, &base, &obj(json!({"Aggregates": null})), Source::Patch).settings;
    assert_eq!(none.aggregates, None);
    assert_eq!(reported(&none, &one, &[])["Aggregates"], Value::Null);
    let wrong = apply_desired(&one, &base, &obj(json!({"Aggregates": [1]})), Source::Patch);
    assert!(wrong.rejected[0].reason.contains("expected an object of aggregates"));
}

/// The tutorial's loop: the sensor's readings, 5 s apart with `timeCreated`; a window whose average
/// is above 70 sends `{"command":"reset"}` to `alert`, and the sensor's `control` input resets.
#[test]
fn the_tutorials_asa_job_as_one_twin_entry_resets_the_sensor() {
    let set = Arc::new(set(tutorial()).unwrap());
    let start = 1_796_195_910_000; // 2026-12-02T07:18:30Z, a window's start
    let mut agg = Aggregator::new(set, start);
    let mut sensor = Sensor::new(3);
    let mut resets = Vec::new();
    let mut hot_windows = 0;
    for i in 1..=600i64 {
        let now = start + i * 5000 - 4000;
        let reading = sensor.next_reading(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now as u64));
        agg.fold(reading.body.as_bytes(), None, now).unwrap();
        for e in agg.close(now) {
            assert_eq!((e.output.as_str(), e.body.as_str()), ("alert", r#"{"command":"reset"}"#));
            hot_windows += 1;
            resets.push(e.window_end);
            sensor.control(e.body.as_bytes());
        }
    }
    assert!(hot_windows >= 3, "the ramp reached 70 and was reset several times: {hot_windows}");
    // Between resets the ramp climbs from 21 past 70 again: at about +0.5 per reading, ~100 readings.
    let gaps: Vec<i64> = resets.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
    assert!(gaps.iter().all(|&g| g >= 300), "{gaps:?}");
    assert_eq!(agg.dropped().map(|(_, _, n)| n).sum::<u64>(), 0, "every reading counted");
}

#[test]
fn a_redelivered_message_counts_once() {
    let start = 1_700_000_010_000;
    let def = json!({"A": {"path": "v", "window": {"kind": "tumbling", "seconds": 10}, "functions": "count,sum", "output": "o"}});
    let mut agg = Aggregator::new(Arc::new(set(def).unwrap()), start);
    for (id, v) in [(Some("m1"), 1), (Some("m2"), 2), (Some("m1"), 1), (None, 4), (None, 4)] {
        agg.fold(json!({ "v": v }).to_string().as_bytes(), id.map(str::as_bytes), start + 1000).unwrap();
    }
    let out = agg.close(start + 10_001);
    assert_eq!(
        out[0].body,
        r#"{"aggregate":"A","windowStart":"2023-11-14T22:13:30Z","windowEnd":"2023-11-14T22:13:40Z","count":4,"sum":11.0}"#
    );
    let dup = agg.dropped().find(|(_, d, _)| d.name() == "duplicate").unwrap().2;
    assert_eq!(dup, 1, "without an id a redelivery cannot be told apart");
}

#[test]
fn late_readings_are_dropped_or_adjusted_into_the_oldest_open_window() {
    let start = 1_700_000_010_000;
    for (late, want) in [("drop", [(1, 1.0), (1, 3.0)]), ("adjust", [(1, 1.0), (2, 5.0)])] {
        let def = json!({"A": {"path": "v", "window": {"kind": "tumbling", "seconds": 10}, "functions": "count,sum", "output": "o",
            "time": {"path": "t", "lateSeconds": 2, "late": late}}});
        let mut agg = Aggregator::new(Arc::new(set(def).unwrap()), start);
        let at = |s: i64| (start + s * 1000) as f64 / 1000.0;
        let fold = |agg: &mut Aggregator, v: f64, t: f64, now: i64| {
            agg.fold(json!({"v": v, "t": t}).to_string().as_bytes(), None, start + now * 1000).unwrap()
        };
        fold(&mut agg, 1.0, at(5), 5);
        fold(&mut agg, 3.0, at(13), 13);
        let first = agg.close(start + 13_000);
        fold(&mut agg, 2.0, at(9), 14); // in the closed window, and behind the watermark (11)
        let second = agg.close(start + 30_000);
        let got: Vec<(u64, f64)> = first
            .iter()
            .chain(&second)
            .map(|e| {
                let b: Value = serde_json::from_str(&e.body).unwrap();
                (b["count"].as_u64().unwrap(), b["sum"].as_f64().unwrap())
            })
            .collect();
        assert_eq!(got, want.map(|(c, s)| (c as u64, s)), "{late}");
        assert_eq!(agg.dropped().find(|(_, d, _)| d.name() == "late").unwrap().2, u64::from(late == "drop"));
    }
}

#[test]
fn the_deadline_is_the_window_end_plus_the_lateness() {
    let start = 1_796_195_910_000;
    let mut agg = Aggregator::new(Arc::new(set(tutorial()).unwrap()), start);
    assert_eq!(agg.next_deadline(), None, "nothing open, nothing to wake for");
    agg.fold(br#"{"machine":{"temperature":80},"timeCreated":"2026-12-02T07:18:31Z"}"#, None, start + 1000).unwrap();
    assert_eq!(agg.next_deadline(), Some(start + 30_000 + 5000 + 1));
    assert!(agg.close(start + 35_000).is_empty());
    assert_eq!(agg.close(start + 35_001).len(), 1);
    assert_eq!(agg.next_deadline(), None);
}

fn tutorial_state() -> (Arc<AggregateSet>, Aggregator, i64) {
    let set = Arc::new(set(tutorial()).unwrap());
    let start = 1_796_195_910_000;
    let mut agg = Aggregator::new(set.clone(), start);
    let mut sensor = Sensor::new(1);
    for i in 0..4 {
        let now = start + 1000 + i * 5000;
        let r = sensor.next_reading(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now as u64));
        agg.fold(r.body.as_bytes(), Some(format!("{i}").as_bytes()), now).unwrap();
    }
    (set, agg, start + 20_000)
}

#[test]
fn a_checkpoint_restores_the_same_state_and_its_size_is_small() {
    let (set, agg, now) = tutorial_state();
    let bytes = agg.checkpoint(now);
    let (restored, log) = Aggregator::restore(set, &bytes, now + 3000).unwrap();
    assert!(log.is_empty());
    assert_eq!(restored, agg);
    println!("tutorial checkpoint: {} bytes", bytes.len());
    assert!(bytes.len() < 400, "{} bytes", bytes.len());
}

#[test]
fn corrupt_stale_or_missing_checkpoints_are_errors() {
    let (set, agg, now) = tutorial_state();
    let bytes = agg.checkpoint(now);
    let restore = |b: &[u8], at: i64| Aggregator::restore(set.clone(), b, at).map(|_| ());
    assert_eq!(restore(&[], now), Err(RestoreError::Empty));
    assert_eq!(restore(b"{\"not\":\"ours\"}", now), Err(RestoreError::NotACheckpoint));
    for cut in 1..bytes.len() {
        assert!(restore(&bytes[..cut], now).is_err(), "cut at {cut}");
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        assert!(restore(&b, now).is_err(), "a flipped bit at {i}");
    }
    let mut v4 = bytes.clone();
    v4[6] = 4;
    assert_eq!(restore(&v4, now), Err(RestoreError::Version(4)));
    let ten_days = 10 * 86_400_000;
    assert!(matches!(restore(&bytes, now + ten_days), Err(RestoreError::Stale { .. })));
    assert!(matches!(restore(&bytes, now - 60_000), Err(RestoreError::Stale { .. })), "written in the future");
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(restore(&longer, now).is_err());
    // A changed definition: its windows are left out, with a line to log.
    let mut changed = tutorial();
    changed["ResetWhenHot"]["having"]["value"] = json!(75);
    let changed = Arc::new(AggregateSet::parse(&obj(changed)).unwrap());
    let (fresh, log) = Aggregator::restore(changed.clone(), &bytes, now).unwrap();
    assert_eq!(log, ["Aggregates: \"ResetWhenHot\" changed since the checkpoint: its windows discarded"]);
    assert_eq!(fresh.series, Aggregator::new(changed, now).series);
    assert_eq!(fresh.seen, agg.seen, "the message ids still count");
    let mut with_percentiles = tutorial();
    with_percentiles["ResetWhenHot"]["functions"] = json!("avg,p95");
    let with_percentiles = Arc::new(AggregateSet::parse(&obj(with_percentiles)).unwrap());
    let (_, log) = Aggregator::restore(with_percentiles, &bytes, now).unwrap();
    assert_eq!(log.len(), 1, "a sketch now asked for: the old windows are left out, not an error");
}

proptest! {
    /// Any bytes at all: an error or a state, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(noise in prop::collection::vec(any::<u8>(), 0..400), at in 0usize..400) {
        let (set, agg, now) = tutorial_state();
        let _ = Aggregator::restore(set.clone(), &noise, now);
        let mut b = agg.checkpoint(now);
        let at = at.min(b.len() - 1);
        b.splice(at..at, noise.iter().copied());
        let _ = Aggregator::restore(set, &b, now);
    }
}

#[test]
fn sensor_times_read_as_the_sensor_writes_them() {
    let mut s = Sensor::new(1);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_796_195_910_123_456_700);
    let body: Value = serde_json::from_str(&s.next_reading(at).body).unwrap();
    assert_eq!(body["timeCreated"], json!("2026-12-02T07:18:30.1234567Z"));
    assert_eq!(parse_iso(body["timeCreated"].as_str().unwrap().as_bytes()), Some(1_796_195_910_124));
}

#[test]
fn a_checkpoint_keeps_the_newest_unconfirmed_messages_and_reads_version_2_files() {
    let (set, agg, now) = tutorial_state();
    let topic = b"devices/d/modules/m/messages/events/%24.on=alert".as_slice();
    let bodies: Vec<Vec<u8>> = (0..MAX_UNSENT + 2).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect();
    let bytes = agg.checkpoint_with_unsent(now, bodies.iter().map(|b| (topic, b.as_slice())));
    let (restored, log, unsent) = Aggregator::restore_with_unsent(set.clone(), &bytes, now).unwrap();
    assert!(log.is_empty());
    assert_eq!(restored, agg);
    assert_eq!(unsent.len(), MAX_UNSENT, "at most MAX_UNSENT, the oldest left out");
    let want = |i: usize| Unsent { topic: String::from_utf8(topic.to_vec()).unwrap(), body: bodies[i].clone() };
    assert_eq!((unsent[0].clone(), unsent[MAX_UNSENT - 1].clone()), (want(2), want(MAX_UNSENT + 1)));

    // Version 2: the same layout without the unsent section (its count is the payload's last 4 bytes here).
    let plain = agg.checkpoint(now);
    let payload = &plain[11..plain.len() - 8];
    let v2_payload = &payload[..payload.len() - 4];
    let mut v2 = b"EFAGGR\x02".to_vec();
    v2.extend_from_slice(&(v2_payload.len() as u32).to_le_bytes());
    v2.extend_from_slice(v2_payload);
    v2.extend_from_slice(&checksum(v2_payload).to_le_bytes());
    let (restored, _, unsent) = Aggregator::restore_with_unsent(set, &v2, now).unwrap();
    assert_eq!((restored, unsent), (agg, vec![]));
}
