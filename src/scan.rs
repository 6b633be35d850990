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
//! - keys compare after unescaping, so `"temp\u0065rature"` is `temperature`, and a rule's
//!   non-ASCII key matches however a document escapes it: `"temp\u00e9rature"`, as
//!   System.Text.Json (the C# default) writes `température`, or `"\ud83c\udf21"` for `🌡`.
//!
//! [`scan_paths`] answers the same for many paths at once (alert rules: a number per path), and
//! [`scan_paths_strings`] also records where a string stands at a path (the aggregates' ISO-8601
//! times and string group keys), in the same pass, so that nothing walks the body twice. Both
//! are one generic walk: the rules' instance records no strings and skips them as before.
//!
//! # How
//! One forward pass, recursive descent over the bytes, no allocation, nothing declined: every
//! input gets its exact answer from this pass.
//!
//! - **The cursor lives in a register.** The grammar is a set of functions that take a position
//!   and return the position after their part (with the byte found there, where the caller needs
//!   it). Strings and numbers are handled in line, and so are objects in the top-level object;
//!   deeper containers and literals cost a call.
//! - **Reads without bounds checks.** A document of up to 65,504 bytes is first copied into the
//!   thread's buffer followed by zeros (`Padded`). There a position is masked to 16 bits rather
//!   than compared with the length; NUL is invalid everywhere the grammar looks, so the end needs
//!   no case of its own. Longer documents are read in place, with the checks
//!   ([`scan_in_place`], the same grammar).
//! - **Strings are skimmed a block at a time** for the first byte that is `"`, `\`, a control
//!   character or non-ASCII: 16 bytes with SSE2 on x86-64, a machine word (4 bytes on armv7)
//!   elsewhere. A plain ASCII string ends at that first stop. Escapes are validated, including
//!   surrogate pairs. A string with non-ASCII bytes has its raw content checked with
//!   `std::str::from_utf8`, which is exactly serde_json's check, because escapes are ASCII.
//! - **Keys `machine` and `temperature`, written plainly, are one fixed-size comparison**, with
//!   no skim, and so is a rule's key of up to 15 bytes. Any other key is skimmed and, only if
//!   it had escapes, compared after unescaping (`src/scan/unescape.rs`: `\uXXXX` decoded to UTF-8 as it
//!   compares, no buffer, out of line).
//! - **Numbers are checked against the JSON grammar** in the same pass. The temperature is
//!   converted, with one correctly rounded division when its digits allow (Clinger's fast path),
//!   otherwise with `str::parse::<f64>`. Any other number is converted only if it could overflow:
//!   one with an exponent, or more than 308 integer digits.
//!
//! The one `unsafe` is the call into the SSE2 comparison, which every x86-64 CPU has.
//!
//! # Why not simd-json
//! Measured under qemu on armv7 (the target), simd-json runs its scalar fallback and costs more
//! instructions per message than serde_json; a DOM of any kind is the dominant cost for a
//! 129-byte message of which one number matters.
//!
//! # Why one long file
//! This is the one file in `src/` over 500 lines, on purpose: the grammar's functions are
//! specialised loops that share the register-held cursor, the masked reads of `Padded` and the
//! in-place variant's checks, and they are written twice (padded and in place) so that neither
//! pays for the other's bounds. Kept together they stay private to one module, inline into one
//! another, and are read side by side; only the cold part, unescaping a key, is its own file
//! (`scan/unescape.rs`).

use crate::rules::{Matcher, MAX_RULES};

mod unescape;
use unescape::unescaped_equals;

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

impl Scan {
    /// The number at `machine.temperature` as a paths scan gives it (NaN where there is none,
    /// whatever the reason), or why the document is not JSON.
    pub fn number(self) -> Result<f64> {
        match self {
            Scan::Temperature(t) => Ok(t),
            Scan::Missing(_) => Ok(f64::NAN),
            Scan::Malformed(m) => Err(m),
        }
    }
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
    if doc.len() > Padded::MAX_LEN {
        return scan_in_place(doc);
    }
    answer(Padded::with(doc, |padded| document(padded)))
}

/// Finds the number at every path of a rule set's matcher in `doc`, validating the whole
/// document in the same one pass: `values[slot]` is the number at that slot's path, or NaN
/// where the path leads nowhere or to something else (JSON numbers are finite). Malformed
/// documents are refused as by [`scan`]. The last of duplicate keys wins, at every level.
pub fn scan_paths(doc: &[u8], matcher: &Matcher, values: &mut [f64; MAX_RULES]) -> Result<()> {
    values[..matcher.slots].fill(f64::NAN);
    if doc.len() > Padded::MAX_LEN {
        return paths_document(doc, matcher, values, &mut ());
    }
    Padded::with(doc, |padded| paths_document(padded, matcher, values, &mut ()))
}

