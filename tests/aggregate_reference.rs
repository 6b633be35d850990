//! The aggregates against a brute-force reference that keeps every reading.
//!
//! The reference applies the documented rules directly (docs/aggregates.md): the watermark, late
//! readings dropped or moved to the watermark, windows (start, end] aligned to the epoch that close
//! when the watermark passes their end, only windows that start after the definition, groups
//! open at most 1,000, message ids counted once. It then computes each closed window's functions
//! from the raw readings it kept: exact sums (the generated readings are binary fractions, so any
//! order of addition is exact), a two-pass standard deviation, and percentiles by sorting. The
//! module's summaries must match: count, sum, min, max, first and last exactly, avg and stdev to
//! 1e-9 relative, percentiles within the sketch's 1 %.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use edgefilter::aggregate::summary::{Function, ALPHA};
use edgefilter::aggregate::time::format_iso;
use edgefilter::aggregate::{AggregateSet, Aggregator, Emitted};
use proptest::prelude::*;
use serde_json::{json, Value};

/// One generated input.
#[derive(Clone, Debug)]
enum Step {
    Message { advance_ms: i64, offset_ms: i64, value: Option<i64>, group: u8, id: Option<u16>, iso: bool },
    Close { advance_ms: i64 },
}

#[derive(Clone, Debug)]
struct Def {
    hop_s: i64,
    hops: i64,
    late_s: Option<i64>,
    adjust: bool,
    group_by: bool,
    emit_empty: bool,
}

impl Def {
    fn twin(&self) -> Value {
        let window = if self.hops == 1 {
            json!({"kind": "tumbling", "seconds": self.hop_s})
        } else {
            json!({"kind": "hopping", "seconds": self.hop_s * self.hops, "hopSeconds": self.hop_s})
        };
        let mut a =
            json!({"path": "v", "window": window, "functions": Function::ALL.map(Function::name), "output": "agg"});
        if let Some(l) = self.late_s {
            a["time"] = json!({"path": "t", "lateSeconds": l, "late": if self.adjust { "adjust" } else { "drop" }});
        }
        if self.group_by {
            a["groupBy"] = json!("g");
        }
        if self.emit_empty {
            a["emitEmpty"] = json!(true);
        }
        a
    }
}

/// A reading the reference kept: its time (after any adjustment), arrival order, value, group.
#[derive(Clone, Debug)]
struct Kept {
    time: i64,
    seq: u64,
    value: f64,
    group: String,
}

/// The reference's view of one aggregate: everything it accepted, and the rules applied plainly.
struct Reference {
    def: Def,
    first_start: i64,
    watermark: i64,
    closed: i64,
    seq: u64,
    kept: Vec<Kept>,
    ids: VecDeque<u16>,
    /// When the last reading on time came (None: none since the start or a restore).
    on_time: Option<i64>,
}

const MAX_GROUPS: usize = 1000;

impl Reference {
    fn new(def: Def, since: i64) -> Reference {
        let hop = def.hop_s * 1000;
        let first_start = (since + hop - 1).div_euclid(hop) * hop;
        let closed = first_start + hop * def.hops - hop;
        Reference {
            def,
            first_start,
            watermark: i64::MIN,
            closed,
            seq: 0,
            kept: Vec::new(),
            ids: VecDeque::new(),
            on_time: None,
        }
    }

    fn hop(&self) -> i64 {
        self.def.hop_s * 1000
    }

    /// The clock moves the watermark: with arrival time always; with event time once no reading
    /// has come on time for lateSeconds (at least a second) since the last one, or the start.
    fn advance(&mut self, now: i64) {
        let w = match self.def.late_s {
            None => now,
            Some(l) => {
                let since = *self.on_time.get_or_insert(now);
                if now - since >= (l * 1000).max(1000) {
                    now - l * 1000
                } else {
                    i64::MIN
                }
            }
        };
        self.watermark = self.watermark.max(w);
    }

