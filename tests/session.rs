//! The session core driven by a simulated clock, with no socket: every protocol decision (when to
//! acknowledge, hold back, send again, renew, ping, report or stop) checked at the exact time it
//! is due. The hub's side is played here: it reads what the core writes, packet by packet, and
//! answers with packets of its own.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use edgefilter::filter::Reason;
use edgefilter::mqtt::{LinkError, Received};
use edgefilter::session::{Action, DEAD_AFTER, DRAIN_TIMEOUT, KEEP_ALIVE, TWIN_TIMEOUT};
use rumqttc::mqttbytes::v4::Packet;
use serde_json::{json, Value};

#[path = "common/sim.rs"]
mod sim;
use sim::{config, pubacks, Out, Sim};

fn hot(t: f64) -> String {
    format!(r#"{{"machine":{{"temperature":{t}}}}}"#)
}

fn alerts(out: &[Out]) -> Vec<(u16, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Publish { topic, pkid, dup, .. } if topic.contains("/messages/events/") => Some((*pkid, *dup)),
            _ => None,
        })
        .collect()
}

fn reported(out: &[Out]) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            Out::Publish { topic, body, .. } if topic.starts_with("$iothub/twin/PATCH/properties/reported/") => {
                serde_json::from_slice(body).ok()
            }
            _ => None,
        })
        .collect()
}

#[test]
fn confirmed_acknowledges_an_input_once_the_hub_confirms_its_alert() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let input = sim.input(&hot(30.0));
    let out = sim.written();
    let sent = alerts(&out);
    assert_eq!(sent.len(), 1);
    assert!(pubacks(&out).is_empty(), "not before the alert is confirmed");
    sim.puback(sent[0].0);
    assert_eq!(pubacks(&sim.written()), vec![input], "at once once it is");
}

#[test]
fn a_dropped_input_is_acknowledged_in_the_same_turn() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let input = sim.input(&hot(20.0));
    assert_eq!(pubacks(&sim.written()), vec![input]);
    assert_eq!(sim.stats.dropped(Reason::BelowThreshold), 1);
}

#[test]
fn pipelined_writes_the_inputs_acknowledgement_right_behind_its_alert() {
    let mut sim = Sim::up(config(|_| {}), json!({"AckMode": "pipelined"}));
    let input = sim.input(&hot(30.0));
    let out = sim.written();
    assert_eq!(alerts(&out).len(), 1);
    assert_eq!(pubacks(&out), vec![input], "one write: the alert, then its input's PUBACK");
    let alert_at = out.iter().position(|o| matches!(o, Out::Publish { topic, .. } if topic.contains("/events/")));
    let ack_at = out.iter().position(|o| matches!(o, Out::Other(Packet::PubAck(_))));
    assert!(alert_at < ack_at, "the alert goes first");
    assert_eq!(sim.s.alerts_pending(), 1, "kept until the hub confirms it");
}

#[test]
fn unconfirmed_alerts_are_sent_again_marked_dup_after_a_lost_connection_in_both_modes() {
    for mode in ["confirmed", "pipelined"] {
        let mut sim = Sim::up(config(|_| {}), json!({ "AckMode": mode }));
        sim.input(&hot(30.0));
        let first = alerts(&sim.written());
        sim.s.on_lost(sim.now, &LinkError::Closed);
        assert!(!sim.s.connected());
        sim.advance(Duration::from_secs(1));
        sim.settle();
        let again = alerts(&sim.written());
        assert_eq!(again, vec![(first[0].0, true)], "{mode}: the same packet id, DUP");
    }
}

#[test]
fn input_is_held_back_while_max_unconfirmed_alerts_await_confirmation_and_resumes() {
    let mut sim = Sim::up(config(|c| c.max_unconfirmed = 2), json!({}));
    let inputs: Vec<u16> = (0..4).map(|_| sim.input(&hot(30.0))).collect();
    let sent = alerts(&sim.written());
    assert_eq!(sent.len(), 2, "two alerts in flight at most");
    assert_eq!(sim.stats.overloaded.load(Relaxed), 2);
    sim.puback(sent[0].0);
    sim.puback(sent[1].0);
    let out = sim.written();
    assert_eq!(alerts(&out).len(), 2, "the held-back inputs go once the hub confirmed");
    assert_eq!(pubacks(&out), inputs[..2].to_vec());
}

