//! The `Aggregates` setting and the aggregator's behaviour a user sees: parsing and rejection,
//! patches, reported properties, the tutorial's ASA job as one twin entry, duplicates, late
//! readings, group keys at their length limit, and checkpoints (round trip, corrupt, stale,
//! changed definitions, crafted past their checksum).

use std::sync::Arc;

use edgefilter::aggregate::checkpoint::{checksum, RestoreError, Unsent, MAX_UNSENT};
use edgefilter::aggregate::extract::MAX_GROUP_KEY;
use edgefilter::aggregate::summary::MAX_BINS;
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

/// The entries the README and docs show, and the twin file local mode runs, are the tests' own
/// tutorial entry, and they parse.
#[test]
fn the_documented_twin_entries_parse_and_are_the_tutorials() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |f: &str| std::fs::read_to_string(format!("{root}/{f}")).unwrap();
    let file: Value = serde_json::from_str(&read("docs/asa-tutorial.twin.json")).unwrap();
    let all = set(file["Aggregates"].clone()).unwrap();
    assert_eq!(all.aggregates.len(), 2);
    assert_eq!(file["Aggregates"]["ResetWhenHot"], tutorial()["ResetWhenHot"]);
    for doc in ["README.md", "docs/aggregates.md"] {
        let text = read(doc);
        let at =
            text.find("```json\n\"Aggregates\": {\n  \"ResetWhenHot\"").unwrap_or_else(|| panic!("{doc}: no entry"));
        let block = &text[at + "```json\n".len()..];
        let block = &block[..block.find("```").unwrap()];
        let entry: Value = serde_json::from_str(&format!("{{{block}}}")).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(entry["Aggregates"], tutorial(), "{doc}");
        assert!(text.contains("GROUP BY TumblingWindow(second,30)\nHAVING Avg(machine.temperature) > 70"), "{doc}");
    }
}

/// Each limit is itself accepted, and one past it refused.
#[test]
fn the_limits_themselves_are_accepted() {
    let with = |window: Value, late: Option<u64>| {
        let mut a = json!({"path": "v", "window": window, "functions": "count", "output": "o"});
        if let Some(l) = late {
            a["time"] = json!({"path": "t", "lateSeconds": l});
        }
        set(json!({ "A": a }))
    };
    assert!(with(json!({"kind": "tumbling", "seconds": 604_800}), None).is_ok());
    assert!(with(json!({"kind": "tumbling", "seconds": 604_801}), None).is_err());
    assert!(with(json!({"kind": "hopping", "seconds": 60, "hopSeconds": 1}), None).is_ok());
    assert!(with(json!({"kind": "hopping", "seconds": 61, "hopSeconds": 1}), None).is_err());
    assert!(with(json!({"kind": "hopping", "seconds": 604_800, "hopSeconds": 86_400}), None).is_ok());
    assert!(with(json!({"kind": "tumbling", "seconds": 1}), Some(60)).is_ok(), "60 hops");
    assert!(with(json!({"kind": "tumbling", "seconds": 1}), Some(61)).is_err(), "over 60 hops");
    assert!(with(json!({"kind": "tumbling", "seconds": 86_400}), Some(86_400)).is_ok(), "a day");
    assert!(with(json!({"kind": "tumbling", "seconds": 86_400}), Some(86_401)).is_err(), "over a day");
    let many = |n: usize| {
        let m: Map<String, Value> = (0..n)
            .map(|i| (format!("A{i}"), json!({"path": "v", "window": {"kind": "tumbling", "seconds": 1}, "functions": "count", "output": "o"})))
            .collect();
        AggregateSet::parse(&m)
    };
    assert!(many(16).is_ok());
    assert!(many(17).is_err());
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

/// This binary's allocator: the system's, noting the largest allocation each thread asks for
/// while [`largest_allocation`] watches, and refusing one of a GiB or more then (which aborts the
/// run with "memory allocation of N bytes failed") rather than swapping.
struct Watched;

thread_local! {
    /// The largest allocation since the watch began; None: not watched.
    static LARGEST: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Whether an allocation of `size` may go ahead, noting it.
fn note(size: usize) -> bool {
    LARGEST
        .try_with(|l| match l.get() {
            Some(largest) => {
                l.set(Some(largest.max(size)));
                size < 1 << 30
            }
            None => true,
        })
        .unwrap_or(true)
}

unsafe impl std::alloc::GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

/// What `f` returns, and the largest allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    struct Unwatch;
    impl Drop for Unwatch {
        fn drop(&mut self) {
            LARGEST.with(|l| l.set(None));
        }
    }
    LARGEST.with(|l| l.set(Some(0)));
    let _unwatch = Unwatch;
    let out = f();
    (out, LARGEST.with(|l| l.get()).unwrap_or(0))
}

/// Several aggregates a checkpoint holds in all their shapes: hopping panes with percentiles
/// (both signs, zeros, a collapsed sketch), string keys with escapes, number keys, arrival time
/// with empty windows.
fn rich_set() -> Arc<AggregateSet> {
    Arc::new(
        set(json!({
            "Hopping": {"path": "machine.temperature", "window": {"kind": "hopping", "seconds": 60, "hopSeconds": 10},
                "functions": "avg,p50,p99,count,stdev,first,last", "groupBy": "machine.id", "output": "aggregates",
                "time": {"path": "timeCreated", "lateSeconds": 20, "late": "adjust"}},
            "Tumbling": {"path": "machine.pressure", "window": {"kind": "tumbling", "seconds": 30},
                "functions": "min,max,sum,p95", "groupBy": "line", "output": "aggregates",
                "time": {"path": "timeCreated", "lateSeconds": 5}},
            "Arrival": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 10},
                "functions": "count,p90", "emitEmpty": true, "output": "aggregates"}
        }))
        .unwrap(),
    )
}

