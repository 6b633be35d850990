#!/usr/bin/env bash
# Faults under a steady load, in the shape edgeHub delivers, measured from outside, in each
# acknowledgement mode. The release module runs against mosquitto configured as edgeHub behaves:
# one message in flight to each client (`max_inflight_messages 1`), nothing ever dropped from a
# queue (`max_queued_messages 0`), TCP_NODELAY set (`set_tcp_nodelay true`: edgeHub's DotNetty
# sockets set it), and every change persisted at once (`persistence true`, `autosave_on_changes
# true`, `autosave_interval 1`), so that even a SIGKILL of the broker keeps what it confirmed, as
# edgeHub keeps what it stored. 10-second SAS tokens make the module reconnect all through the run.
# In turn, evenly spread: the broker restarted (SIGTERM, `broker`), the network to it cut for 3 s
# (scripts/cable.py, `cut`), the module killed with SIGKILL and started again (`kill`), the broker
# killed with SIGKILL and started again (`hubkill`). The replay counts alerts expected, received,
# lost and duplicated (its publisher resends whatever the broker did not confirm, so a missing
# alert was lost downstream of it); the module's resident memory is sampled every second.
#   scripts/faults.sh [SECONDS] [RATE]         (default 40 s at 100 messages/s, all alerts, per mode;
#                                              mosquitto saving on every change cannot keep up with
#                                              much more once a fault has queued a backlog)
#   ACK_MODES=pipelined scripts/faults.sh      (the modes to run: default "confirmed pipelined")
#   FAULTS="cut kill" scripts/faults.sh        (a chosen sequence of broker, cut, kill, hubkill)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
seconds=${1:-40}
rate=${2:-100}
modes=(${ACK_MODES:-${ACK_MODE:-confirmed pipelined}})
faults=(${FAULTS:-broker cut kill hubkill})
cargo build -q --release -p edgefilter --bin edgefilter
cargo build -q --release -p edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null; [ -n "${KEEP:-}" ] && echo "kept: $work" >&2 || rm -rf "$work"' EXIT
target/release/edgefilter-perf generate --count $((seconds * rate)) --rate "$rate" --alert-ratio 1 -o "$work/trace.jsonl"

