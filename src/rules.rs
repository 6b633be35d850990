//! Alert rules set in the module twin (`Rules`): what they are, how a twin patch changes them,
//! and the matcher the scanner runs them with. Pure: JSON in, rules or a reason out.
//!
//! ```json
//! "Rules": {
//!   "HighTemperature": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1",
//!                       "properties": {"MessageType": "Alert"}},
//!   "LowBattery":      {"path": "battery", "op": "<", "value": 20, "output": "maintenance"}
//! }
//! ```
//!
//! An object keyed by rule name, not a list: IoT Hub refused arrays in twin properties, and twin
//! patches merge objects key by key, so a patch adds, changes or removes (`null`) one rule, or
//! one field of one rule, without restating the others ([`crate::names::merge_patch`], RFC
//! 7386 as IoT Hub applies it). A rule set that would come out invalid is refused whole: the previous one stays.
//!
//! A message is forwarded once per matching rule, in the order of the rule names. The rules'
//! paths are compiled into a [`Matcher`], a tree of keys the scanner walks in its one pass.

use serde_json::{Map, Value};

use crate::names::{type_name, OutputName};

/// The most rules a set may hold.
pub const MAX_RULES: usize = 16;
/// The most keys in a path.
pub const MAX_PATH_KEYS: usize = 16;
/// The longest rule name, path, and property name or value, in bytes: what a twin reasonably holds
/// (IoT Hub caps a whole twin section at 32 KiB), and what a rejection may quote.
pub const MAX_TEXT: usize = 512;

/// A comparison between a message's number and a rule's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    pub const ALL: [Op; 6] = [Op::Gt, Op::Ge, Op::Lt, Op::Le, Op::Eq, Op::Ne];

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// Whether `x op value` holds (IEEE comparison: `-0 == 0`).
    #[inline]
    pub fn holds(self, x: f64, value: f64) -> bool {
        match self {
            Op::Gt => x > value,
            Op::Ge => x >= value,
            Op::Lt => x < value,
            Op::Le => x <= value,
            Op::Eq => x == value,
            Op::Ne => x != value,
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    /// The object keys leading to the number, unescaped.
    pub path: Vec<String>,
    pub op: Op,
    pub value: f64,
    pub output: OutputName,
    /// Application properties set on the forwarded message (replacing any of the same key).
    pub properties: Vec<(String, String)>,
}

/// A valid rule set: at most [`MAX_RULES`] rules in the order of their names, their twin form,
/// and their matcher.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub rules: Vec<Rule>,
    /// The `Rules` object as the twin holds it, which the next patch merges into.
    pub desired: Map<String, Value>,
    pub matcher: Matcher,
}

impl Rules {
    /// Validates a `Rules` object; the reason names the rule and field at fault.
    pub fn parse(desired: &Map<String, Value>) -> Result<Rules, String> {
        if desired.len() > MAX_RULES {
            return Err(format!("at most {MAX_RULES} rules, got {}", desired.len()));
        }
        let mut rules = desired.iter().map(|(name, v)| rule(name, v)).collect::<Result<Vec<_>, _>>()?;
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        let matcher = Matcher::new(rules.iter().map(|r| r.path.as_slice()));
        Ok(Rules { rules, desired: desired.clone(), matcher })
    }

    /// The rule set as the reported properties show it: each rule in its canonical form.
    pub fn reported(&self) -> Value {
        let mut out = Map::new();
        for r in &self.rules {
            let mut rule = Map::new();
            rule.insert("path".into(), Value::from(format_path(&r.path)));
            rule.insert("op".into(), Value::from(r.op.as_str()));
            rule.insert("value".into(), Value::from(r.value));
            rule.insert("output".into(), Value::from(r.output.as_str()));
            if !r.properties.is_empty() {
                let props = r.properties.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
                rule.insert("properties".into(), Value::Object(props));
            }
            out.insert(r.name.clone(), Value::Object(rule));
        }
        Value::Object(out)
    }

    /// Which rules a message matches, one bit per rule in name order, given the number found at
    /// each rule's path by the scanner (`values[slot]`, NaN where there was none: JSON numbers
    /// are finite).
    #[inline]
    pub fn matches(&self, values: &[f64]) -> u16 {
        let mut mask = 0;
        for (i, r) in self.rules.iter().enumerate() {
            let x = values[usize::from(self.matcher.slot_of[i])];
            if !x.is_nan() && r.op.holds(x, r.value) {
                mask |= 1 << i;
            }
        }
        mask
    }
}

