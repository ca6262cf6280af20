"""Unified text diffs of a change set, for people reviewing it (``tx diff --patch``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cowfs.changeset import Change, Move

MAX_TEXT = 4 << 20


@dataclass(frozen=True)
class FilePatch:
    """The patch of one change; of a move (``move``, ``change`` being its
    added half), no lines: its bytes are the same at both paths."""

    change: Change
    lines: tuple[str, ...]
    binary: bool
    move: Move | None = None


def as_text(data: bytes | None) -> list[str] | None:
    """Lines of ``data`` if it is UTF-8 text without NULs, else None."""
    if data is None:
        return []
    if len(data) >= MAX_TEXT or b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def patches(
    changes: tuple[Change, ...],
    old_bytes: Callable[[str], bytes | None],
    new_bytes: Callable[[str], bytes | None],
    moves: tuple[Move, ...] = (),
) -> Iterator[FilePatch]:
    """One patch per file-level change, one per move (where its new path
    sorts); directories, moves and changes of mode alone show no lines."""
    by_dest = {m.dest: m for m in moves}
    sources = {m.source for m in moves}
    for c in changes:
        if c.path in sources:
            continue
        if c.path in by_dest:
            yield FilePatch(c, (), False, by_dest[c.path])
            continue
        old_file = c.old is not None and c.old.type == "file"
        new_file = c.new is not None and c.new.type == "file"
        if not (old_file or new_file):
            yield FilePatch(c, (), False)
            continue
        if c.old is not None and c.new is not None and c.old.hash == c.new.hash:
            yield FilePatch(c, (), False)
            continue
        before = as_text(old_bytes(c.path) if old_file else None)
        after = as_text(new_bytes(c.path) if new_file else None)
        if before is None or after is None:
            yield FilePatch(c, (), True)
            continue
        diff = difflib.unified_diff(
            before, after,
            fromfile=f"a/{c.path}" if old_file else "/dev/null",
            tofile=f"b/{c.path}" if new_file else "/dev/null",
        )
        lines = tuple(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in diff)
        yield FilePatch(c, lines, False)
