//! Unit tests of the pure core: topics and property bags both ways, SAS tokens, twin patches to
//! settings, delivery bookkeeping, hub routing, twins and usernames.

use edgefilter::delivery::Delivery;
use edgefilter::hub::routes::{delivery_bag, local_routes, parse_module_event, Sink};
use edgefilter::hub::twin::Twin;
use edgefilter::hub::{filter_matches, parse_module_username};
use edgefilter::module::{renewal_margin, username};
use edgefilter::settings::{apply_desired, from_env, reported, Settings, Source};
use edgefilter::topic::{
    classify, encode_bag, parse_bag, quote, unquote, write_output_topic, BagScratch, Inbound, ModuleId, Properties,
    TopicError,
};
use edgefilter::{config, filter, sas};
use serde_json::{json, Map, Value};
use std::time::Duration;

fn id() -> ModuleId {
    ModuleId::new("Device1", "Module1")
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

// ---- topics and property bags ----

#[test]
fn edgehub_test_topic_is_read_like_the_python_sdk() {
    let topic = "devices/Device1/modules/Module1/inputs/input1/Foo=Bar&Prop2=Value2&Prop3=Value3&%24.ce=utf-8&%24.ct=application%2Fjson&%24.schema=schema1&%24.to=foo&%24.uid=user1&%24.cid=1234&%24.mid=m1&%24.cdid=fromDevice1&%24.cmid=fromModule1&%24.sub=testComponent";
    let Ok(Inbound::Input { input, bag, .. }) = classify(&id(), topic) else { panic!("not an input") };
    assert_eq!(input, "input1");
    let p = Properties::from_bag(bag).unwrap();
    assert_eq!(
        p.application,
        vec![("Foo".into(), "Bar".into()), ("Prop2".into(), "Value2".into()), ("Prop3".into(), "Value3".into())]
    );
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(p.message_id.as_deref(), Some("m1"));
    assert_eq!(p.correlation_id.as_deref(), Some("1234"));
    assert_eq!(p.user_id.as_deref(), Some("user1"));
    assert_eq!(p.connection_device_id.as_deref(), Some("fromDevice1"));
    assert_eq!(p.connection_module_id.as_deref(), Some("fromModule1"));
}

#[test]
fn input_topics_without_bag_and_other_topics() {
    assert_eq!(
        classify(&id(), "devices/Device1/modules/Module1/inputs/input1"),
        Ok(Inbound::Input { input: "input1", bag: "", id: Default::default() })
    );
    assert_eq!(
        classify(&id(), "devices/Device1/modules/Module1/inputs/input1/"),
        Ok(Inbound::Input { input: "input1", bag: "", id: Default::default() })
    );
    assert_eq!(classify(&id(), "devices/Device1/modules/Other/inputs/input1"), Ok(Inbound::Other));
    assert_eq!(classify(&id(), "$iothub/methods/POST/reset/?$rid=1"), Ok(Inbound::Other));
    assert_eq!(
        classify(&id(), "devices/Device1/modules/Module1/inputs/input1/a=1&b"),
        Err(TopicError::BagEntryWithoutValue)
    );
    assert_eq!(classify(&id(), "$iothub/twin/res/200/?$rid=7"), Ok(Inbound::TwinResponse { status: 200, rid: "7" }));
    assert_eq!(classify(&id(), "$iothub/twin/res/x/?$rid=7"), Err(TopicError::BadTwinResponse));
    assert_eq!(classify(&id(), "$iothub/twin/PATCH/properties/desired/?$version=5"), Ok(Inbound::DesiredPatch));
}

/// Twin traffic, never held back behind input: what classify reads as a twin response (or a bad
/// one) or a desired patch; not methods, not inputs, not the module's own reported patches.
#[test]
fn twin_traffic_is_what_classify_reads_as_twin() {
    for topic in [
        "$iothub/twin/res/200/?$rid=7",
        "$iothub/twin/res/x/?$rid=7",
        "$iothub/twin/PATCH/properties/desired/?$version=5",
        "$iothub/methods/POST/reset/?$rid=1",
        "$iothub/twin/PATCH/properties/reported/?$rid=1",
        "$iothub/twin/GET/?$rid=1",
        "devices/Device1/modules/Module1/inputs/input1/a=1",
    ] {
        let twin = matches!(
            classify(&id(), topic),
            Ok(Inbound::TwinResponse { .. } | Inbound::DesiredPatch) | Err(TopicError::BadTwinResponse)
        );
        assert_eq!(edgefilter::topic::is_twin(topic), twin, "{topic}");
    }
}

/// The reference for what classify finds in a bag: its entries split at `&`, each at its first
/// `=`; the first `$.mid` (raw or quoted), the last `batchId` and `sequenceNumber`; None for a
/// bag the readable path cannot read.
fn reference_id(bag: &str) -> Option<(Option<String>, Option<String>, Option<String>)> {
    Properties::from_bag(bag).ok()?;
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    let entries: Vec<(&str, &str)> =
        if bag.is_empty() { Vec::new() } else { bag.split('&').map(|e| e.split_once('=').unwrap()).collect() };
    let first = |keys: &[&str]| entries.iter().find(|(k, _)| keys.contains(k)).map(|(_, v)| v.to_string());
    let last = |key: &str| entries.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.to_string());
    Some((first(&["$.mid", "%24.mid"]), last("batchId"), last("sequenceNumber")))
}

fn classified_id(bag: &str) -> Option<(Option<String>, Option<String>, Option<String>)> {
    let topic = format!("devices/Device1/modules/Module1/inputs/input1/{bag}");
    let text = |v: Option<&[u8]>| v.map(|v| String::from_utf8(v.to_vec()).unwrap());
    match classify(&id(), &topic) {
        Ok(Inbound::Input { id, .. }) => Some((text(id.mid), text(id.batch), text(id.sequence))),
        Err(e) => {
            assert_eq!(e, TopicError::BagEntryWithoutValue);
            None
        }
        Ok(other) => panic!("{other:?}"),
    }
}

#[test]
fn classify_finds_what_tells_a_message_from_its_redelivery() {
    let some = |s: &str| Some(s.to_string());
    for (bag, want) in [
        ("sequenceNumber=7&batchId=b1&%24.mid=m%2F1&%24.cdid=d/", Some((some("m%2F1"), some("b1"), some("7")))),
        ("sequenceNumber=7&batchId=b1&%24.cdid=d", Some((None, some("b1"), some("7")))),
        ("", Some((None, None, None))),
        ("$.mid=x&$.mid=y&batchId=1&batchId=2", Some((some("x"), some("2"), None))),
        // The first `=` ends a key: `batchId=a=b` is batch `a=b`; keys are matched whole.
        ("batchIdx=z&batchId=a=b&sequenceNumber=&xsequenceNumber=9", Some((None, some("a=b"), some("")))),
        ("%24.midx=1&mid=2&batchId=&sequenceNumberX=3", Some((None, some(""), None))),
        ("a=1&&%24.mid=&b=2", None),
        ("batchId", None),
        ("a=1&", None),
        ("&", None),
    ] {
        assert_eq!(classified_id(bag), want, "{bag:?}");
        assert_eq!(reference_id(bag), want, "{bag:?}");
    }
}

