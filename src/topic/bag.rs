//! Property bags: an IoT Hub message's properties as the URL-encoded `k=v&k=v` tail of its topic
//! (contract §2), read without decoding on the data path (checked, walked, requoted straight into
//! an outgoing topic) and parsed or encoded whole elsewhere; and a message's size as edgeHub
//! counts it.

use std::fmt::Write as _;

use super::{ModuleId, TopicError};

/// What tells an input from edgeHub's redelivery of it, as its bag carries it (values as on the
/// wire): its `$.mid` (the first), otherwise the simulated sensor's `batchId` and
/// `sequenceNumber` application properties (the last of each; the tutorial's sensor sets no
/// message id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BagId<'a> {
    pub mid: Option<&'a [u8]>,
    pub batch: Option<&'a [u8]>,
    pub sequence: Option<&'a [u8]>,
}

/// Fails as [`parse_bag`] does on a bag it cannot read (an entry without `=`), without decoding
/// it, and finds its [`BagId`] on the way: one pass over the entries, each found four bytes a
/// step ([`crate::bytes::find`]), each key matched by a slice pattern (byte compares in
/// line: no string searcher, no `memcmp`; library calls on armv7). A byte loop here was about
/// 690 armv7 instructions for the simulated sensor's bag, and the aggregates walked it again for
/// the id.
pub(super) fn read_bag(bag: &str) -> Result<BagId<'_>, TopicError> {
    let mut id = BagId::default();
    let mut rest = bag.strip_suffix('/').unwrap_or(bag).as_bytes();
    if rest.is_empty() {
        return Ok(id);
    }
    loop {
        let end = crate::bytes::find::<b'&'>(rest);
        match &rest[..end] {
            [b'%', b'2', b'4', b'.', b'm', b'i', b'd', b'=', v @ ..] | [b'$', b'.', b'm', b'i', b'd', b'=', v @ ..] => {
                id.mid = id.mid.or(Some(v))
            }
            [b'b', b'a', b't', b'c', b'h', b'I', b'd', b'=', v @ ..] => id.batch = Some(v),
            [b's', b'e', b'q', b'u', b'e', b'n', b'c', b'e', b'N', b'u', b'm', b'b', b'e', b'r', b'=', v @ ..] => {
                id.sequence = Some(v)
            }
            entry if crate::bytes::find::<b'='>(entry) == entry.len() => return Err(TopicError::BagEntryWithoutValue),
            _ => {}
        }
        let Some(after) = rest.get(end + 1..) else { break };
        rest = after;
    }
    Ok(id)
}

/// The `&`-separated entries of a bag, split at their first `=` (None for an entry without
/// one): byte searches, no `char` decoding.
fn bag_entries(bag: &str) -> impl Iterator<Item = Option<(&str, &str)>> {
    let mut rest = Some(bag);
    std::iter::from_fn(move || {
        let r = rest?;
        let entry = match r.as_bytes().iter().position(|&b| b == b'&') {
            Some(at) => {
                rest = Some(&r[at + 1..]);
                &r[..at]
            }
            None => {
                rest = None;
                r
            }
        };
        Some(entry.as_bytes().iter().position(|&b| b == b'=').map(|at| (&entry[..at], &entry[at + 1..])))
    })
}

/// What an inbound bag's key is to an outbound bag: one of [`OUTBOUND_SYSTEM`], a property
/// that is not forwarded, or an application property.
fn outbound_role(name: &str) -> Option<Option<usize>> {
    // Every system and hop property but three starts with `$`.
    if !name.starts_with('$') && !matches!(name, "ack" | "iothub-ack" | "iothub-operation") {
        return Some(None);
    }
    if let Some(slot) = OUTBOUND_SYSTEM.iter().position(|s| *s == name) {
        return Some(Some(slot));
    }
    if name == "$.cdid" || name == "$.cmid" || HOP_PROPERTIES.contains(&name) {
        return None;
    }
    Some(None)
}

/// Where an application property's value is: in the input's bag (Ok, a range of it) or the `i`th
/// of the properties being set (Err(i)).
type PropertyValue = Result<std::ops::Range<usize>, usize>;