/// [`scan_paths`] reading the document where it lies, as [`scan_in_place`] does.
pub fn scan_paths_in_place(doc: &[u8], matcher: &Matcher, values: &mut [f64; MAX_RULES]) -> Result<()> {
    values[..matcher.slots].fill(f64::NAN);
    paths_document(doc, matcher, values, &mut ())
}

/// A string at a slot's path: its content's place in the document, between the quotes, and
/// whether it holds escapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringAt {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

/// Per slot, the string at its path ([`StringAt`]), or None.
pub type Strings = [Option<StringAt>; MAX_RULES];

/// [`scan_paths`] that also records where a string stands at a slot's path, in the same pass
/// (the aggregates' ISO-8601 times and string group keys): `strings[slot]`, None where the path
/// leads to no string. The last of duplicate keys wins for both.
pub fn scan_paths_strings(
    doc: &[u8],
    matcher: &Matcher,
    values: &mut [f64; MAX_RULES],
    strings: &mut Strings,
) -> Result<()> {
    values[..matcher.slots].fill(f64::NAN);
    strings[..matcher.slots].fill(None);
    if doc.len() > Padded::MAX_LEN {
        return paths_document(doc, matcher, values, strings);
    }
    Padded::with(doc, |padded| paths_document(padded, matcher, values, strings))
}

/// What a paths scan records besides numbers: nothing (`()`, the rules' scan), or [`Strings`].
trait Record {
    fn clear(&mut self, slots: std::ops::Range<usize>);
    /// Whether [`Record::string`] keeps anything (else a string is only validated and skipped).
    const STRINGS: bool;
    fn string(&mut self, slot: u8, at: StringAt);
}

impl Record for () {
    #[inline(always)]
    fn clear(&mut self, _: std::ops::Range<usize>) {}
    const STRINGS: bool = false;
    #[inline(always)]
    fn string(&mut self, _: u8, _: StringAt) {}
}

impl Record for Strings {
    #[inline(always)]
    fn clear(&mut self, slots: std::ops::Range<usize>) {
        self[slots].fill(None);
    }
    const STRINGS: bool = true;
    #[inline(always)]
    fn string(&mut self, slot: u8, at: StringAt) {
        self[usize::from(slot)] = Some(at);
    }
}

/// What [`scan`] does for a document too long to copy: the same grammar, reading the document
/// where it lies, with a bounds check on every read. Public so that tests and benchmarks can hold
/// the two ways of reading against each other on any document.
pub fn scan_in_place(doc: &[u8]) -> Scan {
    answer(document(doc))
}

/// One top-level member that [`scan_with_top_member`] reads besides `machine.temperature`: the
/// number there (NaN: none) or the place of the string there (None: none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopMember {
    pub number: f64,
    pub string: Option<StringAt>,
}

/// [`scan`], also reading the top-level member `key` (plain: no `"`, `\` or control character,
/// not `machine`) in the same pass, as [`scan_paths_strings`] would at that path: the last of
/// duplicate keys wins, and a key written with escapes counts. The aggregates' common case
/// (`timeCreated` beside the tutorial's temperature), at the tutorial scanner's speed.
pub fn scan_with_top_member(doc: &[u8], key: &[u8]) -> (Scan, TopMember) {
    let mut member = Member { key, found: TopMember { number: f64::NAN, string: None } };
    let found = if doc.len() > Padded::MAX_LEN {
        document_with(doc, &mut member)
    } else {
        Padded::with(doc, |padded| document_with(padded, &mut member))
    };
    (answer(found), member.found)
}

/// What the top level reads besides `machine`: nothing (`()`, [`scan`]), or one [`Member`].
trait Extra {
    const ON: bool;
    /// Whether the key between `start` and its closing quote at `end - 1` is the member's.
    fn is<D: Doc + ?Sized>(&self, doc: &D, start: usize, end: usize) -> bool;
    /// Reads the member's value at `at` (first byte `first`); returns the position after it.
    fn read<D: Doc + ?Sized>(&mut self, doc: &D, at: usize, first: u8) -> Result<usize>;
}

impl Extra for () {
    const ON: bool = false;
    #[inline(always)]
    fn is<D: Doc + ?Sized>(&self, _: &D, _: usize, _: usize) -> bool {
        false
    }
    #[inline(always)]
    fn read<D: Doc + ?Sized>(&mut self, _: &D, _: usize, _: u8) -> Result<usize> {
        Ok(0)
    }
}

