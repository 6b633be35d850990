//! edgefilter-perf: replays telemetry at a module through any MQTT hub, playing edgeHub's side of
//! the conversation (inputs on `devices/{d}/modules/{m}/inputs/input1/{bag}`, alerts read from
//! `…/messages/events/…`), and reports rates, losses, duplicates and latency.
//!
//! Latency is measured from each message's *scheduled* send time, not from when it was actually
//! sent, so a stall in the module or the hub shows in the figures instead of silently slowing the
//! load down (coordinated omission). Every message carries a unique `sequenceNumber`; the
//! expected alerts are the messages whose body the module's own decision function alerts on.

pub mod aggregates;
pub mod check;
pub mod hub;
pub mod output;
pub mod reference;
pub mod trace;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use edgefilter::filter::{decide, decide_rules, Decision, Matched};
use edgefilter::rules::Rules;
use edgefilter::topic::{encode_bag, parse_bag, ModuleId};
pub use hub::{Hub, Publisher};
use trace::Message;

/// How fast to send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// The trace's own timing, times a speed factor.
    Trace(f64),
    /// A fixed rate, messages per second.
    Rate(f64),
    /// As fast as the hub takes them.
    Max,
    /// A closed loop: at most this many messages outstanding, a message being done once an alert
    /// for it or for a later one arrived (the hub delivers in order). Latency is counted from the
    /// actual send.
    Closed(u64),
}

/// How long a closed loop waits for an alert before it sends anyway (the outstanding messages
/// may all be ones that do not alert).
const CLOSED_STALL: Duration = Duration::from_millis(50);

/// What to replay where.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub hub: Hub,
    pub target: ModuleId,
    pub pace: Pace,
    /// The module's threshold, to know which messages must alert (without rules).
    pub threshold: f64,
    /// The module's alert rules (the twin's `Rules`), when it has any: which messages must be
    /// forwarded, to which outputs, by the module's own decision function.
    pub rules: Option<Rules>,
    /// How long to wait for the last alerts after the last message was sent.
    pub settle: Duration,
    /// The whole run may take at most this long.
    pub deadline: Duration,
    /// The module's process, for CPU time and peak RSS.
    pub pid: Option<u32>,
    /// Progress on standard error.
    pub progress: bool,
    /// The twin's `Aggregates` to set for the run (`--aggregates`).
    pub aggregates: Option<aggregates::Aggregates>,
}

/// What a replay found.
#[derive(Debug)]
pub struct Report {
    pub sent: u64,
    pub offered_rate: f64,
    pub achieved_rate: f64,
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    /// The first missing sequence numbers (at most 100), to find where they went.
    pub missing_sequences: Vec<u64>,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    /// End-to-end latency in µs, from the scheduled send time.
    pub latency_us: Histogram<u64>,
    /// Alerts received per second of the run.
    pub rate_over_time: Vec<u64>,
    /// Latency of the messages scheduled in each 10-second window (to see growth over a soak).
    pub latency_windows: Vec<Histogram<u64>>,
    /// The module's resident memory (KiB), sampled about once a second while sending.
    pub rss_over_time: Vec<u64>,
    pub module_cpu_seconds: Option<f64>,
    pub module_peak_rss_kb: Option<u64>,
    pub duration: Duration,
    /// The publisher's reconnections, and the publishes it sent again after them.
    pub publisher_reconnects: u64,
    pub publisher_resent: u64,
    /// With `--aggregates`: the windows that came back, compared with the reference.
    pub aggregates: Option<check::Check>,
}