/// What [`write_output_topic`] keeps between messages, so that once it has grown, building a
/// topic allocates nothing.
#[derive(Debug, Default)]
pub struct BagScratch {
    /// The decoded keys, one after another.
    keys: String,
    /// Decoding room for one component with escapes.
    bytes: Vec<u8>,
    /// Application properties: decoded key (a range of `keys`) and the value as on the wire (a
    /// range of the bag; `None` for the property being set).
    /// Each application property's key in `keys`, and its value: in the bag (Ok) or the `i`th of
    /// the properties set (Err(i)).
    application: Vec<(std::ops::Range<usize>, PropertyValue)>,
    /// The order to write them in.
    order: Vec<usize>,
    /// The topic being written.
    out: Vec<u8>,
}

/// The system properties an outbound bag carries after `$.on`, in the Python SDK's order…
const OUTBOUND_SYSTEM: [&str; 6] = ["$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.exp"];
/// …and as they are written there ([`quote`]d, between `&` and `=`).
const OUTBOUND_SYSTEM_QUOTED: [&str; 6] = ["&%24.mid=", "&%24.cid=", "&%24.uid=", "&%24.ct=", "&%24.ce=", "&%24.exp="];

/// Appends to `out` the topic of a message forwarded to `output` from an input with property bag
/// `bag` (as on the wire), with the application properties in `set` set, in order (each replacing
/// the first of its key): byte for byte `id.events_topic(&p.to_output_bag(output))` where `p` is
/// [`Properties::from_bag`] of `bag` after [`Properties::set`] of each, without allocating.
///
/// Only keys are decoded (to classify and sort them). A value is copied as it came when it is
/// already in the form [`quote`] writes, which is what edgeHub sends; any other value is decoded
/// and quoted again, as the readable path does with every one.
pub fn write_output_topic<K: AsRef<str>, V: AsRef<str>>(
    out: &mut bytes::BytesMut,
    id: &ModuleId,
    bag: &str,
    output: &str,
    set: &[(K, V)],
    scratch: &mut BagScratch,
) -> Result<(), TopicError> {
    let BagScratch { keys, bytes, application, order, out: topic } = scratch;
    keys.clear();
    application.clear();
    let mut system: [Option<std::ops::Range<usize>>; 6] = Default::default();
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    let base = bag.as_ptr() as usize;
    if !bag.is_empty() {
        for entry in bag_entries(bag) {
            let (k, v) = entry.ok_or(TopicError::BagEntryWithoutValue)?;
            let value = v.as_ptr() as usize - base..v.as_ptr() as usize - base + v.len();
            let key = unquote_into(keys, bytes, k);
            match outbound_role(&keys[key.clone()]) {
                Some(Some(slot)) => system[slot] = Some(value),
                Some(None) => application.push((key, Ok(value))),
                None => {}
            }
        }
    }
    for (i, (name, _)) in set.iter().enumerate() {
        match application.iter_mut().find(|(k, _)| keys[k.clone()] == *name.as_ref()) {
            Some(entry) => entry.1 = Err(i),
            None => {
                let start = keys.len();
                keys.push_str(name.as_ref());
                application.push((start..keys.len(), Err(i)));
            }
        }
    }
    order.clear();
    // Sorted by key, keeping bag order among equal keys, as a stable sort does: an insertion sort,
    // as a bag holds a handful of properties.
    let key = |i: usize| &keys.as_bytes()[application[i].0.clone()];
    for i in 0..application.len() {
        let at = order.iter().rposition(|&j| key(j) <= key(i)).map_or(0, |p| p + 1);
        order.insert(at, i);
    }

    topic.clear();
    for part in ["devices/", &id.device_id, "/modules/", &id.module_id, "/messages/events/%24.on="] {
        topic.extend_from_slice(part.as_bytes());
    }
    quote_into_vec(topic, output);
    for (name, value) in OUTBOUND_SYSTEM_QUOTED.iter().zip(&system) {
        if let Some(v) = value {
            topic.extend_from_slice(name.as_bytes());
            requote(topic, bytes, &bag[v.clone()]);
        }
    }
    for i in order.iter() {
        let (k, v) = &application[*i];
        topic.push(b'&');
        quote_into_vec(topic, &keys[k.clone()]);
        topic.push(b'=');
        match v {
            Ok(v) => requote(topic, bytes, &bag[v.clone()]),
            Err(i) => quote_into_vec(topic, set[*i].1.as_ref()),
        }
    }
    out.extend_from_slice(topic);
    Ok(())
}

