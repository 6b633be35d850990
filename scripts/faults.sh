#!/usr/bin/env bash
# Faults under a steady load, measured from outside: the release module against mosquitto at a
# steady rate, with 10-second SAS tokens (renewed by reconnecting all through the run) and the
# broker restarted twice mid-stream. The replay counts alerts expected, received, lost and
# duplicated, and samples the module's resident memory every second.
#   scripts/faults.sh [SECONDS] [RATE]     (default 60 s at 500 messages/s, all alerts)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
rate=${2:-500}
cargo build -q --release --workspace
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\npersistence true\npersistence_location %s/\n' \
  "$port" "$work" > "$work/m.conf"
"$mosquitto" -c "$work/m.conf" >/dev/null 2>&1 &
broker=$!
sleep 0.3
EdgeHubConnectionString="HostName=h;DeviceId=dev;ModuleId=filter;SharedAccessKey=c2VjcmV0" \
EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$port" EDGEFILTER_METRICS_ADDR=off EDGEFILTER_TOKEN_TTL_SECS=10 \
MIMALLOC_ARENA_EAGER_COMMIT=0 target/release/edgefilter > "$work/module.log" 2>&1 &
module=$!
sleep 1
target/release/edgefilter-perf generate --count $((seconds * rate)) --rate "$rate" --alert-ratio 1 -o "$work/trace.jsonl"
# The replay's own clients reconnect too; the broker keeps everyone's sessions across restarts.
( for at in $((seconds / 3)) $((2 * seconds / 3)); do
    sleep $((at - ${last:-0})); last=$at
    kill -TERM "$(cat "$work/broker.pid" 2>/dev/null || echo $broker)" 2>/dev/null || true
    sleep 1
    "$mosquitto" -c "$work/m.conf" >/dev/null 2>&1 & echo $! > "$work/broker.pid"
    echo "broker restarted at ${at} s" >&2
  done ) &
target/release/edgefilter-perf replay "$work/trace.jsonl" --hub "mqtt://127.0.0.1:$port" --device dev --module filter \
  --pid "$module" --json "$work/report.json" --settle 30 --deadline $((seconds * 3 + 60)) || true
echo "module reconnections: $(grep -c 'connected to edgeHub' "$work/module.log"), token renewals: $(grep -c 'SAS token renewed' "$work/module.log")"
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rss = r["moduleRssKbOverTime"]
print("module RSS (MB) every 5 s:", " ".join(f"{v/1024:.1f}" for v in rss[::5]))
PY
kill "$(cat "$work/broker.pid" 2>/dev/null || echo $broker)" 2>/dev/null || true
