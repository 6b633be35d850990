//! The security-daemon path: a workload API server on a real unix socket (hyper, checking request
//! paths, queries and bodies exactly, signing with a test key), the module configured by IOTEDGE_*
//! variables, the embedded hub validating the tokens, and mosquitto with TLS chained to the bundle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Error500,
    Garbage,
}

/// What the stub serves and saw.
struct Daemon {
    mode: Mutex<Mode>,
    bundle: Mutex<String>,
    signs: AtomicU64,
    bundles: AtomicU64,
    /// Requests answered with a 500.
    failed: AtomicU64,
    /// Requests that did not match the API exactly.
    wrong: Mutex<Vec<String>>,
}

const GENID: &str = "637abc1";
const API: &str = "2022-08-03";

async fn serve(
    daemon: Arc<Daemon>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let method = req.method().clone();
    let body = req.into_body().collect().await?.to_bytes();
    let mode = *daemon.mode.lock().unwrap();
    let reply =
        |status: u16, body: String| Ok(Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap());
    if mode == Mode::Error500 {
        daemon.failed.fetch_add(1, Relaxed);
        return reply(500, "daemon is unhappy".into());
    }
    if method == "POST" && path == format!("/modules/{MODULE}/genid/{GENID}/sign?api-version={API}") {
        daemon.signs.fetch_add(1, Relaxed);
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let keys: Vec<&String> = request.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        if request["keyId"] != "primary" || request["algo"] != "HMACSHA256" || keys.len() != 3 {
            daemon.wrong.lock().unwrap().push(format!("sign body {request}"));
            return reply(400, "bad request".into());
        }
        let data = base64::engine::general_purpose::STANDARD.decode(request["data"].as_str().unwrap_or("")).unwrap();
        let key = edgefilter::sas::decode_key(KEY_B64).unwrap();
        if mode == Mode::Garbage {
            return reply(200, "{\"digest\":".into());
        }
        return reply(200, json!({"digest": edgefilter::sas::sign(&key, &data)}).to_string());
    }
    if method == "GET" && path == format!("/trust-bundle?api-version={API}") {
        daemon.bundles.fetch_add(1, Relaxed);
        if mode == Mode::Garbage {
            return reply(200, "<html>".into());
        }
        return reply(200, json!({"certificate": *daemon.bundle.lock().unwrap()}).to_string());
    }
    daemon.wrong.lock().unwrap().push(format!("{method} {path}"));
    reply(404, "not found".into())
}

/// Starts the stub on a unix socket; returns it and the socket's URI.
fn start_daemon(dir: &std::path::Path, bundle: String) -> (Arc<Daemon>, String) {
    let socket = dir.join("workload.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let daemon = Arc::new(Daemon {
        mode: Mutex::new(Mode::Normal),
        bundle: Mutex::new(bundle),
        signs: AtomicU64::new(0),
        bundles: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        wrong: Mutex::new(Vec::new()),
    });
    let d = daemon.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let d = d.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| serve(d.clone(), req));
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (daemon, format!("unix://{}", socket.display()))
}