/// `quote(unquote(raw))` appended to `out`: `raw` itself when it is already what [`quote`] writes
/// (only unreserved bytes and upper-case escapes of reserved ASCII bytes), else decoded and
/// quoted again.
fn requote(out: &mut Vec<u8>, bytes: &mut Vec<u8>, raw: &str) {
    if is_quoted(raw.as_bytes()) {
        out.extend_from_slice(raw.as_bytes());
    } else {
        decode_into(bytes, raw);
        quote_into_vec(out, &String::from_utf8_lossy(bytes));
    }
}

/// Whether `raw` is exactly what [`quote`] writes for some string.
fn is_quoted(raw: &[u8]) -> bool {
    let upper_hex = |b: u8| matches!(b, b'0'..=b'9' | b'A'..=b'F');
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if unreserved(b) {
            i += 1;
        } else if b == b'%' && i + 2 < raw.len() && upper_hex(raw[i + 1]) && upper_hex(raw[i + 2]) {
            let v = hex(raw[i + 1]).unwrap_or(0) << 4 | hex(raw[i + 2]).unwrap_or(0);
            if v >= 0x80 || unreserved(v) {
                return false;
            }
            i += 3;
        } else {
            return false;
        }
    }
    true
}

/// The bytes [`quote`] leaves as they are.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~')
}

/// [`quote`] of `s`, appended to `out`: runs of unreserved bytes copied whole.
fn quote_into_vec(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = s.as_bytes();
    while !rest.is_empty() {
        let run = rest.iter().position(|&b| !unreserved(b)).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..run]);
        let Some(&b) = rest.get(run) else { break };
        out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        rest = &rest[run + 1..];
    }
}

/// The bytes `s` stands for, `%XX` escapes decoded as [`unquote`] does, into `bytes`.
fn decode_into(bytes: &mut Vec<u8>, s: &str) {
    bytes.clear();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                bytes.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        bytes.push(b[i]);
        i += 1;
    }
}

/// [`unquote`] of `s` appended to `text`; returns where it went.
fn unquote_into(text: &mut String, bytes: &mut Vec<u8>, s: &str) -> std::ops::Range<usize> {
    let start = text.len();
    if s.as_bytes().contains(&b'%') {
        decode_into(bytes, s);
        match std::str::from_utf8(bytes) {
            Ok(decoded) => text.push_str(decoded),
            Err(_) => text.push_str(&String::from_utf8_lossy(bytes)),
        }
    } else {
        text.push_str(s);
    }
    start..text.len()
}

/// The value of `key` in a `?k=v&…` query (the part after the last `/` of a twin topic).
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// A message's properties as the Python SDK holds them: the system properties it maps to message
/// fields, and everything else as application (custom) properties, in bag order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Properties {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub user_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub expiry_time_utc: Option<String>,
    /// `$.cdid` and `$.cmid`: the sender edgeHub names. Not forwarded: they describe the hop.
    pub connection_device_id: Option<String>,
    pub connection_module_id: Option<String>,
    pub application: Vec<(String, String)>,
}

/// System properties edgeHub sends that describe the inbound hop and are not forwarded on an
/// alert (the Python SDK drops `$.to`; the rest are the sender's identity and delivery details).
const HOP_PROPERTIES: [&str; 8] =
    ["$.to", "ack", "iothub-ack", "iothub-operation", "$.ctime", "$.on", "$.schema", "$.sub"];

impl Properties {
    /// Reads an inbound bag (`k=v&…`, URL-encoded) the way the Python SDK does.
    pub fn from_bag(bag: &str) -> Result<Properties, TopicError> {
        let mut p = Properties::default();
        for (key, value) in parse_bag(bag)? {
            let slot = match key.as_str() {
                "$.mid" => &mut p.message_id,
                "$.cid" => &mut p.correlation_id,
                "$.uid" => &mut p.user_id,
                "$.ct" => &mut p.content_type,
                "$.ce" => &mut p.content_encoding,
                "$.exp" => &mut p.expiry_time_utc,
                "$.cdid" => &mut p.connection_device_id,
                "$.cmid" => &mut p.connection_module_id,
                k if HOP_PROPERTIES.contains(&k) => continue,
                _ => {
                    p.application.push((key, value));
                    continue;
                }
            };
            *slot = Some(value);
        }
        Ok(p)
    }

