//! One aggregate's open windows: folding a reading in, the watermark, and closing the windows it
//! has passed.
//!
//! A window is (start, end], aligned to the Unix epoch. State is kept per pane: a hop of the
//! window (the whole window when tumbling), so a reading is folded once, into one pane, however
//! many hopping windows it falls in; a window that closes is the merge of its panes.
//!
//! The watermark W never moves back. With event time it is the latest event time − lateSeconds
//! while readings come on time, and the module's clock − lateSeconds once none has come for
//! [`quiet_ms`] (lateSeconds, at least a second), so that a quiet stream still closes its windows;
//! with arrival time it is now. The clock takes over only when input stops, so the backlog edgeHub
//! delivers after a restart (readings older than the clock by the downtime, in order) still
//! counts. A reading at t < W is late: dropped, or with `"late": "adjust"` counted at W, in the
//! oldest window still open. A window closes when W > end, so every reading it can hold has come.

use super::definition::{Aggregate, EventTime, Late, EARLY_MS, MAX_GROUPS};
use super::summary::Summary;

/// Why a reading did not count in an aggregate. One name per reason in logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The body is not valid JSON.
    Malformed,
    /// No number at `path`.
    NoValue,
    /// No ISO-8601 UTC string or epoch seconds at `time.path`.
    NoTime,
    /// No string or number at `groupBy`.
    NoGroup,
    /// A new group beyond the 1,000 an aggregate keeps.
    TooManyGroups,
    /// Older than the watermark, with `"late": "drop"`.
    Late,
    /// In a window that started before the aggregate was defined (or last changed).
    BeforeStart,
    /// A message id seen recently: edgeHub's redelivery of a message already counted.
    Duplicate,
    /// An event time more than 5 minutes ahead of the module's clock (ASA's early-arrival rule):
    /// one wrong clock must not push the watermark past every other reading.
    Early,
}

impl Dropped {
    pub const ALL: [Dropped; 9] = [
        Dropped::Malformed,
        Dropped::NoValue,
        Dropped::NoTime,
        Dropped::NoGroup,
        Dropped::TooManyGroups,
        Dropped::Late,
        Dropped::BeforeStart,
        Dropped::Duplicate,
        Dropped::Early,
    ];

    pub fn name(self) -> &'static str {
        [
            "malformed",
            "no_value",
            "no_time",
            "no_group",
            "too_many_groups",
            "late",
            "before_start",
            "duplicate",
            "early",
        ][self as usize]
    }
}

/// A window that closed, for one group.
#[derive(Clone, Debug, PartialEq)]
pub struct Closed {
    pub start: i64,
    pub end: i64,
    /// The group key as JSON text; empty without `groupBy`.
    pub group: String,
    pub summary: Summary,
}

/// The state of one aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The earliest window start: windows starting before the definition took effect never open.
    pub first_start: i64,
    pub watermark: i64,
    /// Windows ending at or before this have closed.
    pub closed: i64,
    /// Arrival order, for `first` and `last`.
    pub seq: u64,
    /// Per group key (in key order), its panes by index (pane j covers (j·hop, (j+1)·hop]), in order.
    pub groups: Vec<(Box<str>, Panes)>,
    pub dropped: [u64; Dropped::ALL.len()],
    /// The group and pane the last reading went to.
    pub hot: Hot,
    /// [`Series::next_deadline`], kept until a pane is made or a window closes.
    pub deadline: Deadline,
    /// From when the clock moves an event-time watermark, input having stopped.
    pub quiet: Quiet,
}

/// From when the clock takes the watermark over, input having stopped ([`quiet_ms`] after the
/// last reading on time); unset (i64::MIN) until the series is first asked with a `now`: after a
/// start, a live change or a restore, the wait begins then. Kept as that instant, not the
/// reading's, so that a fold, a close check and a deadline each ask one compare. Not state: not in
/// the checkpoint, equal whatever it holds.
#[derive(Clone, Debug)]
pub struct Quiet(std::cell::Cell<i64>);

