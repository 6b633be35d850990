#!/usr/bin/env bash
# Instructions per message on armv7 for the aggregates (examples/aggregate_insns.rs), counted with
# tools/arm-insn-count: a run of N messages minus a run of 0. The fold-* rows are the cost of one
# aggregate whose value the scanner has already read (issue 23's budget: 300); `scan` is the
# scanner's pass for the tutorial job's two paths, `message` all of it from the body.
#   scripts/arm-aggregate-insns.sh [N]      (default 2000, at most 4000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
count=${ARM_INSN_COUNT:-tools/arm-insn-count/count}
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example aggregate_insns
bin=target/armv7-unknown-linux-gnueabihf/release/examples/aggregate_insns
printf '%-18s %12s\n' mode insns/msg
for mode in fold-tutorial fold-arrival fold-hopping fold-percentiles fold-grouped scan message; do
  zero=$("$count" "$bin" "$mode" 0 | tail -1 | cut -d' ' -f2)
  full=$("$count" "$bin" "$mode" "$n" | tail -1 | cut -d' ' -f2)
  printf '%-18s %12d\n' "$mode" $(( (full - zero) / n ))
done
