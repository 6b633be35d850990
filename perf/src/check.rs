//! `replay --aggregates`: the aggregate messages that came back, compared with the
//! [`reference`](crate::reference) window by window.
//!
//! Compared: the set of (aggregate, group, windowStart, windowEnd) sent against the windows the
//! reference says exist and pass `having`; in an exact window (every reading's place known) each
//! function: count, min, max, first and last equal, sum, avg and stdev within 1e-9 relative, a
//! percentile within the module's 1 %; in a window with readings near its edges (arrival time, a
//! clock-dependent late reading), the count within its bounds. A tumbling aggregate's counts over
//! all windows received must also add up to its readings. Aggregates with a `body` send no window:
//! their messages are counted, against the windows that must and may have sent one.
//!
//! A window is *required* when the module had certainly closed it [`CLOSE_MARGIN`] before the
//! replay stopped waiting; the others may still be open, and are checked only if they came.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use edgefilter::aggregate::definition::Having;
use edgefilter::aggregate::time::{format_iso, parse_iso};

use crate::reference::{close, Expected, Reference, Series, Tri};

/// How long after the reference's latest close time a window must have arrived: the module's turn,
/// its publish and the hub's delivery.
pub const CLOSE_MARGIN: i64 = 1000;

/// The messages that came on the aggregates' outputs.
#[derive(Clone, Debug, Default)]
pub struct Summaries {
    pub messages: u64,
    /// Summaries by (aggregate, group key, windowEnd): windowStart and the body.
    pub windows: BTreeMap<(String, String, i64), (i64, Value)>,
    /// The others, by output (aggregates with a `body` send it instead of a summary).
    pub others: Vec<(String, Value)>,
    /// A window sent again with different numbers (the same again is at-least-once delivery).
    pub conflicts: Vec<Mismatch>,
}

/// One difference from the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub aggregate: String,
    pub group: String,
    pub window: String,
    pub field: String,
    pub got: String,
    pub want: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { String::new() } else { format!(" group {}", self.group) };
        write!(f, "{}{group} {}: {} got {}, want {}", self.aggregate, self.window, self.field, self.got, self.want)
    }
}

/// What the comparison found.
#[derive(Clone, Debug, Default)]
pub struct Check {
    /// Aggregate messages received.
    pub messages: u64,
    /// Windows (and `body` messages) that matched the reference.
    pub matched: u64,
    /// Windows that may have been sent but were not, and need not have been: still open when the
    /// replay stopped waiting, or undecided within the tolerances.
    pub unchecked: u64,
    pub mismatches: Vec<Mismatch>,
}

impl Summaries {
    /// One message from an aggregate's output `on`.
    pub fn record(&mut self, on: &str, payload: &[u8]) {
        self.messages += 1;
        let body: Value = serde_json::from_slice(payload).unwrap_or_else(|_| String::from_utf8_lossy(payload).into());
        let text = |k: &str| body.get(k).and_then(Value::as_str);
        let (Some(name), Some(start), Some(end)) = (text("aggregate"), text("windowStart"), text("windowEnd")) else {
            self.others.push((on.to_string(), body));
            return;
        };
        let (Some(start), Some(end)) = (parse_iso(start.as_bytes()), parse_iso(end.as_bytes())) else {
            self.others.push((on.to_string(), body));
            return;
        };
        let group = body.get("group").and_then(crate::reference::group_key).unwrap_or_default();
        let key = (name.to_string(), group, end);
        match self.windows.get(&key) {
            Some((_, first)) if *first != body => self.conflicts.push(Mismatch {
                aggregate: key.0.clone(),
                group: key.1.clone(),
                window: window(start, end),
                field: "summary sent again".into(),
                got: body.to_string(),
                want: first.to_string(),
            }),
            Some(_) => {}
            None => {
                self.windows.insert(key, (start, body));
            }
        }
    }
}

/// `(start, end]` in ISO-8601.
pub fn window(start: i64, end: i64) -> String {
    format!("({}, {}]", format_iso(start), format_iso(end))
}

/// A window the reference knows of: what it holds, whether it is sent, and by when.
struct Candidate {
    group: String,
    end: i64,
    expected: Expected,
    sends: Tri,
    due: i64,
}

fn and(a: Tri, b: Tri) -> Tri {
    match (a, b) {
        (Tri::No, _) | (_, Tri::No) => Tri::No,
        (Tri::Yes, Tri::Yes) => Tri::Yes,
        _ => Tri::Maybe,
    }
}

/// Whether a window passes `having`: undecided when its readings are not all known, or its value
/// is within the function's tolerance of the threshold.
fn having(h: Option<&Having>, e: &Expected) -> Tri {
    let Some(h) = h else { return Tri::Yes };
    if !e.exact() {
        return Tri::Maybe;
    }
    let name = h.function.name();
    let Some(x) = e.value(name) else { return Tri::No };
    if crate::reference::tolerance(name) > 0.0 && close(name, x, h.value, e.scale()) {
        return Tri::Maybe;
    }
    let holds = match h.op.as_str() {
        ">" => x > h.value,
        ">=" => x >= h.value,
        "<" => x < h.value,
        "<=" => x <= h.value,
        "==" => x == h.value,
        _ => x != h.value,
    };
    if holds {
        Tri::Yes
    } else {
        Tri::No
    }
}

