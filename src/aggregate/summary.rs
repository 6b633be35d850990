//! What one window holds for one group, in fixed memory: no reading is kept.
//!
//! - `count`, `min`, `max`, `first`, `last` are the readings' own values.
//! - `sum` is compensated (Neumaier): a running sum and the rounding error it lost. It equals the
//!   exact sum whenever the partial sums are representable (integers, binary fractions), and is
//!   otherwise within a couple of ulps of it, where a plain f64 running sum can drift by n ulps.
//! - `avg` is that sum over the count. `stdev` is the sample standard deviation (n − 1, as ASA's
//!   `STDEV`) from Welford's running mean and sum of squared deviations, merged with Chan et al.'s
//!   formula when a hopping window joins its panes.
//! - Percentiles come from [`Sketch`], a DDSketch (Masson, Rim, Lee, PVLDB 12(12), 2019): a
//!   reading x > 0 is counted in bin ⌈log_γ x⌉ with γ = (1 + α)/(1 − α), α = 1 %; a bin's
//!   estimate 2γᵏ/(γ + 1) is within α of every value in it. Negative readings have bins of their own,
//!   zeros a count.
//!
//! `first` and `last` are the readings with the earliest and latest time, ties broken by arrival.
//!
//! [`Summary::check`] says whether a summary could be a pane folded from readings: what a restored
//! checkpoint must hold before a fold, a merge or a percentile relies on it.

/// The relative error of a percentile.
pub const ALPHA: f64 = 0.01;
/// The most bins per sign in a [`Sketch`]: readings of one sign within a factor γ^512 ≈ 29,000 of
/// the largest are kept apart; smaller magnitudes share the lowest bin.
pub const MAX_BINS: usize = 512;
/// The most readings a count in the state holds (a group's panes together, an aggregate's arrival
/// order, a drop reason): below 2⁵², where [`count_f64`] is exact and a percentile's rank
/// (count · percent) cannot overflow; at a million readings a second, 142 years.
pub const MAX_COUNT: u64 = (1 << 52) - 1;

/// A reading's place in arrival order and time, for `first` and `last`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stamped {
    pub time: i64,
    pub seq: u64,
    pub value: f64,
}

/// One window's (or pane's) state for one group.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub sum: f64,
    /// Neumaier's compensation: the exact sum is about `sum + compensation`.
    pub compensation: f64,
    pub mean: f64,
    /// Σ(x − mean)², Welford's M2.
    pub m2: f64,
    pub min: f64,
    pub max: f64,
    pub first: Stamped,
    pub last: Stamped,
    /// Only when a percentile is asked for.
    pub sketch: Option<Box<Sketch>>,
}

impl Summary {
    pub fn new(percentiles: bool) -> Summary {
        let none = Stamped { time: i64::MAX, seq: u64::MAX, value: f64::NAN };
        Summary {
            count: 0,
            sum: 0.0,
            compensation: 0.0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: none,
            last: Stamped { time: i64::MIN, seq: 0, ..none },
            sketch: percentiles.then(Box::default),
        }
    }

    #[inline]
    pub fn fold(&mut self, x: f64, time: i64, seq: u64) {
        self.count += 1;
        let t = self.sum + x;
        self.compensation += if self.sum.abs() >= x.abs() { (self.sum - t) + x } else { (x - t) + self.sum };
        self.sum = t;
        let delta = x - self.mean;
        self.mean += delta / count_f64(self.count);
        self.m2 += delta * (x - self.mean);
        // Not f64::min: on armv7 (no vminnm) that is a call to fmin.
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
        let at = Stamped { time, seq, value: x };
        if (time, seq) < (self.first.time, self.first.seq) {
            self.first = at;
        }
        if (time, seq) > (self.last.time, self.last.seq) {
            self.last = at;
        }
        if let Some(s) = &mut self.sketch {
            s.add(x, 1);
        }
    }

    /// Adds another pane's state (Chan, Golub, LeVeque's pairwise update for the moments).
    pub fn merge(&mut self, o: &Summary) {
        if o.count == 0 {
            return;
        }
        let (na, nb) = (self.count as f64, o.count as f64);
        let n = na + nb;
        let delta = o.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += o.m2 + delta * delta * na * nb / n;
        self.count += o.count;
        for x in [o.sum, o.compensation] {
            let t = self.sum + x;
            self.compensation += if self.sum.abs() >= x.abs() { (self.sum - t) + x } else { (x - t) + self.sum };
            self.sum = t;
        }
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if (o.first.time, o.first.seq) < (self.first.time, self.first.seq) {
            self.first = o.first;
        }
        if (o.last.time, o.last.seq) > (self.last.time, self.last.seq) {
            self.last = o.last;
        }
        if let (Some(a), Some(b)) = (&mut self.sketch, &o.sketch) {
            a.merge(b);
        }
    }