/// A twin message is not input: a desired patch takes effect while input is held back, is not
/// counted as overloaded, and only its PUBACK waits behind the input held back before it
/// (edgeHub's protocol gateway expects PUBACKs in the order of its publishes).
#[test]
fn a_desired_patch_takes_effect_while_input_is_held_back_and_its_puback_keeps_its_place() {
    let mut sim = Sim::up(config(|c| c.max_unconfirmed = 2), json!({}));
    let inputs: Vec<u16> = (0..3).map(|_| sim.input(&hot(30.0))).collect();
    let sent = alerts(&sim.written());
    assert_eq!(sent.len(), 2, "two alerts in flight, the third input held back");
    let patch = json!({"TemperatureThreshold": 40, "$version": 2});
    sim.hub_publishes(&edgefilter::topic::twin_desired_patch(2), patch.to_string().as_bytes(), 900);
    let out = sim.written();
    assert_eq!(reported(&out).pop().unwrap()["TemperatureThreshold"], json!(40.0), "applied at once");
    assert!(pubacks(&out).is_empty(), "its PUBACK waits behind the held input's");
    assert_eq!(sim.stats.overloaded.load(Relaxed), 1, "the input only");
    sim.puback(sent[0].0);
    sim.puback(sent[1].0);
    let out = sim.written();
    assert!(alerts(&out).is_empty(), "the held input is decided under the new threshold: 30 is not over 40");
    assert_eq!(pubacks(&out), [&inputs[..], &[900]].concat());
}

/// Beyond the hold-back bound a twin message still takes effect; its PUBACK is left with the
/// input after which it came, for the hub to send it again after the reconnect.
#[test]
fn a_twin_message_past_the_hold_back_bound_takes_effect_and_is_left_with_the_input() {
    let mut sim = Sim::up(config(|c| c.max_unconfirmed = 1), json!({}));
    let inputs: Vec<u16> = (0..3).map(|_| sim.input(&hot(30.0))).collect();
    let sent = alerts(&sim.written());
    let patch = json!({"TemperatureThreshold": 40, "$version": 2});
    sim.hub_publishes(&edgefilter::topic::twin_desired_patch(2), patch.to_string().as_bytes(), 900);
    assert_eq!(reported(&sim.written()).pop().unwrap()["TemperatureThreshold"], json!(40.0));
    sim.puback(sent[0].0);
    assert_eq!(pubacks(&sim.written()), inputs[..2].to_vec(), "the third input and the patch were left");
    assert_eq!(sim.settle(), vec![Action::Close], "reconnects for the hub to send them again");
}

/// A stop takes no more input: one that arrives while it drains is left for the next start, and
/// so is every acknowledgement after it (a desired patch's), held back or not.
#[test]
fn while_a_stop_drains_nothing_is_acknowledged_ahead_of_an_input_left_for_the_next_start() {
    let patch = json!({"TemperatureThreshold": 40, "$version": 2}).to_string();
    // An input arrives during the drain.
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let first = sim.input(&hot(30.0));
    let sent = alerts(&sim.written());
    sim.s.on_stop(sim.now);
    sim.input(&hot(30.0));
    sim.hub_publishes(&edgefilter::topic::twin_desired_patch(2), patch.as_bytes(), 900);
    sim.puback(sent[0].0);
    assert_eq!(pubacks(&sim.written()), vec![first], "not the patch's: the input before it was left");
    // An input was held back when the stop came.
    let mut sim = Sim::up(config(|c| c.max_unconfirmed = 2), json!({}));
    let inputs: Vec<u16> = (0..3).map(|_| sim.input(&hot(30.0))).collect();
    let sent = alerts(&sim.written());
    sim.s.on_stop(sim.now);
    sim.hub_publishes(&edgefilter::topic::twin_desired_patch(2), patch.as_bytes(), 900);
    sim.puback(sent[0].0);
    sim.puback(sent[1].0);
    assert_eq!(pubacks(&sim.written()), inputs[..2].to_vec(), "the held input and the patch are left");
}

/// A QoS 0 input past the hold-back bound has no redelivery to wait for: it is dropped (counted
/// as overloaded), and the module does not reconnect for it.
#[test]
fn a_qos_0_input_past_the_hold_back_bound_is_dropped_without_a_reconnect() {
    let mut sim = Sim::up(config(|c| c.max_unconfirmed = 1), json!({}));
    let inputs: Vec<u16> = (0..2).map(|_| sim.input(&hot(30.0))).collect();
    let sent = alerts(&sim.written());
    sim.hub_publishes(sim::INPUT, hot(30.0).as_bytes(), 0);
    assert_eq!(sim.stats.overloaded.load(Relaxed), 2);
    sim.puback(sent[0].0);
    let out = sim.written();
    let next = alerts(&out);
    assert_eq!(next.len(), 1, "the held input's alert");
    sim.puback(next[0].0);
    assert_eq!([pubacks(&out), pubacks(&sim.written())].concat(), inputs);
    assert!(sim.settle().is_empty(), "no reconnect: nothing was left for the hub to send again");
}

