//! A hub that accepts every connection and drops it at once, over TLS and plain TCP: the module
//! backs off as from a refusal instead of reconnecting without pause (issue 20: 20,858 CONNECTs in
//! a minute).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use rumqttc::tokio_rustls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads the CONNECT, answers CONNACK (accepted), waits for the next packet (the module's
/// SUBSCRIBE: it took the CONNACK), and closes.
async fn accept_and_drop<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; 4096];
    if s.read(&mut buf).await.unwrap_or(0) == 0 {
        return;
    }
    let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    let _ = s.shutdown().await;
}

/// The stand-in hub on a free port; returns the port and its count of CONNACKs sent.
async fn dropping_hub(tls: Option<TlsAcceptor>) -> (u16, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => accept_and_drop(tcp).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            accept_and_drop(s).await
                        }
                    }
                }
            });
        }
    });
    (port, accepted)
}

fn acceptor(dir: &std::path::Path) -> (TlsAcceptor, std::path::PathBuf) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let (ca, cert, key) = certificates(dir);
    let certs = CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), ca)
}

async fn backs_off(transport: Transport) {
    let certs = tempfile::tempdir().unwrap();
    let (port, accepted, mut env) = match transport {
        Transport::Tcp => {
            let (port, accepted) = dropping_hub(None).await;
            (port, accepted, vec![("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{port}"))])
        }
        Transport::Tls => {
            let (acceptor, ca) = acceptor(certs.path());
            let (port, accepted) = dropping_hub(Some(acceptor)).await;
            let url = ("EDGEFILTER_MQTT_URL", format!("mqtts://localhost:{port}"));
            (port, accepted, vec![url, ("EdgeModuleCACertificateFile", ca.display().to_string())])
        }
    };
    env.push(("EdgeHubConnectionString", connection_string()));
    let module = RunningModule::start(&env);
    wait_until("the module connected", Duration::from_secs(10), || accepted.load(SeqCst) >= 1).await;
    let first = tokio::time::Instant::now();
    // The back-off from the first drop on: 0.5, 1, 2, 4 s (±20%): 3 to 5 attempts in 4 s. Before
    // the fix, thousands.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = accepted.load(SeqCst);
    assert!((3..=6).contains(&n), "{transport:?} on {port}: {n} connections in {:?}", first.elapsed());
    assert!(module.stats.connections.load(SeqCst) >= 2, "{transport:?}: the module was accepted each time");
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_accepts_and_drops_every_connection_is_backed_off_from_over_tls() {
    backs_off(Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_accepts_and_drops_every_connection_is_backed_off_from_over_tcp() {
    backs_off(Transport::Tcp).await;
}