    /// Why this could not be a pane folded from finite readings, if it could not: at least one
    /// reading and at most [`MAX_COUNT`]; `first` and `last` in order, their values within
    /// `min..=max` (so no NaN there, and the percentiles' clamp holds); the sketch's bins
    /// consistent with them (`Sketch::check`). The moments are not checked: whatever float their arithmetic
    /// reaches (infinities, NaN after overflow) is harmless.
    pub fn check(&self) -> Result<(), &'static str> {
        let (first, last) = (self.first, self.last);
        if !(1..=MAX_COUNT).contains(&self.count) {
            return Err("a pane's count");
        }
        if ![first.value, last.value].iter().all(|v| (self.min..=self.max).contains(v)) {
            return Err("a pane's first or last outside its min and max");
        }
        if (first.time, first.seq) > (last.time, last.seq) || (self.count == 1 && first != last) {
            return Err("a pane's first after its last");
        }
        self.sketch.as_ref().map_or(Ok(()), |k| k.check(self))
    }

    /// A function's value: None for an empty window (and for `stdev` of one reading).
    pub fn value(&self, f: Function) -> Option<f64> {
        let n = self.count;
        if n == 0 && f != Function::Count {
            return None;
        }
        Some(match f {
            Function::Count => n as f64,
            Function::Sum => self.sum + self.compensation,
            Function::Avg => (self.sum + self.compensation) / n as f64,
            Function::Min => self.min,
            Function::Max => self.max,
            Function::Stdev if n < 2 => return None,
            Function::Stdev => (self.m2 / (n - 1) as f64).sqrt(),
            Function::First => self.first.value,
            Function::Last => self.last.value,
            Function::P50 | Function::P90 | Function::P95 | Function::P99 => {
                let percent = f.percent().unwrap_or(50);
                self.sketch.as_ref()?.quantile(percent, n)?.clamp(self.min, self.max)
            }
        })
    }
}

/// A count as f64, exactly, for any count below 2⁵² (4.5·10¹⁵, more than a 7-day window holds at
/// a billion readings a second): `n as f64` is a library call on armv7, this is two integer
/// instructions and a subtraction.
#[inline]
fn count_f64(n: u64) -> f64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    f64::from_bits(TWO_52.to_bits() | (n & ((1 << 52) - 1))) - TWO_52
}

/// An aggregate function, by its name in the twin and the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Stdev,
    First,
    Last,
    P50,
    P90,
    P95,
    P99,
}

impl Function {
    pub const ALL: [Function; 12] = [
        Function::Count,
        Function::Sum,
        Function::Avg,
        Function::Min,
        Function::Max,
        Function::Stdev,
        Function::First,
        Function::Last,
        Function::P50,
        Function::P90,
        Function::P95,
        Function::P99,
    ];

    pub fn name(self) -> &'static str {
        ["count", "sum", "avg", "min", "max", "stdev", "first", "last", "p50", "p90", "p95", "p99"][self as usize]
    }

    pub fn parse(s: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The percentile a percentile function asks for.
    pub fn percent(self) -> Option<u64> {
        match self {
            Function::P50 => Some(50),
            Function::P90 => Some(90),
            Function::P95 => Some(95),
            Function::P99 => Some(99),
            _ => None,
        }
    }
}

/// A DDSketch: bins of relative width 2α per sign, at most [`MAX_BINS`] each (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sketch {
    pub positive: Bins,
    pub negative: Bins,
    pub zeros: u64,
}

/// Contiguous bin counts from key `offset` on; when they would span more than [`MAX_BINS`] keys,
/// the lowest (smallest magnitudes) are folded into the lowest kept one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bins {
    pub offset: i32,
    pub counts: Vec<u32>,
}

fn gamma_ln() -> f64 {
    ((1.0 + ALPHA) / (1.0 - ALPHA)).ln()
}

impl Sketch {
    pub fn add(&mut self, x: f64, n: u32) {
        if x == 0.0 {
            self.zeros += u64::from(n);
            return;
        }
        let key = key(x.abs());
        if x > 0.0 {
            self.positive.add(key, n);
        } else {
            self.negative.add(key, n);
        }
    }

