//! Where the perf tool connects (`mqtt://` or `mqtts://` with a CA file), and its publisher: an
//! MQTT client on the module's own codec (`edgefilter::mqtt::Link`) that never loses a message.
//!
//! rumqttc's client forgets every unacknowledged publish, and the requests still in its channel,
//! when it reconnects to a broker that has no session for it (`session_present` false, as after
//! a broker restart without persistence): a load tester built on it loses its own messages and
//! cannot say whether the module lost any. [`Publisher`] keeps every publish until the broker's
//! PUBACK and sends again, marked DUP, whatever was unacknowledged when a connection ended: every
//! message is published at least once, so "missing" always means lost downstream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgefilter::mqtt::{ConnectOptions, Link, Received};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tokio::time::Instant;

use crate::ReplayError;

/// A hub address: host, port and, for `mqtts://`, the TLS configuration.
#[derive(Clone)]
pub struct Hub {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Hub {
    /// Plain MQTT on 127.0.0.1.
    pub fn local(port: u16) -> Hub {
        Hub { host: "127.0.0.1".into(), port, tls: None }
    }

    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` trusting the PEM CA file `ca` (the system roots
    /// without one).
    pub fn parse(url: &str, ca: Option<&std::path::Path>) -> Result<Hub, String> {
        let e = edgefilter::config::parse_mqtt_url(url, edgefilter::config::Trust::SystemRoots)?;
        let tls = match (e.tls.is_some(), ca) {
            (false, Some(_)) => return Err(format!("--ca is for mqtts:// hubs, not {url}")),
            (false, None) => None,
            (true, ca) => {
                let pem =
                    ca.map(|p| std::fs::read(p).map_err(|err| format!("--ca {}: {err}", p.display()))).transpose()?;
                Some(edgefilter::module::tls_config(pem.as_deref())?)
            }
        };
        Ok(Hub { host: e.host, port: e.port, tls })
    }

    /// rumqttc options for a client of this hub.
    pub fn mqtt_options(&self, id: &str) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(id, &self.host, self.port);
        if let Some(tls) = &self.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
        }
        options
    }
}

/// Publishes at least once, whatever the broker does (see the module docs).
pub struct Publisher {
    hub: Hub,
    options: ConnectOptions,
    link: Option<Link>,
    /// Unacknowledged publishes by the order they were first sent in…
    unacked: BTreeMap<u64, Publish>,
    /// …and that order by packet id.
    order_of: HashMap<u16, u64>,
    next_order: u64,
    last_pkid: u16,
    /// How many publishes may await their PUBACK.
    window: usize,
    packets: std::collections::VecDeque<Received>,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Publishes sent again after a reconnection.
    pub resent: u64,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_millis(100);
/// Unacknowledged publishes past which every publish also reads the acknowledgements that came.
const ACK_LOOK_AT: usize = 32;

impl Publisher {
    /// Connects as `client_id` with a persistent session; fails within `within` when the hub
    /// does not answer.
    pub async fn connect(hub: &Hub, client_id: &str, within: Duration) -> Result<Publisher, ReplayError> {
        let options = ConnectOptions {
            client_id: client_id.into(),
            username: String::new(),
            password: String::new(),
            keep_alive: Duration::from_secs(30),
            clean_session: false,
        };
        let mut p = Publisher {
            hub: hub.clone(),
            options,
            link: None,
            unacked: BTreeMap::new(),
            order_of: HashMap::new(),
            next_order: 0,
            last_pkid: 0,
            window: 1000,
            packets: std::collections::VecDeque::new(),
            reconnects: 0,
            resent: 0,
        };
        p.ensure_link(Instant::now() + within).await?;
        Ok(p)
    }

    /// Sends one message (one write, as edgeHub sends each message), then takes the PUBACKs
    /// that are ready. Waits while the window is full; reconnects and resends until `deadline`.
    pub async fn publish(&mut self, topic: String, body: Bytes, deadline: Instant) -> Result<(), ReplayError> {
        while self.unacked.len() >= self.window {
            self.await_acks(deadline).await?;
        }
        let mut publish = Publish::from_bytes(topic, QoS::AtLeastOnce, body);
        publish.pkid = self.allocate();
        let order = self.next_order;
        self.next_order += 1;
        self.order_of.insert(publish.pkid, order);
        self.unacked.insert(order, publish.clone());
        let sent = match self.link.as_mut() {
            Some(link) => match link.queue(Packet::Publish(publish)) {
                Ok(()) => {
                    let written = link.flush().await.is_ok();
                    // Look for acknowledgements once a few publishes await them, even when the
                    // last read found the socket drained: what is unconfirmed when a connection
                    // ends is sent again, and each of those is a duplicate downstream.
                    if self.unacked.len() >= ACK_LOOK_AT {
                        link.paused();
                    }
                    written && self.take_ready_acks()
                }
                Err(_) => false,
            },
            None => false,
        };
        if !sent {
            self.link = None;
            self.ensure_link(deadline).await?;
        }
        Ok(())
    }

    /// Waits until every publish is acknowledged, or `deadline`.
    pub async fn finish(&mut self, deadline: Instant) -> Result<(), ReplayError> {
        while !self.unacked.is_empty() {
            self.await_acks(deadline).await?;
        }
        if let Some(mut link) = self.link.take() {
            let _ = link.queue(Packet::Disconnect);
            let _ = link.flush().await;
        }
        Ok(())
    }

    /// Publishes not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.unacked.len()
    }

    fn allocate(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            if !self.order_of.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let Some(order) = self.order_of.remove(&pkid) {
            self.unacked.remove(&order);
        }
    }

    /// PUBACKs already read or ready on the socket; false when the connection failed.
    fn take_ready_acks(&mut self) -> bool {
        let mut packets = std::mem::take(&mut self.packets);
        let ok = loop {
            let Some(link) = self.link.as_mut() else { break false };
            match link.read_ready(&mut packets, 1024) {
                Ok(true) => {}
                Ok(false) => break true,
                Err(_) => break false,
            }
            for p in packets.drain(..) {
                if let Received::Other(Packet::PubAck(ack)) = p {
                    self.acknowledged(ack.pkid);
                }
            }
        };
        self.packets = packets;
        ok
    }

    async fn await_acks(&mut self, deadline: Instant) -> Result<(), ReplayError> {
        let mut packets = std::mem::take(&mut self.packets);
        let read = match self.link.as_mut() {
            Some(link) => tokio::time::timeout_at(deadline, link.read_batch(&mut packets, 1024)).await,
            None => Ok(Err(edgefilter::mqtt::LinkError::Closed)),
        };
        for p in packets.drain(..) {
            if let Received::Other(Packet::PubAck(ack)) = p {
                self.acknowledged(ack.pkid);
            }
        }
        self.packets = packets;
        match read {
            Err(_) => Err(ReplayError(format!("{} publishes unacknowledged at the deadline", self.unacked.len()))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.link = None;
                self.ensure_link(deadline).await
            }
        }
    }

    /// (Re)connects until `deadline`, then sends again, marked DUP, every unacknowledged publish.
    async fn ensure_link(&mut self, deadline: Instant) -> Result<(), ReplayError> {
        let first = self.next_order == 0 && self.reconnects == 0;
        while self.link.is_none() {
            let hub = &self.hub;
            let attempt =
                Link::connect(&hub.host, hub.port, hub.tls.clone(), &self.options, 300_000, CONNECT_TIMEOUT).await;
            match attempt {
                Ok((mut link, _)) => {
                    for publish in self.unacked.values() {
                        let mut again = publish.clone();
                        again.dup = true;
                        let _ = link.queue(Packet::Publish(again));
                    }
                    if link.flush().await.is_ok() {
                        if !first {
                            self.reconnects += 1;
                            self.resent += self.unacked.len() as u64;
                        }
                        self.link = Some(link);
                    }
                }
                Err(e) if first || Instant::now() + RETRY_EVERY >= deadline => {
                    return Err(ReplayError(format!("cannot connect to the hub at {:?}: {e}", self.hub)));
                }
                Err(_) => tokio::time::sleep(RETRY_EVERY).await,
            }
        }
        Ok(())
    }
}