    /// The newest window end the watermark has passed (or the last closed): windows ending there
    /// or before are closed, whether or not they have been sent yet.
    fn passed(&self) -> i64 {
        match self.watermark {
            i64::MIN => self.closed,
            w => self.closed.max((w - 1).div_euclid(self.hop()) * self.hop()),
        }
    }

    /// Whether a window that the watermark has not passed holds a reading of `group`.
    fn group_open(&self, group: &str) -> bool {
        let (hop, passed) = (self.hop(), self.passed());
        self.kept.iter().any(|k| k.group == group && ((k.time - 1).div_euclid(hop) + self.def.hops) * hop > passed)
    }

    fn message(&mut self, now: i64, time: Option<i64>, value: Option<f64>, group: &str, id: Option<u16>) {
        if let Some(id) = id {
            if self.ids.contains(&id) {
                return;
            }
        }
        self.advance(now);
        let remember = |ids: &mut VecDeque<u16>| {
            if let Some(id) = id {
                ids.push_back(id);
            }
        };
        let Some(value) = value else { return remember(&mut self.ids) };
        let mut t = match (self.def.late_s, time) {
            (None, _) => now,
            (Some(_), Some(t)) if t <= now + 300_000 => t,
            _ => return remember(&mut self.ids),
        };
        if t < self.watermark {
            if !self.def.adjust {
                return remember(&mut self.ids);
            }
            t = self.watermark;
        } else if self.def.late_s.is_some() {
            self.on_time = Some(now);
        }
        let hop = self.hop();
        if (t - 1).div_euclid(hop) * hop < self.first_start {
            return remember(&mut self.ids);
        }
        let group = if self.def.group_by { group } else { "" };
        let passed = self.passed();
        let open_groups: std::collections::BTreeSet<&str> = self
            .kept
            .iter()
            .filter(|k| ((k.time - 1).div_euclid(hop) + self.def.hops) * hop > passed)
            .map(|k| k.group.as_str())
            .collect();
        if !self.group_open(group) && open_groups.len() >= MAX_GROUPS {
            return remember(&mut self.ids);
        }
        self.seq += 1;
        self.kept.push(Kept { time: t, seq: self.seq, value, group: group.to_string() });
        if let Some(l) = self.def.late_s {
            self.watermark = self.watermark.max(t - l * 1000);
        }
        remember(&mut self.ids);
    }

    /// The windows closed at `now`: (start, end, group, readings).
    fn close(&mut self, now: i64) -> Vec<(i64, i64, String, Vec<Kept>)> {
        self.advance(now);
        let hop = self.hop();
        let window = hop * self.def.hops;
        let mut out = Vec::new();
        if self.watermark <= self.closed + hop {
            return out; // no reading on time yet, and the clock has not taken over
        }
        let mut end = self.closed + hop;
        let last = (self.watermark - 1).div_euclid(hop) * hop;
        if self.def.emit_empty {
            end = end.max(last - 1439 * hop);
        }
        while end <= last {
            let inside: Vec<&Kept> = self.kept.iter().filter(|k| k.time > end - window && k.time <= end).collect();
            let mut groups: BTreeMap<&str, Vec<Kept>> = BTreeMap::new();
            for k in inside {
                groups.entry(&k.group).or_default().push(k.clone());
            }
            if groups.is_empty() && self.def.emit_empty {
                out.push((end - window, end, String::new(), Vec::new()));
            }
            for (g, ks) in groups {
                out.push((end - window, end, g.to_string(), ks));
            }
            end += hop;
        }
        self.closed = self.closed.max(last);
        out
    }
}

fn set(defs: &[(&str, &Def)]) -> Arc<AggregateSet> {
    let obj: serde_json::Map<String, Value> = defs.iter().map(|(n, d)| (n.to_string(), d.twin())).collect();
    Arc::new(AggregateSet::parse(&obj).expect("a valid set"))
}

fn body(value: Option<f64>, time: i64, iso: bool, group: u8) -> Vec<u8> {
    let mut b = json!({"g": format!("m{group}")});
    if let Some(v) = value {
        b["v"] = json!(v);
    }
    b["t"] = if iso { json!(format_iso(time)) } else { json!(time as f64 / 1000.0) };
    b.to_string().into_bytes()
}