/// Why a replay could not run.
#[derive(Debug)]
pub struct ReplayError(pub String);

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The replay's alert subscriber: a rumqttc client whose publishes arrive on `alerts`, with a
/// persistent session so that a broker that keeps sessions queues alerts for it while it
/// reconnects. [`Subscriber::close`] ends it for good.
struct Subscriber {
    client: AsyncClient,
    alerts: mpsc::UnboundedReceiver<rumqttc::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects and subscribes to `filters`; fails within `within` if the hub is unreachable.
    async fn connect(hub: &Hub, id: &str, filters: &[String], within: Duration) -> Result<Subscriber, ReplayError> {
        let mut options = hub.mqtt_options(id);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(300_000, 300_000)
            .set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let (tx, alerts) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let sub = client.clone();
        let filters = filters.to_vec();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut subacks = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        for f in &filters {
                            let _ = sub.subscribe(f.clone(), QoS::AtLeastOnce).await;
                        }
                        if filters.is_empty() {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Ok(()));
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        subacks += 1;
                        if subacks == filters.len() {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Ok(()));
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    // `close` asked for it: done, and never connect again.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(within, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Subscriber { client, alerts, task }),
            Ok(Ok(Err(e))) => Err(ReplayError(format!("cannot connect to the hub at {hub:?}: {e}"))),
            _ => {
                task.abort();
                Err(ReplayError(format!("the hub at {hub:?} did not answer within {} s", within.as_secs())))
            }
        }
    }

    /// Leaves no subscription behind in the persistent session (the hub would queue alerts for
    /// it forever), disconnects, and waits until the task has ended, so that it cannot connect
    /// and subscribe again.
    async fn close(mut self, filter: String) {
        let _ = self.client.unsubscribe(filter).await;
        let _ = self.client.disconnect().await;
        // If the hub never takes the DISCONNECT, dropping `self` stops the client anyway.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for Subscriber {
    /// A replay that fails part-way stops its subscriber too.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bag a trace message is delivered with: its properties, then `sequenceNumber`.
pub fn delivery_bag(m: &Message, sequence: u64) -> String {
    let seq = sequence.to_string();
    let pairs = m.properties.iter().filter(|(k, _)| k != "sequenceNumber").map(|(k, v)| (k.as_str(), v.as_str()));
    let mut bag = encode_bag(pairs);
    if !bag.is_empty() {
        bag.push('&');
    }
    bag.push_str(&encode_bag([("sequenceNumber", seq.as_str())]));
    bag
}

/// When message `i` is due, from the start of the run.
pub fn schedule(messages: &[Message], pace: Pace) -> Vec<Duration> {
    let first = messages.first().map_or(0.0, |m| m.t);
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| match pace {
            Pace::Trace(speed) => Duration::from_secs_f64(((m.t - first) / speed.max(1e-9)).max(0.0)),
            Pace::Rate(r) => Duration::from_secs_f64(i as f64 / r.max(1e-9)),
            Pace::Max | Pace::Closed(_) => Duration::ZERO,
        })
        .collect()
}

