//! The `Aggregates` twin property: what each aggregate is, validated once, with reasons that name
//! the aggregate and the field. An object keyed by aggregate name, merged from patches as `Rules`
//! is ([`crate::names::merge_patch`]), and refused whole when invalid.
//!
//! `functions` is a list, written as a JSON array or as one string (`"avg,min,max,count"`): the
//! reported properties use the string, because IoT Hub has refused arrays in twins (see
//! [`crate::rules`]).

use serde_json::{Map, Value};

use super::extract::{Extractor, Paths};
use super::summary::Function;
use crate::names::{type_name, OutputName};
use crate::rules::{format_path, parse_path, Op, MAX_TEXT};

/// The most aggregates a set may hold.
pub const MAX_AGGREGATES: usize = 16;
/// The most groups one aggregate keeps open; readings of further groups are dropped (counted).
pub const MAX_GROUPS: usize = 1000;
/// The longest window: ASA's limit, 7 days.
pub const MAX_WINDOW_SECONDS: u64 = 7 * 86_400;
/// The most windows a hopping window's reading falls in (seconds / hopSeconds).
pub const MAX_HOPS: u64 = 60;
/// The longest `lateSeconds`: a day, and at most [`MAX_HOPS`] hops, so that a group keeps at
/// most [`MAX_PANES`] panes.
pub const MAX_LATE_SECONDS: u64 = 86_400;
/// How far ahead of the module's clock an event time may be: ASA's fixed 5 minutes.
pub const EARLY_MS: i64 = 5 * 60 * 1000;
/// The most panes one group holds: a window's, those `lateSeconds` holds open, those of readings up
/// to 5 minutes early (at a 1-second hop), and one on either side.
pub const MAX_PANES: usize = 2 * MAX_HOPS as usize + (EARLY_MS / 1000) as usize + 2;
/// The longest `body`, serialised.
pub const MAX_BODY: usize = 4096;

/// What happens to a reading older than the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Late {
    /// Not counted (the `late` drop reason).
    Drop,
    /// Counted at the watermark: in the oldest window still open.
    Adjust,
}

/// Where a reading's time comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct EventTime {
    pub path: Vec<String>,
    pub late_ms: i64,
    pub late: Late,
}

/// `having`: a window that fails it sends nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Having {
    pub function: Function,
    pub op: Op,
    pub value: f64,
}

/// One aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub name: String,
    pub path: Vec<String>,
    /// Window length and hop, in milliseconds (equal for a tumbling window).
    pub window_ms: i64,
    pub hop_ms: i64,
    pub functions: Vec<Function>,
    /// None: the time a message is read.
    pub time: Option<EventTime>,
    pub group_by: Option<Vec<String>>,
    pub having: Option<Having>,
    pub output: OutputName,
    pub properties: Vec<(String, String)>,
    /// Sent instead of the summary, serialised.
    pub body: Option<String>,
    pub emit_empty: bool,
}

impl Aggregate {
    /// Whether the state keeps a percentile sketch.
    pub fn percentiles(&self) -> bool {
        self.functions.iter().chain(self.having.as_ref().map(|h| &h.function)).any(|f| f.percent().is_some())
    }

    /// Panes (hops) per window.
    pub fn hops(&self) -> i64 {
        self.window_ms / self.hop_ms
    }
}

/// A valid set: at most [`MAX_AGGREGATES`] in name order, and the twin's object they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateSet {
    pub aggregates: Vec<Aggregate>,
    /// The `Aggregates` object as the twin holds it, which the next patch merges into.
    pub desired: Map<String, Value>,
    /// Every path of the set as a slot of the scanner.
    pub extractor: Extractor,
    /// Each aggregate's [`definition_hash`], made once (every checkpoint names them).
    pub hashes: Vec<u64>,
}