fn close_enough(what: &str, got: f64, want: f64, rel: f64) -> Result<(), TestCaseError> {
    prop_assert!((got - want).abs() <= rel * want.abs().max(got.abs()) + 1e-12, "{what}: got {got}, want {want}");
    Ok(())
}

/// One emitted summary against the reference's window.
fn check(e: &Emitted, want: &(i64, i64, String, Vec<Kept>)) -> Result<(), TestCaseError> {
    let (start, end, group, kept) = want;
    let b: Value = serde_json::from_str(&e.body).unwrap();
    prop_assert_eq!(&b["windowStart"], &json!(format_iso(*start)));
    prop_assert_eq!(&b["windowEnd"], &json!(format_iso(*end)));
    if !group.is_empty() {
        prop_assert_eq!(b["group"].to_string(), group.clone());
    }
    let n = kept.len();
    prop_assert_eq!(b["count"].as_u64(), Some(n as u64), "{}", e.body);
    if n == 0 {
        prop_assert_eq!(&b["avg"], &Value::Null);
        return Ok(());
    }
    let xs: Vec<f64> = kept.iter().map(|k| k.value).collect();
    let sum: f64 = xs.iter().sum();
    let f = |name: &str| b[name].as_f64().unwrap_or(f64::NAN);
    prop_assert_eq!(f("sum"), sum);
    prop_assert_eq!(f("min"), xs.iter().copied().fold(f64::INFINITY, f64::min));
    prop_assert_eq!(f("max"), xs.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let first = kept.iter().min_by_key(|k| (k.time, k.seq)).unwrap().value;
    let last = kept.iter().max_by_key(|k| (k.time, k.seq)).unwrap().value;
    prop_assert_eq!((f("first"), f("last")), (first, last));
    let mean = sum / n as f64;
    close_enough("avg", f("avg"), mean, 1e-9)?;
    if n > 1 {
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
        close_enough("stdev", f("stdev"), var.sqrt(), 1e-9)?;
    } else {
        prop_assert_eq!(&b["stdev"], &Value::Null);
    }
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    // ASA's PERCENTILE_DISC: the smallest reading whose cumulative share n_le / n is at least p.
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)] {
        let x = *sorted
            .iter()
            .find(|&&x| sorted.iter().filter(|&&y| y <= x).count() as f64 / n as f64 >= p - 1e-12)
            .unwrap();
        close_enough(name, f(name), x, ALPHA * (1.0 + 1e-9))?;
    }
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let message = (
        0i64..2500,
        -7000i64..1500,
        prop::option::weighted(0.95, -6400i64..6400),
        0u8..4,
        prop::option::weighted(0.7, 0u16..60),
        any::<bool>(),
    )
        .prop_map(|(advance_ms, offset_ms, value, group, id, iso)| Step::Message {
            advance_ms,
            offset_ms,
            value,
            group,
            id,
            iso,
        });
    let close = (0i64..4000).prop_map(|advance_ms| Step::Close { advance_ms });
    prop::collection::vec(prop_oneof![6 => message, 1 => close], 1..120)
}

