//! A TCP proxy between the module and the broker that a test can hold and cut: `hold_upstream`
//! keeps what the module sends from reaching the broker (so its alerts go unconfirmed), `cut`
//! closes every connection through it and throws away what was held. TLS passes through it
//! untouched, end to end.

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

impl Proxy {
    /// Listens on a free port and forwards every connection to `target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let (h, c, a) = (hold.clone(), cuts.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((module, _)) = listener.accept().await {
                a.fetch_add(1, SeqCst);
                let Ok(broker) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
                let _ = (module.set_nodelay(true), broker.set_nodelay(true));
                let (mr, mw) = module.into_split();
                let (br, bw) = broker.into_split();
                tokio::spawn(pipe(mr, bw, Some(h.clone()), c.subscribe()));
                tokio::spawn(pipe(br, mw, None, c.subscribe()));
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
    mut cut: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    cut.borrow_and_update();
    loop {
        tokio::select! {
            _ = cut.changed() => break,
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Held bytes are lost with the connection: the module must send them again.
                    if hold.as_ref().is_some_and(|h| h.load(SeqCst)) {
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
