//! The embedded hub's delivery, seen from a raw MQTT client on the wire: one message in flight to a
//! module identity, as edgeHub (docs/protocol.md, "Delivery to a module"), wider only when asked;
//! late acknowledgements of a module's publishes; and two defects of its connection task (a
//! keep-alive its own wake-ups reset, anonymous clients given one id).

use std::time::{Duration, Instant};

use crate::common::*;
use bytes::BytesMut;
use edgefilter::hub::{AckDelay, Delivery};
use edgefilter::topic::ModuleId;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The module's inputs, where the hub routes the sensor's `temperatureOutput`.
const INPUTS: &str = "devices/dev/modules/filter/inputs/#";
/// How long "nothing more arrives" is watched for, once everything is known to be queued.
const QUIET: Duration = Duration::from_millis(300);

/// An MQTT 3.1.1 client with nothing automatic: it acknowledges only when told.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    next_pkid: u16,
}

impl Raw {
    /// Connects as the module identity `dev/filter` with a valid token.
    async fn module(port: u16, clean: bool) -> Raw {
        let id = ModuleId::new(DEVICE, MODULE);
        let key = edgefilter::sas::decode_key(KEY_B64).unwrap();
        let token = edgefilter::sas::token_from_key(&key, HUB, &id, edgefilter::module::now_secs() + 3600);
        let mut connect = Connect::new(id.client_id());
        connect.set_login(edgefilter::module::username(HUB, &id), token);
        connect.clean_session = clean;
        Raw::connect(port, connect).await
    }

    /// Connects without credentials as `client_id` (empty: the hub names it).
    async fn anonymous(port: u16, client_id: &str, keep_alive: u16) -> Raw {
        let mut connect = Connect::new(client_id);
        connect.keep_alive = keep_alive;
        Raw::connect(port, connect).await
    }

