#!/usr/bin/env bash
# ARM instructions per message for the armv7 module under a live stream in the shape edgeHub
# delivers: one message in flight, the next only after the module's PUBACK (docs/protocol.md,
# "Delivery to a module"), which mosquitto reproduces with `max_inflight_messages 1`; then the wide
# window (100) as a second row. The sensor's messages come from edgefilter-perf replay in a closed
# loop (at most CLOSED outstanding, so the broker always has the next one queued), 66% of them
# alerts, over TLS (certificates made here) and over plain TCP; mosquitto never drops what it
# queues (`max_queued_messages 0`) and sends each packet at once (`set_tcp_nodelay true`, as
# edgeHub's sockets do). The module runs under qemu with tools/arm-insn-count; each
# figure is a run of N messages less a run with none (the idle cost over a few seconds is a few
# thousand instructions, far below one message's).
#   scripts/arm-streaming-insns.sh [N]           (default 4000 messages)
#   INFLIGHTS="1" scripts/arm-streaming-insns.sh only the one-in-flight rows
#   RATE=2000 scripts/arm-streaming-insns.sh     an open loop at RATE msg/s instead of the closed loop
#   EDGEFILTER_ARM_BINARY=...                    the binary (default dist/armv7/edgefilter, built if missing)
#   TLS13_CIPHERS=TLS_AES_128_GCM_SHA256 ...     what mosquitto allows (its ciphers_tls1.3), to measure one suite
#   ACK_MODE=pipelined scripts/arm-streaming-insns.sh   the module's AckMode (default confirmed)
#   AGGREGATES=FILE ...                          the replay sets the twin's Aggregates from FILE (an
#                                                object of aggregates; `tutorial`: the set in
#                                                docs/asa-tutorial.twin.json) before the stream
#   TRANSPORTS=tcp scripts/arm-streaming-insns.sh        only the plain-TCP rows (default "tls tcp")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
n=${1:-4000}
windows=(${INFLIGHTS:-1 100})
closed=${CLOSED:-1000}
ack_mode=${ACK_MODE:-confirmed}
if [ -n "${RATE:-}" ]; then pace=(--rate "$RATE"); load="$RATE msg/s"; else pace=(--closed "$closed"); load="closed loop ($closed outstanding)"; fi
count=$PWD/tools/arm-insn-count/count
bin=${EDGEFILTER_ARM_BINARY:-dist/armv7/edgefilter}
[ -x "$bin" ] || scripts/build-release.sh armv7-unknown-linux-gnueabihf dist/armv7 >/dev/null
cargo build -q --release -p edgefilter-perf
perf_tool=$PWD/target/release/edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
make_certificates "$work"
suites=()
[ -n "${TLS13_CIPHERS:-}" ] && suites=("ciphers_tls1.3 $TLS13_CIPHERS")
"$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 0.66 -o "$work/trace.jsonl"
aggregates=()
if [ "${AGGREGATES:-}" = tutorial ]; then
  python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["Aggregates"]))' docs/asa-tutorial.twin.json > "$work/aggregates.json"
  aggregates=(--aggregates "$work/aggregates.json")
elif [ -n "${AGGREGATES:-}" ]; then
  aggregates=(--aggregates "$AGGREGATES")
fi

# broker WINDOW: (re)starts mosquitto with that window, TLS on tls_port and TCP on tcp_port.
broker_pid=
broker() {
  [ -n "$broker_pid" ] && { kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true; }
  tls_port=$(free_port)
  tcp_port=$(free_port)
  write_mosquitto_conf "$work/m.conf" "$tls_port" "max_inflight_messages $1" "set_tcp_nodelay true" \
    "cafile $work/ca.pem" "certfile $work/server.pem" "keyfile $work/server.key" "${suites[@]}" \
    "listener $tcp_port 127.0.0.1"
  "$MOSQUITTO" -c "$work/m.conf" > "$work/mosquitto.log" 2>&1 &
  broker_pid=$!
  sleep 0.5
}

# run URL MESSAGES: the module under the counter, with MESSAGES replayed (or none, for 5 s);
# prints the instruction count.
run() {
  local url=$1 m=$2 ca=()
  [ "${url#mqtts}" != "$url" ] && ca=(--ca "$work/ca.pem")
  EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="$url" \
  EdgeModuleCACertificateFile="$work/ca.pem" EDGEFILTER_METRICS_ADDR=off AckMode="$ack_mode" RuntimeLogLevel=info \
    "$count" --atomic "$bin" > "$work/out" 2>&1 &
  local pid=$!
  sleep 3
  if [ "$m" -gt 0 ]; then
    # Event-time aggregates count readings near the module's clock: times from 40 s on (after
    # the replay's wait for the first window), less than EARLY's 5 minutes ahead.
    [ ${#aggregates[@]} -eq 0 ] || "$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 0.66 \
      --start $(($(date +%s) + 40)) -o "$work/trace.jsonl"
    "$perf_tool" replay "$work/trace.jsonl" --hub "$url" "${ca[@]}" --device dev --module filter \
      "${aggregates[@]}" "${pace[@]}" --settle 60 --json "$work/report.json" > "$work/replay" 2>/dev/null || { echo "arm-streaming-insns: replay incomplete:" >&2; cat "$work/replay" >&2; }
  else
    sleep 5
  fi
  kill -TERM $pid
  wait $pid || true
  grep -o 'TLSv1_[23] [A-Z0-9_]*' "$work/out" | head -1 > "$work/suite" || true
  sed -n 's/^arm-insns: //p' "$work/out"
}
printf '%-6s %6s %12s %12s %10s %8s\n' link window idle replay insns/msg "msg/s"
for window in "${windows[@]}"; do
  broker "$window"
  for transport in ${TRANSPORTS:-tls tcp}; do
    if [ $transport = tls ]; then url="mqtts://localhost:$tls_port"; else url="mqtt://127.0.0.1:$tcp_port"; fi
    zero=$(run "$url" 0)
    full=$(run "$url" "$n")
    rate=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["achievedRate"]))' "$work/report.json")
    printf '%-6s %6s %12s %12s %10s %8s  %s\n' "$transport" "$window" "$zero" "$full" "$(( (full - zero) / n ))" "$rate" "$(cat "$work/suite")"
  done
done
echo "binary: $bin ($(stat -c %s "$bin") bytes); $n messages, $load, 66% of them alerts; AckMode $ack_mode; window: mosquitto max_inflight_messages, max_queued_messages 0, set_tcp_nodelay true"
