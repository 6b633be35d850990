//! One message in edgeHub's delivery shape (an input, then, for an alert, the hub's PUBACK of it),
//! run N times through the parts of the module, for `tools/arm-insn-count` to count what each part
//! costs on armv7 apart from the event loop and the system calls. `scripts/arm-session-insns.sh`
//! runs every stage; the whole module under a live stream is `scripts/arm-streaming-insns.sh`.
//!
//!     session_insns STAGE MODE N [AGGREGATES [SPACING_MS]]
//!
//! STAGE: `core` (the session core: every event of one message, the packets already decoded),
//! `decode` (decoding the packets one message brings: the input and the alert's PUBACK), `tls`
//! (sealing what the module writes for one message and opening what it reads, with an in-memory
//! rustls server as the hub: the figure is half the pair's, the server doing the mirror work).
//! MODE: `confirmed` or `pipelined`. Two of every three messages alert, as in the streaming script.
//!
//! `stream` is `core` as the sensor sends, for the aggregates' cost beside the filter: messages
//! 5 s apart, each with its own `sequenceNumber` (its message id) and `timeCreated`, every timer
//! the core asks for fired, every message it writes confirmed. AGGREGATES: `none`, `tumbling` (one
//! 30-s tumbling aggregate of `machine.temperature`, avg min max count, arrival time) or
//! `tutorial` (the ASA tutorial's job: event time, `having`, a reset body); SPACING_MS the time
//! between messages (default 5,000: the sensor's; 10 is a 100 msg/s stream, where a window and a
//! checkpoint come once per 3,000 and 500 messages). `stream-prep` makes the N messages and
//! nothing else: `stream` less `stream-prep` is the core's own cost.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use edgefilter::config::Config;
use edgefilter::mqtt::{read_publish, seal, write_publish, Received};
use edgefilter::session::{Action, Session};
use edgefilter::settings::AckMode;
use edgefilter::stats::Stats;
use edgefilter::topic::ModuleId;
use rumqttc::mqttbytes::v4::{Packet, PubAck, SubAck};
use serde_json::Value;

const SENSOR: &[u8] = br#"{"machine":{"temperature":31.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}"#;
const COLD: &[u8] = br#"{"machine":{"temperature":21.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}"#;
const TOPIC: &str = "devices/dev/modules/filter/inputs/input1/sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (stage, mode) = (args.get(1).map_or("core", String::as_str), args.get(2).map_or("confirmed", String::as_str));
    let n: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mode = AckMode::parse(mode).expect("confirmed or pipelined");
    let aggregates = args.get(4).map_or("none", String::as_str);
    let total = match stage {
        "core" => core(n, mode),
        "stream" => {
            let spacing = args.get(5).and_then(|v| v.parse::<u64>().ok()).unwrap_or(5_000);
            stream(n, mode, aggregates, Duration::from_millis(spacing))
        }
        "stream-prep" => stream_inputs(n, SENSOR_PERIOD).len(),
        "decode" => decode(n),
        "tls" => tls(n, mode),
        _ => {
            eprintln!("usage: session_insns core|decode|tls confirmed|pipelined N");
            std::process::exit(2);
        }
    };
    println!("{total}");
}

/// The wire form of input `i` (an alert for two of every three).
fn input(i: usize) -> BytesMut {
    let mut b = BytesMut::new();
    let pkid = (i % 60_000) as u16 + 1;
    write_publish(&mut b, TOPIC.as_bytes(), pkid, if i % 3 == 2 { COLD } else { SENSOR }, false).unwrap();
    b
}

fn puback(pkid: u16) -> BytesMut {
    let mut b = BytesMut::new();
    Packet::PubAck(PubAck::new(pkid)).write(&mut b, 16).unwrap();
    b
}

/// The session core, connected, its SUBSCRIBE answered.
fn connected(mode: AckMode) -> (Session, Instant) {
    connected_with(mode, None)
}

