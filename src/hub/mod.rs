//! The embedded hub: a small MQTT 3.1.1 broker that behaves like edgeHub towards its clients.
//!
//! rumqttd cannot play edgeHub (it refuses `/` in client ids and `$` subscriptions), so this hub
//! is built on rumqttc's MQTT codec (`mqttbytes::v4`). It is a plain broker for any client
//! (mosquitto_pub/sub, the perf tool: QoS 0 and 1, wildcards, persistent sessions; QoS 2 is
//! accepted inbound and delivered as QoS 1; no retained messages or wills), plus what edgeHub adds
//! for module identities (contract §1–3):
//!
//! - a client whose username is a module's (`{hub}/{device}/{module}/?api-version=…`) must use
//!   the client id `{device}/{module}` and a valid SAS token for a known module key;
//! - `$iothub/twin/GET`, `$iothub/twin/PATCH/properties/reported` are answered on
//!   `$iothub/twin/res/{status}/?$rid=…`, desired changes are pushed on
//!   `$iothub/twin/PATCH/properties/desired/?$version=…`;
//! - module output messages are routed ([`routes`]) to module inputs, with edgeHub's property bag,
//!   and to the upstream, which local mode's console shows.
//!
//! Local tooling topics (not edgeHub's): publishing a JSON patch to `local/twin/{module}/desired`
//! changes a module's desired properties; the hub publishes each module's reported properties on
//! `local/twin/{module}/reported` and upstream messages on `local/upstream/{module}/{output}`.

pub mod routes;
pub mod twin;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use log::{debug, info, warn};
use rumqttc::mqttbytes::{self, valid_filter, valid_topic, QoS};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use crate::topic::{self, ModuleId};
use routes::{Route, Sink};
use twin::Twin;

/// What edgeHub accepts in one packet (256 KiB messages plus topic and header).
const MAX_PACKET: usize = crate::limits::MAX_PACKET_SIZE;
/// Unacknowledged QoS 1 messages sent to a client at most: a bounded window like a real broker's.
/// (edgeHub's `MaxPendingInboundAcknowledgements`, 16, is the other direction: how many of a
/// client's publishes it reads ahead of processing them.)
pub const INFLIGHT_WINDOW: usize = 16;
/// Messages kept for one client before the oldest are dropped.
const QUEUE_LIMIT: usize = 100_000;

/// The hub's identities, routes and twins.
#[derive(Clone, Debug)]
pub struct HubConfig {
    pub hub_hostname: String,
    pub device_id: String,
    /// Module id → shared access key.
    pub keys: HashMap<String, Vec<u8>>,
    pub routes: Vec<Route>,
    /// Module id → initial desired properties.
    pub desired: HashMap<String, Map<String, Value>>,
}

/// What the hub tells the console.
#[derive(Debug)]
pub enum HubEvent {
    Upstream { module: String, output: Option<String>, properties: Vec<(String, String)>, body: Bytes },
    Reported { module: String, reported: Value },
    Connected { client_id: String },
    Disconnected { client_id: String },
}

/// A running hub's shared state.
pub struct Hub {
    config: HubConfig,
    state: Mutex<State>,
    events: Option<mpsc::UnboundedSender<HubEvent>>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    twins: HashMap<String, Twin>,
    next_connection: u64,
    /// Messages dropped because a client's queue was full.
    overflowed: u64,
    /// Fault injection: the client whose publishes are not acknowledged for now.
    withhold_acks_from: Option<String>,
}

#[derive(Clone)]
struct Message {
    topic: String,
    payload: Bytes,
    qos: QoS,
    dup: bool,
}

#[derive(Default)]
struct Session {
    subscriptions: Vec<(String, QoS)>,
    queue: VecDeque<Message>,
    inflight: BTreeMap<u16, Message>,
    last_pkid: u16,
    clean: bool,
    /// The live connection: its number and how to wake it.
    connection: Option<(u64, Arc<Notify>)>,
    /// Acknowledgements held back by fault injection, sent on release.
    withheld: Vec<u16>,
}