#[test]
fn beyond_twice_max_unconfirmed_input_is_left_for_redelivery_and_the_module_reconnects() {
    let mut sim = Sim::up(config(|c| c.max_unconfirmed = 1), json!({}));
    for _ in 0..4 {
        sim.input(&hot(30.0));
    }
    let sent = alerts(&sim.written());
    assert_eq!(sent.len(), 1);
    sim.puback(sent[0].0);
    let next = alerts(&sim.written());
    sim.puback(next[0].0);
    sim.written();
    // One in flight, one held back: the other two were left; with everything before them done,
    // the module disconnects for the hub to send them again.
    let actions = sim.settle();
    assert_eq!(actions, vec![Action::Close]);
}

#[test]
fn the_token_is_renewed_before_it_expires_by_reconnecting_with_the_new_one() {
    let mut sim = Sim::up(config(|c| c.token_ttl = Duration::from_secs(100)), json!({}));
    assert_eq!(sim.passwords, vec!["token-0"]);
    sim.advance(Duration::from_secs(79));
    assert!(sim.settle().is_empty(), "not yet: 20 s before expiry");
    sim.advance(Duration::from_secs(1));
    let actions = sim.settle();
    assert_eq!(actions, vec![Action::Close], "signed, then a reconnection to present it");
    let out = sim.written();
    assert!(matches!(out.last(), Some(Out::Other(Packet::Disconnect))));
    sim.s.on_closed(sim.now);
    sim.settle();
    assert_eq!(sim.passwords, vec!["token-0", "token-1"]);
}

/// Defect: the reconnect path reused the old token, so a hub away for longer than a token's
/// lifetime refused every CONNECT after it, for ever.
#[test]
fn a_token_that_expires_while_offline_is_renewed_before_the_next_connect() {
    let mut sim = Sim::up(config(|c| c.token_ttl = Duration::from_secs(100)), json!({}));
    let start = sim.now;
    sim.s.on_lost(sim.now, &LinkError::Closed);
    // The hub is unreachable for 200 s: every attempt fails. The daemon answers a signing only
    // 300 ms after it was asked.
    let (mut connects, mut signing) = (Vec::new(), None);
    while sim.now < start + Duration::from_secs(200) {
        if let Some(asked) = signing {
            if sim.now >= asked + Duration::from_millis(300) {
                sim.s.on_token(sim.now, Ok(format!("token-at-{}", (sim.now - start).as_secs())));
                signing = None;
            }
        }
        while let Some(a) = sim.s.poll(sim.now) {
            match a {
                Action::Connect(o) => {
                    connects.push(((sim.now - start).as_secs_f64(), o.password));
                    let refused = std::io::ErrorKind::ConnectionRefused.into();
                    sim.s.on_connect_failed(sim.now, &LinkError::Unreachable(refused));
                }
                Action::Sign => signing = Some(sim.now),
                other => panic!("{other:?}"),
            }
        }
        sim.advance(Duration::from_millis(100));
    }
    let stale: Vec<_> = connects.iter().filter(|(t, p)| *t >= 80.0 && p == "token-0").collect();
    assert!(stale.is_empty(), "CONNECTs with the first token after its renewal time: {stale:?}");
    assert!(connects.iter().any(|(t, p)| *t > 100.0 && p.starts_with("token-at-")), "renewed while offline");
}

/// Defect: the renewal was awaited inside the select, so a hanging security daemon stopped
/// reads, acknowledgements and pings.
#[test]
fn while_a_token_is_being_signed_the_data_path_goes_on() {
    let mut sim = Sim::up(config(|c| c.token_ttl = Duration::from_secs(100)), json!({}));
    sim.advance(Duration::from_secs(80));
    assert_eq!(sim.s.poll(sim.now), Some(Action::Sign), "the signing goes out…");
    let input = sim.input(&hot(20.0));
    assert_eq!(pubacks(&sim.written()), vec![input], "…and the stream does not wait for it");
    sim.advance(Duration::from_secs(60));
    assert!(sim.written().iter().any(|o| matches!(o, Out::Other(Packet::PingReq))), "pings go on");
    assert_eq!(sim.s.poll(sim.now), None, "one signing at a time");
}

