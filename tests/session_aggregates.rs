//! The session core's aggregates, driven by a simulated clock with no socket: a window folds the
//! inputs and closes at its deadline, its message is held until the hub confirms it and sent again
//! with DUP after a lost connection, windows that close while offline go on the next connection, a
//! twin change mid-window keeps the windows of what it did not change, a checkpoint is asked for
//! every `CheckpointSeconds` and at the stop and restores, and no input's acknowledgement ever
//! waits for an aggregate message.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefilter::aggregate::{AggregateSet, Aggregator};
use edgefilter::mqtt::LinkError;
use serde_json::{json, Value};

#[path = "common/sim.rs"]
mod sim;
use sim::{config, pubacks, Out, Sim};

/// A whole second of Unix time, in ms: windows of 1 s start on it.
const UNIX0: i64 = 1_790_000_000_000;
const SUMMARY_TOPIC: &str = "devices/dev/modules/filter/messages/events/%24.on=aggregates&MessageType=Aggregate";

/// One tumbling 1-s aggregate of `machine.temperature`, arrival time.
fn aggregates(functions: &str) -> Value {
    json!({"T1s": {
        "path": "machine.temperature",
        "window": {"kind": "tumbling", "seconds": 1},
        "functions": functions,
        "output": "aggregates",
        "properties": {"MessageType": "Aggregate"}
    }})
}

/// A session of `dev/filter`, its wall clock at [`UNIX0`], with a state file read at start.
fn session(restore: Option<Vec<u8>>) -> Sim {
    let mut sim = Sim::new(config(|_| {}));
    sim.s.set_wall_clock(sim.now, UNIX0);
    if let Some(bytes) = restore {
        sim.s.restore_state(bytes);
    }
    sim
}

/// Connected, the SUBSCRIBE and the twin request answered with `desired`.
fn up(desired: Value) -> Sim {
    let mut sim = session(None);
    sim.connect(desired);
    sim
}

impl Sim {
    /// What the core writes once its actions ran.
    fn flushed(&mut self) -> Vec<Out> {
        self.settle_all();
        self.written()
    }

    /// An input with machine temperature `t` and message id `mid`; returns its packet id.
    fn reading(&mut self, t: f64, mid: &str) -> u16 {
        let topic = format!("devices/dev/modules/filter/inputs/input1/%24.mid={mid}&%24.cdid=dev&%24.cmid=sensor");
        self.input_on(&topic, &format!(r#"{{"machine":{{"temperature":{t}}}}}"#))
    }

    /// The connection is lost after a healthy while (one lost within 10 s is backed off from).
    fn lose(&mut self) {
        self.run_for(Duration::from_secs(11));
        self.s.on_lost(self.now, &LinkError::Protocol("test".into()));
    }

    /// Moves the clock to `ms` after `start`, running every action at its time.
    fn at(&mut self, ms: u64, start: Instant) {
        let to = start + Duration::from_millis(ms);
        self.run_for(to.saturating_duration_since(self.now));
    }
}

/// The summaries written, as (packet id, DUP, body).
fn summaries(out: &[Out]) -> Vec<(u16, bool, Value)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Publish { topic, pkid, dup, body } if topic == SUMMARY_TOPIC => {
                Some((*pkid, *dup, serde_json::from_slice(body).unwrap()))
            }
            _ => None,
        })
        .collect()
}

fn desired(functions: &str, extra: Value) -> Value {
    let mut d = json!({"Aggregates": aggregates(functions)});
    d.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    d
}

