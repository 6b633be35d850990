//! Latency summaries over a sliding time window, the way edgeHub's summaries (prometheus-net's
//! defaults) are kept: quantiles over the last [`WINDOW`] in [`STEPS`] steps, `_sum` and `_count`
//! since the start.
//!
//! The data path records into one [`Recorder`] per series, behind the stats' lock. A drain swaps
//! the whole set of recorders for an empty one (a few hundred bytes moved under that lock) and
//! adds what it took to the [`Window`] outside it: to the newest step and to the window's total,
//! from which quantiles are read in one pass. A step that leaves the window is subtracted from the
//! total and reused.
//!
//! Values are counted in log-linear buckets, as HdrHistogram does with two significant digits:
//! exact below 128, then 128 buckets per power of two, so a bucket is at most 1/128 of its values
//! wide and a quantile (its bucket's top) is at most 0.8% above the value of that rank. Written
//! here rather than with the hdrhistogram crate: adding, subtracting and reading a window are
//! three loops over a slice of counts, and the crate's general code was 20 KB of the armv7 binary
//! ([docs/metrics.md](../../../docs/metrics.md)).

use std::time::{Duration, Instant};

/// The span the quantiles cover.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Steps the window moves in: it holds between `WINDOW - STEP` and `WINDOW` of observations.
pub const STEPS: usize = 5;
pub const STEP: Duration = Duration::from_secs(WINDOW.as_secs() / STEPS as u64);
/// edgeHub's quantiles (its `MetricsDuration`).
pub const QUANTILES: [f64; 4] = [0.1, 0.5, 0.9, 0.99];

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;

/// The bucket of `v`.
fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    ((shift as usize + 1) << SUB_BITS) + ((v >> shift) as usize & (SUB - 1))
}

/// The highest value in bucket `i`.
fn bucket_top(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) - 1;
    ((((i & (SUB - 1)) | SUB) as u64 + 1) << shift) - 1
}

/// Observations of one series since the last drain: counts per bucket, and their sum.
#[derive(Debug)]
pub struct Recorder {
    counts: Vec<u32>,
    /// [`Recorder::high`], kept: every record clamps to it.
    high: u64,
    len: u64,
    sum: u64,
    max: u64,
}

impl Recorder {
    /// Values from 0 to about `high` (higher ones are recorded as the top).
    pub fn new(high: u64) -> Recorder {
        let counts = vec![0; bucket(high) + 1];
        Recorder { high: bucket_top(counts.len() - 1), counts, len: 0, sum: 0, max: 0 }
    }

    /// The highest value recorded as itself.
    pub fn high(&self) -> u64 {
        self.high
    }

    /// Records `value`; false if it was above the range (and recorded as its top).
    pub fn record(&mut self, value: u64) -> bool {
        self.record_n(value, 1)
    }

    /// Records `value` `n` times (a bucket's count saturates at 2³² − 1 between drains).
    pub fn record_n(&mut self, value: u64, n: u64) -> bool {
        let v = value.min(self.high());
        let c = &mut self.counts[bucket(v)];
        *c = c.saturating_add(n.min(u32::MAX as u64) as u32);
        self.len += n;
        self.sum = self.sum.saturating_add(v.saturating_mul(n));
        self.max = self.max.max(v);
        v == value
    }

    /// The highest value recorded since the last drain (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Observations recorded since the last drain.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The counts up to the highest bucket recorded into: the rest are zero (a latency's
    /// recorder has thousands of buckets, and a drain walks only these).
    fn used(&self) -> &[u32] {
        if self.len == 0 {
            return &[];
        }
        &self.counts[..=bucket(self.max)]
    }

    fn clear(&mut self) {
        let used = self.used().len();
        self.counts[..used].fill(0);
        (self.len, self.sum, self.max) = (0, 0, 0);
    }
}

/// One series as a scrape reports it, in the recorder's unit: quantiles over the window (`None`
/// when it holds no observation), sum and count since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub quantiles: Option<[u64; QUANTILES.len()]>,
    pub sum: u64,
    pub count: u64,
}