#[test]
fn a_ping_goes_every_keep_alive_and_a_silent_connection_is_dead_at_exactly_90_s() {
    let mut sim = Sim::up(config(|c| c.settings.report_interval_secs = 3600), json!({}));
    sim.advance(KEEP_ALIVE - Duration::from_millis(1));
    assert!(sim.written().is_empty());
    sim.advance(Duration::from_millis(1));
    assert!(matches!(sim.written()[..], [Out::Other(Packet::PingReq)]));
    sim.advance(DEAD_AFTER - KEEP_ALIVE - Duration::from_millis(1));
    assert!(sim.s.connected(), "89.999 s of silence: still up");
    sim.advance(Duration::from_millis(1));
    assert!(!sim.s.connected(), "90 s: dead, whatever the ping timer says");
}

#[test]
fn anything_read_keeps_the_connection_alive() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    for _ in 0..5 {
        sim.advance(Duration::from_secs(50));
        sim.hub_sends(Received::Other(Packet::PingResp));
    }
    assert!(sim.s.connected(), "250 s, never 90 s silent");
}

/// Defect: a later patch that touched only BatchSize reported a refused TemperatureThreshold
/// as no longer refused, while its desired value was still the refused one.
#[test]
fn an_unrelated_patch_keeps_a_rejected_setting_reported_as_rejected() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let patch = |sim: &mut Sim, v: u64, p: Value| {
        let topic = edgefilter::topic::twin_desired_patch(v);
        sim.hub_publishes(&topic, p.to_string().as_bytes(), 0);
        reported(&sim.written()).pop().unwrap()
    };
    let r = patch(&mut sim, 2, json!({"TemperatureThreshold": "hot", "$version": 2}));
    assert!(r["RejectedSettings"]["TemperatureThreshold"].is_string());
    let r = patch(&mut sim, 3, json!({"BatchSize": 50, "$version": 3}));
    assert_eq!(r["BatchSize"], json!(50));
    assert!(r["RejectedSettings"]["TemperatureThreshold"].is_string(), "still refused: {r}");
    let r = patch(&mut sim, 4, json!({"TemperatureThreshold": 30, "$version": 4}));
    assert_eq!(r["RejectedSettings"]["TemperatureThreshold"], Value::Null, "set again, accepted");
}

#[test]
fn a_rules_patch_applies_to_the_very_next_message() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let rules = json!({"Rules": {"Cold": {"path": "machine.temperature", "op": "<", "value": 0, "output": "cold"}}, "$version": 2});
    sim.hub_publishes(&edgefilter::topic::twin_desired_patch(2), rules.to_string().as_bytes(), 0);
    sim.written();
    sim.input(&hot(-5.0));
    let out = sim.written();
    let topics: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Out::Publish { topic, .. } if topic.contains("/events/") => Some(topic.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(topics.len(), 1);
    assert!(topics[0].contains("%24.on=cold"), "{}", topics[0]);
}

#[test]
fn a_stop_takes_no_more_input_and_exits_once_in_flight_alerts_are_confirmed() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let input = sim.input(&hot(30.0));
    let sent = alerts(&sim.written());
    sim.s.on_stop(sim.now);
    let late = sim.input(&hot(30.0));
    assert!(alerts(&sim.written()).is_empty(), "no new input once stopping");
    sim.puback(sent[0].0);
    let out = sim.written();
    assert_eq!(pubacks(&out), vec![input], "the input in flight is acknowledged, not {late}");
    assert!(matches!(out.last(), Some(Out::Other(Packet::Disconnect))));
    assert_eq!(sim.settle(), vec![Action::Exit]);
}

#[test]
fn a_stop_gives_up_waiting_after_the_drain_timeout() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    sim.input(&hot(30.0));
    sim.written();
    sim.s.on_stop(sim.now);
    sim.advance(DRAIN_TIMEOUT - Duration::from_millis(1));
    assert!(sim.settle().is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.settle(), vec![Action::Exit]);
}

#[test]
fn a_connection_that_fails_soon_after_it_is_accepted_backs_off() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let lost = sim.now;
        sim.s.on_lost(sim.now, &LinkError::Closed);
        // Reconnects when the core says so, and fails again at once.
        while !sim.s.connected() {
            sim.settle();
            if !sim.s.connected() {
                sim.advance(Duration::from_millis(10));
            }
        }
        gaps.push((sim.now - lost).as_millis());
        let out = sim.written();
        sim.answer(out, json!({}));
    }
    assert!(gaps[0] >= 400 && gaps[0] <= 610, "0.5 s ±20%: {gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "growing: {gaps:?}");
}