struct Member<'k> {
    key: &'k [u8],
    found: TopMember,
}

impl Extra for Member<'_> {
    const ON: bool = true;
    #[inline(always)]
    fn is<D: Doc + ?Sized>(&self, doc: &D, start: usize, end: usize) -> bool {
        let raw = doc.bytes(start..end - 1);
        crate::bytes::same(raw, self.key) || (raw.contains(&b'\\') && unescaped_equals(raw, self.key))
    }
    #[inline(always)]
    fn read<D: Doc + ?Sized>(&mut self, doc: &D, at: usize, first: u8) -> Result<usize> {
        self.found = TopMember { number: f64::NAN, string: None };
        match first {
            b'"' => {
                let (end, escaped) = string(doc, at + 1)?;
                self.found.string = Some(StringAt { start: at + 1, end: end - 1, escaped });
                Ok(end)
            }
            b'-' | b'0'..=b'9' => {
                let (x, end) = temperature(doc, at, first)?;
                self.found.number = x;
                Ok(end)
            }
            _ => value(doc, at, first, 1),
        }
    }
}

fn answer(found: Result<Found>) -> Scan {
    match found {
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

/// The position of the first byte at or after `pos` that a string cannot skim past (`"`, `\`,
/// a control character or a non-ASCII byte), or None at the end of the input.
///
/// A block of bytes at a time: 16 with SSE2 on x86-64 (part of its baseline), a machine word
/// elsewhere (4 bytes on armv7, whose baseline has no NEON). See [`stops`].
#[inline]
fn skim<D: Doc + ?Sized>(doc: &D, mut pos: usize) -> Option<usize> {
    while let Some(block) = doc.block(pos) {
        if let Some(offset) = stops(block) {
            return Some(pos + offset);
        }
        pos += BLOCK;
    }
    (pos..doc.len()).find(|&p| STRING_CLASS[doc.at(p) as usize] != 0)
}

#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 16;

/// The offset of the first stop in a block. SSE2: equal to `"` or `\`, or less than 0x20 as
/// a signed byte, which takes in the control characters and every non-ASCII byte at once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn stops(block: [u8; BLOCK]) -> Option<usize> {
    // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
    let mask = unsafe { sse2_stops(block) };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn sse2_stops(block: [u8; BLOCK]) -> i32 {
    use std::arch::x86_64::*;
    let [lo, hi] = [0, 8].map(|i| {
        let mut half = [0; 8];
        half.copy_from_slice(&block[i..i + 8]);
        i64::from_le_bytes(half)
    });
    let v = _mm_set_epi64x(hi, lo);
    let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
    let below = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
    _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), below))
}

#[cfg(not(target_arch = "x86_64"))]
const BLOCK: usize = std::mem::size_of::<usize>();

/// The offset of the first stop in a block, a machine word at a time: a byte is flagged when
/// subtracting 0x20, or subtracting 1 after XOR with `"` or `\`, borrows into its high bit, or
/// its high bit is set. Borrows only run upwards, from a flagged byte, so the lowest flagged byte
/// is exact.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn stops(block: [u8; BLOCK]) -> Option<usize> {
    const ONES: usize = usize::MAX / 255;
    const HIGHS: usize = ONES * 0x80;
    let w = usize::from_le_bytes(block);
    let quote = w ^ (ONES * b'"' as usize);
    let backslash = w ^ (ONES * b'\\' as usize);
    let flagged = (w.wrapping_sub(ONES * 0x20) | quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES) | w) & HIGHS;
    (flagged != 0).then(|| (flagged.trailing_zeros() / 8) as usize)
}

/// The document as the grammar reads it. Reading at or past the end gives 0: NUL is invalid
/// wherever the grammar looks outside strings, and ends a skim inside one, so the end needs no
/// case of its own.
trait Doc {
    fn len(&self) -> usize;
    /// The byte at `pos`, 0 at and past the end.
    fn at(&self, pos: usize) -> u8;
    /// The `BLOCK` bytes at `pos`, when all of them can be read.
    fn block(&self, pos: usize) -> Option<[u8; BLOCK]>;
    /// Whether the bytes at `pos` are `bytes`.
    fn starts_with<const N: usize>(&self, pos: usize, bytes: &[u8; N]) -> bool;
    /// Whether the bytes at `pos` are `bytes` (at most `Padded::READ` of them).
    fn starts_with_bytes(&self, pos: usize, bytes: &[u8]) -> bool;
    /// The document's bytes in `range`, which lies inside the document.
    fn bytes(&self, range: std::ops::Range<usize>) -> &[u8];
}

