//! Reading an aggregate's fields from a message body, without a DOM.
//!
//! Every path of the set (the aggregated value, event times, group keys) is a slot of one
//! [`Matcher`], read by one pass of the project's lazy scanner that also validates the document,
//! as the alert rules are ([`scan_paths_strings`]): a slot holds the number at its path, or the
//! place of the string there (an ISO-8601 time, a string group key), which is read only when an
//! aggregate asks for it. The filter's own `machine.temperature` is one of the slots when there is
//! room, so that the decision needs no second pass ([`Extractor::temperature`]).
//!
//! A group key is the value's canonical JSON text, at most [`MAX_GROUP_KEY`] bytes: a longer one is
//! no usable group (the reading counts as `no_group`), so that every key an aggregate keeps fits
//! in a checkpoint, whose restore refuses any other ([`is_group_key`]).

use crate::rules::{Matcher, MAX_RULES};
use crate::scan::{scan_paths_strings, scan_with_top_member, Malformed, StringAt, Strings};

/// The most distinct paths (values, times, group keys) in one set: the scanner's slots.
pub const MAX_PATHS: usize = MAX_RULES;
/// The longest group key, as canonical JSON text (with a string's quotes), in bytes.
pub const MAX_GROUP_KEY: usize = crate::rules::MAX_TEXT;

/// One aggregate's fields in one message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading<'a> {
    /// NaN: no number at `path`.
    pub value: f64,
    /// Unix milliseconds; None: no usable time (ignored without `time`).
    pub time: Option<i64>,
    /// The group key as canonical JSON text (`"m1"`, `7`); None: none at `groupBy`, or one longer
    /// than [`MAX_GROUP_KEY`] (ignored without `groupBy`).
    pub group: Option<&'a str>,
}

/// One aggregate's paths: the value's, the event time's and the group key's.
#[derive(Clone, Copy, Debug)]
pub struct Paths<'a> {
    pub value: &'a [String],
    pub time: Option<&'a [String]>,
    pub group: Option<&'a [String]>,
}

/// A set's paths as scanner slots.
#[derive(Clone, Debug, PartialEq)]
pub struct Extractor {
    pub matcher: Matcher,
    /// Per aggregate, in the set's order.
    fields: Vec<Fields>,
    /// The slot of the tutorial's `machine.temperature`, added to the set's paths when there is
    /// room: the filter's threshold (and rules on that path alone) then decide from this one
    /// pass instead of scanning the body again ([`Extractor::temperature`]).
    temperature: Option<u8>,
    /// When the set's paths are `machine.temperature` and one plain top-level key: that key and
    /// its slot, for the tutorial's scanner ([`scan_with_top_member`]).
    top_member: Option<(Box<[u8]>, u8)>,
}

/// Where one aggregate's fields are: the scanner slot of each path.
#[derive(Clone, Debug, PartialEq)]
struct Fields {
    value: u8,
    time: Option<u8>,
    group: Option<u8>,
}

/// One scan of a body for a set's paths: per slot, the number there (NaN: none) and the string
/// there (None: none). Scratch space, not state: equal whatever it holds.
#[derive(Clone, Debug)]
pub struct Scan {
    pub values: [f64; MAX_RULES],
    pub strings: Strings,
    /// The date of the last ISO-8601 time read, and its day ([`super::time::parse_iso_with`]).
    pub last_day: super::time::LastDay,
}

impl Default for Scan {
    fn default() -> Scan {
        Scan { values: [f64::NAN; MAX_RULES], strings: [None; MAX_RULES], last_day: Default::default() }
    }
}

impl PartialEq for Scan {
    fn eq(&self, _: &Scan) -> bool {
        true
    }
}

impl Default for Extractor {
    fn default() -> Extractor {
        Extractor {
            matcher: Matcher::new(std::iter::empty::<&[String]>()),
            fields: Vec::new(),
            temperature: None,
            top_member: None,
        }
    }
}

