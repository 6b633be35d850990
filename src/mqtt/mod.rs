//! The module's MQTT connection: rumqttc's MQTT 3.1.1 codec (`mqttbytes::v4`) over TCP or TLS,
//! driven by the module itself so that it can batch.
//!
//! rumqttc's event loop writes and flushes every request on its own (one system call per alert
//! and one per acknowledgement) and yields one event at a time. The module wants the opposite:
//! read everything the connection has ready, decide it, and write all alerts and acknowledgements
//! of that batch in one system call. So the connection is split the way rumqttc splits itself:
//! packets are encoded into an outgoing buffer ([`Link::queue`]) and written when the caller says
//! ([`Link::flush`]); reads decode every complete packet in the buffer ([`Link::read_batch`]).
//! Payloads are slices of the read buffer (`Bytes`), never copied.
//!
//! TLS is rustls's `ClientConnection` driven here rather than through tokio-rustls (which does
//! the handshake only): a read is one `recv` of up to 64 KiB, whatever number of TLS records it
//! holds, all decrypted in memory; a flush is every queued packet sealed into as few records as
//! fit (16 KiB each) and one `send`. tokio-rustls reads 4 KiB per system call and wakes once per
//! record. A short read means the socket is drained (new data raises a new edge-triggered event),
//! so the socket is not read again just to see `EAGAIN`; after a pause the caller asks for
//! [`Link::read_ready`], which reads without waiting for the event loop to report readiness.
//!
//! Here the link ([`Link`]: connect, read, write, TLS driven in memory); in [`codec`] the PUBLISH
//! packets decoded in place and encoded directly; in [`seal`] a batch of any size sealed into TLS
//! records.

mod codec;
mod seal;

pub use codec::{read_publish, write_puback, write_publish, Message, Received};
pub use seal::seal;

use std::collections::VecDeque;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4::Packet};
use rumqttc::tokio_rustls::TlsConnector;
use rumqttc::{ConnectReturnCode, Login};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Bytes read per system call at most.
const READ_CHUNK: usize = 64 * 1024;

/// Why a connection failed or ended.
#[derive(Debug)]
pub enum LinkError {
    /// The TCP connection could not be made: nothing answered.
    Unreachable(std::io::Error),
    Io(std::io::Error),
    Tls(String),
    Refused(ConnectReturnCode),
    Protocol(String),
    Timeout,
    Closed,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Unreachable(e) | LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Tls(e) => write!(f, "TLS: {e}"),
            LinkError::Refused(code) => write!(f, "connection refused by the hub: {code:?}"),
            LinkError::Protocol(e) => write!(f, "MQTT protocol error: {e}"),
            LinkError::Timeout => f.write_str("timed out"),
            LinkError::Closed => f.write_str("connection closed by the hub"),
        }
    }
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Io(e)
    }
}

/// What a CONNECT says.
#[derive(Clone, PartialEq)]
pub struct ConnectOptions {
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub keep_alive: Duration,
    pub clean_session: bool,
}

/// The password (a SAS token) is a secret: never printed.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &format_args!("<{} bytes>", self.password.len()))
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .finish()
    }
}

/// One live connection.
pub struct Link {
    tcp: TcpStream,
    /// The TLS session, when there is one.
    tls: Option<Box<rustls::ClientConnection>>,
    /// MQTT bytes read (decrypted), not yet decoded.
    rx: BytesMut,
    /// MQTT bytes queued with [`Link::queue`] (the CONNECT, the load tester's publishes).
    tx: BytesMut,
    /// What one `recv` reads into.
    wire: Vec<u8>,
    /// TLS records sealed for one `send`.
    sealed: Vec<u8>,
    /// The largest packet read; the module never writes more than edgeHub accepts.
    max_packet: usize,
    /// The last read drained the socket: wait for the event loop before reading again.
    drained: bool,
    /// Bytes were read since the last write: their TCP acknowledgement has not ridden out on
    /// data yet (see [`Link::read_batch`]).
    unanswered: bool,
    /// Runs right after each `recv`: lets a test put data on the wire at the worst moment.
    #[cfg(test)]
    after_read: Option<Box<dyn Fn() + Send + Sync>>,
}