    async fn connect(port: u16, connect: Connect) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut raw = Raw { stream, buf: BytesMut::new(), next_pkid: 0 };
        raw.send(Packet::Connect(connect)).await;
        match raw.next(Duration::from_secs(5)).await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success),
            other => panic!("no CONNACK: {other:?}"),
        }
        raw
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn subscribe(&mut self, filter: &str) {
        let mut s = Subscribe::new(filter, QoS::AtLeastOnce);
        s.pkid = self.pkid();
        self.send(Packet::Subscribe(s)).await;
        match self.next(Duration::from_secs(5)).await {
            Some(Packet::SubAck(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }

    /// Publishes at QoS 1; returns its packet id (the PUBACK is read like any packet).
    async fn publish(&mut self, topic: &str, body: &str) -> u16 {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, body);
        p.pkid = self.pkid();
        self.send(Packet::Publish(p.clone())).await;
        p.pkid
    }

    async fn puback(&mut self, pkid: u16) {
        self.send(Packet::PubAck(PubAck::new(pkid))).await;
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid += 1;
        self.next_pkid
    }

    /// The next packet, or None after `wait`; panics if the hub closed the connection.
    async fn next(&mut self, wait: Duration) -> Option<Packet> {
        match tokio::time::timeout(wait, self.read()).await {
            Ok(Some(p)) => Some(p),
            Ok(None) => panic!("the hub closed the connection"),
            Err(_) => None,
        }
    }

    /// The next packet, or None once the hub closed the connection.
    async fn read(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("malformed packet from the hub: {e:?}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next PUBLISH (skipping nothing else: any other packet fails the test), or None.
    async fn next_publish(&mut self, wait: Duration) -> Option<Publish> {
        match self.next(wait).await? {
            Packet::Publish(p) => Some(p),
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
}

/// The sensor's message `seq`, as the hub routes it to the module's `input1`.
fn sensor_topic(seq: u64) -> String {
    format!("devices/{DEVICE}/modules/sensor/messages/events/%24.on=temperatureOutput&sequenceNumber={seq}")
}

fn sequence(p: &Publish) -> u64 {
    let bag = p.topic.split_once("/inputs/input1/").expect("an input").1;
    let pairs = edgefilter::topic::parse_bag(bag).unwrap();
    pairs.iter().find(|(k, _)| k == "sequenceNumber").unwrap().1.parse().unwrap()
}

/// Publishes messages `seqs` from the sensor and waits until a plain subscriber to the module's
/// inputs has seen them all: from then on the hub has queued them for the module too.
async fn route(port: u16, seqs: std::ops::RangeInclusive<u64>) {
    let mut watch = Peer::connect(port, "", true, &[INPUTS]).await;
    let sensor = Peer::connect(port, "sensor-anon", true, &[]).await;
    for seq in seqs.clone() {
        sensor.publish(&sensor_topic(seq), format!(r#"{{"seq":{seq}}}"#)).await;
    }
    for seq in seqs {
        let p = watch.next(Duration::from_secs(5)).await.expect("routed");
        assert!(p.topic.contains(&format!("sequenceNumber={seq}")), "{}", p.topic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_gets_one_message_at_a_time_each_after_its_puback_in_order() {
    let (_hub, port) = embedded_hub(serde_json::json!({})).await;
    let mut module = Raw::module(port, false).await;
    module.subscribe(INPUTS).await;
    route(port, 1..=5).await;
    for seq in 1..=5 {
        let p = module.next_publish(Duration::from_secs(5)).await.expect("the next message after the PUBACK");
        assert_eq!(sequence(&p), seq, "in the order routed");
        assert!(!p.dup);
        assert!(module.next(QUIET).await.is_none(), "nothing more while message {seq} awaits its PUBACK");
        module.puback(p.pkid).await;
    }
    assert!(module.next(QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_widens_when_asked() {
    let (_hub, port) = embedded_hub_with(serde_json::json!({}), Delivery { inflight: 3, ..Default::default() }).await;
    let mut module = Raw::module(port, false).await;
    module.subscribe(INPUTS).await;
    route(port, 1..=5).await;
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(module.next_publish(Duration::from_secs(5)).await.expect("three in flight"));
    }
    assert_eq!(first.iter().map(sequence).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(module.next(QUIET).await.is_none(), "no fourth before a PUBACK");
    module.puback(first[0].pkid).await;
    let p = module.next_publish(Duration::from_secs(5)).await.expect("a slot freed");
    assert_eq!(sequence(&p), 4);
    assert!(module.next(QUIET).await.is_none());
}

/// As edgeHub's protocol gateway: a PUBACK for any but the oldest message in flight is ignored
/// (counted, logged), so that message stays in flight; the hub takes it once the older one's came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_out_of_the_order_of_the_publishes_is_ignored() {
    let (hub, port) = embedded_hub_with(serde_json::json!({}), Delivery { inflight: 2, ..Default::default() }).await;
    let mut module = Raw::module(port, false).await;
    module.subscribe(INPUTS).await;
    route(port, 1..=4).await;
    let one = module.next_publish(Duration::from_secs(5)).await.unwrap();
    let two = module.next_publish(Duration::from_secs(5)).await.unwrap();
    assert_eq!((sequence(&one), sequence(&two)), (1, 2));
    module.puback(two.pkid).await;
    assert!(module.next(QUIET).await.is_none(), "ignored: both still in flight, no third message");
    assert_eq!(hub.out_of_order_acks(), 1);
    module.puback(one.pkid).await;
    let three = module.next_publish(Duration::from_secs(5)).await.expect("one slot freed");
    assert_eq!(sequence(&three), 3);
    assert!(module.next(QUIET).await.is_none(), "two is still in flight: its PUBACK was ignored");
    module.puback(two.pkid).await;
    assert_eq!(sequence(&module.next_publish(Duration::from_secs(5)).await.expect("taken now")), 4);
    assert_eq!(hub.out_of_order_acks(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_unacknowledged_message_comes_again_still_alone() {
    let (_hub, port) = embedded_hub(serde_json::json!({})).await;
    let mut module = Raw::module(port, false).await;
    module.subscribe(INPUTS).await;
    route(port, 1..=3).await;
    let p = module.next_publish(Duration::from_secs(5)).await.unwrap();
    assert_eq!(sequence(&p), 1);
    drop(module); // gone without acknowledging

    let mut module = Raw::module(port, false).await;
    let again = module.next_publish(Duration::from_secs(5)).await.expect("redelivered");
    assert_eq!((sequence(&again), again.dup), (1, true));
    assert!(module.next(QUIET).await.is_none(), "the backlog drains one at a time too");
    module.puback(again.pkid).await;
    for seq in 2..=3 {
        let p = module.next_publish(Duration::from_secs(5)).await.unwrap();
        assert_eq!(sequence(&p), seq);
        assert!(module.next(QUIET).await.is_none());
        module.puback(p.pkid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_acknowledges_a_module_late_in_order_without_stalling_the_connection() {
    let delay = AckDelay::parse("1000-1200").unwrap();
    let (_hub, port) =
        embedded_hub_with(serde_json::json!({}), Delivery { ack_delay: delay, ..Default::default() }).await;
    let mut module = Raw::module(port, true).await;
    let started = Instant::now();
    let mut sent = Vec::new();
    for n in 0..10 {
        sent.push(module.publish("devices/dev/modules/filter/messages/events/%24.on=output1", &n.to_string()).await);
    }
    // While the PUBACKs are owed the hub still serves the connection: the ping is answered
    // before the last of them (a hub that held the connection would answer it after all ten;
    // on a loaded machine the first PUBACKs may come before it, so only the last is asked).
    module.send(Packet::PingReq).await;
    let mut acked = Vec::new();
    let mut ponged = false;
    while acked.len() < sent.len() {
        match module.next(Duration::from_secs(5)).await {
            Some(Packet::PingResp) if !ponged => ponged = true,
            Some(Packet::PubAck(a)) => {
                if acked.is_empty() {
                    assert!(started.elapsed() >= delay.min, "the first PUBACK came {:?} after", started.elapsed());
                }
                acked.push(a.pkid);
                assert!(ponged || acked.len() < sent.len(), "the ping waited for every PUBACK owed");
            }
            other => panic!("expected PUBACKs and one PINGRESP, got {other:?}"),
        }
    }
    assert_eq!(acked, sent, "in the order of the publishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_is_acknowledged_at_once() {
    let delay = AckDelay::parse("5000").unwrap();
    let (_hub, port) =
        embedded_hub_with(serde_json::json!({}), Delivery { ack_delay: delay, ..Default::default() }).await;
    let mut plain = Raw::anonymous(port, "tool", 30).await;
    let pkid = plain.publish("plant/1", "x").await;
    assert!(matches!(plain.next(Duration::from_secs(2)).await, Some(Packet::PubAck(a)) if a.pkid == pkid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_its_keep_alive_while_messages_keep_coming() {
    let (_hub, port) = embedded_hub(serde_json::json!({})).await;
    // Keep-alive 1 s: the hub must drop it 1.5 s after the last packet it sent (its SUBSCRIBE).
    let mut dead = Raw::anonymous(port, "dead", 1).await;
    let subscribed = Instant::now(); // before the hub can have read the SUBSCRIBE
    dead.subscribe("plant/#").await;
    let sensor = Peer::connect(port, "feeder", true, &[]).await;
    let feeding = tokio::spawn(async move {
        loop {
            sensor.publish("plant/1", "x").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // It reads (the messages pile up unacknowledged) but never sends a packet.
    let closed = tokio::time::timeout(Duration::from_secs(10), async { while dead.read().await.is_some() {} }).await;
    feeding.abort();
    assert!(closed.is_ok(), "still connected 10 s after falling silent with a 1 s keep-alive");
    assert!(subscribed.elapsed() >= Duration::from_millis(1500), "not before 1.5 × keep-alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_client_never_gets_the_id_of_another() {
    let (_hub, port) = embedded_hub(serde_json::json!({})).await;
    // A client that named itself as the hub names its first anonymous client…
    let mut named = Raw::anonymous(port, "anonymous-1", 30).await;
    named.subscribe("x/#").await;
    // …then clients without an id, each with its own subscription.
    let mut nameless = Vec::new();
    for i in 0..3 {
        let mut c = Raw::anonymous(port, "", 30).await;
        c.subscribe(&format!("y{i}/#")).await;
        nameless.push(c);
    }
    let mut publisher = Raw::anonymous(port, "publisher", 30).await;
    for topic in ["x/1", "y0/1", "y1/1", "y2/1"] {
        publisher.publish(topic, topic).await;
    }
    for (name, client) in std::iter::once(&mut named).chain(nameless.iter_mut()).enumerate() {
        let p = client.next_publish(Duration::from_secs(5)).await;
        assert!(p.is_some(), "client {name} lost its session to another");
    }
}
