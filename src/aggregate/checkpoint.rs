//! The open windows as bytes, and back: what the shell writes to the state directory on SIGTERM and
//! every `CheckpointSeconds`, and reads at start.
//!
//! ```text
//! "EFAGGR" version:u8 length:u32 payload checksum:u64      (little-endian; checksum: [`checksum`] of payload)
//! payload = written_at:i64 ids:u32 id:u64* aggregates:u32 aggregate* unsent:u32 (topic:str body:bytes)*
//! aggregate = name:str definition:u64 first_start watermark closed:i64 seq:u64 dropped:u64*9
//!             groups:u32 (key:str panes:u32 (index:i64 summary)*)*
//! summary = count:u64 sum compensation mean m2 min max:f64 first last:(i64 u64 f64)
//!           sketch:u8 [zeros:u64 (offset:i64 bins:u32 count:u32*)*2]
//! str = length:u32 utf-8; bytes = length:u32 byte*
//! ```
//!
//! `unsent` (from version 3) are the windows' messages sent and not yet confirmed by the hub:
//! a stop whose drain gives up on them (the hub away) keeps them here, and they are sent again
//! after the restart. A version-2 file (no `unsent`) is still read.
//!
//! An aggregate is matched to the current set by name and by the hash of its canonical definition:
//! one the set no longer holds, or holds changed, is left out with a log line, as a live change
//! would. Anything wrong with the bytes is a [`RestoreError`], never a panic: the shell logs it
//! and starts afresh.
//!
//! The bytes are wrong when no run of the module could have written them, whatever their
//! checksum: a count beyond its limit (ids, aggregates, groups, panes, bins, unsent messages, a
//! string's bytes; nothing is allocated before its bytes are read), names, groups or panes out of
//! order, and, for each aggregate restored, a state its definition cannot reach (`check`): window
//! bounds off the hop or before the definition; a watermark more than [`EARLY_MS`] ahead of
//! `written_at`, or behind a reading by more than `lateSeconds`; `closed` not behind the watermark
//! (unless nothing closed yet); a group with no pane, a pane no open window holds or with a
//! reading's time outside it; a group key no reading makes ([`is_group_key`]: at most
//! [`MAX_GROUP_KEY`] bytes, the same limit when read from a message); a count over [`MAX_COUNT`];
//! a summary [`Summary::check`] refuses, such as a sketch whose bins span more than its readings'
//! min and max give. So after a restore, a fold, a close, a merge and a checkpoint hold what they
//! hold after a start.

use std::sync::Arc;

use super::definition::{Aggregate, AggregateSet, EARLY_MS, MAX_GROUPS};
use super::extract::{is_group_key, MAX_GROUP_KEY};
use super::series::{Dropped, Hot, Panes, Series};
use super::summary::{Bins, Sketch, Stamped, Summary, MAX_BINS, MAX_COUNT};
use super::{Aggregator, Seen};
use crate::rules::MAX_TEXT;

const MAGIC: &[u8; 6] = b"EFAGGR";
pub const VERSION: u8 = 3;
/// The oldest version this module reads: version 2 had no `unsent` section.
const OLDEST_READ: u8 = 2;
/// At most this many unsent messages in a checkpoint (the session holds no more).
pub const MAX_UNSENT: usize = 1024;

/// A window's message the hub had not confirmed when the checkpoint was taken: its topic and
/// body, sent again as they were.
#[derive(Clone, Debug, PartialEq)]
pub struct Unsent {
    pub topic: String,
    pub body: Vec<u8>,
}
/// A checkpoint older than this is stale: its windows are long gone (the longest window and
/// lateness, and a day).
pub const MAX_AGE_MS: i64 = (super::definition::MAX_WINDOW_SECONDS as i64 + 2 * 86_400) * 1000;

/// Why a checkpoint was not restored.
#[derive(Clone, Debug, PartialEq)]
pub enum RestoreError {
    Empty,
    NotACheckpoint,
    Version(u8),
    Truncated,
    Checksum,
    /// Written this long ago (negative: in the future).
    Stale {
        age_ms: i64,
    },
    Corrupt(&'static str),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Empty => write!(f, "the state file is empty"),
            RestoreError::NotACheckpoint => write!(f, "the state file is not an aggregates checkpoint"),
            RestoreError::Version(v) => {
                write!(f, "checkpoint version {v}, this module reads {OLDEST_READ} to {VERSION}")
            }
            RestoreError::Truncated => write!(f, "the checkpoint is truncated"),
            RestoreError::Checksum => write!(f, "the checkpoint's checksum does not match its content"),
            RestoreError::Stale { age_ms } => write!(f, "the checkpoint was written {} s from now", -age_ms / 1000),
            RestoreError::Corrupt(what) => write!(f, "the checkpoint is corrupt: {what}"),
        }
    }
}