/// Whether the window of `group` ending at `end` is sent, and what it holds.
fn candidate(s: &Series, group: &str, end: i64) -> Candidate {
    let expected = s.expected(group, end);
    let held = if !expected.certain.is_empty() || (s.aggregate.emit_empty && group.is_empty()) {
        Tri::Yes
    } else if expected.possible > 0 {
        Tri::Maybe
    } else {
        Tri::No
    };
    let sends = and(and(s.exists(end), held), having(s.aggregate.having.as_ref(), &expected));
    Candidate { group: group.to_string(), end, sends, due: s.due(end), expected }
}

fn candidates(s: &Series, until: i64) -> Vec<Candidate> {
    s.windows(until).iter().map(|(g, end)| candidate(s, g, *end)).collect()
}

/// The windows the module must have sent by `until` (the replay's clock, Unix ms): per aggregate
/// (in the reference's order), those of summaries by (group, end), or how many `body` messages.
pub struct Required(Vec<Result<Vec<(String, i64)>, u64>>);

impl Required {
    pub fn new(reference: &Reference, until: i64) -> Required {
        Required(
            reference
                .series
                .iter()
                .map(|s| {
                    let required = candidates(s, until)
                        .into_iter()
                        .filter(|c| c.sends == Tri::Yes && c.due + CLOSE_MARGIN <= until)
                        .map(|c| (c.group, c.end));
                    if s.aggregate.body.is_some() {
                        Err(required.count() as u64)
                    } else {
                        Ok(required.collect())
                    }
                })
                .collect(),
        )
    }

    /// How many required windows have not come yet (`body` messages counted by output and body).
    pub fn left(&self, reference: &Reference, got: &Summaries) -> usize {
        let mut left = 0;
        let mut bodies: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (s, r) in reference.series.iter().zip(&self.0) {
            match r {
                Ok(windows) => {
                    let name = &s.aggregate.name;
                    left += windows
                        .iter()
                        .filter(|(g, e)| !got.windows.contains_key(&(name.clone(), g.clone(), *e)))
                        .count();
                }
                Err(n) => *bodies.entry(body_key(s)).or_default() += n,
            }
        }
        for (key, n) in bodies {
            let came = got.others.iter().filter(|(on, b)| (on.clone(), b.to_string()) == key).count() as u64;
            left += n.saturating_sub(came) as usize;
        }
        left
    }
}

/// A `body` aggregate's messages are told apart by output and body only.
fn body_key(s: &Series) -> (String, String) {
    let body = s.aggregate.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()).unwrap_or_default();
    (s.aggregate.output.as_str().to_string(), body.to_string())
}

/// Compares what came with the reference: `until` is when the replay stopped waiting, `now` when
/// it stopped listening (windows with `emitEmpty` may have closed until then).
pub fn check(reference: &Reference, got: &Summaries, until: i64, now: i64) -> Check {
    let required = Required::new(reference, until);
    let mut out = Check { messages: got.messages, mismatches: got.conflicts.clone(), ..Check::default() };
    let mut bodies: BTreeMap<(String, String), (Vec<&str>, u64, u64)> = BTreeMap::new();
    for (s, r) in reference.series.iter().zip(&required.0) {
        let all = candidates(s, s.horizon(now));
        match r {
            Err(must) => {
                let b = bodies.entry(body_key(s)).or_default();
                b.0.push(&s.aggregate.name);
                b.1 += must;
                b.2 += all.iter().filter(|c| c.sends != Tri::No).count() as u64;
            }
            Ok(must) => summaries(s, got, must, &all, &mut out),
        }
    }
    for (key, (names, must, may)) in bodies {
        let came = got.others.iter().filter(|(on, b)| (on.clone(), b.to_string()) == key).count() as u64;
        if (must..=may).contains(&came) {
            out.matched += came;
        } else {
            out.mismatches.push(Mismatch {
                aggregate: names.join(","),
                group: String::new(),
                window: "every window".into(),
                field: format!("messages on {}", key.0),
                got: came.to_string(),
                want: if must == may { must.to_string() } else { format!("{must} to {may}") },
            });
        }
    }
    let outputs: HashSet<(String, String)> =
        reference.series.iter().filter(|s| s.aggregate.body.is_some()).map(body_key).collect();
    for (on, b) in &got.others {
        if !outputs.contains(&(on.clone(), b.to_string())) {
            out.mismatches.push(Mismatch {
                aggregate: "?".into(),
                group: String::new(),
                window: "?".into(),
                field: format!("message on {on}"),
                got: b.to_string(),
                want: "a summary or an aggregate's body".into(),
            });
        }
    }
    out
}

