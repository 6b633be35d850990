//! Windowed aggregates set in the module twin (`Aggregates`): fewer, richer messages upstream.
//!
//! The pure core: JSON bodies and the time (`now`, Unix milliseconds) go in; summaries to send,
//! the next time to be woken, log lines and checkpoint bytes come out. No clock is read and no
//! file is written here; the module's shell does that.
//!
//! - [`definition`]: the twin property, validated (`AggregateSet`).
//! - [`extract`]: a message's value, time and group key, read by the lazy scanner.
//! - [`series`]: one aggregate's windows, watermark and late readings.
//! - [`summary`]: what a window holds for a group, in fixed memory.
//! - [`checkpoint`]: the open windows as bytes, and back.
//!
//! [`Aggregator`] runs a whole set: one message is folded into every aggregate, windows the
//! watermark passed become [`Emitted`] messages, and a new set keeps the windows of aggregates it
//! did not change. See docs/aggregates.md for the semantics and figures.

pub mod checkpoint;
pub mod definition;
pub mod extract;
mod fnv;
pub mod series;
pub mod summary;
pub mod time;

use std::sync::Arc;

pub use definition::{Aggregate, AggregateSet};
pub use fnv::{fnv1a, fnv1a_on};
use series::{Closed, Dropped, Series};
use summary::Function;

use crate::names::OutputName;
use crate::scan::Malformed;

/// A message an aggregate sends when one of its windows closes.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    pub aggregate: String,
    pub output: OutputName,
    pub properties: Vec<(String, String)>,
    pub body: String,
    pub window_end: i64,
}

/// Whether a body's [`Aggregator::scan`] read it (its slots are in the aggregator's scratch
/// [`extract::Scan`]), or why it is not JSON.
pub type Scanned = Result<(), Malformed>;

/// The running state of an aggregate set.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregator {
    pub set: Arc<AggregateSet>,
    /// One per aggregate, in the set's order.
    pub series: Vec<Series>,
    pub seen: Seen,
    /// The last body's scan: scratch space, not state.
    scan: Box<extract::Scan>,
}

impl Aggregator {
    /// A set whose windows start from `now` on.
    pub fn new(set: Arc<AggregateSet>, now: i64) -> Aggregator {
        let series = set.aggregates.iter().map(|a| Series::new(a, now)).collect();
        Aggregator { set, series, seen: Seen::default(), scan: Box::default() }
    }

    /// Folds one message into every aggregate. `message_id` (the shell passes `$.mid`, or the
    /// sensor's `batchId` and `sequenceNumber`) makes a redelivery count once; see [`Seen`].
    pub fn fold(&mut self, body: &[u8], message_id: Option<&[u8]>, now: i64) -> Result<(), Malformed> {
        let scanned = self.scan(body);
        self.fold_scanned(body, scanned, message_id.map(fnv1a), now)
    }

    /// The one scan of `body` for every path of the set (and the tutorial's temperature, see
    /// [`extract::Extractor::temperature`]): each slot's number and string, kept for
    /// [`Aggregator::fold_scanned`], or why the body is not valid JSON.
    pub fn scan(&mut self, body: &[u8]) -> Scanned {
        self.set.extractor.scan(body, &mut self.scan)
    }

    /// What the filter needs from the last [`Aggregator::scan`], `scanned`: the number at
    /// `machine.temperature` (NaN: none), or why the body is not JSON; None when the scan did not
    /// read that path (a set of 16 other paths).
    pub fn temperature(&self, scanned: Scanned) -> Option<crate::filter::Temperature> {
        match scanned {
            Ok(()) => self.set.extractor.temperature(&self.scan).map(Ok),
            Err(m) => Some(Err(m)),
        }
    }

