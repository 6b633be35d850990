#!/usr/bin/env bash
# Where the module's instructions go under a live stream, function by function: the module on
# plain TCP behind mosquitto (window WINDOW, default 100; `set_tcp_nodelay true`,
# `max_queued_messages 0`), N messages (default 2000, 66% alerts) replayed at RATE msg/s (default
# 2000), under either profiler:
#   scripts/streaming-profile.sh arm BINARY OUT    armv7 binary with symbols, tools/arm-insn-count/profile
#   scripts/streaming-profile.sh x86 BINARY OUT    x86 binary with symbols, valgrind --tool=callgrind
# Then, per message (and against an older binary's profile):
#   tools/arm-insn-count/profile --report N BINARY OUT [OLD_BINARY OLD_OUT]
#   callgrind_annotate OUT
# A binary with symbols: CARGO_PROFILE_RELEASE_STRIP=none (x86: also
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only) with the usual release build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
kind=${1:?usage: streaming-profile.sh arm|x86 BINARY OUT}
bin=${2:?binary} out=${3:?output file}
n=${N:-2000} window=${WINDOW:-100} rate=${RATE:-2000}
case $kind in
  arm) runner=("$PWD/tools/arm-insn-count/profile" "$(realpath -m "$out")") ;;
  x86) runner=(valgrind --tool=callgrind "--callgrind-out-file=$(realpath -m "$out")") ;;
  *) echo "streaming-profile: arm or x86, not $kind" >&2; exit 2 ;;
esac
cargo build -q --release -p edgefilter-perf
perf_tool=$PWD/target/release/edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
"$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 0.66 -o "$work/trace.jsonl"
port=$(free_port)
write_mosquitto_conf "$work/m.conf" "$port" "max_inflight_messages $window" "set_tcp_nodelay true"
"$MOSQUITTO" -c "$work/m.conf" > "$work/mosquitto.log" 2>&1 &
sleep 0.5
url="mqtt://127.0.0.1:$port"
EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="$url" EDGEFILTER_METRICS_ADDR=off \
  RuntimeLogLevel=info "${runner[@]}" "$bin" > "$work/out" 2>&1 &
pid=$!
sleep 5
"$perf_tool" replay "$work/trace.jsonl" --hub "$url" --device dev --module filter --rate "$rate" --settle 120 \
  --json "$work/report.json" > "$work/replay" 2>&1 || { echo "streaming-profile: replay incomplete:" >&2; cat "$work/replay" >&2; }
kill -TERM $pid
wait $pid || true
echo "$out: $n messages, window $window, $rate msg/s, plain TCP"