proptest::proptest! {
    #[test]
    fn any_bags_id_is_found_as_the_reference_finds_it(
        pairs in proptest::collection::vec(
            (proptest::sample::select(vec!["%24.mid", "$.mid", "batchId", "sequenceNumber", "batchI", "sequenceNumbe", "%24.cdid", "a", ""]),
             "[a-zA-Z0-9%=/&.-]{0,12}"),
            0..8),
        raw in "[a-z%&=/.$]{0,40}",
    ) {
        let bag = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        for bag in [bag.as_str(), raw.as_str(), &format!("{bag}/")] {
            proptest::prop_assert_eq!(classified_id(bag), reference_id(bag), "{:?}", bag);
        }
    }
}

#[test]
fn alert_bag_is_in_python_order_with_message_type() {
    let p = Properties::from_bag(
        "z=1&a=x%20y&%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=m1&%24.cdid=d&%24.cmid=s&%24.to=t",
    )
    .unwrap();
    let bag = filter::alert_properties(p).to_output_bag(filter::OUTPUT);
    assert_eq!(bag, "%24.on=output1&%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&MessageType=Alert&a=x%20y&z=1");
    assert_eq!(id().events_topic(&bag), format!("devices/Device1/modules/Module1/messages/events/{bag}"));
}

#[test]
fn message_type_replaces_an_existing_one() {
    let p = filter::alert_properties(Properties::from_bag("MessageType=Normal").unwrap());
    assert_eq!(p.application, vec![("MessageType".to_string(), "Alert".to_string())]);
}

/// The reference: what the output topic is by the readable path (parse, set, encode).
fn reference_topic(bag: &str, output: &str, set: &[(&str, &str)]) -> Result<String, TopicError> {
    let mut p = Properties::from_bag(bag)?;
    for (k, v) in set {
        p.set(k, v);
    }
    Ok(id().events_topic(&p.to_output_bag(output)))
}

fn written_topic(
    bag: &str,
    output: &str,
    set: &[(&str, &str)],
    scratch: &mut BagScratch,
) -> Result<String, TopicError> {
    let mut out = bytes::BytesMut::new();
    write_output_topic(&mut out, &id(), bag, output, set, scratch)?;
    Ok(String::from_utf8(out.to_vec()).unwrap())
}

#[test]
fn the_output_topic_is_written_as_the_readable_path_builds_it() {
    let mut scratch = BagScratch::default();
    for bag in [
        "",
        "/",
        "z=1&a=x%20y&%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=m1&%24.cdid=d&%24.cmid=s&%24.to=t",
        "MessageType=Normal&MessageType=Other&a=1",
        "b=2&a=1&b=1&%24.mid=first&%24.mid=second",
        "%FF=%C3%A9&k=%zz&%24.exp=2026&iothub-ack=full&%24.on=x&%24.schema=s&%24.sub=c",
        "sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor",
        "a=1&b",
    ] {
        let rule = [("MessageType", "PressureAlert"), ("a", "new"), ("severity", "high &=%")];
        for (output, set) in [
            (filter::OUTPUT, &[filter::ALERT_PROPERTY][..]),
            ("deadLetters", &[("FilterError", "invalid_json")][..]),
            ("maintenance", &rule[..]),
            ("output2", &[][..]),
        ] {
            assert_eq!(written_topic(bag, output, set, &mut scratch), reference_topic(bag, output, set), "bag {bag:?}");
        }
    }
}

proptest::proptest! {
    #[test]
    fn any_bag_is_written_as_the_readable_path_builds_it(
        pairs in proptest::collection::vec(
            (proptest::sample::select(vec!["MessageType", "%24.mid", "%24.ct", "%24.cdid", "%24.to", "a", "A", "z%20z", "%FF", "%", "k%2", "\u{e9}", "$.uid", "", "%24.exp"]),
             "[a-zA-Z0-9%=/ .~_$-]{0,8}"),
            0..8),
        raw in "[a-z%&=/]{0,12}",
    ) {
        let mut scratch = BagScratch::default();
        let bag = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        for bag in [bag.as_str(), raw.as_str()] {
            proptest::prop_assert_eq!(
                written_topic(bag, filter::OUTPUT, &[filter::ALERT_PROPERTY], &mut scratch),
                reference_topic(bag, filter::OUTPUT, &[filter::ALERT_PROPERTY])
            );
            proptest::prop_assert_eq!(
                written_topic(bag, "output2", &[("a", "1"), ("MessageType", "x y"), ("b", "")], &mut scratch),
                reference_topic(bag, "output2", &[("a", "1"), ("MessageType", "x y"), ("b", "")])
            );
        }
    }
}

#[test]
fn publish_codec_agrees_with_rumqttc() {
    use edgefilter::mqtt::{read_publish, write_publish};
    use rumqttc::mqttbytes::{v4::Packet, v4::Publish, QoS};
    // Written here, read by rumqttc.
    for (body_len, dup) in [(0usize, false), (129, false), (300, true), (20_000, false), (200_000, true)] {
        let body = vec![b'x'; body_len];
        let mut tx = bytes::BytesMut::new();
        write_publish(&mut tx, b"devices/d/modules/m/messages/events/%24.on=output1", 513, &body, dup).unwrap();
        let Ok(Packet::Publish(p)) = Packet::read(&mut tx, 1 << 20) else { panic!("not a publish") };
        assert_eq!(
            (p.topic.as_str(), p.pkid, p.qos, p.dup, p.payload.len()),
            ("devices/d/modules/m/messages/events/%24.on=output1", 513, QoS::AtLeastOnce, dup, body_len)
        );
        assert!(tx.is_empty());
    }
    // Written by rumqttc (QoS 0 and 1), read here; a partial packet waits; a bad topic is refused.
    for (qos, len) in [(QoS::AtMostOnce, 5usize), (QoS::AtLeastOnce, 129), (QoS::AtLeastOnce, 70_000)] {
        let mut p = Publish::new("devices/d/modules/m/inputs/input1/a=1", qos, vec![7u8; len]);
        p.pkid = if qos == QoS::AtMostOnce { 0 } else { 42 };
        let mut rx = bytes::BytesMut::new();
        Packet::Publish(p.clone()).write(&mut rx, 1 << 20).unwrap();
        let whole = rx.clone();
        let mut part = bytes::BytesMut::from(&whole[..whole.len() - 1]);
        assert!(read_publish(&mut part, 1 << 20).unwrap().is_none(), "incomplete");
        let m = read_publish(&mut rx, 1 << 20).unwrap().unwrap();
        assert_eq!((m.topic(), m.pkid, m.qos, m.payload.len()), (p.topic.as_str(), p.pkid, qos, len));
        assert!(rx.is_empty());
        let mut small = whole.clone();
        assert!(read_publish(&mut small, 20).is_err(), "over the packet limit");
    }
    let mut bad = bytes::BytesMut::from(&[0x30u8, 4, 0, 2, 0xFF, 0xFE][..]);
    assert!(read_publish(&mut bad, 1 << 20).is_err(), "a topic that is not UTF-8");
}

