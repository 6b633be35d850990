//! The sizes the module and the embedded hub agree on with edgeHub. A leaf module, so that the
//! connection (`mqtt`), the module and the hub all read them from one place without importing
//! each other.

/// edgeHub's largest message: 256 KiB, counted as the body plus every property's key and value
/// (`Message.cs` in Azure/iotedge's routing core; `RoutingEdgeHub` rejects larger ones with
/// `EdgeHubMessageTooLargeException`). Its MQTT head's decoder takes at most this much per packet
/// (`mqttSettings:MaxInboundMessageSize` = 262144).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;
/// edgeHub's largest message plus room for the topic and the packet header: what the module
/// sends, and what the embedded hub accepts.
pub const MAX_PACKET_SIZE: usize = MAX_MESSAGE_SIZE + 8 * 1024;
/// What the module reads: larger than edgeHub ever sends, so that a too-large message from another
/// broker is read, counted as `too_large` and acknowledged instead of breaking the connection
/// (and coming back after every reconnect). A packet beyond this closes the connection.
pub const MAX_INCOMING_PACKET_SIZE: usize = 4 * 1024 * 1024;
/// What edgeHub adds to a message's size as it counts it, beyond the properties the module
/// writes: system properties such as `connectionDeviceId`, `connectionModuleId`,
/// `connectionAuthMethod` (a JSON object) and `enqueuedTime`. An allowance, not a measure: the
/// SDKs' own long-haul test keeps 1 KiB back "for things we can't calculate" likewise.
pub const EDGEHUB_ADDED_PROPERTIES: usize = 1024;
/// By default (`EDGEFILTER_MAX_DELIVERY_ATTEMPTS`), an alert whose connection fails this many times
/// in a row while it is the oldest unconfirmed one, after the hub read what came before it, is
/// given up (`delivery_failed`): a hub that drops the connection on one message (a broker
/// with a smaller packet limit, say) would otherwise stop the stream for good.
pub const MAX_DELIVERY_ATTEMPTS: u8 = 5;
