//! Module twins as edgeHub serves them over MQTT: desired and reported collections with
//! versions, JSON merge-patch semantics (`null` removes), and the GET body shape. Pure.

use serde_json::{Map, Value};

use crate::names::merge_patch;

#[derive(Clone, Debug, Default)]
pub struct Twin {
    pub desired: Map<String, Value>,
    pub desired_version: u64,
    pub reported: Map<String, Value>,
    pub reported_version: u64,
}

impl Twin {
    /// A twin whose desired properties start as `desired` (version 1).
    pub fn with_desired(desired: Map<String, Value>) -> Twin {
        Twin { desired, desired_version: 1, reported: Map::new(), reported_version: 1 }
    }

    /// The body of a GET response: `{"desired":{…,"$version":N},"reported":{…,"$version":M}}`.
    pub fn get_body(&self) -> Value {
        let mut desired = self.desired.clone();
        desired.insert("$version".into(), self.desired_version.into());
        let mut reported = self.reported.clone();
        reported.insert("$version".into(), self.reported_version.into());
        serde_json::json!({ "desired": desired, "reported": reported })
    }

    /// Applies a desired patch; returns the body pushed to the module (patch plus `$version`).
    pub fn patch_desired(&mut self, patch: &Map<String, Value>) -> Value {
        merge_patch(&mut self.desired, patch);
        self.desired_version += 1;
        let mut pushed = patch.clone();
        pushed.remove("$version");
        pushed.insert("$version".into(), self.desired_version.into());
        Value::Object(pushed)
    }

    /// Applies a reported patch.
    pub fn patch_reported(&mut self, patch: &Map<String, Value>) {
        merge_patch(&mut self.reported, patch);
        self.reported_version += 1;
    }
}
