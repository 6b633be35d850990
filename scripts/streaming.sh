#!/usr/bin/env bash
# The module in the shape edgeHub delivers: one message in flight, the next only after the
# module's PUBACK (docs/protocol.md, "Delivery to a module"), which mosquitto reproduces with
# `max_inflight_messages 1`; then the wide window (100) as a second row. MQTT over TLS
# (certificates made here); mosquitto never drops what it queues (`max_queued_messages 0`: its
# default 1000 silently drops for a slow consumer) and sends each packet at once
# (`set_tcp_nodelay true`, as edgeHub's sockets do; its default Nagle holds a PUBLISH behind an
# unacknowledged PUBACK, docs/protocol.md). Load from a separate process
# (edgefilter-perf replay) in a closed loop, every message an alert: at most CLOSED messages
# outstanding, so the broker always has the next one queued and the module sets the pace. For
# each window: a fresh release module, then a fresh pass-through (edgefilter-perf passthrough: a
# plain rumqttc client that forwards every input unchanged, the baseline) in its place; each is
# warmed up for WARMUP_SECONDS, then measured for about SECONDS_PER_RUN. Per message it reports
# throughput, CPU µs (user and system apart), system calls and context switches (perf stat -e
# raw_syscalls:sys_enter,context-switches -p PID), heap allocations (the module's
# edgefilter_heap_allocations_total), peak RSS and latency (from the actual send, in a closed
# loop mostly the time queued at the broker). Then, per window, one backlog-drain row: the same
# messages queued while the module is down, drained at once.
#   scripts/streaming.sh                        windows 1 then 100, 3 s warm-up, 10 s measured
#   INFLIGHTS="1" SECONDS_PER_RUN=5 scripts/streaming.sh
#   TRANSPORT=tcp scripts/streaming.sh          plain MQTT instead of TLS
#   ACK_MODE=pipelined scripts/streaming.sh     the module's AckMode (default confirmed)
#   RATES="200 2000 10000" scripts/streaming.sh also open-loop rows at those rates (latency from
#                                               the scheduled send, half of the messages alerts)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
windows=(${INFLIGHTS:-1 100})
rates=(${RATES:-})
secs=${SECONDS_PER_RUN:-10}
warmup=${WARMUP_SECONDS:-3}
closed=${CLOSED:-1000}
transport=${TRANSPORT:-tls}
ack_mode=${ACK_MODE:-confirmed}
cargo build -q --release -p edgefilter --bin edgefilter
cargo build -q --release -p edgefilter-perf
bin=${EDGEFILTER_BINARY:-$PWD/target/release/edgefilter}
perf_tool=$PWD/target/release/edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
make_certificates "$work"
hz=$(getconf CLK_TCK)
metrics_port=$(free_port)

# broker WINDOW: (re)starts mosquitto with that window; sets url, tls and module_env.
broker_pid=
broker() {
  [ -n "$broker_pid" ] && { kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true; }
  local port
  port=$(free_port)
  if [ "$transport" = tls ]; then
    write_mosquitto_conf "$work/m.conf" "$port" "max_inflight_messages $1" "set_tcp_nodelay true" \
      "cafile $work/ca.pem" "certfile $work/server.pem" "keyfile $work/server.key"
    url="mqtts://localhost:$port"
    tls=(--ca "$work/ca.pem")
  else
    write_mosquitto_conf "$work/m.conf" "$port" "max_inflight_messages $1" "set_tcp_nodelay true"
    url="mqtt://127.0.0.1:$port"
    tls=()
  fi
  "$MOSQUITTO" -c "$work/m.conf" > "$work/mosquitto.log" 2>&1 &
  broker_pid=$!
  sleep 0.5
  module_env=(EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="$url"
    EdgeModuleCACertificateFile="$work/ca.pem" EDGEFILTER_METRICS_ADDR="127.0.0.1:$metrics_port"
    AckMode="$ack_mode" RuntimeLogLevel=warning)
}

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
achieved() { python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["achievedRate"]))' "$1"; }

# replay SUBJECT PACE... : one replay at the running subject, its report in $work/report.json.
replay() {
  local subject=$1 threshold=25 module=filter
  shift
  [ "$subject" = passthrough ] && threshold=-1000000 module=passthrough
  "$perf_tool" replay "$work/trace.jsonl" --hub "$url" "${tls[@]}" --device dev --module "$module" "$@" \
    --threshold="$threshold" --settle 20 --json "$work/report.json" > "$work/replay.txt" 2> /dev/null ||
    { echo "streaming: replay of $subject incomplete:" >&2; sed -n 2p "$work/replay.txt" >&2; }
}

printf '%-11s %6s %-8s %7s %8s %8s %8s %9s %9s %8s %8s %8s %8s\n' subject window load msgs "msg/s" "usr µs" \
  "sys µs" syscalls ctxsw allocs "RSS MiB" "p50 ms" "p99 ms"
