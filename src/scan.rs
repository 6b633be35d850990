//! The lazy scanner: finds `machine.temperature` in a telemetry body without building a DOM.
//!
//! # What it decides
//! [`scan`] answers one question about a byte string: is it a JSON document whose top-level value
//! is an object with a `machine` member that is an object with a `temperature` member that is a
//! number, and if so, what number. The answer must equal what a full conforming parse gives;
//! the reference is `serde_json::from_slice::<serde_json::Value>` (with correctly rounded floats):
//!
//! - the whole document is validated: UTF-8 (inside strings; outside them only ASCII JSON
//!   grammar is legal), string escapes (`\uXXXX` surrogates must pair, as serde_json requires for
//!   text), no raw control characters in strings, number grammar, literals, commas and colons,
//!   nothing but whitespace after the value;
//! - containers nest at most 127 deep: serde_json's recursion limit of 128 counts the container
//!   it is about to enter, so the 128th level is an error;
//! - every number in the document must be finite as an `f64` (serde_json refuses `1e400`
//!   anywhere as "number out of range"), not only the temperature;
//! - duplicate keys: the last one wins, at both levels. A later `machine` that is not an object
//!   overrides an earlier one that was; a later `temperature` string overrides an earlier number;
//! - keys compare after unescaping, so `"temp\u0065rature"` is `temperature`.
//!
//! # How
//! One forward pass, recursive descent over the bytes, no allocation. Strings are skimmed with a
//! byte-class table that stops only at `"`, `\`, control characters and non-ASCII bytes; a string
//! with non-ASCII bytes has its raw content checked with `std::str::from_utf8` (escapes are
//! ASCII, so this is exactly serde_json's check). Numbers are checked against the JSON grammar in
//! the same pass; only the temperature, and numbers that could overflow (an exponent, or more
//! than 308 integer digits), are converted with `str::parse::<f64>`, which is correctly rounded.
//! Nothing is declined: every input gets an exact answer from this pass.
//!
//! # Why not simd-json
//! Measured under qemu on armv7 (the target), simd-json runs its scalar fallback and costs more
//! instructions per message than serde_json; a DOM of any kind is the dominant cost for a
//! 129-byte message of which one number matters.

/// What a body holds at `machine.temperature`, or why it holds nothing usable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scan {
    /// The document is valid and `machine.temperature` is this number.
    Temperature(f64),
    /// The document is valid JSON but has no usable temperature.
    Missing(Missing),
    /// The document is not valid JSON (serde_json would refuse it).
    Malformed(Malformed),
}

/// Why a valid document has no usable temperature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Missing {
    /// The top-level value is not an object.
    NotAnObject,
    /// The top-level object has no `machine` member.
    NoMachine,
    /// The (last) `machine` member is not an object.
    MachineNotAnObject,
    /// The (last) `machine` object has no `temperature` member.
    NoTemperature,
    /// The (last) `machine.temperature` is not a number.
    TemperatureNotANumber,
}

/// Why a document is not valid JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Bytes that are not UTF-8 inside a string.
    InvalidUtf8,
    /// Anything else a JSON parser refuses: syntax, escapes, control characters, trailing bytes.
    InvalidJson,
    /// A number that is infinite as an `f64`.
    NumberOutOfRange,
    /// Containers nested 128 deep or more.
    TooDeep,
}

impl Missing {
    /// The reason's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Missing::NotAnObject => "not_an_object",
            Missing::NoMachine => "no_machine",
            Missing::MachineNotAnObject => "machine_not_an_object",
            Missing::NoTemperature => "no_temperature",
            Missing::TemperatureNotANumber => "temperature_not_a_number",
        }
    }
}

impl Malformed {
    /// The reason's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Malformed::InvalidUtf8 => "invalid_utf8",
            Malformed::InvalidJson => "invalid_json",
            Malformed::NumberOutOfRange => "number_out_of_range",
            Malformed::TooDeep => "too_deep",
        }
    }
}

/// serde_json's recursion limit: entering a container at this depth is an error.
const DEPTH_LIMIT: u32 = 128;

