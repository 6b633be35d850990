//! Topics and property bags: how a message's properties ride in an MQTT topic name.
//!
//! edgeHub has no MQTT 5 user properties to work with, so IoT Hub's MQTT dialect appends the
//! message's properties to the topic as a URL-encoded `k=v&k=v` bag (contract §2):
//!
//! - inbound to a module: `devices/{d}/modules/{m}/inputs/{input}/{bag}`, the bag holding the
//!   application properties first and then the system properties under their wire names;
//! - outbound from a module: `devices/{d}/modules/{m}/messages/events/{bag}`, the output name
//!   riding as `$.on`, in the Python SDK's order (`$.on,$.mid,$.cid,$.uid,$.ct,$.ce,$.exp`, then
//!   the application properties sorted by key).
//!
//! Everything here is pure string work, shared by the module, the embedded hub and the tools.

mod bag;

pub use bag::*;

/// A module identity as edgeHub knows it: the MQTT client id is `{device_id}/{module_id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleId {
    pub device_id: String,
    pub module_id: String,
}

impl ModuleId {
    pub fn new(device_id: impl Into<String>, module_id: impl Into<String>) -> Self {
        ModuleId { device_id: device_id.into(), module_id: module_id.into() }
    }

    /// The MQTT client id edgeHub requires.
    pub fn client_id(&self) -> String {
        format!("{}/{}", self.device_id, self.module_id)
    }

    /// The filter that receives every input of this module (the Python SDK's form).
    pub fn inputs_filter(&self) -> String {
        format!("devices/{}/modules/{}/inputs/#", self.device_id, self.module_id)
    }

    /// The prefix of the topic edgeHub delivers input `input` on.
    pub fn input_topic(&self, input: &str, bag: &str) -> String {
        let mut t = format!("devices/{}/modules/{}/inputs/{}", self.device_id, self.module_id, quote(input));
        if !bag.is_empty() {
            t.push('/');
            t.push_str(bag);
        }
        t
    }

    /// The topic a module sends output messages on, with its property bag.
    pub fn events_topic(&self, bag: &str) -> String {
        format!("devices/{}/modules/{}/messages/events/{}", self.device_id, self.module_id, bag)
    }
}

/// The twin response subscription.
pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// The desired-properties patch subscription.
pub const TWIN_DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
const TWIN_RES_PREFIX: &str = "$iothub/twin/res/";
const TWIN_DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";

/// The topic of a full twin request.
pub fn twin_get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// The topic of a reported-properties patch.
pub fn twin_reported(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// The topic of a twin response, as edgeHub sends it (no `$version`).
pub fn twin_response(status: u16, rid: &str) -> String {
    format!("{TWIN_RES_PREFIX}{status}/?$rid={rid}")
}

/// The topic of a desired-properties patch pushed to a module.
pub fn twin_desired_patch(version: u64) -> String {
    format!("{TWIN_DESIRED_PREFIX}?$version={version}")
}

/// A topic a module receives, classified. Borrows from the topic: classifying allocates nothing.
#[derive(Debug, PartialEq)]
pub enum Inbound<'a> {
    /// A message on one of the module's inputs: the input's name and the property bag, both as
    /// they are on the wire (URL-encoded; the bag checked to be readable, see
    /// [`Properties::from_bag`] and [`write_output_topic`] to read it), and what in the bag tells
    /// the message from a redelivery of it.
    Input { input: &'a str, bag: &'a str, id: BagId<'a> },
    /// A response to a twin request: status and request id.
    TwinResponse { status: u16, rid: &'a str },
    /// A desired-properties patch.
    DesiredPatch,
    /// Something the module does not handle (methods, C2D, another module's topics).
    Other,
}

/// Why an input topic could not be read.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum TopicError {
    /// A bag entry without `=`: the Python SDK fails on it too.
    BagEntryWithoutValue,
    /// A twin response topic without a numeric status or a `$rid`.
    BadTwinResponse,
}

impl TopicError {
    /// The reason's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            TopicError::BagEntryWithoutValue => "bad_property_bag",
            TopicError::BadTwinResponse => "bad_twin_response",
        }
    }
}

/// Whether a topic is twin traffic (a response or a desired patch), which is never held back
/// behind input (`src/session/holdback.rs`).
pub fn is_twin(topic: &str) -> bool {
    topic.starts_with(TWIN_RES_PREFIX) || topic.starts_with(TWIN_DESIRED_PREFIX)
}

/// Classifies a topic that arrived at module `id`.
pub fn classify<'a>(id: &ModuleId, topic: &'a str) -> Result<Inbound<'a>, TopicError> {
    if let Some(rest) = topic.strip_prefix(TWIN_RES_PREFIX) {
        let (status, query) = rest.split_once('/').ok_or(TopicError::BadTwinResponse)?;
        let status = status.parse().map_err(|_| TopicError::BadTwinResponse)?;
        let rid = query_param(query, "$rid").ok_or(TopicError::BadTwinResponse)?;
        return Ok(Inbound::TwinResponse { status, rid });
    }
    if topic.starts_with(TWIN_DESIRED_PREFIX) {
        return Ok(Inbound::DesiredPatch);
    }
    let Some(rest) = topic
        .strip_prefix("devices/")
        .and_then(|t| t.strip_prefix(id.device_id.as_str()))
        .and_then(|t| t.strip_prefix("/modules/"))
        .and_then(|t| t.strip_prefix(id.module_id.as_str()))
        .and_then(|t| t.strip_prefix("/inputs/"))
    else {
        return Ok(Inbound::Other);
    };
    let (input, bag) = rest.split_once('/').unwrap_or((rest, ""));
    let id = read_bag(bag)?;
    Ok(Inbound::Input { input, bag, id })
}

/// Whether an input name as on the wire (URL-encoded) is `name`; allocates only for a name with
/// escapes in it.
pub fn input_is(raw: &str, name: &str) -> bool {
    if raw.contains('%') {
        unquote(raw) == name
    } else {
        raw == name
    }
}

/// The Python SDK's `api-version`.
pub const API_VERSION: &str = "2019-10-01";

/// The MQTT username edgeHub expects from a module (contract §1).
pub fn username(hub_hostname: &str, id: &ModuleId) -> String {
    let client_type = quote(concat!("edgefilter/", env!("CARGO_PKG_VERSION")));
    format!(
        "{hub_hostname}/{}/{}/?api-version={API_VERSION}&DeviceClientType={client_type}",
        id.device_id, id.module_id
    )
}