/// [`connected`], its wall clock at [`STREAM_START`], with the twin request answered with
/// `desired` when there is one.
fn connected_with(mode: AckMode, desired: Option<Value>) -> (Session, Instant) {
    let mut config = Config::local("hub", ModuleId::new("dev", "filter"), 1, b"key".to_vec());
    config.settings.ack_mode = mode;
    config.settings.report_interval_secs = 86_400;
    let now = Instant::now();
    let mut s = Session::new(&config, Arc::new(Stats::default()), now, 1);
    s.set_wall_clock(now, STREAM_START);
    while let Some(a) = s.poll(now) {
        match a {
            Action::Sign => s.on_token(now, Ok("token".into())),
            Action::Connect(_) => s.on_connected(now, true, None),
            other => panic!("{other:?}"),
        }
    }
    let mut tx = s.transmit(now).unwrap().clone();
    s.on_written(now);
    while !tx.is_empty() {
        match Packet::read(&mut tx, 1 << 16) {
            Ok(Packet::Subscribe(sub)) => {
                s.inbox().push_back(Received::Other(Packet::SubAck(SubAck::new(sub.pkid, vec![]))));
                s.on_read(now);
            }
            Ok(Packet::Publish(p)) if desired.is_some() => {
                let rid = edgefilter::topic::query_param(p.topic.rsplit('/').next().unwrap(), "$rid").unwrap();
                let body = serde_json::json!({"desired": desired, "reported": {}}).to_string();
                let mut b = BytesMut::new();
                write_publish(&mut b, edgefilter::topic::twin_response(200, rid).as_bytes(), 1, body.as_bytes(), false)
                    .unwrap();
                let mut m = read_publish(&mut b, 1 << 20).unwrap().unwrap();
                m.pkid = 0;
                s.inbox().push_back(Received::Publish(m));
                s.on_read(now);
            }
            _ => {}
        }
    }
    while s.poll(now).is_some() {}
    if let Some(tx) = s.transmit(now) {
        tx.clear();
    }
    s.on_written(now);
    (s, now)
}

/// Every event of one message through the core: the input read, the write, the alert's
/// confirmation read, the write of the input's acknowledgement (confirmed mode).
fn core(n: usize, mode: AckMode) -> usize {
    let (mut s, start) = connected(mode);
    let inputs: Vec<_> = (0..3).map(|i| read_publish(&mut input(i), 1 << 20).unwrap().unwrap()).collect();
    let mut written = 0;
    for i in 0..n {
        let now = start + Duration::from_micros(100 * i as u64);
        let mut m = inputs[i % 3].clone();
        m.pkid = (i % 60_000) as u16 + 1;
        s.inbox().push_back(Received::Publish(m));
        let turn = s.on_read(now);
        if turn.more {
            s.end_turn(now, 0);
        }
        let Some(tx) = s.transmit(now) else { continue };
        written += tx.len();
        // The alert's packet id, from its header (after the topic).
        let alert = (tx[0] >> 4 == 3).then(|| {
            let topic_len = u16::from_be_bytes([tx[3], tx[4]]) as usize;
            u16::from_be_bytes([tx[5 + topic_len], tx[6 + topic_len]])
        });
        s.on_written(now);
        if let Some(pkid) = alert {
            s.inbox().push_back(Received::Other(Packet::PubAck(PubAck::new(pkid))));
            s.on_read(now);
            if let Some(tx) = s.transmit(now) {
                written += tx.len();
                s.on_written(now);
            }
        }
        black_box(&mut s);
    }
    written
}

/// 2026-11-26T07:06:30Z, a 30-s window's start, in Unix ms.
const STREAM_START: i64 = 1_795_590_390_000;
/// The sensor's period.
const SENSOR_PERIOD: Duration = Duration::from_secs(5);