#[test]
fn a_window_folds_its_inputs_and_closes_exactly_at_its_deadline() {
    let mut sim = up(desired("avg,min,max,count", json!({})));
    let start = sim.now;
    for (ms, t) in [(100, 20.0), (400, 22.0), (900, 30.0)] {
        sim.at(ms, start);
        sim.reading(t, &format!("m{ms}"));
    }
    let out = sim.flushed();
    assert_eq!(sim.stats.alerts.load(Relaxed), 1, "30 alerts beside being counted");
    assert!(summaries(&out).is_empty());
    // The window (UNIX0, UNIX0 + 1 s] closes when the clock passes its end: at + 1 s + 1 ms.
    assert_eq!(sim.s.deadline(), Some(start + Duration::from_millis(1001)));
    sim.at(1000, start);
    assert!(summaries(&sim.flushed()).is_empty(), "not before its end is passed");
    sim.at(1001, start);
    let s = summaries(&sim.flushed());
    assert_eq!(s.len(), 1);
    let body = &s[0].2;
    assert_eq!(body["aggregate"], "T1s");
    assert_eq!(body["windowStart"], "2026-09-21T14:13:20Z");
    assert_eq!(body["windowEnd"], "2026-09-21T14:13:21Z");
    assert_eq!((body["count"].as_u64(), body["min"].as_f64(), body["max"].as_f64()), (Some(3), Some(20.0), Some(30.0)));
    assert!((body["avg"].as_f64().unwrap() - 24.0).abs() < 1e-12);
    assert_eq!(sim.stats.aggregates_emitted.load(Relaxed), 1);
}

#[test]
fn a_summary_is_held_until_confirmed_and_sent_again_with_dup_after_a_lost_connection() {
    let mut sim = up(desired("count", json!({})));
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.at(1001, start);
    let first = summaries(&sim.flushed());
    assert_eq!(first.len(), 1);
    assert!(!first[0].1, "the first send is not DUP");
    assert_eq!(sim.s.emits_pending(), 1);
    sim.lose();
    let again = summaries(&sim.connect(desired("count", json!({}))));
    assert_eq!(again.len(), 1, "sent again on the next connection");
    assert_eq!((again[0].0, again[0].1), (first[0].0, true), "same packet id, DUP");
    assert_eq!(again[0].2, first[0].2);
    sim.puback(first[0].0);
    assert_eq!(sim.s.emits_pending(), 0);
    assert_eq!(sim.stats.aggregates_confirmed.load(Relaxed), 1);
    sim.lose();
    assert!(summaries(&sim.connect(desired("count", json!({})))).is_empty(), "confirmed: never again");
}

#[test]
fn windows_that_close_while_offline_are_sent_on_the_next_connection() {
    let mut sim = up(desired("count", json!({})));
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.flushed();
    sim.s.on_lost(sim.now, &LinkError::Protocol("test".into()));
    // Not reconnected: the hub is away while the window closes.
    let deadline = sim.s.deadline().unwrap();
    sim.now = start + Duration::from_millis(1001);
    assert!(deadline <= sim.now, "the window's deadline is due while offline");
    sim.s.on_timer(sim.now);
    assert_eq!(sim.s.emits_pending(), 1, "kept while offline");
    let s = summaries(&sim.connect(desired("count", json!({}))));
    assert_eq!(s.len(), 1);
    assert!(!s[0].1, "never written before: not DUP");
    assert_eq!(s[0].2["count"], 1);
}

#[test]
fn no_input_acknowledgement_waits_for_an_aggregate_message_nor_is_input_held_back_by_them() {
    let mut sim = up(desired("count", json!({})));
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.flushed();
    sim.at(1001, start);
    assert_eq!(summaries(&sim.flushed()).len(), 1);
    assert_eq!(sim.s.emits_pending(), 1);
    // An unconfirmed summary: a dropped input is acknowledged in the same turn...
    let dropped = sim.reading(20.0, "b");
    assert_eq!(pubacks(&sim.flushed()), vec![dropped]);
    // ...and an alert's input once its alert alone is confirmed.
    let hot = sim.reading(30.0, "c");
    let out = sim.flushed();
    let alert = out
        .iter()
        .find_map(|o| match o {
            Out::Publish { topic, pkid, .. } if topic.contains("MessageType=Alert") => Some(*pkid),
            _ => None,
        })
        .unwrap();
    assert!(pubacks(&out).is_empty());
    sim.puback(alert);
    assert_eq!(pubacks(&sim.flushed()), vec![hot]);
    assert_eq!(sim.s.emits_pending(), 1, "the summary still awaits its confirmation");
    assert_eq!(sim.s.alerts_pending(), 0);
}

