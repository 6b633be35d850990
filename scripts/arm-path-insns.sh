#!/usr/bin/env bash
# armv7 instructions per sensor message for the module's in-process path, stage by stage
# (examples/path_insns.rs: decode the PUBLISH, classify its topic, decide, write the alert's
# topic, book and encode), each a run of N messages less a run of 0, counted with
# tools/arm-insn-count. What the whole module costs beyond this is the event loop, timers and
# system call wrappers (scripts/arm-streaming-insns.sh).
#   scripts/arm-path-insns.sh [N]      (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
count=tools/arm-insn-count/count
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example path_insns
bin=target/armv7-unknown-linux-gnueabihf/release/examples/path_insns
printf '%-10s %12s\n' stage insns/msg
for stage in decode classify decide topic all; do
  zero=$("$count" "$bin" "$stage" 0 | tail -1 | cut -d' ' -f2)
  full=$("$count" "$bin" "$stage" "$n" | tail -1 | cut -d' ' -f2)
  printf '%-10s %12d\n' "$stage" $(( (full - zero) / n ))
done