/// The `i`th reading of [`rich_set`], its event time `at`.
fn rich_body(i: usize, at: i64) -> Vec<u8> {
    let values = [21.5, -3.25, 0.0, 1e-300, -7e12, 98.6, 1e300, 4.0, -0.0, 5e-324];
    let (id, line) = (["m1", "m2", "m\"3", "é4"][i % 4], [json!(1), json!(2.5), json!(-3)][i % 3].clone());
    let body = json!({
        "machine": {"temperature": values[i % 10], "pressure": values[i * 3 % 10], "id": id},
        "line": line,
        "timeCreated": edgefilter::aggregate::time::format_iso(at)
    });
    body.to_string().into_bytes()
}

/// [`rich_set`] after 150 readings over 105 s, some out of order or late, windows closed on the way.
fn rich_state() -> (Aggregator, i64) {
    let start = 1_796_195_910_000;
    let mut agg = Aggregator::new(rich_set(), start);
    let mut now = start;
    for i in 0..150 {
        now = start + i as i64 * 700;
        let at = now - (i as i64 % 7) * 3000;
        agg.fold(&rich_body(i, at), Some(format!("id{i}").as_bytes()), now).unwrap();
        if i % 20 == 19 {
            agg.close(now);
        }
    }
    (agg, now)
}

/// The place of each field of a checkpoint's payload, as the format (checkpoint.rs) lays it out.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Field {
    Flag,
    Count,
    Int,
    Float,
    /// A sketch's bin: most of a payload's fields, mutated on their own.
    Bin,
    /// A byte of a name, a key, a topic or a body.
    Text,
}

fn layout(payload: &[u8]) -> Vec<(usize, Field)> {
    struct Walk<'a>(&'a [u8], usize, Vec<(usize, Field)>);
    impl Walk<'_> {
        fn next(&mut self, f: Field) -> u64 {
            let width = f.width();
            let mut le = [0u8; 8];
            le[..width].copy_from_slice(&self.0[self.1..self.1 + width]);
            self.2.push((self.1, f));
            self.1 += width;
            u64::from_le_bytes(le)
        }
        fn skip(&mut self, n: u64, f: Field) {
            (0..n).for_each(|_| _ = self.next(f));
        }
        fn text(&mut self) {
            let n = self.next(Field::Count);
            self.skip(n, Field::Text);
        }
    }
    let mut w = Walk(payload, 0, Vec::new());
    w.skip(1, Field::Int); // written_at
    let ids = w.next(Field::Count);
    w.skip(ids, Field::Int);
    for _ in 0..w.next(Field::Count) {
        w.text();
        w.skip(14, Field::Int); // definition, first_start, watermark, closed, seq, dropped
        for _ in 0..w.next(Field::Count) {
            w.text();
            for _ in 0..w.next(Field::Count) {
                w.skip(2, Field::Int); // index, count
                w.skip(6, Field::Float);
                for _ in 0..2 {
                    w.skip(2, Field::Int);
                    w.skip(1, Field::Float);
                }
                if w.next(Field::Flag) == 1 {
                    w.skip(1, Field::Int);
                    for _ in 0..2 {
                        w.skip(1, Field::Int);
                        let bins = w.next(Field::Count);
                        w.skip(bins, Field::Bin);
                    }
                }
            }
        }
    }
    for _ in 0..w.next(Field::Count) {
        w.text();
        w.text();
    }
    assert_eq!(w.1, payload.len(), "the layout reads the whole payload");
    w.2
}

impl Field {
    fn width(self) -> usize {
        [1, 4, 8, 8, 4, 1][self as usize]
    }
}

