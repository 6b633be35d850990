//! The floor of the one-in-flight shape (issue 21): what the bare I/O costs with no filtering work.
//!
//! It stands where the module stands under `scripts/arm-streaming-insns.sh` and takes the same
//! environment (`EdgeHubConnectionString`, `EDGEFILTER_MQTT_URL`, `EdgeModuleCACertificateFile`,
//! `AckMode`, resolved by the module's own `config::resolve`), so `EDGEFILTER_ARM_BINARY` can point
//! at it: it connects with the module's client id (`dev/filter`) and username, a persistent session
//! (`clean_session` false, as the module) and no keep-alive, subscribes to the module's inputs
//! (`devices/dev/modules/filter/inputs/#`, QoS 1), and then, per message, reads the input PUBLISH
//! and, for an alert, publishes its body with QoS 1 to `devices/dev/modules/filter/messages/events/`
//! with `%24.on=output1&` and the input's own bag copied as it came (so the replay finds the
//! sequence number and the output); the input's PUBACK goes out
//!
//! - `AckMode=confirmed`: only once the alert's PUBACK has been read (a dropped input at once);
//! - `AckMode=pipelined`: in the same write, right behind the alert.
//!
//! The decision is the cheapest test that agrees with the replay's trace: the first
//! `"temperature":` in the body (the machine's, in SimulatedTemperatureSensor's member order),
//! its number's integer part read, alert when the number is above 25. No bag validation, no
//! settings, no bookkeeping beyond a queue of the inputs whose acknowledgement waits, no timers,
//! no metrics, no allocation per message.
//!
//! `EDGEFILTER_FLOOR` picks the I/O:
//!
//! - `tokio` (default): a current-thread runtime built as the module builds its own
//!   (`enable_all`), one future, the socket a tokio `TcpStream`: a read waits on `readable()` and
//!   reads up to 64 KiB inside `try_io`, a short read clearing the readiness (the module's
//!   `Link::receive`), so no read is made just to see `EAGAIN`; every packet of that read handled,
//!   then one `write_all` for the turn;
//! - `std`: a blocking `std::net::TcpStream` and no runtime at all: one `read` and at most one
//!   `write` system call per turn, the floor of the system call wrappers.
//!
//! Over `mqtts://` both variants drive rustls in memory as the module does (every record of a
//! read opened, the turn's packets sealed with `edgefilter::mqtt::seal` and sent in one write),
//! with the module's `edgefilter::tls::tls_config` (its cipher suites): TLS's floor.
//!
//! SIGTERM ends it at once (`_exit`, after printing how many messages and alerts it handled), so
//! the instruction counter reports.
//!
//!     EDGEFILTER_FLOOR=std EDGEFILTER_ARM_BINARY=target/armv7-unknown-linux-gnueabihf/release/examples/tcp_floor \
//!       INFLIGHTS=1 scripts/arm-streaming-insns.sh 4000
//!
//! (`scripts/arm-floor-insns.sh` runs both variants and the module, in both modes.)

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use edgefilter::config::{self, Trust};
use edgefilter::settings::AckMode;

/// Bytes read per system call at most (the module's `READ_CHUNK`).
const READ_CHUNK: usize = 64 * 1024;