#[derive(Debug)]
struct Series {
    /// Counts per bucket of each step, and their total. Wrapping arithmetic: a subtraction
    /// undoes its addition exactly.
    steps: Vec<Vec<u32>>,
    total: Vec<u32>,
    /// Observations in each step.
    step_len: [u64; STEPS],
    sum: u64,
    count: u64,
}

impl Series {
    fn new(buckets: usize) -> Series {
        Series { steps: vec![vec![0; buckets]; STEPS], total: vec![0; buckets], step_len: [0; STEPS], sum: 0, count: 0 }
    }

    #[inline(never)] // one copy, not one per series
    fn add(&mut self, head: usize, r: &Recorder) {
        if r.is_empty() {
            return;
        }
        for ((s, t), c) in self.steps[head].iter_mut().zip(&mut self.total).zip(r.used()) {
            *s = s.wrapping_add(*c);
            *t = t.wrapping_add(*c);
        }
        self.step_len[head] += r.len;
        self.sum = self.sum.saturating_add(r.sum);
        self.count += r.len;
    }

    /// The step at `i` leaves the window.
    #[inline(never)] // one copy, not one per series
    fn expire(&mut self, i: usize) {
        if self.step_len[i] == 0 {
            return;
        }
        for (t, s) in self.total.iter_mut().zip(&mut self.steps[i]) {
            *t = t.wrapping_sub(*s);
            *s = 0;
        }
        self.step_len[i] = 0;
    }

    #[inline(never)] // one copy, not one per series
    fn snapshot(&self) -> Snapshot {
        let len: u64 = self.step_len.iter().sum();
        let quantiles = (len > 0).then(|| {
            let mut q = [0; QUANTILES.len()];
            // The value of rank ⌈q·len⌉, as its bucket's top; the ranks computed once, and the
            // buckets walked only up to the last rank's (they number in the thousands).
            // The walk compares with the next rank only: a bucket that reaches none costs an add
            // and a compare.
            let ranks = QUANTILES.map(|x| ((x * len as f64).ceil() as u64).max(1));
            let (mut seen, mut k, mut next) = (0u64, 0, ranks[0]);
            for (i, c) in self.total.iter().enumerate() {
                seen += u64::from(*c);
                if seen < next {
                    continue;
                }
                while k < q.len() && seen >= ranks[k] {
                    q[k] = bucket_top(i);
                    k += 1;
                }
                if k == q.len() {
                    break;
                }
                next = ranks[k];
            }
            q
        });
        Snapshot { quantiles, sum: self.sum, count: self.count }
    }
}

/// Every series' window; what the scrape side owns.
#[derive(Debug)]
pub struct Window {
    series: Vec<Series>,
    /// The newest step, and when it began.
    head: usize,
    head_started: Instant,
}

impl Window {
    /// A window for recorders like `like` (the same order as [`Window::absorb`] gets them).
    pub fn new(like: &[&mut Recorder], now: Instant) -> Window {
        Window { series: like.iter().map(|r| Series::new(r.counts.len())).collect(), head: 0, head_started: now }
    }

    /// Moves the steps on to `now`, then adds what `taken` recorded to the newest one and empties
    /// `taken`.
    #[inline(never)] // a loop over the series, not one copy per series
    pub fn absorb(&mut self, taken: &mut [&mut Recorder], now: Instant) {
        self.advance(now);
        for (series, r) in self.series.iter_mut().zip(taken.iter_mut()) {
            series.add(self.head, r);
            r.clear();
        }
    }

    fn advance(&mut self, now: Instant) {
        let passed = now.saturating_duration_since(self.head_started).as_nanos() / STEP.as_nanos();
        for _ in 0..passed.min(STEPS as u128) {
            self.head = (self.head + 1) % STEPS;
            for s in &mut self.series {
                s.expire(self.head);
            }
        }
        self.head_started += STEP * passed.min(u32::MAX as u128) as u32;
    }

