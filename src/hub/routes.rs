//! edgeHub's routing, the small part local mode needs: module outputs to module inputs and to
//! the upstream, and the property bag a routed message is delivered with. Pure.

use crate::topic::{parse_bag, ModuleId, TopicError};

/// Where a route sends a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// `BrokeredEndpoint("/modules/{module}/inputs/{input}")`.
    ModuleInput { module: String, input: String },
    /// `$upstream`: IoT Hub; in local mode, the console.
    Upstream,
}

/// `FROM /messages/modules/{module}/outputs/{output} INTO {sink}`; output `*` matches any output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub module: String,
    pub output: String,
    pub sink: Sink,
}

impl Route {
    pub fn matches(&self, module: &str, output: Option<&str>) -> bool {
        self.module == module && (self.output == "*" || Some(self.output.as_str()) == output)
    }
}

/// A message a module sent on `devices/{d}/modules/{m}/messages/events[/{bag}]`.
#[derive(Debug, PartialEq, Eq)]
pub struct ModuleMessage {
    pub sender: ModuleId,
    /// `$.on`, when the module named an output.
    pub output: Option<String>,
    /// Every property of the bag except `$.on`, in order.
    pub properties: Vec<(String, String)>,
}

/// Reads a module's event topic; `None` when the topic is not one (edgeHub's inbound template,
/// with or without a trailing `/`, bag and trailing `/`).
pub fn parse_module_event(topic: &str) -> Option<Result<ModuleMessage, TopicError>> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("modules/")?;
    let (module, rest) = rest.split_once('/')?;
    let bag = match rest.strip_prefix("messages/events") {
        Some("") => "",
        Some(b) => b.strip_prefix('/')?,
        None => return None,
    };
    if device.is_empty() || module.is_empty() {
        return None;
    }
    Some(parse_bag(bag).map(|pairs| {
        let mut output = None;
        let properties = pairs
            .into_iter()
            .filter_map(|(k, v)| {
                if k == "$.on" {
                    output = Some(v);
                    None
                } else {
                    Some((k, v))
                }
            })
            .collect();
        ModuleMessage { sender: ModuleId::new(device, module), output, properties }
    }))
}

/// System properties in the order edgeHub's converter writes them after the application ones
/// (contract §2, edgeHub's test); `$.cdid` and `$.cmid` name the sender.
const SYSTEM_ORDER: [&str; 13] = [
    "$.ce",
    "$.ct",
    "$.schema",
    "$.to",
    "$.uid",
    "$.cid",
    "$.mid",
    "$.exp",
    "$.ctime",
    "iothub-operation",
    "$.cdid",
    "$.cmid",
    "$.sub",
];

/// Is `key` one of edgeHub's system property wire names?
pub fn is_system(key: &str) -> bool {
    SYSTEM_ORDER.contains(&key) || matches!(key, "$.on" | "$.ifid" | "ack")
}

/// The bag a routed message is delivered with: application properties first, then system
/// properties in edgeHub's order, with the sender's identity as `$.cdid` / `$.cmid`.
pub fn delivery_bag(message: &ModuleMessage) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = message.properties.iter().filter(|(k, _)| !is_system(k)).cloned().collect();
    for key in SYSTEM_ORDER {
        let value = match key {
            "$.cdid" => Some(message.sender.device_id.clone()),
            "$.cmid" => Some(message.sender.module_id.clone()),
            _ => message.properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
        };
        if let Some(v) = value {
            out.push((key.to_string(), v));
        }
    }
    out
}

/// The routes of local mode: the sensor's `temperatureOutput` into the filter's `input1`, and
/// every output of the filter to the upstream (iotedgedev's template).
pub fn local_routes(sensor: &str, filter_module: &str) -> Vec<Route> {
    vec![
        Route {
            module: sensor.to_string(),
            output: "temperatureOutput".to_string(),
            sink: Sink::ModuleInput { module: filter_module.to_string(), input: crate::filter::INPUT.to_string() },
        },
        Route { module: filter_module.to_string(), output: "*".to_string(), sink: Sink::Upstream },
    ]
}