/// The magic, the version and the length.
const HEADER: usize = MAGIC.len() + 1 + 4;

/// The payload's checksum: FNV-1a 64 over its 8-byte little-endian words (then its last bytes
/// one by one), a quarter of the byte-wise hash's cost on armv7, where a 64-bit multiply is
/// three instructions; any one flipped bit still changes it.
pub fn checksum(payload: &[u8]) -> u64 {
    let mut words = payload.chunks_exact(8);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap_or_default())).wrapping_mul(0x0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Aggregator {
    /// Every open window, the watermarks and the latest message ids, as bytes (written at `now`).
    pub fn checkpoint(&self, now: i64) -> Vec<u8> {
        self.checkpoint_with_unsent(now, std::iter::empty())
    }

    /// As [`Aggregator::checkpoint`], with the windows' messages the hub has not confirmed
    /// (topic, body), at most [`MAX_UNSENT`] of them (the newest).
    pub fn checkpoint_with_unsent<'a>(
        &self,
        now: i64,
        unsent: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Vec<u8> {
        let ids = self.seen.order.len().min(Seen::PERSISTED);
        let mut p = Vec::with_capacity(HEADER + 8 + 4 + 8 * ids + 4 + 256 * self.series.len() + 8);
        p.extend_from_slice(MAGIC);
        p.push(VERSION);
        put_u32(&mut p, 0); // the payload's length, once known
        put_i64(&mut p, now);
        put_u32(&mut p, ids);
        self.seen.order.iter().skip(self.seen.order.len() - ids).for_each(|&id| put_u64(&mut p, id));
        put_u32(&mut p, self.series.len());
        for ((a, s), &hash) in self.set.aggregates.iter().zip(&self.series).zip(&self.set.hashes) {
            put_str(&mut p, &a.name);
            put_u64(&mut p, hash);
            [s.first_start, s.watermark_at(a, now), s.closed].iter().for_each(|&x| put_i64(&mut p, x));
            put_u64(&mut p, s.seq);
            s.dropped.iter().for_each(|&d| put_u64(&mut p, d));
            put_u32(&mut p, s.groups.len());
            for (key, panes) in &s.groups {
                put_str(&mut p, key);
                put_u32(&mut p, panes.len());
                for (j, summary) in panes {
                    put_i64(&mut p, *j);
                    put_summary(&mut p, summary);
                }
            }
        }
        let skip = unsent.len().saturating_sub(MAX_UNSENT);
        put_u32(&mut p, unsent.len() - skip);
        for (topic, body) in unsent.skip(skip) {
            put_bytes(&mut p, topic);
            put_bytes(&mut p, body);
        }
        let len = (p.len() - HEADER) as u32;
        p[HEADER - 4..HEADER].copy_from_slice(&len.to_le_bytes());
        let sum = checksum(&p[HEADER..]);
        put_u64(&mut p, sum);
        p
    }

    /// The state a checkpoint holds, for the aggregates of `set` it names unchanged (the others
    /// start afresh from `now`), and the log lines saying which were left out.
    pub fn restore(set: Arc<AggregateSet>, bytes: &[u8], now: i64) -> Result<(Aggregator, Vec<String>), RestoreError> {
        Aggregator::restore_with_unsent(set, bytes, now).map(|(agg, log, _)| (agg, log))
    }

    /// As [`Aggregator::restore`], with the messages the hub had not confirmed, oldest first.
    pub fn restore_with_unsent(
        set: Arc<AggregateSet>,
        bytes: &[u8],
        now: i64,
    ) -> Result<(Aggregator, Vec<String>, Vec<Unsent>), RestoreError> {
        if bytes.is_empty() {
            return Err(RestoreError::Empty);
        }
        let mut r = Reader(bytes);
        if r.take(MAGIC.len()).map_err(|_| RestoreError::NotACheckpoint)? != MAGIC {
            return Err(RestoreError::NotACheckpoint);
        }
        let version = r.u8()?;
        if !(OLDEST_READ..=VERSION).contains(&version) {
            return Err(RestoreError::Version(version));
        }
        let len = r.u32()? as usize;
        let payload = r.take(len)?;
        if r.u64()? != checksum(payload) {
            return Err(RestoreError::Checksum);
        }
        if !r.0.is_empty() {
            return Err(RestoreError::Corrupt("bytes after the checksum"));
        }
        let mut r = Reader(payload);
        let written = r.i64()?;
        let age_ms = now.saturating_sub(written);
        if !(0..=MAX_AGE_MS).contains(&age_ms) {
            return Err(RestoreError::Stale { age_ms });
        }
        let mut agg = Aggregator::new(set, now);
        for _ in 0..r.count(Seen::PERSISTED)? {
            agg.seen.insert(r.u64()?);
        }
        let mut log = Vec::new();
        let mut last_name = None;
        for _ in 0..r.count(super::definition::MAX_AGGREGATES)? {
            let name = r.string(MAX_TEXT)?;
            if last_name.as_ref().is_some_and(|last| *last >= name) {
                return Err(RestoreError::Corrupt("aggregates out of order"));
            }
            let hash = r.u64()?;
            let series = series(&mut r)?;
            match agg.set.aggregates.iter().position(|a| a.name == name) {
                Some(i) if agg.set.hashes[i] == hash => {
                    check(&series, &agg.set.aggregates[i], written).map_err(RestoreError::Corrupt)?;
                    agg.series[i] = series;
                }
                Some(_) => {
                    log.push(format!("Aggregates: {name:?} changed since the checkpoint: its windows discarded"))
                }
                None => {
                    log.push(format!("Aggregates: {name:?} is no longer defined: its checkpointed windows discarded"))
                }
            }
            last_name = Some(name);
        }
        let mut unsent = Vec::new();
        if version >= 3 {
            for _ in 0..r.count(MAX_UNSENT)? {
                let topic = String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| RestoreError::Corrupt("an unsent message's topic that is not UTF-8"))?;
                unsent.push(Unsent { topic, body: r.bytes()?.to_vec() });
            }
        }
        if !r.0.is_empty() {
            return Err(RestoreError::Corrupt("bytes after the last aggregate"));
        }
        Ok((agg, log, unsent))
    }
}

