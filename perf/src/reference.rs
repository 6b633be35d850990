//! The reference for `replay --aggregates`: the windows each aggregate must emit, computed from the
//! definition and the messages as they were sent, by brute force and without the module's fold,
//! series or summary code (only the twin's definition is parsed with the module's `AggregateSet`,
//! and its time parser reads `time.path`).
//!
//! The replay does not know the module's clock exactly: a message sent at s is read at a module
//! time within ±`tolerance` of s. So each reading gets an interval of times it may be counted at
//! (one instant with event time, unless the clock decides), and a flag for whether it certainly
//! counts: a reading that is late, early or before the first window depending on the clock only
//! *may* count. A window whose readings all certainly fall in it is exact
//! ([`Expected::exact`]); otherwise it is known within bounds. The rules followed are
//! docs/aggregates.md's "Semantics": (start, end] epoch-aligned windows from the first hop boundary
//! after the change, the watermark (latest counted event time − lateSeconds, or the clock −
//! lateSeconds once no reading came on time for max(lateSeconds, 1 s); ASA's max(latest event time,
//! clock) − lateSeconds is allowed too, so a reading more than lateSeconds − tolerance behind the
//! clock only may count), late, early, duplicates. Event times ahead of the clock (`generate
//! --start` a little in the future, as scripts/arm-streaming-insns.sh does) make every reading of
//! an event-time aggregate certain: none is late, and all come after its first window started.
//! Not modelled: the 1,000-group cap, and at most 1,440 empty windows after a stop.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use edgefilter::aggregate::definition::{Aggregate, Late, EARLY_MS};
use edgefilter::aggregate::time::{from_epoch_seconds, parse_iso};
use edgefilter::aggregate::AggregateSet;

use crate::trace::Message;

/// What the replay knows about when things happened, in Unix milliseconds of its own clock.
#[derive(Clone, Debug)]
pub struct Run {
    /// When each message was sent, in send order (the hub delivers in that order).
    pub sent_ms: Vec<i64>,
    /// When the desired patch was sent, and when the module reported it in effect.
    pub patch_sent_ms: i64,
    pub reported_ms: i64,
    /// How far the module's time of a reading may be from its send time.
    pub tolerance_ms: i64,
}

/// One reading as one aggregate may count it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub value: f64,
    /// The times it may be counted at: one instant when lo == hi.
    pub lo: i64,
    pub hi: i64,
    /// Whether it counts whatever the module's clock was (else it may not count at all).
    pub certain: bool,
    /// Its place in the send order: `first` and `last` break ties of time by arrival.
    pub index: usize,
}

/// One aggregate's readings and what decides when its windows close.
#[derive(Clone, Debug)]
pub struct Series {
    pub aggregate: Aggregate,
    /// The first window starts at a hop boundary in [first_lo, first_hi].
    pub first_lo: i64,
    pub first_hi: i64,
    /// Per group key (canonical JSON text, as the summary writes it; "" without `groupBy`), the
    /// readings by `lo`.
    pub groups: BTreeMap<String, Vec<Reading>>,
    /// The widest reading interval, to search by `lo`.
    width: i64,
    /// After each message: a watermark the module certainly had, and the latest time it read it.
    watermarks: Vec<(i64, i64)>,
    /// The latest time the last reading on time may have been read (event time: the clock takes
    /// the watermark over a quiet period after it).
    last_on_time: i64,
    tolerance: i64,
}

/// The reference for a whole set.
#[derive(Clone, Debug)]
pub struct Reference {
    pub series: Vec<Series>,
}

/// What a window holds: the readings certainly in it, and how many more may be.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    /// (value, time, send index) of each reading certainly in the window.
    pub certain: Vec<(f64, i64, usize)>,
    pub possible: u64,
    /// Whether the order of the readings' times is unknown (`first` and `last` then are).
    pub unordered: bool,
}

/// Yes, no, or it depends on what the replay cannot know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    Yes,
    No,
    Maybe,
}