impl Session {
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    fn granted(&self, topic: &str) -> Option<QoS> {
        self.subscriptions.iter().filter(|(f, _)| filter_matches(f, topic)).map(|(_, q)| *q).max_by_key(|q| *q as u8)
    }
}

/// A module username: `{hub}/{device}/{module}/?api-version=…` (edgeHub's parser: four `/`
/// segments, the last a query with a non-empty `api-version`).
pub fn parse_module_username(username: &str) -> Result<(String, ModuleId), String> {
    let parts: Vec<&str> = username.splitn(4, '/').collect();
    let [hub, device, module, query] = parts.as_slice() else {
        return Err("username is not {hub}/{device}/{module}/?api-version=…".into());
    };
    let query = query.strip_prefix('?').ok_or("username has no ?api-version=…")?;
    match topic::query_param(query, "api-version") {
        Some(v) if !v.is_empty() => {}
        _ => return Err("username has no api-version".into()),
    }
    if hub.is_empty() || device.is_empty() || module.is_empty() {
        return Err("username has an empty segment".into());
    }
    Ok((hub.to_string(), ModuleId::new(*device, *module)))
}

impl Hub {
    pub fn new(config: HubConfig, events: Option<mpsc::UnboundedSender<HubEvent>>) -> Arc<Hub> {
        let twins = config
            .keys
            .keys()
            .map(|m| (m.clone(), Twin::with_desired(config.desired.get(m).cloned().unwrap_or_default())))
            .collect();
        Arc::new(Hub { config, state: Mutex::new(State { twins, ..State::default() }), events })
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let hub = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = hub.connection(stream).await {
                            debug!("hub: connection from {peer} ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("hub: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: HubEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// Changes a module's desired properties and pushes the patch to it.
    pub fn set_desired(&self, module: &str, patch: &Map<String, Value>) -> Result<u64, String> {
        let mut state = self.lock();
        let twin = state.twins.get_mut(module).ok_or_else(|| format!("no module {module:?} on this hub"))?;
        let pushed = twin.patch_desired(patch);
        let version = twin.desired_version;
        let client = ModuleId::new(&self.config.device_id, module).client_id();
        let msg = Message {
            topic: topic::twin_desired_patch(version),
            payload: Bytes::from(pushed.to_string()),
            qos: QoS::AtLeastOnce,
            dup: false,
        };
        deliver_to(&mut state, &client, msg);
        Ok(version)
    }

    /// Fault injection for load and reliability tests: stop acknowledging `client_id`'s
    /// publishes (the messages are still routed), or, with None, send the held acknowledgements
    /// and carry on normally.
    pub fn withhold_acks(&self, client_id: Option<&str>) {
        let mut state = self.lock();
        state.withhold_acks_from = client_id.map(str::to_string);
        if client_id.is_none() {
            for session in state.sessions.values() {
                if let Some((_, n)) = &session.connection {
                    n.notify_one();
                }
            }
        }
    }

    /// The messages dropped because a client did not keep up.
    pub fn overflowed(&self) -> u64 {
        self.lock().overflowed
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream) -> Result<(), String> {
        stream.set_nodelay(true).ok();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let connect = match tokio::time::timeout(Duration::from_secs(60), read_packet(&mut stream, &mut buf)).await {
            Ok(Ok(Packet::Connect(c))) => c,
            Ok(Ok(_)) => return Err("first packet is not CONNECT".into()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("no CONNECT within 60 s".into()),
        };
        let mut out = BytesMut::new();
        let client_id = if connect.client_id.is_empty() && connect.clean_session {
            format!("anonymous-{}", self.lock().next_connection)
        } else {
            connect.client_id.clone()
        };
        let code =
            self.authenticate(&client_id, connect.login.as_ref().map(|l| (l.username.as_str(), l.password.as_str())));
        if code != ConnectReturnCode::Success {
            warn!("hub: refused {client_id:?}: {code:?}");
            ConnAck::new(code, false).write(&mut out).map_err(|e| e.to_string())?;
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            return Ok(());
        }
        let notify = Arc::new(Notify::new());
        let (me, session_present) = {
            let mut state = self.lock();
            state.next_connection += 1;
            let me = state.next_connection;
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
                                      // Unacknowledged messages go out again first, marked as duplicates.
            let inflight = std::mem::take(&mut session.inflight);
            for (_, mut m) in inflight.into_iter().rev() {
                m.dup = true;
                session.queue.push_front(m);
            }
            (me, present)
        };
        ConnAck::new(ConnectReturnCode::Success, session_present).write(&mut out).map_err(|e| e.to_string())?;
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let anonymous = connect.login.is_none();
        if anonymous {
            debug!("hub: {client_id} connected (session present: {session_present})");
        } else {
            info!("hub: {client_id} connected (session present: {session_present})");
        }
        self.emit(HubEvent::Connected { client_id: client_id.clone() });

        let keep_alive = Duration::from_secs(u64::from(connect.keep_alive).max(1)) * 3 / 2;
        let result = self
            .clone()
            .serve_client(&mut stream, &mut buf, &client_id, me, &notify, keep_alive, connect.keep_alive > 0)
            .await;

        let mut state = self.lock();
        if let Some(session) = state.sessions.get_mut(&client_id) {
            if session.connection.as_ref().is_some_and(|(n, _)| *n == me) {
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

    #[allow(clippy::too_many_arguments)]
    async fn serve_client(
        self: Arc<Self>,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        client_id: &str,
        me: u64,
        notify: &Notify,
        keep_alive: Duration,
        keep_alive_on: bool,
    ) -> Result<(), String> {
        let mut incoming_qos2: Vec<u16> = Vec::new();
        loop {
            let mut out = BytesMut::new();
            if !self.pump(client_id, me, &mut out)? {
                return Ok(()); // taken over by a newer connection
            }
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
                continue;
            }
            let packet = tokio::select! {
                p = read_packet(stream, buf) => p?,
                _ = notify.notified() => continue,
                _ = tokio::time::sleep(keep_alive), if keep_alive_on => return Err("keep-alive expired".into()),
            };
            let mut out = BytesMut::new();
            match packet {
                Packet::Publish(p) => {
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce if self.withholding(client_id, p.pkid) => {}
                        QoS::AtLeastOnce => write(&mut out, Packet::PubAck(PubAck::new(p.pkid)))?,
                        QoS::ExactlyOnce => {
                            write(&mut out, Packet::PubRec(PubRec::new(p.pkid)))?;
                            if incoming_qos2.contains(&p.pkid) {
                                stream.write_all(&out).await.map_err(|e| e.to_string())?;
                                continue;
                            }
                            incoming_qos2.push(p.pkid);
                        }
                    }
                    let topic = p.topic.clone();
                    if !valid_topic(&topic) {
                        return Err(format!("invalid topic {topic:?}"));
                    }
                    self.publish(client_id, topic, p.payload, p.qos);
                }
                Packet::PubRel(r) => {
                    incoming_qos2.retain(|id| *id != r.pkid);
                    write(&mut out, Packet::PubComp(PubComp::new(r.pkid)))?;
                }
                Packet::PubAck(a) => {
                    if let Some(s) = self.lock().sessions.get_mut(client_id) {
                        s.inflight.remove(&a.pkid);
                    }
                }
                Packet::PubRec(r) => {
                    // We never send QoS 2, but answer politely.
                    write(&mut out, Packet::PubRel(rumqttc::PubRel::new(r.pkid)))?;
                }
                Packet::PubComp(_) | Packet::PingResp => {}
                Packet::Subscribe(s) => {
                    let mut codes = Vec::new();
                    let mut state = self.lock();
                    let session = state.sessions.get_mut(client_id).ok_or("session vanished")?;
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
                    write(&mut out, Packet::SubAck(SubAck::new(s.pkid, codes)))?;
                }
                Packet::Unsubscribe(u) => {
                    if let Some(s) = self.lock().sessions.get_mut(client_id) {
                        s.subscriptions.retain(|(p, _)| !u.topics.contains(p));
                    }
                    write(&mut out, Packet::UnsubAck(UnsubAck::new(u.pkid)))?;
                }
                Packet::PingReq => write(&mut out, Packet::PingResp)?,
                Packet::Disconnect => return Ok(()),
                other => return Err(format!("unexpected packet {other:?}")),
            }
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
            }
        }
    }

    /// Moves queued messages into flight (up to the window) and encodes them into `out`.
    /// Returns false when this connection is no longer the session's.
    fn pump(&self, client_id: &str, me: u64, out: &mut BytesMut) -> Result<bool, String> {
        let mut state = self.lock();
        let releasing = state.withhold_acks_from.is_none();
        let Some(session) = state.sessions.get_mut(client_id) else { return Ok(false) };
        if session.connection.as_ref().is_none_or(|(n, _)| *n != me) {
            return Ok(false);
        }
        if releasing {
            for pkid in session.withheld.drain(..) {
                write(out, Packet::PubAck(PubAck::new(pkid)))?;
            }
        }
        while session.inflight.len() < INFLIGHT_WINDOW {
            let Some(m) = session.queue.pop_front() else { break };
            let mut p = Publish::from_bytes(m.topic.clone(), m.qos, m.payload.clone());
            p.dup = m.dup;
            if m.qos != QoS::AtMostOnce {
                p.pkid = session.next_pkid();
                session.inflight.insert(p.pkid, m);
            }
            write(out, Packet::Publish(p))?;
        }
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

    /// CONNECT authentication: module identities need a valid token; other clients are anonymous.
    fn authenticate(&self, client_id: &str, login: Option<(&str, &str)>) -> ConnectReturnCode {
        let Some((username, password)) = login else { return ConnectReturnCode::Success };
        let Ok((hub, id)) = parse_module_username(username) else { return ConnectReturnCode::Success };
        if !hub.eq_ignore_ascii_case(&self.config.hub_hostname) || id.device_id != self.config.device_id {
            return ConnectReturnCode::NotAuthorized;
        }
        if id.client_id() != client_id {
            return ConnectReturnCode::BadClientId;
        }
        let Some(key) = self.config.keys.get(&id.module_id) else { return ConnectReturnCode::NotAuthorized };
        match crate::sas::validate(password, key, &[&self.config.hub_hostname], &id, crate::module::now_secs()) {
            Ok(()) => ConnectReturnCode::Success,
            Err(e) => {
                warn!("hub: {client_id}: {e}");
                ConnectReturnCode::BadUserNamePassword
            }
        }
    }

    /// A publish from `client_id`: twin requests, local tooling, routing, then plain fan-out.
    fn publish(&self, client_id: &str, topic: String, payload: Bytes, qos: QoS) {
        if let Some(rest) = topic.strip_prefix("$iothub/twin/") {
            self.twin_request(client_id, rest, &payload);
            return;
        }
        if let Some(module) = topic.strip_prefix("local/twin/").and_then(|t| t.strip_suffix("/desired")) {
            match serde_json::from_slice::<Value>(&payload) {
                Ok(Value::Object(patch)) => match self.set_desired(module, &patch) {
                    Ok(v) => info!("hub: desired properties of {module} are now version {v}"),
                    Err(e) => warn!("hub: {e}"),
                },
                _ => warn!("hub: {topic}: the payload must be a JSON object"),
            }
            return;
        }
        let mut state = self.lock();
        if let Some(Ok(message)) = routes::parse_module_event(&topic) {
            for route in
                self.config.routes.iter().filter(|r| r.matches(&message.sender.module_id, message.output.as_deref()))
            {
                match &route.sink {
                    Sink::ModuleInput { module, input } => {
                        let bag = routes::delivery_bag(&message);
                        let target = ModuleId::new(&message.sender.device_id, module);
                        let routed = target
                            .input_topic(input, &topic::encode_bag(bag.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
                        fan_out(&mut state, &routed, &payload, QoS::AtLeastOnce);
                    }
                    Sink::Upstream => {
                        let output = message.output.clone().unwrap_or_default();
                        let observed = format!("local/upstream/{}/{}", message.sender.module_id, output);
                        fan_out(&mut state, &observed, &payload, QoS::AtLeastOnce);
                        self.emit(HubEvent::Upstream {
                            module: message.sender.module_id.clone(),
                            output: message.output.clone(),
                            properties: message.properties.clone(),
                            body: payload.clone(),
                        });
                    }
                }
            }
        }
        fan_out(&mut state, &topic, &payload, qos);
    }

    fn twin_request(&self, client_id: &str, rest: &str, payload: &[u8]) {
        let Some((_, query)) = rest.rsplit_once('/') else { return };
        let rid = topic::query_param(query, "$rid").unwrap_or("").to_string();
        let module = client_id.split_once('/').filter(|(d, _)| *d == self.config.device_id).map(|(_, m)| m.to_string());
        let mut state = self.lock();
        let (status, body) = match (module.as_ref().and_then(|m| state.twins.get_mut(m)), rest) {
            (None, _) => (404, Bytes::new()),
            (Some(twin), r) if r.starts_with("GET/") => (200, Bytes::from(twin.get_body().to_string())),
            (Some(twin), r) if r.starts_with("PATCH/properties/reported/") => {
                match serde_json::from_slice::<Value>(payload) {
                    Ok(Value::Object(patch)) => {
                        twin.patch_reported(&patch);
                        let reported = Value::Object(twin.reported.clone());
                        let module = module.clone().unwrap_or_default();
                        fan_out(
                            &mut state,
                            &format!("local/twin/{module}/reported"),
                            &Bytes::from(reported.to_string()),
                            QoS::AtLeastOnce,
                        );
                        self.emit(HubEvent::Reported { module, reported });
                        (204, Bytes::new())
                    }
                    _ => (400, Bytes::new()),
                }
            }
            _ => (400, Bytes::new()),
        };
        let msg =
            Message { topic: topic::twin_response(status, &rid), payload: body, qos: QoS::AtLeastOnce, dup: false };
        deliver_to(&mut state, client_id, msg);
    }
}

/// MQTT topic matching (3.1.1 §4.7): `+` one level, `#` the rest; a wildcard in the first level
/// does not match topics that start with `$` (so `#` does not see `$iothub/…`).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// Delivers to every session with a matching subscription.
fn fan_out(state: &mut State, topic: &str, payload: &Bytes, qos: QoS) {
    let mut overflow = 0;
    for session in state.sessions.values_mut() {
        if let Some(granted) = session.granted(topic) {
            let qos = if (qos as u8).min(granted as u8) == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            overflow +=
                enqueue(session, Message { topic: topic.to_string(), payload: payload.clone(), qos, dup: false });
        }
    }
    state.overflowed += overflow;
}

/// Delivers to one client, if it subscribed to the topic (as edgeHub's twin responses need).
fn deliver_to(state: &mut State, client_id: &str, msg: Message) {
    if let Some(session) = state.sessions.get_mut(client_id) {
        if session.granted(&msg.topic).is_some() {
            state.overflowed += enqueue(session, msg);
        }
    }
}

fn enqueue(session: &mut Session, msg: Message) -> u64 {
    let mut dropped = 0;
    if session.connection.is_none() && (session.clean || msg.qos == QoS::AtMostOnce) {
        return 0;
    }
    if session.queue.len() >= QUEUE_LIMIT {
        session.queue.pop_front();
        dropped = 1;
    }
    session.queue.push_back(msg);
    if let Some((_, n)) = &session.connection {
        n.notify_one();
    }
    dropped
}

fn write(out: &mut BytesMut, packet: Packet) -> Result<(), String> {
    packet.write(out, MAX_PACKET).map(drop).map_err(|e| format!("encoding {e:?}"))
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