impl AggregateSet {
    pub fn parse(desired: &Map<String, Value>) -> Result<AggregateSet, String> {
        if desired.len() > MAX_AGGREGATES {
            return Err(format!("at most {MAX_AGGREGATES} aggregates, got {}", desired.len()));
        }
        let mut aggregates = desired.iter().map(|(n, v)| aggregate(n, v)).collect::<Result<Vec<_>, _>>()?;
        aggregates.sort_by(|a, b| a.name.cmp(&b.name));
        let hashes = aggregates.iter().map(definition_hash).collect();
        let mut set = AggregateSet { aggregates, desired: desired.clone(), extractor: Extractor::default(), hashes };
        let paths: Vec<Paths<'_>> = set
            .aggregates
            .iter()
            .map(|a| Paths {
                value: &a.path,
                time: a.time.as_ref().map(|t| t.path.as_slice()),
                group: a.group_by.as_deref(),
            })
            .collect();
        set.extractor = Extractor::new(&paths)?;
        Ok(set)
    }

    /// The set as the reported properties show it: each aggregate in its canonical form.
    pub fn reported(&self) -> Value {
        Value::Object(self.aggregates.iter().map(|a| (a.name.clone(), reported(a))).collect())
    }
}

/// An aggregate's canonical form, as reported; a checkpoint names a definition by its hash.
pub fn reported(a: &Aggregate) -> Value {
    let mut o = Map::new();
    o.insert("path".into(), format_path(&a.path).into());
    let mut w = Map::new();
    w.insert("kind".into(), if a.hop_ms == a.window_ms { "tumbling" } else { "hopping" }.into());
    w.insert("seconds".into(), (a.window_ms / 1000).into());
    if a.hop_ms != a.window_ms {
        w.insert("hopSeconds".into(), (a.hop_ms / 1000).into());
    }
    o.insert("window".into(), w.into());
    let names: Vec<&str> = a.functions.iter().map(|f| f.name()).collect();
    o.insert("functions".into(), names.join(",").into());
    if let Some(t) = &a.time {
        let late = if t.late == Late::Drop { "drop" } else { "adjust" };
        let time =
            [("path", format_path(&t.path).into()), ("lateSeconds", (t.late_ms / 1000).into()), ("late", late.into())];
        o.insert("time".into(), Value::Object(time.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    }
    if let Some(g) = &a.group_by {
        o.insert("groupBy".into(), format_path(g).into());
    }
    if let Some(h) = &a.having {
        let having = [("function", h.function.name().into()), ("op", h.op.as_str().into()), ("value", h.value.into())];
        o.insert("having".into(), Value::Object(having.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    }
    o.insert("output".into(), a.output.as_str().into());
    if !a.properties.is_empty() {
        o.insert("properties".into(), a.properties.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect());
    }
    if let Some(b) = &a.body {
        o.insert("body".into(), serde_json::from_str(b).unwrap_or(Value::Null));
    }
    if a.emit_empty {
        o.insert("emitEmpty".into(), true.into());
    }
    o.into()
}

const FIELDS: &str = "path, window, functions, time, groupBy, having, output, properties, body, emitEmpty";

fn aggregate(name: &str, v: &Value) -> Result<Aggregate, String> {
    if name.is_empty() || name.len() > MAX_TEXT {
        return Err(format!("an aggregate name has 1 to {MAX_TEXT} bytes, got {}", name.len()));
    }
    let at = |field: &str, e: String| format!("aggregate {name:?}: {field}: {e}");
    let Value::Object(o) = v else {
        return Err(format!("aggregate {name:?}: expected an object, got {}", type_name(v)));
    };
    if let Some(k) = o.keys().find(|k| !FIELDS.split(", ").any(|f| f == k.as_str())) {
        return Err(format!("aggregate {name:?}: unknown field {k:?} ({FIELDS})"));
    }
    let path_at = |field: &str, v: Option<&Value>| -> Result<Vec<String>, String> {
        match v {
            Some(Value::String(s)) if s.len() > MAX_TEXT => {
                Err(at(field, format!("at most {MAX_TEXT} bytes, got {}", s.len())))
            }
            Some(Value::String(s)) => parse_path(s).map_err(|e| at(field, e)),
            Some(other) => Err(at(field, format!("expected a path string, got {}", type_name(other)))),
            None => Err(at(field, "missing".into())),
        }
    };
    let path = path_at("path", o.get("path"))?;
    let (window_ms, hop_ms) = window(o.get("window")).map_err(|e| at("window", e))?;
    let functions = functions(o.get("functions")).map_err(|e| at("functions", e))?;
    let time = match o.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => {
            let time = event_time(t).map_err(|e| at("time", e))?;
            if time.late_ms > MAX_HOPS as i64 * hop_ms {
                let most = MAX_HOPS as i64 * hop_ms / 1000;
                return Err(at("time", format!("lateSeconds: at most {MAX_HOPS} hops of the window ({most} s)")));
            }
            Some(time)
        }
        Some(other) => return Err(at("time", format!("expected an object, got {}", type_name(other)))),
    };
    let group_by = match o.get("groupBy") {
        None | Some(Value::Null) => None,
        g => Some(path_at("groupBy", g)?),
    };
    let having = match o.get("having") {
        None | Some(Value::Null) => None,
        Some(h) => Some(having(h).map_err(|e| at("having", e))?),
    };
    let output = match o.get("output") {
        Some(Value::String(s)) if s.is_empty() => return Err(at("output", "empty".into())),
        Some(Value::String(s)) => OutputName::parse(s).map_err(|e| at("output", e))?,
        Some(other) => return Err(at("output", format!("expected a string, got {}", type_name(other)))),
        None => return Err(at("output", "missing".into())),
    };
    let properties = properties(o.get("properties")).map_err(|e| at("properties", e))?;
    let body = body(o.get("body")).map_err(|e| at("body", e))?;
    let emit_empty = match o.get("emitEmpty") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(at("emitEmpty", format!("expected a boolean, got {}", type_name(other)))),
    };
    if emit_empty && group_by.is_some() {
        return Err(at("emitEmpty", "not with groupBy: an empty window belongs to no group".into()));
    }
    Ok(Aggregate {
        name: name.to_string(),
        path,
        window_ms,
        hop_ms,
        functions,
        time,
        group_by,
        having,
        output,
        properties,
        body,
        emit_empty,
    })
}

/// `body`: a JSON object sent instead of the summary, kept serialised.
fn body(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(b @ Value::Object(_)) => {
            let text = b.to_string();
            if text.len() > MAX_BODY {
                return Err(format!("at most {MAX_BODY} bytes, got {}", text.len()));
            }
            Ok(Some(text))
        }
        Some(other) => Err(format!("expected an object, got {}", type_name(other))),
    }
}

fn whole_seconds(o: &Map<String, Value>, field: &str, max: u64) -> Result<i64, String> {
    match o.get(field) {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) if (1..=max).contains(&s) => Ok(s as i64 * 1000),
            _ => Err(format!("{field}: a whole number of seconds from 1 to {max}, got {n}")),
        },
        Some(other) => Err(format!("{field}: expected a number, got {}", type_name(other))),
        None => Err(format!("{field}: missing")),
    }
}