impl Reference {
    /// The reference for `set` over the messages sent (`run.sent_ms` says how many).
    pub fn new(set: &AggregateSet, messages: &[Message], run: &Run) -> Reference {
        let messages = &messages[..run.sent_ms.len().min(messages.len())];
        let bodies: Vec<Option<Value>> = messages.iter().map(|m| serde_json::from_str(&m.body).ok()).collect();
        let duplicate = duplicates(messages);
        let series = set.aggregates.iter().map(|a| Series::new(a, &bodies, &duplicate, run)).collect();
        Reference { series }
    }
}

/// Per message: Yes when the module certainly counts it as a duplicate (its `$.mid` was among the
/// previous 1,024 messages'), Maybe when it may (1,024 to 2,048 back). The replay gives every
/// message its own `sequenceNumber`, so only a trace's repeated `$.mid` can be one.
fn duplicates(messages: &[Message]) -> Vec<Tri> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let mid = m.properties.iter().find(|(k, _)| k == "$.mid").map(|(_, v)| v.as_str());
        out.push(match mid.and_then(|id| last.insert(id, i)) {
            Some(j) if i - j <= 1024 => Tri::Yes,
            Some(j) if i - j <= 2048 => Tri::Maybe,
            _ => Tri::No,
        });
    }
    out
}

/// The value at `path` in a JSON document (objects only, as the module's paths).
pub fn at<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, k| v.as_object()?.get(k))
}

/// A group key as the summary writes it: a string as JSON text, a number as an integer when it
/// has no fraction, otherwise in shortest round-trip form; None for anything else.
pub fn group_key(v: &Value) -> Option<String> {
    match v {
        Value::String(_) => Some(v.to_string()),
        Value::Number(n) => {
            let x = n.as_f64()?;
            Some(if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
                format!("{}", x as i64)
            } else {
                Value::from(x).to_string()
            })
        }
        _ => None,
    }
}

/// The first hop boundary at or after `t`.
fn boundary_at_or_after(t: i64, hop: i64) -> i64 {
    t.div_euclid(hop) * hop + if t.rem_euclid(hop) == 0 { 0 } else { hop }
}

