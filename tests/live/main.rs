//! The integration tests: the module against real parts (mosquitto, local mode's hub, TLS with
//! real certificates, a security daemon stand-in on a unix socket, the armv7 binary under qemu).
//!
//! They are one test binary, not one per file, so that they run side by side: nearly all of their
//! time is waiting on sockets, and as separate binaries cargo runs them one after another. Each
//! test starts its own broker, hub and module on ports of its own, and waits for conditions, not
//! for fixed times (`common::wait_until`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/process.rs"]
mod process;

mod aggregates;
mod arm;
mod hostile;
mod hub_delivery;
mod large;
mod local_mode;
mod metrics;
mod module_mosquitto;
mod pipeline;
mod reconnect;
mod workload;
