//! Self-clocked coalescing: how long the module lets input gather before it reads again.
//!
//! A broker with a wide window (mosquitto's default of 20, say) sends a module one message per publish,
//! as the messages come. Reading each one as it arrives costs a wake-up, a read and a write per message (and, over TLS, a record each way),
//! which is most of the module's cost under a live stream. So, like NAPI's interrupt mitigation or
//! Nagle's algorithm, once input arrives faster than a few messages per pause, the module lets it
//! gather for a bounded time after each turn and then reads it all at once; under light load it
//! reads and sends every message at once.
//!
//! - **When**: only while the measured arrival rate would gather at least [`MIN_GATHERED`]
//!   messages within the budget. Below that (800 msg/s with the default budget) nothing waits.
//! - **How long**: long enough for `BatchSize` messages at the measured rate, at most the budget:
//!   half of `BatchIntervalMs` (the user's latency budget, the same one a batch is written
//!   within), and [`MAX_PAUSE`] at most.
//! - **The hub's window**: a hub sends only so many messages before it waits for their
//!   acknowledgements; pausing while that window is full would only hold back the input it waits
//!   for. edgeHub's window is one message (it sends the next only after the module's PUBACK). The
//!   most input acknowledgements the module has ever owed right after a read is a lower bound of
//!   that window; a read that owes exactly that many again means the hub stopped at its window,
//!   and there is no pause; nor is there on the first read that owes anything, before the window
//!   is known. Otherwise the pause grows back by half, towards the target.
//!
//! Pure state: the module tells it the time, what a turn read and what it owes, and it answers.

use std::time::{Duration, Instant};

use crate::settings::Settings;

/// Gathering starts when at least this many messages would arrive within the budget.
pub const MIN_GATHERED: f64 = 4.0;
/// The longest pause, whatever `BatchIntervalMs` allows.
pub const MAX_PAUSE: Duration = Duration::from_millis(5);
/// Shorter pauses are not worth a system call.
const MIN_PAUSE: Duration = Duration::from_micros(100);
/// Where a growing pause starts.
const FIRST_PAUSE: Duration = Duration::from_micros(250);

/// See the module docs.
#[derive(Debug, Default)]
pub struct Gather {
    /// Input messages per second, smoothed over turns.
    rate: f64,
    last_turn: Option<Instant>,
    pause: Duration,
    /// The most input acknowledgements owed right after a read.
    window: usize,
}

impl Gather {
    pub fn new() -> Gather {
        Gather::default()
    }

    /// A new connection: the hub's window and the stream start over.
    pub fn reset(&mut self) {
        *self = Gather::default();
    }

    /// The budget `settings` allow a pause: half of `BatchIntervalMs`, at most [`MAX_PAUSE`].
    pub fn budget(settings: &Settings) -> Duration {
        (settings.batch_interval() / 2).min(MAX_PAUSE)
    }

    /// The arrival rate measured so far, messages per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// After a turn that read `inputs` input messages, at `now`, leaving `owed` input
    /// acknowledgements owed to the hub: how long to leave the connection unread, if at all.
    pub fn turn(&mut self, now: Instant, inputs: usize, owed: usize, settings: &Settings) -> Option<Duration> {
        let last = self.last_turn.replace(now)?;
        let elapsed = now.saturating_duration_since(last).as_secs_f64().max(1e-6);
        let measured = inputs as f64 / elapsed;
        self.rate = if self.rate == 0.0 { measured } else { 0.7 * self.rate + 0.3 * measured };
        let budget = Gather::budget(settings);
        if budget.is_zero() || self.rate * budget.as_secs_f64() < MIN_GATHERED {
            self.pause = Duration::ZERO;
            return None;
        }
        let target = budget.min(Duration::from_secs_f64(f64::from(settings.batch_size) / self.rate));
        if owed > self.window {
            let first = self.window == 0;
            self.window = owed;
            if first {
                // Nothing known of the hub's window yet: it may be this one message.
                self.pause = Duration::ZERO;
                return None;
            }
            self.pause = self.grown(target);
        } else if owed == self.window && owed > 0 {
            // The hub has stopped at its window (one message, as edgeHub delivers): it sends
            // nothing more until it sees acknowledgements, so a pause would only hold back the
            // input it waits for.
            self.pause = Duration::ZERO;
            return None;
        } else {
            self.pause = self.grown(target);
        }
        (self.pause >= MIN_PAUSE).then_some(self.pause)
    }

    fn grown(&self, target: Duration) -> Duration {
        (self.pause * 3 / 2).max(FIRST_PAUSE).min(target)
    }
}