impl Series {
    fn new(a: &Aggregate, bodies: &[Option<Value>], duplicate: &[Tri], run: &Run) -> Series {
        let tol = run.tolerance_ms;
        let hop = a.hop_ms;
        let (first_lo, first_hi) =
            (boundary_at_or_after(run.patch_sent_ms - tol, hop), boundary_at_or_after(run.reported_ms + tol, hop));
        let late_ms = a.time.as_ref().map_or(0, |t| t.late_ms);
        let quiet = late_ms.max(1000);
        // The watermark's bounds, and the latest time the last reading on time may have come (the
        // series is first asked for the time between the patch and the first message).
        let (mut w_lo, mut w_hi) = (i64::MIN / 2, i64::MIN / 2);
        let mut since_hi = run.sent_ms.first().map_or(run.reported_ms, |s| s + tol);
        let mut groups: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
        let mut watermarks = Vec::with_capacity(bodies.len());
        for (index, (body, &s)) in bodies.iter().zip(&run.sent_ms).enumerate() {
            let (now_lo, now_hi) = (s - tol, s + tol);
            let reading = body.as_ref().filter(|_| duplicate[index] != Tri::Yes).and_then(|doc| {
                if a.time.is_some() {
                    // The clock certainly moves the watermark once no reading came on time for
                    // `quiet`; it may sooner (ASA's rule, W ≥ clock − lateSeconds, would).
                    if now_lo - since_hi >= quiet {
                        w_lo = w_lo.max(now_lo - late_ms);
                    }
                    w_hi = w_hi.max(now_hi - late_ms);
                }
                let value = at(doc, &a.path)?.as_f64()?;
                let mut certain = duplicate[index] == Tri::No;
                let (lo, hi) = match &a.time {
                    None => (now_lo, now_hi),
                    Some(e) => {
                        let t = match at(doc, &e.path)? {
                            Value::String(s) => parse_iso(s.as_bytes())?,
                            Value::Number(n) => from_epoch_seconds(n.as_f64()?)?,
                            _ => return None,
                        };
                        if t - now_hi > EARLY_MS {
                            return None;
                        }
                        certain &= t - now_lo <= EARLY_MS;
                        let on_time = if t >= w_hi {
                            Tri::Yes
                        } else if t < w_lo {
                            Tri::No
                        } else {
                            Tri::Maybe
                        };
                        if on_time != Tri::No {
                            since_hi = now_hi;
                        }
                        match (on_time, e.late) {
                            (Tri::Yes, _) => (t, t),
                            (Tri::No, Late::Drop) => return None,
                            (Tri::Maybe, Late::Drop) => {
                                certain = false;
                                (t, t)
                            }
                            // Counted at the watermark, wherever between its bounds it was.
                            (_, Late::Adjust) => (w_lo.min(t), w_hi.max(t)),
                        }
                    }
                };
                // Before the first window: the pane (j·hop, (j+1)·hop] holding the time starts
                // before the first window does.
                let pane_start = |t: i64| (t - 1).div_euclid(hop) * hop;
                if pane_start(hi) < first_lo {
                    return None;
                }
                certain &= pane_start(lo) >= first_hi;
                let group = match &a.group_by {
                    None => String::new(),
                    Some(g) => group_key(at(doc, g)?)?,
                };
                if a.time.is_some() {
                    if certain {
                        w_lo = w_lo.max(lo - late_ms);
                    }
                    w_hi = w_hi.max(hi - late_ms);
                }
                Some((group, Reading { value, lo, hi, certain, index }))
            });
            if let Some((group, r)) = reading {
                groups.entry(group).or_default().push(r);
            }
            watermarks.push((w_lo, now_hi));
        }
        let mut width = 0;
        for readings in groups.values_mut() {
            readings.sort_by_key(|r| r.lo);
            width = readings.iter().map(|r| r.hi - r.lo).fold(width, i64::max);
        }
        let last_on_time = if a.time.is_some() { since_hi + quiet } else { i64::MIN / 2 };
        Series { aggregate: a.clone(), first_lo, first_hi, groups, width, watermarks, last_on_time, tolerance: tol }
    }

    /// The latest window end the module may have closed by `now`: for `emitEmpty`.
    pub fn horizon(&self, now: i64) -> i64 {
        let latest = self.groups.values().flatten().map(|r| r.hi).max().unwrap_or(i64::MIN);
        latest.max(now + self.tolerance)
    }

    /// Whether the window ending at `end` exists: it starts at or after the first window.
    pub fn exists(&self, end: i64) -> Tri {
        let start = end - self.aggregate.window_ms;
        if start < self.first_lo || end.rem_euclid(self.aggregate.hop_ms) != 0 {
            Tri::No
        } else if start >= self.first_hi {
            Tri::Yes
        } else {
            Tri::Maybe
        }
    }

    /// What the window of `group` ending at `end` holds.
    pub fn expected(&self, group: &str, end: i64) -> Expected {
        let start = end - self.aggregate.window_ms;
        let mut e = Expected::default();
        let Some(readings) = self.groups.get(group) else {
            return e;
        };
        let from = readings.partition_point(|r| r.lo <= start - self.width);
        let to = readings.partition_point(|r| r.lo <= end);
        for r in readings[from..to].iter().filter(|r| r.hi > start) {
            if r.certain && r.lo > start && r.hi <= end {
                e.certain.push((r.value, r.lo, r.index));
                // With arrival time the send order is the time order; an adjusted late reading's
                // time is only known within bounds.
                e.unordered |= self.aggregate.time.is_some() && r.lo != r.hi;
            } else {
                e.possible += 1;
            }
        }
        e
    }

