#!/usr/bin/env bash
# The module under the load edgeHub really sends: MQTT over TLS (certificates made here), the
# sensor's messages published one per publish at a steady rate by a separate process
# (edgefilter-perf replay), half of them alerts, through mosquitto. For each rate it starts a fresh
# release module, and then a fresh pass-through (edgefilter-perf passthrough: a plain rumqttc client
# that forwards every input unchanged, the baseline) in its place, and reports for each:
#   CPU µs per message (user and system apart), system calls and context switches per message
#   (perf stat on the process), heap allocations per message (the module's
#   edgefilter_heap_allocations_total), peak RSS, latency percentiles (from the scheduled send).
# Then one backlog-drain row: the same messages queued while the module is down, drained at once.
# Nothing here sets an environment variable for the allocator: the figures are the defaults'.
#   scripts/streaming.sh                     rates 200 2000 10000 max, 5 s each
#   RATES="2000" SECONDS_PER_RATE=10 scripts/streaming.sh
#   TRANSPORT=tcp scripts/streaming.sh       plain MQTT instead of TLS
#   INFLIGHT=20 scripts/streaming.sh         mosquitto's window towards each client (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
rates=(${RATES:-200 2000 10000 max})
secs=${SECONDS_PER_RATE:-5}
transport=${TRANSPORT:-tls}
inflight=${INFLIGHT:-100}
cargo build -q --release -p edgefilter --bin edgefilter
cargo build -q --release -p edgefilter-perf
bin=${EDGEFILTER_BINARY:-$PWD/target/release/edgefilter}
perf_tool=$PWD/target/release/edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

make_certificates "$work"
port=$(free_port)
if [ "$transport" = tls ]; then
  write_mosquitto_conf "$work/m.conf" "$port" "max_inflight_messages $inflight" \
    "cafile $work/ca.pem" "certfile $work/server.pem" "keyfile $work/server.key"
  url="mqtts://localhost:$port"
  tls=(--ca "$work/ca.pem")
else
  write_mosquitto_conf "$work/m.conf" "$port" "max_inflight_messages $inflight"
  url="mqtt://127.0.0.1:$port"
  tls=()
fi
"$MOSQUITTO" -c "$work/m.conf" > "$work/mosquitto.log" 2>&1 &
sleep 0.5
metrics_port=$(free_port)
module_env=(EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="$url"
  EdgeModuleCACertificateFile="$work/ca.pem" EDGEFILTER_METRICS_ADDR="127.0.0.1:$metrics_port"
  RuntimeLogLevel=warning)

# start SUBJECT: starts the module or the pass-through; prints its pid.
start() {
  case $1 in
    edgefilter) env "${module_env[@]}" "$bin" >> "$work/module.log" 2>&1 & ;;
    # Its own module id, so that the module's persistent session does not queue the
    # pass-through's load for the module's next run.
    passthrough) "$perf_tool" passthrough --hub "$url" "${tls[@]}" --device dev --module passthrough >> "$work/pt.log" 2>&1 & ;;
  esac
  echo $!
}
allocations() { # the module's allocation counter, or nothing for the pass-through
  curl -s "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null | awk '/^edgefilter_heap_allocations_total/ {print $2}' || true
}
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime, in clock ticks
hz=$(getconf CLK_TCK)

printf '%-11s %-8s %7s %8s %8s %9s %9s %9s %8s %8s %8s %8s\n' subject rate msgs "usr µs" "sys µs" \
  syscalls ctxsw allocs "RSS MiB" "p50 ms" "p99 ms" "max ms"
