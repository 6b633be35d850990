//! SAS tokens: the MQTT password a module presents to edgeHub (contract §1a).
//!
//! The token signs `{sr}\n{se}` with HMAC-SHA256, where `sr` is the URL-encoded resource URI
//! `{hub}/devices/{device}/modules/{module}` (Python's `quote(safe="")`) and `se` the expiry in
//! epoch seconds. Building the string to sign and the token is pure; the signature itself comes
//! from a key here, or from the IoT Edge security daemon on a device.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::topic::{quote, unquote, ModuleId};

/// The resource URI a module's token is scoped to.
pub fn resource_uri(hub_hostname: &str, id: &ModuleId) -> String {
    format!("{hub_hostname}/devices/{}/modules/{}", id.device_id, id.module_id)
}

/// The `sr` value: the resource URI encoded with no safe characters.
pub fn encoded_resource(hub_hostname: &str, id: &ModuleId) -> String {
    quote(&resource_uri(hub_hostname, id))
}

/// The exact bytes that are signed.
pub fn string_to_sign(sr: &str, expiry: u64) -> String {
    format!("{sr}\n{expiry}")
}

/// The token, from `sr`, the base64 signature and the expiry.
pub fn token(sr: &str, signature_b64: &str, expiry: u64) -> String {
    format!("SharedAccessSignature sr={sr}&sig={}&se={expiry}", quote(signature_b64))
}

/// HMAC-SHA256 of `data` with `key`, base64-encoded (what the workload API's `digest` holds).
pub fn sign(key: &[u8], data: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    BASE64.encode(ring::hmac::sign(&key, data).as_ref())
}

/// A base64 shared access key, decoded.
pub fn decode_key(key_b64: &str) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(key_b64.trim())
}

/// A token made with a key, valid until `expiry`.
pub fn token_from_key(key: &[u8], hub_hostname: &str, id: &ModuleId, expiry: u64) -> String {
    let sr = encoded_resource(hub_hostname, id);
    let signature = sign(key, string_to_sign(&sr, expiry).as_bytes());
    token(&sr, &signature, expiry)
}

/// A token's fields, as sent.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    pub sr: &'a str,
    pub sig: &'a str,
    pub se: u64,
}

/// Why a hub refuses a token.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum TokenError {
    Malformed,
    Expired,
    WrongAudience,
    BadSignature,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed SAS token",
            TokenError::Expired => "SAS token expired",
            TokenError::WrongAudience => "SAS token is for another identity or hub",
            TokenError::BadSignature => "SAS token signature does not match the key",
        })
    }
}

/// Splits `SharedAccessSignature sr=…&sig=…&se=…` into its fields (in any order).
pub fn parse_token(token: &str) -> Result<ParsedToken<'_>, TokenError> {
    let fields = token.strip_prefix("SharedAccessSignature ").ok_or(TokenError::Malformed)?;
    let (mut sr, mut sig, mut se) = (None, None, None);
    for kv in fields.split('&') {
        match kv.split_once('=') {
            Some(("sr", v)) => sr = Some(v),
            Some(("sig", v)) => sig = Some(v),
            Some(("se", v)) => se = v.parse().ok(),
            Some(("skn", _)) => {}
            _ => return Err(TokenError::Malformed),
        }
    }
    match (sr, sig, se) {
        (Some(sr), Some(sig), Some(se)) => Ok(ParsedToken { sr, sig, se }),
        _ => Err(TokenError::Malformed),
    }
}

/// Checks a token the way edgeHub does: the signature over `sr` exactly as sent, the decoded
/// audience naming this identity on one of `hostnames` (case-insensitive), and the expiry.
pub fn validate(token: &str, key: &[u8], hostnames: &[&str], id: &ModuleId, now: u64) -> Result<(), TokenError> {
    let t = parse_token(token)?;
    if t.se <= now {
        return Err(TokenError::Expired);
    }
    let audience = unquote(t.sr);
    let path = format!("/devices/{}/modules/{}", id.device_id, id.module_id);
    let host = audience.strip_suffix(&path).ok_or(TokenError::WrongAudience)?;
    if !hostnames.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(TokenError::WrongAudience);
    }
    let sig = BASE64.decode(unquote(t.sig)).map_err(|_| TokenError::Malformed)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, string_to_sign(t.sr, t.se).as_bytes(), &sig).map_err(|_| TokenError::BadSignature)
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When to renew a token of lifetime `ttl`: 120 s before expiry like the Python SDK, or a fifth of
/// the lifetime for short test lifetimes.
pub fn renewal_margin(ttl: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(120).min(ttl / 5)
}
