#!/usr/bin/env bash
# ARM instructions per message for the armv7 module under a live stream: the sensor's messages
# published one per publish at RATE msg/s (edgefilter-perf replay, half of them alerts) through
# mosquitto, over TLS (certificates made here) and over plain TCP. The module runs under qemu with
# tools/arm-insn-count; each figure is a run of N messages less a run of the same length with none.
#   scripts/arm-streaming-insns.sh [N] [RATE]    (default 4000 messages at 2000 msg/s)
#   EDGEFILTER_ARM_BINARY=...                    the binary (default dist/armv7/edgefilter, built if missing)
#   TLS13_CIPHERS=TLS_AES_128_GCM_SHA256 ...     what mosquitto allows (its ciphers_tls1.3), to measure one suite
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
n=${1:-4000}
rate=${2:-2000}
count=$PWD/tools/arm-insn-count/count
bin=${EDGEFILTER_ARM_BINARY:-dist/armv7/edgefilter}
[ -x "$bin" ] || scripts/build-release.sh armv7-unknown-linux-gnueabihf dist/armv7 >/dev/null
cargo build -q --release -p edgefilter-perf
perf_tool=$PWD/target/release/edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
make_certificates "$work"
tls_port=$(free_port)
tcp_port=$(free_port)
suites=()
[ -n "${TLS13_CIPHERS:-}" ] && suites=("ciphers_tls1.3 $TLS13_CIPHERS")
write_mosquitto_conf "$work/m.conf" "$tls_port" "max_inflight_messages 100" \
  "cafile $work/ca.pem" "certfile $work/server.pem" "keyfile $work/server.key" "${suites[@]}" \
  "listener $tcp_port 127.0.0.1"
"$MOSQUITTO" -c "$work/m.conf" > "$work/mosquitto.log" 2>&1 &
sleep 0.5
"$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 0.5 -o "$work/trace.jsonl"
seconds=$(( (n + rate - 1) / rate + 3 ))

# run URL MESSAGES: the module under the counter for `seconds` plus start-up, with MESSAGES
# replayed at RATE (or none); prints the instruction count.
run() {
  local url=$1 m=$2 ca=()
  [ "${url#mqtts}" != "$url" ] && ca=(--ca "$work/ca.pem")
  EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="$url" \
  EdgeModuleCACertificateFile="$work/ca.pem" EDGEFILTER_METRICS_ADDR=off RuntimeLogLevel=info \
    "$count" --atomic "$bin" > "$work/out" 2>&1 &
  local pid=$!
  sleep 3
  if [ "$m" -gt 0 ]; then
    "$perf_tool" replay "$work/trace.jsonl" --hub "$url" "${ca[@]}" --device dev --module filter \
      --rate "$rate" --settle 60 > "$work/replay" 2>/dev/null || { echo "arm-streaming-insns: replay incomplete:" >&2; cat "$work/replay" >&2; }
  else
    sleep "$seconds"
  fi
  kill -TERM $pid
  wait $pid || true
  grep -o 'TLSv1_[23] [A-Z0-9_]*' "$work/out" | head -1 > "$work/suite" || true
  sed -n 's/^arm-insns: //p' "$work/out"
}
printf '%-6s %12s %12s %10s\n' link idle replay insns/msg
for transport in tls tcp; do
  if [ $transport = tls ]; then url="mqtts://localhost:$tls_port"; else url="mqtt://127.0.0.1:$tcp_port"; fi
  zero=$(run "$url" 0)
  full=$(run "$url" "$n")
  printf '%-6s %12s %12s %10s  %s\n' "$transport" "$zero" "$full" "$(( (full - zero) / n ))" "$(cat "$work/suite")"
done
echo "binary: $bin ($(stat -c %s "$bin") bytes); $n messages at $rate msg/s, half of them alerts"
