#!/usr/bin/python3
"""Checks that the commands the docs show still exist.

For every fenced code block in README.md, bench/README.md and docs/*.md whose language is sh,
bash, shell or console, each command line (a leading `$ ` stripped; in console blocks only `$ `
lines count; backslash continuations joined; comments skipped) whose program is one of the executables
(ewall, ewall-embed, rebuild-faiss-index, ewall-serve, also written as .build/release/NAME) or
`make` is checked:

- make: every target named exists in the Makefile;
- an executable: each (sub)command named exists, and every --long-option used appears in that
  (sub)command's `--help` output (run as `BIN [subcommand...] --help` from --bin DIR).

Prints every stale line (file:line, the command, what is wrong), then
"docs: N commands checked, M stale". Exit status: 0 all pass; 1 some are stale; 2 the check
could not run (a binary missing from --bin, no Makefile).

    python3 docs/check_docs.py                      # binaries from .build/release
    python3 docs/check_docs.py --bin .build/debug
"""
import argparse
import glob
import os
import re
import shlex
import subprocess
import sys

EXECUTABLES = {"ewall", "ewall-embed", "rebuild-faiss-index", "ewall-serve"}
LANGUAGES = {"sh", "bash", "shell", "console"}
PREFIXES = {"sudo", "env", "time", "nohup", "exec"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class SetupError(Exception):
    pass


def doc_files(root):
    files = [os.path.join(root, "README.md"), os.path.join(root, "bench", "README.md")]
    files += sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    return [f for f in files if os.path.isfile(f)]


def command_lines(path):
    """(line number, command text) for every command line of the shell blocks in `path`."""
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, language = m.group(2), m.group(3).lower()
        i += 1
        block = []
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                break
            block.append((i + 1, lines[i]))
            i += 1
        i += 1  # the closing fence
        if language not in LANGUAGES:
            continue
        pending, start = None, None
        for number, text in block:
            if pending is None:
                t = text.strip()
                if language == "console":
                    if not t.startswith("$ "):
                        continue
                    t = t[2:]
                elif t.startswith("$ "):
                    t = t[2:]
                if not t or t.startswith("#"):
                    continue
                pending, start = t, number
            else:
                pending += " " + text.strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            out.append((start, pending))
            pending = None
        if pending is not None:
            out.append((start, pending))
    return out


def tokens(text):
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def segments(text):
    """The simple commands of a line: token lists split at ;, &&, ||, |, &."""
    try:
        toks = tokens(text)
    except ValueError as e:
        return None, str(e)
    segs, cur = [], []
    for t in toks:
        if t in SEPARATORS or set(t) <= set(";&|()"):
            if cur:
                segs.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        segs.append(cur)
    return segs, None


def program(seg):
    """(program name, its arguments) or (None, None) when the segment is not one we check."""
    i = 0
    while i < len(seg) and (ASSIGNMENT.match(seg[i]) or seg[i] in PREFIXES):
        i += 1
    if i >= len(seg):
        return None, None
    name = os.path.basename(seg[i])
    if name in EXECUTABLES or name == "make":
        return name, seg[i + 1:]
    return None, None


def make_targets(makefile):
    if not os.path.isfile(makefile):
        raise SetupError(f"no Makefile at {makefile}")
    targets = set()
    rule = re.compile(r"^([A-Za-z0-9_./$()%-][^:=#]*?)\s*::?(?![=])")
    with open(makefile, encoding="utf-8") as f:
        for line in f:
            if line.startswith(("\t", "#", " ")):
                continue
            m = rule.match(line)
            if not m:
                continue
            for name in m.group(1).split():
                if name.startswith(".PHONY"):
                    continue
                targets.add(name)
            if line.startswith(".PHONY:"):
                targets.update(line.split(":", 1)[1].split())
    return targets


class Helper:
    """Runs `BIN [sub...] --help` once per command path and parses what it lists."""

    def __init__(self, bin_dir):
        self.bin_dir = bin_dir
        self.cache = {}

    def help(self, name, path):
        key = (name, tuple(path))
        if key not in self.cache:
            exe = os.path.join(self.bin_dir, name)
            if not os.access(exe, os.X_OK):
                raise SetupError(f"{exe} not found or not executable: build first, or give --bin DIR")
            try:
                r = subprocess.run([exe, *path, "--help"], capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                raise SetupError(f"{exe} {' '.join(path)} --help did not finish in 60 s")
            text = r.stdout + r.stderr
            self.cache[key] = (r.returncode, text, self.options(text), self.subcommands(text))
        return self.cache[key]

    @staticmethod
    def options(text):
        names = set()
        for line in text.split("\n"):
            if not re.match(r"^ {2,4}-", line):
                continue
            head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            for m in re.finditer(r"--(\[no-\])?([A-Za-z0-9][A-Za-z0-9-]*)", head):
                names.add("--" + m.group(2))
                if m.group(1):
                    names.add("--no-" + m.group(2))
        names.add("--help")
        return names

    @staticmethod
    def subcommands(text):
        subs, inside = set(), False
        for line in text.split("\n"):
            if re.match(r"^SUBCOMMANDS:", line):
                inside = True
                continue
            if inside:
                if not line.strip():
                    continue
                if not line.startswith(" "):
                    break
                m = re.match(r"^\s{2,4}([a-z][a-z0-9-]*)\b", line)
                if m:
                    subs.add(m.group(1))
        return subs


def check(name, args, makefile_targets, helper):
    """What is wrong with one command, as a list of strings (empty: it passes)."""
    problems = []
    if name == "make":
        for a in args:
            if a.startswith("-") or "=" in a:
                continue
            if a not in makefile_targets:
                problems.append(f"no make target '{a}' in the Makefile")
        return problems
    path = []
    rc, text, options, subs = helper.help(name, path)
    positional_seen = False
    for a in args:
        if a == "--":
            break
        if a.startswith("--"):
            opt = a.split("=", 1)[0]
            if opt not in options:
                where = " ".join([name, *path])
                problems.append(f"{opt} is not an option of `{where}` (not in its --help)")
            continue
        if a.startswith("-"):
            continue
        if subs and not positional_seen:
            if a in subs:
                path.append(a)
                rc, text, options, subs = helper.help(name, path)
                continue
            where = " ".join([name, *path])
            problems.append(f"`{a}` is not a subcommand of `{where}` (it has: {', '.join(sorted(subs))})")
            return problems
        positional_seen = True
    if rc != 0 and not problems:
        problems.append(f"`{' '.join([name, *path])} --help` exited {rc}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=".build/release", help="folder of the built executables (default .build/release)")
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the repository (default: this script's parent folder)")
    args = ap.parse_args()
    root = args.root
    bin_dir = args.bin if os.path.isabs(args.bin) else os.path.join(root, args.bin)
    checked, stale = 0, 0
    try:
        targets = make_targets(os.path.join(root, "Makefile"))
        helper = Helper(bin_dir)
        for path in doc_files(root):
            rel = os.path.relpath(path, root)
            for number, text in command_lines(path):
                segs, error = segments(text)
                if segs is None:
                    checked += 1
                    stale += 1
                    print(f"{rel}:{number}: {text}\n    cannot be parsed: {error}")
                    continue
                for seg in segs:
                    name, rest = program(seg)
                    if name is None:
                        continue
                    checked += 1
                    problems = check(name, rest, targets, helper)
                    if problems:
                        stale += 1
                        print(f"{rel}:{number}: {text}")
                        for p in problems:
                            print(f"    {p}")
    except SetupError as e:
        print(f"docs: cannot check: {e}", file=sys.stderr)
        return 2
    print(f"docs: {checked} commands checked, {stale} stale")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
