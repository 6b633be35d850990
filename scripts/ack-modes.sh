#!/usr/bin/env bash
# AckMode=confirmed against AckMode=pipelined in the shape edgeHub delivers: one message in flight,
# the next only after the module's PUBACK, and the module's own publishes (its alerts) confirmed
# 0.5-2 ms late, as edgeHub confirms them only once it has persisted them (docs/protocol.md,
# "Delivery to a module"). The hub is the embedded one (`edgefilter-perf hub --inflight 1
# --ack-delay-ms 0.5-2`, plain MQTT); the load comes from edgefilter-perf replay in a closed loop
# (at most CLOSED outstanding, so the hub always has the next message queued and the subject sets
# the pace). For each alert ratio: the pass-through (edgefilter-perf passthrough, logged in as a
# module so the hub delivers to it one at a time and confirms it late too: the baseline), then
# the release module in each mode, each fresh, warmed up for WARMUP_SECONDS and measured for about
# SECONDS_PER_RUN. Per message: throughput, CPU µs (user and system), system calls and context
# switches (perf stat -e raw_syscalls:sys_enter,context-switches -p PID), and the module's own
# turnaround (input read to its PUBACK written; its /metrics `edgefilter_turnaround_seconds_*`,
# over the warm-up and the measured run) p50/p99 for dropped inputs and for alerts; then each
# figure as a ratio against the pass-through of the same run.
#   scripts/ack-modes.sh                          alert ratios 1 and 0.5, 2 s warm-up, 8 s measured
#   ACK_DELAY_MS=0 scripts/ack-modes.sh           a hub that confirms at once
#   HUB=mosquitto scripts/ack-modes.sh            mosquitto (max_inflight_messages 1) instead, which
#                                                 confirms at once; NODELAY=false for its default
#                                                 Nagle (set_tcp_nodelay false; edgeHub sets TCP_NODELAY)
#   ALERT_RATIOS="1" MODES="pipelined" EDGEFILTER_BINARY=... scripts/ack-modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ratios=(${ALERT_RATIOS:-1 0.5})
modes=(${MODES:-confirmed pipelined})
secs=${SECONDS_PER_RUN:-8}
warmup=${WARMUP_SECONDS:-2}
closed=${CLOSED:-1000}
delay=${ACK_DELAY_MS:-0.5-2}
hub_kind=${HUB:-embedded}
cargo build -q --release -p edgefilter --bin edgefilter
cargo build -q --release -p edgefilter-perf
bin=${EDGEFILTER_BINARY:-$PWD/target/release/edgefilter}
perf_tool=$PWD/target/release/edgefilter-perf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
metrics_port=$(free_port)
port=$(free_port)
key=c2VjcmV0 # DEV_CONNECTION_STRING's key
url="mqtt://127.0.0.1:$port"
if [ "$hub_kind" = mosquitto ]; then
  write_mosquitto_conf "$work/m.conf" "$port" "max_inflight_messages 1" "set_tcp_nodelay ${NODELAY:-true}"
  "$MOSQUITTO" -c "$work/m.conf" > "$work/hub.log" 2>&1 &
  hub_desc="mosquitto, max_inflight_messages 1, set_tcp_nodelay ${NODELAY:-true}, confirms at once"
else
  "$perf_tool" hub --port "$port" --hostname h --device dev --module filter --module passthrough --key "$key" \
    --inflight 1 --ack-delay-ms "$delay" > "$work/hub.log" 2>&1 &
  hub_desc="the embedded hub (edgefilter-perf hub), one in flight, the module's publishes confirmed $delay ms late"
fi
sleep 0.5
hz=$(getconf CLK_TCK)

# start SUBJECT: the pass-through or the module in a mode (confirmed, pipelined); prints its pid.
start() {
  case $1 in
    passthrough) "$perf_tool" passthrough --hub "$url" --device dev --module passthrough --key "$key" --hostname h >> "$work/pt.log" 2>&1 & ;;
    *) EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="$url" AckMode=$1 \
         EDGEFILTER_METRICS_ADDR="127.0.0.1:$metrics_port" RuntimeLogLevel=warning "$bin" >> "$work/module.log" 2>&1 & ;;
  esac
  echo $!
}
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime, in clock ticks

# replay SUBJECT RATIO: one closed-loop replay at the running subject, its report in report.json.
replay() {
  local threshold=25 module=filter
  [ "$1" = passthrough ] && threshold=-1000000 module=passthrough
  "$perf_tool" replay "$work/trace.jsonl" --hub "$url" --device dev --module "$module" --closed "$closed" \
    --threshold="$threshold" --settle 20 --json "$work/report.json" > "$work/replay.txt" 2> /dev/null ||
    { echo "ack-modes: replay of $1 incomplete:" >&2; sed -n 2p "$work/replay.txt" >&2; }
}