impl Extractor {
    /// The extractor for a set's aggregates, given in its order as their paths (`path`,
    /// `time.path`, `groupBy`), or why the paths are too many for the scanner.
    pub(super) fn new(aggregates: &[Paths<'_>]) -> Result<Extractor, String> {
        let mut all: Vec<Vec<String>> = Vec::new();
        let mut index = |p: &[String]| -> u8 {
            let i = all.iter().position(|q| q == p).unwrap_or_else(|| {
                all.push(p.to_vec());
                all.len() - 1
            });
            i as u8
        };
        let ids: Vec<_> =
            aggregates.iter().map(|a| (index(a.value), a.time.map(&mut index), a.group.map(&mut index))).collect();
        if all.len() > MAX_PATHS {
            return Err(format!(
                "at most {MAX_PATHS} distinct paths (path, time.path, groupBy) in all, got {}",
                all.len()
            ));
        }
        let tutorial = ["machine".to_string(), "temperature".to_string()];
        let temperature = match all.iter().position(|p| *p == tutorial) {
            Some(i) => Some(i as u8),
            None if all.len() < MAX_PATHS => {
                all.push(tutorial.to_vec());
                Some(all.len() as u8 - 1)
            }
            None => None,
        };
        let matcher = Matcher::new(all.iter().map(Vec::as_slice));
        let slot = |i: u8| matcher.slot_of[usize::from(i)];
        let fields =
            ids.iter().map(|&(v, t, g)| Fields { value: slot(v), time: t.map(slot), group: g.map(slot) }).collect();
        // Two paths, the tutorial's and a plain top-level key: the other one is at 1 - its index.
        let plain = |k: &str| k != "machine" && k.bytes().all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\');
        let top_member = match (temperature, all.len()) {
            (Some(t), 2) => match &all[usize::from(1 - t)][..] {
                [k] if plain(k) => Some((k.as_bytes().into(), slot(1 - t))),
                _ => None,
            },
            _ => None,
        };
        let temperature = temperature.map(slot);
        Ok(Extractor { matcher, fields, temperature, top_member })
    }

    /// The number at the tutorial's `machine.temperature` from a [`Extractor::scan`] of a body
    /// (NaN: none there), as [`crate::scan::scan`] finds it; None when it is not one of the
    /// scan's slots.
    pub fn temperature(&self, scan: &Scan) -> Option<f64> {
        Some(scan.values[usize::from(self.temperature?)])
    }

    /// Scans `doc` once: every slot's number and string, or the reason it is not valid JSON.
    pub fn scan(&self, doc: &[u8], scan: &mut Scan) -> Result<(), Malformed> {
        if self.matcher.tutorial_path_only {
            // Every path is `machine.temperature`: the tutorial's own scanner finds it in fewer
            // instructions than the general walk (measured: about half). It records no string,
            // and needs none: a reading whose value there is no number does not count anyway.
            scan.values[0] = crate::scan::scan(doc).number()?;
            scan.strings[0] = None;
            return Ok(());
        }
        if let (Some((key, at)), Some(t)) = (&self.top_member, self.temperature) {
            // `machine.temperature` and one top-level member (the tutorial's `timeCreated`): the
            // tutorial's scanner reads both, in fewer instructions than the general walk.
            let (found, member) = scan_with_top_member(doc, key);
            scan.values[usize::from(t)] = found.number()?;
            (scan.values[usize::from(*at)], scan.strings[usize::from(*at)]) = (member.number, member.string);
            return Ok(());
        }
        scan_paths_strings(doc, &self.matcher, &mut scan.values, &mut scan.strings)
    }

    /// Aggregate `i`'s fields from the body's `scan`; `group` is a buffer for a key that needs
    /// one (a number, or an escaped string).
    pub fn reading<'a>(&self, i: usize, doc: &'a [u8], scan: &Scan, group: &'a mut String) -> Reading<'a> {
        let fields = &self.fields[i];
        let time = fields.time.and_then(|t| {
            let x = scan.values[usize::from(t)];
            if !x.is_nan() {
                return super::time::from_epoch_seconds(x);
            }
            match scan.strings[usize::from(t)]? {
                StringAt { start, end, escaped: false } => {
                    super::time::parse_iso_with(doc.get(start..end)?, &scan.last_day)
                }
                StringAt { start, end, escaped: true } => {
                    super::time::parse_iso(unescape(doc.get(start..end)?)?.as_bytes())
                }
            }
        });
        let key = fields.group.and_then(|g| {
            let x = scan.values[usize::from(g)];
            if !x.is_nan() {
                *group = canonical_number(x);
                return Some(group.as_str());
            }
            match scan.strings[usize::from(g)]? {
                // The raw text with its quotes: canonical when there are no escapes.
                StringAt { start, end, escaped: false } => std::str::from_utf8(doc.get(start - 1..end + 1)?).ok(),
                StringAt { start, end, escaped: true } => {
                    *group = serde_json::to_string(&unescape(doc.get(start..end)?)?).ok()?;
                    Some(group.as_str())
                }
            }
        });
        let key = key.filter(|k| k.len() <= MAX_GROUP_KEY);
        Reading { value: scan.values[usize::from(fields.value)], time, group: key }
    }
}

/// A number as a group key: an integer without a fraction (`7`), otherwise shortest round-trip.
pub fn canonical_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
        format!("{}", x as i64)
    } else {
        serde_json::Value::from(x).to_string()
    }
}

