#!/usr/bin/env bash
# The whole test suite: installs what it needs, then formatting, lints, every test (including the
# armv7 release binary under qemu), /metrics through promtool and a Prometheus server, and the
# armv7 figures (binary size, instructions per message).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/build-release.sh armv7-unknown-linux-gnueabihf dist/armv7
EDGEFILTER_ARM_BINARY="$PWD/dist/armv7/edgefilter" cargo test --workspace
scripts/prometheus.sh "${CARGO_TARGET_DIR:-target}/debug/edgefilter"   # promtool check metrics, and a real Prometheus scraping
hadolint Dockerfile.amd64 Dockerfile.arm32v7
scripts/check-links.py
echo "== armv7 figures"
scripts/arm-replay-insns.sh 1000
