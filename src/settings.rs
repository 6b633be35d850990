//! Settings: the module's tunables, typed and validated in one place.
//!
//! Every setting has one name, used alike in the module twin's desired properties, the
//! environment, the reported properties, the logs and the metrics. A value resolves, in order of
//! precedence, from the twin, then the environment variable of the same name, then the built-in
//! default (as iotedge's TemperatureFilter does). A twin value that is the wrong type, not finite
//! or out of range is rejected: the previous value stays, and the rejection is logged and
//! reported under `RejectedSettings`. Setting a desired property to `null` removes it, so the
//! value falls back to the environment or default. Unknown desired properties are ignored.
//!
//! All of this is pure: JSON in, settings and rejections out. [`SettingsCell`] is how a new value
//! reaches the data path: published whole, read without a lock.

use serde_json::{Map, Value};

use crate::aggregate::AggregateSet;
pub use crate::names::{merge_patch, type_name, OutputName};
use crate::rules::{self, Rules};

/// The effective settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// A message alerts when `machine.temperature` is strictly greater than this.
    pub temperature_threshold: f64,
    /// The most alerts written to the hub in one go.
    pub batch_size: u32,
    /// The longest an alert waits for its batch to fill, in milliseconds.
    pub batch_interval_ms: u32,
    /// How often statistics go to the log and the reported properties, in seconds.
    pub report_interval_secs: u32,
    /// Where malformed messages go, with a `FilterError` property, instead of being dropped
    /// (empty: nowhere).
    pub dead_letter_output: OutputName,
    /// Alert rules from the twin (`Rules`); None: the tutorial's rule from `TemperatureThreshold`.
    pub rules: Option<std::sync::Arc<Rules>>,
    /// Windowed aggregates from the twin (`Aggregates`); None: none.
    pub aggregates: Option<std::sync::Arc<AggregateSet>>,
    /// How often the aggregates' open windows are saved to the state directory, in seconds
    /// (`CheckpointSeconds`): also the most input a crash can lose from them.
    pub checkpoint_secs: u32,
    /// When an input is acknowledged (`AckMode`).
    pub ack_mode: AckMode,
}

/// When an input message is acknowledged to the hub (`AckMode`; docs/reliability.md says what
/// each guarantees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckMode {
    /// Once the hub has confirmed every alert made from it: no failure loses an alert.
    #[default]
    Confirmed,
    /// Right behind its alerts, in the same write; the alerts are kept until confirmed and sent
    /// again after a reconnect: no single failure, of the module or of the hub, loses an alert.
    Pipelined,
}

impl AckMode {
    pub fn name(self) -> &'static str {
        match self {
            AckMode::Confirmed => "confirmed",
            AckMode::Pipelined => "pipelined",
        }
    }

    pub fn parse(s: &str) -> Result<AckMode, String> {
        match s {
            "confirmed" => Ok(AckMode::Confirmed),
            "pipelined" => Ok(AckMode::Pipelined),
            other => Err(format!("{other:?} is not confirmed or pipelined")),
        }
    }
}

impl Settings {
    /// `BatchIntervalMs` as a duration.
    pub fn batch_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.batch_interval_ms))
    }
}

/// The name of `DeadLetterOutput`, the one setting that is a string.
const DEAD_LETTER_OUTPUT: &str = "DeadLetterOutput";
/// The name of `AckMode`.
const ACK_MODE: &str = "AckMode";
/// The name of `Rules`, the one setting that is an object (twin only: see [`crate::rules`]).
pub const RULES: &str = "Rules";
/// The name of `Aggregates`, an object like `Rules` (twin only: see [`crate::aggregate`]).
pub const AGGREGATES: &str = "Aggregates";

/// One setting's name, range and how it lives in [`Settings`].
struct Spec {
    name: &'static str,
    min: f64,
    max: f64,
    integer: bool,
    get: fn(&Settings) -> f64,
    set: fn(&mut Settings, f64),
}

