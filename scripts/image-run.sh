#!/usr/bin/env bash
# Runs a built image against a mosquitto on this machine, playing edgeHub's side with mosquitto's
# clients (run by scripts/images.sh):
#   scripts/image-run.sh amd64      podman run, the hub reached as edgeHub through DNS
#   scripts/image-run.sh arm32v7    the image's program and files under qemu-arm (no binfmt here)
#
# Checks, each or exit 1 with the module's log: the image's platform (linux amd64, linux arm v7)
# and CA roots (at least 100 certificates);
# it connects with a connection string and asks for its twin; alerts flow (two of four messages,
# each with MessageType=Alert); a twin patch applies (TemperatureThreshold 35, reported back, then
# only 40° alerts); the process runs as uid and gid 10001; SIGTERM (`podman stop`) ends it with
# exit code 0 in under 5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: image-run.sh amd64|arm32v7}
image=localhost/edgefilter:$arch
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/containers-env.sh
source scripts/containers-env.sh
# Not under TMPDIR (in root's home): the arm32v7 run reads the image's files as uid 10001.
work=$(mktemp -d /tmp/edgefilter-image-XXXXXX)
chmod 755 "$work"
pids=()
container=edgefilter-image-test-$$
cleanup() {
  podman rm -f -t 0 "$container" >/dev/null 2>&1 || true
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
metrics=$(free_port)
write_mosquitto_conf "$work/mosquitto.conf" "$port"
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
dev=devices/dev/modules/filter
sub() { exec mosquitto_sub -p "$port" -v "$@"; }  # exec: a background sub is killable by its $!
pub() { mosquitto_pub -p "$port" -q 1 "$@"; }
for _ in $(seq 50); do pub -t up -m x 2>/dev/null && break; sleep 0.1; done
sub -t "$dev/messages/events/#" >"$work/alerts" &
pids+=($!)
sub -t '$iothub/twin/PATCH/properties/reported/#' >"$work/reported" &
pids+=($!)
sub -t '$iothub/twin/GET/#' -C 1 >"$work/twin-get" &
twin_get=$!
pids+=($!)
sleep 0.5

fail() {
  echo "image-run $arch: FAILED: $*" >&2
  echo "--- the module's log:" >&2
  if [ "$arch" = amd64 ]; then podman logs "$container" >&2 || true; else cat "$work/module.log" >&2; fi
  exit 1
}
# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
  local what=$1 limit=$2
  shift 2
  for _ in $(seq $((limit * 10))); do "$@" && return 0; sleep 0.1; done
  fail "$what (not within $limit s)"
}

# The platform the image says it is for (its config's architecture and variant).
platform=$(skopeo inspect --config "containers-storage:$image" \
  | python3 -c 'import json, sys; c = json.load(sys.stdin); print(c["os"], c["architecture"], *filter(None, [c.get("variant")]))')
expected="linux amd64"
[ "$arch" = amd64 ] || expected="linux arm v7"
[ "$platform" = "$expected" ] || fail "the image is for '$platform', not '$expected'"

# The system roots the module trusts when no CA is configured (rustls-native-certs reads this file).
roots=$(podman image mount "$image")/etc/ssl/certs/ca-certificates.crt
certificates=$(grep -c 'BEGIN CERTIFICATE' "$roots" || true)
podman image unmount "$image" >/dev/null
[ "$certificates" -ge 100 ] || fail "the image's CA bundle holds $certificates certificates"

env=(EdgeHubConnectionString="$DEV_CONNECTION_STRING" EDGEFILTER_METRICS_ADDR="127.0.0.1:$metrics" RUST_LOG=info)
if [ "$arch" = amd64 ]; then
  # The hub by name, as IoT Edge names it, answered by a DNS server: the program's own glibc
  # (linked in) looks it up.
  dns=127.0.0.153
  python3 scripts/dns-answer.py "$dns" >"$work/dns.log" 2>&1 &
  pids+=($!)
  env+=(EDGEFILTER_MQTT_URL="mqtt://edgeHub:$port")
  args=()
  for e in "${env[@]}"; do args+=(-e "$e"); done
  podman run -d --name "$container" --network host --dns "$dns" "${args[@]}" "$image" >/dev/null
  pid=$(podman inspect --format '{{.State.Pid}}' "$container")
