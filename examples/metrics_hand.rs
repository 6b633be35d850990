//! The module's `/metrics` text as it writes it (`src/stats/exposition.rs`), for
//! `scripts/metrics-library.sh` to weigh against `examples/metrics_client.rs` on armv7: the same
//! series, the same labels, printed once.

use edgefilter::stats::{Labels, Stats};

fn main() {
    let labels =
        Labels::new("myhub.azure-devices.net", "gateway-01", "edgefilter", &edgefilter::stats::instance_number());
    let stats = Stats::default();
    stats.received.fetch_add(std::env::args().count() as u64, std::sync::atomic::Ordering::Relaxed);
    print!("{}", stats.prometheus(&labels));
}