    pub fn merge(&mut self, o: &Sketch) {
        self.zeros += o.zeros;
        for (mine, theirs) in [(&mut self.positive, &o.positive), (&mut self.negative, &o.negative)] {
            for (i, &c) in theirs.counts.iter().enumerate() {
                if c > 0 {
                    mine.add(theirs.offset + i as i32, c);
                }
            }
        }
    }

    /// Why these could not be the bins of `s`'s readings, if they could not: the counts add up to
    /// `s.count` (less only when a bin saturated), zeros only when `s.min..=s.max` holds 0, and
    /// each sign's bins as [`Bins::hold`] says.
    fn check(&self, s: &Summary) -> Result<(), &'static str> {
        let sum = |b: &Bins| b.counts.iter().map(|&c| u64::from(c)).sum::<u64>();
        let saturated = self.positive.counts.iter().chain(&self.negative.counts).any(|&c| c == u32::MAX);
        let total = self.zeros.checked_add(sum(&self.positive) + sum(&self.negative));
        if !total.is_some_and(|t| t == s.count || (saturated && t < s.count)) {
            return Err("a sketch's counts do not add up to its pane's");
        }
        let (positive, negative) = ((s.max > 0.0).then_some(s.max), (s.min < 0.0).then_some(-s.min));
        let holds = self.positive.hold(positive, (s.min > 0.0).then_some(s.min))
            && self.negative.hold(negative, (s.max < 0.0).then_some(-s.max));
        if !holds || (self.zeros > 0 && !(s.min..=s.max).contains(&0.0)) {
            return Err("a sketch's bins do not fit its pane's min and max");
        }
        Ok(())
    }

    /// The estimate of the `percent`th percentile of `n` readings as ASA's `PERCENTILE_DISC` defines
    /// it: the smallest reading whose cumulative share is at least `percent`/100, the one of rank
    /// ⌈n·percent/100⌉ − 1 (0-based, ascending).
    pub fn quantile(&self, percent: u64, n: u64) -> Option<f64> {
        let rank = (n * percent).div_ceil(100).max(1) - 1;
        let g = gamma_ln().exp();
        let estimate = |key: i32| 2.0 * g.powi(key) / (g + 1.0);
        let mut seen = 0u64;
        for (i, &c) in self.negative.counts.iter().enumerate().rev() {
            seen += u64::from(c);
            if seen > rank {
                return Some(-estimate(self.negative.offset + i as i32));
            }
        }
        seen += self.zeros;
        if seen > rank {
            return Some(0.0);
        }
        for (i, &c) in self.positive.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen > rank {
                return Some(estimate(self.positive.offset + i as i32));
            }
        }
        None
    }
}

/// The bin of a magnitude m > 0: ⌈log_γ m⌉, from −37,220 for the least f64 to 35,488 for the
/// greatest.
#[inline]
fn key(m: f64) -> i32 {
    (m.ln() / gamma_ln()).ceil().clamp(-1e9, 1e9) as i32
}

impl Bins {
    /// Whether these could be the bins of readings of one sign whose greatest magnitude is
    /// `greatest` (None: no reading of this sign, the bins as new) and least `least`, when known:
    /// from `greatest`'s bin down to `least`'s, or [`MAX_BINS`] when lower ones were folded, and
    /// both end bins counted. So a later add or merge spans at most the bins of finite readings.
    fn hold(&self, greatest: Option<f64>, least: Option<f64>) -> bool {
        let Some(greatest) = greatest else { return self.counts.is_empty() && self.offset == 0 };
        let (Some(&low), Some(&high)) = (self.counts.first(), self.counts.last()) else { return false };
        let top = key(greatest);
        let lowest = least.map_or(key(f64::from_bits(1)), |m| key(m).max(top - (MAX_BINS as i32 - 1)));
        let bottom = i64::from(top) + 1 - self.counts.len() as i64;
        low > 0
            && high > 0
            && self.counts.len() <= MAX_BINS
            && i64::from(self.offset) == bottom
            && if least.is_some() { self.offset == lowest } else { self.offset >= lowest }
    }