/// Whether `key` is one [`Extractor::reading`] can make: a JSON string or number as canonical
/// text, at most [`MAX_GROUP_KEY`] bytes. A restore checks a checkpoint's keys with it: a summary's
/// body holds its key as it is.
pub fn is_group_key(key: &str) -> bool {
    use serde_json::Value;
    key.len() <= MAX_GROUP_KEY
        && match serde_json::from_str::<Value>(key) {
            Ok(Value::String(s)) => serde_json::to_string(&s).is_ok_and(|k| k == key),
            Ok(Value::Number(n)) => n.as_f64().is_some_and(|x| canonical_number(x) == key),
            _ => false,
        }
}

/// A valid JSON string's content, unescaped.
fn unescape(raw: &[u8]) -> Option<String> {
    serde_json::from_slice::<String>(&[b"\"", raw, b"\""].concat()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The string at `path` as one scan records it (unescaped), `<other>` for a number.
    fn at(doc: &str, path: &str) -> Option<String> {
        let path = crate::rules::parse_path(path).unwrap();
        let matcher = Matcher::new([path.as_slice()]);
        let mut scan = Scan::default();
        scan_paths_strings(doc.as_bytes(), &matcher, &mut scan.values, &mut scan.strings).unwrap();
        if !scan.values[0].is_nan() {
            return Some("<other>".into());
        }
        let StringAt { start, end, escaped } = scan.strings[0]?;
        let raw = &doc.as_bytes()[start..end];
        Some(if escaped { unescape(raw).unwrap() } else { String::from_utf8(raw.to_vec()).unwrap() })
    }

    #[test]
    fn the_scan_records_strings_as_a_parser_would() {
        let doc = r#"{"a": {"b": "x", "c": [1, {"b": "no"}]}, "t": "2026", "a": {"b": "last\"", "d": {}}, "e": 1}"#;
        assert_eq!(at(doc, "a.b").as_deref(), Some("last\""), "the last duplicate wins");
        assert_eq!(at(doc, "t").as_deref(), Some("2026"));
        assert_eq!(at(doc, "a.c"), None, "the later a has no c");
        assert_eq!(at(doc, "e").as_deref(), Some("<other>"));
        assert_eq!(at(doc, "a.d"), None, "an object is no string");
        assert_eq!(at(doc, "a.d.x"), None);
        assert_eq!(at(r#"{"k\u0065y": "v"}"#, "key").as_deref(), Some("v"));
        assert_eq!(at(r#"{"k": "caf\u00e9", "k": "t\u00e9"}"#, "k").as_deref(), Some("té"));
        assert_eq!(at(r#"[{"a": "v"}]"#, "a"), None);
        assert_eq!(at("{}", "a"), None);
        assert_eq!(at(r#"{"a":{"b":"1"},"a":2}"#, "a.b"), None);
        assert_eq!(at(r#"{"a":{"b":"1"},"a":{"b":2}}"#, "a.b").as_deref(), Some("<other>"));
        assert_eq!(at(r#"{"a":{"b":3},"a":{"b":"s"}}"#, "a.b").as_deref(), Some("s"));
    }

    #[test]
    fn numbers_as_group_keys() {
        assert_eq!(canonical_number(7.0), "7");
        assert_eq!(canonical_number(-0.0), "0");
        assert_eq!(canonical_number(1.5), "1.5");
        assert_eq!(canonical_number(1e300), "1e+300");
    }

    #[test]
    fn group_keys_are_canonical_json_text() {
        for key in [r#""m1""#, r#""a \"b\" \\ c""#, "\"\u{e9}\"", r#""""#, "7", "-3", "1.5", "1e+300"] {
            assert!(is_group_key(key), "{key}");
        }
        for key in ["", "m1", r#""caf\u00e9""#, "7.0", "1e300", "-0", "[1]", "null", r#""a","b""#, "\"x"] {
            assert!(!is_group_key(key), "not as a reading makes it: {key}");
        }
        let quoted = |n: usize| format!("\"{}\"", "k".repeat(n));
        assert!(is_group_key(&quoted(MAX_GROUP_KEY - 2)));
        assert!(!is_group_key(&quoted(MAX_GROUP_KEY - 1)), "one byte over");
    }
}
