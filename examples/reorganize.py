#!/usr/bin/env python3
"""Tidy a law firm's case-file tree in place, the way a paralegal agent would.

Usage: python3 reorganize.py [ROOT]      (ROOT defaults to the current directory)

Every directory directly under ROOT is a case. For each case, in this order:

1. A "NAME (copy).EXT" whose bytes equal "NAME.EXT" beside it is deleted;
   one that differs is kept and reported.
2. Stray scans ("scan0001.txt", ...) anywhere in the case move to CASE/Unsorted/.
   Scans lying directly in ROOT go to the Unsorted/ of the one case their text
   names (e.g. "Smith v. Jones" for smith-v-jones), else to ROOT/Unsorted/.
3. A file whose name holds a recognizable date is renamed, in its own folder,
   to "YYYY-MM-DD description.EXT". Numeric dates are read month first (US).
4. CASE/INDEX.md lists the case's files; it is rewritten only when it changed.

Nothing is overwritten: an action whose destination exists is skipped and
reported. Hidden entries and symlinks are left alone. Standard library only;
the same tree always gives the same actions, and a second run does nothing.
"""
from __future__ import annotations

import datetime
import os
import re
import sys

UNSORTED = "Unsorted"
INDEX = "INDEX.md"

COPY_NAME = re.compile(r"^(?P<base>.+?)\s*\(copy(?: \d+)?\)(?P<ext>\.[^.\s]+)?$", re.IGNORECASE)
SCAN_NAME = re.compile(r"^scan\d+\.[a-z0-9]+$", re.IGNORECASE)