fn series(r: &mut Reader) -> Result<Series, RestoreError> {
    let (first_start, watermark, closed) = (r.i64()?, r.i64()?, r.i64()?);
    let seq = r.u64()?;
    let mut dropped = [0; Dropped::ALL.len()];
    for d in &mut dropped {
        *d = r.u64()?;
    }
    let mut groups: Vec<(Box<str>, Panes)> = Vec::new();
    for _ in 0..r.count(MAX_GROUPS)? {
        let key = r.string(MAX_GROUP_KEY)?.into_boxed_str();
        let mut panes: Vec<(i64, Summary)> = Vec::new();
        for _ in 0..r.count(super::definition::MAX_PANES)? {
            let j = r.i64()?;
            if panes.last().is_some_and(|(last, _)| *last >= j) {
                return Err(RestoreError::Corrupt("panes out of order"));
            }
            panes.push((j, summary(r)?));
        }
        if groups.last().is_some_and(|(last, _)| *last >= key) {
            return Err(RestoreError::Corrupt("groups out of order"));
        }
        groups.push((key, panes));
    }
    Ok(Series {
        first_start,
        watermark,
        closed,
        seq,
        groups,
        dropped,
        hot: Hot::default(),
        deadline: Default::default(),
        quiet: Default::default(),
    })
}

/// Why `s` is not a state of `a` that folding and closing readings could have made by `written`,
/// if it is not: what a later fold, close, merge or checkpoint relies on (see the module docs).
fn check(s: &Series, a: &Aggregate, written: i64) -> Result<(), &'static str> {
    let hop = a.hop_ms;
    let late = a.time.as_ref().map_or(0, |t| t.late_ms);
    // The latest time a reading can have: at most EARLY_MS ahead of the clock.
    let newest = written.saturating_add(EARLY_MS);
    let unclosed = s.first_start.saturating_add(a.window_ms - hop);
    if s.first_start % hop != 0 || s.first_start >= written.saturating_add(hop) {
        return Err("a first window start off the hop or after the checkpoint");
    }
    if s.watermark > newest {
        return Err("a watermark ahead of the checkpoint's time");
    }
    if s.closed % hop != 0 || s.closed < unclosed || (s.closed > unclosed && s.closed >= s.watermark) {
        return Err("a closed window end off the hop, before the first window or not behind the watermark");
    }
    if s.seq > MAX_COUNT || s.dropped.iter().any(|&d| d > MAX_COUNT) {
        return Err("a count beyond its limit");
    }
    if a.group_by.is_none() && s.groups.iter().any(|(k, _)| !k.is_empty()) {
        return Err("a group key for an aggregate without groupBy");
    }
    for (key, panes) in &s.groups {
        if a.group_by.is_some() && !is_group_key(key) {
            return Err("a group key that no reading makes");
        }
        if panes.is_empty() {
            return Err("a group with no pane");
        }
        for (j, p) in panes {
            let Some((lo, hi)) = j.checked_mul(hop).and_then(|lo| Some((lo, lo.checked_add(hop)?))) else {
                return Err("a pane index out of range");
            };
            if lo < s.first_start || lo.saturating_add(a.window_ms) <= s.closed {
                return Err("a pane before the first window, or in none still open");
            }
            p.check()?;
            if p.sketch.is_some() != a.percentiles() {
                return Err("a sketch where none belongs, or none where one does");
            }
            if p.first.time <= lo || p.last.time > hi.min(newest) || s.watermark < p.last.time.saturating_sub(late) {
                return Err("a reading's time outside its pane, or ahead of the watermark by more than lateSeconds");
            }
            if p.first.seq == 0 || p.last.seq > s.seq {
                return Err("a reading's arrival out of the aggregate's sequence");
            }
        }
        // No overflow: each pane's count is at most MAX_COUNT, and a group has at most MAX_PANES.
        if panes.iter().map(|(_, p)| p.count).sum::<u64>() > MAX_COUNT {
            return Err("a group with more readings than a count holds");
        }
    }
    Ok(())
}