impl Default for Quiet {
    fn default() -> Quiet {
        Quiet(std::cell::Cell::new(i64::MIN))
    }
}

impl Quiet {
    /// When the clock takes over; `now` + `quiet` when nothing has been asked since the start.
    #[inline]
    fn clock_from(&self, now: i64, quiet: i64) -> i64 {
        match self.0.get() {
            i64::MIN => {
                self.0.set(now + quiet);
                now + quiet
            }
            from => from,
        }
    }
}

impl PartialEq for Quiet {
    fn eq(&self, _: &Quiet) -> bool {
        true
    }
}

/// How long without a reading on time before the clock moves an event-time watermark: the
/// lateness the aggregate allows, and at least a second (with `lateSeconds` 0, a stream whose
/// readings are a few milliseconds old is not late reading by reading).
pub fn quiet_ms(t: &EventTime) -> i64 {
    t.late_ms.max(1000)
}

/// The next deadline as last computed (None inside: not computed since the panes changed). The
/// session asks for it every turn; it changes once per window. Not state: equal whatever it holds.
#[derive(Clone, Debug, Default)]
pub struct Deadline(std::cell::Cell<Option<Option<i64>>>);

impl PartialEq for Deadline {
    fn eq(&self, _: &Deadline) -> bool {
        true
    }
}

/// One group's panes.
pub type Panes = Vec<(i64, Summary)>;

/// Where the last reading went: the next one, in order, usually goes there too, and then needs no
/// division (a library call on armv7) and no search. Not state: equal whatever it holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hot {
    group: usize,
    /// The pane (j·hop, (j+1)·hop] as its bounds; empty when none.
    lo: i64,
    hi: i64,
    pane: i64,
}

impl PartialEq for Hot {
    fn eq(&self, _: &Hot) -> bool {
        true
    }
}

/// Byte order of two keys, as `str::cmp`, compared in line: group keys are short, and a call to
/// memcmp per probe was most of a grouped fold's cost on armv7.
#[inline]
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// Whether pane `j` (of `hop`, in windows of `hops` hops) is in a window ending after `end`.
#[inline]
fn open_after(j: i64, hop: i64, hops: i64, end: i64) -> bool {
    (j + hops) * hop > end
}

/// The windows at most one close emits empty (`emitEmpty`), newest kept: after a long stop, a
/// day of minute windows.
pub const MAX_EMPTY_WINDOWS: i64 = 1440;

impl Series {
    /// A series whose windows start at `since` or later.
    pub fn new(a: &Aggregate, since: i64) -> Series {
        let first_start =
            since.div_euclid(a.hop_ms) * a.hop_ms + if since.rem_euclid(a.hop_ms) == 0 { 0 } else { a.hop_ms };
        Series {
            first_start,
            watermark: i64::MIN,
            closed: first_start + a.window_ms - a.hop_ms,
            seq: 0,
            groups: Vec::new(),
            dropped: [0; Dropped::ALL.len()],
            hot: Hot::default(),
            deadline: Deadline::default(),
            quiet: Quiet::default(),
        }
    }

    pub fn drop(&mut self, why: Dropped) {
        self.dropped[why as usize] += 1;
    }

    /// The watermark at `now` (not yet raised by a reading).
    fn advance(&mut self, a: &Aggregate, now: i64) {
        self.watermark = self.watermark_at(a, now);
    }

    /// The watermark at `now`, as a checkpoint keeps it: raised by the clock too, which a
    /// restore's fresh wait for a quiet stream ([`Quiet`]) would not redo.
    pub fn watermark_at(&self, a: &Aggregate, now: i64) -> i64 {
        self.watermark.max(self.clock_watermark(a, now))
    }

    /// What the clock alone makes the watermark at `now`: now with arrival time; with event time,
    /// now − lateSeconds once no reading has come on time for [`quiet_ms`], else nothing.
    #[inline]
    fn clock_watermark(&self, a: &Aggregate, now: i64) -> i64 {
        match &a.time {
            None => now,
            Some(t) if now >= self.quiet.clock_from(now, quiet_ms(t)) => now - t.late_ms,
            Some(_) => i64::MIN,
        }
    }

