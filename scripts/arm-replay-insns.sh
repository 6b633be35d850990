#!/usr/bin/env bash
# ARM instructions per message for a whole replay through the armv7 module (MQTT in, scan,
# decision, alert out, acknowledgements), counted with tools/arm-insn-count against a
# run that handles zero messages. Uses a local mosquitto and mosquitto_pub/mosquitto_sub.
#   scripts/arm-replay-insns.sh [MESSAGES]     (default 2000; the binary from build-release.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
n=${1:-2000}
count=$(realpath "${ARM_INSN_COUNT:-tools/arm-insn-count/count}")
bin=${EDGEFILTER_ARM_BINARY:-dist/armv7/edgefilter}
[ -x "$bin" ] || scripts/build-release.sh armv7-unknown-linux-gnueabihf dist/armv7 >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(free_port)
write_mosquitto_conf "$work/m.conf" "$port" 'max_inflight_messages 100'
"$MOSQUITTO" -c "$work/m.conf" >/dev/null 2>&1 &
sleep 0.5
run() { # run MESSAGES → prints the instruction count
  local m=$1
  EdgeHubConnectionString="$DEV_CONNECTION_STRING" \
  EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$port" RuntimeLogLevel=warning \
    "$count" --atomic "$bin" > "$work/out.$m" 2>&1 &
  local pid=$!
  sleep 3
  if [ "$m" -gt 0 ]; then
    mosquitto_sub -p "$port" -t "devices/dev/modules/filter/messages/events/#" -C "$m" -W 300 > /dev/null || echo "arm-replay-insns: not all $m alerts arrived within 300 s" >&2 &
    local sub=$!
    sleep 0.3
    awk -v n="$m" -v b="$SENSOR_BODY" 'BEGIN { for (i = 0; i < n; i++) print b }' | mosquitto_pub -p "$port" -q 1 -t "$SENSOR_TOPIC" -l
    wait $sub
  fi
  kill -TERM $pid
  wait $pid || true
  sed -n 's/^arm-insns: //p' "$work/out.$m"
}
zero=$(run 0)
full=$(run "$n")
echo "binary: $bin ($(stat -c %s "$bin") bytes stripped)"
echo "messages: $n, arm-insns: idle run $zero, replay run $full"
echo "arm-insns per message: $(( (full - zero) / n ))"
