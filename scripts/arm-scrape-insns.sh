#!/usr/bin/env bash
# What one /metrics scrape costs on armv7 and how large it is (examples/scrape_insns.rs), the HTTP
# around it left out: the whole scrape (the text of a module that has run a while, with 100 new
# observations in each latency series since the previous scrape: a run of N scrapes less a run of
# the same traffic alone), the part of it under the data path's lock (swapping the recorders: N
# swaps less none), and the bytes of one scrape, summaries alone and with a histogram's `_bucket`
# lines (Prometheus' 12 default buckets) added to each. Counted with tools/arm-insn-count.
#   scripts/arm-scrape-insns.sh [N]      (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
count=${ARM_INSN_COUNT:-tools/arm-insn-count/count}
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example scrape_insns
bin=target/armv7-unknown-linux-gnueabihf/release/examples/scrape_insns
insns() { "$count" "$bin" "$@" | tail -1 | cut -d' ' -f2; }
scrape=$(( ($(insns scrape "$n") - $(insns record "$n")) / n ))
lock=$(( ($(insns lock "$n") - $(insns lock 0)) / n ))
run() { qemu-arm -L /usr/arm-linux-gnueabihf "$bin" "$@"; }
printf '%-34s %12s\n' measure value
printf '%-34s %12d\n' "insns/scrape" "$scrape"
printf '%-34s %12d\n' "insns/scrape under the data lock" "$lock"
printf '%-34s %12d\n' "bytes/scrape (summaries)" "$(run text 0 | wc -c)"
printf '%-34s %12d\n' "bytes/scrape (with _bucket lines)" "$(run histogram 0 | wc -c)"