impl Doc for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn at(&self, pos: usize) -> u8 {
        self.get(pos).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn block(&self, pos: usize) -> Option<[u8; BLOCK]> {
        self.get(pos..pos + BLOCK)?.try_into().ok()
    }

    #[inline(always)]
    fn starts_with<const N: usize>(&self, pos: usize, bytes: &[u8; N]) -> bool {
        self.get(pos..pos + N).is_some_and(|b| b == bytes)
    }

    #[inline(always)]
    fn starts_with_bytes(&self, pos: usize, bytes: &[u8]) -> bool {
        self.get(pos..pos + bytes.len()).is_some_and(|b| b == bytes)
    }

    fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self[range]
    }
}

/// A document of up to `MAX_LEN` bytes copied into the thread's buffer, so that reading needs no
/// bounds check. A position is masked into the buffer instead: with a 64 KiB window that is a
/// 16-bit zero extension, one instruction that cannot fail.
///
/// Each scan copies its document and zeroes the `ZEROS` bytes after it. That is enough:
/// - the grammar only moves past bytes it has checked, and NUL passes no check, so the cursor
///   never goes past the first zero;
/// - no read reaches more than `READ` bytes beyond the cursor.
///
/// So no read reaches a previous document's bytes, and the mask never wraps a position back into
/// this one. The mask is what makes the reads safe; the zeros are what make them right.
struct Padded<'a> {
    buf: &'a [u8; Padded::WINDOW + Padded::READ],
    len: usize,
}

impl Padded<'_> {
    /// Positions are masked into the first `WINDOW` bytes.
    const WINDOW: usize = 65536;
    /// The widest read at one position: a skim block, or `temperature"` (12 bytes).
    const READ: usize = 16;
    /// The zeros written after the document: its end, and every read the cursor can make there.
    const ZEROS: usize = 2 * Padded::READ;
    /// The longest document copied.
    const MAX_LEN: usize = Padded::WINDOW - Padded::ZEROS;

    /// Copies `doc` (at most `MAX_LEN` bytes) into the thread's buffer, zeros after it, and reads
    /// it there.
    #[inline(always)]
    fn with<R>(doc: &[u8], read: impl FnOnce(&Padded) -> R) -> R {
        PADDED.with_borrow_mut(|buf| {
            let len = doc.len();
            buf[..len].copy_from_slice(doc);
            buf[len..len + Padded::ZEROS].fill(0);
            read(&Padded { buf, len })
        })
    }
}

const _: () = assert!(Padded::READ >= BLOCK && Padded::READ >= b"temperature\"".len());
const _: () = assert!(Padded::READ >= crate::rules::PLAIN_KEY_MAX);

thread_local! {
    /// The copy buffer: 64 KiB per thread that scans.
    static PADDED: std::cell::RefCell<[u8; Padded::WINDOW + Padded::READ]> =
        const { std::cell::RefCell::new([0; Padded::WINDOW + Padded::READ]) };
}

impl Doc for Padded<'_> {
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn at(&self, pos: usize) -> u8 {
        self.buf[pos % Padded::WINDOW]
    }

    #[inline(always)]
    fn block(&self, pos: usize) -> Option<[u8; BLOCK]> {
        let i = pos % Padded::WINDOW;
        let mut block = [0; BLOCK];
        block.copy_from_slice(&self.buf[i..i + BLOCK]);
        Some(block)
    }

    #[inline(always)]
    fn starts_with<const N: usize>(&self, pos: usize, bytes: &[u8; N]) -> bool {
        let i = pos % Padded::WINDOW;
        self.buf[i..i + N] == *bytes
    }

    #[inline(always)]
    fn starts_with_bytes(&self, pos: usize, bytes: &[u8]) -> bool {
        let i = pos % Padded::WINDOW;
        let len = bytes.len().min(Padded::READ);
        self.buf[i..i + len].iter().zip(bytes).all(|(a, b)| a == b) && len == bytes.len()
    }

    #[inline(always)]
    fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[..self.len][range]
    }
}

// The grammar below is a set of functions over the document and a cursor: each takes the
// position where its part starts and returns the position after it. Keeping the cursor in a
// local (not in a struct behind `&mut`) lets it live in a register across the whole pass.

fn document<D: Doc + ?Sized>(doc: &D) -> Result<Found> {
    document_with(doc, &mut ())
}

#[inline(always)]
fn document_with<D: Doc + ?Sized, X: Extra>(doc: &D, extra: &mut X) -> Result<Found> {
    let (pos, first) = ws(doc, 0);
    let (found, pos) = if first == b'{' {
        top_object(doc, pos + 1, extra)?
    } else {
        (Found::Missing(Missing::NotAnObject), value(doc, pos, first, 0)?)
    };
    if ws(doc, pos).0 != doc.len() {
        return Err(Malformed::InvalidJson);
    }
    Ok(found)
}