const SPECS: &[Spec] = &[
    Spec {
        name: "TemperatureThreshold",
        min: -1.0e6,
        max: 1.0e6,
        integer: false,
        get: |s| s.temperature_threshold,
        set: |s, v| s.temperature_threshold = v,
    },
    Spec {
        name: "BatchSize",
        min: 1.0,
        max: 10_000.0,
        integer: true,
        get: |s| f64::from(s.batch_size),
        set: |s, v| s.batch_size = v as u32,
    },
    Spec {
        name: "BatchIntervalMs",
        min: 0.0,
        max: 60_000.0,
        integer: true,
        get: |s| f64::from(s.batch_interval_ms),
        set: |s, v| s.batch_interval_ms = v as u32,
    },
    Spec {
        name: "ReportIntervalSecs",
        min: 1.0,
        max: 86_400.0,
        integer: true,
        get: |s| f64::from(s.report_interval_secs),
        set: |s, v| s.report_interval_secs = v as u32,
    },
    Spec {
        name: "CheckpointSeconds",
        min: 1.0,
        max: 3_600.0,
        integer: true,
        get: |s| f64::from(s.checkpoint_secs),
        set: |s, v| s.checkpoint_secs = v as u32,
    },
];

/// The names of all settings, as they appear in the twin and the environment.
pub fn names() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|s| s.name).chain([DEAD_LETTER_OUTPUT, ACK_MODE, RULES, AGGREGATES])
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            temperature_threshold: 25.0,
            batch_size: 100,
            batch_interval_ms: 10,
            report_interval_secs: 60,
            dead_letter_output: OutputName::NONE,
            rules: None,
            aggregates: None,
            checkpoint_secs: 5,
            ack_mode: AckMode::Confirmed,
        }
    }
}

/// A rejected value: which setting, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub name: &'static str,
    pub reason: String,
}

/// The outcome of applying desired properties.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub settings: Settings,
    /// The names whose effective value changed.
    pub changed: Vec<&'static str>,
    pub rejected: Vec<Rejection>,
}

/// How desired properties arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `desired` section of a full twin: a setting that is absent falls back to its base.
    FullTwin,
    /// A patch: a setting that is absent keeps its current value.
    Patch,
}

/// Settings from the environment (`TemperatureThreshold=30`) over the defaults. Invalid values
/// are an error naming the variable: the module must not start on a misconfiguration.
pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let mut settings = Settings::default();
    for spec in SPECS {
        if let Some(raw) = lookup(spec.name) {
            let value = raw
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{}: expected a number, got {raw:?}", spec.name))
                .and_then(|v| check(spec, v).map_err(|e| format!("{}: {e}", spec.name)))?;
            (spec.set)(&mut settings, value);
        }
    }
    if let Some(raw) = lookup(DEAD_LETTER_OUTPUT) {
        settings.dead_letter_output =
            OutputName::parse(raw.trim()).map_err(|e| format!("{DEAD_LETTER_OUTPUT}: {e}"))?;
    }
    if let Some(raw) = lookup(ACK_MODE) {
        settings.ack_mode = AckMode::parse(raw.trim()).map_err(|e| format!("{ACK_MODE}: {e}"))?;
    }
    Ok(settings)
}