/// Finds `machine.temperature` in `doc`, validating the whole document. See the module docs.
pub fn scan(doc: &[u8]) -> Scan {
    let mut p = Parser { doc, pos: 0 };
    match p.document() {
        Ok(Found::Temperature(t)) => Scan::Temperature(t),
        Ok(Found::Missing(m)) => Scan::Missing(m),
        Err(e) => Scan::Malformed(e),
    }
}

enum Found {
    Temperature(f64),
    Missing(Missing),
}

/// Byte classes for the string skim: 0 = ordinary, 1 = `"`, 2 = `\`, 3 = control, 4 = non-ASCII.
static STRING_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i < 0x20 {
            3
        } else if i == b'"' as usize {
            1
        } else if i == b'\\' as usize {
            2
        } else if i >= 0x80 {
            4
        } else {
            0
        };
        i += 1;
    }
    t
};

type Result<T> = std::result::Result<T, Malformed>;

const WORD: usize = std::mem::size_of::<usize>();
/// 0x0101…01 and 0x8080…80 for the machine word.
const ONES: usize = usize::MAX / 255;
const HIGHS: usize = ONES * 0x80;

/// The position of the first byte at or after `pos` that a string cannot skim past (`"`, `\`,
/// a control character or a non-ASCII byte), or None at the end of the input.
///
/// Word at a time (4 bytes on armv7, 8 on x86-64): a byte is flagged when subtracting 0x20, or
/// subtracting 1 after XOR with `"` or `\`, borrows into its high bit, or its high bit is set.
/// Borrows only run upwards, from a flagged byte, so the lowest flagged byte is exact.
#[inline]
fn skim(doc: &[u8], mut pos: usize) -> Option<usize> {
    while let Some(chunk) = doc.get(pos..pos + WORD) {
        let mut word = [0u8; WORD];
        word.copy_from_slice(chunk);
        let w = usize::from_le_bytes(word);
        let quote = w ^ (ONES * b'"' as usize);
        let backslash = w ^ (ONES * b'\\' as usize);
        let flagged =
            (w.wrapping_sub(ONES * 0x20) | quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES) | w) & HIGHS;
        if flagged != 0 {
            return Some(pos + (flagged.trailing_zeros() / 8) as usize);
        }
        pos += WORD;
    }
    doc[pos..].iter().position(|&b| STRING_CLASS[b as usize] != 0).map(|n| pos + n)
}

/// A string just read: its raw content (between the quotes) and whether it had escapes.
struct RawStr {
    start: usize,
    end: usize,
    escaped: bool,
}