/// The aggregate set `name` (none, tumbling, tutorial), as the twin's `Aggregates`.
fn aggregate_set(name: &str) -> Option<Value> {
    let definition = match name {
        "none" => return None,
        "tumbling" => serde_json::json!({"T30s": {
            "path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 30},
            "functions": "avg,min,max,count", "output": "aggregates", "properties": {"MessageType": "Aggregate"}
        }}),
        "tutorial" => serde_json::json!({"ResetWhenHot": {
            "path": "machine.temperature", "window": {"kind": "tumbling", "seconds": 30}, "functions": "avg",
            "time": {"path": "timeCreated"}, "having": {"function": "avg", "op": ">", "value": 70},
            "output": "alert", "body": {"command": "reset"}
        }}),
        other => panic!("aggregates: none, tumbling or tutorial, not {other}"),
    };
    Some(definition)
}

/// N sensor messages 5 s apart, each with its sequence number and time; two of three alert, and
/// in the tutorial's terms every other window is hot (its average above 70).
fn stream_inputs(n: usize, spacing: Duration) -> Vec<edgefilter::mqtt::Message> {
    (0..n)
        .map(|i| {
            let at = STREAM_START + 100 + (spacing.as_millis() as i64) * i as i64;
            let t = if i % 3 == 2 { 21.13 } else if (i / 6) % 2 == 0 { 31.13 } else { 100.5 };
            let body = format!(
                r#"{{"machine":{{"temperature":{t},"pressure":2.15}},"ambient":{{"temperature":21,"humidity":25}},"timeCreated":"{}"}}"#,
                edgefilter::aggregate::time::format_iso(at)
            );
            let topic = TOPIC.replacen("sequenceNumber=1", &format!("sequenceNumber={}", i + 1), 1);
            let mut b = BytesMut::new();
            write_publish(&mut b, topic.as_bytes(), (i % 60_000) as u16 + 1, body.as_bytes(), false).unwrap();
            read_publish(&mut b, 1 << 20).unwrap().unwrap()
        })
        .collect()
}

/// The packet ids of the publishes in `tx`, from their headers (QoS 1: after the topic).
fn publish_ids(tx: &[u8], out: &mut Vec<u16>) {
    let mut at = 0;
    while at < tx.len() {
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        loop {
            len |= usize::from(tx[i] & 0x7f) << shift;
            shift += 7;
            i += 1;
            if tx[i - 1] & 0x80 == 0 {
                break;
            }
        }
        if tx[at] >> 4 == 3 {
            let topic_len = u16::from_be_bytes([tx[i], tx[i + 1]]) as usize;
            out.push(u16::from_be_bytes([tx[i + 2 + topic_len], tx[i + 3 + topic_len]]));
        }
        at = i + len;
    }
}

/// [`core`] as the sensor sends (see the module docs), with `aggregates`; every timer fired and
/// every publish confirmed. Returns the bytes written.
fn stream(n: usize, mode: AckMode, aggregates: &str, spacing: Duration) -> usize {
    let inputs = stream_inputs(n, spacing);
    let desired = serde_json::json!({ "Aggregates": aggregate_set(aggregates) });
    let (mut s, start) = connected_with(mode, Some(desired));
    assert_eq!(s.aggregator().is_some(), aggregates != "none");
    let (mut written, mut publishes) = (0, Vec::new());
    for (i, m) in inputs.into_iter().enumerate() {
        let now = start + spacing * i as u32;
        if s.deadline().is_some_and(|at| at <= now) {
            s.on_timer(now);
        }
        // The checkpoints asked for are written by the shell's thread: not counted here.
        while s.poll(now).is_some() {}
        s.inbox().push_back(Received::Publish(m));
        loop {
            let turn = s.on_read(now);
            if turn.more {
                s.end_turn(now, 0);
            }
            let Some(tx) = s.transmit(now) else { break };
            written += tx.len();
            publish_ids(tx, &mut publishes);
            s.on_written(now);
            if publishes.is_empty() {
                break;
            }
            for pkid in publishes.drain(..) {
                s.inbox().push_back(Received::Other(Packet::PubAck(PubAck::new(pkid))));
            }
        }
        black_box(&mut s);
    }
    written + s.emits_pending()
}

