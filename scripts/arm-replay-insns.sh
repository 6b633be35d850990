#!/usr/bin/env bash
# ARM instructions per message for a whole replay through the armv7 module (MQTT in, scan,
# decision, alert out, acknowledgements), counted with ../shared/tools/arm-insn-count against a
# run that handles zero messages. Uses a local mosquitto and mosquitto_pub/mosquitto_sub.
#   scripts/arm-replay-insns.sh [MESSAGES]     (default 2000; the binary from build-release.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
count=$(realpath "${ARM_INSN_COUNT:-../shared/tools/arm-insn-count/count}")
bin=${EDGEFILTER_ARM_BINARY:-dist/armv7/edgefilter}
[ -x "$bin" ] || scripts/build-release.sh armv7-unknown-linux-gnueabihf dist/armv7 >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 0\n' "$port" > "$work/m.conf"
"$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$work/m.conf" >/dev/null 2>&1 &
sleep 0.5
body='{"machine":{"temperature":31.13,"pressure":2.15},"ambient":{"temperature":21,"humidity":25},"timeCreated":"2026-11-26T07:06:23Z"}'
topic='devices/dev/modules/filter/inputs/input1/sequenceNumber=1&batchId=b&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=dev&%24.cmid=SimulatedTemperatureSensor'
run() { # run MESSAGES → prints the instruction count
  local m=$1
  EdgeHubConnectionString="HostName=h;DeviceId=dev;ModuleId=filter;SharedAccessKey=c2VjcmV0" \
  EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$port" RuntimeLogLevel=warning \
    "$count" --atomic "$bin" > "$work/out.$m" 2>&1 &
  local pid=$!
  sleep 3
  if [ "$m" -gt 0 ]; then
    mosquitto_sub -p "$port" -t "devices/dev/modules/filter/messages/events/#" -C "$m" -W 300 > /dev/null || echo "arm-replay-insns: not all $m alerts arrived within 300 s" >&2 &
    local sub=$!
    sleep 0.3
    awk -v n="$m" -v b="$body" 'BEGIN { for (i = 0; i < n; i++) print b }' | mosquitto_pub -p "$port" -q 1 -t "$topic" -l
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
