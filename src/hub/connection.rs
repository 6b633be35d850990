//! One client's connection to the embedded hub: CONNECT, then the loop that sends what its
//! session may send, answers its packets, owes it late PUBACKs and watches its keep-alive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use log::{debug, info, warn};
use rumqttc::mqttbytes::{self, valid_filter, valid_topic, QoS};
use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, SubAck, SubscribeReasonCode, UnsubAck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::acks::{AckDelay, DelayedAcks};
use super::{write, Hub, HubEvent, BROKER_WINDOW, MAX_PACKET};

impl Hub {
    /// Serves one accepted connection until it ends.
    pub(super) async fn connection(self: Arc<Self>, mut stream: TcpStream) -> Result<(), String> {
        stream.set_nodelay(true).ok();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let connect = match tokio::time::timeout(Duration::from_secs(60), read_packet(&mut stream, &mut buf)).await {
            Ok(Ok(Packet::Connect(c))) => c,
            Ok(Ok(_)) => return Err("first packet is not CONNECT".into()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("no CONNECT within 60 s".into()),
        };
        let mut out = BytesMut::new();
        let login = connect.login.as_ref().map(|l| (l.username.as_str(), l.password.as_str()));
        let (code, module) = self.authenticate(&connect.client_id, login);
        if code != ConnectReturnCode::Success {
            warn!("hub: refused {:?}: {code:?}", connect.client_id);
            ConnAck::new(code, false).write(&mut out).map_err(|e| e.to_string())?;
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            return Ok(());
        }
        let notify = Arc::new(Notify::new());
        let window = if module { self.config.delivery.inflight.max(1) } else { BROKER_WINDOW };
        let (me, client_id, session_present) = self.open_session(&connect, window, &notify);
        ConnAck::new(ConnectReturnCode::Success, session_present).write(&mut out).map_err(|e| e.to_string())?;
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let anonymous = connect.login.is_none();
        if anonymous {
            debug!("hub: {client_id} connected (session present: {session_present})");
        } else {
            info!("hub: {client_id} connected (session present: {session_present})");
        }
        self.emit(HubEvent::Connected { client_id: client_id.clone() });

        let delay = if module { self.config.delivery.ack_delay } else { AckDelay::NONE };
        let mut client = Client {
            id: &client_id,
            me,
            notify: &notify,
            keep_alive: (connect.keep_alive > 0).then(|| Duration::from_secs(u64::from(connect.keep_alive)) * 3 / 2),
            acks: DelayedAcks::new(delay, me.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            incoming_qos2: Vec::new(),
        };
        let result = self.clone().serve_client(&mut stream, &mut buf, &mut client).await;

        let mut state = self.lock();
        if let Some(session) = state.sessions.get_mut(&client_id) {
            if session.held_by(me) {
                session.connection = None;
                if session.clean {
                    state.sessions.remove(&client_id);
                }
            }
        }
        drop(state);
        if anonymous {
            debug!("hub: {client_id} disconnected");
        } else {
            info!("hub: {client_id} disconnected");
        }
        self.emit(HubEvent::Disconnected { client_id });
        result
    }

    /// Numbers the connection, names an anonymous client (under the same lock, so that no two get
    /// one name, nor a name a connected client chose) and takes over or opens its session.
    /// Returns the connection's number, the client id and whether a session was present.
    fn open_session(&self, connect: &rumqttc::Connect, window: usize, notify: &Arc<Notify>) -> (u64, String, bool) {
        let mut state = self.lock();
        state.next_connection += 1;
        let me = state.next_connection;
        let client_id = if connect.client_id.is_empty() && connect.clean_session {
            (me..).map(|n| format!("anonymous-{n}")).find(|id| !state.sessions.contains_key(id)).unwrap_or_default()
        } else {
            connect.client_id.clone()
        };
        if connect.clean_session {
            state.sessions.remove(&client_id);
        }
        let present = state.sessions.contains_key(&client_id);
        let session = state.sessions.entry(client_id.clone()).or_default();
        if let Some((_, old)) = session.connection.take() {
            old.notify_one(); // the old connection sees it is no longer current and closes
        }
        session.clean = connect.clean_session;
        session.connection = Some((me, notify.clone()));
        session.withheld.clear(); // the old connection's packet ids mean nothing now
        session.resume(window);
        (me, client_id, present)
    }

    /// Serves one connection until the client leaves, fails, falls silent past its keep-alive, or
    /// a newer connection takes its session.
    async fn serve_client(
        self: Arc<Self>,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        client: &mut Client<'_>,
    ) -> Result<(), String> {
        // MQTT 3.1.1 §3.1.2.10: the client is gone once nothing came from it for 1.5 × keep-alive.
        // Only what the client sends moves this deadline, never the hub's own wake-ups.
        let mut silent_since = Instant::now();
        loop {
            let mut out = BytesMut::new();
            if !self.pump(client.id, client.me, &mut out)? {
                return Ok(()); // taken over by a newer connection
            }
            for pkid in client.acks.take_due(Instant::now()) {
                write(&mut out, Packet::PubAck(PubAck::new(pkid)))?;
            }
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
                continue;
            }
            let ack_due = client.acks.next_due();
            let silent_until = client.keep_alive.map(|k| silent_since + k);
            let packet = tokio::select! {
                p = read_packet(stream, buf) => p?,
                _ = client.notify.notified() => continue,
                _ = sleep_until(ack_due), if ack_due.is_some() => continue,
                _ = sleep_until(silent_until), if silent_until.is_some() => return Err("keep-alive expired".into()),
            };
            silent_since = Instant::now();
            let mut out = BytesMut::new();
            let go_on = self.handle(client, packet, &mut out)?;
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
            }
            if !go_on {
                return Ok(());
            }
        }
    }

