//! edgefilter: the IoT Edge tutorial's temperature filter module, as a fast Rust stream processor.
//!
//! A message on `input1` whose JSON body has `machine.temperature` above `TemperatureThreshold`
//! is forwarded to `output1` with `MessageType=Alert`; everything else is dropped. The functional
//! core ([`scan`], [`filter`], [`topic`], [`settings`], [`sas`], [`delivery`]) is pure; the I/O
//! shell ([`module`]) speaks edgeHub's MQTT dialect; [`hub`], [`sensor`] and [`local`] make the
//! local mode that runs everything on one machine.

pub mod aggregate;
pub mod alloc;
pub mod bytes;
pub mod config;
pub mod delivery;
pub mod filter;
pub mod gather;
pub mod hub;
pub mod limits;
pub mod local;
pub mod logging;
pub mod module;
pub mod mqtt;
pub mod names;
pub mod pkid;
pub mod retry;
pub mod rules;
pub mod sas;
pub mod scan;
pub mod sensor;
pub mod session;
pub mod settings;
pub mod statefile;
pub mod stats;
pub mod tls;
pub mod topic;
pub mod workload;
