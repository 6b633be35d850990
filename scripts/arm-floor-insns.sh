#!/usr/bin/env bash
# The floor of edgeHub's shape on armv7 (issue 21): user-space instructions per message of a
# program that only does the I/O (examples/tcp_floor.rs: CONNECT, SUBSCRIBE, then per message read
# the input, publish it when its temperature is above 25, acknowledge the input), against the
# module in the same run. Each row is scripts/arm-streaming-insns.sh with one message in flight
# (mosquitto max_inflight_messages 1, set_tcp_nodelay true), 66% alerts, a closed loop: a run of
# N messages less a run of none, under qemu with tools/arm-insn-count. The floor takes the module's
# environment, so the streaming script runs it in the module's place (EDGEFILTER_ARM_BINARY), its
# I/O chosen by EDGEFILTER_FLOOR: `std` (a blocking std::net::TcpStream, no runtime) or `tokio`
# (a current-thread runtime, the module's read and write).
#   scripts/arm-floor-insns.sh [N]          (default 4000 messages), plain TCP
#   TRANSPORTS="tcp tls" scripts/arm-floor-insns.sh   TLS rows too (rustls driven as the module does)
#   MODES=pipelined scripts/arm-floor-insns.sh        one AckMode (default "confirmed pipelined")
#   EDGEFILTER_ARM_BINARY=...               the module (default dist/armv7/edgefilter, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-4000}
transports=${TRANSPORTS:-tcp}
modes=(${MODES:-confirmed pipelined})
module=${EDGEFILTER_ARM_BINARY:-dist/armv7/edgefilter}
[ -x "$module" ] || scripts/build-release.sh armv7-unknown-linux-gnueabihf dist/armv7 >/dev/null
target=armv7-unknown-linux-gnueabihf
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build -q --release --locked --target $target --example tcp_floor
floor=target/$target/release/examples/tcp_floor
log=$(mktemp)
trap 'rm -f "$log"' EXIT

rows=()
for mode in "${modes[@]}"; do
  for who in std tokio module; do
    bin=$floor
    [ $who = module ] && bin=$module
    EDGEFILTER_FLOOR=$who EDGEFILTER_ARM_BINARY=$bin ACK_MODE=$mode INFLIGHTS=1 TRANSPORTS="$transports" \
      scripts/arm-streaming-insns.sh "$n" > "$log" 2> "$log.err" || { cat "$log" "$log.err" >&2; exit 1; }
    if grep -q 'replay incomplete' "$log.err"; then
      echo "arm-floor-insns: $who, $mode: the replay was incomplete:" >&2
      cat "$log.err" >&2
      exit 1
    fi
    # link window idle replay insns/msg msg/s [suite]
    while read -r link window idle full per rate suite; do
      rows+=("$(printf '%-6s %-10s %-13s %12s %12s %10s %7s  %s' "$link" "$mode" "floor $who" "$idle" "$full" "$per" "$rate" "$suite")")
    done < <(grep -E '^(tcp|tls) ' "$log")
    echo "$who $mode: done" >&2
  done
done
rm -f "$log.err"
printf '%-6s %-10s %-13s %12s %12s %10s %7s\n' link AckMode program idle replay insns/msg "msg/s"
printf '%s\n' "${rows[@]}" | sed 's/floor module  /module        /'
echo "module: $module ($(stat -c %s "$module") bytes); floor: $floor ($(stat -c %s "$floor") bytes)"
echo "$n messages, one in flight (mosquitto max_inflight_messages 1, set_tcp_nodelay true), a closed loop, 66% alerts; each figure a run less an idle run (scripts/arm-streaming-insns.sh)"