struct Parser<'a> {
    doc: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn document(&mut self) -> Result<Found> {
        self.skip_ws();
        let found = if self.peek() == b'{' {
            self.top_object()?
        } else {
            self.value(0)?;
            Found::Missing(Missing::NotAnObject)
        };
        self.skip_ws();
        if self.pos != self.doc.len() {
            return Err(Malformed::InvalidJson);
        }
        Ok(found)
    }

    /// The top-level object: remembers the last `machine` member's verdict.
    fn top_object(&mut self) -> Result<Found> {
        let mut found = Found::Missing(Missing::NoMachine);
        self.pos += 1; // '{'
        self.members(1, |p, key| {
            if p.key_is(key, b"machine") {
                p.skip_ws();
                found = if p.peek() == b'{' {
                    p.machine_object()?
                } else {
                    p.value(1)?;
                    Found::Missing(Missing::MachineNotAnObject)
                };
                Ok(())
            } else {
                p.value(1)
            }
        })?;
        Ok(found)
    }

    /// The `machine` object (depth 2): remembers the last `temperature` member's verdict.
    fn machine_object(&mut self) -> Result<Found> {
        let mut found = Found::Missing(Missing::NoTemperature);
        self.pos += 1; // '{'
        self.members(2, |p, key| {
            if p.key_is(key, b"temperature") {
                p.skip_ws();
                found = match p.peek() {
                    b'-' | b'0'..=b'9' => Found::Temperature(p.number(true)?),
                    _ => {
                        p.value(2)?;
                        Found::Missing(Missing::TemperatureNotANumber)
                    }
                };
                Ok(())
            } else {
                p.value(2)
            }
        })?;
        Ok(found)
    }

    /// The members of an object whose `{` was just consumed, at nesting `depth` (1 = top level).
    /// `member` is called after each key and its colon, positioned before the value.
    fn members(&mut self, depth: u32, mut member: impl FnMut(&mut Self, RawStr) -> Result<()>) -> Result<()> {
        if depth >= DEPTH_LIMIT {
            return Err(Malformed::TooDeep);
        }
        self.skip_ws();
        if self.peek() == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != b'"' {
                return Err(Malformed::InvalidJson);
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != b':' {
                return Err(Malformed::InvalidJson);
            }
            self.pos += 1;
            member(self, key)?;
            self.skip_ws();
            match self.next() {
                b',' => continue,
                b'}' => return Ok(()),
                _ => return Err(Malformed::InvalidJson),
            }
        }
    }

    /// Validates and skips one value nested inside `depth` containers.
    fn value(&mut self, depth: u32) -> Result<()> {
        self.skip_ws();
        match self.peek() {
            b'{' => {
                self.pos += 1;
                self.members(depth + 1, |p, _| p.value(depth + 1))
            }
            b'[' => {
                self.pos += 1;
                self.elements(depth + 1)
            }
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number(false).map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => Err(Malformed::InvalidJson),
        }
    }

    fn elements(&mut self, depth: u32) -> Result<()> {
        if depth >= DEPTH_LIMIT {
            return Err(Malformed::TooDeep);
        }
        self.skip_ws();
        if self.peek() == b']' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.skip_ws();
            match self.next() {
                b',' => continue,
                b']' => return Ok(()),
                _ => return Err(Malformed::InvalidJson),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.doc[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Malformed::InvalidJson)
        }
    }

    /// Validates a number; returns its value when `want` is set (0.0 otherwise) and checks that
    /// any number that could overflow does not.
    #[inline(always)]
    fn number(&mut self, want: bool) -> Result<f64> {
        let start = self.pos;
        let negative = self.peek() == b'-';
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.next() {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return Err(Malformed::InvalidJson),
        }
        let int_end = self.pos;
        let mut frac = int_end..int_end;
        if self.peek() == b'.' {
            self.pos += 1;
            if !self.next().is_ascii_digit() {
                return Err(Malformed::InvalidJson);
            }
            self.digits();
            frac = int_end + 1..self.pos;
        }
        let mut exponent = false;
        if let b'e' | b'E' = self.peek() {
            exponent = true;
            self.pos += 1;
            if let b'+' | b'-' = self.peek() {
                self.pos += 1;
            }
            if !self.next().is_ascii_digit() {
                return Err(Malformed::InvalidJson);
            }
            self.digits();
        }
        let int_digits = int_end - int_start;
        if !(want || exponent || int_digits > 308) {
            return Ok(0.0);
        }
        if !exponent {
            if let Some(v) = exact_decimal(&self.doc[int_start..int_end], &self.doc[frac]) {
                return Ok(if negative { -v } else { v });
            }
        }
        let value = slow_f64(&self.doc[start..self.pos]).ok_or(Malformed::InvalidJson)?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(Malformed::NumberOutOfRange)
        }
    }

    fn digits(&mut self) {
        while self.peek().is_ascii_digit() {
            self.pos += 1;
        }
    }

    /// Reads a string whose opening quote is at `pos`, validating escapes and UTF-8.
    #[inline(always)]
    fn string(&mut self) -> Result<RawStr> {
        self.pos += 1; // '"'
        let start = self.pos;
        let mut escaped = false;
        let mut non_ascii = false;
        loop {
            self.pos = skim(self.doc, self.pos).ok_or(Malformed::InvalidJson)?;
            match STRING_CLASS[self.doc[self.pos] as usize] {
                1 => {
                    let end = self.pos;
                    self.pos += 1;
                    if non_ascii && std::str::from_utf8(&self.doc[start..end]).is_err() {
                        return Err(Malformed::InvalidUtf8);
                    }
                    return Ok(RawStr { start, end, escaped });
                }
                2 => {
                    escaped = true;
                    self.pos += 1;
                    self.escape()?;
                }
                3 => return Err(Malformed::InvalidJson),
                _ => {
                    non_ascii = true;
                    self.pos += 1;
                }
            }
        }
    }

    /// Validates the escape after a backslash.
    fn escape(&mut self) -> Result<()> {
        match self.next() {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xDC00..=0xDFFF => Err(Malformed::InvalidJson),
                    0xD800..=0xDBFF => {
                        if self.next() != b'\\' || self.next() != b'u' {
                            return Err(Malformed::InvalidJson);
                        }
                        match self.hex4()? {
                            0xDC00..=0xDFFF => Ok(()),
                            _ => Err(Malformed::InvalidJson),
                        }
                    }
                    _ => Ok(()),
                }
            }
            _ => Err(Malformed::InvalidJson),
        }
    }

    fn hex4(&mut self) -> Result<u16> {
        let digits = self.doc.get(self.pos..self.pos + 4).ok_or(Malformed::InvalidJson)?;
        let mut unit = 0u16;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(Malformed::InvalidJson),
            };
            unit = unit << 4 | v as u16;
        }
        self.pos += 4;
        Ok(unit)
    }

    /// Does the (already validated) key equal `name` once unescaped? A fixed-size comparison:
    /// no call into `memcmp` for a 7- or 11-byte key.
    #[inline(always)]
    fn key_is<const N: usize>(&self, key: RawStr, name: &[u8; N]) -> bool {
        let raw = &self.doc[key.start..key.end];
        if !key.escaped {
            return <&[u8; N]>::try_from(raw).is_ok_and(|r| r == name);
        }
        unescaped_equals(raw, name)
    }

    /// The byte at the cursor, 0 at the end: NUL is invalid wherever `peek` is used (outside
    /// strings), so the end needs no case of its own.
    #[inline(always)]
    fn peek(&self) -> u8 {
        self.doc.get(self.pos).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn next(&mut self) -> u8 {
        let b = self.peek();
        self.pos += 1;
        b
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        // Telemetry is mostly compact: one comparison settles the common case.
        while self.peek() <= b' ' && matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }
}