/// Replays `messages` and reports.
pub async fn replay(messages: &[Message], o: &ReplayOptions) -> Result<Report, ReplayError> {
    let tag = std::process::id();
    let events = format!("devices/{}/modules/{}/messages/events/#", o.target.device_id, o.target.module_id);
    let mut filters = vec![events.clone()];
    if o.aggregates.is_some() {
        filters.push(aggregates::REPORTED.into());
    }
    let mut subscriber =
        Subscriber::connect(&o.hub, &format!("perf-sub-{tag}"), &filters, Duration::from_secs(5)).await?;
    let alerts = &mut subscriber.alerts;
    let mut publisher = Publisher::connect(&o.hub, &format!("perf-pub-{tag}"), Duration::from_secs(5)).await?;
    let applied = match &o.aggregates {
        Some(a) => Some(a.apply(&mut publisher, alerts, Duration::from_secs(10)).await?),
        None => None,
    };
    let outputs = o.aggregates.as_ref().map_or(Vec::new(), |a| a.outputs.clone());
    let mut sent_ms = Vec::with_capacity(messages.len());
    let due = schedule(messages, o.pace);
    let closed = match o.pace {
        Pace::Closed(n) => Some(n.max(1)),
        _ => None,
    };
    let expected: Vec<Vec<String>> = messages.iter().map(|m| expected_outputs(m.body.as_bytes(), o)).collect();
    let expected_count = expected.iter().map(|e| e.len() as u64).sum();
    let cpu_before = o.pid.and_then(proc_cpu_seconds);

    let start = Instant::now();
    let hard_stop = start + o.deadline;
    let mut tally = Tally {
        start,
        due,
        expected: &expected,
        seen: HashMap::new(),
        received: 0,
        duplicated: 0,
        latency: Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
        per_second: Vec::new(),
        out_of_order: 0,
        unexpected: 0,
        highest: 0,
        last: start,
        windows: Vec::new(),
        outputs,
        summaries: Default::default(),
    };
    let mut rss_over_time = Vec::new();
    let mut sent = 0u64;
    let mut last_sample = Instant::now();
    let mut progress = output::Progress::new(messages.len() as u64, expected_count, o.progress);
    for (i, m) in messages.iter().enumerate() {
        let at = start + tally.due[i];
        if Instant::now() >= hard_stop {
            break;
        }
        if let Some(window) = closed {
            while i as u64 >= tally.highest + window {
                match tokio::time::timeout(CLOSED_STALL, alerts.recv()).await {
                    Ok(Some(p)) => tally.record(p, Instant::now()),
                    _ => break,
                }
            }
            tally.due[i] = start.elapsed();
        }
        // Collect alerts while waiting for the next send.
        loop {
            let now = Instant::now();
            if now >= at {
                break;
            }
            match tokio::time::timeout(at - now, alerts.recv()).await {
                Ok(Some(p)) => tally.record(p, Instant::now()),
                _ => break,
            }
        }
        while let Ok(p) = alerts.try_recv() {
            tally.record(p, Instant::now());
        }
        let topic = o.target.input_topic(edgefilter::filter::INPUT, &delivery_bag(m, i as u64 + 1));
        let body = Bytes::from(m.body.clone().into_bytes());
        sent_ms.push(unix_ms());
        publisher.publish(topic, body, hard_stop.into()).await?;
        sent += 1;
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            if let Some(rss) = o.pid.and_then(proc_rss_kb) {
                rss_over_time.push(rss);
            }
        }
        progress.update(sent, tally.received);
    }
    publisher.finish(hard_stop.into()).await?;
    let sent_at = Instant::now();
    let settle_until = (sent_at + o.settle).min(hard_stop);
    // The windows the module must have sent before the replay stops waiting.
    let until_ms = unix_ms() + settle_until.duration_since(Instant::now()).as_millis() as i64;
    let reference = o.aggregates.as_ref().zip(applied).map(|(a, applied)| {
        let run = reference::Run {
            sent_ms,
            patch_sent_ms: applied.patch_sent_ms,
            reported_ms: applied.reported_ms,
            tolerance_ms: a.tolerance.as_millis() as i64,
        };
        let reference = reference::Reference::new(&a.parsed, messages, &run);
        let required = check::Required::new(&reference, until_ms);
        (reference, required)
    });
    let windows_left = |t: &Tally| reference.as_ref().map_or(0, |(r, required)| required.left(r, &t.summaries));
    while tally.received < expected_count || windows_left(&tally) > 0 {
        let now = Instant::now();
        if now >= settle_until {
            break;
        }
        match tokio::time::timeout(settle_until - now, alerts.recv()).await {
            Ok(Some(p)) => tally.record(p, Instant::now()),
            _ => break,
        }
    }
    // A short look for late duplicates.
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), alerts.recv()).await {
        tally.record(p, Instant::now());
    }
    progress.finish(sent, tally.received);
    subscriber.close(events).await;
    let aggregates = reference.as_ref().map(|(r, _)| check::check(r, &tally.summaries, until_ms, unix_ms()));
    let received = tally.received;
    let missing_all: Vec<u64> = (1..=expected.len() as u64)
        .filter(|&s| expected[s as usize - 1].iter().any(|out| tally.copies(s, out) < tally.wanted(s, out)))
        .collect();
    let missing = expected_count - received;
    let duplicated = tally.duplicated;
    let span = tally.due.last().copied().unwrap_or_default().as_secs_f64();
    Ok(Report {
        sent,
        offered_rate: if span > 0.0 { messages.len() as f64 / span } else { f64::INFINITY },
        // Messages handled per second: until the last alert arrived, or the last message was sent.
        achieved_rate: sent as f64 / tally.last.max(sent_at).duration_since(start).as_secs_f64().max(1e-9),
        expected: expected_count,
        received,
        missing,
        missing_sequences: missing_all.into_iter().take(100).collect(),
        duplicated,
        out_of_order: tally.out_of_order,
        unexpected: tally.unexpected,
        latency_us: tally.latency,
        rate_over_time: tally.per_second,
        latency_windows: tally.windows,
        rss_over_time,
        module_cpu_seconds: match (cpu_before, o.pid.and_then(proc_cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        module_peak_rss_kb: o.pid.and_then(proc_peak_rss_kb),
        duration: start.elapsed(),
        publisher_reconnects: publisher.reconnects,
        publisher_resent: publisher.resent,
        aggregates,
    })
}

/// The outputs a message must be forwarded to, one entry per copy: `output1` when it alerts
/// without rules; under rules, one per matching rule, as the module decides.
pub fn expected_outputs(body: &[u8], o: &ReplayOptions) -> Vec<String> {
    match &o.rules {
        None if decide(body, o.threshold) == Decision::Alert => vec![edgefilter::filter::OUTPUT.to_string()],
        None => Vec::new(),
        Some(rules) => match decide_rules(body, rules) {
            Matched::Rules(mask) => rules
                .rules
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, r)| r.output.as_str().to_string())
                .collect(),
            Matched::Drop(_) => Vec::new(),
        },
    }
}

