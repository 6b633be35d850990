//! `replay --aggregates FILE`: the module runs the twin's `Aggregates` during the replay, so
//! that their cost and their windows can be measured. The replay sets them with a desired patch
//! (as edgeHub forwards one from IoT Hub), waits until the module reports them in effect and
//! their first window has started (a patch applies to the windows that start after it), and
//! tallies the aggregate messages that come back: how many, and the readings their `count`s add
//! up to, which for aggregates without `having` or `body` must be every message sent, each once
//! (no reading lost or counted twice across the run's windows).

use std::time::{Duration, Instant};

use rumqttc::Publish;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{Publisher, ReplayError};

/// The reported-properties patches, which say when the module has taken the aggregates.
pub const REPORTED: &str = "$iothub/twin/PATCH/properties/reported/#";

/// The aggregates to set, read from a file holding the twin's `Aggregates` object.
#[derive(Clone, Debug)]
pub struct Aggregates {
    pub set: Map<String, Value>,
    /// The outputs their messages leave on.
    pub outputs: Vec<String>,
    /// Aggregates whose every window is sent with its `count`: the readings they must add up to.
    pub counting: u64,
}

impl Aggregates {
    pub fn read(path: &std::path::Path) -> Result<Aggregates, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let Ok(Value::Object(set)) = serde_json::from_str::<Value>(&text) else {
            return Err(format!("{}: not a JSON object of aggregates", path.display()));
        };
        edgefilter::aggregate::AggregateSet::parse(&set).map_err(|e| format!("{}: {e}", path.display()))?;
        let outputs = set.values().filter_map(|a| a["output"].as_str().map(str::to_string)).collect();
        let counting = set
            .values()
            .filter(|a| a.get("having").is_none() && a.get("body").is_none())
            .filter(|a| match &a["functions"] {
                Value::String(s) => s.split(',').any(|f| f.trim() == "count"),
                Value::Array(v) => v.iter().any(|f| f == "count"),
                _ => false,
            })
            .count() as u64;
        Ok(Aggregates { set, outputs, counting })
    }

    /// Sends the desired patch and waits until the module reports every aggregate in effect.
    pub async fn apply(
        &self,
        publisher: &mut Publisher,
        replies: &mut UnboundedReceiver<Publish>,
        within: Duration,
    ) -> Result<(), ReplayError> {
        let deadline = Instant::now() + within;
        // A version above any the module has applied.
        let version = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs());
        let patch = serde_json::json!({ "Aggregates": self.set, "$version": version });
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        publisher.publish(topic, patch.to_string().into(), deadline.into()).await?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = match tokio::time::timeout(left, replies.recv()).await {
                Ok(Some(p)) => p,
                _ => return Err(ReplayError("the module did not report the aggregates in effect".into())),
            };
            let reported: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            if self.set.keys().all(|name| reported["Aggregates"][name].is_object()) {
                // A patch applies to the windows that start after it: the run starts with one.
                let hop = self
                    .set
                    .values()
                    .filter_map(|a| a["window"]["hopSeconds"].as_u64().or(a["window"]["seconds"].as_u64()))
                    .max()
                    .unwrap_or(1)
                    * 1000;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(hop - now % hop + 50)).await;
                return Ok(());
            }
            if let Some(why) = reported["RejectedSettings"]["Aggregates"].as_str() {
                return Err(ReplayError(format!("the module refused the aggregates: {why}")));
            }
        }
    }
}

/// The aggregate messages that came back.
#[derive(Clone, Debug, Default)]
pub struct Summaries {
    pub messages: u64,
    /// The sum of their `count`s.
    pub readings: u64,
}

impl Summaries {
    pub fn record(&mut self, body: &[u8]) {
        self.messages += 1;
        let body: Value = serde_json::from_slice(body).unwrap_or_default();
        self.readings += body["count"].as_u64().unwrap_or(0);
    }
}
