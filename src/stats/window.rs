//! Latency summaries over a sliding time window, the way edgeHub's summaries (prometheus-net's
//! defaults) are kept: quantiles over the last [`WINDOW`] in [`STEPS`] steps, `_sum` and `_count`
//! since the start.
//!
//! The data path records into one [`Recorder`] per series, behind the stats' lock. A drain swaps
//! the whole set of recorders for an empty one (a few hundred bytes moved under that lock) and
//! adds what it took to the [`Window`] outside it: to the newest step and to the window's total,
//! from which quantiles are read in one pass. A step that leaves the window is subtracted from the
//! total and reused. HdrHistograms with two significant digits: a quantile is within 1% of a value
//! that was recorded.

use std::time::{Duration, Instant};

use hdrhistogram::{Histogram, RecordError};

/// The span the quantiles cover.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Steps the window moves in: it holds between `WINDOW - STEP` and `WINDOW` of observations.
pub const STEPS: usize = 5;
pub const STEP: Duration = Duration::from_secs(WINDOW.as_secs() / STEPS as u64);
/// edgeHub's quantiles (its `MetricsDuration` and `MetricsTimer`).
pub const QUANTILES: [f64; 4] = [0.1, 0.5, 0.9, 0.99];

/// Observations of one series since the last drain, and their sum.
#[derive(Debug)]
pub struct Recorder {
    hist: Histogram<u32>,
    sum: u64,
}

impl Recorder {
    /// Values from 1 to `high` (higher ones are recorded as `high`).
    pub fn new(high: u64) -> Recorder {
        let hist = Histogram::new_with_bounds(1, high, 2).expect("valid histogram bounds");
        Recorder { hist, sum: 0 }
    }

    /// The highest value recorded as itself.
    pub fn high(&self) -> u64 {
        self.hist.high()
    }

    pub fn record(&mut self, value: u64) -> Result<(), RecordError> {
        self.record_n(value, 1)
    }

    /// Records `value` `n` times (the count saturates at 2³² − 1 per value between drains).
    pub fn record_n(&mut self, value: u64, n: u64) -> Result<(), RecordError> {
        let value = value.min(self.hist.high());
        self.sum = self.sum.saturating_add(value.saturating_mul(n));
        self.hist.record_n(value, n.min(u32::MAX as u64) as u32)
    }

    /// The highest value recorded since the last drain (0 if none).
    pub fn max(&self) -> u64 {
        self.hist.max()
    }

    /// Observations recorded since the last drain.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    fn clear(&mut self) {
        if !self.hist.is_empty() {
            self.hist.reset();
        }
        self.sum = 0;
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
    steps: Vec<Histogram<u32>>,
    total: Histogram<u32>,
    sum: u64,
    count: u64,
}

impl Series {
    fn new(like: &Recorder) -> Series {
        let empty = || Histogram::new_from(&like.hist);
        Series { steps: (0..STEPS).map(|_| empty()).collect(), total: empty(), sum: 0, count: 0 }
    }

    fn add(&mut self, head: usize, r: &Recorder) {
        if r.is_empty() {
            return;
        }
        // Same bounds throughout: adding cannot fail.
        let _ = self.steps[head].add(&r.hist);
        let _ = self.total.add(&r.hist);
        self.sum = self.sum.saturating_add(r.sum);
        self.count += r.len();
    }

    /// The step at `i` leaves the window.
    fn expire(&mut self, i: usize) {
        if self.steps[i].is_empty() {
            return;
        }
        if self.total.subtract(&self.steps[i]).is_err() {
            // Cannot happen (every step was added to the total); rebuild rather than drift.
            self.total.reset();
            for (j, s) in self.steps.iter().enumerate() {
                if j != i {
                    let _ = self.total.add(s);
                }
            }
        }
        self.steps[i].reset();
    }

    fn snapshot(&self) -> Snapshot {
        let quantiles = (!self.total.is_empty()).then(|| {
            let mut q = [0; QUANTILES.len()];
            for (v, at) in q.iter_mut().zip(self.total.value_at_quantiles(QUANTILES)) {
                *v = at;
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
        Window { series: like.iter().map(|r| Series::new(r)).collect(), head: 0, head_started: now }
    }

    /// Moves the steps on to `now`, then adds what `taken` recorded to the newest one and empties
    /// `taken`.
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

    /// Series `i` as a scrape reports it.
    pub fn snapshot(&self, i: usize) -> Snapshot {
        self.series[i].snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(now: Instant) -> (Recorder, Window) {
        let mut r = Recorder::new(1_000_000);
        let w = Window::new(&[&mut r], now);
        (r, w)
    }

    #[test]
    fn quantiles_cover_the_window_and_sum_and_count_the_start() {
        let t0 = Instant::now();
        let (mut r, mut w) = window(t0);
        assert_eq!(w.snapshot(0), Snapshot { quantiles: None, sum: 0, count: 0 });
        for v in 1..=100 {
            r.record(v * 1000).unwrap();
        }
        w.absorb(&mut [&mut r], t0);
        assert!(r.is_empty(), "a drain empties the recorder");
        let s = w.snapshot(0);
        assert_eq!((s.sum, s.count), (5_050_000, 100));
        let [p10, p50, p90, p99] = s.quantiles.unwrap();
        for (got, want) in [(p10, 10_000), (p50, 50_000), (p90, 90_000), (p99, 99_000)] {
            assert!(got.abs_diff(want) * 100 <= want, "{got} is not within 1% of {want}");
        }

        // Still in the window one step short of its end; gone at its end; sum and count stay.
        r.record(7).unwrap();
        w.absorb(&mut [&mut r], t0 + WINDOW - STEP);
        assert_eq!(w.snapshot(0).count, 101);
        assert!(w.snapshot(0).quantiles.unwrap()[0].abs_diff(10_000) <= 100, "the first step is still in");
        w.absorb(&mut [&mut r], t0 + WINDOW);
        let s = w.snapshot(0);
        assert_eq!(s.quantiles, Some([7; 4]), "only the later observation is left");
        assert_eq!((s.sum, s.count), (5_050_007, 101));
        w.absorb(&mut [&mut r], t0 + WINDOW * 3);
        assert_eq!(w.snapshot(0).quantiles, None, "an idle window is empty");
    }

    #[test]
    fn values_above_the_range_count_as_its_top() {
        let mut r = Recorder::new(1000);
        r.record_n(5_000, 2).unwrap();
        assert_eq!((r.len(), r.sum), (2, 2 * r.high()));
    }
}