# measure SUBJECT RATE: one row. The pass-through forwards every message, so for it every
# message is an expected alert.
measure() {
  local subject=$1 rate=$2 n pace pid a0 a1 u0 s0 u1 s1 threshold=25 module=filter
  [ "$subject" = passthrough ] && threshold=-1000000 module=passthrough
  if [ "$rate" = max ]; then n=$((20000 * secs / 5)); pace=(--max); else n=$((rate * secs)); pace=(--rate "$rate"); fi
  [ "$n" -lt 200 ] && n=200
  "$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 0.5 -o "$work/trace.jsonl"
  pid=$(start "$subject")
  sleep 1.5
  a0=$(allocations)
  read -r u0 s0 < <(ticks "$pid")
  perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.txt" &
  local stat=$!
  sleep 0.2
  "$perf_tool" replay "$work/trace.jsonl" --hub "$url" "${tls[@]}" --device dev --module "$module" "${pace[@]}" \
    --threshold="$threshold" --settle 20 --json "$work/report.json" > "$work/replay.txt" 2> /dev/null || { echo "streaming: replay of $subject at $rate incomplete:" >&2; sed -n 2p "$work/replay.txt" >&2; }
  kill -INT $stat
  wait $stat || true
  read -r u1 s1 < <(ticks "$pid")
  a1=$(allocations)
  local rss
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  local calls ctx sent clock
  clock=$(awk -F, '$3 ~ /task-clock/ {print $1}' "$work/perf.txt")
  calls=$(awk -F, '$3 ~ /raw_syscalls/ {print $1}' "$work/perf.txt")
  ctx=$(awk -F, '$3 ~ /context-switches/ {print $1}' "$work/perf.txt")
  sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sent"])' "$work/report.json")
  python3 - "$subject" "$rate" "$sent" "$u0" "$s0" "$u1" "$s1" "$hz" "$calls" "$ctx" "${a0:-}" "${a1:-}" "$rss" "$work/report.json" "$clock" <<'EOF'
import json, sys
subject, rate, sent, u0, s0, u1, s1, hz, calls, ctx, a0, a1, rss, report, clock = sys.argv[1:]
n = int(sent)
# CPU time from perf's task-clock (exact); its user/system split from /proc's tick counts.
cpu = float(clock) * 1000 / n
du, ds = int(u1) - int(u0), int(s1) - int(s0)
usr = cpu * du / (du + ds) if du + ds else float("nan")
sys_ = cpu - usr
allocs = f"{(int(a1) - int(a0)) / n:.2f}" if a0 and a1 else "-"
lat = json.load(open(report))["latencyMs"]
print(f"{subject:<11} {rate:<8} {n:>7} {usr:>8.2f} {sys_:>8.2f} {int(calls)/n:>9.3f} {int(ctx)/n:>9.3f} {allocs:>9} "
      f"{rss:>8} {lat['p50']:>8.2f} {lat['p99']:>8.2f} {lat['max']:>8.2f}")
EOF
}
for rate in "${rates[@]}"; do
  measure edgefilter "$rate"
  measure passthrough "$rate"
done

# The backlog drain: the same kind of messages queued in the module's session while it is down.
n=$((20000 * secs / 5))
"$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 0.5 -o "$work/trace.jsonl"
pid=$(start edgefilter); sleep 1.5; kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
"$perf_tool" replay "$work/trace.jsonl" --hub "$url" "${tls[@]}" --device dev --module filter --max \
  --settle 60 --json "$work/report.json" > "$work/replay.txt" 2>/dev/null &
replay=$!
sleep "$((secs + 2))" # queued while the module is down (the replay counts latency from its schedule)
pid=$(start edgefilter)
read -r u0 s0 < <(ticks "$pid")
perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.txt" &
stat=$!
wait $replay || echo "streaming: backlog replay incomplete" >&2
kill -INT $stat; wait $stat || true
read -r u1 s1 < <(ticks "$pid")
rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
calls=$(awk -F, '$3 ~ /raw_syscalls/ {print $1}' "$work/perf.txt")
ctx=$(awk -F, '$3 ~ /context-switches/ {print $1}' "$work/perf.txt")
clock=$(awk -F, '$3 ~ /task-clock/ {print $1}' "$work/perf.txt")
python3 - "$n" "$u0" "$s0" "$u1" "$s1" "$hz" "$calls" "$ctx" "$rss" "$clock" <<'EOF'
import sys
n, u0, s0, u1, s1, hz, calls, ctx, rss, clock = sys.argv[1:]
n = int(n)
cpu = float(clock) * 1000 / n
du, ds = int(u1) - int(u0), int(s1) - int(s0)
usr = cpu * du / (du + ds) if du + ds else float("nan")
sys_ = cpu - usr
print(f"{'edgefilter':<11} {'backlog':<8} {n:>7} {usr:>8.2f} {sys_:>8.2f} {int(calls)/n:>9.3f} {int(ctx)/n:>9.3f} {'-':>9} {rss:>8} {'-':>8} {'-':>8} {'-':>8}")
EOF
echo "transport $transport, mosquitto max_inflight_messages $inflight; CPU time from perf stat's task-clock (user/system split by /proc/PID/stat's ticks), system calls and context switches from perf stat -p, over the replay"