    /// [`Aggregator::fold`] with the body's [`Aggregator::scan`] just made, and its message id's
    /// [`fnv1a`] hash.
    pub fn fold_scanned(&mut self, body: &[u8], scanned: Scanned, id: Option<u64>, now: i64) -> Result<(), Malformed> {
        // Remembered whatever follows: a redelivered malformed message counts as a duplicate.
        if id.is_some_and(|id| !self.seen.first_time(id)) {
            self.series.iter_mut().for_each(|s| s.drop(Dropped::Duplicate));
            return Ok(());
        }
        if let Err(m) = scanned {
            self.series.iter_mut().for_each(|s| s.drop(Dropped::Malformed));
            return Err(m);
        }
        let mut group = String::new();
        for (i, (a, s)) in self.set.aggregates.iter().zip(&mut self.series).enumerate() {
            let r = self.set.extractor.reading(i, body, &self.scan, &mut group);
            s.fold(a, r.value, r.time, r.group, now);
        }
        Ok(())
    }

    /// The messages of every window the watermark at `now` has passed.
    pub fn close(&mut self, now: i64) -> Vec<Emitted> {
        let mut out = Vec::new();
        for (a, s) in self.set.aggregates.iter().zip(&mut self.series).filter(|(a, s)| s.due(a, now)) {
            out.extend(s.close(a, now).iter().filter_map(|c| emit(a, c)));
        }
        out
    }

    /// When [`Aggregator::close`] next has a window to close, if the clock alone gets there.
    pub fn next_deadline(&self) -> Option<i64> {
        self.set.aggregates.iter().zip(&self.series).filter_map(|(a, s)| s.next_deadline(a)).min()
    }

    /// Takes a new set at `now`: an aggregate whose definition is unchanged keeps its windows; a
    /// new or changed one starts with the windows that start from `now` on. Returns the log lines.
    pub fn apply(&mut self, set: Arc<AggregateSet>, now: i64) -> Vec<String> {
        let mut log = Vec::new();
        let mut series = Vec::new();
        for a in &set.aggregates {
            let old = self.set.aggregates.iter().position(|o| o.name == a.name);
            match old {
                Some(i) if self.set.aggregates[i] == *a => series.push(self.series[i].clone()),
                Some(i) => {
                    let open = self.series[i].open_windows(&self.set.aggregates[i]);
                    log.push(format!(
                        "Aggregates: {:?} changed: {open} open windows discarded; new windows from {}",
                        a.name,
                        time::format_iso(now)
                    ));
                    series.push(Series::new(a, now));
                }
                None => {
                    log.push(format!("Aggregates: {:?} added: windows from {}", a.name, time::format_iso(now)));
                    series.push(Series::new(a, now));
                }
            }
        }
        for (o, s) in self.set.aggregates.iter().zip(&self.series) {
            if !set.aggregates.iter().any(|a| a.name == o.name) {
                log.push(format!("Aggregates: {:?} removed: {} open windows discarded", o.name, s.open_windows(o)));
            }
        }
        *self = Aggregator { set, series, seen: std::mem::take(&mut self.seen), scan: std::mem::take(&mut self.scan) };
        log
    }

    /// Readings not counted, per aggregate name and reason (for metrics and logs).
    pub fn dropped(&self) -> impl Iterator<Item = (&str, Dropped, u64)> {
        self.set
            .aggregates
            .iter()
            .zip(&self.series)
            .flat_map(|(a, s)| Dropped::ALL.into_iter().map(move |d| (a.name.as_str(), d, s.dropped[d as usize])))
    }
}

/// The message for a closed window, unless `having` refuses it.
fn emit(a: &Aggregate, c: &Closed) -> Option<Emitted> {
    if let Some(h) = &a.having {
        if !c.summary.value(h.function).is_some_and(|x| h.op.holds(x, h.value)) {
            return None;
        }
    }
    let body = match &a.body {
        Some(b) => b.clone(),
        None => summary_body(a, c),
    };
    let (aggregate, output, properties) = (a.name.clone(), a.output, a.properties.clone());
    Some(Emitted { aggregate, output, properties, body, window_end: c.end })
}