/// The sealed-records buffer is kept between writes up to this size.
const SEALED_KEPT: usize = 1024 * 1024;

/// The largest packet the module writes (edgeHub's limit).
pub(crate) const MAX_OUTGOING: usize = crate::limits::MAX_PACKET_SIZE;

impl Link {
    /// Connects, sends CONNECT and waits for CONNACK; returns the link and whether the hub had
    /// a session for this client.
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        options: &ConnectOptions,
        max_packet: usize,
        timeout: Duration,
    ) -> Result<(Link, bool), LinkError> {
        tokio::time::timeout(timeout, Link::connect_inner(host, port, tls, options, max_packet))
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    async fn connect_inner(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        options: &ConnectOptions,
        max_packet: usize,
    ) -> Result<(Link, bool), LinkError> {
        let tcp = TcpStream::connect((host, port)).await.map_err(LinkError::Unreachable)?;
        tcp.set_nodelay(true)?;
        let (tcp, tls) = match tls {
            None => (tcp, None),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| LinkError::Tls(format!("{host:?} is not a valid server name: {e}")))?;
                let stream =
                    TlsConnector::from(config).connect(name, tcp).await.map_err(|e| LinkError::Tls(e.to_string()))?;
                let (tcp, session) = stream.into_inner();
                (tcp, Some(Box::new(session)))
            }
        };
        let mut link = Link {
            tcp,
            tls,
            rx: BytesMut::with_capacity(READ_CHUNK),
            tx: BytesMut::new(),
            wire: vec![0; READ_CHUNK],
            sealed: Vec::new(),
            max_packet,
            drained: false,
            unanswered: false,
            #[cfg(test)]
            after_read: None,
        };
        let mut connect = rumqttc::Connect::new(options.client_id.clone());
        connect.keep_alive = options.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16;
        connect.clean_session = options.clean_session;
        if !options.username.is_empty() {
            connect.login = Some(Login::new(options.username.clone(), options.password.clone()));
        }
        link.queue(Packet::Connect(connect))?;
        link.flush().await?;
        let mut first = VecDeque::with_capacity(1);
        link.read_batch(&mut first, 1).await?;
        match first.pop_front() {
            Some(Received::Other(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                Ok((link, ack.session_present))
            }
            Some(Received::Other(Packet::ConnAck(ack))) => Err(LinkError::Refused(ack.code)),
            other => Err(LinkError::Protocol(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// The TLS version and cipher suite negotiated, on a TLS connection.
    pub fn tls_description(&self) -> Option<String> {
        let session = self.tls.as_deref()?;
        let version = session.protocol_version().map_or_else(|| "TLS".into(), |v| format!("{v:?}"));
        let suite = session.negotiated_cipher_suite().map_or_else(String::new, |s| format!(" {:?}", s.suite()));
        Some(format!("{version}{suite}"))
    }

    /// Encodes a packet into the link's own outgoing buffer, for [`Link::flush`].
    pub fn queue(&mut self, packet: Packet) -> Result<(), LinkError> {
        packet.write(&mut self.tx, MAX_OUTGOING).map(drop).map_err(|e| LinkError::Protocol(format!("{e:?}")))
    }

    /// Writes what [`Link::queue`] queued.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        let mut tx = std::mem::take(&mut self.tx);
        let written = self.send(&mut tx).await;
        self.tx = tx;
        written
    }

    /// Writes `tx`, leaving it empty: one system call for the whole batch, as a rule (sealed into
    /// TLS records first on a TLS connection).
    pub async fn send(&mut self, tx: &mut BytesMut) -> Result<(), LinkError> {
        match self.tls.as_deref_mut() {
            None => {
                if !tx.is_empty() {
                    self.tcp.write_all(tx).await?;
                    tx.clear();
                    self.unanswered = false;
                }
            }
            Some(session) => {
                seal(session, tx, &mut self.sealed)?;
                if !self.sealed.is_empty() {
                    self.tcp.write_all(&self.sealed).await?;
                    self.unanswered = false;
                }
                // A batch of megabytes (a backlog sent again) need not keep its buffer for life.
                if self.sealed.capacity() > SEALED_KEPT {
                    self.sealed = Vec::new();
                }
            }
        }
        Ok(())
    }

    /// Waits for at least one packet, then decodes every complete packet read so far (at most
    /// `max`) into `out`. Cancel-safe: nothing read is lost if the future is dropped.
    ///
    /// Before it sleeps on a socket whose last bytes the module read but did not answer (a PUBACK
    /// to an alert, with the input already acknowledged: `AckMode=pipelined`), it sends their TCP
    /// acknowledgement at once (`TCP_QUICKACK`). Left to the kernel, that acknowledgement waits
    /// for data to ride on, up to 40 ms (delayed ACK), and a hub with Nagle on (mosquitto's
    /// default) holds its next PUBLISH until it comes: measured, 22 messages/s through a
    /// one-in-flight mosquitto. One system call, only when the module goes to sleep with nothing
    /// to write.
    pub async fn read_batch(&mut self, out: &mut VecDeque<Received>, max: usize) -> Result<(), LinkError> {
        loop {
            self.decode(out, max)?;
            if !out.is_empty() {
                return Ok(());
            }
            if self.drained {
                if std::mem::take(&mut self.unanswered) {
                    // Best effort: a socket that refuses it only costs the delay. Linux only
                    // (the option's home); elsewhere the delayed ACK stays.
                    #[cfg(any(target_os = "linux", target_os = "android"))]
                    let _ = socket2::SockRef::from(&self.tcp).set_tcp_quickack(true);
                }
                self.tcp.readable().await?;
            }
            self.receive()?;
        }
    }

    /// Decodes what was read, and reads more unless the last read drained the socket, without
    /// waiting: false when nothing new was.
    pub fn read_ready(&mut self, out: &mut VecDeque<Received>, max: usize) -> Result<bool, LinkError> {
        let before = out.len();
        self.decode(out, max)?;
        if out.len() == before && out.len() < max && !self.drained {
            self.receive()?;
            self.decode(out, max)?;
        }
        Ok(out.len() > before)
    }

    /// After the module sent DISCONNECT to reconnect at once: waits (up to `within`) for the hub
    /// to close the connection, discarding what it still sends. A hub that sees the new
    /// connection first takes the session over and drops the old connection's unread packets,
    /// the last acknowledgements among them (seen with mosquitto: their messages were delivered
    /// again, hundreds of duplicates per redelivery round).
    pub async fn closed_by_hub(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                self.rx.clear();
                if self.drained && self.tcp.readable().await.is_err() {
                    return;
                }
                if self.receive().is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// After a pause: whatever arrived meanwhile is there to read, so the next read goes to the
    /// socket at once instead of waiting for the event loop to say so.
    pub fn paused(&mut self) {
        self.drained = false;
    }

    /// One `recv` into the read buffer (decrypted on a TLS connection). A short read marks the
    /// socket drained and clears the event loop's readiness for it, so the next read waits for
    /// a new event instead of making a system call to learn that nothing is there.
    ///
    /// The read is made inside `try_io`: tokio then clears only the readiness it saw before the
    /// read. Clearing after the read (as this did) also cleared the event for data that arrived
    /// between the two, and the module slept on a socket with a message in it until the next
    /// packet came (on a multi-threaded runtime, where another thread records events meanwhile).
    fn receive(&mut self) -> Result<(), LinkError> {
        let (tcp, wire) = (&self.tcp, &mut self.wire);
        let read = |wire: &mut Vec<u8>| {
            let n = (&*socket2::SockRef::from(tcp)).read(wire);
            #[cfg(test)]
            if let Some(hook) = self.after_read.as_ref() {
                hook();
            }
            n
        };
        let (mut called, mut short) = (false, None);
        let attempt = tcp.try_io(Interest::READABLE, || {
            called = true;
            match read(wire)? {
                n if n > 0 && n < wire.len() => {
                    short = Some(n);
                    Err(std::io::ErrorKind::WouldBlock.into())
                }
                n => Ok(n),
            }
        });
        let outcome = match (attempt, short) {
            (_, Some(n)) => Ok(n),
            // Not reported readable yet (after a pause, say): read anyway, nothing to clear.
            (Err(e), None) if e.kind() == std::io::ErrorKind::WouldBlock && !called => read(wire),
            (attempt, None) => attempt,
        };
        let n = match outcome {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.drained = n < self.wire.len();
        self.unanswered |= n > 0;
        let Some(session) = self.tls.as_deref_mut() else {
            self.rx.extend_from_slice(&self.wire[..n]);
            return Ok(());
        };
        let mut records = &self.wire[..n];
        while !records.is_empty() {
            session.read_tls(&mut records)?;
            let state = session.process_new_packets().map_err(|e| LinkError::Tls(e.to_string()))?;
            let plain = state.plaintext_bytes_to_read();
            if plain > 0 {
                let at = self.rx.len();
                self.rx.resize(at + plain, 0);
                session.reader().read_exact(&mut self.rx[at..])?;
            }
            if state.peer_has_closed() {
                return Err(LinkError::Closed);
            }
        }
        Ok(())
    }

    fn decode(&mut self, out: &mut VecDeque<Received>, max: usize) -> Result<(), LinkError> {
        while out.len() < max {
            if self.rx.first().is_some_and(|b| b >> 4 == 3) {
                match read_publish(&mut self.rx, self.max_packet)? {
                    Some(m) => out.push_back(Received::Publish(m)),
                    None => break,
                }
                continue;
            }
            match Packet::read(&mut self.rx, self.max_packet) {
                Ok(p) => out.push_back(Received::Other(p)),
                Err(mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(LinkError::Protocol(format!("{e:?}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A hub that accepts one connection and answers its CONNECT; returns its end of the socket.
    fn hub() -> (u16, std::thread::JoinHandle<std::net::TcpStream>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut connect = [0u8; 256];
            let _ = (&socket).read(&mut connect).unwrap();
            socket.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
            socket
        });
        (port, accept)
    }

    const PINGRESP: [u8; 2] = [0xD0, 0x00];

    /// Data that arrives right after a short read (before its readiness is cleared) is read
    /// without waiting for more. Before the fix the link slept until the next packet; here the
    /// next packet never comes, so the read timed out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_packet_arriving_just_after_a_short_read_is_not_slept_on() {
        let (port, accept) = hub();
        let options = ConnectOptions {
            client_id: "race".into(),
            username: String::new(),
            password: String::new(),
            keep_alive: Duration::from_secs(600),
            clean_session: true,
        };
        let (mut link, _) =
            Link::connect("127.0.0.1", port, None, &options, 1024, Duration::from_secs(5)).await.unwrap();
        let hub = Arc::new(accept.join().unwrap());
        let armed = Arc::new(AtomicBool::new(false));
        let (late, fire) = (hub.clone(), armed.clone());
        link.after_read = Some(Box::new(move || {
            if fire.swap(false, Ordering::SeqCst) {
                (&*late).write_all(&PINGRESP).unwrap();
                // Time for the event loop (on the other worker) to record the new data.
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        for round in 0..20 {
            armed.store(true, Ordering::SeqCst);
            (&*hub).write_all(&PINGRESP).unwrap();
            let mut out = VecDeque::new();
            let mut packets = 0;
            while packets < 2 {
                tokio::time::timeout(Duration::from_secs(3), link.read_batch(&mut out, 16))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: the second packet was on the wire, unread"))
                    .unwrap();
                packets += out.drain(..).count();
            }
        }
    }
}