# row SUBJECT WINDOW LOAD PID U0 S0 A0: prints one row from perf.txt, report.json and the
# counters taken before the measured replay.
row() {
  local subject=$1 window=$2 load=$3 pid=$4 u0=$5 s0=$6 a0=$7 u1 s1 a1 rss
  read -r u1 s1 < <(ticks "$pid")
  a1=$(allocations)
  rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
  python3 - "$subject" "$window" "$load" "$u0" "$s0" "$u1" "$s1" "${a0:-}" "${a1:-}" "$rss" "$work/report.json" "$work/perf.txt" <<'PY'
import json, sys
subject, window, load, u0, s0, u1, s1, a0, a1, rss, report, perf = sys.argv[1:]
r = json.load(open(report))
n = r["sent"]
counts = {}
for line in open(perf):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        counts[f[2]] = float(f[0])
# CPU time from perf's task-clock (exact); its user/system split from /proc's tick counts.
cpu = counts["task-clock"] * 1000 / n
du, ds = int(u1) - int(u0), int(s1) - int(s0)
usr = cpu * du / (du + ds) if du + ds else float("nan")
allocs = f"{(int(a1) - int(a0)) / n:.2f}" if a0 and a1 else "-"
lat = r["latencyMs"]
print(f"{subject:<11} {window:>6} {load:<8} {n:>7} {r['achievedRate']:>8.0f} {usr:>8.2f} {cpu - usr:>8.2f} "
      f"{counts['raw_syscalls:sys_enter'] / n:>9.3f} {counts['context-switches'] / n:>9.3f} {allocs:>8} {rss:>8} "
      f"{lat['p50']:>8.2f} {lat['p99']:>8.2f}")
PY
}

# measure SUBJECT WINDOW LOAD: a fresh subject, warmed up, then one measured replay under perf stat.
# LOAD is `closed` or a rate in msg/s.
measure() {
  local subject=$1 window=$2 load=$3 pid n pace a0 u0 s0 stat
  pid=$(start "$subject")
  sleep 1.5
  if [ "$load" = closed ]; then
    pace=(--closed "$closed")
    "$perf_tool" generate --count $((5000 * warmup)) --rate 1000 --alert-ratio 1 -o "$work/trace.jsonl"
    replay "$subject" "${pace[@]}"
    n=$(( $(achieved "$work/report.json") * secs ))
    [ "$n" -lt 2000 ] && n=2000
    "$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 1 -o "$work/trace.jsonl"
  else
    pace=(--rate "$load")
    "$perf_tool" generate --count $((load * warmup + 1)) --rate 1000 --alert-ratio 0.5 -o "$work/trace.jsonl"
    replay "$subject" "${pace[@]}"
    "$perf_tool" generate --count $((load * secs)) --rate 1000 --alert-ratio 0.5 -o "$work/trace.jsonl"
  fi
  a0=$(allocations)
  read -r u0 s0 < <(ticks "$pid")
  perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.txt" &
  stat=$!
  sleep 0.2
  replay "$subject" "${pace[@]}"
  kill -INT $stat
  wait $stat || true
  row "$subject" "$window" "$load" "$pid" "$u0" "$s0" "$a0"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
}

# backlog WINDOW: messages queued in the module's session while it is down, drained at once.
backlog() {
  local n=$((20000 * secs / 10)) pid replay_pid u0 s0 a0 stat
  "$perf_tool" generate --count "$n" --rate 1000 --alert-ratio 1 -o "$work/trace.jsonl"
  pid=$(start edgefilter); sleep 1.5; kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  replay edgefilter --max &
  replay_pid=$!
  sleep 4 # queued while the module is down
  pid=$(start edgefilter)
  sleep 0.3
  a0=$(allocations)
  read -r u0 s0 < <(ticks "$pid")
  perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.txt" &
  stat=$!
  wait $replay_pid || true
  kill -INT $stat; wait $stat || true
  row edgefilter "$1" backlog "$pid" "$u0" "$s0" "$a0"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

for window in "${windows[@]}"; do
  broker "$window"
  for load in closed "${rates[@]}"; do
    measure edgefilter "$window" "$load"
    measure passthrough "$window" "$load"
  done
  backlog "$window"
done
echo "transport $transport; AckMode $ack_mode; mosquitto max_inflight_messages WINDOW, max_queued_messages 0 (unlimited), set_tcp_nodelay true;" \
  "closed loop: at most $closed outstanding, every message an alert, $warmup s warm-up then about $secs s measured;" \
  "CPU from perf stat's task-clock (user/system split by /proc/PID/stat's ticks), system calls and context switches from perf stat -p, over the measured replay"