    /// Folds one reading: `value` (NaN: none), its `time` (ignored with arrival time), its group
    /// key (ignored without `groupBy`).
    #[inline]
    pub fn fold(&mut self, a: &Aggregate, value: f64, time: Option<i64>, group: Option<&str>, now: i64) {
        self.advance(a, now);
        if value.is_nan() {
            return self.drop(Dropped::NoValue);
        }
        let mut t = match (&a.time, time) {
            (None, _) => now,
            (Some(_), Some(t)) if t - now > EARLY_MS => return self.drop(Dropped::Early),
            (Some(_), Some(t)) => t,
            (Some(_), None) => return self.drop(Dropped::NoTime),
        };
        if t < self.watermark {
            match a.time.as_ref().map(|t| t.late) {
                Some(Late::Adjust) => t = self.watermark,
                _ => return self.drop(Dropped::Late),
            }
        } else if let Some(e) = &a.time {
            self.quiet.0.set(now + quiet_ms(e));
        }
        let hot = self.hot;
        let hop = a.hop_ms;
        let pane = if hot.lo < t && t <= hot.hi {
            hot.pane
        } else if hot.hi < t && t <= hot.hi + hop && hot.lo < hot.hi {
            hot.pane + 1
        } else {
            let pane = (t - 1).div_euclid(a.hop_ms);
            if pane * a.hop_ms < self.first_start {
                return self.drop(Dropped::BeforeStart);
            }
            pane
        };
        let key = match (&a.group_by, group) {
            (None, _) => "",
            (Some(_), Some(g)) => g,
            (Some(_), None) => return self.drop(Dropped::NoGroup),
        };
        let g = match self.groups.get(hot.group) {
            // Without groupBy the one group's key is empty: no comparison (a call to bcmp).
            Some((k, _)) if k.len() == key.len() && key_order(k.as_bytes(), key.as_bytes()).is_eq() => hot.group,
            _ => match self.groups.binary_search_by(|(k, _)| key_order(k.as_bytes(), key.as_bytes())) {
                Ok(g) => g,
                Err(_) if self.groups.len() >= MAX_GROUPS && self.open_groups(a) >= MAX_GROUPS => {
                    return self.drop(Dropped::TooManyGroups)
                }
                Err(g) => {
                    self.groups.insert(g, (key.into(), Vec::new()));
                    g
                }
            },
        };
        let panes = &mut self.groups[g].1;
        let at = match panes.iter().rposition(|(j, _)| *j <= pane) {
            Some(i) if panes[i].0 == pane => i,
            found => {
                let i = found.map_or(0, |i| i + 1);
                panes.insert(i, (pane, Summary::new(a.percentiles())));
                self.deadline = Deadline::default();
                i
            }
        };
        self.hot = Hot { group: g, lo: pane * hop, hi: (pane + 1) * hop, pane };
        self.seq += 1;
        panes[at].1.fold(value, t, self.seq);
        if let Some(e) = &a.time {
            self.watermark = self.watermark.max(t - e.late_ms);
        }
    }

    /// Whether [`Series::close`] at `now` has a window to close (without moving the watermark).
    #[inline]
    pub fn due(&self, a: &Aggregate, now: i64) -> bool {
        self.watermark_at(a, now) > self.closed + a.hop_ms
    }