fn paths_document<D: Doc + ?Sized, R: Record>(
    doc: &D,
    m: &Matcher,
    values: &mut [f64; MAX_RULES],
    strings: &mut R,
) -> Result<()> {
    let (pos, first) = ws(doc, 0);
    let pos =
        if first == b'{' { paths_object(doc, pos + 1, m, 0, 1, values, strings)? } else { value(doc, pos, first, 0)? };
    if ws(doc, pos).0 != doc.len() {
        return Err(Malformed::InvalidJson);
    }
    Ok(())
}

/// An object after its `{` (container number `depth`) at matcher node `node`: a member whose key
/// is a child of the node clears that child's slots (a later duplicate replaces an earlier one)
/// and records or descends; any other member is validated and skipped.
fn paths_object<D: Doc + ?Sized, R: Record>(
    doc: &D,
    pos: usize,
    m: &Matcher,
    node: usize,
    depth: u32,
    values: &mut [f64; MAX_RULES],
    strings: &mut R,
) -> Result<usize> {
    if depth >= DEPTH_LIMIT {
        return Err(Malformed::TooDeep);
    }
    let children = &m.nodes[node].children;
    let (mut pos, first) = ws(doc, pos);
    if first == b'}' {
        return Ok(pos + 1);
    }
    loop {
        let (at, first) = ws(doc, pos);
        if first != b'"' {
            return Err(Malformed::InvalidJson);
        }
        let (child, after_key) = member_key(doc, at + 1, m, children)?;
        let (at, first) = colon(doc, after_key)?;
        pos = match child {
            // Telemetry often groups readings in objects (`"ambient":{…}`): in line, no call.
            None if first == b'{' => object(doc, at + 1, depth + 1)?,
            None => value(doc, at, first, depth)?,
            Some(c) => {
                let n = &m.nodes[c];
                let subtree = usize::from(n.subtree.start)..usize::from(n.subtree.end);
                values[subtree.clone()].fill(f64::NAN);
                strings.clear(subtree);
                match (first, n.slot) {
                    (b'-' | b'0'..=b'9', Some(slot)) => {
                        let (x, end) = temperature(doc, at, first)?;
                        values[usize::from(slot)] = x;
                        end
                    }
                    (b'"', Some(slot)) if R::STRINGS => {
                        let (end, escaped) = string(doc, at + 1)?;
                        strings.string(slot, StringAt { start: at + 1, end: end - 1, escaped });
                        end
                    }
                    (b'{', _) if !n.children.is_empty() => paths_object(doc, at + 1, m, c, depth + 1, values, strings)?,
                    _ => value(doc, at, first, depth)?,
                }
            }
        };
        match after_member(doc, pos, b'}')? {
            (true, next) => pos = next,
            (false, end) => return Ok(end),
        }
    }
}

/// The key whose content starts at `start`: which of `children` it is (after unescaping), and the
/// position after it. A child written plainly is one fixed-size comparison, no skim, as
/// [`key`] does for `machine`.
#[inline(always)]
fn member_key<D: Doc + ?Sized>(doc: &D, start: usize, m: &Matcher, children: &[u16]) -> Result<(Option<usize>, usize)> {
    for &c in children {
        let n = &m.nodes[usize::from(c)];
        if n.plain && doc.starts_with_bytes(start, &n.quoted) {
            return Ok((Some(usize::from(c)), start + n.quoted.len()));
        }
    }
    let (end, escaped) = string(doc, start)?;
    let raw = doc.bytes(start..end - 1);
    let found = children.iter().map(|&c| usize::from(c)).find(|&c| {
        let n = &m.nodes[c];
        if escaped {
            unescaped_equals(raw, &n.key)
        } else {
            !n.plain && *n.key == *raw
        }
    });
    Ok((found, end))
}