    fn add(&mut self, key: i32, n: u32) {
        if self.counts.is_empty() {
            self.offset = key;
            self.counts.push(n);
            return;
        }
        let top = self.offset + self.counts.len() as i32 - 1;
        if key > top {
            self.counts.resize((key - self.offset + 1) as usize, 0);
        } else if key < self.offset {
            let grow = (self.offset - key) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = key;
        }
        let i = (key - self.offset) as usize;
        self.counts[i] = self.counts[i].saturating_add(n);
        if self.counts.len() > MAX_BINS {
            let cut = self.counts.len() - MAX_BINS;
            let folded: u32 = self.counts.drain(..cut).fold(0u32, u32::saturating_add);
            self.offset += cut as i32;
            self.counts[0] = self.counts[0].saturating_add(folded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_over_a_few_readings() {
        let mut s = Summary::new(true);
        for (i, x) in [3.0, 1.0, 2.0, 4.0].into_iter().enumerate() {
            s.fold(x, 100 - i as i64, i as u64);
        }
        let v = |f| s.value(f).unwrap();
        assert_eq!((v(Function::Count), v(Function::Sum), v(Function::Avg)), (4.0, 10.0, 2.5));
        assert_eq!((v(Function::Min), v(Function::Max)), (1.0, 4.0));
        assert_eq!((v(Function::First), v(Function::Last)), (4.0, 3.0), "by time: the last arrived is the earliest");
        assert!((v(Function::Stdev) - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert!((v(Function::P50) - 2.0).abs() <= 0.02);
        assert!((v(Function::P99) - 4.0).abs() <= 0.04, "rank ceil(0.99 * 4) - 1 = 3");
        assert!((v(Function::P90) - 4.0).abs() <= 0.04, "rank ceil(0.9 * 4) - 1 = 3");
        let empty = Summary::new(false);
        assert_eq!((empty.value(Function::Count), empty.value(Function::Avg)), (Some(0.0), None));
    }

    #[test]
    fn merged_panes_equal_one_window() {
        let xs: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 - 30.5).collect();
        let (mut whole, mut a, mut b) = (Summary::new(true), Summary::new(true), Summary::new(true));
        for (i, &x) in xs.iter().enumerate() {
            whole.fold(x, i as i64, i as u64);
            if i % 3 == 0 { &mut a } else { &mut b }.fold(x, i as i64, i as u64);
        }
        a.merge(&b);
        for f in Function::ALL {
            let (w, m) = (whole.value(f).unwrap(), a.value(f).unwrap());
            assert!((w - m).abs() <= 1e-12 * w.abs().max(1.0), "{f:?} {w} {m}");
        }
    }

    #[test]
    fn counts_convert_exactly() {
        for n in [0u64, 1, 6, u64::from(u32::MAX) + 1, (1 << 52) - 1] {
            assert_eq!(count_f64(n), n as f64);
        }
    }

    #[test]
    fn bins_stay_bounded() {
        let mut s = Sketch::default();
        for i in 0..100_000 {
            s.add(1e-9 * 1.001f64.powi(i), 1);
        }
        assert_eq!(s.positive.counts.len(), MAX_BINS);
        assert_eq!(s.positive.counts.iter().map(|&c| u64::from(c)).sum::<u64>(), 100_000);
        let top = 1e-9 * 1.001f64.powi(99_999);
        assert!((s.quantile(100, 100_000).unwrap() - top).abs() <= ALPHA * top);
    }

    #[test]
    fn folded_panes_pass_their_check_and_altered_ones_do_not() {
        let mut s = Summary::new(true);
        for (i, x) in [3.0, -1e-300, 0.0, f64::MAX, -5.0, 1e-320].into_iter().enumerate() {
            s.fold(x, 10 + i as i64, i as u64 + 1);
            assert_eq!(s.check(), Ok(()), "after {x}");
        }
        let mut wide = Summary::new(true);
        (0..2000).for_each(|i| wide.fold(1.01f64.powi(i), 1, i as u64 + 1));
        assert_eq!((wide.check(), wide.sketch.as_ref().unwrap().positive.counts.len()), (Ok(()), MAX_BINS));
        assert_eq!((key(f64::from_bits(1)), key(f64::MAX)), (-37_220, 35_488));
        let altered: [fn(&mut Summary); 9] = [
            |s| s.count = 0,
            |s| s.min = f64::NAN,
            |s| s.first.value = s.max * 2.0,
            |s| s.first.time = s.last.time + 1,
            |s| s.sketch.as_mut().unwrap().zeros += 1,
            |s| s.sketch.as_mut().unwrap().positive.offset -= 1,
            |s| s.sketch.as_mut().unwrap().negative.offset = i32::MIN,
            |s| s.sketch.as_mut().unwrap().positive.counts.push(0),
            |s| s.max *= 0.5,
        ];
        for (i, alter) in altered.iter().enumerate() {
            let mut bad = s.clone();
            alter(&mut bad);
            assert!(bad.check().is_err(), "alteration {i}");
        }
    }
}