#[test]
fn a_twin_change_mid_window_discards_only_the_changed_aggregates_window() {
    let two = json!({"Aggregates": {
        "Kept": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 1}, "functions": "count", "output": "aggregates", "properties": {"MessageType": "Aggregate"}},
        "Changed": {"path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 1}, "functions": "count", "output": "aggregates", "properties": {"MessageType": "Aggregate"}}
    }});
    let mut sim = up(two);
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.at(300, start);
    let patch = json!({"Aggregates": {"Changed": {"functions": "count,max"}}, "$version": 2}).to_string();
    sim.hub_publishes("$iothub/twin/PATCH/properties/desired/?$version=2", patch.as_bytes(), 0);
    sim.at(500, start);
    sim.reading(21.0, "b");
    sim.at(1001, start);
    let s = summaries(&sim.flushed());
    let kept: Vec<_> = s.iter().filter(|(_, _, b)| b["aggregate"] == "Kept").collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].2["count"], 2, "the unchanged aggregate keeps its window");
    // The changed one starts with the windows that start after the patch: its first is the next.
    assert!(s.iter().all(|(_, _, b)| b["aggregate"] != "Changed"), "{s:?}");
    sim.at(1500, start);
    sim.reading(25.0, "c");
    sim.at(2001, start);
    let s = summaries(&sim.flushed());
    let changed: Vec<_> = s.iter().filter(|(_, _, b)| b["aggregate"] == "Changed").collect();
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0].2["count"].as_u64(), changed[0].2["max"].as_f64()), (Some(1), Some(25.0)));
}

