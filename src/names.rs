//! Names and shapes shared by the settings, the rules, the embedded hub's twins and (next) the
//! aggregates: an output name, how a JSON value's type is named in a rejection, and how a twin
//! patch merges. A leaf: it imports nothing of the crate, so
//! the modules that parse twin values depend on it and not on each other.

use serde_json::{Map, Value};

/// An output name, held inline so that settings stay `Copy`: up to 64 of `A-Z a-z 0-9 _ - .`;
/// empty means none.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OutputName {
    len: u8,
    bytes: [u8; 64],
}

impl OutputName {
    pub const NONE: OutputName = OutputName { len: 0, bytes: [0; 64] };

    pub fn parse(name: &str) -> Result<OutputName, String> {
        if name.len() > 64 {
            return Err(format!("an output name has at most 64 characters, got {}", name.len()));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
            return Err(format!("{c:?} is not allowed in an output name (A-Z a-z 0-9 _ - .)"));
        }
        let mut bytes = [0; 64];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(OutputName { len: name.len() as u8, bytes })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// The name, when one is set.
    pub fn get(&self) -> Option<&str> {
        (self.len > 0).then(|| self.as_str())
    }
}

impl std::fmt::Debug for OutputName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A JSON value's kind, as rejection reasons name it ("expected a number, got a string").
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON merge patch (RFC 7386) of objects, as IoT Hub applies a twin patch: `null` removes a
/// member, an object merges member by member, anything else replaces; `$`-prefixed metadata keys
/// (`$version`) are not properties and are skipped.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let slot = target.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge_patch(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}
