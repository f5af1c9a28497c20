#!/usr/bin/env python3
"""Every `@unchecked Sendable` in Sources/ and Tests/ says why it is safe: the doc comment
just above the declaration (its `///` lines, attributes allowed between) holds "Safe because".
Prints each one that does not and exits 1; `make check` runs it."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
bad = []
for path in sorted(list(root.glob("Sources/**/*.swift")) + list(root.glob("Tests/**/*.swift"))):
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "@unchecked Sendable" not in line or line.lstrip().startswith("//"):
            continue
        j, doc = i - 1, []
        while j >= 0 and (lines[j].lstrip().startswith("///") or lines[j].lstrip().startswith("@")):
            doc.append(lines[j])
            j -= 1
        if not any("Safe because" in d for d in doc):
            bad.append(f"{path.relative_to(root)}:{i + 1}: {line.strip()}")
for b in bad:
    print(b)
print(f"@unchecked Sendable without 'Safe because' in its doc comment: {len(bad)}")
sys.exit(1 if bad else 0)