    /// Sets an application property, replacing an existing one of the same key.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.application.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.application.push((key.to_string(), value.to_string())),
        }
    }

    /// The application property `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.application.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The outbound bag for output `output`, in the Python SDK's order.
    pub fn to_output_bag(&self, output: &str) -> String {
        let mut bag = String::with_capacity(128);
        push_pair(&mut bag, "$.on", output);
        let system = [
            ("$.mid", &self.message_id),
            ("$.cid", &self.correlation_id),
            ("$.uid", &self.user_id),
            ("$.ct", &self.content_type),
            ("$.ce", &self.content_encoding),
            ("$.exp", &self.expiry_time_utc),
        ];
        for (key, value) in system {
            if let Some(v) = value {
                push_pair(&mut bag, key, v);
            }
        }
        let mut application: Vec<&(String, String)> = self.application.iter().collect();
        application.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in application {
            push_pair(&mut bag, k, v);
        }
        bag
    }
}

/// The size of a message as edgeHub counts it against its 256 KiB limit: the body, plus every
/// property's key and value (`Message.Size()` in Azure/iotedge's routing core), plus
/// [`crate::limits::EDGEHUB_ADDED_PROPERTIES`] for the system properties edgeHub adds. `topic` is
/// the message's outgoing topic; its bag is decoded only when the encoded form alone could reach
/// the limit.
pub fn message_size(body: usize, topic: &str) -> usize {
    use crate::limits::{EDGEHUB_ADDED_PROPERTIES, MAX_MESSAGE_SIZE};
    let bag = events_bag(topic);
    let upper = body + bag.len() + EDGEHUB_ADDED_PROPERTIES;
    if upper <= MAX_MESSAGE_SIZE {
        return upper;
    }
    let properties: usize = parse_bag(bag).map_or(bag.len(), |p| p.iter().map(|(k, v)| k.len() + v.len()).sum());
    body + properties + EDGEHUB_ADDED_PROPERTIES
}

/// The bag of a module's outgoing topic, `devices/{d}/modules/{m}/messages/events/{bag}`: what
/// follows `/messages/events/` at its fourth `/` (a device or module id holds no `/`), found
/// with a byte loop over the ids rather than a substring search (whose searcher cost more than
/// the rest of the size: issue 21); "" for any other topic.
fn events_bag(topic: &str) -> &str {
    const EVENTS: &str = "/messages/events/";
    let fourth = topic.bytes().enumerate().filter(|&(_, b)| b == b'/').nth(3).map(|(i, _)| i);
    match fourth {
        Some(i) if topic[i..].starts_with(EVENTS) => &topic[i + EVENTS.len()..],
        _ => "",
    }
}

/// Splits a URL-encoded bag into decoded pairs, in order. An empty bag has no pairs.
pub fn parse_bag(bag: &str) -> Result<Vec<(String, String)>, TopicError> {
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    if bag.is_empty() {
        return Ok(Vec::new());
    }
    bag.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or(TopicError::BagEntryWithoutValue)?;
            Ok((unquote(k), unquote(v)))
        })
        .collect()
}

/// Encodes pairs as a bag, in the order given.
pub fn encode_bag<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut bag = String::new();
    for (k, v) in pairs {
        push_pair(&mut bag, k, v);
    }
    bag
}

fn push_pair(bag: &mut String, key: &str, value: &str) {
    if !bag.is_empty() {
        bag.push('&');
    }
    quote_into(bag, key);
    bag.push('=');
    quote_into(bag, value);
}

/// Python's `urllib.parse.quote(s, safe="")`: every byte but `A-Za-z0-9_.-~` as `%XX`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    quote_into(&mut out, s);
    out
}

fn quote_into(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Python's `urllib.parse.unquote`: valid `%XX` escapes decoded, anything else kept literally,
/// `+` kept, invalid UTF-8 replaced with U+FFFD.
pub fn unquote(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let mut out = Vec::with_capacity(s.len());
    decode_into(&mut out, s);
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