/// Applies desired properties to `current`. `base` is what a removed or absent setting falls
/// back to (the environment over the defaults).
pub fn apply_desired(current: &Settings, base: &Settings, desired: &Map<String, Value>, source: Source) -> Applied {
    let mut next = current.clone();
    let mut rejected = Vec::new();
    for spec in SPECS {
        let value = match (desired.get(spec.name), source) {
            (None, Source::Patch) => continue,
            (None | Some(Value::Null), _) => (spec.get)(base),
            (Some(v), _) => match parse(spec, v) {
                Ok(v) => v,
                Err(reason) => {
                    rejected.push(Rejection { name: spec.name, reason });
                    continue;
                }
            },
        };
        (spec.set)(&mut next, value);
    }
    match (desired.get(DEAD_LETTER_OUTPUT), source) {
        (None, Source::Patch) => {}
        (None | Some(Value::Null), _) => next.dead_letter_output = base.dead_letter_output,
        (Some(Value::String(name)), _) => match OutputName::parse(name) {
            Ok(name) => next.dead_letter_output = name,
            Err(reason) => rejected.push(Rejection { name: DEAD_LETTER_OUTPUT, reason }),
        },
        (Some(other), _) => rejected.push(Rejection {
            name: DEAD_LETTER_OUTPUT,
            reason: format!("expected a string, got {}", type_name(other)),
        }),
    }
    match (desired.get(ACK_MODE), source) {
        (None, Source::Patch) => {}
        (None | Some(Value::Null), _) => next.ack_mode = base.ack_mode,
        (Some(Value::String(mode)), _) => match AckMode::parse(mode) {
            Ok(mode) => next.ack_mode = mode,
            Err(reason) => rejected.push(Rejection { name: ACK_MODE, reason }),
        },
        (Some(other), _) => {
            rejected.push(Rejection { name: ACK_MODE, reason: format!("expected a string, got {}", type_name(other)) })
        }
    }
    let current_rules = current.rules.as_ref().map(|r| &r.desired);
    match apply_object(current_rules, desired.get(RULES), source, "rules", Rules::parse) {
        Ok(Some(rules)) => next.rules = rules.map(std::sync::Arc::new),
        Ok(None) => {}
        Err(reason) => rejected.push(Rejection { name: RULES, reason }),
    }
    let current_aggregates = current.aggregates.as_ref().map(|a| &a.desired);
    match apply_object(current_aggregates, desired.get(AGGREGATES), source, "aggregates", AggregateSet::parse) {
        Ok(Some(set)) => next.aggregates = set.map(std::sync::Arc::new),
        Ok(None) => {}
        Err(reason) => rejected.push(Rejection { name: AGGREGATES, reason }),
    }
    let mut changed: Vec<&'static str> =
        SPECS.iter().filter(|s| (s.get)(current).to_bits() != (s.get)(&next).to_bits()).map(|s| s.name).collect();
    if current.dead_letter_output != next.dead_letter_output {
        changed.push(DEAD_LETTER_OUTPUT);
    }
    if current.ack_mode != next.ack_mode {
        changed.push(ACK_MODE);
    }
    if current.rules != next.rules {
        changed.push(RULES);
    }
    if current.aggregates != next.aggregates {
        changed.push(AGGREGATES);
    }
    Applied { settings: next, changed, rejected }
}

/// An object setting (`Rules`, `Aggregates`) after `desired` (of a full twin, or a patch merged
/// into the `current` object): Ok(None) when unchanged, Ok(Some(None)) when it is empty, Err when
/// the result would be invalid (the current value stays).
fn apply_object<T>(
    current: Option<&Map<String, Value>>,
    desired: Option<&Value>,
    source: Source,
    what: &str,
    parse: fn(&Map<String, Value>) -> Result<T, String>,
) -> Result<Option<Option<T>>, String> {
    let merged = match (desired, source) {
        (None, Source::Patch) => return Ok(None),
        (None | Some(Value::Null), _) => Map::new(),
        (Some(Value::Object(o)), Source::FullTwin) => o.clone(),
        (Some(Value::Object(patch)), Source::Patch) => {
            let mut merged = current.cloned().unwrap_or_default();
            merge_patch(&mut merged, patch);
            merged
        }
        (Some(other), _) => return Err(format!("expected an object of {what}, got {}", type_name(other))),
    };
    if merged.is_empty() {
        return Ok(Some(None));
    }
    parse(&merged).map(|r| Some(Some(r)))
}

fn parse(spec: &Spec, v: &Value) -> Result<f64, String> {
    let n = match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not representable"))?,
        other => return Err(format!("expected a number, got {}", type_name(other))),
    };
    check(spec, n)
}

fn check(spec: &Spec, n: f64) -> Result<f64, String> {
    if !n.is_finite() {
        return Err(format!("{n} is not a finite number"));
    }
    if spec.integer && n.fract() != 0.0 {
        return Err(format!("expected a whole number, got {n}"));
    }
    if n < spec.min || n > spec.max {
        return Err(format!("{n} is out of range {}..={}", spec.min, spec.max));
    }
    Ok(n)
}

