#!/usr/bin/env bash
# How fast the module resumes after its hub restarts, as edgeHub does with every deployment: the
# release module against mosquitto (persistent sessions), a stream of alerts at 300 msg/s from
# edgefilter-perf replay, and the broker stopped (SIGTERM) for DOWN seconds and started again.
# For each DOWN it reports when the broker accepted connections again, how long after that the
# module was connected and resuming (its log line), and the replay's count of missing and
# duplicated alerts (the replay's own publisher resends whatever the broker did not confirm, so
# "missing" means lost by the module).
#   scripts/recovery.sh [DOWN...]      (default 1 5 60)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
downs=("$@")
[ $# -eq 0 ] && downs=(1 5 60)
cargo build -q --release -p edgefilter --bin edgefilter
cargo build -q --release -p edgefilter-perf
bin=$PWD/target/release/edgefilter
perf_tool=$PWD/target/release/edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
rate=300
printf '%-7s %16s %10s %9s %11s %s\n' down "resumed after" attempts missing duplicated "connections"
for down in "${downs[@]}"; do
  port=$(free_port)
  mkdir -p "$work/db.$down"
  write_mosquitto_conf "$work/m.conf" "$port" persistence\ true "persistence_location $work/db.$down/"
  "$MOSQUITTO" -c "$work/m.conf" > /dev/null 2>&1 &
  broker=$!
  sleep 0.5
  EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$port" \
    EDGEFILTER_METRICS_ADDR=off RuntimeLogLevel=info "$bin" > "$work/module.log" 2>&1 &
  module=$!
  n=$((rate * (down + 10)))
  "$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 1 -o "$work/trace.jsonl"
  sleep 1
  "$perf_tool" replay "$work/trace.jsonl" --hub "mqtt://127.0.0.1:$port" --device dev --module filter \
    --rate "$rate" --settle 30 --deadline $((down + 120)) --json "$work/report.json" > "$work/replay.txt" 2>/dev/null &
  replay=$!
  sleep 3
  kill -TERM $broker; wait $broker 2>/dev/null || true
  stopped=$(date +%s.%N)
  sleep "$down"
  # When the broker accepts connections again: a probe started before the broker is.
  python3 - "$port" > "$work/ready" <<'EOF' &
import socket, sys, time
while True:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
        print(f"{time.time():.6f}")
        break
    except OSError:
        time.sleep(0.001)
    finally:
        s.close()
EOF
  probe=$!
  sleep 0.2
  "$MOSQUITTO" -c "$work/m.conf" > /dev/null 2>&1 &
  broker=$!
  wait $probe
  ready=$(cat "$work/ready")
  wait $replay || true
  kill -TERM $module; wait $module 2>/dev/null || true
  kill -TERM $broker; wait $broker 2>/dev/null || true
  python3 - "$down" "$stopped" "$ready" "$work/module.log" "$work/report.json" <<'EOF'
import datetime, json, re, sys
down, stopped, ready, log, report = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
stamp = re.compile(r"^<\d> (\S+ \S+) \+00:00 \[\w+\] - (.*)$")
resumed, attempts, connections = None, 0, 0
for line in open(log):
    m = stamp.match(line.strip())
    if not m:
        continue
    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
    if m.group(2).startswith("connected to edgeHub"):
        connections += 1
        if resumed is None and t >= ready - 0.01:
            resumed = t
    if "cannot connect" in m.group(2):
        found = re.search(r"\((\d+) attempts", m.group(2))
        attempts += int(found.group(1)) if found else 1
r = json.load(open(report))
after = f"{resumed - ready:.3f} s" if resumed else "never"
print(f"{down + ' s':<7} {after:>16} {'>= ' + str(attempts):>10} {r['alerts']['missing']:>9} {r['alerts']['duplicated']:>11} {connections}")
EOF
done
echo "resumed after: from the broker accepting TCP connections again to the module's 'connected to edgeHub' log line;"
echo "attempts: failed connection attempts the module logged (its log counts them in lines at most every 10 s)"