_MONTH = (
    r"(?P<mon>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|"
    r"aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
# Tried in this order; the first match that is a real calendar date wins.
DATE_PATTERNS = [
    re.compile(r"(?<!\d)(?P<y>(?:19|20)\d\d)[-_.](?P<m>\d{1,2})[-_.](?P<d>\d{1,2})(?!\d)"),
    re.compile(r"(?<!\d)(?P<m>\d{1,2})[-_.](?P<d>\d{1,2})[-_.](?P<y>(?:19|20)\d\d)(?!\d)"),
    re.compile(r"(?<!\d)(?P<y>(?:19|20)\d\d)(?P<m>\d\d)(?P<d>\d\d)(?!\d)"),
    re.compile(r"\b" + _MONTH + r"\s+(?P<d>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<y>(?:19|20)\d\d)(?!\d)", re.IGNORECASE),
    re.compile(r"(?<!\d)(?P<d>\d{1,2})\s+" + _MONTH + r",?\s+(?P<y>(?:19|20)\d\d)(?!\d)", re.IGNORECASE),
]
MONTHS = {name: i for i, name in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}


class Report:
    """Prints each action as it happens and counts them for the closing line."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, verb: str, text: str) -> None:
        self.counts[verb] = self.counts.get(verb, 0) + 1
        print(f"{verb:<7} {text}", flush=True)

    def summary(self, cases: int) -> str:
        c = self.counts.get
        return (f"reorganize: {cases} cases; {c('delete', 0)} duplicates deleted, "
                f"{c('move', 0)} scans moved, {c('rename', 0)} files renamed, "
                f"{c('index', 0)} indexes written, {c('keep', 0) + c('skip', 0)} left for review")


def entries(path: str) -> list[os.DirEntry]:
    """The visible entries of a directory, sorted by name so every run agrees."""
    with os.scandir(path) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def case_files(case_dir: str) -> list[str]:
    """Regular files of a case (symlinks not followed), relative to it, sorted."""
    found = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        for e in entries(os.path.join(case_dir, rel_dir)):
            rel = os.path.join(rel_dir, e.name)
            if e.is_dir(follow_symlinks=False):
                pending.append(rel)
            elif e.is_file(follow_symlinks=False):
                found.append(rel)
    return sorted(found)


def same_bytes(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 16), fb.read(1 << 16)
            if x != y:
                return False
            if not x:
                return True


def move(root: str, src: str, dst: str, verb: str, report: Report) -> None:
    """Renames file src to dst (both relative to root) unless dst exists."""
    if os.path.lexists(os.path.join(root, dst)):
        report("skip", f"{src} (would overwrite {dst})")
        return
    os.makedirs(os.path.dirname(os.path.join(root, dst)), exist_ok=True)
    os.rename(os.path.join(root, src), os.path.join(root, dst))
    same_folder = os.path.dirname(src) == os.path.dirname(dst)
    report(verb, f"{src} -> {os.path.basename(dst) if same_folder else dst}")


def delete_copies(root: str, case: str, report: Report) -> None:
    for rel in case_files(os.path.join(root, case)):
        m = COPY_NAME.match(os.path.basename(rel))
        if not m:
            continue
        path = os.path.join(root, case, rel)
        original_name = m["base"] + (m["ext"] or "")
        original = os.path.join(os.path.dirname(path), original_name)
        if not os.path.isfile(original) or os.path.islink(original):
            report("keep", f"{case}/{rel} (no original {original_name} beside it)")
        elif same_bytes(path, original):
            os.unlink(path)
            report("delete", f"{case}/{rel} (same bytes as {original_name})")
        else:
            report("keep", f"{case}/{rel} (differs from {original_name})")


def move_scans(root: str, case: str, report: Report) -> None:
    for rel in case_files(os.path.join(root, case)):
        name = os.path.basename(rel)
        if SCAN_NAME.match(name) and os.path.dirname(rel) != UNSORTED:
            move(root, f"{case}/{rel}", f"{case}/{UNSORTED}/{name}", "move", report)


def caption_pattern(case: str) -> re.Pattern[str]:
    """'smith-v-jones' matches 'Smith v. Jones', 'SMITH V JONES', ..."""
    words = [re.escape(w) for w in re.split(r"[-_\s]+", case) if w]
    return re.compile(r"\b" + r"[\W_]+".join(words) + r"\b", re.IGNORECASE)


def file_stray_scans(root: str, cases: list[str], report: Report) -> None:
    """Scans dropped directly in ROOT go to the one case whose caption they mention."""
    for e in entries(root):
        if not (e.is_file(follow_symlinks=False) and SCAN_NAME.match(e.name)):
            continue
        with open(e.path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)
        named = [c for c in cases if caption_pattern(c).search(text)]
        dest = f"{named[0]}/{UNSORTED}" if len(named) == 1 else UNSORTED
        move(root, e.name, f"{dest}/{e.name}", "move", report)


def find_date(stem: str) -> tuple[datetime.date, re.Match[str]] | None:
    for pattern in DATE_PATTERNS:
        for m in pattern.finditer(stem):
            parts = m.groupdict()
            month = MONTHS[parts["mon"][:3].lower()] if parts.get("mon") else int(parts["m"])
            try:
                return datetime.date(int(parts["y"]), month, int(parts["d"])), m
            except ValueError:
                continue
    return None


def dated_name(name: str) -> str | None:
    """'letter 03-15-2024.txt' -> '2024-03-15 letter.txt'; None when no date is found."""
    stem, ext = os.path.splitext(name)
    found = find_date(stem)
    if found is None:
        return None
    date, m = found
    rest = (stem[:m.start()] + " " + stem[m.end():]).replace("_", " ")
    description = re.sub(r"\s+", " ", rest).strip(" -_.,;")
    return f"{date.isoformat()} {description}{ext}" if description else f"{date.isoformat()}{ext}"


def rename_dated(root: str, case: str, report: Report) -> None:
    for rel in case_files(os.path.join(root, case)):
        folder, name = os.path.split(rel)
        new = dated_name(name)
        if new is None or new == name or name == INDEX:
            continue
        move(root, f"{case}/{rel}", f"{case}/{os.path.join(folder, new)}", "rename", report)


def render_index(root: str, case: str) -> tuple[str, int]:
    case_dir = os.path.join(root, case)
    by_folder: dict[str, list[str]] = {}
    for rel in case_files(case_dir):
        if rel != INDEX:
            by_folder.setdefault(os.path.dirname(rel), []).append(rel)
    count = sum(len(v) for v in by_folder.values())
    lines = [f"# {case}", "", f"{count} files. Written by reorganize.py; rewritten on its next run.", ""]
    for folder in sorted(by_folder, key=lambda f: (f != "", f)):
        lines += [f"## {folder or '(case folder)'}", ""]
        for rel in by_folder[folder]:
            size = os.path.getsize(os.path.join(case_dir, rel))
            lines.append(f"- {os.path.basename(rel)} ({size:,} bytes)")
        lines.append("")
    return "\n".join(lines), count


def write_index(root: str, case: str, report: Report) -> None:
    text, count = render_index(root, case)
    path = os.path.join(root, case, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    report("index", f"{case}/{INDEX} ({count} files)")


def main(argv: list[str]) -> int:
    root = os.path.abspath(argv[1] if len(argv) > 1 else ".")
    if not os.path.isdir(root):
        print(f"reorganize: not a directory: {root}", file=sys.stderr)
        return 2
    cases = [e.name for e in entries(root) if e.is_dir(follow_symlinks=False) and e.name != UNSORTED]
    report = Report()
    file_stray_scans(root, cases, report)
    for case in cases:
        delete_copies(root, case, report)
        move_scans(root, case, report)
        rename_dated(root, case, report)
        write_index(root, case, report)
    print(report.summary(len(cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
