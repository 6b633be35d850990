//! A TCP proxy between the module and the broker that a test can hold and cut: `hold_upstream`
//! keeps what the module sends from reaching the broker (so its alerts go unconfirmed), `cut`
//! closes every connection through it and throws away what was held. With a budget it plays a hub
//! that chokes on one large message: a connection on which the module sends more than the budget
//! stops being forwarded upstream, the hub's answers to what came before still come back for a
//! moment, and then the connection closes. TLS passes through it untouched, end to end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    hold: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

/// A per-connection byte budget upstream, for the first `connections` connections (all: u64::MAX).
#[derive(Clone, Copy)]
pub struct Budget {
    pub bytes: u64,
    pub connections: u64,
}

impl Proxy {
    /// Listens on a free port and forwards every connection to `target`.
    pub async fn start(target: u16) -> Proxy {
        Proxy::start_with(target, None).await
    }

    /// Forwards to `target`, choking connections that send more than the budget.
    pub async fn start_with(target: u16, budget: Option<Budget>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let (h, c, a) = (hold.clone(), cuts.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((module, _)) = listener.accept().await {
                let n = a.fetch_add(1, SeqCst) + 1;
                let limit = budget.filter(|b| n <= b.connections).map(|b| b.bytes);
                let Ok(broker) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
                let _ = (module.set_nodelay(true), broker.set_nodelay(true));
                let (mr, mw) = module.into_split();
                let (br, bw) = broker.into_split();
                tokio::spawn(pipe(mr, bw, Some(h.clone()), limit, c.subscribe()));
                tokio::spawn(pipe(br, mw, None, None, c.subscribe()));
            }
        });
        Proxy { port, hold, cuts, accepted }
    }

    /// From now on, bytes from the module are read and thrown away, not forwarded.
    pub fn hold_upstream(&self) {
        self.hold.store(true, SeqCst);
    }

    /// Closes every connection through the proxy and forwards normally again.
    pub fn cut(&self) {
        self.hold.store(false, SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hold: Option<Arc<AtomicBool>>,
    budget: Option<u64>,
    mut cut: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    cut.borrow_and_update();
    let (mut sent, mut choked) = (0u64, None);
    loop {
        let close = async {
            match choked {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cut.changed() => break,
            _ = close => break,
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Held bytes are lost with the connection: the module must send them again.
                    if hold.as_ref().is_some_and(|h| h.load(SeqCst)) || choked.is_some() {
                        continue;
                    }
                    sent += n as u64;
                    if budget.is_some_and(|b| sent > b) {
                        choked = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(200));
                        continue;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = to.shutdown().await;
}