/// Decoding what one message brings: the input, and for an alert its PUBACK.
fn decode(n: usize) -> usize {
    let wires: Vec<BytesMut> = (0..3).map(input).collect();
    let ack = puback(7);
    let mut total = 0;
    for i in 0..n {
        let mut w = black_box(wires[i % 3].clone());
        total += read_publish(&mut w, 1 << 20).unwrap().unwrap().payload.len();
        if i % 3 != 2 {
            let mut a = black_box(ack.clone());
            total += matches!(Packet::read(&mut a, 16), Ok(Packet::PubAck(_))) as usize;
        }
    }
    total
}

/// Sealing what the module writes for one message and opening what it reads, both directions
/// through an in-memory rustls pair (so the figure is twice one side's).
fn tls(n: usize, mode: AckMode) -> usize {
    let (mut c, mut srv) = pair();
    let wires: Vec<BytesMut> = (0..3).map(input).collect();
    let mut alert = BytesMut::new();
    write_publish(&mut alert, b"devices/dev/modules/filter/messages/events/sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor&%24.on=output1&MessageType=Alert", 9, SENSOR, false).unwrap();
    let (mut sealed, mut total) = (Vec::new(), 0);
    for i in 0..n {
        let alerts = i % 3 != 2;
        // Hub -> module: the input (and, for an alert, later its PUBACK).
        let mut plain = wires[i % 3].clone();
        if alerts {
            plain.extend_from_slice(&puback(9));
        }
        total += through(&mut srv, &mut c, &mut plain, &mut sealed);
        // Module -> hub: the alert and the input's PUBACK (one write pipelined, two confirmed).
        let mut out = if alerts { alert.clone() } else { BytesMut::new() };
        if mode == AckMode::Pipelined || !alerts {
            out.extend_from_slice(&puback(1));
            total += through_client(&mut c, &mut srv, &mut out, &mut sealed);
        } else {
            total += through_client(&mut c, &mut srv, &mut out, &mut sealed);
            let mut ack = puback(1);
            total += through_client(&mut c, &mut srv, &mut ack, &mut sealed);
        }
    }
    total
}

fn through(
    srv: &mut rustls::ServerConnection,
    c: &mut rustls::ClientConnection,
    plain: &mut BytesMut,
    sealed: &mut Vec<u8>,
) -> usize {
    srv.writer().write_all(plain).unwrap();
    sealed.clear();
    while srv.wants_write() {
        srv.write_tls(sealed).unwrap();
    }
    open_client(c, sealed)
}

fn through_client(
    c: &mut rustls::ClientConnection,
    srv: &mut rustls::ServerConnection,
    plain: &mut BytesMut,
    sealed: &mut Vec<u8>,
) -> usize {
    seal(c, plain, sealed).unwrap();
    let mut records = &sealed[..];
    let mut got = 0;
    while !records.is_empty() {
        srv.read_tls(&mut records).unwrap();
        let st = srv.process_new_packets().unwrap();
        let mut buf = vec![0; st.plaintext_bytes_to_read()];
        srv.reader().read_exact(&mut buf).unwrap();
        got += buf.len();
    }
    got
}

fn open_client(c: &mut rustls::ClientConnection, sealed: &[u8]) -> usize {
    let mut records = sealed;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while !records.is_empty() {
        c.read_tls(&mut records).unwrap();
        let st = c.process_new_packets().unwrap();
        let k = st.plaintext_bytes_to_read();
        c.reader().read_exact(&mut buf[..k]).unwrap();
        got += k;
    }
    got
}

/// A client (the module's provider and suites) and a server for `localhost`, handshake done.
fn pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .unwrap();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64(&der));
    let client = edgefilter::module::tls_config(Some(pem.as_bytes())).unwrap();
    let mut c = rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
    while c.is_handshaking() || s.is_handshaking() {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        s.read_tls(&mut &wire[..]).unwrap();
        s.process_new_packets().unwrap();
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        c.read_tls(&mut &wire[..]).unwrap();
        c.process_new_packets().unwrap();
    }
    (c, s)
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