/// What arrived, by sequence number and output.
struct Tally<'a> {
    start: Instant,
    /// When each message was due (in a closed loop: when it was sent), from the start.
    due: Vec<Duration>,
    expected: &'a [Vec<String>],
    /// Copies received, by sequence number and output.
    seen: HashMap<(u64, String), u32>,
    /// Copies received that were expected (at most as many per output as expected).
    received: u64,
    duplicated: u64,
    latency: Histogram<u64>,
    per_second: Vec<u64>,
    out_of_order: u64,
    unexpected: u64,
    highest: u64,
    /// When the last new alert arrived.
    last: Instant,
    windows: Vec<Histogram<u64>>,
    /// The aggregates' outputs, and what came on them.
    outputs: Vec<String>,
    summaries: check::Summaries,
}

/// The window length of [`Report::latency_windows`].
pub const WINDOW: Duration = Duration::from_secs(10);

impl Tally<'_> {
    /// How many copies of message `seq` must go to `output`.
    fn wanted(&self, seq: u64, output: &str) -> u32 {
        self.expected[seq as usize - 1].iter().filter(|o| *o == output).count() as u32
    }

    /// How many copies of message `seq` to `output` arrived.
    fn copies(&self, seq: u64, output: &str) -> u32 {
        self.seen.get(&(seq, output.to_string())).copied().unwrap_or(0)
    }

    fn record(&mut self, p: rumqttc::Publish, now: Instant) {
        // The bag, read once: the sequence number and the output (`$.on`).
        let pairs =
            p.topic.rsplit_once("/messages/events/").and_then(|(_, bag)| parse_bag(bag).ok()).unwrap_or_default();
        let value = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        if p.topic.starts_with("$iothub/twin/") {
            return;
        }
        if let Some(on) = value("$.on").filter(|on| self.outputs.iter().any(|o| o == on)) {
            self.summaries.record(on, &p.payload);
            return;
        }
        let seq = value("sequenceNumber").and_then(|v| v.parse::<u64>().ok());
        let Some(seq) = seq.filter(|s| *s >= 1 && (*s as usize) <= self.expected.len()) else {
            self.unexpected += 1;
            return;
        };
        let output = value("$.on").unwrap_or_default().to_string();
        let wanted = self.wanted(seq, &output);
        let count = self.seen.entry((seq, output)).or_insert(0);
        *count += 1;
        if wanted == 0 {
            self.unexpected += 1;
            return;
        }
        if *count > wanted {
            self.duplicated += 1;
            return;
        }
        self.received += 1;
        self.last = now;
        let scheduled = self.start + self.due[seq as usize - 1];
        let micros = now.saturating_duration_since(scheduled).as_micros().max(1) as u64;
        let _ = self.latency.record(micros);
        let window = (self.due[seq as usize - 1].as_secs() / WINDOW.as_secs()) as usize;
        while self.windows.len() <= window {
            self.windows.push(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"));
        }
        let _ = self.windows[window].record(micros);
        let second = now.duration_since(self.start).as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
        if seq < self.highest {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(seq);
    }
}

impl Report {
    /// The report as JSON, for tools.
    pub fn to_json(&self) -> Value {
        let q = |p: f64| {
            if self.latency_us.is_empty() {
                0.0
            } else {
                self.latency_us.value_at_quantile(p) as f64 / 1000.0
            }
        };
        json!({
            "sent": self.sent,
            "offeredRate": if self.offered_rate.is_finite() { Value::from(self.offered_rate) } else { Value::Null },
            "achievedRate": self.achieved_rate,
            "alerts": {"expected": self.expected, "received": self.received, "missing": self.missing,
                       "duplicated": self.duplicated, "outOfOrder": self.out_of_order, "unexpected": self.unexpected,
                       "missingSequences": self.missing_sequences},
            "latencyMs": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99.9": q(0.999),
                          "max": self.latency_us.max() as f64 / 1000.0},
            "latencyPercentilesMs": output::percentiles(&self.latency_us),
            "alertsPerSecond": self.rate_over_time,
            "latencyByWindow": self.latency_windows.iter().enumerate().map(|(i, h)| json!({
                "fromSecond": i as u64 * WINDOW.as_secs(),
                "p50Ms": if h.is_empty() { 0.0 } else { h.value_at_quantile(0.5) as f64 / 1000.0 },
                "p99Ms": if h.is_empty() { 0.0 } else { h.value_at_quantile(0.99) as f64 / 1000.0 },
                "maxMs": h.max() as f64 / 1000.0,
            })).collect::<Vec<_>>(),
            "moduleRssKbOverTime": self.rss_over_time,
            "module": {"cpuSeconds": self.module_cpu_seconds, "peakRssKb": self.module_peak_rss_kb},
            "durationSeconds": self.duration.as_secs_f64(),
            "publisher": {"reconnects": self.publisher_reconnects, "resent": self.publisher_resent},
            "aggregates": self.aggregates.as_ref().map(|c| json!({
                "messages": c.messages, "matched": c.matched, "unchecked": c.unchecked,
                "mismatches": c.mismatches.iter().map(|m| json!({"aggregate": m.aggregate, "group": m.group,
                    "window": m.window, "field": m.field, "got": m.got, "want": m.want})).collect::<Vec<_>>(),
            })),
        })
    }

    /// A readable summary.
    pub fn summary(&self) -> String {
        let j = self.to_json();
        let l = &j["latencyMs"];
        let mut s = format!(
            "sent {} messages: offered {} msg/s, achieved {:.0} msg/s\n\
             alerts: expected {}, received {}, missing {}, duplicated {}, out of order {}, unexpected {}\n\
             latency from scheduled send (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.sent,
            if self.offered_rate.is_finite() { format!("{:.0}", self.offered_rate) } else { "unlimited".into() },
            self.achieved_rate,
            self.expected,
            self.received,
            self.missing,
            self.duplicated,
            self.out_of_order,
            self.unexpected,
            l["p50"].as_f64().unwrap_or(0.0),
            l["p90"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["p99.9"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0),
        );
        if self.publisher_reconnects > 0 {
            s.push_str(&format!(
                "\npublisher: {} reconnections, {} publishes sent again",
                self.publisher_reconnects, self.publisher_resent
            ));
        }
        if let Some(c) = &self.aggregates {
            s.push_str(&aggregates_summary(c));
        }
        if let (Some(cpu), Some(rss)) = (self.module_cpu_seconds, self.module_peak_rss_kb) {
            s.push_str(&format!("\nmodule: {cpu:.2} s CPU, peak RSS {:.1} MB", rss as f64 / 1024.0));
        }
        s
    }

    /// Whether nothing was lost.
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.unexpected == 0 && self.aggregates.as_ref().is_none_or(|c| c.mismatches.is_empty())
    }
}

/// The aggregates' lines of [`Report::summary`]: one when every window matched, else the first
/// mismatches.
fn aggregates_summary(c: &check::Check) -> String {
    const SHOWN: usize = 20;
    let open = if c.unchecked > 0 {
        format!(" ({} more may have been sent: still open at the end, or undecided within the tolerances)", c.unchecked)
    } else {
        String::new()
    };
    let mut s = format!("\naggregates: {} messages, {} windows match the reference{open}", c.messages, c.matched);
    if !c.mismatches.is_empty() {
        s.push_str(&format!(", {} mismatches:", c.mismatches.len()));
        for m in c.mismatches.iter().take(SHOWN) {
            s.push_str(&format!("\n  {m}"));
        }
        if c.mismatches.len() > SHOWN {
            s.push_str(&format!("\n  … and {} more (the whole list in --json)", c.mismatches.len() - SHOWN));
        }
    }
    s
}

/// The wall clock in Unix milliseconds, as the module's aggregates read it.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// utime + stime of a process, in seconds (Linux /proc).
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// VmRSS of a process, in KiB.
pub fn proc_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// VmHWM of a process, in KiB.
pub fn proc_peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