fn def() -> impl Strategy<Value = Def> {
    (
        prop_oneof![Just(1i64), Just(2), Just(5)],
        1i64..5,
        prop::option::of(0i64..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(hop_s, hops, late_s, adjust, group_by, emit_empty)| Def {
            hop_s,
            hops,
            late_s,
            adjust,
            group_by,
            emit_empty: emit_empty && !group_by,
        })
}

/// Runs the steps through both, comparing every close; `at` (step, action) is done to the
/// aggregator only, between steps.
fn run(
    def: &Def,
    start: i64,
    steps: &[Step],
    mut between: impl FnMut(usize, &mut Aggregator, i64) -> bool,
) -> Result<usize, TestCaseError> {
    let mut agg = Aggregator::new(set(&[("A", def)]), start);
    let mut reference = Reference::new(def.clone(), start);
    let mut now = start;
    let mut compared = 0;
    for (i, step) in steps.iter().chain([&Step::Close { advance_ms: 60_000 }]).enumerate() {
        if between(i, &mut agg, now) {
            reference.on_time = None; // a restart: the wait for a quiet stream begins again
        }
        match *step {
            Step::Message { advance_ms, offset_ms, value, group, id, iso } => {
                now += advance_ms;
                let value = value.map(|k| k as f64 / 64.0);
                let time = now + offset_ms;
                let id_bytes = id.map(|i| i.to_le_bytes());
                agg.fold(&body(value, time, iso, group), id_bytes.as_ref().map(|b| &b[..]), now).unwrap();
                reference.message(now, Some(time), value, &format!("\"m{group}\""), id);
            }
            Step::Close { advance_ms } => now += advance_ms,
        }
        let got = agg.close(now);
        let want = reference.close(now);
        prop_assert_eq!(
            got.len(),
            want.len(),
            "at step {}, now {}: {:?}",
            i,
            now,
            got.iter().map(|e| &e.body).collect::<Vec<_>>()
        );
        for (g, w) in got.iter().zip(&want) {
            check(g, w)?;
        }
        compared += got.len();
        if let Some(d) = agg.next_deadline() {
            prop_assert!(d > now || agg.clone().close(now).is_empty(), "a deadline in the past with nothing to close");
            prop_assert!(agg.clone().close(d - 1).is_empty(), "nothing closes before the deadline");
        }
    }
    Ok(compared)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Out-of-order, late, duplicate and missing readings, boundaries, hopping overlaps.
    #[test]
    fn every_window_matches_the_reference(def in def(), steps in steps(), start in 1_700_000_000_000i64..1_700_000_100_000) {
        run(&def, start, &steps, |_, _, _| false)?;
    }

    /// A checkpoint taken and restored at any step changes nothing that follows.
    #[test]
    fn a_restored_checkpoint_continues_exactly(def in def(), steps in steps(), at in 0usize..120) {
        run(&def, 1_700_000_000_000, &steps, |i, agg, now| {
            if i == at {
                let bytes = agg.checkpoint(now);
                let (restored, log) = Aggregator::restore(agg.set.clone(), &bytes, now).unwrap();
                assert!(log.is_empty());
                // The same state, with the watermark the clock has raised by now.
                let mut want = agg.clone();
                let set = want.set.clone();
                for (a, s) in set.aggregates.iter().zip(&mut want.series) {
                    s.watermark = s.watermark_at(a, now);
                }
                assert_eq!(&restored, &want);
                *agg = restored;
                return true;
            }
            false
        })?;
    }

    /// A patch mid-window: the changed aggregate starts again with the windows that start after
    /// it; the unchanged one goes on as if nothing happened.
    #[test]
    fn a_patch_restarts_only_the_changed_aggregate(a in def(), b in def(), changed in def(), steps in steps(), at in 1usize..100) {
        let start = 1_700_000_000_000;
        let mut agg = Aggregator::new(set(&[("A", &a), ("B", &b)]), start);
        let mut ra = Reference::new(a.clone(), start);
        let mut rb = Reference::new(b.clone(), start);
        let mut now = start;
        for (i, step) in steps.iter().chain([&Step::Close { advance_ms: 60_000 }]).enumerate() {
            if i == at {
                let log = agg.apply(set(&[("A", &changed), ("B", &b)]), now);
                let same = changed.twin() == a.twin();
                prop_assert_eq!(log.len(), usize::from(!same), "{:?}", log);
                if !same {
                    prop_assert!(log[0].contains("\"A\" changed"));
                    let ids = std::mem::take(&mut ra.ids);
                    ra = Reference::new(changed.clone(), now);
                    ra.ids = ids; // the ids seen are the set's, not an aggregate's
                }
            }
            if let Step::Message { advance_ms, offset_ms, value, group, id, iso } = *step {
                now += advance_ms;
                let value = value.map(|k| k as f64 / 64.0);
                let id_bytes = id.map(|i| i.to_le_bytes());
                agg.fold(&body(value, now + offset_ms, iso, group), id_bytes.as_ref().map(|b| &b[..]), now).unwrap();
                ra.message(now, Some(now + offset_ms), value, &format!("\"m{group}\""), id);
                rb.message(now, Some(now + offset_ms), value, &format!("\"m{group}\""), id);
            } else if let Step::Close { advance_ms } = *step {
                now += advance_ms;
            }
            let got = agg.close(now);
            let (mut wa, wb) = (ra.close(now), rb.close(now));
            let got_a: Vec<&Emitted> = got.iter().filter(|e| e.aggregate == "A").collect();
            let got_b: Vec<&Emitted> = got.iter().filter(|e| e.aggregate == "B").collect();
            prop_assert_eq!((got_a.len(), got_b.len()), (wa.len(), wb.len()), "step {}", i);
            for (g, w) in got_a.iter().zip(wa.drain(..)).map(|(g, w)| (*g, w)).collect::<Vec<_>>() {
                check(g, &w)?;
            }
            for (g, w) in got_b.iter().zip(&wb) {
                check(g, w)?;
            }
        }
    }
}

/// Groups at the cap: the 1,001st is dropped and counted; once the windows close, a new one fits.
#[test]
fn groups_beyond_the_cap_are_counted_until_windows_close() {
    let def = Def { hop_s: 10, hops: 1, late_s: None, adjust: false, group_by: true, emit_empty: false };
    let start = 1_700_000_000_000;
    let mut agg = Aggregator::new(set(&[("A", &def)]), start);
    let mut reference = Reference::new(def, start);
    let now = start + 1;
    for g in 0..=MAX_GROUPS {
        let b = json!({"v": 1, "g": g}).to_string();
        agg.fold(b.as_bytes(), None, now).unwrap();
        reference.message(now, None, Some(1.0), &g.to_string(), None);
    }
    let dropped = |agg: &Aggregator| agg.dropped().find(|(_, d, _)| d.name() == "too_many_groups").map(|(_, _, n)| n);
    assert_eq!(dropped(&agg), Some(1));
    // The clock has passed the window's end: its groups are closed, though not sent until the
    // close that follows the fold (the session's order), so a new group fits.
    agg.fold(br#"{"v": 2, "g": "new"}"#, None, start + 20_001).unwrap();
    reference.message(start + 20_001, None, Some(2.0), "\"new\"", None);
    assert_eq!(dropped(&agg), Some(1));
    let closed = agg.close(start + 20_001);
    assert_eq!(closed.len(), MAX_GROUPS);
    assert_eq!(reference.close(start + 20_001).len(), MAX_GROUPS);
    let closed = agg.close(start + 40_000);
    assert_eq!(closed.len(), 1);
    assert!(closed[0].body.contains(r#""group":"new""#), "{}", closed[0].body);
}

/// Readings with decimals (not binary fractions): the sum is compensated, avg and stdev stay
/// within 1e-9 of the reference even at large offsets where a plain sum loses digits.
#[test]
fn decimal_readings_within_the_stated_error() {
    let def = Def { hop_s: 60, hops: 1, late_s: None, adjust: false, group_by: false, emit_empty: false };
    let start = 1_700_000_040_000; // a minute's start: the first window is whole
    let mut agg = Aggregator::new(set(&[("A", &def)]), start);
    let xs: Vec<f64> = (0..5000).map(|i| 1e6 + 0.1 * f64::from(i % 97) - 3.3).collect();
    for (i, x) in xs.iter().enumerate() {
        agg.fold(json!({"v": x}).to_string().as_bytes(), None, start + 1 + i as i64).unwrap();
    }
    let out = agg.close(start + 120_000);
    let b: Value = serde_json::from_str(&out[0].body).unwrap();
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt();
    assert!((b["avg"].as_f64().unwrap() - mean).abs() <= 1e-9 * mean);
    assert!((b["stdev"].as_f64().unwrap() - sd).abs() <= 1e-9 * sd, "{} vs {sd}", b["stdev"]);
}