#[test]
fn a_checkpoint_is_asked_for_every_checkpoint_seconds_when_anything_changed_and_at_the_stop() {
    let mut sim = up(desired("count", json!({"CheckpointSeconds": 2})));
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.at(1999, start);
    let s = summaries(&sim.flushed());
    sim.puback(s[0].0);
    assert!(sim.saves.is_empty(), "not before CheckpointSeconds");
    sim.at(2000, start);
    assert_eq!(sim.saves.len(), 1, "at CheckpointSeconds");
    // Quiet: nothing changed, nothing written (flash wears out).
    sim.at(6100, start);
    assert_eq!(sim.saves.len(), 1, "{} saves", sim.saves.len());
    sim.at(6200, start);
    sim.reading(20.0, "b");
    sim.reading(20.0, "c");
    sim.at(6500, start);
    sim.s.on_stop(sim.now);
    sim.flushed();
    sim.settle_all();
    assert!(sim.exited);
    assert_eq!(sim.saves.len(), 2, "the stop saves");
    // The stop's checkpoint holds the open window's two readings, and their ids.
    let set = Arc::new(AggregateSet::parse(aggregates("count").as_object().unwrap()).unwrap());
    let (mut restored, _) = Aggregator::restore(set, sim.saves.last().unwrap(), UNIX0 + 6600).unwrap();
    restored.fold(br#"{"machine":{"temperature":1}}"#, Some(b"c"), UNIX0 + 6700).unwrap();
    let out = restored.close(UNIX0 + 7001);
    assert_eq!(out.len(), 1);
    assert!(out[0].body.contains(r#""count":2"#), "{}", out[0].body);
}

#[test]
fn after_a_restart_input_waits_for_the_twin_and_the_restored_window_counts_a_redelivery_once() {
    let mut sim = up(desired("count", json!({})));
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.at(200, start);
    sim.reading(20.0, "b");
    sim.s.on_stop(sim.now);
    sim.flushed();
    sim.settle_all();
    let saved = sim.saves.pop().expect("saved at the stop");

    // The restart, 300 ms after the stop, same window.
    let mut next = session(Some(saved));
    next.s.set_wall_clock(next.now, UNIX0 + 500);
    let start = next.now - Duration::from_millis(500);
    next.settle_all();
    let out = next.flushed();
    // The hub redelivers b before it answers the twin request: held back, not acknowledged.
    let b = next.reading(20.0, "b");
    assert!(pubacks(&next.flushed()).is_empty(), "held until the twin restores the windows");
    let rid = out
        .iter()
        .find_map(|o| match o {
            Out::Publish { topic, .. } if topic.starts_with("$iothub/twin/GET/") => {
                Some(topic.rsplit("$rid=").next().unwrap().to_string())
            }
            _ => None,
        })
        .unwrap();
    let body = json!({"desired": desired("count", json!({})), "reported": {}}).to_string();
    // At QoS 1 (the module subscribes so; edgeHub's own QoS for it is not known): its PUBACK
    // follows b's, in the order of the hub's publishes, though it took effect first.
    next.hub_publishes(&edgefilter::topic::twin_response(200, &rid), body.as_bytes(), 900);
    assert_eq!(
        pubacks(&next.flushed()),
        vec![b, 900],
        "the held input goes once the twin came, then the twin's PUBACK"
    );
    next.reading(20.0, "c");
    next.at(1001, start);
    let s = summaries(&next.flushed());
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].2["count"], 3, "a, b (once, though delivered twice) and c");
    assert_eq!(next.stats.restore_failures.load(Relaxed), 0);
}

#[test]
fn a_corrupt_state_file_is_counted_and_every_window_starts_afresh() {
    let mut sim = session(Some(b"EFAGGR\x01garbage".to_vec()));
    sim.connect(desired("count", json!({})));
    assert_eq!(sim.stats.restore_failures.load(Relaxed), 1);
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.at(1001, start);
    assert_eq!(summaries(&sim.flushed())[0].2["count"], 1);
}

#[test]
fn a_summary_the_hub_never_confirmed_before_a_stop_is_sent_again_after_the_restart() {
    let mut sim = up(desired("count", json!({})));
    let start = sim.now;
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.at(1001, start);
    let sent = summaries(&sim.flushed());
    assert_eq!(sent.len(), 1);
    // The hub never confirms it: the stop's drain gives up on it after 10 s.
    sim.s.on_stop(sim.now);
    sim.flushed();
    sim.run_for(Duration::from_secs(11));
    assert!(sim.exited, "the drain gave up");
    let saved = sim.saves.pop().expect("saved at the stop");

    let mut next = session(Some(saved));
    next.s.set_wall_clock(next.now, UNIX0 + 12_500);
    let again = summaries(&next.connect(desired("count", json!({}))));
    assert_eq!(again.len(), 1, "sent again once the twin restored the set");
    assert_eq!(again[0].2, sent[0].2, "the same window's message");
    next.puback(again[0].0);
    next.s.on_stop(next.now);
    next.flushed();
    next.settle_all();
    assert!(next.exited, "nothing left to drain");
    let set = Arc::new(AggregateSet::parse(aggregates("count").as_object().unwrap()).unwrap());
    let (_, _, unsent) = Aggregator::restore_with_unsent(set, next.saves.last().unwrap(), UNIX0 + 13_000).unwrap();
    assert!(unsent.is_empty(), "confirmed: not in the next checkpoint");
}

#[test]
fn readings_an_aggregate_did_not_count_reach_the_metrics_by_reason_at_the_checkpoint() {
    let mut sim = up(desired("count", json!({"CheckpointSeconds": 2})));
    let start = sim.now;
    let drops = |sim: &Sim| sim.stats.aggregate_drops.lock().unwrap().clone();
    sim.at(100, start);
    sim.reading(20.0, "a");
    sim.reading(21.0, "a"); // a redelivery: counted once
    let no_value = "devices/dev/modules/filter/inputs/input1/%24.mid=b";
    sim.input_on(no_value, r#"{"machine":{"pressure":1}}"#);
    sim.input_on("devices/dev/modules/filter/inputs/input1/%24.mid=c", "{not json");
    sim.flushed();
    let d = drops(&sim);
    assert_eq!(d.len(), 1, "the aggregate is in the metrics from its start");
    assert!(d[0].dropped.iter().all(|n| *n == 0), "published at the checkpoint, not per reading");
    sim.at(2000, start);
    let d = drops(&sim);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].aggregate, "T1s");
    let by_name: Vec<(&str, u64)> = edgefilter::aggregate::series::Dropped::ALL
        .iter()
        .map(|r| (r.name(), d[0].dropped[*r as usize]))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(by_name, [("malformed", 1), ("no_value", 1), ("duplicate", 1)]);
    // The twin removes the aggregate: its series leave the metrics.
    let patch = json!({"Aggregates": null, "$version": 3}).to_string();
    sim.hub_publishes("$iothub/twin/PATCH/properties/desired/?$version=3", patch.as_bytes(), 0);
    sim.flushed();
    assert!(drops(&sim).is_empty());
}