/// One summary aggregate's windows: those received against the reference, those required that
/// did not come, and the counts over all windows.
fn summaries(s: &Series, got: &Summaries, must: &[(String, i64)], all: &[Candidate], out: &mut Check) {
    let a = &s.aggregate;
    let name = &a.name;
    let received: BTreeMap<(&str, i64), &(i64, Value)> = got
        .windows
        .range((name.clone(), String::new(), i64::MIN)..)
        .take_while(|((n, _, _), _)| n == name)
        .map(|((_, g, e), v)| ((g.as_str(), *e), v))
        .collect();
    let mut total = 0u64;
    for (&(group, end), (start, body)) in &received {
        let mismatch = |field: &str, got: String, want: String| Mismatch {
            aggregate: name.clone(),
            group: group.to_string(),
            window: window(*start, end),
            field: field.to_string(),
            got,
            want,
        };
        let before = out.mismatches.len();
        let c = candidate(s, group, end);
        total += body["count"].as_u64().unwrap_or(0);
        if *start != end - a.window_ms || s.exists(end) == Tri::No {
            let want = format!("a window of {} s from {} on", a.window_ms / 1000, format_iso(s.first_lo));
            out.mismatches.push(mismatch("window", "this one".into(), want));
        } else if c.sends == Tri::No {
            let want = if c.expected.certain.is_empty() { "no window (no reading)" } else { "no window (having)" };
            out.mismatches.push(mismatch("window", format!("count {}", body["count"]), want.into()));
        } else {
            for f in &a.functions {
                let f = f.name();
                if let Some((got, want)) = differs(f, body.get(f), &c.expected) {
                    out.mismatches.push(mismatch(f, got, want));
                }
            }
        }
        if out.mismatches.len() == before {
            out.matched += 1;
        }
    }
    for (group, end) in must.iter().filter(|(g, e)| !received.contains_key(&(g.as_str(), *e))) {
        let e = s.expected(group, *end);
        out.mismatches.push(Mismatch {
            aggregate: name.clone(),
            group: group.clone(),
            window: window(end - a.window_ms, *end),
            field: "window".into(),
            got: "missing".into(),
            want: format!("sent, with count {}", e.certain.len()),
        });
    }
    out.unchecked += all
        .iter()
        .filter(|c| c.sends != Tri::No && !received.contains_key(&(c.group.as_str(), c.end)))
        .filter(|c| !must.contains(&(c.group.clone(), c.end)))
        .count() as u64;
    let counted = a.functions.iter().any(|f| f.name() == "count");
    if a.hop_ms == a.window_ms && a.having.is_none() && counted {
        // Each reading is in one window: those whose every possible window came are all counted.
        let (mut lo, mut hi) = (0u64, 0u64);
        for (group, readings) in &s.groups {
            for r in readings {
                let end = |t: i64| (t - 1).div_euclid(a.hop_ms) * a.hop_ms + a.hop_ms;
                let came = (end(r.lo)..=end(r.hi))
                    .step_by(a.hop_ms as usize)
                    .map(|e| received.contains_key(&(group.as_str(), e)));
                let came: Vec<bool> = came.collect();
                lo += u64::from(r.certain && came.iter().all(|c| *c));
                hi += u64::from(came.iter().any(|c| *c));
            }
        }
        if !(lo..=hi).contains(&total) {
            out.mismatches.push(Mismatch {
                aggregate: name.clone(),
                group: String::new(),
                window: "every window received".into(),
                field: "sum of counts".into(),
                got: total.to_string(),
                want: if lo == hi { lo.to_string() } else { format!("{lo} to {hi}") },
            });
        }
    }
}

/// How a summary's value of `function` differs from the reference, as (got, want); None when it
/// matches or cannot be known (count is always bounded).
fn differs(function: &str, got: Option<&Value>, e: &Expected) -> Option<(String, String)> {
    let shown = got.map_or("nothing".to_string(), Value::to_string);
    let got = match got {
        Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(x) => Some(x),
            None => return Some((shown, "a number or null".into())),
        },
        None => return Some((shown, "a value".into())),
    };
    if function == "count" && !e.exact() {
        let (lo, hi) = (e.certain.len() as f64, (e.certain.len() as u64 + e.possible) as f64);
        return match got {
            Some(n) if (lo..=hi).contains(&n) => None,
            _ => Some((shown, format!("{lo} to {hi}"))),
        };
    }
    if !e.exact() || (e.unordered && matches!(function, "first" | "last")) {
        return None;
    }
    let want = e.value(function);
    match (got, want) {
        (None, None) => None,
        (Some(g), Some(w)) if close(function, g, w, e.scale()) => None,
        (_, w) => Some((shown, w.map_or("null".into(), |w| Value::from(w).to_string()))),
    }
}
