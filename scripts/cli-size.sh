#!/usr/bin/env bash
# What an argument parser costs in the armv7 binary: the module's command line written with clap
# (derive) and with lexopt (examples/cli_clap.rs, examples/cli_lexopt.rs), built as the release
# module is (fat LTO, stripped): the difference is what clap would add to the module.
set -euo pipefail
cd "$(dirname "$0")/.."
target=armv7-unknown-linux-gnueabihf
cargo build -q --release --target "$target" --example cli_clap --example cli_lexopt
clap=$(stat -c %s "target/$target/release/examples/cli_clap")
lexopt=$(stat -c %s "target/$target/release/examples/cli_lexopt")
echo "armv7 stripped: clap $clap bytes, lexopt $lexopt bytes; clap costs $(( (clap - lexopt) / 1024 )) KiB more"
[ -x dist/armv7/edgefilter ] && echo "the module (lexopt): $(stat -c %s dist/armv7/edgefilter) bytes (scripts/build-release.sh $target dist/armv7)"
