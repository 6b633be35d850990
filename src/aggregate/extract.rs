//! Reading an aggregate's fields from a message body, without a DOM.
//!
//! Numbers (the aggregated value, epoch-second times, numeric group keys) come from the project's
//! lazy scanner: every path of the set is a slot of one [`Matcher`], read by one
//! [`scan_paths`] pass that also validates the document, as the alert rules are.
//!
//! The scanner records numbers only. A time written as an ISO-8601 string, or a group key that
//! is a string, is found by [`find`], a second walk that only navigates: the document is already
//! known to be valid JSON, so it skips strings and containers without checking them, and takes the
//! last of duplicate keys as the scanner does. It runs only for an aggregate with `time` or
//! `groupBy` whose slot held no number.

use crate::rules::{Matcher, MAX_RULES};
use crate::scan::{scan_paths, Malformed};

/// The most distinct paths (values, times, group keys) in one set: the scanner's slots.
pub const MAX_PATHS: usize = MAX_RULES;

/// One aggregate's fields in one message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading<'a> {
    /// NaN: no number at `path`.
    pub value: f64,
    /// Unix milliseconds; None: no usable time (ignored without `time`).
    pub time: Option<i64>,
    /// The group key as canonical JSON text (`"m1"`, `7`); None: none at `groupBy` (ignored
    /// without `groupBy`).
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
}

/// Where one aggregate's fields are: the scanner slot of each path, and the time and group paths
/// for the string walk.
#[derive(Clone, Debug, PartialEq)]
struct Fields {
    value: u8,
    time: Option<(u8, Vec<String>)>,
    group: Option<(u8, Vec<String>)>,
}

impl Default for Extractor {
    fn default() -> Extractor {
        Extractor { matcher: Matcher::new(std::iter::empty::<&[String]>()), fields: Vec::new(), temperature: None }
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
        let fields = ids
            .iter()
            .zip(aggregates)
            .map(|(&(v, t, g), a)| Fields {
                value: slot(v),
                time: t.map(slot).zip(a.time.map(<[String]>::to_vec)),
                group: g.map(slot).zip(a.group.map(<[String]>::to_vec)),
            })
            .collect();
        let temperature = temperature.map(slot);
        Ok(Extractor { matcher, fields, temperature })
    }

    /// The number at the tutorial's `machine.temperature` from a [`Extractor::scan`] of a body
    /// (NaN: none there), as [`crate::scan::scan`] finds it; None when it is not one of the
    /// scan's slots.
    pub fn temperature(&self, values: &[f64; MAX_RULES]) -> Option<f64> {
        Some(values[usize::from(self.temperature?)])
    }

    /// Scans `doc` once: every slot's number, or the reason it is not valid JSON.
    pub fn scan(&self, doc: &[u8], values: &mut [f64; MAX_RULES]) -> Result<(), Malformed> {
        scan_paths(doc, &self.matcher, values)
    }

    /// Aggregate `i`'s fields, given the scan's `values`; `group` is a buffer for a key that needs
    /// one (a number, or an escaped string).
    pub fn reading<'a>(
        &self,
        i: usize,
        doc: &'a [u8],
        values: &[f64; MAX_RULES],
        group: &'a mut String,
    ) -> Reading<'a> {
        let fields = &self.fields[i];
        let time = fields.time.as_ref().and_then(|(t, path)| {
            let x = values[usize::from(*t)];
            if !x.is_nan() {
                return super::time::from_epoch_seconds(x);
            }
            match find(doc, path)? {
                Found::String { raw, escaped: false } => super::time::parse_iso(raw),
                Found::String { raw, escaped: true } => super::time::parse_iso(unescape(raw)?.as_bytes()),
                Found::Other => None,
            }
        });
        let key = fields.group.as_ref().and_then(|(g, path)| {
            let x = values[usize::from(*g)];
            if !x.is_nan() {
                *group = canonical_number(x);
                return Some(group.as_str());
            }
            match find(doc, path)? {
                // The raw text with its quotes: canonical when there are no escapes.
                Found::String { raw, escaped: false } => {
                    let with_quotes = doc.get(offset(doc, raw) - 1..offset(doc, raw) + raw.len() + 1)?;
                    std::str::from_utf8(with_quotes).ok()
                }
                Found::String { raw, escaped: true } => {
                    *group = serde_json::to_string(&unescape(raw)?).ok()?;
                    Some(group.as_str())
                }
                Found::Other => None,
            }
        });
        Reading { value: values[usize::from(fields.value)], time, group: key }
    }
}

fn offset(doc: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - doc.as_ptr() as usize
}

/// A number as a group key: an integer without a fraction (`7`), otherwise shortest round-trip.
pub fn canonical_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
        format!("{}", x as i64)
    } else {
        serde_json::Value::from(x).to_string()
    }
}

