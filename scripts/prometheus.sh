#!/usr/bin/env bash
# The module's /metrics read by Prometheus' own tools: `promtool check metrics` on a scrape, then
# a Prometheus server (Debian's package) on 127.0.0.1 scraping the module every second, asked
# through its HTTP API (/api/v1/query) for one counter: its value and the module's four labels.
# The module runs against a local mosquitto with its development identity; this script plays
# edgeHub's side with mosquitto's clients (the twin answer with one aggregate, three inputs and a
# malformed one, which the aggregate's readings_dropped counter with reason="malformed" counts).
#   scripts/prometheus.sh [BINARY]     (default: target/debug/edgefilter, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
bin=${1:-target/debug/edgefilter}
[ -n "${1:-}" ] || cargo build -q --bin edgefilter
work=$(mktemp -d)
pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "prometheus.sh: FAILED: $*" >&2
  for f in module prometheus; do echo "--- $f log:" >&2; tail -20 "$work/$f.log" >&2 || true; done
  exit 1
}
# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
  local what=$1 limit=$2
  shift 2
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "$what (not within $limit s)"
}

port=$(free_port)
metrics=$(free_port)
prom=$(free_port)
write_mosquitto_conf "$work/mosquitto.conf" "$port"
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
pub() { mosquitto_pub -p "$port" -q 1 "$@"; }
wait_for "mosquitto" 5 pub -t up -m x
mosquitto_sub -p "$port" -v -t '$iothub/twin/GET/#' -C 1 >"$work/twin-get" &
pids+=($!)
sleep 0.3
EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_MQTT_URL="mqtt://127.0.0.1:$port" \
  EDGEFILTER_METRICS_ADDR="127.0.0.1:$metrics" "$bin" >"$work/module.log" 2>&1 &
pids+=($!)
wait_for "a twin request" 20 grep -q rid= "$work/twin-get"
rid=$(sed -n 's/.*\$rid=\([^& ]*\).*/\1/p' "$work/twin-get")
# One aggregate, its name with a quote (label values are escaped), checkpointing every second.
aggregates='"Aggregates":{"T \"30s\"":{"path":"machine.temperature","window":{"kind":"tumbling","seconds":30},"functions":["count"],"output":"aggregates"}}'
pub -t "\$iothub/twin/res/200/?\$rid=$rid" -m "{\"desired\":{\"\$version\":1,\"CheckpointSeconds\":1,$aggregates},\"reported\":{}}"
for _ in 1 2 3; do pub -t "$SENSOR_TOPIC" -m "$SENSOR_BODY"; done
pub -t "${SENSOR_TOPIC/sequenceNumber=1/sequenceNumber=9}" -m '{"machine":'
url="http://127.0.0.1:$metrics/metrics"
wait_for "4 inputs counted" 10 sh -c "curl -sf $url | grep -q '^edgefilter_messages_received_total{.*} 4$'"
malformed='edgefilter_aggregate_readings_dropped_total{.*aggregate="T \\"30s\\"",reason="malformed"} 1$'
wait_for "the aggregate's malformed reading counted" 10 sh -c "curl -sf $url | grep -q '$malformed'"

curl -sf "$url" >"$work/scrape.txt"
promtool check metrics <"$work/scrape.txt" || fail "promtool check metrics: $(promtool check metrics <"$work/scrape.txt" 2>&1)"
echo "promtool check metrics: $(wc -c <"$work/scrape.txt") bytes, no problem"

cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: edgefilter
    static_configs:
      - targets: ["127.0.0.1:$metrics"]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom" >"$work/prometheus.log" 2>&1 &
pids+=($!)
query() { curl -sf "http://127.0.0.1:$prom/api/v1/query" --data-urlencode "query=$1"; }
wait_for "Prometheus scraped the module" 60 sh -c \
  "curl -sf 'http://127.0.0.1:$prom/api/v1/query?query=up' | grep -q '\"value\":\[[0-9.]*,\"1\"\]'"
instance=$(sed -n 's/^edgefilter_messages_received_total{.*instance_number="\([^"]*\)".*/\1/p' "$work/scrape.txt")
query edgefilter_messages_received_total >"$work/answer.json"
python3 - "$work/answer.json" "$instance" <<'PY' || fail "Prometheus answered $(cat "$work/answer.json")"
import json, sys
answer = json.load(open(sys.argv[1]))
[series] = answer["data"]["result"]
labels, value = series["metric"], series["value"][1]
want = {"iothub": "h", "edge_device": "dev", "module_name": "filter", "instance_number": sys.argv[2]}
got = {k: labels.get(k) for k in want}
assert value == "4" and got == want, (value, got)
print(f"Prometheus: edgefilter_messages_received_total = {value} with {got}")
PY
query 'edgefilter_aggregate_readings_dropped_total{reason="malformed"}' >"$work/answer.json"
python3 - "$work/answer.json" <<'PY' || fail "Prometheus answered $(cat "$work/answer.json")"
import json, sys
[series] = json.load(open(sys.argv[1]))["data"]["result"]
assert series["metric"]["aggregate"] == 'T "30s"' and series["value"][1] == "1", series
print(f"Prometheus: edgefilter_aggregate_readings_dropped_total{{aggregate={series['metric']['aggregate']!r}, reason=\"malformed\"}} = 1")
PY
