#!/usr/bin/env bash
# Instructions per message on armv7 for the aggregates (examples/aggregate_insns.rs), counted with
# tools/arm-insn-count: a run of N messages minus a run of 0. `fold/msg` is the cost of folding a
# message into one aggregate whose value the scanner has already read, into a pane that exists
# (issue 23's budget: 300; the example's loop subtracted); `run/msg` is the windows as configured,
# closed and sent when due; the last column is what each window sent adds: its pane, its closing,
# its message.
# `scan` is the scanner's pass for the tutorial job's two paths, `message` all of it from the body.
#   scripts/arm-aggregate-insns.sh [N]      (default 2000, at most 4000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
count=${ARM_INSN_COUNT:-tools/arm-insn-count/count}
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example aggregate_insns
bin=target/armv7-unknown-linux-gnueabihf/release/examples/aggregate_insns
printf '%-12s %10s %10s %8s %12s\n' set fold/msg run/msg windows insns/window
insns() { "$count" "$bin" "$1" "$2" | tail -1 | cut -d' ' -f2; }
loop=$(( $(insns loop "$n") - $(insns loop 0) ))
for set in tutorial arrival hopping percentiles grouped; do
  fold=$(( ($(insns fold-$set "$n") - $(insns fold-$set 0) - loop) / n ))
  out=$("$count" "$bin" run-$set "$n")
  run=$(( ($(tail -1 <<<"$out" | cut -d' ' -f2) - $(insns run-$set 0)) / n ))
  windows=$(head -1 <<<"$out" | cut -d' ' -f2)
  printf '%-12s %10d %10d %8d %12d\n' "$set" "$fold" "$run" "$windows" $(( (run - fold) * n / windows ))
done
for mode in scan message; do
  printf '%-12s %10s %10d\n' "$mode" - $(( ($(insns $mode "$n") - $(insns $mode 0)) / n ))
done
