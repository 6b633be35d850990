//! One message in edgeHub's delivery shape (an input, then, for an alert, the hub's PUBACK of it),
//! run N times through the parts of the module, for `tools/arm-insn-count` to count what each part
//! costs on armv7 apart from the event loop and the system calls. `scripts/arm-session-insns.sh`
//! runs every stage; the whole module under a live stream is `scripts/arm-streaming-insns.sh`.
//!
//!     session_insns STAGE MODE N
//!
//! STAGE: `core` (the session core: every event of one message, the packets already decoded),
//! `decode` (decoding the packets one message brings: the input and the alert's PUBACK), `tls`
//! (sealing what the module writes for one message and opening what it reads, with an in-memory
//! rustls server as the hub: the figure is half the pair's, the server doing the mirror work).
//! MODE: `confirmed` or `pipelined`. Two of every three messages alert, as in the streaming script.

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

const SENSOR: &[u8] = br#"{"machine":{"temperature":31.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}"#;
const COLD: &[u8] = br#"{"machine":{"temperature":21.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}"#;
const TOPIC: &str = "devices/dev/modules/filter/inputs/input1/sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (stage, mode) = (args.get(1).map_or("core", String::as_str), args.get(2).map_or("confirmed", String::as_str));
    let n: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mode = AckMode::parse(mode).expect("confirmed or pipelined");
    let total = match stage {
        "core" => core(n, mode),
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
    let mut config = Config::local("hub", ModuleId::new("dev", "filter"), 1, b"key".to_vec());
    config.settings.ack_mode = mode;
    config.settings.report_interval_secs = 86_400;
    let now = Instant::now();
    let mut s = Session::new(&config, Arc::new(Stats::default()), now, 1);
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
        if let Ok(Packet::Subscribe(sub)) = Packet::read(&mut tx, 1 << 16) {
            s.inbox().push(Received::Other(Packet::SubAck(SubAck::new(sub.pkid, vec![]))));
            s.on_read(now);
        }
    }
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
        s.inbox().push(Received::Publish(m));
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
            s.inbox().push(Received::Other(Packet::PubAck(PubAck::new(pkid))));
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
