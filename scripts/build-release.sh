#!/usr/bin/env bash
# The release build that CI runs and the Dockerfiles' build stage runs, byte for byte:
#   scripts/build-release.sh TARGET OUTDIR
# e.g. armv7-unknown-linux-gnueabihf (32-bit ARM gateways) or x86_64-unknown-linux-gnu.
# Linking for armv7 uses Debian's cross gcc (.cargo/config.toml; scripts/setup.sh build installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: build-release.sh TARGET OUTDIR}
out=${2:?usage: build-release.sh TARGET OUTDIR}
cargo build --release --locked --target "$target" --bin edgefilter
mkdir -p "$out"
cp "target/$target/release/edgefilter" "$out/edgefilter"
echo "$out/edgefilter: $(stat -c %s "$out/edgefilter") bytes"
