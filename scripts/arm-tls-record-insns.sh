#!/usr/bin/env bash
# armv7 instructions rustls alone spends per TLS record (issue 21: how low TLS can go per
# message): an in-memory rustls pair, the client offering one suite with the module's ring
# provider, sealing N records of each size that the server opens (examples/tls_record_insns.rs).
# Each figure is a run of N records less a run of 0 (the handshake cancels), divided by N, counted
# with tools/arm-insn-count. `open` is the sealing-and-opening run less the sealing-only run;
# `cipher` is ring's AEAD alone sealing and opening the same record (what no record layer saves).
# Sizes: 4 B (a PUBACK), 250 B (a sensor message as an MQTT PUBLISH), 300 B (an alert).
#   scripts/arm-tls-record-insns.sh [N]      (default 2000)
#   SIZES="4 250 300" SUITES="TLS13_CHACHA20_POLY1305_SHA256 ..." to change the rows
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
sizes=${SIZES:-4 250 300}
suites=${SUITES:-TLS13_CHACHA20_POLY1305_SHA256 TLS13_AES_128_GCM_SHA256 \
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
count=tools/arm-insn-count/count
[ -x "$count" ] || tools/arm-insn-count/build >/dev/null
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example tls_record_insns
bin=${CARGO_TARGET_DIR:-target}/armv7-unknown-linux-gnueabihf/release/examples/tls_record_insns
insns() { "$count" "$bin" "$@" | tail -1 | cut -d' ' -f2; }
per() { echo $(( ($(insns "$1" "$2" "$n" "$3") - $(insns "$1" "$2" 0 "$3")) / n )); }
printf '%-45s %6s %7s %7s %10s %7s\n' suite bytes seal open seal+open cipher
for suite in $suites; do
  for size in $sizes; do
    both=$(per "$suite" "$size" both)
    seal=$(per "$suite" "$size" seal)
    printf '%-45s %6d %7d %7d %10d %7d\n' "$suite" "$size" "$seal" $(( both - seal )) "$both" \
      "$(per "$suite" "$size" aead)"
  done
done
