#!/usr/bin/env python3
"""Checks every relative link in the repository's Markdown files: the file it names exists and, for
`file#anchor`, the heading does (GitHub's slugs). External (http) links are not fetched: CI has no
general network. Exit 1 with one line per broken link."""
import pathlib, re, subprocess, sys

root = pathlib.Path(__file__).resolve().parent.parent
files = subprocess.run(["git", "ls-files", "*.md"], cwd=root, capture_output=True, text=True, check=True).stdout.split()

def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")

def anchors(path):
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m.group(1).replace("`", "")) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}

broken = 0
for name in files:
    path = root / name
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or root not in [dest, *dest.parents]:
            print(f"{name}: link to {target}: no such file in the repository")
            broken += 1
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            print(f"{name}: link to {target}: no heading #{anchor} in {dest.relative_to(root)}")
            broken += 1
sys.exit(1 if broken else 0)