/// The value of a validated decimal without exponent, `int.frac`, when it can be had exactly.
///
/// Clinger's fast path: when the digits form an integer of at most 53 bits and the fraction has
/// at most 22 digits, both that integer and the power of ten are exact doubles and one IEEE
/// division rounds correctly. Telemetry numbers (`31.13`, `1.523875267279916`) take it; up to 9
/// digits the integer is built in 32 bits, which is cheaper on armv7. Anything else (None) goes
/// to `str::parse`, which is correctly rounded too.
#[inline]
fn exact_decimal(int: &[u8], frac: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
        1e20, 1e21, 1e22,
    ];
    let digits = int.len() + frac.len();
    let mantissa = if digits <= 9 {
        let mut m: u32 = 0;
        for &d in int.iter().chain(frac) {
            m = m * 10 + u32::from(d - b'0');
        }
        f64::from(m)
    } else if digits <= 19 && frac.len() <= 22 {
        let mut m: u64 = 0;
        for &d in int.iter().chain(frac) {
            m = m * 10 + u64::from(d - b'0');
        }
        if m > 1 << 53 {
            return None;
        }
        m as f64
    } else {
        return None;
    };
    Some(mantissa / POW10[frac.len()])
}

#[cold]
fn slow_f64(text: &[u8]) -> Option<f64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Compares a validated raw string body with escapes against an ASCII `name`.
fn unescaped_equals(raw: &[u8], name: &[u8]) -> bool {
    let mut i = 0;
    let mut n = 0;
    while i < raw.len() {
        let c = if raw[i] == b'\\' {
            let (c, len) = match raw[i + 1] {
                b'u' => {
                    let hex = std::str::from_utf8(&raw[i + 2..i + 6]).unwrap_or("");
                    match u16::from_str_radix(hex, 16) {
                        // Only an ASCII code point can match an ASCII name.
                        Ok(u) if u < 0x80 => (u as u8, 6),
                        _ => return false,
                    }
                }
                b'b' => (0x08, 2),
                b'f' => (0x0c, 2),
                b'n' => (b'\n', 2),
                b'r' => (b'\r', 2),
                b't' => (b'\t', 2),
                other => (other, 2),
            };
            i += len;
            c
        } else {
            i += 1;
            raw[i - 1]
        };
        if name.get(n) != Some(&c) {
            return false;
        }
        n += 1;
    }
    n == name.len()
}
