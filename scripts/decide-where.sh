#!/usr/bin/env bash
# Deciding on the I/O task or on a crossbeam worker thread, per message: system calls on x86
# (strace -f -c) and, on armv7 under qemu, instructions (arm-insn-count --atomic) and system calls
# (qemu-arm -strace). Each figure is a run of N batches less a run of none.
#   scripts/decide-where.sh [N]      (default 2000 batches)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
count=${ARM_INSN_COUNT:-tools/arm-insn-count/count}
cargo build -q --release --example decide_where
cargo build -q --release --target armv7-unknown-linux-gnueabihf --example decide_where
x86=target/release/examples/decide_where
arm=target/armv7-unknown-linux-gnueabihf/release/examples/decide_where
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
x86_calls() { strace -f -c -o "$work/s" "$x86" "$@" > /dev/null; awk '$NF == "total" {print $4}' "$work/s"; }
arm_insns() { "$count" --atomic "$arm" "$@" | tail -1 | awk '{print $2}'; }
arm_calls() { qemu-arm -L /usr/arm-linux-gnueabihf -strace "$arm" "$@" 2>&1 >/dev/null | grep -c '^[0-9]* '; }
printf '%-7s %6s %18s %18s %18s\n' mode batch x86-syscalls/msg arm-syscalls/msg arm-insns/msg
for batch in 1 100; do
  for mode in inline worker; do
    msgs=$((n * batch))
    x=$(( $(x86_calls "$mode" "$batch" "$n") - $(x86_calls "$mode" "$batch" 0) ))
    a=$(( $(arm_calls "$mode" "$batch" "$n") - $(arm_calls "$mode" "$batch" 0) ))
    i=$(( $(arm_insns "$mode" "$batch" "$n") - $(arm_insns "$mode" "$batch" 0) ))
    printf '%-7s %6d %18.3f %18.3f %18d\n' "$mode" "$batch" "$(echo "$x / $msgs" | bc -l)" "$(echo "$a / $msgs" | bc -l)" $((i / msgs))
  done
done