# Started in a subshell (not a job of this shell, so their SIGKILLs are not reported as job
# deaths); the trap stops them by their pid files.
start_broker() { ( "$MOSQUITTO" -c "$work/m.conf" >> "$work/broker.log" 2>&1 & echo $! > "$work/broker.pid" ); }
start_module() {
  ( EdgeHubConnectionString="$DEV_CONNECTION_STRING" AckMode="$mode" \
    EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$cable_port" EDGEFILTER_METRICS_ADDR=off EDGEFILTER_TOKEN_TTL_SECS=10 \
      target/release/edgefilter >> "$work/module.log" 2>&1 &
    echo $! > "$work/module.pid" )
}
# stop_broker SIGNAL: stops the broker and waits until it is gone (its port free again).
stop_broker() {
  local pid
  pid=$(cat "$work/broker.pid")
  kill "-$1" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

# run MODE: one run under faults; appends its figures (one line) to results.
run() {
  mode=$1
  rm -rf "$work/db" "$work/broker-$mode.log" "$work/module.log" "$work/rss" "$work/report.json"
  mkdir "$work/db"
  port=$(free_port)
  write_mosquitto_conf "$work/m.conf" "$port" "max_inflight_messages 1" "set_tcp_nodelay true" \
    "persistence true" "persistence_location $work/db/" "autosave_on_changes true" "autosave_interval 1" \
    "log_dest file $work/broker-$mode.log" "log_type all"
  start_broker
  sleep 0.3
  cable_port=$(free_port)
  python3 scripts/cable.py "$cable_port" "$port" &
  local cable=$!
  start_module
  sleep 1
  ( while sleep 1; do
      awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/module.pid")/status" 2>/dev/null >> "$work/rss" || true
    done ) &
  local sampler=$!
  ( step=$((seconds / (${#faults[@]} + 1)))
    for fault in "${faults[@]}"; do
      sleep "$step"
      case $fault in
        broker) stop_broker TERM; sleep 1; start_broker; echo "fault ($mode): broker restarted" >&2 ;;
        hubkill) stop_broker KILL; sleep 1; start_broker; echo "fault ($mode): broker killed (SIGKILL) and restarted" >&2 ;;
        cut) kill -USR1 $cable; sleep 3; kill -USR2 $cable; echo "fault ($mode): network cut for 3 s" >&2 ;;
        kill) kill -KILL "$(cat "$work/module.pid")"; sleep 1; start_module; echo "fault ($mode): module killed (SIGKILL) and restarted" >&2 ;;
      esac
    done
  ) &
  local faulter=$!
  target/release/edgefilter-perf replay "$work/trace.jsonl" --hub "mqtt://127.0.0.1:$port" --device dev --module filter \
    --json "$work/report.json" --settle 30 --deadline $((seconds * 3 + 60)) > "$work/replay.txt" 2>&1 || true
  [ -s "$work/report.json" ] || { echo "faults ($mode): the replay wrote no report:" >&2; tail -5 "$work/replay.txt" >&2; exit 1; }
  wait $faulter || true
  grep -E "WRN|ERR" "$work/module.log" | cut -c1-160 | sed 's/^[^ ]* //' | sort | uniq -c | sort -rn | head -5 >&2 || true
  python3 - "$mode" "$work/report.json" "$work/rss" "$work/broker-$mode.log" >> "$work/results" <<'PY'
import json, re, sys
mode, report, rss, log = sys.argv[1:]
r = json.load(open(report))
a = r["alerts"]
rss = [int(l) for l in open(rss) if l.strip()] or [0]
# Where each lost alert went, from the broker's log (log_type all): whether the broker delivered
# its input to the module, and whether the module's alert for it reached the broker.
delivered, published, confirmed, pending = set(), set(), set(), {}
for line in open(log, errors="replace"):
    m = re.search(r"sequenceNumber=(\d+)'", line)
    if m and "Sending PUBLISH to dev/filter " in line:
        delivered.add(int(m[1]))
    elif m and "Received PUBLISH from dev/filter " in line:
        published.add(int(m[1]))
        pending[re.search(r", m(\d+),", line)[1]] = int(m[1])
    elif "Sending PUBACK to dev/filter " in line:
        mid = re.search(r"\(m(\d+),", line)[1]
        if mid in pending:
            confirmed.add(pending.pop(mid))
lost = a["missingSequences"]
never_delivered = [s for s in lost if s not in delivered]
# Lost by the module: its input reached it, and no alert for it was confirmed by the broker.
by_module = [s for s in lost if s in delivered and s not in confirmed]
after_module = [s for s in lost if s in confirmed]
print(f"{mode:<10} {r['sent']:>7} {a['expected']:>9} {a['received']:>9} {a['missing']:>5} {len(by_module):>9} "
      f"{a['duplicated']:>11} {r['publisher']['resent']:>8} {max(rss) / 1024:>7.1f}"
      + (f"  lost: {never_delivered[:5]} confirmed to the publisher, never sent to the module" if never_delivered else "")
      + (f"  lost by the module: {by_module[:5]}" if by_module else "")
      + (f"  lost: {after_module[:5]} after the broker confirmed the module's alert" if after_module else ""))
PY
  kill $sampler $cable 2>/dev/null || true
  kill -KILL "$(cat "$work/module.pid")" 2>/dev/null || true
  stop_broker TERM
}

for mode in "${modes[@]}"; do run "$mode"; done
printf '%-10s %7s %9s %9s %5s %9s %11s %8s %7s\n' AckMode sent expected received lost by-module duplicated resent "RSS MB"
cat "$work/results"
echo "faults, in turn: ${faults[*]}; $seconds s at $rate msg/s, every message an alert, per mode;" \
  "mosquitto max_inflight_messages 1, max_queued_messages 0, set_tcp_nodelay true, persisted on every change"