fn edge_env(workload_uri: &str, mqtt_url: &str, ttl: &str) -> Vec<(&'static str, String)> {
    vec![
        ("IOTEDGE_IOTHUBHOSTNAME", HUB.into()),
        ("IOTEDGE_GATEWAYHOSTNAME", "localhost".into()),
        ("IOTEDGE_DEVICEID", DEVICE.into()),
        ("IOTEDGE_MODULEID", MODULE.into()),
        ("IOTEDGE_MODULEGENERATIONID", GENID.into()),
        ("IOTEDGE_WORKLOADURI", workload_uri.into()),
        ("IOTEDGE_APIVERSION", API.into()),
        ("IOTEDGE_AUTHSCHEME", "sasToken".into()),
        ("EDGEFILTER_MQTT_URL", mqtt_url.into()),
        ("EDGEFILTER_TOKEN_TTL_SECS", ttl.into()),
        // Ignored: the IOTEDGE_* variables take precedence.
        ("EdgeHubConnectionString", "HostName=x;DeviceId=y;ModuleId=z;SharedAccessKey=c2VjcmV0".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_by_the_daemon_are_accepted_and_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, uri) = start_daemon(dir.path(), String::new());
    let (hub, port) = embedded_hub(json!({})).await;
    let mut upstream = Peer::connect(port, "watch", true, &["local/upstream/#"]).await;
    let module = RunningModule::start(&edge_env(&uri, &format!("mqtt://127.0.0.1:{port}"), "10"));
    // The hub validates every token against the module key: a connection proves the signature.
    let sensor = Peer::connect(port, "sensor-anon", true, &[]).await;
    wait_until("subscribed", Duration::from_secs(10), || hub.subscribers("devices/dev/modules/filter/inputs/#") == 1)
        .await;
    let topic = "devices/dev/modules/sensor/messages/events/%24.on=temperatureOutput&sequenceNumber=1";
    sensor.publish(topic, r#"{"machine":{"temperature":40}}"#).await;
    assert!(upstream.next(Duration::from_secs(3)).await.is_some(), "alert through the hub");

    // A 10 s token is due for renewal after 8 s, and the daemon fails then: the module keeps its
    // current token and connection, and signs again (0.5 s, doubling) until the daemon answers.
    *daemon.mode.lock().unwrap() = Mode::Error500;
    wait_until("renewal refused twice", Duration::from_secs(15), || daemon.failed.load(Relaxed) >= 2).await;
    assert_eq!(module.stats.connections.load(Relaxed), 1, "the connection outlives a failing daemon");
    sensor.publish(topic, r#"{"machine":{"temperature":41}}"#).await;
    assert!(upstream.next(Duration::from_secs(3)).await.is_some(), "still filtering on the current token");

    // The daemon recovers: the token is renewed through it, and the hub accepts the new one.
    *daemon.mode.lock().unwrap() = Mode::Normal;
    wait_until("renewed through the daemon", Duration::from_secs(10), || {
        daemon.signs.load(Relaxed) >= 2 && module.stats.connections.load(Relaxed) >= 2
    })
    .await;
    sensor.publish(topic, r#"{"machine":{"temperature":42}}"#).await;
    assert!(upstream.next(Duration::from_secs(3)).await.is_some(), "alert after renewal");
    assert!(daemon.wrong.lock().unwrap().is_empty(), "{:?}", daemon.wrong.lock().unwrap());
    module.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_trust_comes_from_the_daemons_bundle() {
    let certs = tempfile::tempdir().unwrap();
    let (broker, tls_port, ca) = tls_broker(certs.path()); // certificate for "localhost"
    let mut edge = Peer::connect(
        broker.port,
        "edgehub-side",
        true,
        &["devices/dev/modules/filter/messages/events/#", "$iothub/twin/GET/#"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, uri) = start_daemon(dir.path(), std::fs::read_to_string(&ca).unwrap());
    let proxy = crate::common::proxy::Proxy::start(tls_port).await;
    let url = format!("mqtts://localhost:{}", proxy.port);
    let module = RunningModule::start(&edge_env(&uri, &url, "3600"));
    // Subscribed: the module's twin request follows its SUBSCRIBE, and the broker takes them in order.
    let get = edge.next(Duration::from_secs(10)).await.expect("the module's twin request");
    assert!(get.topic.starts_with("$iothub/twin/GET/"), "{}", get.topic);
    let (topic, body) = hot(1, 40.0);
    edge.publish(&topic, body).await;
    assert!(edge.next(Duration::from_secs(3)).await.is_some(), "alert over TLS trusted through the bundle");
    assert_eq!(daemon.bundles.load(Relaxed), 1);
    module.stop().await.unwrap();

    // A bundle with another CA: the broker's certificate is refused, nothing connects.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = certificates(other.path());
    *daemon.bundle.lock().unwrap() = std::fs::read_to_string(wrong_ca).unwrap();
    let tried = proxy.accepted.load(Relaxed);
    let module = RunningModule::start(&edge_env(&uri, &url, "3600"));
    // Two attempts reached the broker (so the module did try), and neither connected.
    wait_until("the module tried twice", Duration::from_secs(10), || proxy.accepted.load(Relaxed) >= tried + 2).await;
    assert_eq!(module.stats.connections.load(Relaxed), 0);
    module.stop().await.unwrap();

    // A daemon answering garbage: the module keeps asking and never connects on a guess.
    *daemon.mode.lock().unwrap() = Mode::Garbage;
    let before = daemon.bundles.load(Relaxed);
    let module = RunningModule::start(&edge_env(&uri, &url, "3600"));
    wait_until("asked again", Duration::from_secs(10), || daemon.bundles.load(Relaxed) >= before + 2).await;
    assert_eq!(module.stats.connections.load(Relaxed), 0);
    module.stop().await.unwrap();
}