fn rule(name: &str, v: &Value) -> Result<Rule, String> {
    let at = |field: &str, e: String| format!("rule {name:?}: {field}: {e}");
    if name.is_empty() || name.len() > MAX_TEXT {
        return Err(format!("a rule name has 1 to {MAX_TEXT} bytes, got {}", name.len()));
    }
    let Value::Object(o) = v else {
        return Err(format!("rule {name:?}: expected an object, got {}", type_name(v)));
    };
    if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "path" | "op" | "value" | "output" | "properties")) {
        return Err(format!("rule {name:?}: unknown field {k:?} (path, op, value, output, properties)"));
    }
    let string = |field: &str| match o.get(field) {
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => Err(at(field, format!("expected a string, got {}", type_name(other)))),
        None => Err(at(field, "missing".into())),
    };
    let too_long = |field: &str, len: usize| at(field, format!("at most {MAX_TEXT} bytes, got {len}"));
    let path = string("path")?;
    if path.len() > MAX_TEXT {
        return Err(too_long("path", path.len()));
    }
    let path = parse_path(path).map_err(|e| at("path", e))?;
    let op = string("op")
        .and_then(|s| Op::parse(s).ok_or_else(|| at("op", format!("{s:?} is not one of > >= < <= == !="))))?;
    let value = match o.get("value") {
        Some(Value::Number(n)) => {
            n.as_f64().filter(|v| v.is_finite()).ok_or_else(|| at("value", format!("{n} is not finite")))?
        }
        Some(other) => return Err(at("value", format!("expected a number, got {}", type_name(other)))),
        None => return Err(at("value", "missing".into())),
    };
    let output = string("output")?;
    if output.is_empty() {
        return Err(at("output", "empty".into()));
    }
    let output = OutputName::parse(output).map_err(|e| at("output", e))?;
    let properties = match o.get("properties") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(p)) => p
            .iter()
            .map(|(k, v)| match v {
                _ if k.len() > MAX_TEXT => Err(too_long("properties", k.len())),
                Value::String(s) if s.len() > MAX_TEXT => Err(too_long("properties", s.len())),
                _ if k.is_empty() || k.starts_with('$') => {
                    Err(at("properties", format!("{k:?}: an application property name, not empty or $-prefixed")))
                }
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(at("properties", format!("{k:?}: expected a string, got {}", type_name(other)))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(at("properties", format!("expected an object, got {}", type_name(other)))),
    };
    Ok(Rule { name: name.to_string(), path, op, value, output, properties })
}

/// `machine.temperature` → `["machine", "temperature"]`. A key containing a dot or a backslash
/// writes it with a backslash before it (`a\.b` is the one key `a.b`).
pub fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let mut keys = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => keys.push(String::new()),
            '\\' => match chars.next() {
                Some(e @ ('.' | '\\')) => keys.last_mut().unwrap_or(&mut String::new()).push(e),
                _ => return Err(format!("{path:?}: a backslash escapes only . or \\")),
            },
            c => keys.last_mut().unwrap_or(&mut String::new()).push(c),
        }
    }
    if keys.iter().any(String::is_empty) {
        return Err(format!("{path:?}: empty key (paths are keys separated by dots)"));
    }
    if keys.len() > MAX_PATH_KEYS {
        return Err(format!("{path:?}: at most {MAX_PATH_KEYS} keys"));
    }
    Ok(keys)
}

/// The inverse of [`parse_path`].
pub fn format_path(keys: &[String]) -> String {
    let escaped: Vec<String> = keys.iter().map(|k| k.replace('\\', "\\\\").replace('.', "\\.")).collect();
    escaped.join(".")
}

