#!/usr/bin/env bash
# Instructions per message on armv7 for the scanner and the parsers it is compared with, counted
# with tools/arm-insn-count (a run of N messages minus a run of 0).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${ARM_INSN_COUNT:-tools/arm-insn-count/count}
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example scan_insns
bin=target/armv7-unknown-linux-gnueabihf/release/examples/scan_insns
printf '%-20s %12s %12s %12s\n' parser sensor-129B 4KiB 64KiB
for p in edgefilter-scan edgefilter-scan-in-place serde_json-Value serde_json-typed simd-json-borrowed simd-json-tape unvalidated-search; do
  row=""
  for m in 0 1 2; do
    n=$([ $m = 2 ] && echo 50 || echo 1000)
    zero=$("$count" "$bin" "$p" "$m" 0 | tail -1 | cut -d' ' -f2)
    full=$("$count" "$bin" "$p" "$m" "$n" | tail -1 | cut -d' ' -f2)
    row+=$(printf ' %12d' $(( (full - zero) / n )))
  done
  printf '%-20s%s\n' "$p" "$row"
done