fn put_summary(p: &mut Vec<u8>, s: &Summary) {
    put_u64(p, s.count);
    for x in [s.sum, s.compensation, s.mean, s.m2, s.min, s.max] {
        put_u64(p, x.to_bits());
    }
    for st in [s.first, s.last] {
        put_i64(p, st.time);
        put_u64(p, st.seq);
        put_u64(p, st.value.to_bits());
    }
    match &s.sketch {
        None => p.push(0),
        Some(k) => {
            p.push(1);
            put_u64(p, k.zeros);
            for b in [&k.positive, &k.negative] {
                put_i64(p, i64::from(b.offset));
                put_u32(p, b.counts.len());
                b.counts.iter().for_each(|&c| put_u32(p, c as usize));
            }
        }
    }
}

fn summary(r: &mut Reader) -> Result<Summary, RestoreError> {
    let count = r.u64()?;
    let mut f = [0.0; 6];
    for x in &mut f {
        *x = f64::from_bits(r.u64()?);
    }
    let mut stamped = || -> Result<Stamped, RestoreError> {
        Ok(Stamped { time: r.i64()?, seq: r.u64()?, value: f64::from_bits(r.u64()?) })
    };
    let (first, last) = (stamped()?, stamped()?);
    let sketch = match r.u8()? {
        0 => None,
        1 => {
            let zeros = r.u64()?;
            let mut bins = || -> Result<Bins, RestoreError> {
                let offset = i32::try_from(r.i64()?).map_err(|_| RestoreError::Corrupt("a bin offset"))?;
                let counts = (0..r.count(MAX_BINS)?).map(|_| r.u32()).collect::<Result<_, _>>()?;
                Ok(Bins { offset, counts })
            };
            let (positive, negative) = (bins()?, bins()?);
            Some(Box::new(Sketch { positive, negative, zeros }))
        }
        _ => return Err(RestoreError::Corrupt("a sketch flag")),
    };
    let [sum, compensation, mean, m2, min, max] = f;
    Ok(Summary { count, sum, compensation, mean, m2, min, max, first, last, sketch })
}

fn put_u32(p: &mut Vec<u8>, x: usize) {
    p.extend_from_slice(&(x as u32).to_le_bytes());
}
fn put_u64(p: &mut Vec<u8>, x: u64) {
    p.extend_from_slice(&x.to_le_bytes());
}
fn put_i64(p: &mut Vec<u8>, x: i64) {
    p.extend_from_slice(&x.to_le_bytes());
}
fn put_str(p: &mut Vec<u8>, s: &str) {
    put_u32(p, s.len());
    p.extend_from_slice(s.as_bytes());
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    put_u32(p, b.len());
    p.extend_from_slice(b);
}

/// Bounds-checked reads from the front of a byte string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RestoreError> {
        if self.0.len() < n {
            return Err(RestoreError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RestoreError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RestoreError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| RestoreError::Truncated)?))
    }
    fn u64(&mut self) -> Result<u64, RestoreError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| RestoreError::Truncated)?))
    }
    fn i64(&mut self) -> Result<i64, RestoreError> {
        Ok(self.u64()? as i64)
    }
    /// A count of at most `max` items.
    fn count(&mut self, max: usize) -> Result<usize, RestoreError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(RestoreError::Corrupt("a count beyond its limit"));
        }
        Ok(n)
    }
    /// A topic or a body: at most a packet's size.
    fn bytes(&mut self) -> Result<&'a [u8], RestoreError> {
        let n = self.count(crate::limits::MAX_PACKET_SIZE)?;
        self.take(n)
    }
    /// An aggregate's name or a group key, at most `max` bytes.
    fn string(&mut self, max: usize) -> Result<String, RestoreError> {
        let n = self.count(max)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RestoreError::Corrupt("a name or key that is not UTF-8"))
    }
}