/// The reported-properties patch: the effective settings, and under `RejectedSettings` the reason
/// for each setting whose last desired value was refused (`null`, which removes the entry, for
/// the others).
///
/// `Rules` and `Aggregates` are reported as the patch that turns the `previous` settings' report
/// into the current one (removed entries and fields as `null`): reported properties merge like
/// desired ones.
pub fn reported<'a>(settings: &Settings, previous: impl Into<Previous<'a>>, rejected: &[Rejection]) -> Value {
    let previous = previous.into();
    let mut out = Map::new();
    let mut rejections = Map::new();
    for spec in SPECS {
        let v = (spec.get)(settings);
        let v = if spec.integer { Value::from(v as i64) } else { Value::from(v) };
        out.insert(spec.name.to_string(), v);
        let reason = rejected.iter().find(|r| r.name == spec.name).map(|r| Value::from(r.reason.clone()));
        rejections.insert(spec.name.to_string(), reason.unwrap_or(Value::Null));
    }
    out.insert(DEAD_LETTER_OUTPUT.to_string(), Value::from(settings.dead_letter_output.as_str()));
    let reason = rejected.iter().find(|r| r.name == DEAD_LETTER_OUTPUT).map(|r| Value::from(r.reason.clone()));
    rejections.insert(DEAD_LETTER_OUTPUT.to_string(), reason.unwrap_or(Value::Null));
    out.insert(ACK_MODE.to_string(), Value::from(settings.ack_mode.name()));
    let reason = rejected.iter().find(|r| r.name == ACK_MODE).map(|r| Value::from(r.reason.clone()));
    rejections.insert(ACK_MODE.to_string(), reason.unwrap_or(Value::Null));
    let now = settings.rules.as_ref().map_or(Value::Null, |r| r.reported());
    out.insert(RULES.to_string(), rules::diff(&previous.rules.map_or(Value::Null, Rules::reported), &now));
    let reason = rejected.iter().find(|r| r.name == RULES).map(|r| Value::from(r.reason.clone()));
    rejections.insert(RULES.to_string(), reason.unwrap_or(Value::Null));
    let now = settings.aggregates.as_ref().map_or(Value::Null, |a| a.reported());
    let was = previous.aggregates.map_or(Value::Null, AggregateSet::reported);
    out.insert(AGGREGATES.to_string(), rules::diff(&was, &now));
    let reason = rejected.iter().find(|r| r.name == AGGREGATES).map(|r| Value::from(r.reason.clone()));
    rejections.insert(AGGREGATES.to_string(), reason.unwrap_or(Value::Null));
    out.insert("RejectedSettings".to_string(), Value::Object(rejections));
    Value::Object(out)
}

/// The object settings a reported patch is the difference from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Previous<'a> {
    pub rules: Option<&'a Rules>,
    pub aggregates: Option<&'a AggregateSet>,
}

impl<'a> From<&'a Settings> for Previous<'a> {
    fn from(s: &'a Settings) -> Previous<'a> {
        Previous { rules: s.rules.as_deref(), aggregates: s.aggregates.as_deref() }
    }
}

/// The previous rule set alone: `Aggregates` is then reported whole, as a first report is (pass
/// the previous [`Settings`] for a patch that also removes aggregates).
impl<'a> From<Option<&'a Rules>> for Previous<'a> {
    fn from(rules: Option<&'a Rules>) -> Previous<'a> {
        Previous { rules, aggregates: None }
    }
}

/// The rejections to report after `desired` was applied: what it refused, and what was refused
/// before and is still refused because this patch did not set it again. A full twin says every
/// setting anew, so only its own refusals remain. (Before, a patch touching only `BatchSize`
/// reported a refused `TemperatureThreshold` as no longer refused, its desired value unchanged.)
pub fn still_rejected(
    before: &[Rejection],
    now: &[Rejection],
    desired: &Map<String, Value>,
    source: Source,
) -> Vec<Rejection> {
    let mut out = now.to_vec();
    if source == Source::Patch {
        out.extend(before.iter().filter(|r| !desired.contains_key(r.name)).cloned());
    }
    out
}

/// The `$version` of a desired section or patch, when present.
pub fn desired_version(desired: &Map<String, Value>) -> Option<u64> {
    desired.get("$version").and_then(Value::as_u64)
}
