#!/usr/bin/env bash
# Installs what edgefilter's tests and builds need on a fresh Debian/Ubuntu machine (root or sudo):
# mosquitto and its clients (the real broker the tests talk to), the armv7 cross toolchain and qemu,
# and the Rust target. Safe to run again.
set -euo pipefail
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-arm >/dev/null 2>&1 || need+=(qemu-user)
command -v strace >/dev/null 2>&1 || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts a system mosquitto on port 1883; the tests start their own on free ports.
rustup target list --installed 2>/dev/null | grep -q armv7-unknown-linux-gnueabihf \
  || rustup target add armv7-unknown-linux-gnueabihf
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
