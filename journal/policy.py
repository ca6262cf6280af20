"""Policy: what a commit may never do, and when it needs a person's approval.

Refusals (exit 4, nothing written) name every offending path and the rule it
broke: special files (fifos, sockets, devices), setuid or setgid bits, paths
matching a ``deny`` glob, the ``max_changes`` / ``max_bytes`` limits, with
``owners = "keep"`` a change of an existing path's owner, and with
``symlinks = "inside"`` a new or changed symlink whose target, read lexically
from the symlink's own directory (an absolute one as it is), leaves the root.
Approval reasons come from the ``[approval]`` rules; a commit with any
reason needs an approval bound to its exact diff hash.

Globs match root-relative ``/``-separated paths: ``*`` and ``?`` stay inside
one name, ``**`` spans any number of names (``**/`` also none), ``[abc]`` is a
class. A pattern ending in ``/**`` matches the directory itself and everything
below it. A pattern with no ``/`` matches a name at any depth (``*.exe``).
A change matches when its own path does; a move matches on both its old and
its new path, since a diff lists both.

Moves (``ChangeSet.moves``) change no limit: ``max_changes`` and
``when_changes_over`` count a move's two paths, ``max_bytes`` and
``when_bytes_over`` its bytes, which the commit writes. Only
``when_deleting`` tells a move from a deletion: an exact move (a symlink
with the same target; a file whose bytes, compared byte for byte by the
caller's ``same_bytes``, are the same at both paths) loses nothing and is not
a deletion. Without ``same_bytes`` a moved file counts as deleted.
"""

from __future__ import annotations

import os
import re
import stat
from collections import namedtuple
from collections.abc import Callable
from functools import lru_cache

from cowfs.changeset import ChangeSet, Move
from cowfs.entry import FILE, SYMLINK
from journal.config import ApprovalRules, Policy

SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID
DELETING = ("deleted", "type_changed")


class Violation(namedtuple("_Violation", "path rule")):
    """A path (None for a limit on the whole diff) and the rule it breaks."""

    __slots__ = ()
    path: str | None
    rule: str

    def to_json(self) -> dict[str, str | None]:
        return {"path": self.path, "rule": self.rule}

    def __str__(self) -> str:
        return f"{self.path} ({self.rule})" if self.path is not None else self.rule


def violating_paths(found: list[Violation]) -> list[str]:
    """The paths ``found`` names, each once, in order (a limit names none)."""
    return list(dict.fromkeys(v.path for v in found if v.path is not None))


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.endswith("/") and not pattern.endswith("**/"):
        pattern = pattern.rstrip("/") or "/"
    if "/" not in pattern:
        pattern = "**/" + pattern
    out = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(ch))
                i += 1
                continue
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"(?!/)[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, path: str) -> bool:
    """Whether the root-relative ``path`` matches ``pattern`` (see the module doc)."""
    return _compile(pattern).fullmatch(path) is not None


def refusals(changes: ChangeSet, policy: Policy) -> list[Violation]:
    """Everything about ``changes`` that can never be committed, each path once per rule."""
    found: list[Violation] = []
    for u in changes.unsupported:
        found.append(Violation(u.path, f"special file ({u.type}) can never be committed"))
    for c in changes.changes:
        if c.new is not None and c.new.mode & SPECIAL_BITS:
            bits = " and ".join(b for b, m in (("setuid", stat.S_ISUID), ("setgid", stat.S_ISGID)) if c.new.mode & m)
            found.append(Violation(c.path, f"{bits} bit is never committed (mode {c.new.mode:04o})"))
        for pattern in policy.deny:
            if glob_match(pattern, c.path):
                found.append(Violation(c.path, f"deny {pattern!r}"))
                break
        if policy.owners == "keep" and c.old is not None and c.new is not None and c.old.owner != c.new.owner:
            found.append(Violation(c.path, f'owners = "keep": owner {c.old.uid}:{c.old.gid} -> {c.new.uid}:{c.new.gid}'))
        if (policy.symlinks == "inside" and c.new is not None and c.new.type == SYMLINK
                and not (c.old is not None and c.old.type == SYMLINK and c.old.target == c.new.target)
                and not inside(changes.root, c.path, c.new.target or "")):
            found.append(Violation(c.path, f'symlinks = "inside": target {c.new.target!r} is outside the root'))
    count = len(changes.changes)
    if policy.max_changes is not None and count > policy.max_changes:
        found.append(Violation(None, f"{count} changed paths is over max_changes = {policy.max_changes}"))
    written = changes.summary["bytes_written"]
    if policy.max_bytes is not None and written > policy.max_bytes:
        found.append(Violation(None, f"{written} new bytes is over max_bytes = {policy.max_bytes}"))
    return found


def inside(root: str, path: str, target: str) -> bool:
    """Whether the symlink ``path`` (relative to ``root``) pointing at
    ``target`` stays inside ``root``, resolved lexically (``..`` against the
    names, no symlink followed) from the symlink's own directory."""
    resolved = os.path.normpath(os.path.join(root, os.path.dirname(path), target))
    base = os.path.normpath(root)
    return resolved == base or resolved.startswith(base.rstrip("/") + "/")


SameBytes = Callable[[Move], bool]


def exact_moves(changes: ChangeSet, same_bytes: SameBytes | None) -> set[str]:
    """The old paths of the moves that lose nothing: a symlink's target, or a
    file's bytes as ``same_bytes`` reads them, the same at both paths."""
    exact = set()
    for m in changes.moves():
        old, new = m.deleted.old, m.added.new
        if old.type == SYMLINK and old.target == new.target:
            exact.add(m.source)
        elif old.type == FILE and same_bytes is not None and same_bytes(m):
            exact.add(m.source)
    return exact


def approval_reasons(changes: ChangeSet, rules: ApprovalRules, same_bytes: SameBytes | None = None) -> list[str]:
    """Why ``changes`` needs an approval under ``rules``; empty when it does
    not. ``same_bytes(move)``: whether a moved file's bytes are the same at
    both paths (an exact move is no deletion; see the module doc)."""
    reasons: list[str] = []
    if rules.when_deleting:
        moved = exact_moves(changes, same_bytes) if any(c.status == "deleted" for c in changes.changes) else set()
        deleted = [c.path for c in changes.changes if c.status in DELETING and c.path not in moved]
        if deleted:
            reasons.append(f"deletes {_count(deleted, 'path')} (when_deleting)")
    count = len(changes.changes)
    if rules.when_changes_over is not None and count > rules.when_changes_over:
        reasons.append(f"{count} changed paths is over when_changes_over = {rules.when_changes_over}")
    written = changes.summary["bytes_written"]
    if rules.when_bytes_over is not None and written > rules.when_bytes_over:
        reasons.append(f"{written} new bytes is over when_bytes_over = {rules.when_bytes_over}")
    for pattern in rules.when_paths:
        hits = [c.path for c in changes.changes if glob_match(pattern, c.path)]
        if hits:
            reasons.append(f"changes {_count(hits, 'path')} matching {pattern!r} (when_paths)")
    return reasons


def _count(paths: list[str], noun: str) -> str:
    shown = ", ".join(paths[:5]) + (f", and {len(paths) - 5} more" if len(paths) > 5 else "")
    return f"{len(paths)} {noun}{'s' if len(paths) != 1 else ''}: {shown}"