/// The top-level object after its `{`: remembers the last `machine` member's verdict.
#[inline(always)]
fn top_object<D: Doc + ?Sized, X: Extra>(doc: &D, pos: usize, extra: &mut X) -> Result<(Found, usize)> {
    let mut found = Found::Missing(Missing::NoMachine);
    let (mut pos, first) = ws(doc, pos);
    if first == b'}' {
        return Ok((found, pos + 1));
    }
    loop {
        let key_start = if X::ON { ws(doc, pos).0 + 1 } else { 0 };
        let (is_machine, after_key) = key(doc, pos, b"machine\"")?;
        let (at, first) = colon(doc, after_key)?;
        if X::ON && !is_machine && extra.is(doc, key_start, after_key) {
            pos = extra.read(doc, at, first)?;
        } else if !is_machine {
            // Telemetry often groups readings in objects (`"ambient":{…}`): in line, no call.
            pos = if first == b'{' { object(doc, at + 1, 2)? } else { value(doc, at, first, 1)? };
        } else if first == b'{' {
            (found, pos) = machine_object(doc, at + 1)?;
        } else {
            pos = value(doc, at, first, 1)?;
            found = Found::Missing(Missing::MachineNotAnObject);
        }
        match after_member(doc, pos, b'}')? {
            (true, next) => pos = next,
            (false, end) => return Ok((found, end)),
        }
    }
}

/// The `machine` object (depth 2) after its `{`: remembers the last `temperature` member's
/// verdict.
#[inline(always)]
fn machine_object<D: Doc + ?Sized>(doc: &D, pos: usize) -> Result<(Found, usize)> {
    let mut found = Found::Missing(Missing::NoTemperature);
    let (mut pos, first) = ws(doc, pos);
    if first == b'}' {
        return Ok((found, pos + 1));
    }
    loop {
        let (is_temperature, after_key) = key(doc, pos, b"temperature\"")?;
        let (at, first) = colon(doc, after_key)?;
        if !is_temperature {
            pos = value(doc, at, first, 2)?;
        } else if let b'-' | b'0'..=b'9' = first {
            let (t, end) = temperature(doc, at, first)?;
            (found, pos) = (Found::Temperature(t), end);
        } else {
            pos = value(doc, at, first, 2)?;
            found = Found::Missing(Missing::TemperatureNotANumber);
        }
        match after_member(doc, pos, b'}')? {
            (true, next) => pos = next,
            (false, end) => return Ok((found, end)),
        }
    }
}

/// A key at `pos` (whitespace allowed before it): whether it is `name` (given with its closing
/// quote) once unescaped, and the position after it. The common case, a key written plainly,
/// is one fixed-size comparison that needs no skim.
#[inline(always)]
fn key<D: Doc + ?Sized, const N: usize>(doc: &D, pos: usize, name: &[u8; N]) -> Result<(bool, usize)> {
    let (pos, first) = ws(doc, pos);
    if first != b'"' {
        return Err(Malformed::InvalidJson);
    }
    let start = pos + 1;
    if doc.starts_with(start, name) {
        return Ok((true, start + N));
    }
    let (end, escaped) = string(doc, start)?;
    Ok((escaped && unescaped_equals(doc.bytes(start..end - 1), &name[..N - 1]), end))
}

/// The `:` after a key, and the whitespace around it: returns where the value starts and its
/// first byte.
#[inline(always)]
fn colon<D: Doc + ?Sized>(doc: &D, pos: usize) -> Result<(usize, u8)> {
    let (pos, b) = ws(doc, pos);
    if b != b':' {
        return Err(Malformed::InvalidJson);
    }
    Ok(ws(doc, pos + 1))
}

/// What follows a member or element: `,` (true, with the position after it) or the container's
/// `close` (false, with the position after it).
#[inline(always)]
fn after_member<D: Doc + ?Sized>(doc: &D, pos: usize, close: u8) -> Result<(bool, usize)> {
    match ws(doc, pos) {
        (pos, b',') => Ok((true, pos + 1)),
        (pos, b) if b == close => Ok((false, pos + 1)),
        _ => Err(Malformed::InvalidJson),
    }
}

/// Validates and skips one value starting at `pos` with byte `first`, nested inside `depth`
/// containers. Strings and numbers, most of what telemetry holds, are handled in line; the rest
/// costs a call.
#[inline(always)]
fn value<D: Doc + ?Sized>(doc: &D, pos: usize, first: u8, depth: u32) -> Result<usize> {
    match first {
        b'"' => Ok(string(doc, pos + 1)?.0),
        b'-' | b'0'..=b'9' => number(doc, pos, first),
        _ => container_or_literal(doc, pos, first, depth),
    }
}

#[inline(never)]
fn container_or_literal<D: Doc + ?Sized>(doc: &D, pos: usize, first: u8, depth: u32) -> Result<usize> {
    match first {
        b'{' => object(doc, pos + 1, depth + 1),
        b'[' => array(doc, pos + 1, depth + 1),
        b't' => literal(doc, pos, b"true"),
        b'f' => literal(doc, pos, b"false"),
        b'n' => literal(doc, pos, b"null"),
        _ => Err(Malformed::InvalidJson),
    }
}