#[test]
fn quoting_matches_python() {
    assert_eq!(quote("a b/c=d&e~f_g.h-i"), "a%20b%2Fc%3Dd%26e~f_g.h-i");
    assert_eq!(quote("é"), "%C3%A9");
    assert_eq!(unquote("a%20b+c"), "a b+c");
    assert_eq!(unquote("%zz%4"), "%zz%4");
    assert_eq!(unquote("%C3%A9"), "é");
    assert_eq!(unquote("%FF"), "\u{FFFD}");
    for s in ["", "plain", "a&b=c/d e%f", "ünïcödé 😀"] {
        assert_eq!(unquote(&quote(s)), s);
    }
    let pairs = vec![("k 1".to_string(), "v&=/".to_string()), ("$.ct".to_string(), "application/json".to_string())];
    let bag = encode_bag(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(parse_bag(&bag).unwrap(), pairs);
    assert_eq!(parse_bag("").unwrap(), vec![]);
}

// ---- SAS tokens ----

#[test]
fn sas_token_matches_the_python_sdk_form() {
    let key = sas::decode_key("MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=").unwrap();
    let sr = sas::encoded_resource("hub.azure-devices.net", &id());
    assert_eq!(sr, "hub.azure-devices.net%2Fdevices%2FDevice1%2Fmodules%2FModule1");
    assert_eq!(sas::string_to_sign(&sr, 1700000000), format!("{sr}\n1700000000"));
    let token = sas::token_from_key(&key, "hub.azure-devices.net", &id(), 1700000000);
    // The Python SDK's token for the same key and expiry, computed with Python's hmac module:
    // quote(b64encode(hmac.new(key, (sr + "\n1700000000").encode(), sha256).digest()), safe="").
    let expected_sig = "Pb7PZPJfpxUdK0VE7p%2B2cyqc%2F7%2BuUFOs8DzbwM2G1Ok%3D";
    assert_eq!(token, format!("SharedAccessSignature sr={sr}&sig={expected_sig}&se=1700000000"));
}

#[test]
fn sas_signature_known_answer() {
    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    let sig = sas::sign(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(sig, "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
}

#[test]
fn hub_validates_tokens_like_edgehub() {
    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let hosts = ["hub.azure-devices.net"];
    let now = 1_000_000;
    let good = sas::token_from_key(&key, "HUB.azure-devices.net", &id(), now + 60);
    assert_eq!(sas::validate(&good, &key, &hosts, &id(), now), Ok(()));
    assert_eq!(sas::validate(&good, &key, &hosts, &id(), now + 60), Err(sas::TokenError::Expired));
    assert_eq!(sas::validate(&good, b"other key", &hosts, &id(), now), Err(sas::TokenError::BadSignature));
    assert_eq!(
        sas::validate(&good, &key, &hosts, &ModuleId::new("Device1", "Other"), now),
        Err(sas::TokenError::WrongAudience)
    );
    assert_eq!(sas::validate(&good, &key, &["elsewhere"], &id(), now), Err(sas::TokenError::WrongAudience));
    assert_eq!(sas::validate("Basic abc", &key, &hosts, &id(), now), Err(sas::TokenError::Malformed));
    let tampered = good.replace(&format!("se={}", now + 60), &format!("se={}", now + 6000));
    assert_eq!(sas::validate(&tampered, &key, &hosts, &id(), now), Err(sas::TokenError::BadSignature));
}

#[test]
fn username_and_renewal() {
    assert_eq!(
        username("hub.azure-devices.net", &id()),
        format!(
            "hub.azure-devices.net/Device1/Module1/?api-version=2019-10-01&DeviceClientType=edgefilter%2F{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let (hub, parsed) = parse_module_username(&username("hub.azure-devices.net", &id())).unwrap();
    assert_eq!((hub.as_str(), parsed), ("hub.azure-devices.net", id()));
    assert!(parse_module_username("hub/Device1/Module1/?DeviceClientType=x").is_err());
    assert!(parse_module_username("hub/Device1/?api-version=1").is_err());
    assert!(parse_module_username("hub/Device1/Module1/?api-version=").is_err());
    assert_eq!(renewal_margin(Duration::from_secs(3600)), Duration::from_secs(120));
    assert_eq!(renewal_margin(Duration::from_secs(10)), Duration::from_secs(2));
}

// ---- settings ----

#[test]
fn full_twin_and_patches_resolve_settings() {
    let base = Settings { temperature_threshold: 22.0, ..Settings::default() };
    let current = Settings { temperature_threshold: 30.0, ..Settings::default() };
    let a = apply_desired(&current, &base, &obj(json!({"TemperatureThreshold": 27, "$version": 4})), Source::FullTwin);
    assert_eq!(a.settings.temperature_threshold, 27.0);
    assert_eq!(a.changed, vec!["TemperatureThreshold"]);
    // Absent in a full twin: back to the base. Absent in a patch: unchanged.
    let a = apply_desired(&current, &base, &obj(json!({"Other": 1})), Source::FullTwin);
    assert_eq!(a.settings.temperature_threshold, 22.0);
    let a = apply_desired(&current, &base, &obj(json!({"Other": 1})), Source::Patch);
    assert_eq!(a.settings.temperature_threshold, 30.0);
    assert!(a.changed.is_empty());
    // null removes the desired value.
    let a = apply_desired(&current, &base, &obj(json!({"TemperatureThreshold": null})), Source::Patch);
    assert_eq!(a.settings.temperature_threshold, 22.0);
}

#[test]
fn invalid_desired_values_are_rejected_keeping_the_previous_value() {
    let current = Settings { temperature_threshold: 30.0, ..Settings::default() };
    for (bad, reason) in [
        (json!("hot"), "expected a number, got a string"),
        (json!(true), "expected a number, got a boolean"),
        (json!({"a": 1}), "expected a number, got an object"),
        (json!([1]), "expected a number, got an array"),
        (json!(1e7), "10000000 is out of range -1000000..=1000000"),
        (json!(-2e6), "-2000000 is out of range -1000000..=1000000"),
    ] {
        let a =
            apply_desired(&current, &Settings::default(), &obj(json!({ "TemperatureThreshold": bad })), Source::Patch);
        assert_eq!(a.settings, current);
        assert_eq!(a.rejected.len(), 1);
        assert_eq!(a.rejected[0].reason, reason);
    }
    let a = apply_desired(&current, &Settings::default(), &obj(json!({"TemperatureThreshold": "x"})), Source::Patch);
    let all_null = json!({"TemperatureThreshold": null, "BatchSize": null, "BatchIntervalMs": null, "ReportIntervalSecs": null, "CheckpointSeconds": null, "DeadLetterOutput": null, "AckMode": null, "Rules": null, "Aggregates": null});
    let mut rejected = all_null.clone();
    rejected["TemperatureThreshold"] = json!("expected a number, got a string");
    assert_eq!(
        reported(&a.settings, None, &a.rejected),
        json!({"TemperatureThreshold": 30.0, "BatchSize": 100, "BatchIntervalMs": 10, "ReportIntervalSecs": 60, "CheckpointSeconds": 5, "DeadLetterOutput": "", "AckMode": "confirmed", "Rules": null, "Aggregates": null, "RejectedSettings": rejected})
    );
    assert_eq!(reported(&a.settings, None, &[])["RejectedSettings"], all_null);
}

#[test]
fn batch_settings_are_whole_numbers_in_range() {
    let current = Settings::default();
    for (patch, reason) in [
        (json!({"BatchSize": 0}), "0 is out of range 1..=10000"),
        (json!({"BatchSize": 10001}), "10001 is out of range 1..=10000"),
        (json!({"BatchSize": 2.5}), "expected a whole number, got 2.5"),
        (json!({"BatchIntervalMs": -1}), "-1 is out of range 0..=60000"),
        (json!({"BatchIntervalMs": "10"}), "expected a number, got a string"),
        (json!({"ReportIntervalSecs": 0}), "0 is out of range 1..=86400"),
        (json!({"CheckpointSeconds": 0}), "0 is out of range 1..=3600"),
        (json!({"CheckpointSeconds": 1e9}), "1000000000 is out of range 1..=3600"),
    ] {
        let a = apply_desired(&current, &current, &obj(patch), Source::Patch);
        assert_eq!(a.settings, current);
        assert_eq!(a.rejected[0].reason, reason);
    }
    let a = apply_desired(
        &current,
        &current,
        &obj(json!({"BatchSize": 1, "BatchIntervalMs": 0, "TemperatureThreshold": 40})),
        Source::Patch,
    );
    assert_eq!((a.settings.batch_size, a.settings.batch_interval_ms, a.settings.temperature_threshold), (1, 0, 40.0));
    assert_eq!(a.changed, vec!["TemperatureThreshold", "BatchSize", "BatchIntervalMs"]);
    // A patch with one bad value applies the good ones.
    let a =
        apply_desired(&current, &current, &obj(json!({"BatchSize": -5, "TemperatureThreshold": 40})), Source::Patch);
    assert_eq!((a.settings.batch_size, a.settings.temperature_threshold), (100, 40.0));
    assert_eq!(a.rejected.len(), 1);
}

#[test]
fn batches_close_at_batch_size_or_interval() {
    use edgefilter::module::batch_closes;
    let s = Settings { batch_size: 100, batch_interval_ms: 10, ..Settings::default() };
    assert!(!batch_closes(&s, 99, Duration::from_millis(9)));
    assert!(batch_closes(&s, 100, Duration::ZERO), "full");
    assert!(batch_closes(&s, 1, Duration::from_millis(10)), "waited long enough");
    let immediate = Settings { batch_interval_ms: 0, ..s.clone() };
    assert!(batch_closes(&immediate, 0, Duration::ZERO), "BatchIntervalMs 0: one read per batch");
    let single = Settings { batch_size: 1, ..s.clone() };
    assert!(batch_closes(&single, 1, Duration::ZERO));
}

#[test]
fn acknowledgements_alone_wait_for_confirmations_in_flight_or_the_interval() {
    use edgefilter::module::acks_flush;
    let s = Settings { batch_interval_ms: 10, ..Settings::default() };
    assert!(acks_flush(&s, 0, Duration::ZERO), "nothing unconfirmed: nothing else is coming, write now");
    assert!(!acks_flush(&s, 1, Duration::ZERO), "a confirmation is on its way: wait for company");
    assert!(!acks_flush(&s, 500, Duration::from_millis(9)));
    assert!(acks_flush(&s, 500, Duration::from_millis(10)), "never longer than BatchIntervalMs");
    let immediate = Settings { batch_interval_ms: 0, ..s.clone() };
    assert!(acks_flush(&immediate, 500, Duration::ZERO), "BatchIntervalMs 0: at once");
}

/// Drives a [`Gather`] with a simulated clock: `turns` turns of `per_turn` inputs each, the next
/// turn `gap` after the previous one plus whatever pause it asked for; returns the last answer.
fn gathered(
    g: &mut edgefilter::gather::Gather,
    s: &Settings,
    turns: usize,
    per_turn: usize,
    owed: impl Fn(usize) -> usize,
    gap: Duration,
) -> Option<Duration> {
    let mut now = std::time::Instant::now();
    let mut last = None;
    for i in 0..turns {
        last = g.turn(now, per_turn, owed(i), s);
        now += gap + last.unwrap_or_default();
    }
    last
}

#[test]
fn light_load_is_never_held_back() {
    use edgefilter::gather::Gather;
    let s = Settings::default();
    // 200 msg/s, one message a turn: at most one message would gather in the 5 ms budget.
    let mut g = Gather::new();
    assert_eq!(gathered(&mut g, &s, 100, 1, |_| 1, Duration::from_millis(5)), None);
    // 500 msg/s: still fewer than 4 messages per budget.
    let mut g = Gather::new();
    assert_eq!(gathered(&mut g, &s, 100, 1, |_| 1, Duration::from_millis(2)), None);
    assert!((g.rate() - 500.0).abs() < 50.0, "measured {}", g.rate());
}

#[test]
fn a_fast_stream_gathers_within_half_the_batch_interval() {
    use edgefilter::gather::{Gather, MAX_PAUSE};
    let s = Settings::default(); // BatchIntervalMs 10, BatchSize 100
                                 // 10,000 msg/s arriving one at a time, 100 µs apart; a hub with a wide window (owed grows).
    let mut g = Gather::new();
    let mut now = std::time::Instant::now();
    let mut pause = None;
    let mut owed = 0;
    for _ in 0..200 {
        let inputs = (pause.unwrap_or(Duration::from_micros(100)).as_micros() / 100).max(1) as usize;
        owed = owed.max(inputs) + usize::from(owed < 1000);
        pause = g.turn(now, inputs, owed, &s);
        now += pause.unwrap_or(Duration::from_micros(100));
    }
    let pause = pause.expect("a 10,000 msg/s stream gathers");
    assert!(pause <= MAX_PAUSE && pause >= Duration::from_millis(1), "{pause:?}");
    // A tighter budget is respected.
    let tight = Settings { batch_interval_ms: 2, ..s.clone() };
    let mut g = Gather::new();
    let p = gathered(&mut g, &tight, 200, 10, |i| i + 10, Duration::from_micros(1000));
    assert!(p.is_some_and(|p| p <= Duration::from_millis(1)), "{p:?}");
    // BatchIntervalMs 0: never.
    let mut g = Gather::new();
    assert_eq!(
        gathered(
            &mut g,
            &Settings { batch_interval_ms: 0, ..s.clone() },
            200,
            50,
            |i| i + 50,
            Duration::from_micros(100)
        ),
        None
    );
}

#[test]
fn a_hub_stopped_at_its_window_shortens_the_pause() {
    use edgefilter::gather::Gather;
    let s = Settings::default();
    let mut g = Gather::new();
    // Gather up first with a wide window…
    let grown = gathered(&mut g, &s, 100, 20, |i| 20 + i, Duration::from_micros(500)).unwrap();
    // …then every read owes exactly the most ever owed: the hub is waiting for acknowledgements.
    let mut now = std::time::Instant::now();
    let mut pause = Some(grown);
    for _ in 0..4 {
        now += pause.unwrap_or_default();
        pause = g.turn(now, 20, 119, &s);
    }
    assert!(pause.is_none_or(|p| p <= grown / 8), "{grown:?} -> {pause:?}");
}

#[test]
fn dead_letter_output_is_an_output_name() {
    let current = Settings::default();
    let a = apply_desired(&current, &current, &obj(json!({"DeadLetterOutput": "deadLetters"})), Source::Patch);
    assert_eq!(a.settings.dead_letter_output.get(), Some("deadLetters"));
    assert_eq!(a.changed, vec!["DeadLetterOutput"]);
    let off = apply_desired(&a.settings, &current, &obj(json!({"DeadLetterOutput": ""})), Source::Patch);
    assert_eq!(off.settings.dead_letter_output.get(), None);
    let removed = apply_desired(&a.settings, &current, &obj(json!({"DeadLetterOutput": null})), Source::Patch);
    assert_eq!(removed.settings.dead_letter_output.get(), None);
    for (bad, reason) in [
        (json!(5), "expected a string, got a number"),
        (json!("out/put"), "'/' is not allowed in an output name (A-Z a-z 0-9 _ - .)"),
        (json!("x".repeat(65)), "an output name has at most 64 characters, got 65"),
    ] {
        let r = apply_desired(&a.settings, &current, &obj(json!({ "DeadLetterOutput": bad })), Source::Patch);
        assert_eq!(r.settings, a.settings, "kept");
        assert_eq!(r.rejected[0].reason, reason);
    }
    assert_eq!(reported(&a.settings, None, &[])["DeadLetterOutput"], "deadLetters");
    assert!(edgefilter::settings::names().any(|n| n == "DeadLetterOutput"));
    let env = |n: &str| (n == "DeadLetterOutput").then(|| "bad name".to_string());
    assert!(from_env(env).unwrap_err().starts_with("DeadLetterOutput: ' ' is not allowed"));
}

#[test]
fn environment_settings() {
    let env = |v: &'static str| move |n: &str| (n == "TemperatureThreshold").then(|| v.to_string());
    assert_eq!(from_env(env("31.5")).unwrap().temperature_threshold, 31.5);
    assert_eq!(from_env(|_| None).unwrap(), Settings::default());
    assert!(from_env(env("hot")).unwrap_err().starts_with("TemperatureThreshold: expected a number"));
    assert!(from_env(env("NaN")).unwrap_err().contains("not a finite number"));
}

// ---- configuration ----

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
}

const CS: &str =
    "HostName=hub.azure-devices.net;GatewayHostName=gw.local;DeviceId=dev;ModuleId=filter;SharedAccessKey=c2VjcmV0";

#[test]
fn configuration_from_the_connection_string() {
    let c = config::resolve(env_of(&[("EdgeHubConnectionString", CS)]), None).unwrap();
    assert_eq!(c.identity.hub_hostname, "hub.azure-devices.net");
    assert_eq!(c.identity.module, ModuleId::new("dev", "filter"));
    assert_eq!(
        c.endpoint,
        config::Endpoint { host: "gw.local".into(), port: 8883, tls: Some(config::Trust::SystemRoots) }
    );
    assert_eq!(c.token_ttl, Duration::from_secs(3600));
    let c = config::resolve(
        env_of(&[("EdgeHubConnectionString", CS), ("EDGEFILTER_MQTT_URL", "mqtt://127.0.0.1:1999")]),
        None,
    )
    .unwrap();
    assert_eq!(c.endpoint, config::Endpoint { host: "127.0.0.1".into(), port: 1999, tls: None });
    let c = config::resolve(env_of(&[("EdgeHubConnectionString", CS)]), Some("mqtts://broker")).unwrap();
    assert_eq!(c.endpoint.port, 8883);
    assert!(format!("{:?}", c.credentials).contains("redacted"));
}

#[test]
fn configuration_errors_name_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "EdgeHubConnectionString: not set"),
        (
            &[("EdgeHubConnectionString", "HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0")],
            "EdgeHubConnectionString: ModuleId is missing",
        ),
        (
            &[("EdgeHubConnectionString", "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=!!")],
            "EdgeHubConnectionString: SharedAccessKey is not valid base64",
        ),
        (&[("EdgeHubConnectionString", "garbage")], "EdgeHubConnectionString: `garbage` is not Key=value"),
        (
            &[("EdgeHubConnectionString", CS), ("EDGEFILTER_MQTT_URL", "http://x")],
            "EDGEFILTER_MQTT_URL: \"http://x\" must start with mqtt:// or mqtts://",
        ),
        (
            &[("EdgeHubConnectionString", CS), ("EDGEFILTER_MQTT_URL", "mqtt://x:99999")],
            "EDGEFILTER_MQTT_URL: \"mqtt://x:99999\" has an invalid port",
        ),
        (
            &[("EdgeHubConnectionString", CS), ("EdgeModuleCACertificateFile", "/nonexistent.pem")],
            "EdgeModuleCACertificateFile: /nonexistent.pem is not a readable file",
        ),
        (
            &[("EdgeHubConnectionString", CS), ("EDGEFILTER_TOKEN_TTL_SECS", "5")],
            "EDGEFILTER_TOKEN_TTL_SECS: expected whole seconds",
        ),
        (
            &[("EdgeHubConnectionString", CS), ("EDGEFILTER_MAX_UNCONFIRMED", "0")],
            "EDGEFILTER_MAX_UNCONFIRMED: expected a whole number from 1 to 60000, got \"0\"",
        ),
        (
            &[("EdgeHubConnectionString", CS), ("TemperatureThreshold", "warm")],
            "TemperatureThreshold: expected a number",
        ),
    ];
    for (env, want) in cases {
        let e = config::resolve(env_of(env), None).unwrap_err().to_string();
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        assert!(!e.contains("c2VjcmV0"), "the key leaked: {e}");
    }
}

// ---- rules in the twin ----

fn rule(path: &str, op: &str, value: f64, output: &str) -> serde_json::Value {
    json!({"path": path, "op": op, "value": value, "output": output})
}

#[test]
fn rules_come_from_the_full_twin_merge_from_patches_and_go_with_null() {
    let base = Settings::default();
    let full = obj(json!({"Rules": {"A": rule("a", ">", 1.0, "o1"), "B": rule("b", "<", 2.0, "o2")}}));
    let a = apply_desired(&base, &base, &full, Source::FullTwin);
    assert!(a.rejected.is_empty(), "{:?}", a.rejected);
    assert_eq!(a.changed, vec!["Rules"]);
    let names = |s: &Settings| s.rules.as_ref().map(|r| r.rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
    assert_eq!(names(&a.settings), Some(vec!["A".into(), "B".into()]));
    // A patch changes one field of one rule, removes another, adds a third.
    let patch = obj(json!({"Rules": {"A": {"value": 5}, "B": null, "C": rule("c", "==", 0.0, "o3")}}));
    let p = apply_desired(&a.settings, &base, &patch, Source::Patch);
    let rules = p.settings.rules.as_ref().unwrap();
    assert_eq!((rules.rules[0].name.as_str(), rules.rules[0].value), ("A", 5.0));
    assert_eq!(names(&p.settings), Some(vec!["A".into(), "C".into()]));
    // Reported: the patch from what was reported before.
    let reported = reported(&p.settings, a.settings.rules.as_deref(), &p.rejected);
    assert_eq!(reported["Rules"]["B"], json!(null));
    assert_eq!(reported["Rules"]["A"], json!({"value": 5.0}));
    assert_eq!(reported["Rules"]["C"]["op"], json!("=="));
    // A patch without Rules keeps them; "Rules": null removes them all; a full twin without
    // them has none.
    let keep = apply_desired(&p.settings, &base, &obj(json!({"BatchSize": 5})), Source::Patch);
    assert_eq!(keep.settings.rules, p.settings.rules);
    let none = apply_desired(&p.settings, &base, &obj(json!({"Rules": null})), Source::Patch);
    assert_eq!((none.settings.rules.is_none(), none.changed.clone()), (true, vec!["Rules"]));
    assert_eq!(reported_rules(&none.settings, p.settings.rules.as_deref()), json!(null));
    let absent = apply_desired(&p.settings, &base, &obj(json!({})), Source::FullTwin);
    assert!(absent.settings.rules.is_none());
}

fn reported_rules(s: &Settings, previous: Option<&edgefilter::rules::Rules>) -> serde_json::Value {
    reported(s, previous, &[])["Rules"].clone()
}

#[test]
fn a_patch_that_would_leave_an_invalid_rule_set_is_rejected_whole() {
    let base = Settings::default();
    let full = obj(json!({"Rules": {"A": rule("a", ">", 1.0, "o1")}}));
    let a = apply_desired(&base, &base, &full, Source::FullTwin);
    for (patch, reason) in [
        (json!({"Rules": {"A": {"op": "=>"}, "B": rule("b", "<", 2.0, "o2")}}), "rule \"A\": op"),
        (json!({"Rules": {"B": {"path": "b"}}}), "rule \"B\": op: missing"),
        (json!({"Rules": [1, 2]}), "expected an object of rules, got an array"),
        (json!({"Rules": "A"}), "expected an object of rules, got a string"),
        (
            json!({"Rules": (0..16).map(|i| (format!("r{i}"), rule("x", ">", 0.0, "o"))).collect::<serde_json::Map<_, _>>()}),
            "at most 16 rules",
        ),
    ] {
        let p = apply_desired(&a.settings, &base, &obj(patch.clone()), Source::Patch);
        assert_eq!(p.settings.rules, a.settings.rules, "{patch}");
        assert_eq!(p.rejected.len(), 1, "{patch}");
        assert_eq!(p.rejected[0].name, "Rules");
        assert!(p.rejected[0].reason.contains(reason), "{} for {patch}", p.rejected[0].reason);
        let reported = reported(&p.settings, a.settings.rules.as_deref(), &p.rejected);
        assert!(reported["RejectedSettings"]["Rules"].as_str().unwrap().contains(reason));
    }
}

// ---- delivery ----

#[test]
fn inputs_are_acknowledged_in_order_after_their_alerts() {
    let mut d = Delivery::new();
    let a1 = d.alerted(10, "alert 1");
    d.dropped(11);
    assert_eq!(d.ready(), Vec::<u16>::new(), "the drop waits behind the unconfirmed alert");
    let a2 = d.alerted(12, "alert 2");
    assert_ne!(a1, a2);
    assert_eq!(d.confirmed(a1), Some("alert 1"));
    assert_eq!(d.ready(), vec![10, 11]);
    assert_eq!(d.confirmed(999), None, "an unknown PUBACK changes nothing");
    assert_eq!(d.confirmed(a2), Some("alert 2"));
    assert_eq!(d.ready(), vec![12]);
    assert_eq!((d.inputs_pending(), d.alerts_pending()), (0, 0));
}

#[test]
fn an_input_with_several_copies_waits_for_every_one() {
    let mut d = Delivery::new();
    let (c1, c2) = (d.send("rule A"), d.send("rule B"));
    d.decided(7, 2);
    d.decided(8, 0);
    let c3 = d.send("rule A");
    d.decided(9, 1);
    assert!(d.confirmed(c2).is_some());
    assert_eq!(d.ready(), Vec::<u16>::new(), "one copy of 7 is unconfirmed");
    assert!(d.confirmed(c3).is_some());
    assert_eq!(d.ready(), Vec::<u16>::new(), "9 waits behind 7, in order");
    assert!(d.confirmed(c1).is_some());
    assert_eq!(d.ready(), vec![7, 8, 9]);
    assert_eq!((d.inputs_pending(), d.alerts_pending()), (0, 0));
}

#[test]
fn out_of_order_confirmations_still_acknowledge_in_order() {
    let mut d = Delivery::new();
    let a1 = d.alerted(1, ());
    let a2 = d.alerted(2, ());
    d.dropped(3);
    assert!(d.confirmed(a2).is_some());
    assert_eq!(d.ready(), Vec::<u16>::new());
    assert!(d.confirmed(a1).is_some());
    assert_eq!(d.ready(), vec![1, 2, 3]);
}

#[test]
fn reconnection_resends_alerts_with_their_ids_and_forgets_inputs() {
    let mut d = Delivery::new();
    let a1 = d.alerted(10, "one");
    d.dropped(11);
    let a2 = d.alerted(12, "two");
    let sub = d.reserve();
    assert!(![a1, a2].contains(&sub), "a subscription never shares an alert's id");
    let resend: Vec<(u16, &str)> = d.reconnected().map(|(p, a)| (p, *a)).collect();
    assert_eq!(resend, vec![(a1, "one"), (a2, "two")]);
    assert_eq!(d.inputs_pending(), 0, "the old connection's inputs are redelivered by the hub");
    assert_eq!(d.confirmed(a2), Some("two"));
    assert_eq!(d.confirmed(a1), Some("one"));
    assert_eq!(d.ready(), Vec::<u16>::new());
}

#[test]
fn packet_ids_are_never_reused_while_in_flight() {
    let mut d = Delivery::new();
    let first = d.alerted(1, 0u32);
    let mut seen = std::collections::HashSet::from([first]);
    for i in 0..70_000u32 {
        let p = d.alerted(0, i);
        assert_ne!(p, 0);
        assert_ne!(p, first, "the unconfirmed first alert keeps its id");
        seen.insert(p);
        d.confirmed(p);
    }
    assert_eq!(d.alerts_pending(), 1);
    assert!(seen.len() > 60_000);
}

#[test]
fn qos0_inputs_owe_no_acknowledgement() {
    let mut d: Delivery<u8> = Delivery::new();
    d.dropped(0);
    d.alerted(0, 1);
    assert_eq!(d.inputs_pending(), 0);
    assert_eq!(d.alerts_pending(), 1);
}

// ---- hub ----

#[test]
fn topic_filters_follow_mqtt_rules() {
    assert!(filter_matches("#", "a/b"));
    assert!(!filter_matches("#", "$iothub/twin/res/200"));
    assert!(!filter_matches("+/twin/#", "$iothub/twin/res"));
    assert!(filter_matches("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1"));
    assert!(filter_matches("devices/d/modules/m/inputs/#", "devices/d/modules/m/inputs/input1/a=b"));
    assert!(filter_matches("a/+/c", "a/b/c"));
    assert!(!filter_matches("a/+/c", "a/b/c/d"));
    assert!(filter_matches("a/#", "a"));
    assert!(!filter_matches("a/b", "a"));
}

#[test]
fn routed_messages_carry_edgehubs_bag() {
    let topic = "devices/dev/modules/SimulatedTemperatureSensor/messages/events/%24.on=temperatureOutput&%24.ct=application%2Fjson&%24.ce=utf-8&sequenceNumber=1&batchId=b";
    let m = parse_module_event(topic).unwrap().unwrap();
    assert_eq!(m.output.as_deref(), Some("temperatureOutput"));
    let bag = delivery_bag(&m);
    let encoded = encode_bag(bag.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(encoded, "sequenceNumber=1&batchId=b&%24.ce=utf-8&%24.ct=application%2Fjson&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor");
    let routes = local_routes("SimulatedTemperatureSensor", "edgefilter");
    assert!(routes[0].matches("SimulatedTemperatureSensor", Some("temperatureOutput")));
    assert!(!routes[0].matches("SimulatedTemperatureSensor", Some("other")));
    assert!(routes[1].matches("edgefilter", Some("output1")) && routes[1].sink == Sink::Upstream);
    assert!(parse_module_event("devices/d/modules/m/messages/events").unwrap().is_ok());
    assert!(parse_module_event("devices/d/modules/m/messages/eventsX").is_none());
    assert!(parse_module_event("devices/d/modules/m/inputs/x").is_none());
}

#[test]
fn twins_merge_and_version() {
    let mut t = Twin::with_desired(obj(json!({"TemperatureThreshold": 25, "Nested": {"a": 1, "b": 2}})));
    assert_eq!(
        t.get_body(),
        json!({"desired": {"TemperatureThreshold": 25, "Nested": {"a": 1, "b": 2}, "$version": 1}, "reported": {"$version": 1}})
    );
    let pushed = t.patch_desired(&obj(json!({"TemperatureThreshold": 30, "Nested": {"a": null}})));
    assert_eq!(pushed, json!({"TemperatureThreshold": 30, "Nested": {"a": null}, "$version": 2}));
    assert_eq!(t.desired, obj(json!({"TemperatureThreshold": 30, "Nested": {"b": 2}})));
    t.patch_reported(&obj(json!({"x": 1})));
    t.patch_reported(&obj(json!({"x": null, "y": 2})));
    assert_eq!(t.reported, obj(json!({"y": 2})));
    assert_eq!(t.reported_version, 3);
}

#[test]
fn local_console_lines() {
    use edgefilter::local::parse_desired_line;
    assert_eq!(parse_desired_line("TemperatureThreshold=30").unwrap(), Some(obj(json!({"TemperatureThreshold": 30}))));
    assert_eq!(
        parse_desired_line("TemperatureThreshold = hot").unwrap(),
        Some(obj(json!({"TemperatureThreshold": "hot"})))
    );
    assert_eq!(
        parse_desired_line(r#"{"TemperatureThreshold":null}"#).unwrap(),
        Some(obj(json!({"TemperatureThreshold": null})))
    );
    assert_eq!(parse_desired_line("  ").unwrap(), None);
    assert!(parse_desired_line("nonsense").is_err());
    assert!(parse_desired_line("[1]").is_err());
}

#[test]
fn sensor_messages_look_like_simulated_temperature_sensor() {
    use edgefilter::sensor::Sensor;
    let mut s = Sensor::new(7);
    let mut last = 21.0;
    for n in 1..=200u64 {
        let r = s.next_reading(std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let t = v["machine"]["temperature"].as_f64().unwrap();
        assert_eq!(t, r.machine_temperature);
        if last <= 100.0 {
            assert!((-0.25..1.25).contains(&(t - last)), "step {}", t - last);
        } else {
            assert!((-0.5..0.5).contains(&(t - last)));
        }
        last = t;
        let p = v["machine"]["pressure"].as_f64().unwrap();
        assert!((p - (1.0 + (t - 21.0) * 9.0 / 79.0)).abs() < 1e-9);
        assert!((20.5..21.5).contains(&v["ambient"]["temperature"].as_f64().unwrap()));
        assert!((24..=26).contains(&v["ambient"]["humidity"].as_u64().unwrap()));
        assert_eq!(v["timeCreated"], "2023-11-14T22:13:20.123Z");
        assert_eq!(r.properties.get("sequenceNumber"), Some(n.to_string().as_str()));
        assert_eq!(r.properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.properties.content_encoding.as_deref(), Some("utf-8"));
    }
    let batch =
        |s: &mut Sensor| s.next_reading(std::time::SystemTime::now()).properties.get("batchId").map(str::to_string);
    let first = batch(&mut s);
    assert_eq!(first, batch(&mut s));
    assert_eq!(first.unwrap().len(), 36);
}

// ---- the security daemon path ----

fn edge_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("IOTEDGE_IOTHUBHOSTNAME", "hub.azure-devices.net"),
        ("IOTEDGE_GATEWAYHOSTNAME", "gateway.local"),
        ("IOTEDGE_DEVICEID", "dev"),
        ("IOTEDGE_MODULEID", "edge filter"),
        ("IOTEDGE_MODULEGENERATIONID", "gen1"),
        ("IOTEDGE_WORKLOADURI", "unix:///var/run/iotedge/workload.sock"),
        ("IOTEDGE_APIVERSION", "2022-08-03"),
        ("IOTEDGE_AUTHSCHEME", "sasToken"),
        ("EdgeHubConnectionString", CS),
    ]
}

#[test]
fn iotedge_variables_take_precedence_and_use_the_workload_api() {
    use edgefilter::workload::{Workload, WorkloadUri};
    let c = config::resolve(env_of(&edge_vars()), None).unwrap();
    assert_eq!(c.identity.hub_hostname, "hub.azure-devices.net");
    assert_eq!(c.identity.module, ModuleId::new("dev", "edge filter"));
    assert_eq!(
        c.endpoint,
        config::Endpoint { host: "gateway.local".into(), port: 8883, tls: Some(config::Trust::WorkloadBundle) }
    );
    let config::Credentials::Workload(w) = &c.credentials else { panic!("workload credentials expected") };
    assert_eq!(w.uri, WorkloadUri::Unix("/var/run/iotedge/workload.sock".into()));
    assert_eq!(w.sign_path(), "/modules/edge%20filter/genid/gen1/sign?api-version=2022-08-03");
    assert_eq!(w.trust_bundle_path(), "/trust-bundle?api-version=2022-08-03");
    assert_eq!(Workload::sign_body(b"sr\n123"), r#"{"algo":"HMACSHA256","data":"c3IKMTIz","keyId":"primary"}"#);
}

#[test]
fn iotedge_variable_errors() {
    let mut vars = edge_vars();
    vars.retain(|(k, _)| *k != "IOTEDGE_MODULEGENERATIONID");
    let e = config::resolve(env_of(&vars), None).unwrap_err().to_string();
    assert!(e.starts_with("IOTEDGE_MODULEGENERATIONID: not set"), "{e}");
    let mut vars = edge_vars();
    vars.retain(|(k, _)| *k != "IOTEDGE_AUTHSCHEME");
    vars.push(("IOTEDGE_AUTHSCHEME", "x509"));
    let e = config::resolve(env_of(&vars), None).unwrap_err().to_string();
    assert_eq!(e, "IOTEDGE_AUTHSCHEME: \"x509\" is not supported: only sasToken");
    let mut vars = edge_vars();
    vars.retain(|(k, _)| *k != "IOTEDGE_WORKLOADURI");
    vars.push(("IOTEDGE_WORKLOADURI", "tcp://x"));
    let e = config::resolve(env_of(&vars), None).unwrap_err().to_string();
    assert!(e.starts_with("IOTEDGE_WORKLOADURI: \"tcp://x\" must start with unix:// or http://"), "{e}");
}

#[test]
fn workload_responses_are_checked() {
    use edgefilter::workload::{parse_digest, parse_trust_bundle, parse_uri, WorkloadError, WorkloadUri};
    let digest = sas::sign(b"k", b"d");
    assert_eq!(parse_digest(json!({"digest": digest}).to_string().as_bytes()), Ok(digest));
    assert!(matches!(parse_digest(b"{\"digest\":"), Err(WorkloadError::BadResponse(_))));
    assert!(matches!(parse_digest(br#"{"digest":"c2hvcnQ="}"#), Err(WorkloadError::BadResponse(_))));
    assert!(matches!(parse_digest(br#"{"other":1}"#), Err(WorkloadError::BadResponse(_))));
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert_eq!(parse_trust_bundle(json!({"certificate": pem}).to_string().as_bytes()), Ok(pem.to_string()));
    assert!(parse_trust_bundle(br#"{"certificate":""}"#).is_err());
    assert_eq!(parse_uri("http://127.0.0.1:15580"), Ok(WorkloadUri::Http { host: "127.0.0.1".into(), port: 15580 }));
    assert!(parse_uri("unix://relative.sock").is_err());
}

// ---- reconnecting ----

#[test]
fn an_unreachable_hub_is_tried_often_enough_to_resume_within_half_a_second() {
    use edgefilter::retry::{Failure, Retry, FAST, FAST_FOR, HEALTHY_AFTER, LOG_EVERY, STEADY};
    let mut r = Retry::default();
    let start = std::time::Instant::now();
    let mut now = start;
    let mut attempts_after_fast = 0;
    let mut lines = 0;
    while now - start < Duration::from_secs(70) {
        let next = r.failed(now, Failure::Unreachable);
        assert!(next.delay * 6 / 5 < Duration::from_millis(500), "even jittered, the next try is within 0.5 s");
        assert_eq!(next.delay, if now - start < FAST_FOR { FAST } else { STEADY });
        lines += usize::from(next.log.is_some());
        if now - start >= Duration::from_secs(10) && now - start < Duration::from_secs(70) {
            attempts_after_fast += 1;
        }
        now += next.delay;
    }
    assert_eq!(attempts_after_fast, 200, "200 attempts a minute after the first ten seconds");
    assert!(lines <= (70 / LOG_EVERY.as_secs() + 1) as usize, "{lines} log lines in 70 s");
    // After a healthy connection, a new outage starts fast again and is logged at once.
    r.connected(now);
    now += HEALTHY_AFTER;
    assert_eq!(r.lost(now), None, "lost after a healthy connection: tried again at once");
    let next = r.failed(now, Failure::Unreachable);
    assert_eq!((next.delay, next.log), (FAST, Some(1)));
}

#[test]
fn a_hub_that_refuses_the_module_is_asked_less_and_less_often() {
    use edgefilter::retry::{Failure, Retry, REFUSED_MAX, REFUSED_MIN};
    let mut r = Retry::default();
    let now = std::time::Instant::now();
    let delays: Vec<Duration> = (0..10).map(|_| r.failed(now, Failure::Refused).delay).collect();
    assert_eq!(delays[0], REFUSED_MIN);
    assert_eq!(delays[1], REFUSED_MIN * 2);
    assert_eq!(*delays.last().unwrap(), REFUSED_MAX);
}

#[test]
fn a_messages_size_counts_the_body_its_bag_and_what_edgehub_adds() {
    use edgefilter::limits::EDGEHUB_ADDED_PROPERTIES as ADDED;
    use edgefilter::topic::message_size;
    let topic = "devices/dev/modules/filter/messages/events/%24.on=output1&MessageType=Alert";
    assert_eq!(message_size(10, topic), 10 + "%24.on=output1&MessageType=Alert".len() + ADDED);
    // Ids that look like the marker do not move the bag.
    let odd = "devices/messages/modules/events/messages/events/a=b";
    assert_eq!(message_size(1, odd), 1 + 3 + ADDED);
    // No bag: only the body and what edgeHub adds.
    assert_eq!(message_size(5, "devices/dev/modules/filter/messages/events/"), 5 + ADDED);
    assert_eq!(message_size(5, "devices/dev/modules/filter/inputs/input1/a=b"), 5 + ADDED);
    // Near the limit, the bag's decoded size counts, not its encoded one.
    let big = format!("devices/d/modules/m/messages/events/k={}", "%41".repeat(1000));
    let body = edgefilter::limits::MAX_MESSAGE_SIZE;
    assert_eq!(message_size(body, &big), body + 1 + 1000 + ADDED);
}
