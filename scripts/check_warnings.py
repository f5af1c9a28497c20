#!/usr/bin/env python3
"""Fails on any compiler warning in our own code (Sources/, Tests/) found in a build log.

`make test` tees `swift build --build-tests` into .build/build-tests.log and runs this on it.
Warnings from dependencies (under .build/checkouts) are not ours and are ignored. A build that
compiled nothing anew (an incremental build) repeats no warnings; CI builds from a fresh clone,
so every file is compiled and every warning seen.

usage: check_warnings.py LOG
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
pattern = re.compile(r"^(?P<file>/[^:]+):(?P<line>\d+):(?:\d+:)? warning: (?P<text>.*)$")
seen = set()
for line in pathlib.Path(sys.argv[1]).read_text(errors="replace").splitlines():
    m = pattern.match(line.strip())
    if not m:
        continue
    path = pathlib.Path(m["file"])
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        continue
    if rel.parts[0] not in ("Sources", "Tests"):
        continue
    seen.add(f"{rel}:{m['line']}: warning: {m['text']}")
for w in sorted(seen):
    print(w)
print(f"compiler warnings in Sources/ and Tests/: {len(seen)}")
sys.exit(1 if seen else 0)