/// An object after its `{`, which is container number `depth`.
#[inline(always)]
fn object<D: Doc + ?Sized>(doc: &D, pos: usize, depth: u32) -> Result<usize> {
    if depth >= DEPTH_LIMIT {
        return Err(Malformed::TooDeep);
    }
    let (mut pos, first) = ws(doc, pos);
    if first == b'}' {
        return Ok(pos + 1);
    }
    loop {
        let (at, first) = ws(doc, pos);
        if first != b'"' {
            return Err(Malformed::InvalidJson);
        }
        let (at, first) = colon(doc, string(doc, at + 1)?.0)?;
        pos = value(doc, at, first, depth)?;
        match after_member(doc, pos, b'}')? {
            (true, next) => pos = next,
            (false, end) => return Ok(end),
        }
    }
}

/// An array after its `[`, which is container number `depth`.
fn array<D: Doc + ?Sized>(doc: &D, pos: usize, depth: u32) -> Result<usize> {
    if depth >= DEPTH_LIMIT {
        return Err(Malformed::TooDeep);
    }
    let (mut pos, first) = ws(doc, pos);
    if first == b']' {
        return Ok(pos + 1);
    }
    loop {
        let (at, first) = ws(doc, pos);
        pos = value(doc, at, first, depth)?;
        match after_member(doc, pos, b']')? {
            (true, next) => pos = next,
            (false, end) => return Ok(end),
        }
    }
}

fn literal<D: Doc + ?Sized, const N: usize>(doc: &D, pos: usize, word: &[u8; N]) -> Result<usize> {
    if doc.starts_with(pos, word) {
        Ok(pos + N)
    } else {
        Err(Malformed::InvalidJson)
    }
}

/// The temperature's number at `start`, whose first byte is `first`, and the position after it.
///
/// Telemetry writes it as a decimal without exponent, of at most 19 digits (`31.13`,
/// `25.59846067945704`). Its digits are validated and built into an integer in one pass. Then
/// Clinger's fast path applies: when that integer has at most 53 bits and there are at most 22
/// fraction digits, both it and the power of ten are exact doubles, so one IEEE division rounds
/// correctly. Any other number is validated by [`number`] and converted by `str::parse`, which is
/// correctly rounded too.
#[inline(always)]
fn temperature<D: Doc + ?Sized>(doc: &D, start: usize, first: u8) -> Result<(f64, usize)> {
    let negative = first == b'-';
    let int_start = start + usize::from(negative);
    // The integer digits that went into the mantissa: a lone leading zero adds nothing.
    let (mut pos, mut b, mut mantissa, int_digits) = match doc.at(int_start) {
        b'0' => (int_start + 1, doc.at(int_start + 1), 0, 0),
        b'1'..=b'9' => {
            let (end, b, mantissa) = accumulate(doc, int_start, 0);
            (end, b, mantissa, end - int_start)
        }
        _ => return any_temperature(doc, start, first),
    };
    let mut scale = 0;
    if b == b'.' && doc.at(pos + 1).is_ascii_digit() {
        let frac_end;
        (frac_end, b, mantissa) = accumulate(doc, pos + 1, mantissa);
        scale = frac_end - (pos + 1);
        pos = frac_end;
    }
    let plain = !matches!(b, b'.' | b'e' | b'E');
    if plain && int_digits + scale <= 19 && mantissa <= 1 << 53 && scale < POW10.len() {
        let value = mantissa as f64 / POW10[scale];
        return Ok((if negative { -value } else { value }, pos));
    }
    any_temperature(doc, start, first)
}

/// The digits at `pos` appended to `mantissa` (wrapping: the caller bounds how many count):
/// the position after them, the byte there, and the new mantissa.
#[inline(always)]
fn accumulate<D: Doc + ?Sized>(doc: &D, mut pos: usize, mut mantissa: u64) -> (usize, u8, u64) {
    let mut b = doc.at(pos);
    while b.is_ascii_digit() {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        pos += 1;
        b = doc.at(pos);
    }
    (pos, b, mantissa)
}

/// A temperature off the fast path: validated, then converted by `str::parse`, correctly rounded.
#[inline(never)]
fn any_temperature<D: Doc + ?Sized>(doc: &D, start: usize, first: u8) -> Result<(f64, usize)> {
    let end = number(doc, start, first)?;
    Ok((finite_f64(doc.bytes(start..end))?, end))
}