    /// One packet from the client; what to answer goes into `out`. Returns false on DISCONNECT.
    fn handle(&self, client: &mut Client<'_>, packet: Packet, out: &mut BytesMut) -> Result<bool, String> {
        match packet {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce if self.withholding(client.id, p.pkid) => {}
                    QoS::AtLeastOnce if client.acks.is_delaying() => client.acks.push(Instant::now(), p.pkid),
                    QoS::AtLeastOnce => write(out, Packet::PubAck(PubAck::new(p.pkid)))?,
                    QoS::ExactlyOnce => {
                        write(out, Packet::PubRec(PubRec::new(p.pkid)))?;
                        if client.incoming_qos2.contains(&p.pkid) {
                            return Ok(true); // a duplicate: routed already
                        }
                        client.incoming_qos2.push(p.pkid);
                    }
                }
                if !valid_topic(&p.topic) {
                    return Err(format!("invalid topic {:?}", p.topic));
                }
                self.publish(client.id, p.topic, p.payload, p.qos);
            }
            Packet::PubRel(r) => {
                client.incoming_qos2.retain(|id| *id != r.pkid);
                write(out, Packet::PubComp(PubComp::new(r.pkid)))?;
            }
            Packet::PubAck(a) => self.acknowledged(client, a.pkid),
            // We never send QoS 2, but answer politely.
            Packet::PubRec(r) => write(out, Packet::PubRel(rumqttc::PubRel::new(r.pkid)))?,
            Packet::PubComp(_) | Packet::PingResp => {}
            Packet::Subscribe(s) => {
                let mut codes = Vec::new();
                let mut state = self.lock();
                let session = state.sessions.get_mut(client.id).ok_or("session vanished")?;
                for f in s.filters {
                    if !valid_filter(&f.path) {
                        codes.push(SubscribeReasonCode::Failure);
                        continue;
                    }
                    let qos = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                    session.subscriptions.retain(|(p, _)| *p != f.path);
                    session.subscriptions.push((f.path, qos));
                    codes.push(SubscribeReasonCode::Success(qos));
                }
                drop(state);
                write(out, Packet::SubAck(SubAck::new(s.pkid, codes)))?;
            }
            Packet::Unsubscribe(u) => {
                if let Some(s) = self.lock().sessions.get_mut(client.id) {
                    s.subscriptions.retain(|(p, _)| !u.topics.contains(p));
                }
                write(out, Packet::UnsubAck(UnsubAck::new(u.pkid)))?;
            }
            Packet::PingReq => write(out, Packet::PingResp)?,
            Packet::Disconnect => return Ok(false),
            other => return Err(format!("unexpected packet {other:?}")),
        }
        Ok(true)
    }

    /// The client's PUBACK: taken only in the order of the hub's publishes, as edgeHub's protocol
    /// gateway takes it, and only on the session's live connection (one a newer connection has
    /// taken over answers nothing now); any other is ignored, counted and logged.
    fn acknowledged(&self, client: &Client<'_>, pkid: u16) {
        let mut state = self.lock();
        let Some(session) = state.sessions.get_mut(client.id).filter(|s| s.held_by(client.me)) else { return };
        let Err(expected) = session.acknowledged(pkid) else { return };
        state.out_of_order_acks += 1;
        drop(state);
        match expected {
            Some(e) => {
                warn!("hub: {}: PUBACK #{pkid} came while #{e} was expected: ignored, as edgeHub ignores it", client.id)
            }
            None => warn!("hub: {}: PUBACK #{pkid} came with nothing in flight: ignored", client.id),
        }
    }

    /// Moves queued messages into flight (up to the session's window) and encodes them into `out`.
    /// Returns false when this connection is no longer the session's.
    fn pump(&self, client_id: &str, me: u64, out: &mut BytesMut) -> Result<bool, String> {
        let mut state = self.lock();
        let releasing = state.withhold_acks_from.is_none();
        let Some(session) = state.sessions.get_mut(client_id) else { return Ok(false) };
        if !session.held_by(me) {
            return Ok(false);
        }
        if releasing {
            for pkid in session.withheld.drain(..) {
                write(out, Packet::PubAck(PubAck::new(pkid)))?;
            }
        }
        session.send_ready(out)?;
        Ok(true)
    }

    /// Whether to hold back the acknowledgement of `client_id`'s publish `pkid` (and hold it).
    fn withholding(&self, client_id: &str, pkid: u16) -> bool {
        let mut state = self.lock();
        if state.withhold_acks_from.as_deref() != Some(client_id) {
            return false;
        }
        if let Some(session) = state.sessions.get_mut(client_id) {
            session.withheld.push(pkid);
        }
        true
    }
}

/// One connection's own state, kept by its task.
struct Client<'a> {
    id: &'a str,
    /// The connection's number: a session taken over by a newer one is no longer this one's.
    me: u64,
    notify: &'a Notify,
    /// 1.5 × the client's keep-alive, when it set one.
    keep_alive: Option<Duration>,
    /// The PUBACKs owed to a module, when the hub acknowledges late.
    acks: DelayedAcks,
    /// QoS 2 publishes received and not yet released.
    incoming_qos2: Vec<u16>,
}

/// Sleeps until `at` (a `select!` arm guards against None).
async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet, String> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("malformed packet: {e:?}")),
        }
        buf.reserve(8 * 1024);
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
    }
}
