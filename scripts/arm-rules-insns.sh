#!/usr/bin/env bash
# Instructions per message on armv7 for the decision on the 129-byte sensor message: without
# rules (the tutorial's rule, the scanner that finds machine.temperature), the same rule written
# in `Rules`, and four rules on four paths (examples/rules_insns.rs), counted with
# tools/arm-insn-count: a run of N messages minus a run of 0.
#   scripts/arm-rules-insns.sh [N]      (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
count=${ARM_INSN_COUNT:-tools/arm-insn-count/count}
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example rules_insns
bin=target/armv7-unknown-linux-gnueabihf/release/examples/rules_insns
printf '%-10s %12s\n' set insns/msg
for set in tutorial rules-1 rules-4; do
  zero=$("$count" "$bin" "$set" 0 | tail -1 | cut -d' ' -f2)
  full=$("$count" "$bin" "$set" "$n" | tail -1 | cut -d' ' -f2)
  printf '%-10s %12d\n' "$set" $(( (full - zero) / n ))
done
