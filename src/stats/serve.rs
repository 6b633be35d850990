//! The `/metrics` endpoint: HTTP/1.1 over TCP, one task per connection, and a step timer that
//! keeps the latency window moving between scrapes (metrics-collector scrapes every 300 s by
//! default).
//!
//! Accepting can fail for the whole process (no file descriptors left): the listener stays
//! readable, so retrying at once would spin. A failure is counted, logged once per kind until
//! accepting works again, and followed by a pause that doubles up to a second ([`Backoff`]).
//!
//! A client that sends no complete request head within [`HEADER_READ_TIMEOUT`] (one that connects
//! and stays silent, or trickles bytes) is disconnected, so idle connections cannot pile up and
//! use the descriptors the module needs. A kept-alive connection idle that long is closed too;
//! Prometheus and metrics-collector reconnect for their next scrape.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{info, warn};

use super::{Labels, Stats, STEP};

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: tokio::net::TcpListener, stats: Arc<Stats>, labels: Labels) {
    let labels = Arc::new(labels);
    let mut backoff = Backoff::default();
    let mut step = tokio::time::Instant::now() + STEP;
    loop {
        let Ok(accepted) = tokio::time::timeout_at(step, listener.accept()).await else {
            stats.snapshots(Instant::now());
            step += STEP;
            continue;
        };
        match accepted {
            Ok((stream, _)) => {
                if let Some(failures) = backoff.succeeded() {
                    info!("metrics endpoint: accepting again after {failures} failures");
                }
                tokio::spawn(connection(stream, stats.clone(), labels.clone()));
            }
            Err(e) => {
                stats.metrics_accept_failures.fetch_add(1, Relaxed);
                let (pause, first_of_kind) = backoff.failed(e.raw_os_error());
                if first_of_kind {
                    warn!("metrics endpoint: cannot accept a connection: {e} (retrying, at most every second)");
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// How long a connection may take to send a request's head, or stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn connection(stream: tokio::net::TcpStream, stats: Arc<Stats>, labels: Arc<Labels>) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (stats, labels) = (stats.clone(), labels.clone());
        async move {
            if req.uri().path() == "/metrics" {
                hyper::Response::builder()
                    .header("Content-Type", "text/plain; version=0.0.4")
                    .body(Full::new(bytes::Bytes::from(stats.prometheus(&labels))))
            } else {
                hyper::Response::builder().status(404).body(Full::new(bytes::Bytes::from_static(b"see /metrics\n")))
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How long to pause after a failed accept, and which failures were logged, since the last
/// accept that worked.
#[derive(Debug, Default)]
pub struct Backoff {
    pause: Duration,
    failures: u64,
    logged: Vec<Option<i32>>,
}

impl Backoff {
    /// A failure with this OS error code: the pause before the next try, and whether it is the
    /// first of its kind.
    pub fn failed(&mut self, code: Option<i32>) -> (Duration, bool) {
        self.pause = (self.pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
        self.failures += 1;
        let first = !self.logged.contains(&code);
        if first {
            self.logged.push(code);
        }
        (self.pause, first)
    }

    /// An accept worked: how many failed before it, if any did.
    pub fn succeeded(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        self.pause = Duration::ZERO;
        self.logged.clear();
        (failures > 0).then_some(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_pause_longer_each_time_up_to_a_second_and_log_once_per_kind() {
        let mut b = Backoff::default();
        let emfile = Some(24);
        let pauses: Vec<_> = (0..10).map(|_| b.failed(emfile)).collect();
        assert_eq!(pauses[0], (FIRST_PAUSE, true));
        assert_eq!(pauses[1], (FIRST_PAUSE * 2, false));
        assert_eq!(pauses[9], (MAX_PAUSE, false));
        assert!(pauses.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(b.failed(Some(23)), (MAX_PAUSE, true), "another kind is logged too");
        assert_eq!(b.succeeded(), Some(11));
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(emfile), (FIRST_PAUSE, true), "a new episode starts over");
    }
}
