#!/usr/bin/env bash
# The pipeline's figures on this machine, through a real broker (mosquitto) at 100% alerts and
# full load: the messages wait in the module's persistent session, then the module starts and
# drains them as fast as it can. Messages per second, system calls per message (strace -f -c on
# the module, less a run without messages), peak RSS, for BatchSize 1 and 100, for each backlog size. mosquitto sends a
# resumed session's whole backlog at once, whatever its max_inflight_messages, so a backlog
# beyond 2 x EDGEFILTER_MAX_UNCONFIRMED (default 1000) exercises holding input back and leaving
# it for redelivery.
#   scripts/pipeline-figures.sh [BACKLOG...]    (default 5000 20000; release x86 build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
backlogs=("$@")
[ $# -eq 0 ] && backlogs=(5000 20000)
cargo build -q --release --bin edgefilter
bin=$PWD/target/release/edgefilter
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
printf '%-8s %-9s %10s %12s %10s\n' backlog BatchSize msg/s syscalls/msg peakRSS
# One measured replay: prints "msg/s syscalls/msg peakRSS" (syscalls only when traced).
replay() {
  local n=$1 batch=$2 traced=$3
  local port broker tracer pid sub start end rss calls=0
  port=$(free_port)
  write_mosquitto_conf "$work/m.conf" "$port"
  "$MOSQUITTO" -c "$work/m.conf" >/dev/null 2>&1 &
  broker=$!
  sleep 0.3
  local env=(EdgeHubConnectionString="$DEV_CONNECTION_STRING"
    EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$port" EDGEFILTER_METRICS_ADDR=off RuntimeLogLevel=warning
    BatchSize="$batch" MIMALLOC_ARENA_EAGER_COMMIT=0)
  # Create the module's persistent session, then queue the load in it while the module is down.
  env "${env[@]}" "$bin" > "$work/log" 2>&1 &
  pid=$!
  sleep 0.5
  kill -TERM $pid
  wait $pid || true
  if [ "$n" -gt 0 ]; then
    awk -v n="$n" -v b="$SENSOR_BODY" 'BEGIN { for (i = 0; i < n; i++) print b }' | mosquitto_pub -p "$port" -q 1 -t "$SENSOR_TOPIC" -l
    mosquitto_sub -p "$port" -t 'devices/dev/modules/filter/messages/events/#' -C "$n" -W 300 > /dev/null &
  else
    sleep 1 & # the baseline: start, connect, fetch the twin, stop
  fi
  sub=$!
  sleep 0.3
  local wrap=()
  [ "$traced" = yes ] && wrap=(strace -f -c -o "$work/strace")
  start=$(date +%s.%N)
  env "${env[@]}" "${wrap[@]}" "$bin" > "$work/log" 2>&1 &
  tracer=$!
  sleep 0.2
  pid=$(pgrep -n -x edgefilter)
  wait $sub
  end=$(date +%s.%N)
  rss=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$pid/status")
  kill -TERM "$pid"
  wait $tracer || true
  [ "$traced" = yes ] && cp "$work/strace" "${STRACE_OUT:-/dev/null}"
  [ "$traced" = yes ] && calls=$(awk '$NF == "total" {print $4}' "$work/strace")
  kill $broker
  wait $broker 2>/dev/null || true
  echo "$(echo "$n / ($end - $start)" | bc -l) $calls $rss"
}
# System calls per message: a run of N messages minus a run of none (start-up, connection, twin
# and stop cost the same in both), divided by N.
for batch in 1 100; do
  read -r _ base _ _ < <(replay 0 "$batch" yes)
  for n in "${backlogs[@]}"; do
    read -r rate _ rss unit < <(replay "$n" "$batch" no)
    read -r _ calls _ _ < <(replay "$n" "$batch" yes)
    printf '%-8s %-9s %10.0f %12.3f %7s %s\n' "$n" "$batch" "$rate" "$(echo "($calls - $base) / $n" | bc -l)" "$rss" "$unit"
  done
done