#[test]
fn the_twin_is_asked_for_again_when_no_answer_comes() {
    let mut sim = Sim::new(config(|_| {}));
    sim.settle();
    let gets = |out: &[Out]| {
        out.iter().filter(|o| matches!(o, Out::Publish { topic, .. } if topic.starts_with("$iothub/twin/GET/"))).count()
    };
    assert_eq!(gets(&sim.written()), 1);
    sim.advance(TWIN_TIMEOUT - Duration::from_millis(1));
    assert_eq!(gets(&sim.written()), 0);
    sim.advance(Duration::from_millis(1));
    assert_eq!(gets(&sim.written()), 1);
}

#[test]
fn statistics_are_reported_every_report_interval() {
    let mut sim = Sim::up(config(|c| c.settings.report_interval_secs = 10), json!({}));
    sim.advance(Duration::from_secs(10));
    let r = reported(&sim.written());
    assert_eq!(r.len(), 1);
    assert!(r[0]["Statistics"]["received"].is_number());
}

/// One message in flight, as edgeHub delivers: the hub waits for this PUBACK before the next,
/// so the module must never leave the connection unread then.
#[test]
fn the_gathering_pause_never_holds_back_the_input_the_hub_waits_for() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    for i in 0..2000 {
        let input = sim.input(&hot(if i % 3 == 0 { 20.0 } else { 30.0 }));
        assert_eq!(sim.s.read_after(), None, "message {i}: no pause while the hub waits");
        let out = sim.written();
        if let Some((alert, _)) = alerts(&out).first() {
            sim.now += Duration::from_micros(100);
            sim.puback(*alert);
            assert_eq!(sim.s.read_after(), None, "message {i}: no pause for the alert's confirmation");
            assert_eq!(pubacks(&sim.written()), vec![input]);
        } else {
            assert_eq!(pubacks(&out), vec![input]);
        }
        sim.now += Duration::from_micros(100);
    }
}

#[test]
fn an_alert_over_edgehubs_limit_is_given_up_and_its_input_acknowledged() {
    let mut sim = Sim::up(config(|_| {}), json!({}));
    let body = format!(r#"{{"machine":{{"temperature":30}},"pad":"{}"}}"#, "x".repeat(262_000));
    let input = sim.input(&body);
    let out = sim.written();
    assert!(alerts(&out).is_empty());
    assert_eq!(pubacks(&out), vec![input]);
    assert_eq!(sim.stats.dropped(Reason::AlertTooLarge), 1);
}

#[test]
fn an_alert_that_fails_on_n_connections_is_given_up_dead_lettered_and_its_redelivery_acknowledged() {
    let c = config(|c| {
        c.max_delivery_attempts = 3;
        c.settings.dead_letter_output = edgefilter::names::OutputName::parse("deadletter").unwrap();
    });
    let mut sim = Sim::up(c, json!({}));
    sim.input(&hot(30.0));
    let poison = alerts(&sim.written())[0].0;
    let mut dead_letter = Vec::new();
    for _ in 0..3 {
        sim.s.on_lost(sim.now, &LinkError::Closed);
        while !sim.s.connected() {
            sim.advance(Duration::from_millis(100));
            sim.settle();
        }
        let out = sim.written();
        // Answer the SUBSCRIBE, and fail again on the alert.
        if alerts(&out).first().is_some_and(|(p, _)| *p == poison) {
            sim.answer(out, json!({}));
        } else {
            dead_letter = alerts(&out);
            sim.answer(out, json!({}));
            break;
        }
    }
    assert_eq!(sim.stats.dropped(Reason::DeliveryFailed), 1);
    assert_eq!(sim.stats.dead_lettered.load(Relaxed), 1);
    // The hub redelivers the input: no alert made again, and its acknowledgement goes once the
    // dead letter is confirmed (or after BatchIntervalMs: acknowledgements wait for company).
    assert_eq!(dead_letter.len(), 1, "the dead letter, sent on the next connection");
    let again = sim.input(&hot(30.0));
    assert!(sim.written().is_empty(), "waiting for the dead letter's confirmation");
    sim.puback(dead_letter[0].0);
    assert_eq!(pubacks(&sim.written()), vec![again]);
}