/// Validates the number at `start`, whose first byte is `first`; returns the position after it.
/// A number that could overflow (one with an exponent, or more than 308 integer digits) is
/// converted, to check that it does not.
#[inline(always)]
fn number<D: Doc + ?Sized>(doc: &D, start: usize, first: u8) -> Result<usize> {
    let (int_start, first_digit) = if first == b'-' { (start + 1, doc.at(start + 1)) } else { (start, first) };
    let mut pos = int_start;
    match first_digit {
        b'0' => pos += 1,
        b'1'..=b'9' => pos = digits(doc, pos + 1),
        _ => return Err(Malformed::InvalidJson),
    }
    let int_digits = pos - int_start;
    if doc.at(pos) == b'.' {
        if !doc.at(pos + 1).is_ascii_digit() {
            return Err(Malformed::InvalidJson);
        }
        pos = digits(doc, pos + 2);
    }
    let mut exponent = false;
    if let b'e' | b'E' = doc.at(pos) {
        exponent = true;
        pos += 1;
        if let b'+' | b'-' = doc.at(pos) {
            pos += 1;
        }
        if !doc.at(pos).is_ascii_digit() {
            return Err(Malformed::InvalidJson);
        }
        pos = digits(doc, pos + 1);
    }
    if exponent || int_digits > 308 {
        finite_f64(doc.bytes(start..pos))?;
    }
    Ok(pos)
}

#[inline(always)]
fn digits<D: Doc + ?Sized>(doc: &D, mut pos: usize) -> usize {
    while doc.at(pos).is_ascii_digit() {
        pos += 1;
    }
    pos
}

/// A string whose content starts at `start` (after the opening quote), validating escapes and
/// UTF-8: returns the position after the closing quote and whether there were escapes. A plain
/// ASCII string, the common case, is one skim and one comparison.
#[inline(always)]
fn string<D: Doc + ?Sized>(doc: &D, start: usize) -> Result<(usize, bool)> {
    let pos = skim(doc, start).ok_or(Malformed::InvalidJson)?;
    if doc.at(pos) == b'"' {
        return Ok((pos + 1, false));
    }
    string_rest(doc, start, pos)
}

/// The rest of a string after the first byte a skim stopped at that is not its closing quote.
#[inline(never)]
fn string_rest<D: Doc + ?Sized>(doc: &D, start: usize, mut pos: usize) -> Result<(usize, bool)> {
    let mut escaped = false;
    let mut non_ascii = false;
    loop {
        match STRING_CLASS[doc.at(pos) as usize] {
            1 => {
                if non_ascii && std::str::from_utf8(doc.bytes(start..pos)).is_err() {
                    return Err(Malformed::InvalidUtf8);
                }
                return Ok((pos + 1, escaped));
            }
            2 => {
                escaped = true;
                pos = escape(doc, pos + 1)?;
            }
            3 => return Err(Malformed::InvalidJson),
            _ => {
                non_ascii = true;
                pos += 1;
            }
        }
        pos = skim(doc, pos).ok_or(Malformed::InvalidJson)?;
    }
}

/// Validates the escape after a backslash at `pos - 1`; returns the position after it.
fn escape<D: Doc + ?Sized>(doc: &D, pos: usize) -> Result<usize> {
    match doc.at(pos) {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(pos + 1),
        b'u' => match hex4(doc, pos + 1)? {
            0xDC00..=0xDFFF => Err(Malformed::InvalidJson),
            0xD800..=0xDBFF => {
                if !doc.starts_with(pos + 5, b"\\u") {
                    return Err(Malformed::InvalidJson);
                }
                match hex4(doc, pos + 7)? {
                    0xDC00..=0xDFFF => Ok(pos + 11),
                    _ => Err(Malformed::InvalidJson),
                }
            }
            _ => Ok(pos + 5),
        },
        _ => Err(Malformed::InvalidJson),
    }
}

fn hex4<D: Doc + ?Sized>(doc: &D, pos: usize) -> Result<u16> {
    let mut unit = 0u16;
    for d in [doc.at(pos), doc.at(pos + 1), doc.at(pos + 2), doc.at(pos + 3)] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(Malformed::InvalidJson),
        };
        unit = unit << 4 | v as u16;
    }
    Ok(unit)
}

/// The position of the first byte at or after `pos` that is not whitespace, and that byte.
#[inline(always)]
fn ws<D: Doc + ?Sized>(doc: &D, mut pos: usize) -> (usize, u8) {
    let mut b = doc.at(pos);
    // Telemetry is mostly compact: one comparison settles the common case.
    while b <= b' ' && matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
        pos += 1;
        b = doc.at(pos);
    }
    (pos, b)
}

/// The powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// A validated number's text as an `f64`, which must be finite.
#[cold]
fn finite_f64(text: &[u8]) -> Result<f64> {
    let value: f64 = std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()).ok_or(Malformed::InvalidJson)?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Malformed::NumberOutOfRange)
    }
}