static MESSAGES: AtomicU64 = AtomicU64::new(0);
static ALERTS: AtomicU64 = AtomicU64::new(0);

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("tcp_floor: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    on_sigterm_exit();
    let config = config::resolve(|n| std::env::var(n).ok(), None).map_err(|e| e.to_string())?;
    let variant = std::env::var("EDGEFILTER_FLOOR").unwrap_or_else(|_| "tokio".into());
    let pipelined = config.settings.ack_mode == AckMode::Pipelined;
    let id = &config.identity.module;
    let endpoint = &config.endpoint;

    let tcp = std::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tcp = tcp;
    let tls = match &endpoint.tls {
        None => None,
        Some(trust) => {
            let pem = match trust {
                Trust::CaFile(path) => Some(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?),
                _ => None,
            };
            let tls_config = edgefilter::tls::tls_config(pem.as_deref())?;
            let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| e.to_string())?;
            let mut session = rustls::ClientConnection::new(tls_config, name).map_err(|e| e.to_string())?;
            while session.is_handshaking() {
                session.complete_io(&mut tcp).map_err(|e| format!("TLS handshake: {e}"))?;
            }
            Some(Box::new(session))
        }
    };
    let described = tls.as_deref().map_or_else(String::new, |s| {
        let version = s.protocol_version().map_or_else(|| "TLS".into(), |v| format!("{v:?}"));
        let suite = s.negotiated_cipher_suite().map_or_else(String::new, |s| format!(" {:?}", s.suite()));
        format!(", {version}{suite}")
    });

    let mut floor = Floor::new(&id.device_id, &id.module_id, pipelined);
    floor.connect(&id.client_id(), &edgefilter::topic::username(&config.identity.hub_hostname, id));
    floor.subscribe(&id.inputs_filter());
    eprintln!(
        "tcp_floor: {variant}, AckMode {}, {}:{}{described}",
        if pipelined { "pipelined" } else { "confirmed" },
        endpoint.host,
        endpoint.port
    );
    let mut link = Tls { session: tls, wire: vec![0; READ_CHUNK], sealed: Vec::new() };
    match variant.as_str() {
        "std" => run_std(tcp, &mut link, &mut floor),
        "tokio" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(run_tokio(tcp, &mut link, &mut floor)),
        other => Err(format!("EDGEFILTER_FLOOR: {other:?} is neither std nor tokio")),
    }
}

/// The blocking floor: read, handle, write, with no runtime.
fn run_std(mut tcp: std::net::TcpStream, link: &mut Tls, floor: &mut Floor) -> Result<()> {
    link.send(&mut floor.tx, |bytes| tcp.write_all(bytes))?;
    loop {
        let n = match link.session.is_none() {
            true => floor.read_into(|buf| tcp.read(buf)),
            false => tcp.read(&mut link.wire),
        };
        match n.map_err(|e| e.to_string())? {
            0 => return Err("connection closed by the hub".into()),
            n if link.session.is_some() => link.open(n, floor)?,
            _ => {}
        }
        floor.handle()?;
        link.send(&mut floor.tx, |bytes| tcp.write_all(bytes))?;
    }
}