else
  # The image's files (the program, CA roots, nsswitch.conf, passwd), the program run by qemu-arm
  # with them as its root for every path it opens that the image has.
  rootfs=$work/rootfs
  cp -a "$(podman image mount "$image")" "$rootfs"
  podman image unmount "$image" >/dev/null
  file "$rootfs/usr/local/bin/edgefilter" | grep -q 'ELF 32-bit LSB executable, ARM, EABI5.*statically linked' \
    || fail "the image's program is not an armv7 ELF: $(file "$rootfs/usr/local/bin/edgefilter")"
  env+=(EDGEFILTER_MQTT_URL="mqtt://localhost:$port")
  env -i "${env[@]}" setpriv --reuid 10001 --regid 10001 --clear-groups \
    qemu-arm -L "$rootfs" "$rootfs/usr/local/bin/edgefilter" >"$work/module.log" 2>&1 &
  pid=$!
  pids+=($pid)
fi

# Connected: its twin request. The answer: TemperatureThreshold 25 (version 1).
wait_for "a twin request" 30 sh -c "! kill -0 $twin_get 2>/dev/null"
ids() { awk '/^Uid:/{u=$2} /^Gid:/{g=$2} END{print u ":" g}' "/proc/$pid/status"; }
[ "$(ids)" = 10001:10001 ] || fail "runs as uid:gid $(ids), not 10001:10001"

rid=$(sed -n 's/.*\$rid=\([^& ]*\).*/\1/p' "$work/twin-get")
[ -n "$rid" ] || fail "no \$rid in the twin request: $(cat "$work/twin-get")"
pub -t "\$iothub/twin/res/200/?\$rid=$rid" -m '{"desired":{"TemperatureThreshold":25,"$version":1},"reported":{}}'
wait_for "reported TemperatureThreshold 25" 10 grep -q '"TemperatureThreshold":25' "$work/reported"

send() { # send SEQ TEMPERATURE
  pub -t "$dev/inputs/input1/sequenceNumber=$1&%24.ct=application%2Fjson&%24.ce=utf-8" \
    -m "{\"machine\":{\"temperature\":$2,\"pressure\":1.5},\"ambient\":{\"temperature\":21,\"humidity\":25}}"
}
send 1 30
send 2 20
send 3 31
send 4 19
wait_for "two alerts" 10 sh -c "[ \$(grep -c MessageType=Alert $work/alerts) -ge 2 ]"

pub -t '$iothub/twin/PATCH/properties/desired/?$version=2' -m '{"TemperatureThreshold":35,"$version":2}'
wait_for "reported TemperatureThreshold 35" 10 grep -q '"TemperatureThreshold":35' "$work/reported"
send 5 30
send 6 40
wait_for "the 40° alert" 10 grep -q 'sequenceNumber=6' "$work/alerts"
sleep 0.5
seqs=$(grep -o 'sequenceNumber=[0-9]*' "$work/alerts" | cut -d= -f2 | tr '\n' ' ')
[ "$seqs" = "1 3 6 " ] || fail "alerts for sequence numbers $seqs, expected 1 3 6"
curl -sf "http://127.0.0.1:$metrics/metrics" | grep -q '^edgefilter_alerts_confirmed_total{.*} 3$' \
  || fail "/metrics does not count 3 confirmed alerts"

# SIGTERM, as `podman stop` / `docker stop` / IoT Edge send it.
t0=$(date +%s.%N)
if [ "$arch" = amd64 ]; then
  podman stop -t 10 "$container" >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
else
  kill -TERM "$pid"
  code=0
  wait "$pid" || code=$?
fi
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
awk -v t="$took" 'BEGIN { exit !(t < 5) }' || fail "SIGTERM took $took s"
[ "$arch" != amd64 ] || grep -q 'dns: answered' "$work/dns.log" || fail "edgeHub was not looked up by DNS"
echo "image-run $arch: ok: $platform, $certificates CA roots, connected, alerts 1 3 6 with MessageType=Alert, twin patch applied, uid 10001, SIGTERM -> exit 0 in $took s"