fn window(v: Option<&Value>) -> Result<(i64, i64), String> {
    let o = match v {
        Some(Value::Object(o)) => o,
        Some(other) => return Err(format!("expected an object, got {}", type_name(other))),
        None => return Err("missing".into()),
    };
    let kind = o.get("kind").and_then(Value::as_str);
    let allowed = |extra: &[&str]| match o.keys().find(|k| !["kind", "seconds"].iter().chain(extra).any(|f| f == k)) {
        Some(k) => Err(format!("unknown field {k:?}")),
        None => Ok(()),
    };
    let seconds = whole_seconds(o, "seconds", MAX_WINDOW_SECONDS)?;
    match kind {
        Some("tumbling") => allowed(&[]).map(|()| (seconds, seconds)),
        Some("hopping") => {
            allowed(&["hopSeconds"])?;
            let hop = whole_seconds(o, "hopSeconds", MAX_WINDOW_SECONDS)?;
            if seconds % hop != 0 || seconds / hop > MAX_HOPS as i64 {
                return Err(format!("seconds must be a multiple of hopSeconds, at most {MAX_HOPS} times it"));
            }
            Ok((seconds, hop))
        }
        _ => Err(format!(
            "kind: \"tumbling\" or \"hopping\", got {}",
            o.get("kind").map_or("nothing".into(), |k| k.to_string())
        )),
    }
}