/// The merge patch that turns `old` into `new` ([`crate::names::merge_patch`] of it onto `old`
/// gives `new`).
pub fn diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            for (k, v) in n {
                match o.get(k) {
                    Some(was) if was == v => {}
                    Some(was) => {
                        patch.insert(k.clone(), diff(was, v));
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        (_, new) => new.clone(),
    }
}

/// The rules' paths as a tree of keys, for the scanner's one pass. Node 0 is the document's
/// top-level object. A node where a path ends has a slot, where the scanner writes the number it
/// finds there; slots are numbered in depth-first order, so a node's subtree holds a contiguous
/// range of them, which a later duplicate key clears at once (the last duplicate wins).
#[derive(Clone, Debug, PartialEq)]
pub struct Matcher {
    pub nodes: Vec<Node>,
    /// The slot of each rule's path, by rule index.
    pub slot_of: Vec<u8>,
    /// How many slots there are.
    pub slots: usize,
    /// Every path is `machine.temperature` (one slot, 0): the tutorial's own scanner
    /// ([`crate::scan::scan`]) finds it, in fewer instructions than the general walk.
    pub tutorial_path_only: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The key leading here from the parent (empty for the root).
    pub key: Box<[u8]>,
    /// The key and its closing quote, as a document writes it plainly: when `plain`, a document
    /// key whose raw bytes start with this is this key, with no need to read it as a string.
    pub quoted: Box<[u8]>,
    /// No `"`, `\` or control character in the key, and short enough for one fixed read.
    pub plain: bool,
    /// Child nodes, by index.
    pub children: Vec<u16>,
    /// The slot of a path that ends here.
    pub slot: Option<u8>,
    /// The slots in this subtree, this node's included.
    pub subtree: std::ops::Range<u8>,
}

impl Matcher {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a [String]>) -> Matcher {
        let root = Node::new(b"");
        let mut nodes = vec![root];
        let mut ends = Vec::new();
        for path in paths {
            let mut at = 0;
            for key in path {
                let found = nodes[at].children.iter().map(|&c| c as usize).find(|&c| *nodes[c].key == *key.as_bytes());
                at = found.unwrap_or_else(|| {
                    nodes.push(Node::new(key.as_bytes()));
                    let child = nodes.len() - 1;
                    nodes[at].children.push(child as u16);
                    child
                });
            }
            ends.push(at);
        }
        for &end in &ends {
            nodes[end].slot = Some(0);
        }
        let mut next = 0u8;
        number(&mut nodes, 0, &mut next);
        let slot_of = ends.iter().map(|&e| nodes[e].slot.unwrap_or(0)).collect();
        let tutorial_path_only = next == 1
            && nodes.len() == 3
            && *nodes[1].key == *b"machine"
            && *nodes[2].key == *b"temperature"
            && nodes[1].slot.is_none();
        Matcher { nodes, slot_of, slots: usize::from(next), tutorial_path_only }
    }
}

/// The longest `quoted` key the scanner compares in one fixed read.
pub const PLAIN_KEY_MAX: usize = 16;

impl Node {
    fn new(key: &[u8]) -> Node {
        let quoted: Box<[u8]> = key.iter().copied().chain([b'"']).collect();
        let plain = quoted.len() <= PLAIN_KEY_MAX && !key.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20);
        Node { key: key.into(), quoted, plain, children: Vec::new(), slot: None, subtree: 0..0 }
    }
}

