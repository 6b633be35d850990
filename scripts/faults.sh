#!/usr/bin/env bash
# Faults under a steady load, measured from outside: the release module against mosquitto at a
# steady rate, with 10-second SAS tokens (renewed by reconnecting all through the run), and in turn:
# the broker restarted (at 1/6 of the run), the network to it cut for 3 s (2/6, scripts/cable.py),
# the module killed with SIGKILL and started again (3/6), the broker restarted again (4/6). The
# replay counts alerts expected, received, lost and duplicated (its publisher resends whatever the
# broker did not confirm, so a missing alert was lost downstream of it); the module's resident
# memory is sampled every second, across its restart.
#   scripts/faults.sh [SECONDS] [RATE]     (default 60 s at 500 messages/s, all alerts)
#   FAULTS="cut kill" scripts/faults.sh    (a chosen sequence of broker, cut, kill)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
seconds=${1:-60}
rate=${2:-500}
cargo build -q --release --workspace
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(free_port)
write_mosquitto_conf "$work/m.conf" "$port" 'persistence true' "persistence_location $work/"
"$MOSQUITTO" -c "$work/m.conf" >/dev/null 2>&1 &
broker=$!
sleep 0.3
cable_port=$(free_port)
python3 scripts/cable.py "$cable_port" "$port" &
cable=$!
start_module() {
  EdgeHubConnectionString="$DEV_CONNECTION_STRING" \
  EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$cable_port" EDGEFILTER_METRICS_ADDR=off EDGEFILTER_TOKEN_TTL_SECS=10 \
    target/release/edgefilter >> "$work/module.log" 2>&1 &
  echo $! > "$work/module.pid"
}
start_module
sleep 1
# Resident memory of whichever module process is current, every second.
( while sleep 1; do
    awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/module.pid")/status" 2>/dev/null >> "$work/rss" || true
  done ) &
target/release/edgefilter-perf generate --count $((seconds * rate)) --rate "$rate" --alert-ratio 1 -o "$work/trace.jsonl"
restart_broker() {
  kill -TERM "$(cat "$work/broker.pid" 2>/dev/null || echo $broker)" 2>/dev/null || true
  sleep 1
  "$MOSQUITTO" -c "$work/m.conf" >/dev/null 2>&1 & echo $! > "$work/broker.pid"
}
( step=$((seconds / 6))
  for fault in ${FAULTS:-broker cut kill broker}; do
    sleep $step
    case $fault in
      broker) restart_broker; echo "fault: broker restarted" >&2 ;;
      cut) kill -USR1 $cable; sleep 3; kill -USR2 $cable; echo "fault: network cut for 3 s" >&2 ;;
      kill) kill -KILL "$(cat "$work/module.pid")"; sleep 1; start_module; echo "fault: module killed (SIGKILL) and restarted" >&2 ;;
    esac
  done
) &
target/release/edgefilter-perf replay "$work/trace.jsonl" --hub "mqtt://127.0.0.1:$port" --device dev --module filter \
  --json "$work/report.json" --settle 30 --deadline $((seconds * 3 + 60)) 2>/dev/null | tee "$work/replay.txt" || true
grep -E "WRN|ERR" "$work/module.log" | cut -c1-160 | sort | uniq -c | sort -rn | head -8 >&2 || true
echo "module reconnections: $(grep -c 'connected to edgeHub' "$work/module.log"), token renewals: $(grep -c 'SAS token renewed' "$work/module.log")"
python3 - "$work/rss" <<'PY'
import sys
rss = [int(l) for l in open(sys.argv[1]) if l.strip()]
print("module RSS (MB) every 5 s:", " ".join(f"{v/1024:.1f}" for v in rss[::5]), f"(max {max(rss)/1024:.1f})")
PY
kill "$(cat "$work/broker.pid" 2>/dev/null || echo $broker)" 2>/dev/null || true