/// `{"aggregate":..,"windowStart":..,"windowEnd":..,"group":..,"count":n,...}`: one key per
/// function, in the order the definition lists them; null for a value an empty window lacks.
pub fn summary_body(a: &Aggregate, c: &Closed) -> String {
    use std::fmt::Write;
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = format!(
        "{{\"aggregate\":{},\"windowStart\":{},\"windowEnd\":{}",
        text(&a.name),
        text(&time::format_iso(c.start)),
        text(&time::format_iso(c.end))
    );
    if a.group_by.is_some() {
        let _ = write!(out, ",\"group\":{}", c.group);
    }
    for &f in &a.functions {
        let v = match (f, c.summary.value(f)) {
            (Function::Count, _) => c.summary.count.to_string(),
            (_, Some(x)) => serde_json::Value::from(x).to_string(),
            (_, None) => "null".into(),
        };
        let _ = write!(out, ",\"{}\":{v}", f.name());
    }
    out.push('}');
    out
}

/// The message ids seen lately, to count edgeHub's redeliveries once: the hashes of the latest
/// [`Seen::CAPACITY`] / 2 to [`Seen::CAPACITY`] ids in two generations of sets (the older one
/// dropped whole when the newer is full: no removal per id, which a single set with eviction
/// paid in tombstones and rehashing), and the newest [`Seen::PERSISTED`] in arrival order, for
/// the checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub order: std::collections::VecDeque<u64>,
    newer: std::collections::HashSet<u64, IdHash>,
    older: std::collections::HashSet<u64, IdHash>,
}

impl Seen {
    /// More than the inputs a connection leaves unacknowledged (EDGEFILTER_MAX_UNCONFIRMED, 1,000
    /// by default): at least 1,024 ids, in about 38 KiB (two tables of 2,048 buckets).
    pub const CAPACITY: usize = 2048;
    /// The newest ids a checkpoint keeps: a restart counts a redelivery once when at most this many
    /// inputs were unacknowledged at the stop (one, under edgeHub's one-in-flight stream).
    pub const PERSISTED: usize = 256;

    pub fn contains(&self, id: u64) -> bool {
        self.newer.contains(&id) || self.older.contains(&id)
    }

    /// Remembers `id`.
    pub fn insert(&mut self, id: u64) {
        self.first_time(id);
    }

    /// Remembers `id`; false when it was remembered already. Two hash lookups for a new id: the
    /// older generation's, and the newer's insert.
    pub fn first_time(&mut self, id: u64) -> bool {
        if self.older.contains(&id) {
            return false;
        }
        if self.newer.len() >= Seen::CAPACITY / 2 {
            if self.newer.contains(&id) {
                return false;
            }
            std::mem::swap(&mut self.newer, &mut self.older);
            self.newer.clear(); // keeps its table: no allocation after the first two generations
        }
        if self.newer.capacity() == 0 {
            self.newer.reserve(Seen::CAPACITY / 2); // once, not grown step by step
        }
        if !self.newer.insert(id) {
            return false;
        }
        if self.order.len() >= Seen::PERSISTED {
            self.order.pop_front();
        }
        self.order.push_back(id);
        true
    }
}

/// The ids are hashes already: used as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(bytes);
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn an_id_is_remembered_for_at_least_half_the_capacity_and_at_most_all_of_it() {
        let mut seen = Seen::default();
        let cap = Seen::CAPACITY as u64;
        for id in 0..3 * cap {
            assert!(!seen.contains(id));
            seen.insert(id);
            seen.insert(id); // again: no change
            if id % 128 == 127 {
                // The newest ids are remembered, and nothing older than them.
                let remembered = (0..=id).rev().take_while(|&i| seen.contains(i)).count() as u64;
                assert!(remembered > cap / 2 || remembered == id + 1, "{remembered} at {id}");
                assert!(remembered <= cap, "{remembered} at {id}");
                assert!((0..id + 1 - remembered).all(|i| !seen.contains(i)), "only the newest, at {id}");
            }
        }
        let newest: Vec<u64> = seen.order.iter().copied().collect();
        let want: Vec<u64> = (3 * cap - Seen::PERSISTED as u64..3 * cap).collect();
        assert_eq!(newest, want, "the newest ids, oldest first, for the checkpoint");
    }
}
