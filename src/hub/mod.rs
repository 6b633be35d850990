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
//!   and to the upstream, which local mode's console shows;
//! - a module identity is sent one message at a time, the next only after its PUBACK, as edgeHub
//!   does ([`session`]); [`Delivery`] widens that for experiments and can make the hub acknowledge
//!   a module's publishes late ([`acks`]), as edgeHub does while it persists them.
//!
//! Local tooling topics (not edgeHub's): publishing a JSON patch to `local/twin/{module}/desired`
//! changes a module's desired properties; the hub publishes each module's reported properties on
//! `local/twin/{module}/reported` and upstream messages on `local/upstream/{module}/{output}`.

pub mod acks;
mod connection;
pub mod routes;
mod session;
pub mod twin;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use log::{debug, info, warn};
use rumqttc::mqttbytes::QoS;
use rumqttc::{ConnectReturnCode, Packet};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::topic::{self, ModuleId};
pub use acks::AckDelay;
use routes::{Route, Sink};
pub use session::{filter_matches, Delivery, BROKER_WINDOW};
use session::{Message, Session};
use twin::Twin;

/// What edgeHub accepts in one packet (256 KiB messages plus topic and header).
const MAX_PACKET: usize = crate::limits::MAX_PACKET_SIZE;

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
    /// How module identities are delivered to: one message in flight by default, as edgeHub.
    pub delivery: Delivery,
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
    /// PUBACKs ignored because they did not come in the order of the publishes.
    out_of_order_acks: u64,
    /// Fault injection: the client whose publishes are not acknowledged for now.
    withhold_acks_from: Option<String>,
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
        let msg = Message::new(topic::twin_desired_patch(version), Bytes::from(pushed.to_string()), QoS::AtLeastOnce);
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

    /// How many clients hold a subscription to exactly `filter`: tests wait on it instead of
    /// sleeping after a third-party client (mosquitto_sub) subscribes.
    pub fn subscribers(&self, filter: &str) -> usize {
        self.lock().sessions.values().filter(|s| s.subscriptions.iter().any(|(f, _)| f == filter)).count()
    }

    /// The PUBACKs ignored because they came out of the order of the hub's publishes.
    pub fn out_of_order_acks(&self) -> u64 {
        self.lock().out_of_order_acks
    }

    /// The messages dropped because a client did not keep up.
    pub fn overflowed(&self) -> u64 {
        self.lock().overflowed
    }

    /// CONNECT authentication: module identities need a valid token; other clients are anonymous.
    /// Returns the verdict and whether the client is a module identity.
    fn authenticate(&self, client_id: &str, login: Option<(&str, &str)>) -> (ConnectReturnCode, bool) {
        let Some((username, password)) = login else { return (ConnectReturnCode::Success, false) };
        let Ok((hub, id)) = parse_module_username(username) else { return (ConnectReturnCode::Success, false) };
        let code = if !hub.eq_ignore_ascii_case(&self.config.hub_hostname) || id.device_id != self.config.device_id {
            ConnectReturnCode::NotAuthorized
        } else if id.client_id() != client_id {
            ConnectReturnCode::BadClientId
        } else if let Some(key) = self.config.keys.get(&id.module_id) {
            match crate::sas::validate(password, key, &[&self.config.hub_hostname], &id, crate::sas::now_secs()) {
                Ok(()) => ConnectReturnCode::Success,
                Err(e) => {
                    warn!("hub: {client_id}: {e}");
                    ConnectReturnCode::BadUserNamePassword
                }
            }
        } else {
            ConnectReturnCode::NotAuthorized
        };
        (code, true)
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
        let msg = Message::new(topic::twin_response(status, &rid), body, QoS::AtLeastOnce);
        deliver_to(&mut state, client_id, msg);
    }
}

/// Delivers to every session with a matching subscription.
fn fan_out(state: &mut State, topic: &str, payload: &Bytes, qos: QoS) {
    let mut overflow = 0;
    for session in state.sessions.values_mut() {
        if let Some(granted) = session.granted(topic) {
            let qos = if (qos as u8).min(granted as u8) == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            overflow += session.enqueue(Message::new(topic.to_string(), payload.clone(), qos));
        }
    }
    state.overflowed += overflow;
}

/// Delivers to one client, if it subscribed to the topic (as edgeHub's twin responses need).
fn deliver_to(state: &mut State, client_id: &str, msg: Message) {
    if let Some(session) = state.sessions.get_mut(client_id) {
        if session.granted(&msg.topic).is_some() {
            state.overflowed += session.enqueue(msg);
        }
    }
}

pub(super) fn write(out: &mut BytesMut, packet: Packet) -> Result<(), String> {
    packet.write(out, MAX_PACKET).map(drop).map_err(|e| format!("encoding {e:?}"))
}