# measure SUBJECT RATIO: a fresh subject, warmed up, then one measured replay under perf stat;
# appends its figures (one JSON line) to rows.jsonl.
measure() {
  local subject=$1 ratio=$2 pid n u0 s0 u1 s1 stat
  pid=$(start "$subject")
  sleep 1.5
  "$perf_tool" generate --count $((3000 * warmup)) --rate 1000 --alert-ratio "$ratio" -o "$work/trace.jsonl"
  replay "$subject"
  n=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["achievedRate"] * int(sys.argv[2])))' "$work/report.json" "$secs")
  [ "$n" -lt 2000 ] && n=2000
  "$perf_tool" generate --count "$n" --rate 1000 --alert-ratio "$ratio" -o "$work/trace.jsonl"
  read -r u0 s0 < <(ticks "$pid")
  perf stat -x, -e task-clock,raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/perf.txt" &
  stat=$!
  sleep 0.2
  replay "$subject"
  kill -INT $stat
  wait $stat || true
  read -r u1 s1 < <(ticks "$pid")
  if [ "$subject" = passthrough ]; then : > "$work/metrics.txt"; else curl -s "http://127.0.0.1:$metrics_port/metrics" > "$work/metrics.txt" || true; fi
  python3 - "$subject" "$ratio" "$u0" "$s0" "$u1" "$s1" "$work/report.json" "$work/perf.txt" "$work/metrics.txt" >> "$work/rows.jsonl" <<'PY'
import json, re, sys
subject, ratio, u0, s0, u1, s1, report, perf, metrics = sys.argv[1:]
r = json.load(open(report))
n = r["sent"]
counts = {}
for line in open(perf):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        counts[f[2]] = float(f[0])
cpu = counts["task-clock"] * 1000 / n  # µs per message (task-clock is in ms)
du, ds = int(u1) - int(u0), int(s1) - int(s0)
usr = cpu * du / (du + ds) if du + ds else float("nan")
# edgefilter_turnaround_seconds_KIND{...quantile="Q"...} V (and _KIND_count), or the same with
# the kind as a label (edgefilter_turnaround_seconds{outcome="KIND",...}), with any other labels.
turn = {}
for line in open(metrics):
    m = re.match(r'edgefilter_turnaround_seconds(?:_(alert|dropped))?(_count)?(?:\{([^}]*)\})?\s+(\S+)', line)
    if not m:
        continue
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m[3] or ""))
    kind = m[1] or labels.get("outcome") or labels.get("kind")
    if kind and m[2]:
        turn[f"{kind} count"] = float(m[4])
    elif kind and "quantile" in labels:
        turn[f"{kind} p{round(float(labels['quantile']) * 100, 1):g}"] = float(m[4]) * 1e6
print(json.dumps({"subject": subject, "ratio": float(ratio), "msgs": n, "rate": r["achievedRate"], "usr": usr,
                  "sys": cpu - usr, "syscalls": counts["raw_syscalls:sys_enter"] / n,
                  "ctxsw": counts["context-switches"] / n, "turnaround_us": turn}))
PY
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
}

for ratio in "${ratios[@]}"; do
  measure passthrough "$ratio"
  for mode in "${modes[@]}"; do measure "$mode" "$ratio"; done
done
python3 - "$work/rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
head = f"{'alerts':>6} {'subject':<11} {'msgs':>6} {'msg/s':>7} {'usr µs':>7} {'sys µs':>7} {'syscalls':>8} {'ctxsw':>6}"
head += f" {'drop p50/p99 µs':>16} {'alert p50/p99 µs':>17}   {'vs pass-through: msg/s':>22} {'CPU':>5} {'syscalls':>8}"
print(head)
base = {}
for r in rows:
    if r["subject"] == "passthrough":
        base[r["ratio"]] = r
    b = base.get(r["ratio"], r)
    t = r["turnaround_us"]
    def pair(kind):
        a, z = t.get(f"{kind} p50"), t.get(f"{kind} p99")
        return f"{a:.0f} / {z:.0f}" if a is not None and z is not None and t.get(f"{kind} count") else "-"
    cpu, bcpu = r["usr"] + r["sys"], b["usr"] + b["sys"]
    print(f"{r['ratio']:>6.2f} {r['subject']:<11} {r['msgs']:>6} {r['rate']:>7.0f} {r['usr']:>7.2f} {r['sys']:>7.2f} "
          f"{r['syscalls']:>8.2f} {r['ctxsw']:>6.2f} {pair('dropped'):>16} {pair('alert'):>17}   "
          f"{r['rate'] / b['rate']:>21.2f}x {cpu / bcpu:>4.2f}x {r['syscalls'] / b['syscalls']:>7.2f}x")
PY
echo "hub: $hub_desc; plain MQTT; closed loop, at most $closed outstanding; $warmup s warm-up then about $secs s measured;" \
  "CPU from perf stat's task-clock (user/system split by /proc/PID/stat's ticks); turnaround from the module's /metrics, over warm-up and measured run"
