#!/usr/bin/env bash
# A bounded soak: the release module against mosquitto at a steady rate for a few minutes, with
# the module's resident memory sampled every second and latency reported per 10-second window.
#   scripts/soak.sh [SECONDS] [RATE]     (default 180 s at 1000 messages/s, half of them alerts)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
seconds=${1:-180}
rate=${2:-1000}
cargo build -q --release --workspace
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(free_port)
write_mosquitto_conf "$work/m.conf" "$port"
"$MOSQUITTO" -c "$work/m.conf" >/dev/null 2>&1 &
sleep 0.3
EdgeHubConnectionString="$DEV_CONNECTION_STRING" \
EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$port" EDGEFILTER_METRICS_ADDR=off MIMALLOC_ARENA_EAGER_COMMIT=0 \
  target/release/edgefilter > "$work/module.log" 2>&1 &
module=$!
sleep 1
target/release/edgefilter-perf generate --count $((seconds * rate)) --rate "$rate" --alert-ratio 0.5 -o "$work/trace.jsonl"
target/release/edgefilter-perf replay "$work/trace.jsonl" --hub "mqtt://127.0.0.1:$port" --device dev --module filter \
  --pid "$module" --json "$work/report.json" --deadline $((seconds * 2 + 60))
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rss = r["moduleRssKbOverTime"]
print("module RSS (MB) every 20 s:", " ".join(f"{v/1024:.1f}" for v in rss[::20]))
print("latency p99 (ms) per 10 s window:", " ".join(f"{w['p99Ms']:.1f}" for w in r["latencyByWindow"]))
half = len(rss) // 2
if half:
    print(f"RSS: first half max {max(rss[:half])/1024:.1f} MB, second half max {max(rss[half:])/1024:.1f} MB")
PY
