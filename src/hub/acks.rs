//! Late acknowledgements: the hub can confirm a module's publishes a set time after they arrive,
//! standing in for edgeHub, which persists each message before its PUBACK. Pure: a connection's
//! task owns one [`DelayedAcks`] and one timer set to [`DelayedAcks::next_due`], so a delay never
//! holds back the hub's other work, and the PUBACKs leave in the order the publishes came.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How late the hub acknowledges a module's publishes: a fixed time, or a time drawn evenly
/// from `min..=max` for each publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckDelay {
    pub min: Duration,
    pub max: Duration,
}

/// The longest delay accepted, a minute.
const LONGEST_MS: f64 = 60_000.0;

impl AckDelay {
    /// No delay: PUBACKs go out as the publishes are read.
    pub const NONE: AckDelay = AckDelay { min: Duration::ZERO, max: Duration::ZERO };

    /// `N` or `MIN-MAX`, in milliseconds, fractions allowed (`2`, `0.5-2`).
    pub fn parse(text: &str) -> Result<AckDelay, String> {
        let ms = |s: &str| -> Result<Duration, String> {
            match s.trim().parse::<f64>() {
                Ok(v) if (0.0..=LONGEST_MS).contains(&v) => Ok(Duration::from_secs_f64(v / 1000.0)),
                _ => Err(format!("{s:?} is not a number of milliseconds from 0 to 60000")),
            }
        };
        let (min, max) = match text.split_once('-') {
            Some((a, b)) => (ms(a)?, ms(b)?),
            None => (ms(text)?, ms(text)?),
        };
        if min > max {
            return Err(format!("{text:?}: the smallest delay comes first (MIN-MAX)"));
        }
        Ok(AckDelay { min, max })
    }

    pub fn is_none(&self) -> bool {
        self.max.is_zero()
    }
}

/// The PUBACKs a connection owes, each with the time it is due, in the order owed.
pub struct DelayedAcks {
    delay: AckDelay,
    due: VecDeque<(Instant, u16)>,
    /// xorshift64 state for the jitter: cheap, and a test needs no better.
    rng: u64,
}

impl DelayedAcks {
    pub fn new(delay: AckDelay, seed: u64) -> DelayedAcks {
        DelayedAcks { delay, due: VecDeque::new(), rng: seed | 1 }
    }

    pub fn is_delaying(&self) -> bool {
        !self.delay.is_none()
    }

    /// Owes the PUBACK of `pkid`, read at `now`. It is due a delay later, and never before the
    /// PUBACK owed before it, so the order holds whatever the jitter draws.
    pub fn push(&mut self, now: Instant, pkid: u16) {
        let at = (now + self.draw()).max(self.due.back().map_or(now, |(t, _)| *t));
        self.due.push_back((at, pkid));
    }

    /// When the next PUBACK is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(t, _)| *t)
    }

    /// The PUBACKs due by `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<u16> {
        let n = self.due.iter().take_while(|(t, _)| *t <= now).count();
        self.due.drain(..n).map(|(_, pkid)| pkid).collect()
    }

    fn draw(&mut self) -> Duration {
        let AckDelay { min, max } = self.delay;
        if max <= min {
            return min;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = (max - min).as_nanos() as u64;
        min + Duration::from_nanos(self.rng % (span + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_time_or_a_range_in_milliseconds() {
        let ms = Duration::from_micros;
        assert_eq!(AckDelay::parse("2"), Ok(AckDelay { min: ms(2000), max: ms(2000) }));
        assert_eq!(AckDelay::parse("0.5-2"), Ok(AckDelay { min: ms(500), max: ms(2000) }));
        assert_eq!(AckDelay::parse("0"), Ok(AckDelay::NONE));
        for bad in ["", "x", "-1", "2-1", "1-", "60001", "NaN", "inf"] {
            assert!(AckDelay::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn acknowledgements_fall_due_in_order_within_the_range() {
        let delay = AckDelay::parse("1-5").unwrap();
        let mut acks = DelayedAcks::new(delay, 42);
        let t0 = Instant::now();
        for pkid in 1..=200 {
            acks.push(t0 + Duration::from_micros(u64::from(pkid) * 10), pkid);
        }
        let dues: Vec<Instant> = acks.due.iter().map(|(t, _)| *t).collect();
        assert!(dues.windows(2).all(|w| w[0] <= w[1]), "never before the one owed earlier");
        assert!(dues[0] >= t0 + Duration::from_millis(1));
        assert!(*dues.last().unwrap() <= t0 + Duration::from_millis(2) + Duration::from_millis(5));
        let spread: std::collections::BTreeSet<_> =
            acks.due.iter().map(|(t, p)| *t - t0 - Duration::from_micros(u64::from(*p) * 10)).collect();
        assert!(spread.len() > 10, "the delays vary");

        assert_eq!(acks.take_due(t0), Vec::<u16>::new());
        let all = acks.take_due(t0 + Duration::from_secs(1));
        assert_eq!(all, (1..=200).collect::<Vec<u16>>());
        assert_eq!(acks.next_due(), None);
    }

    #[test]
    fn a_fixed_delay_is_exact() {
        let mut acks = DelayedAcks::new(AckDelay::parse("3").unwrap(), 1);
        let t0 = Instant::now();
        acks.push(t0, 7);
        assert_eq!(acks.next_due(), Some(t0 + Duration::from_millis(3)));
        assert!(acks.take_due(t0 + Duration::from_micros(2999)).is_empty());
        assert_eq!(acks.take_due(t0 + Duration::from_millis(3)), vec![7]);
    }
}