/// The tokio floor: the module's read (readiness, then one read inside `try_io`, a short read
/// clearing the readiness) and write (`write_all`), one future on a current-thread runtime.
async fn run_tokio(tcp: std::net::TcpStream, link: &mut Tls, floor: &mut Floor) -> Result<()> {
    use tokio::io::{AsyncWriteExt as _, Interest};
    tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| e.to_string())?;
    let mut pending = Vec::new();
    link.send(&mut floor.tx, |bytes| {
        pending.extend_from_slice(bytes);
        Ok(())
    })?;
    tcp.write_all(&pending).await.map_err(|e| e.to_string())?;
    loop {
        tcp.readable().await.map_err(|e| e.to_string())?;
        // One read: a short one is reported to tokio as `WouldBlock`, which clears the readiness
        // seen before it, so the next turn waits for a new event instead of reading `EAGAIN`.
        let read = |buf: &mut [u8]| -> std::io::Result<usize> {
            let mut got = None;
            let attempt = tcp.try_io(Interest::READABLE, || {
                let n = (&*socket2::SockRef::from(&tcp)).read(buf)?;
                if n > 0 && n < buf.len() {
                    got = Some(n);
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (attempt, got) {
                (_, Some(n)) => Ok(n),
                (Ok(0), None) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                (attempt, None) => attempt,
            }
        };
        let n = match link.session.is_none() {
            true => floor.read_into(read),
            false => read(&mut link.wire),
        };
        match n {
            Ok(n) if link.session.is_some() => link.open(n, floor)?,
            Ok(_) => {}
            // Woken with nothing to read after all: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
        floor.handle()?;
        if !floor.tx.is_empty() {
            match link.session.is_some() {
                false => tcp.write_all(&floor.tx).await.map_err(|e| e.to_string())?,
                true => {
                    link.seal(&mut floor.tx)?;
                    tcp.write_all(&link.sealed).await.map_err(|e| e.to_string())?;
                }
            }
            floor.tx.clear();
        }
    }
}

/// The TLS session, if any, driven in memory as the module's `Link` drives it.
struct Tls {
    session: Option<Box<rustls::ClientConnection>>,
    /// What one read of the socket reads into (TLS records).
    wire: Vec<u8>,
    /// The turn's records, for one write.
    sealed: Vec<u8>,
}

impl Tls {
    /// Opens the `n` bytes of records read into `wire`, appending their plaintext to the floor's
    /// read buffer.
    fn open(&mut self, n: usize, floor: &mut Floor) -> Result<()> {
        let session = self.session.as_deref_mut().expect("a TLS session");
        let mut records = &self.wire[..n];
        while !records.is_empty() {
            session.read_tls(&mut records).map_err(|e| e.to_string())?;
            let state = session.process_new_packets().map_err(|e| e.to_string())?;
            let plain = state.plaintext_bytes_to_read();
            if plain > 0 {
                floor
                    .read_into(|buf| {
                        let len = plain.min(buf.len());
                        session.reader().read(&mut buf[..len])
                    })
                    .map_err(|e| e.to_string())?;
            }
            if state.peer_has_closed() {
                return Err("connection closed by the hub".into());
            }
        }
        Ok(())
    }

    /// Seals `tx` into `sealed`, leaving `tx` empty.
    fn seal(&mut self, tx: &mut BytesMut) -> Result<()> {
        let session = self.session.as_deref_mut().expect("a TLS session");
        edgefilter::mqtt::seal(session, tx, &mut self.sealed).map_err(|e| e.to_string())
    }

    /// Writes `tx` (sealed first on a TLS link) with `write`, leaving it empty.
    fn send(&mut self, tx: &mut BytesMut, mut write: impl FnMut(&[u8]) -> std::io::Result<()>) -> Result<()> {
        if tx.is_empty() {
            return Ok(());
        }
        match self.session.is_some() {
            false => write(tx).map_err(|e| e.to_string())?,
            true => {
                self.seal(tx)?;
                write(&self.sealed).map_err(|e| e.to_string())?;
            }
        }
        tx.clear();
        Ok(())
    }
}

/// Just enough MQTT 3.1.1 for the module's data path.
struct Floor {
    pipelined: bool,
    /// `devices/{d}/modules/{m}/inputs/`: what an input's topic starts with.
    inputs: Vec<u8>,
    /// `devices/{d}/modules/{m}/messages/events/%24.on=output1`: an alert's topic, before its bag.
    events: Vec<u8>,
    /// Bytes read, `rx[..filled]`, not yet handled.
    rx: Vec<u8>,
    filled: usize,
    /// Bytes for this turn's write.
    tx: BytesMut,
    /// `confirmed`: the inputs not yet acknowledged, in order, and whether each was an alert (its
    /// acknowledgement waits for the alert's PUBACK; mosquitto confirms in order).
    waiting: VecDeque<(u16, bool)>,
    next_pkid: u16,
}

impl Floor {
    fn new(device: &str, module: &str, pipelined: bool) -> Floor {
        Floor {
            pipelined,
            inputs: format!("devices/{device}/modules/{module}/inputs/").into_bytes(),
            events: format!("devices/{device}/modules/{module}/messages/events/%24.on={}", edgefilter::filter::OUTPUT)
                .into_bytes(),
            rx: vec![0; 2 * READ_CHUNK],
            filled: 0,
            tx: BytesMut::with_capacity(READ_CHUNK),
            waiting: VecDeque::with_capacity(64),
            next_pkid: 1,
        }
    }

    /// CONNECT: MQTT 3.1.1, username and password, no clean session, no keep-alive.
    fn connect(&mut self, client_id: &str, username: &str) {
        let password = b"floor";
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC0, 0, 0]);
        for field in [client_id.as_bytes(), username.as_bytes(), password] {
            body.extend_from_slice(&(field.len() as u16).to_be_bytes());
            body.extend_from_slice(field);
        }
        self.packet(0x10, &body);
    }

    /// SUBSCRIBE to `filter` with QoS 1.
    fn subscribe(&mut self, filter: &str) {
        let mut body = self.pkid().to_be_bytes().to_vec();
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(1);
        self.packet(0x82, &body);
    }

    fn packet(&mut self, first: u8, body: &[u8]) {
        self.tx.extend_from_slice(&[first]);
        self.length(body.len());
        self.tx.extend_from_slice(body);
    }

    fn length(&mut self, mut n: usize) {
        loop {
            let byte = (n & 0x7F) as u8;
            n >>= 7;
            self.tx.extend_from_slice(&[if n > 0 { byte | 0x80 } else { byte }]);
            if n == 0 {
                return;
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        next_pkid(&mut self.next_pkid)
    }

    /// Reads with `read` into the free end of the read buffer; returns the bytes read.
    fn read_into(&mut self, read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>) -> std::io::Result<usize> {
        if self.rx.len() - self.filled < READ_CHUNK {
            self.rx.resize(self.filled + READ_CHUNK, 0);
        }
        let n = read(&mut self.rx[self.filled..])?;
        self.filled += n;
        Ok(n)
    }

    /// Handles every complete packet read, queueing what answers them into `tx`.
    fn handle(&mut self) -> Result<()> {
        let mut at = 0;
        while self.filled - at >= 2 {
            let first = self.rx[at];
            let (mut remaining, mut header) = (0usize, 1usize);
            while let Some(&b) = self.rx[..self.filled].get(at + header) {
                remaining |= usize::from(b & 0x7F) << (7 * (header - 1));
                header += 1;
                if b & 0x80 == 0 || header > 4 {
                    break;
                }
            }
            let end = at + header + remaining;
            if end > self.filled || self.rx[at + header - 1] & 0x80 != 0 {
                break;
            }
            let body = at + header..end;
            match first >> 4 {
                3 => self.on_publish(first, body)?,
                4 => self.on_puback(),
                2 if self.rx[at + 3] != 0 => return Err(format!("CONNACK refused: code {}", self.rx[at + 3])),
                _ => {} // CONNACK, SUBACK
            }
            at = end;
        }
        // Keep what is not a whole packet yet, at the front.
        if at == self.filled {
            self.filled = 0;
        } else if at > 0 {
            self.rx.copy_within(at..self.filled, 0);
            self.filled -= at;
        }
        Ok(())
    }

    fn on_publish(&mut self, first: u8, body: std::ops::Range<usize>) -> Result<()> {
        let packet = &self.rx[body];
        let qos = (first >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes([packet[0], packet[1]]));
        let id_len = if qos > 0 { 2 } else { 0 };
        if packet.len() < 2 + topic_len + id_len {
            return Err("PUBLISH shorter than its topic".into());
        }
        let topic = &packet[2..2 + topic_len];
        let pkid = if qos > 0 { u16::from_be_bytes([packet[2 + topic_len], packet[3 + topic_len]]) } else { 0 };
        let payload = &packet[2 + topic_len + id_len..];
        let input = topic.starts_with(&self.inputs);
        MESSAGES.fetch_add(u64::from(input), Ordering::Relaxed);
        if input && is_alert(payload) {
            ALERTS.fetch_add(1, Ordering::Relaxed);
            // The bag: what follows the input's name.
            let rest = &topic[self.inputs.len()..];
            let bag = rest.iter().position(|&b| b == b'/').map_or(&rest[rest.len()..], |i| &rest[i + 1..]);
            let topic_len = self.events.len() + if bag.is_empty() { 0 } else { 1 + bag.len() };
            let alert = next_pkid(&mut self.next_pkid);
            // The fixed header and the topic's length, then the topic, the packet id, the body.
            let (mut header, mut len) = ([0x32u8, 0, 0, 0, 0, 0, 0], 1);
            let mut n = 2 + topic_len + 2 + payload.len();
            loop {
                let byte = (n & 0x7F) as u8;
                n >>= 7;
                header[len] = if n > 0 { byte | 0x80 } else { byte };
                len += 1;
                if n == 0 {
                    break;
                }
            }
            header[len..len + 2].copy_from_slice(&(topic_len as u16).to_be_bytes());
            let tx = &mut self.tx;
            tx.reserve(len + 2 + topic_len + 2 + payload.len() + 4);
            tx.extend_from_slice(&header[..len + 2]);
            tx.extend_from_slice(&self.events);
            if !bag.is_empty() {
                tx.extend_from_slice(b"&");
                tx.extend_from_slice(bag);
            }
            tx.extend_from_slice(&alert.to_be_bytes());
            tx.extend_from_slice(payload);
            if qos > 0 {
                if self.pipelined {
                    puback(&mut self.tx, pkid);
                } else {
                    self.waiting.push_back((pkid, true));
                }
            }
        } else if qos > 0 {
            if self.waiting.is_empty() {
                puback(&mut self.tx, pkid);
            } else {
                self.waiting.push_back((pkid, false));
            }
        }
        Ok(())
    }

    /// An alert confirmed: in `confirmed` order its input is acknowledged now, and the dropped
    /// inputs behind it.
    fn on_puback(&mut self) {
        if self.pipelined {
            return;
        }
        if let Some((pkid, _)) = self.waiting.pop_front() {
            puback(&mut self.tx, pkid);
        }
        while let Some(&(pkid, false)) = self.waiting.front() {
            self.waiting.pop_front();
            puback(&mut self.tx, pkid);
        }
    }
}

fn next_pkid(next: &mut u16) -> u16 {
    let id = *next;
    *next = if id == u16::MAX { 1 } else { id + 1 };
    id
}

fn puback(tx: &mut BytesMut, pkid: u16) {
    let [hi, lo] = pkid.to_be_bytes();
    tx.extend_from_slice(&[0x40, 2, hi, lo]);
}

/// Above 25: the number after the first `"temperature":` (the machine's in the sensor's body).
fn is_alert(body: &[u8]) -> bool {
    const KEY: &[u8; 14] = b"\"temperature\":";
    // A quote first, then the key's two overlapping 8-byte halves compared as words (a
    // slice comparison is a memcmp call).
    let word = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (low, high) = (word(KEY, 0), word(KEY, 6));
    let found = (0..body.len().saturating_sub(KEY.len() - 1))
        .find(|&i| body[i] == b'"' && word(body, i) == low && word(body, i + 6) == high);
    let Some(at) = found else { return false };
    let mut rest = body[at + KEY.len()..].iter().skip_while(|b| **b == b' ').peekable();
    if rest.peek() == Some(&&b'-') {
        return false;
    }
    let mut whole = 0u32;
    while let Some(&&d) = rest.peek().filter(|d| d.is_ascii_digit()) {
        whole = whole.saturating_mul(10).saturating_add(u32::from(d - b'0'));
        rest.next();
    }
    whole > 25
        || (whole == 25 && rest.next() == Some(&b'.') && rest.take_while(|d| d.is_ascii_digit()).any(|d| *d != b'0'))
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn write(fd: i32, buf: *const u8, count: usize) -> isize;
    fn _exit(code: i32) -> !;
}

/// SIGTERM prints the counts (with `write`, no allocation) and exits at once.
fn on_sigterm_exit() {
    extern "C" fn stop(_: i32) {
        let mut line = [0u8; 96];
        let mut len = 0;
        let mut put = |s: &[u8]| {
            line[len..len + s.len()].copy_from_slice(s);
            len += s.len();
        };
        put(b"tcp_floor: ");
        put(digits(MESSAGES.load(Ordering::Relaxed)).as_slice());
        put(b" messages, ");
        put(digits(ALERTS.load(Ordering::Relaxed)).as_slice());
        put(b" alerts\n");
        // SAFETY: write and _exit are async-signal-safe; the buffer is live for the call.
        unsafe {
            write(2, line.as_ptr(), len);
            _exit(0)
        }
    }
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        signal(15, stop);
    }
}

/// `n` in decimal, without allocating.
fn digits(mut n: u64) -> Digits {
    let mut d = Digits { buf: [0; 20], start: 20 };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}
