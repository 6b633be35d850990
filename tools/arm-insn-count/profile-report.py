#!/usr/bin/env python3
"""The block profile of tools/arm-insn-count/profile, by function, per unit of work:
    profile-report.py N BINARY OUT [OLD_BINARY OLD_OUT]
Symbols come from arm-linux-gnueabihf-nm (Rust hashes dropped, so that two builds' names match)."""
import bisect
import collections
import re
import subprocess
import sys


def profile(binary, out):
    syms = []
    nm = subprocess.run(["arm-linux-gnueabihf-nm", "-n", "-C", binary], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in ("t", "T", "w", "W"):
            syms.append((int(parts[0], 16) & ~1, re.sub(r"::h[0-9a-f]{16}$", "", parts[2])))
    addrs = [a for a, _ in syms]
    total = collections.Counter()
    with open(out) as f:
        for line in f:
            vaddr, insns, execs = line.split()
            i = bisect.bisect_right(addrs, int(vaddr, 16)) - 1
            total[syms[i][1] if i >= 0 else "?"] += int(insns) * int(execs)
    return total


def main():
    n = float(sys.argv[1])
    new = profile(sys.argv[2], sys.argv[3])
    if len(sys.argv) < 6:
        print(f"total {sum(new.values()) / n:.1f}")
        for name, v in new.most_common(40):
            print(f"{v / n:9.1f}  {name[:120]}")
        return
    old = profile(sys.argv[4], sys.argv[5])
    print(f"total {sum(old.values()) / n:.1f} -> {sum(new.values()) / n:.1f}")
    names = sorted(set(old) | set(new), key=lambda k: new[k] - old[k], reverse=True)
    for name in names[:30] + ["..."] + names[-30:]:
        if name == "...":
            print("...")
            continue
        print(f"{(new[name] - old[name]) / n:+9.1f} {old[name] / n:9.1f} {new[name] / n:9.1f}  {name[:110]}")


main()