/// Values a crafted file might hold in a field of this kind, around the field's own value `was`.
fn extremes(f: Field, was: u64) -> Vec<u64> {
    match f {
        Field::Flag => vec![0, 1, 2, 255],
        Field::Text => b"\"\\\x00\xffa7,".iter().map(|&b| u64::from(b)).collect(),
        Field::Count | Field::Bin => [0, 1, 2, 511, 512, 513, 1000, 1001, 0x8000_0000, u64::from(u32::MAX)]
            .into_iter()
            .chain([was.wrapping_add(1) & 0xffff_ffff, was.wrapping_sub(1) & 0xffff_ffff])
            .collect(),
        Field::Int => {
            let was = was as i64;
            let around = [1, 1000, 10_000, 300_001, 86_400_000]
                .into_iter()
                .flat_map(|d| [was.wrapping_add(d), was.wrapping_sub(d)]);
            [0, 1, -1, i64::MIN, i64::MAX, 1 << 52, i64::from(i32::MIN), i64::from(i32::MAX), -37_221, 35_489]
                .into_iter()
                .chain(around)
                .chain([was.wrapping_mul(2), was.wrapping_neg()])
                .map(|x| x as u64)
                .collect()
        }
        Field::Float => {
            let was = f64::from_bits(was);
            [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, f64::MAX, -f64::MAX, 5e-324, 1e300, -was, was * 2.0]
                .map(f64::to_bits)
                .to_vec()
        }
    }
}