/// What [`find`] found at a path.
#[derive(Debug, PartialEq)]
pub enum Found<'a> {
    /// A string: its raw content between the quotes.
    String { raw: &'a [u8], escaped: bool },
    /// Anything else.
    Other,
}

/// The value at `path` in a document already known to be valid JSON (the last of duplicate keys
/// wins, at every level), or None when the path leads nowhere.
pub fn find<'a>(doc: &'a [u8], path: &[String]) -> Option<Found<'a>> {
    let pos = ws(doc, 0);
    let (start, _) = member(doc, pos, path)?;
    if doc.get(start) == Some(&b'"') {
        let (end, escaped) = string_end(doc, start + 1)?;
        return Some(Found::String { raw: &doc[start + 1..end - 1], escaped });
    }
    Some(Found::Other)
}

/// Where the value at `path` starts, inside the value at `pos`, and the position after that value.
fn member(doc: &[u8], pos: usize, path: &[String]) -> Option<(usize, usize)> {
    let Some((key, rest)) = path.split_first() else {
        return Some((pos, skip_value(doc, pos)?));
    };
    if doc.get(pos) != Some(&b'{') {
        return None;
    }
    let mut found = None;
    let mut at = ws(doc, pos + 1);
    if doc.get(at) == Some(&b'}') {
        return None;
    }
    loop {
        let (end, escaped) = string_end(doc, at + 1)?;
        let raw = &doc[at + 1..end - 1];
        let matches = if escaped { unescape(raw).is_some_and(|k| k == *key) } else { raw == key.as_bytes() };
        at = ws(doc, ws(doc, end) + 1);
        let after = skip_value(doc, at)?;
        if matches {
            found = member(doc, at, rest).map(|(start, _)| start);
        }
        at = ws(doc, after);
        match doc.get(at) {
            Some(b',') => at = ws(doc, at + 1),
            _ => return found.map(|start| (start, at + 1)),
        }
    }
}

fn ws(doc: &[u8], mut pos: usize) -> usize {
    while doc.get(pos).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// The position after the string whose content starts at `pos`, and whether it had escapes.
fn string_end(doc: &[u8], mut pos: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        match doc.get(pos)? {
            b'"' => return Some((pos + 1, escaped)),
            b'\\' => {
                escaped = true;
                pos += 2;
            }
            _ => pos += 1,
        }
    }
}

/// The position after the value at `pos`.
fn skip_value(doc: &[u8], pos: usize) -> Option<usize> {
    match doc.get(pos)? {
        b'"' => string_end(doc, pos + 1).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = pos;
            loop {
                match doc.get(at)? {
                    b'"' => at = string_end(doc, at + 1)?.0,
                    b'{' | b'[' => {
                        depth += 1;
                        at += 1;
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        at += 1;
                        if depth == 0 {
                            return Some(at);
                        }
                    }
                    _ => at += 1,
                }
            }
        }
        _ => {
            let mut at = pos;
            while doc.get(at).is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                at += 1;
            }
            Some(at)
        }
    }
}

/// A valid JSON string's content, unescaped.
fn unescape(raw: &[u8]) -> Option<String> {
    serde_json::from_slice::<String>(&[b"\"", raw, b"\""].concat()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(doc: &str, path: &str) -> Option<String> {
        let path = crate::rules::parse_path(path).unwrap();
        match find(doc.as_bytes(), &path)? {
            Found::String { raw, escaped } => {
                Some(if escaped { unescape(raw).unwrap() } else { String::from_utf8(raw.to_vec()).unwrap() })
            }
            Found::Other => Some("<other>".into()),
        }
    }

    #[test]
    fn the_walk_finds_strings_as_a_parser_would() {
        let doc = r#"{"a": {"b": "x", "c": [1, {"b": "no"}]}, "t": "2026", "a": {"b": "last\"", "d": {}}, "e": 1}"#;
        assert_eq!(at(doc, "a.b").as_deref(), Some("last\""), "the last duplicate wins");
        assert_eq!(at(doc, "t").as_deref(), Some("2026"));
        assert_eq!(at(doc, "a.c"), None, "the later a has no c");
        assert_eq!(at(doc, "e").as_deref(), Some("<other>"));
        assert_eq!(at(doc, "a.d").as_deref(), Some("<other>"));
        assert_eq!(at(doc, "a.d.x"), None);
        assert_eq!(at(r#"{"k\u0065y": "v"}"#, "key").as_deref(), Some("v"));
        assert_eq!(at(r#"[{"a": "v"}]"#, "a"), None);
        assert_eq!(at("{}", "a"), None);
        assert_eq!(at(r#"{"a":{"b":"1"},"a":2}"#, "a.b"), None);
    }

    #[test]
    fn numbers_as_group_keys() {
        assert_eq!(canonical_number(7.0), "7");
        assert_eq!(canonical_number(-0.0), "0");
        assert_eq!(canonical_number(1.5), "1.5");
        assert_eq!(canonical_number(1e300), "1e+300");
    }
}