fn functions(v: Option<&Value>) -> Result<Vec<Function>, String> {
    let names: Vec<&str> = match v {
        Some(Value::String(s)) => s.split(',').map(str::trim).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|f| f.as_str().ok_or_else(|| format!("expected names, got {}", type_name(f))))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("expected a list of names, got {}", type_name(other))),
        None => return Err("missing".into()),
    };
    let mut out = Vec::new();
    for n in names {
        let f = Function::parse(n)
            .ok_or_else(|| format!("{n:?} is not one of count sum avg min max stdev first last p50 p90 p95 p99"))?;
        if out.contains(&f) {
            return Err(format!("{n:?} twice"));
        }
        out.push(f);
    }
    if out.is_empty() {
        return Err("empty".into());
    }
    Ok(out)
}

fn event_time(t: &Map<String, Value>) -> Result<EventTime, String> {
    if let Some(k) = t.keys().find(|k| !matches!(k.as_str(), "path" | "lateSeconds" | "late")) {
        return Err(format!("unknown field {k:?} (path, lateSeconds, late)"));
    }
    let path = match t.get("path") {
        Some(Value::String(s)) if s.len() > MAX_TEXT => {
            return Err(format!("path: at most {MAX_TEXT} bytes, got {}", s.len()))
        }
        Some(Value::String(s)) => parse_path(s).map_err(|e| format!("path: {e}"))?,
        Some(other) => return Err(format!("path: expected a path string, got {}", type_name(other))),
        None => return Err("path: missing".into()),
    };
    let late_ms = match t.get("lateSeconds") {
        None => 5000,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) if s <= MAX_LATE_SECONDS => s as i64 * 1000,
            _ => return Err(format!("lateSeconds: a whole number from 0 to {MAX_LATE_SECONDS}, got {n}")),
        },
        Some(other) => return Err(format!("lateSeconds: expected a number, got {}", type_name(other))),
    };
    let late = match t.get("late") {
        None => Late::Drop,
        Some(Value::String(s)) if s == "drop" => Late::Drop,
        Some(Value::String(s)) if s == "adjust" => Late::Adjust,
        Some(other) => return Err(format!("late: \"drop\" or \"adjust\", got {other}")),
    };
    Ok(EventTime { path, late_ms, late })
}

fn having(v: &Value) -> Result<Having, String> {
    let Value::Object(h) = v else {
        return Err(format!("expected an object, got {}", type_name(v)));
    };
    if let Some(k) = h.keys().find(|k| !matches!(k.as_str(), "function" | "op" | "value")) {
        return Err(format!("unknown field {k:?} (function, op, value)"));
    }
    let function = match h.get("function") {
        Some(Value::String(s)) => {
            Function::parse(s).ok_or_else(|| format!("function: {s:?} is not an aggregate function"))?
        }
        _ => return Err("function: expected a function name".into()),
    };
    let op = match h.get("op") {
        Some(Value::String(s)) => Op::parse(s).ok_or_else(|| format!("op: {s:?} is not one of > >= < <= == !="))?,
        _ => return Err("op: expected one of > >= < <= == !=".into()),
    };
    let value = match h.get("value") {
        Some(Value::Number(n)) => {
            n.as_f64().filter(|v| v.is_finite()).ok_or_else(|| format!("value: {n} is not finite"))?
        }
        Some(other) => return Err(format!("value: expected a number, got {}", type_name(other))),
        None => return Err("value: missing".into()),
    };
    Ok(Having { function, op, value })
}

fn properties(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(p)) => p
            .iter()
            .map(|(k, v)| match v {
                _ if k.len() > MAX_TEXT => Err(format!("a name of at most {MAX_TEXT} bytes, got {}", k.len())),
                Value::String(s) if s.len() > MAX_TEXT => {
                    Err(format!("{k:?}: at most {MAX_TEXT} bytes, got {}", s.len()))
                }
                _ if k.is_empty() || k.starts_with('$') => {
                    Err(format!("{k:?}: an application property name, not empty or $-prefixed"))
                }
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!("{k:?}: expected a string, got {}", type_name(other))),
            })
            .collect(),
        Some(other) => Err(format!("expected an object, got {}", type_name(other))),
    }
}

/// The hash naming a definition (in checkpoints: a window is restored only into the definition it
/// was kept for).
pub fn definition_hash(a: &Aggregate) -> u64 {
    super::fnv::fnv1a(reported(a).to_string().as_bytes())
}
