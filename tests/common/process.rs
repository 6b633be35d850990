//! The module binary as a process of its own (so that a test can SIGTERM or SIGKILL it), with a
//! state directory, and the edgeHub side of the conversation for it: twin answers, and what it
//! publishes, waited for by condition.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::Publish;
use serde_json::Value;

use crate::common::{Hub, Peer};

/// The state file in `dir`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join(edgefilter::statefile::FILE_NAME)
}

/// `target/…/edgefilter`, run with the hub's environment, `EDGEFILTER_STATE_DIR` and `extra`; its
/// log goes to `module-N.log` in the state directory.
pub struct ModuleProcess {
    child: Child,
    pub log: PathBuf,
}

impl ModuleProcess {
    pub fn start(hub: &Hub, state_dir: &Path, extra: &[(&str, String)]) -> ModuleProcess {
        let runs = std::fs::read_dir(state_dir).map_or(0, |d| d.count());
        let log = state_dir.join(format!("module-{runs}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgefilter"));
        cmd.env_clear()
            .envs(hub.module_env(hub.module_port))
            .env("EDGEFILTER_METRICS_ADDR", "off")
            .env("EDGEFILTER_STATE_DIR", state_dir)
            .env("RUST_LOG", "info")
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null());
        ModuleProcess { child: cmd.spawn().expect("the module binary"), log }
    }

    /// SIGTERM, and the exit status once it stopped.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        crate::common::terminate(&self.child);
        for _ in 0..2000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the module did not stop within 20 s of SIGTERM:\n{}", self.log_text());
    }

    /// SIGKILL: no checkpoint at the end.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ModuleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// edgeHub's side for a module process: answers twin requests with `desired`, keeps reported
/// patches, and hands out the module's other publishes by condition.
pub struct EdgeSide {
    pub peer: Peer,
    pub desired: Value,
    pub reported: Vec<Value>,
}

impl EdgeSide {
    /// The next publish of the module's (not a twin request or report) that `accept` takes,
    /// within `within`; publishes it does not take are dropped.
    pub async fn until(&mut self, what: &str, within: Duration, mut accept: impl FnMut(&Publish) -> bool) -> Publish {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(p) = self.peer.next(left).await else { panic!("timed out waiting for {what}") };
            if p.topic.starts_with("$iothub/twin/GET/") {
                let rid = edgefilter::topic::query_param(p.topic.rsplit('/').next().unwrap(), "$rid").unwrap();
                let body = serde_json::json!({"desired": self.desired, "reported": {"$version": 1}});
                let topic = edgefilter::topic::twin_response(200, rid);
                self.peer.publish(&topic, body.to_string()).await;
            } else if p.topic.starts_with("$iothub/twin/PATCH/properties/reported/") {
                self.reported.push(serde_json::from_slice(&p.payload).unwrap());
            } else if accept(&p) {
                return p;
            }
        }
    }

    /// Answers twin requests until a reported patch `accept` takes, within `within`.
    pub async fn reported_until(&mut self, what: &str, within: Duration, mut accept: impl FnMut(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = 0;
        loop {
            if self.reported[seen..].iter().any(&mut accept) {
                return;
            }
            seen = self.reported.len();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting until {what}: reported {:?}", self.reported);
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), self.until(what, left, |_| false)).await;
        }
    }
}