/// Two mutations of one field: the second takes its values around the first's, which may be any
/// extreme (CI once found `i64::MAX + 1` here, in the test's own arithmetic).
#[test]
fn extremes_around_any_extreme_do_not_overflow() {
    for kind in [Field::Flag, Field::Count, Field::Int, Field::Float, Field::Bin, Field::Text] {
        for was in extremes(kind, 0) {
            for again in extremes(kind, was) {
                let _ = extremes(kind, again);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    /// A field (by index; a bin, or any other) overwritten with one of its [`extremes`] (by index).
    Field(bool, prop::sample::Index, prop::sample::Index),
    /// One bit of the payload flipped.
    Flip(prop::sample::Index, u8),
    /// Eight bytes anywhere in the payload.
    Write(prop::sample::Index, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(f, v)| Mutation::Field(false, f, v)),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(f, v)| Mutation::Field(true, f, v)),
        1 => (any::<prop::sample::Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        1 => (any::<prop::sample::Index>(), any::<u64>()).prop_map(|(at, x)| Mutation::Write(at, x)),
    ]
}

/// The checkpoint `bytes` with its payload mutated, and its checksum made to match again.
fn mutated(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let (head, payload) = (&bytes[..11], &bytes[11..bytes.len() - 8]);
    let (bins, fields): (Vec<_>, Vec<_>) = layout(payload).into_iter().partition(|&(_, f)| f == Field::Bin);
    let mut p = payload.to_vec();
    for m in mutations {
        match m {
            Mutation::Field(bin, f, v) => {
                let (at, kind) = *f.get(if *bin { &bins } else { &fields });
                let width = kind.width();
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(&p[at..at + width]);
                let x = *v.get(&extremes(kind, u64::from_le_bytes(le)));
                p[at..at + width].copy_from_slice(&x.to_le_bytes()[..width]);
            }
            Mutation::Flip(at, bit) => {
                let at = at.index(p.len());
                p[at] ^= 1 << bit;
            }
            Mutation::Write(at, x) => {
                let at = at.index(p.len() - 7);
                p[at..at + 8].copy_from_slice(&x.to_le_bytes());
            }
        }
    }
    [head, &p, &checksum(&p).to_le_bytes()].concat()
}

/// What a restored state must hold for a fold or a merge to stay within the bins of finite
/// readings: at most MAX_BINS per sign, from ⌈log_γ 5e-324⌉ to ⌈log_γ f64::MAX⌉.
fn sketches_in_range(agg: &Aggregator) -> bool {
    let bins = agg.series.iter().flat_map(|s| &s.groups).flat_map(|(_, p)| p).filter_map(|(_, s)| s.sketch.as_ref());
    bins.flat_map(|k| [&k.positive, &k.negative]).all(|b| {
        let top = i64::from(b.offset) + b.counts.len() as i64 - 1;
        b.counts.len() <= MAX_BINS && (b.counts.is_empty() || (-37_220 <= b.offset && top <= 35_488))
    })
}

/// A checkpoint made from a real state, mutated past its checksum: the restore is an error or a
/// state that folds, closes (also a week on) and checkpoints again without a panic or an
/// allocation beyond a few MiB, and whose next checkpoint restores.
#[test]
fn crafted_checkpoints_past_the_checksum_are_refused_or_work() {
    let (agg, now) = rich_state();
    let bytes = agg.checkpoint(now);
    let restored = Aggregator::restore(agg.set.clone(), &bytes, now).unwrap().0;
    assert_eq!(restored, agg, "unmutated, the state comes back");
    let sketches: Vec<_> =
        agg.series.iter().flat_map(|s| &s.groups).flat_map(|(_, p)| p).filter_map(|(_, s)| s.sketch.as_ref()).collect();
    assert!(sketches.iter().any(|k| !k.negative.counts.is_empty()), "negative bins");
    assert!(sketches.iter().any(|k| k.positive.counts.len() == MAX_BINS), "a collapsed sketch");
    assert!(agg.series.iter().map(|s| s.groups.len()).max() >= Some(4), "several groups");

    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    let config = ProptestConfig { cases: 2000, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = prop::collection::vec(mutation(), 1..3);
    let result = runner.run(&strategy, |mutations| {
        let b = mutated(&bytes, &mutations);
        let (outcome, largest) = largest_allocation(|| {
            let (mut agg, _) = Aggregator::restore(rich_set(), &b, now)?;
            assert!(sketches_in_range(&agg), "a restored sketch beyond the bins of finite readings");
            for i in 0..40 {
                let later = now + 500 + i as i64 * 900;
                let _ = agg.fold(&rich_body(i, later - (i as i64 % 5) * 4000), None, later);
                agg.close(later);
            }
            assert!(sketches_in_range(&agg), "a folded sketch beyond the bins of finite readings");
            let far = now + 7 * 86_400_000;
            agg.close(far);
            agg.close(far + 60_000);
            if let Err(e) = Aggregator::restore(rich_set(), &agg.checkpoint(far + 60_000), far + 60_000) {
                panic!("a restored state, used, checkpoints into a file that does not restore: {e}");
            }
            Ok(())
        });
        // A sketch spanning every bin of a finite reading is 290 KiB; one whose range a crafted
        // file set at will, gigabytes.
        prop_assert!(largest <= 4 << 20, "an allocation of {} bytes", largest);
        let name = match outcome {
            Ok(()) => "restored".to_string(),
            Err(RestoreError::Corrupt(what)) => format!("corrupt: {what}"),
            Err(e) => format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string(),
        };
        *outcomes.borrow_mut().entry(name).or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let outcomes = outcomes.into_inner();
    println!("{outcomes:#?}");
    let share = |f: &dyn Fn(&str) -> bool| outcomes.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum::<usize>();
    let total = share(&|_| true);
    assert_eq!(share(&|k| k == "Checksum"), 0, "every case passes the checksum");
    assert!(share(&|k| k == "restored") * 10 >= total, "a tenth or more restore and are used: {outcomes:?}");
    assert!(share(&|k| k.starts_with("corrupt")) * 2 >= total, "half or more are refused as corrupt: {outcomes:?}");
    assert!(outcomes.keys().filter(|k| k.starts_with("corrupt")).count() >= 15, "many checks reached: {outcomes:?}");
}

/// A group key is at most MAX_GROUP_KEY bytes of canonical JSON text: a longer one counts as
/// `no_group`, and every key kept is one a checkpoint restores.
#[test]
fn a_long_group_key_counts_as_no_group_and_one_at_the_limit_restores() {
    let def = json!({"G": {"path": "v", "window": {"kind": "tumbling", "seconds": 10}, "functions": "count",
        "groupBy": "g", "output": "o"}});
    let start = 1_700_000_010_000;
    let set = Arc::new(set(def).unwrap());
    let mut agg = Aggregator::new(set.clone(), start);
    let at_limit = "k".repeat(MAX_GROUP_KEY - 2); // with its quotes, MAX_GROUP_KEY bytes
    for g in ["a".repeat(600), "b".repeat(500), at_limit.clone(), "c".repeat(MAX_GROUP_KEY - 1)] {
        agg.fold(json!({"v": 1, "g": g}).to_string().as_bytes(), None, start + 1000).unwrap();
    }
    // 600 bytes as escapes, 200 as canonical text: the limit is on the key as kept.
    agg.fold(format!(r#"{{"v": 1, "g": "{}"}}"#, "\\u00e9".repeat(100)).as_bytes(), None, start + 1000).unwrap();
    let no_group = agg.dropped().find(|(_, d, _)| d.name() == "no_group").unwrap().2;
    assert_eq!(no_group, 2, "600 bytes, and one byte over the limit");

    let bytes = agg.checkpoint(start + 1000);
    let (mut restored, log) = Aggregator::restore(set, &bytes, start + 2000).unwrap();
    assert!(log.is_empty());
    assert_eq!(restored, agg);
    let mut groups: Vec<(String, u64)> = restored
        .close(start + 10_001)
        .iter()
        .map(|e| {
            let b: Value = serde_json::from_str(&e.body).unwrap();
            (b["group"].as_str().unwrap().to_string(), b["count"].as_u64().unwrap())
        })
        .collect();
    groups.sort();
    assert_eq!(groups, [("b".repeat(500), 1), (at_limit, 1), ("é".repeat(100), 1)]);
}