    /// Closes the windows the watermark at `now` has passed, oldest first, groups in key order.
    pub fn close(&mut self, a: &Aggregate, now: i64) -> Vec<Closed> {
        self.advance(a, now);
        let (hop, hops) = (a.hop_ms, a.hops());
        if self.watermark <= self.closed + hop {
            return Vec::new();
        }
        let last = self.passed(hop);
        if last <= self.closed {
            return Vec::new();
        }
        let mut ends = std::collections::BTreeSet::new();
        for (_, panes) in &self.groups {
            for &(j, _) in panes {
                let lo = ((j + 1) * hop).max(self.closed + hop);
                let hi = ((j + hops) * hop).min(last);
                ends.extend((lo..=hi).step_by(hop as usize));
            }
        }
        if a.emit_empty {
            let lo = (self.closed + hop).max(last - (MAX_EMPTY_WINDOWS - 1) * hop);
            ends.extend((lo..=last).step_by(hop as usize));
        }
        let mut out = Vec::new();
        for end in ends {
            let start = end - a.window_ms;
            let (lo, hi) = (start / hop, end / hop);
            let mut any = false;
            for (key, panes) in &self.groups {
                let mut s = Summary::new(a.percentiles());
                for (_, p) in panes.iter().filter(|(j, _)| (lo..hi).contains(j)) {
                    s.merge(p);
                }
                if s.count > 0 {
                    any = true;
                    out.push(Closed { start, end, group: key.to_string(), summary: s });
                }
            }
            if a.emit_empty && !any {
                out.push(Closed { start, end, group: String::new(), summary: Summary::new(false) });
            }
        }
        self.closed = last;
        for (_, panes) in &mut self.groups {
            panes.retain(|&(j, _)| open_after(j, hop, hops, last));
        }
        self.groups.retain(|(_, panes)| !panes.is_empty());
        self.hot = Hot::default();
        self.deadline = Deadline::default();
        out
    }

    /// When the clock alone next closes a window (`close` then has something to do), if ever:
    /// with event time, not before input has been quiet for [`quiet_ms`].
    pub fn next_deadline(&self, a: &Aggregate) -> Option<i64> {
        let at = match self.deadline.0.get() {
            Some(at) => at,
            None => {
                let at = self.compute_deadline(a);
                self.deadline.0.set(Some(at));
                at
            }
        };
        match self.quiet.0.get() {
            i64::MIN => at,
            from => at.map(|at| at.max(from)),
        }
    }

    fn compute_deadline(&self, a: &Aggregate) -> Option<i64> {
        let hop = a.hop_ms;
        let earliest = self.groups.iter().filter_map(|(_, p)| p.first()).map(|&(j, _)| (j + 1) * hop).min();
        let end = if a.emit_empty { Some(self.closed + hop) } else { earliest.map(|e| e.max(self.closed + hop)) }?;
        Some(end + a.time.as_ref().map_or(0, |t| t.late_ms) + 1)
    }

    /// The groups still open: with a window the watermark has not passed. A group whose windows
    /// it has passed is closed, though its windows are sent only at the next [`Series::close`]
    /// (the session folds, then closes), so it no longer counts against the cap. Asked only at
    /// the cap.
    fn open_groups(&self, a: &Aggregate) -> usize {
        let (hop, hops, passed) = (a.hop_ms, a.hops(), self.passed(a.hop_ms));
        self.groups.iter().filter(|(_, panes)| panes.iter().any(|&(j, _)| open_after(j, hop, hops, passed))).count()
    }

    /// The newest window end the watermark has passed (W > end), or the last closed if later:
    /// windows ending there or before are closed, whether or not [`Series::close`] has sent them.
    fn passed(&self, hop: i64) -> i64 {
        match self.watermark {
            i64::MIN => self.closed,
            w => self.closed.max((w - 1).div_euclid(hop) * hop),
        }
    }

    /// The windows holding readings.
    pub fn open_windows(&self, a: &Aggregate) -> usize {
        let hop = a.hop_ms;
        self.groups
            .iter()
            .map(|(_, panes)| {
                let mut ends: Vec<i64> = panes
                    .iter()
                    .flat_map(|&(j, _)| (1..=a.hops()).map(move |k| (j + k) * hop))
                    .filter(|&e| e > self.closed && e - a.window_ms >= self.first_start)
                    .collect();
                ends.sort_unstable();
                ends.dedup();
                ends.len()
            })
            .sum()
    }
}