/// Numbers the slots depth first and records each subtree's range.
fn number(nodes: &mut [Node], at: usize, next: &mut u8) {
    let start = *next;
    if nodes[at].slot.is_some() {
        nodes[at].slot = Some(*next);
        *next += 1;
    }
    for i in 0..nodes[at].children.len() {
        number(nodes, usize::from(nodes[at].children[i]), next);
    }
    nodes[at].subtree = start..*next;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::merge_patch as merge;
    use serde_json::json;

    fn rules(v: Value) -> Result<Rules, String> {
        Rules::parse(v.as_object().unwrap())
    }

    #[test]
    fn the_issues_three_rules_parse_in_name_order() {
        let r = rules(json!({
            "HighTemperature": {"path": "machine.temperature", "op": ">", "value": 25, "output": "output1", "properties": {"MessageType": "Alert"}},
            "HighPressure": {"path": "machine.pressure", "op": ">=", "value": 1.5, "output": "output2", "properties": {"MessageType": "PressureAlert"}},
            "LowBattery": {"path": "battery", "op": "<", "value": 20, "output": "maintenance"}
        }))
        .unwrap();
        let names: Vec<&str> = r.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["HighPressure", "HighTemperature", "LowBattery"]);
        assert_eq!(r.rules[1].path, ["machine", "temperature"]);
        assert_eq!(r.rules[0].properties, [("MessageType".to_string(), "PressureAlert".to_string())]);
        assert_eq!(r.rules[2].output.as_str(), "maintenance");
        assert_eq!(r.matcher.slots, 3);
        assert_eq!(Rules::parse(r.reported().as_object().unwrap()).unwrap().rules, r.rules);
    }

    #[test]
    fn paths_escape_dots_and_backslashes() {
        assert_eq!(parse_path("a.b").unwrap(), ["a", "b"]);
        assert_eq!(parse_path(r"a\.b.c").unwrap(), ["a.b", "c"]);
        assert_eq!(parse_path(r"a\\.b").unwrap(), [r"a\", "b"]);
        for bad in ["", ".", "a.", ".a", "a..b", r"a\b", "a\\"] {
            assert!(parse_path(bad).is_err(), "{bad:?}");
        }
        assert!(parse_path(&vec!["k"; MAX_PATH_KEYS + 1].join(".")).is_err());
        for keys in [vec!["a.b".to_string(), r"c\".into()], vec!["x".into()], vec![r"\.\".into(), ".".into()]] {
            assert_eq!(parse_path(&format_path(&keys)).unwrap(), keys);
        }
    }

    #[test]
    fn invalid_rules_are_refused_with_the_rule_and_field_named() {
        let ok = json!({"path": "a", "op": ">", "value": 1, "output": "o"});
        let with = |field: &str, v: Value| {
            let mut r = ok.clone();
            r[field] = v;
            rules(json!({ "R": r })).unwrap_err()
        };
        assert!(with("op", json!("=>")).contains("rule \"R\": op"));
        assert!(with("value", json!("1")).contains("value: expected a number"));
        assert!(with("output", json!("")).contains("output: empty"));
        assert!(with("output", json!("a/b")).contains("output"));
        assert!(with("path", json!("a..b")).contains("path"));
        assert!(with("properties", json!({"$.ct": "x"})).contains("properties"));
        assert!(with("properties", json!({"k": 1})).contains("expected a string"));
        assert!(with("extra", json!(1)).contains("unknown field"));
        assert!(rules(json!({"R": 5})).unwrap_err().contains("expected an object"));
        let long = "k".repeat(MAX_TEXT + 1);
        assert!(with("path", json!(long)).contains("at most 512 bytes"));
        assert!(with("properties", json!({ long.clone(): "v" })).contains("at most 512 bytes"));
        assert!(with("properties", json!({"k": long})).contains("at most 512 bytes"));
        let named = |name: &str| Rules::parse(&[(name.to_string(), ok.clone())].into_iter().collect());
        assert!(named(&long).unwrap_err().len() < 100, "a rejection does not quote a long name");
        assert!(named("").is_err());
        let mut r = ok.as_object().unwrap().clone();
        r.remove("value");
        assert!(rules(json!({ "R": r })).unwrap_err().contains("value: missing"));
        let many: Map<String, Value> = (0..=MAX_RULES).map(|i| (format!("r{i}"), ok.clone())).collect();
        assert!(Rules::parse(&many).unwrap_err().contains("at most 16"));
    }

    #[test]
    fn patches_merge_like_iot_hub() {
        let mut t = json!({"A": {"path": "a", "op": ">", "value": 1, "output": "o"}, "B": {"path": "b"}})
            .as_object()
            .unwrap()
            .clone();
        merge(&mut t, json!({"A": {"value": 2}, "B": null, "C": {"path": "c"}}).as_object().unwrap());
        assert_eq!(
            Value::Object(t),
            json!({"A": {"path": "a", "op": ">", "value": 2, "output": "o"}, "C": {"path": "c"}})
        );
    }

    #[test]
    fn a_diff_merged_onto_the_old_gives_the_new() {
        let old = json!({"A": {"path": "a", "properties": {"x": "1", "y": "2"}}, "B": {"path": "b"}});
        let new = json!({"A": {"path": "a", "properties": {"x": "1"}}, "C": {"path": "c"}});
        let patch = diff(&old, &new);
        assert_eq!(patch, json!({"A": {"properties": {"y": null}}, "B": null, "C": {"path": "c"}}));
        let mut merged = old.as_object().unwrap().clone();
        merge(&mut merged, patch.as_object().unwrap());
        assert_eq!(Value::Object(merged), new);
        assert_eq!(diff(&old, &Value::Null), Value::Null);
    }

    #[test]
    fn ops_compare_as_ieee() {
        let cases = [(Op::Gt, 2.0, 1.0, true), (Op::Ge, 1.0, 1.0, true), (Op::Lt, 1.0, 1.0, false)];
        for (op, x, v, want) in cases {
            assert_eq!(op.holds(x, v), want);
        }
        assert!(Op::Eq.holds(-0.0, 0.0));
        assert!(!Op::Ne.holds(-0.0, 0.0));
        for op in Op::ALL {
            assert_eq!(Op::parse(op.as_str()), Some(op));
        }
    }

    #[test]
    fn the_matcher_shares_prefixes_and_numbers_subtrees() {
        let paths: Vec<Vec<String>> = ["machine.temperature", "machine.pressure", "battery", "machine"]
            .iter()
            .map(|p| parse_path(p).unwrap())
            .collect();
        let m = Matcher::new(paths.iter().map(Vec::as_slice));
        assert_eq!(m.nodes[0].children.len(), 2, "machine and battery");
        let machine = &m.nodes[usize::from(m.nodes[0].children[0])];
        assert_eq!(machine.subtree.len(), 3, "machine, its temperature and pressure");
        assert_eq!(m.slots, 4);
        assert_eq!(m.nodes[0].subtree, 0..4);
        let mut slots = m.slot_of.clone();
        slots.sort();
        assert_eq!(slots, [0, 1, 2, 3]);
        // The same path twice shares one slot.
        let twice = Matcher::new([paths[0].as_slice(), paths[0].as_slice()]);
        assert_eq!((twice.slots, twice.slot_of.clone()), (1, vec![0, 0]));
        assert!(twice.tutorial_path_only);
        assert!(!m.tutorial_path_only);
        assert!(!Matcher::new([paths[3].as_slice()]).tutorial_path_only, "machine alone");
    }
}
