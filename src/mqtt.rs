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

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt as _;
use rumqttc::mqttbytes::{self, v4::Packet};
use rumqttc::tokio_rustls::{client::TlsStream, TlsConnector};
use rumqttc::{ConnectReturnCode, Login};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read per system call at most.
const READ_CHUNK: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection failed or ended.
#[derive(Debug)]
pub enum LinkError {
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
            LinkError::Io(e) => write!(f, "{e}"),
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
#[derive(Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub keep_alive: Duration,
    pub clean_session: bool,
}

/// One live connection.
pub struct Link {
    io: Box<dyn Io>,
    rx: BytesMut,
    tx: BytesMut,
    /// The largest packet read; the module never writes more than edgeHub accepts.
    max_packet: usize,
}

/// The largest packet the module writes (edgeHub's limit).
const MAX_OUTGOING: usize = crate::module::MAX_PACKET_SIZE;

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
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| LinkError::Tls(format!("{host:?} is not a valid server name: {e}")))?;
                let stream: TlsStream<TcpStream> =
                    TlsConnector::from(config).connect(name, tcp).await.map_err(|e| LinkError::Tls(e.to_string()))?;
                Box::new(stream)
            }
        };
        let mut link =
            Link { io, rx: BytesMut::with_capacity(READ_CHUNK), tx: BytesMut::with_capacity(READ_CHUNK), max_packet };
        let mut connect = rumqttc::Connect::new(options.client_id.clone());
        connect.keep_alive = options.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16;
        connect.clean_session = options.clean_session;
        if !options.username.is_empty() {
            connect.login = Some(Login::new(options.username.clone(), options.password.clone()));
        }
        link.queue(Packet::Connect(connect))?;
        link.flush().await?;
        let mut first = Vec::with_capacity(1);
        link.read_batch(&mut first, 1).await?;
        match first.pop() {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok((link, ack.session_present)),
            Some(Packet::ConnAck(ack)) => Err(LinkError::Refused(ack.code)),
            other => Err(LinkError::Protocol(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// Encodes a packet into the outgoing buffer.
    pub fn queue(&mut self, packet: Packet) -> Result<(), LinkError> {
        packet.write(&mut self.tx, MAX_OUTGOING).map(drop).map_err(|e| LinkError::Protocol(format!("{e:?}")))
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Writes everything queued: one system call for the whole batch, as a rule.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        if !self.tx.is_empty() {
            self.io.write_all(&self.tx).await?;
            self.io.flush().await?;
            self.tx.clear();
        }
        Ok(())
    }

    /// Waits for at least one packet, then decodes every complete packet read so far (at most
    /// `max`) into `out`. Cancel-safe: nothing read is lost if the future is dropped.
    pub async fn read_batch(&mut self, out: &mut Vec<Packet>, max: usize) -> Result<(), LinkError> {
        loop {
            self.decode(out, max)?;
            if !out.is_empty() {
                return Ok(());
            }
            self.rx.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.rx).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }

    /// Reads and decodes what is ready now, without waiting: false when nothing was.
    pub fn read_ready(&mut self, out: &mut Vec<Packet>, max: usize) -> Result<bool, LinkError> {
        let before = out.len();
        self.decode(out, max)?;
        if out.len() == before && out.len() < max {
            self.rx.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.rx).now_or_never() {
                Some(Ok(0)) => return Err(LinkError::Closed),
                Some(Ok(_)) => self.decode(out, max)?,
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
        Ok(out.len() > before)
    }

    fn decode(&mut self, out: &mut Vec<Packet>, max: usize) -> Result<(), LinkError> {
        while out.len() < max {
            match Packet::read(&mut self.rx, self.max_packet) {
                Ok(p) => out.push(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(LinkError::Protocol(format!("{e:?}"))),
            }
        }
        Ok(())
    }
}
