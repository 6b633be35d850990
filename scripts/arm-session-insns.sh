#!/usr/bin/env bash
# armv7 instructions per message, part by part, in edgeHub's delivery shape (one message in flight;
# two of three alert): the session core's every event of one message, decoding the packets it
# brings, and TLS (what the module seals and opens for it, measured as half of an in-memory rustls
# pair's work), for both acknowledgement modes (examples/session_insns.rs). Each figure is a run of
# N messages less a run of 0, counted with tools/arm-insn-count. What the whole module costs beyond
# these parts is tokio, the system call wrappers and the shell (scripts/arm-streaming-insns.sh).
#   scripts/arm-session-insns.sh [N]      (default 3000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3000}
count=tools/arm-insn-count/count
[ -x "$count" ] || tools/arm-insn-count/build >/dev/null
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example session_insns
bin=target/armv7-unknown-linux-gnueabihf/release/examples/session_insns
printf '%-8s %-10s %12s\n' stage mode insns/msg
for mode in confirmed pipelined; do
  for stage in core decode tls; do
    zero=$("$count" "$bin" "$stage" "$mode" 0 | tail -1 | cut -d' ' -f2)
    full=$("$count" "$bin" "$stage" "$mode" "$n" | tail -1 | cut -d' ' -f2)
    per=$(( (full - zero) / n ))
    [ "$stage" = tls ] && per=$(( per / 2 ))
    printf '%-8s %-10s %12d\n' "$stage" "$mode" "$per"
  done
done
