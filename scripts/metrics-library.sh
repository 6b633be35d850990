#!/usr/bin/env bash
# The /metrics text by hand (examples/metrics_hand.rs, the module's src/stats/exposition.rs) or
# by the prometheus-client crate (examples/metrics_client.rs: the same series and labels, its
# histograms in place of summaries): what the crate adds to the armv7 binary (built as the release
# module is: fat LTO, stripped), and each text's bytes and `promtool check metrics` verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
target=armv7-unknown-linux-gnueabihf
cargo build -q --release --target "$target" --example metrics_hand --example metrics_client
dir=target/$target/release/examples
hand=$(stat -c %s "$dir/metrics_hand")
client=$(stat -c %s "$dir/metrics_client")
echo "armv7 stripped: by hand $hand bytes, prometheus-client $client bytes; the crate adds $(( (client - hand) / 1024 )) KiB"
for ex in metrics_hand metrics_client; do
  text=$(qemu-arm -L /usr/arm-linux-gnueabihf "$dir/$ex")
  verdict=$(printf '%s\n' "$text" | promtool check metrics 2>&1 | head -3 | tr '\n' ' ' || true)
  echo "$ex: $(printf '%s\n' "$text" | wc -c) bytes; promtool: ${verdict:-no problem}"
done
