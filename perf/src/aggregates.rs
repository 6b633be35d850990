//! `replay --aggregates FILE`: the module runs the twin's `Aggregates` during the replay, so
//! that their cost can be measured and their windows checked. The replay sets them with a desired
//! patch (as edgeHub forwards one from IoT Hub), waits until the module reports them in effect and
//! every aggregate's first window has started (a patch applies to the windows that start after
//! it), and after the run compares the windows that came back with the
//! [`reference`](crate::reference) ([`check`](crate::check)).

use std::time::{Duration, Instant};

use rumqttc::Publish;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use edgefilter::aggregate::AggregateSet;

use crate::{unix_ms, Publisher, ReplayError};

/// The reported-properties patches, which say when the module has taken the aggregates.
pub const REPORTED: &str = "$iothub/twin/PATCH/properties/reported/#";

/// The aggregates to set, read from a file holding the twin's `Aggregates` object.
#[derive(Clone, Debug)]
pub struct Aggregates {
    pub set: Map<String, Value>,
    /// The set as the module reads it.
    pub parsed: AggregateSet,
    /// The outputs their messages leave on.
    pub outputs: Vec<String>,
    /// How far the module's time of a reading may be from when it was sent: a reading this near
    /// a window's edge may fall on either side (`--aggregate-tolerance`).
    pub tolerance: Duration,
}

/// [`Aggregates::tolerance`] unless told otherwise.
pub const TOLERANCE: Duration = Duration::from_millis(250);

/// When the module took the aggregates, as the replay's clock saw it (Unix ms): between the patch
/// and the report of it.
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    pub patch_sent_ms: i64,
    pub reported_ms: i64,
}

impl Aggregates {
    pub fn read(path: &std::path::Path) -> Result<Aggregates, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let Ok(Value::Object(set)) = serde_json::from_str::<Value>(&text) else {
            return Err(format!("{}: not a JSON object of aggregates", path.display()));
        };
        let parsed = AggregateSet::parse(&set).map_err(|e| format!("{}: {e}", path.display()))?;
        let outputs = parsed.aggregates.iter().map(|a| a.output.as_str().to_string()).collect();
        Ok(Aggregates { set, parsed, outputs, tolerance: TOLERANCE })
    }

    /// Sends the desired patch, waits until the module reports every aggregate in effect, and then
    /// until every aggregate's first window has started, by more than the tolerance.
    pub async fn apply(
        &self,
        publisher: &mut Publisher,
        replies: &mut UnboundedReceiver<Publish>,
        within: Duration,
    ) -> Result<Applied, ReplayError> {
        let deadline = Instant::now() + within;
        // A version above any the module has applied.
        let version = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs());
        let patch = serde_json::json!({ "Aggregates": self.set, "$version": version });
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        let patch_sent_ms = unix_ms();
        publisher.publish(topic, patch.to_string().into(), deadline.into()).await?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = match tokio::time::timeout(left, replies.recv()).await {
                Ok(Some(p)) => p,
                _ => return Err(ReplayError("the module did not report the aggregates in effect".into())),
            };
            let reported: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            if self.set.keys().all(|name| reported["Aggregates"][name].is_object()) {
                // A patch applies to the windows that start after it: the run starts in them.
                let reported_ms = unix_ms();
                let tolerance = self.tolerance.as_millis() as i64;
                let after = reported_ms + tolerance;
                let start = self
                    .parsed
                    .aggregates
                    .iter()
                    .map(|a| after.div_euclid(a.hop_ms) * a.hop_ms + a.hop_ms)
                    .max()
                    .unwrap_or(after);
                let wait = start + tolerance + 50 - unix_ms();
                tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
                return Ok(Applied { patch_sent_ms, reported_ms });
            }
            if let Some(why) = reported["RejectedSettings"]["Aggregates"].as_str() {
                return Err(ReplayError(format!("the module refused the aggregates: {why}")));
            }
        }
    }
}
