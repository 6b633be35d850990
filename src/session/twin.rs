//! The module twin, from the session's side: the full twin asked for on every connection (and
//! again when no answer comes in [`super::TWIN_TIMEOUT`]), desired patches applied as they come
//! (older `$version`s ignored), the settings they yield swapped in whole, and the reported
//! properties: the settings in effect, what was refused and why (`RejectedSettings`, kept until the
//! setting is set again), and the statistics every `ReportIntervalSecs`.
//!
//! Twin requests and reported patches go at QoS 0, as the C SDK sends them: they are answered or
//! asked again, never stored.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use log::{debug, info, warn};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;

use super::{Phase, Session, MAX_OUT};
use crate::settings::{self, Settings, Source};
use crate::topic;

impl Session {
    /// Asks for the full twin.
    pub(super) fn request_twin(&mut self, now: Instant) {
        let rid = self.rid();
        let p = Publish::from_bytes(topic::twin_get(&rid), QoS::AtMostOnce, Bytes::from_static(b" "));
        let _ = Packet::Publish(p).write(&mut self.tx, MAX_OUT);
        if let Phase::Up(c) = &mut self.phase {
            c.twin_request = Some((rid, now));
        }
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        self.next_rid.to_string()
    }

    pub(super) fn twin_response(&mut self, now: Instant, status: u16, rid: &str, body: &[u8]) {
        let Phase::Up(c) = &mut self.phase else { return };
        if c.twin_request.as_ref().is_none_or(|(r, _)| r != rid) {
            // The response to a reported-properties patch (204), or a stale request.
            if status >= 300 {
                warn!("edgeHub answered twin request {rid} with status {status}");
            }
            return;
        }
        c.twin_request = None;
        if status != 200 {
            warn!("edgeHub answered the twin request with status {status}: keeping the current settings");
            return;
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut twin)) => match twin.remove("desired") {
                Some(desired) => self.desired_value(now, desired, Source::FullTwin),
                None => warn!("the twin has no desired properties: keeping the current settings"),
            },
            Ok(_) => warn!("the twin is not a JSON object: keeping the current settings"),
            Err(e) => warn!("the twin is not valid JSON ({e}): keeping the current settings"),
        }
    }

    pub(super) fn desired(&mut self, now: Instant, body: &[u8], source: Source) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => self.desired_value(now, v, source),
            Err(e) => {
                self.stats.twin_rejections.fetch_add(1, Relaxed);
                warn!("desired properties ignored: not valid JSON ({e})");
            }
        }
    }

    fn desired_value(&mut self, now: Instant, desired: serde_json::Value, source: Source) {
        let serde_json::Value::Object(desired) = desired else {
            self.stats.twin_rejections.fetch_add(1, Relaxed);
            warn!("desired properties ignored: not a JSON object");
            return;
        };
        let version = settings::desired_version(&desired);
        if source == Source::Patch {
            if let (Some(v), Some(applied)) = (version, self.desired_version) {
                if v <= applied {
                    debug!("desired patch $version {v} is not newer than {applied}: ignored");
                    return;
                }
            }
        }
        let current = self.settings.clone();
        let applied = settings::apply_desired(&current, &self.base, &desired, source);
        for name in &applied.changed {
            info!("{name} is now {}", setting_value(&applied.settings, name));
        }
        for r in &applied.rejected {
            warn!("{} rejected: {}; keeping {}", r.name, r.reason, setting_value(&applied.settings, r.name));
        }
        self.stats.twin_updates.fetch_add(1, Relaxed);
        self.stats.twin_rejections.fetch_add(applied.rejected.len() as u64, Relaxed);
        self.desired_version = version.or(self.desired_version);
        self.rejected = settings::still_rejected(&self.rejected, &applied.rejected, &desired, source);
        let reported = settings::reported(&applied.settings, &*current, &self.rejected);
        self.settings = Arc::new(applied.settings);
        self.aggregates_changed(now);
        self.report_properties(reported);
    }

    /// Statistics to the log and the reported properties.
    pub(super) fn report(&mut self) {
        info!("stats: {}", self.stats.summary());
        let reported = serde_json::json!({ "Statistics": self.stats.reported() });
        self.report_properties(reported);
    }

    fn report_properties(&mut self, patch: serde_json::Value) {
        let rid = self.rid();
        let p = Publish::from_bytes(topic::twin_reported(&rid), QoS::AtMostOnce, Bytes::from(patch.to_string()));
        let _ = Packet::Publish(p).write(&mut self.tx, MAX_OUT);
    }
}

fn setting_value(s: &Settings, name: &str) -> String {
    settings::reported(s, None, &[]).get(name).map_or_else(String::new, ToString::to_string)
}