    /// Every series as a scrape reports it, in order.
    #[inline(never)]
    pub fn snapshots(&self, out: &mut [Snapshot]) {
        for (o, s) in out.iter_mut().zip(&self.series) {
            *o = s.snapshot();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(w: &Window) -> Snapshot {
        let mut out = [Snapshot::default()];
        w.snapshots(&mut out);
        out[0]
    }

    fn window(now: Instant) -> (Recorder, Window) {
        let mut r = Recorder::new(1_000_000);
        let w = Window::new(&[&mut r], now);
        (r, w)
    }

    #[test]
    fn quantiles_cover_the_window_and_sum_and_count_the_start() {
        let t0 = Instant::now();
        let (mut r, mut w) = window(t0);
        assert_eq!(first(&w), Snapshot { quantiles: None, sum: 0, count: 0 });
        for v in 1..=100 {
            r.record(v * 1000);
        }
        w.absorb(&mut [&mut r], t0);
        assert!(r.is_empty(), "a drain empties the recorder");
        let s = first(&w);
        assert_eq!((s.sum, s.count), (5_050_000, 100));
        let [p10, p50, p90, p99] = s.quantiles.unwrap();
        for (got, want) in [(p10, 10_000), (p50, 50_000), (p90, 90_000), (p99, 99_000)] {
            assert!(got.abs_diff(want) * 100 <= want, "{got} is not within 1% of {want}");
        }

        // Still in the window one step short of its end; gone at its end; sum and count stay.
        r.record(7);
        w.absorb(&mut [&mut r], t0 + WINDOW - STEP);
        assert_eq!(first(&w).count, 101);
        assert!(first(&w).quantiles.unwrap()[0].abs_diff(10_000) <= 100, "the first step is still in");
        w.absorb(&mut [&mut r], t0 + WINDOW);
        let s = first(&w);
        assert_eq!(s.quantiles, Some([7; 4]), "only the later observation is left");
        assert_eq!((s.sum, s.count), (5_050_007, 101));
        w.absorb(&mut [&mut r], t0 + WINDOW * 3);
        assert_eq!(first(&w).quantiles, None, "an idle window is empty");
    }

    #[test]
    fn values_above_the_range_count_as_its_top() {
        let mut r = Recorder::new(1000);
        assert!(!r.record_n(5_000, 2));
        assert!(r.record(r.high()));
        assert_eq!((r.len(), r.sum, r.max()), (3, 3 * r.high(), r.high()));
        assert!(r.high() >= 1000);
    }

    #[test]
    fn buckets_are_contiguous_and_at_most_a_128th_of_their_values_wide() {
        let mut previous_top = None;
        for i in 0..bucket(1 << 40) {
            let top = bucket_top(i);
            let low = previous_top.map_or(0, |t| t + 1);
            assert_eq!((bucket(low), bucket(top)), (i, i), "bucket {i} holds {low}..={top}");
            assert!((top - low + 1) * 128 <= low.max(128), "bucket {i} is too wide");
            previous_top = Some(top);
        }
    }

    proptest::proptest! {
        #[test]
        fn a_quantile_is_its_ranks_value_or_at_most_0_8_percent_above(
            values in proptest::collection::vec(0u64..10_000_000, 1..500),
        ) {
            let t0 = Instant::now();
            let mut r = Recorder::new(10_000_000);
            let mut w = Window::new(&[&mut r], t0);
            for v in &values {
                r.record(*v);
            }
            w.absorb(&mut [&mut r], t0);
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let got = first(&w).quantiles.unwrap();
            for (q, got) in QUANTILES.iter().zip(got) {
                let rank = ((q * values.len() as f64).ceil() as usize).max(1);
                let exact = sorted[rank - 1];
                proptest::prop_assert!(exact <= got && got <= exact + exact / 128, "q {q}: {got} for {exact}");
            }
        }
    }
}