    /// Every window some reading may fall in, by group and end, and with `emitEmpty` every
    /// window ending by `until`.
    pub fn windows(&self, until: i64) -> BTreeSet<(String, i64)> {
        let (n, hop) = (self.aggregate.window_ms, self.aggregate.hop_ms);
        let mut out = BTreeSet::new();
        for (group, readings) in &self.groups {
            for r in readings {
                let mut end = boundary_at_or_after(r.lo, hop);
                while end - n < r.hi {
                    if self.exists(end) != Tri::No {
                        out.insert((group.clone(), end));
                    }
                    end += hop;
                }
            }
        }
        if self.aggregate.emit_empty {
            let mut end = self.first_lo + n;
            while end <= until {
                out.insert((String::new(), end));
                end += hop;
            }
        }
        out
    }

    /// The time (the replay's clock) by which the module has certainly closed the window ending
    /// at `end`: with arrival time when the clock passed it; with event time when a reading moved
    /// the watermark past it, or the clock did after the stream went quiet.
    pub fn due(&self, end: i64) -> i64 {
        let tol = self.tolerance;
        match &self.aggregate.time {
            None => end + 1 + tol,
            Some(t) => {
                let i = self.watermarks.partition_point(|(w, _)| *w <= end);
                let by_reading = self.watermarks.get(i).map_or(i64::MAX, |(_, read)| *read);
                let by_clock = (end + t.late_ms + 1).max(self.last_on_time) + tol;
                by_reading.min(by_clock)
            }
        }
    }
}

impl Expected {
    /// Whether every reading of the window is known, with its time.
    pub fn exact(&self) -> bool {
        self.possible == 0
    }

    /// A function's value over the readings certainly in the window (None: count 0, or stdev of
    /// one reading), by its name in the twin.
    pub fn value(&self, function: &str) -> Option<f64> {
        let n = self.certain.len();
        let values = || self.certain.iter().map(|c| c.0);
        let by_time = |a: &&(f64, i64, usize), b: &&(f64, i64, usize)| (a.1, a.2).cmp(&(b.1, b.2));
        if function == "count" {
            return Some(n as f64);
        }
        if n == 0 {
            return None;
        }
        match function {
            "sum" => Some(sum(values())),
            "avg" => Some(sum(values()) / n as f64),
            "min" => values().reduce(f64::min),
            "max" => values().reduce(f64::max),
            "stdev" if n < 2 => None,
            "stdev" => {
                let mean = sum(values()) / n as f64;
                Some((sum(values().map(|x| (x - mean) * (x - mean))) / (n - 1) as f64).sqrt())
            }
            "first" => self.certain.iter().min_by(by_time).map(|c| c.0),
            "last" => self.certain.iter().max_by(by_time).map(|c| c.0),
            p => {
                // PERCENTILE_DISC: the smallest reading whose cumulative share is at least NN %.
                let percent: usize = p.strip_prefix('p')?.parse().ok()?;
                let mut sorted: Vec<f64> = values().collect();
                sorted.sort_by(f64::total_cmp);
                let rank = (n * percent).div_ceil(100).max(1) - 1;
                sorted.get(rank).copied()
            }
        }
    }

    /// The magnitude of the largest reading: the scale of the tolerances near zero.
    pub fn scale(&self) -> f64 {
        self.certain.iter().map(|c| c.0.abs()).fold(0.0, f64::max)
    }
}

/// A compensated (Neumaier) sum.
fn sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in values {
        let t = s + x;
        c += if s.abs() >= x.abs() { (s - t) + x } else { (x - t) + s };
        s = t;
    }
    s + c
}

/// The relative error a function's value may have: 1 % for a percentile (the module's sketch),
/// 1e-9 for sum, avg and stdev, none for the readings' own values.
pub fn tolerance(function: &str) -> f64 {
    match function {
        "sum" | "avg" | "stdev" => 1e-9,
        p if p.starts_with('p') => 0.01,
        _ => 0.0,
    }
}

/// Whether `got` is `want` within `function`'s tolerance (relative, and of `scale` near zero).
pub fn close(function: &str, got: f64, want: f64, scale: f64) -> bool {
    let rel = tolerance(function);
    got == want || (got - want).abs() <= rel * want.abs().max(scale * 1e-3)
}
