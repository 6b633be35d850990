//! Test harness: a real mosquitto broker, the module running in-process, and an MQTT peer that
//! plays edgeHub's side of the conversation (inputs, twin answers) through the broker.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub mod proxy;

use edgefilter::config;
use edgefilter::stats::Stats;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const DEVICE: &str = "dev";
pub const MODULE: &str = "filter";
/// base64 of "0123456789abcdef0123456789abcdef".
pub const KEY_B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// What the test peer playing edgeHub's side subscribes to: the module's alerts and its twin requests.
pub const EDGE_SIDE: [&str; 3] =
    ["devices/dev/modules/filter/messages/events/#", "$iothub/twin/GET/#", "$iothub/twin/PATCH/properties/reported/#"];
pub const HUB: &str = "test-hub.azure-devices.net";

pub fn connection_string() -> String {
    format!("HostName={HUB};DeviceId={DEVICE};ModuleId={MODULE};SharedAccessKey={KEY_B64}")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until process `pid` listens on the port (up to 20 s: 64 tests start their brokers at
/// once on a loaded 2-core machine, and 5 s was once too short). A connection that succeeds is not
/// enough: the port `free_port` handed out can be bound meanwhile by another test's listener.
pub fn wait_for_listener(pid: u32, port: u16) {
    assert!(listens_within(pid, port, Duration::from_secs(20)), "process {pid} does not listen on port {port}");
}

/// Spawns `command(port)` on a free port and waits until its process listens there (up to 20 s).
/// The port can be taken before the process binds it, and the process then exits: it is started
/// again on another port, up to 5 times.
pub fn spawn_listening(mut command: impl FnMut(u16) -> Command) -> (Reaped, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = Reaped::new(command(port).spawn().unwrap());
        if listens_or_exits(&mut child, port) {
            return (child, port);
        }
    }
    panic!("the process exited before it listened, on 5 ports");
}

/// Waits until `child` listens on the port (true) or exits first (false: the port was taken);
/// panics after 20 s (a [`Reaped`] child is killed then).
fn listens_or_exits(child: &mut Child, port: u16) -> bool {
    for _ in 0..800 {
        if owns_listener(child.id(), port) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("process {} did not listen on port {port} within 20 s", child.id());
}

/// Whether process `pid` listens on the port within `limit`.
pub fn listens_within(pid: u32, port: u16, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if owns_listener(pid, port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (from /proc/net/tcp and
/// the process's descriptors), so that a test never talks to another test's listener.
pub fn owns_listener(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// A mosquitto broker with persistence, in its own directory.
pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// A broker on a free port. The port can still be taken between `free_port` and mosquitto's
    /// bind (the kernel hands the same range to the tests' outgoing connections), so a broker
    /// that exits at once is started again on another port.
    pub fn start(extra: &str) -> Broker {
        (0..5).find_map(|_| Broker::try_start(extra, None)).expect("mosquitto did not start on any of 5 ports")
    }

    /// A broker with a plain listener and a TLS one (`cert`, `key`), both on free ports; returns
    /// it and the TLS port. Either port can be taken before mosquitto binds it, and mosquitto
    /// then exits: it is started again on two other ports.
    pub fn start_tls(extra: &str, cert: &Path, key: &Path) -> (Broker, u16) {
        (0..10)
            .find_map(|_| {
                let tls_port = free_port();
                let tls = format!(
                    "{extra}\nlistener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\nallow_anonymous true",
                    cert.display(),
                    key.display()
                );
                Broker::try_start(&tls, Some(tls_port)).map(|b| (b, tls_port))
            })
            .expect("mosquitto with a TLS listener did not start on any of 10 pairs of ports")
    }

    /// A broker on a free port (and listening on `also`, if given), or None if it exited first.
    fn try_start(extra: &str, also: Option<u16>) -> Option<Broker> {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Broker { port: free_port(), dir, child: None };
        let conf = format!(
            "user root\nlistener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_packet_size 300000\n{extra}\n",
            b.port,
            b.dir.path().display()
        );
        std::fs::write(b.dir.path().join("mosquitto.conf"), conf).unwrap();
        if !b.try_spawn() {
            return None;
        }
        // mosquitto binds its listeners in order and exits if one fails.
        match also {
            Some(port) if !listens_within(b.pid(), port, Duration::from_secs(10)) => None,
            _ => Some(b),
        }
    }

    fn spawn(&mut self) {
        // After a restart the port is the broker's own; only a race for it can stop the bind.
        for _ in 0..5 {
            if self.try_spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mosquitto did not start again on port {}", self.port);
    }

    /// Starts mosquitto and waits until it listens (up to 20 s); false if it exited first (its
    /// port was taken: another test's listener there does not count as the broker).
    fn try_spawn(&mut self) -> bool {
        let mut child = Reaped::new(
            Command::new(mosquitto_binary())
                .arg("-c")
                .arg(self.dir.path().join("mosquitto.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto must be installed (apt-get install mosquitto)"),
        );
        let listens = listens_or_exits(&mut child, self.port);
        if listens {
            self.child = Some(child.into_inner());
        }
        listens
    }

    /// The broker's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
    }

    /// Stops the broker gracefully (it saves its persistent sessions) and starts it again.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&c);
            c.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn mosquitto_binary() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

pub fn terminate(c: &Child) {
    Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
}

/// A child process that is killed and reaped when dropped, so that a test that panics leaves
/// none behind (one left running holds the test harness's output pipe open).
pub struct Reaped(Option<Child>);

impl Reaped {
    pub fn new(child: Child) -> Reaped {
        Reaped(Some(child))
    }

    /// The child, no longer killed on drop (to wait for its output).
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("not taken")
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("not taken")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The module, running in this process until stopped.
pub struct RunningModule {
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), String>>,
}

impl RunningModule {
    pub fn start(env: &[(&str, String)]) -> RunningModule {
        if std::env::var("RUST_LOG").is_ok() {
            edgefilter::logging::init(|n| std::env::var(n).ok());
        }
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if !env.iter().any(|(k, _)| k == "EDGEFILTER_METRICS_ADDR") {
            env.push(("EDGEFILTER_METRICS_ADDR".into(), "off".into()));
        }
        let config = config::resolve(|n| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()), None).unwrap();
        let stats = Arc::new(Stats::default());
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(edgefilter::module::run(config, stats.clone(), async {
            let _ = rx.await;
        }));
        RunningModule { stats, stop: Some(tx), handle }
    }

    /// Plain TCP to a local broker.
    pub fn on(port: u16, extra: &[(&str, String)]) -> RunningModule {
        let mut env = vec![
            ("EdgeHubConnectionString", connection_string()),
            ("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{port}")),
        ];
        env.extend(extra.iter().cloned());
        RunningModule::start(&env)
    }

    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.handle).await.expect("module did not stop").unwrap()
    }
}

/// Watches a broker for the module's twin request, which the module sends right behind its
/// SUBSCRIBE: once it has arrived, the broker (which takes a client's packets in order) holds the
/// module's subscriptions. Start it before the module.
pub struct SubscribedWatch(Peer);

impl SubscribedWatch {
    pub async fn start(port: u16) -> SubscribedWatch {
        SubscribedWatch(Peer::connect(port, "watch-subscribed", true, &["$iothub/twin/GET/#"]).await)
    }

    /// Waits for the module's next subscription.
    pub async fn wait(&mut self) {
        self.0.next(Duration::from_secs(10)).await.expect("the module subscribed (its twin request)");
    }
}

/// The lines a process writes to `streams`, as they come, on one channel: a thread per stream,
/// and the channel closes once every stream has ended.
pub fn log_lines(
    streams: impl IntoIterator<Item = Box<dyn std::io::Read + Send>>,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    for out in streams {
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// An MQTT client whose received publishes arrive on a channel (acknowledged automatically).
pub struct Peer {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Publish>,
    task: JoinHandle<()>,
    acks: Arc<std::sync::atomic::AtomicU64>,
}

impl Peer {
    pub async fn connect(port: u16, client_id: &str, clean: bool, filters: &[&str]) -> Peer {
        Peer::connect_with(MqttOptions::new(client_id, "127.0.0.1", port), clean, filters).await
    }

    pub async fn connect_with(mut options: MqttOptions, clean: bool, filters: &[&str]) -> Peer {
        options
            .set_clean_session(clean)
            .set_max_packet_size(10_000_000, 10_000_000)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let sub = client.clone();
        let acks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acked = acks.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut pending_subacks = 0;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        for f in &filters {
                            sub.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                        }
                        pending_subacks = filters.len();
                        if pending_subacks == 0 {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        pending_subacks -= 1;
                        if pending_subacks == 0 {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        // 20 s, as wait_for_listener: 64 tests connect at once on a loaded 2-core machine.
        tokio::time::timeout(Duration::from_secs(20), ready_rx).await.expect("peer did not connect").unwrap();
        Peer { client, rx, task, acks }
    }

    /// Waits until the broker has confirmed `n` of this peer's publishes in all.
    pub async fn wait_confirmed(&self, n: u64) {
        let acks = self.acks.clone();
        wait_until("the broker confirmed the publishes", Duration::from_secs(10), || {
            acks.load(std::sync::atomic::Ordering::Relaxed) >= n
        })
        .await;
    }

    /// The next message the module sent on one of its outputs (`…/messages/events/…`), skipping
    /// its twin traffic; None after `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Publish> {
        self.next_where(wait, |p| p.topic.contains("/messages/events/")).await
    }

    /// The next publish that `matches`, skipping the others; panics when none came within `wait`.
    pub async fn next_matching(&mut self, wait: Duration, matches: impl FnMut(&Publish) -> bool) -> Publish {
        self.next_where(wait, matches).await.expect("the publish awaited")
    }

    /// The next publish that `matches`, skipping the others; None after `wait`.
    async fn next_where(&mut self, wait: Duration, mut matches: impl FnMut(&Publish) -> bool) -> Option<Publish> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let p = self.next(until.saturating_duration_since(tokio::time::Instant::now())).await?;
            if matches(&p) {
                return Some(p);
            }
        }
    }

    pub async fn publish(&self, topic: &str, body: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, body).await.unwrap();
    }

    /// The next publish, or None after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Publish> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// Everything that arrives until nothing has for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Publish> {
        let mut out = Vec::new();
        while let Some(p) = self.next(quiet).await {
            out.push(p);
        }
        out
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn input_topic(bag: &str) -> String {
    let t = format!("devices/{DEVICE}/modules/{MODULE}/inputs/input1");
    if bag.is_empty() {
        t
    } else {
        format!("{t}/{bag}")
    }
}

pub fn hot(seq: u64, t: f64) -> (String, String) {
    (
        input_topic(&format!(
            "sequenceNumber={seq}&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid={DEVICE}&%24.cmid=sensor"
        )),
        format!(r#"{{"machine":{{"temperature":{t},"pressure":1.5}},"ambient":{{"temperature":21,"humidity":25}}}}"#),
    )
}

/// The value of `key` in an alert's topic bag.
pub fn bag_value(topic: &str, key: &str) -> Option<String> {
    let bag = topic.rsplit_once("/messages/events/")?.1;
    edgefilter::topic::parse_bag(bag).ok()?.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Plays edgeHub's twin side on a plain broker: answers GETs with `desired`, collects reported
/// patches. Returns the reported patches seen.
pub async fn answer_twin(peer: &mut Peer, desired: &serde_json::Value, wait: Duration) -> Vec<serde_json::Value> {
    let mut reported = Vec::new();
    while let Some(p) = peer.next(wait).await {
        let topic = p.topic.clone();
        if topic.starts_with("$iothub/twin/GET/") {
            let rid = edgefilter::topic::query_param(topic.rsplit('/').next().unwrap(), "$rid").unwrap().to_string();
            let body = serde_json::json!({"desired": desired, "reported": {"$version": 1}});
            peer.publish(&edgefilter::topic::twin_response(200, &rid), body.to_string()).await;
        } else if topic.starts_with("$iothub/twin/PATCH/properties/reported/") {
            reported.push(serde_json::from_slice(&p.payload).unwrap());
        }
    }
    reported
}

/// A CA and a server certificate for `localhost`, written as PEM files.
pub fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "edgefilter test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}

/// The embedded hub on a free port, with this harness's module and a `sensor` module (same key),
/// local mode's routes from the sensor to the module, and `desired` as the module's twin. It
/// delivers to a module as edgeHub does, one message in flight.
pub async fn embedded_hub(desired: serde_json::Value) -> (Arc<edgefilter::hub::Hub>, u16) {
    embedded_hub_with(desired, edgefilter::hub::Delivery::default()).await
}

/// [`embedded_hub`] delivering to modules as `delivery` says.
pub async fn embedded_hub_with(
    desired: serde_json::Value,
    delivery: edgefilter::hub::Delivery,
) -> (Arc<edgefilter::hub::Hub>, u16) {
    let key = edgefilter::sas::decode_key(KEY_B64).unwrap();
    let config = edgefilter::hub::HubConfig {
        hub_hostname: HUB.into(),
        device_id: DEVICE.into(),
        keys: std::collections::HashMap::from([(MODULE.to_string(), key.clone()), ("sensor".to_string(), key)]),
        routes: edgefilter::hub::routes::local_routes("sensor", MODULE),
        desired: std::collections::HashMap::from([(
            MODULE.to_string(),
            desired.as_object().cloned().unwrap_or_default(),
        )]),
        delivery,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hub = edgefilter::hub::Hub::new(config, None);
    tokio::spawn(hub.clone().serve(listener));
    (hub, port)
}

/// A mosquitto with a plain listener (`port`) and a TLS listener (the returned port) whose
/// certificate, for `localhost`, is signed by the returned CA file.
pub fn tls_broker(certs: &Path) -> (Broker, u16, PathBuf) {
    let (ca, cert, key) = certificates(certs);
    let (broker, tls_port) = Broker::start_tls("", &cert, &key);
    (broker, tls_port, ca)
}

/// Waits until `cond` holds, checking every 10 ms; panics with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Plays edgeHub's twin side until the module has applied `desired`: answers its GET, then waits
/// for the module to count the update. Returns the reported patches seen meanwhile.
pub async fn serve_twin(
    peer: &mut Peer,
    module: &RunningModule,
    desired: &serde_json::Value,
) -> Vec<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let before = module.stats.twin_updates.load(Relaxed);
    let mut reported = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while module.stats.twin_updates.load(Relaxed) == before {
        assert!(tokio::time::Instant::now() < deadline, "the module never asked for its twin");
        let Some(p) = peer.next(Duration::from_millis(50)).await else { continue };
        if p.topic.starts_with("$iothub/twin/GET/") {
            let rid = edgefilter::topic::query_param(p.topic.rsplit('/').next().unwrap(), "$rid").unwrap().to_string();
            let body = serde_json::json!({"desired": desired, "reported": {"$version": 1}});
            peer.publish(&edgefilter::topic::twin_response(200, &rid), body.to_string()).await;
        } else if p.topic.starts_with("$iothub/twin/PATCH/properties/reported/") {
            reported.push(serde_json::from_slice(&p.payload).unwrap());
        }
    }
    reported
}

/// How the module reaches the broker in a test run over both transports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transport {
    Tcp,
    Tls,
}

/// A broker with a plain listener (for the test's edgeHub side) and, for TLS, a TLS listener for
/// the module, with `extra` configuration.
pub struct Hub {
    pub broker: Broker,
    /// Where the module connects.
    pub module_port: u16,
    pub transport: Transport,
    ca: Option<PathBuf>,
    _certs: tempfile::TempDir,
}

impl Hub {
    pub fn start(transport: Transport, extra: &str) -> Hub {
        let certs = tempfile::tempdir().unwrap();
        match transport {
            Transport::Tcp => {
                let broker = Broker::start(extra);
                Hub { module_port: broker.port, broker, transport, ca: None, _certs: certs }
            }
            Transport::Tls => {
                let (ca, cert, key) = certificates(certs.path());
                let (broker, tls_port) = Broker::start_tls(extra, &cert, &key);
                Hub { module_port: tls_port, broker, transport, ca: Some(ca), _certs: certs }
            }
        }
    }

    /// The module's environment to connect to `port` (the hub's own, or a proxy in front of it).
    pub fn module_env(&self, port: u16) -> Vec<(&'static str, String)> {
        let mut env = vec![("EdgeHubConnectionString", connection_string())];
        match &self.ca {
            None => env.push(("EDGEFILTER_MQTT_URL", format!("mqtt://127.0.0.1:{port}"))),
            Some(ca) => {
                env.push(("EDGEFILTER_MQTT_URL", format!("mqtts://localhost:{port}")));
                env.push(("EdgeModuleCACertificateFile", ca.display().to_string()));
            }
        }
        env
    }

    /// The module, connected to this hub directly, with `extra` settings.
    pub fn module(&self, extra: &[(&'static str, String)]) -> RunningModule {
        let mut env = self.module_env(self.module_port);
        env.extend(extra.iter().cloned());
        RunningModule::start(&env)
    }
}
