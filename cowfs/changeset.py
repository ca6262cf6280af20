"""The change set of a transaction: what its staged layer changes in the live tree.

``ChangeSet`` is built from the touched paths a stager reports, each compared
with the live tree (read without following symlinks). Its ``diff_hash`` is the
xxh3-128 of the canonical change list, which approvals bind to.

Moves are a view of that list (``ChangeSet.moves``): a deleted file or
symlink and an added one of the same type, size and hash are one move. The
list keeps both entries, so the commit and ``diff_hash`` never see a pairing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections import namedtuple

import xxhash

from cowfs import durable, livetree
from cowfs.entry import DIR, FILE, SUPPORTED, SYMLINK, Entry, read_entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.hashcache import HashCache
    from cowfs.livetree import Unreadable
    from cowfs.upper import Touch

ADDED, MODIFIED, DELETED = "added", "modified", "deleted"
TYPE_CHANGED, META_CHANGED = "type_changed", "meta_changed"
STATUSES = (ADDED, MODIFIED, DELETED, TYPE_CHANGED, META_CHANGED)
MOVED = "moved"


def path_key(rel: str) -> bytes:
    """Sort key: the path's bytes, so order is the same whatever the encoding."""
    return os.fsencode(rel)


class Change(namedtuple("_Change", "path status old new")):
    """One path whose staged state differs from the live tree."""

    __slots__ = ()
    path: str
    status: str
    old: Entry | None
    new: Entry | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "old": self.old.to_json() if self.old else None,
            "new": self.new.to_json() if self.new else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        return cls(
            d["path"], d["status"],
            Entry.from_json(d["old"]) if d.get("old") else None,
            Entry.from_json(d["new"]) if d.get("new") else None,
        )


class Move(namedtuple("_Move", "deleted added")):
    """A deleted path and an added one with the same type, size and hash: one
    move from ``deleted.path`` to ``added.path`` (both stay in the change list)."""

    __slots__ = ()
    deleted: Change
    added: Change

    @property
    def source(self) -> str:
        return self.deleted.path

    @property
    def dest(self) -> str:
        return self.added.path

    def to_json(self) -> dict[str, str]:
        return {"from": self.source, "to": self.dest}


def pair_moves(changes: Iterable[Change], sources: Mapping[str, str] | None = None) -> tuple[Move, ...]:
    """The moves among ``changes``, in the order of their new paths.

    An added file whose ``sources`` entry (``ChangeSet.sources``) names a
    deleted file of the same size and hash is moved from there: the staging
    layer says so, no guess needed. Among the rest, candidates are deleted
    and added files and symlinks (directories have no hash: never a move),
    grouped by (type, size, hash). Within a group the
    pairs are one-to-one and do not depend on input order: first a deleted
    and an added path with the same file name, in path order within each
    name; then the rest of the group, in path order. Modes, owners and mtimes
    may differ: a move that changes them is still a move.
    """
    changes = list(changes)
    moves: list[Move] = []
    if sources:
        deleted_at = {c.path: c for c in changes if c.status == DELETED}
        exact = set()
        for c in changes:
            d = deleted_at.get(sources.get(c.path, "")) if c.status == ADDED else None
            if d is not None and d.path not in exact and _same_bytes(d.old, c.new):
                moves.append(Move(d, c))
                exact |= {d.path, c.path}
        changes = [c for c in changes if c.path not in exact]
    groups: dict[tuple[str, int, str], tuple[list[Change], list[Change]]] = {}
    for c in changes:
        entry, side = (c.old, 0) if c.status == DELETED else (c.new, 1) if c.status == ADDED else (None, 0)
        if entry is None or entry.type not in (FILE, SYMLINK) or entry.hash is None:
            continue
        groups.setdefault((entry.type, entry.size, entry.hash), ([], []))[side].append(c)
    for deleted, added in groups.values():
        if not (deleted and added):
            continue
        deleted.sort(key=lambda c: path_key(c.path))
        added.sort(key=lambda c: path_key(c.path))
        by_name: dict[str, list[Change]] = {}
        for c in deleted:
            by_name.setdefault(_name(c.path), []).append(c)
        paired: set[str] = set()
        rest = []
        for c in added:
            same = by_name.get(_name(c.path))
            if same:
                source = same.pop(0)
                paired.add(source.path)
                moves.append(Move(source, c))
            else:
                rest.append(c)
        left = [c for c in deleted if c.path not in paired]
        moves.extend(Move(d, a) for d, a in zip(left, rest))
    return tuple(sorted(moves, key=lambda m: path_key(m.dest)))


def _name(path: str) -> str:
    return path.rpartition("/")[2]


def _same_bytes(old: Entry | None, new: Entry | None) -> bool:
    return (old is not None and new is not None and old.type == new.type == FILE and old.hash is not None
            and (old.size, old.hash) == (new.size, new.hash))


class Unsupported(namedtuple("_Unsupported", "path type")):
    """A fifo, socket or device node a run created: reported, never committed."""

    __slots__ = ()
    path: str
    type: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "type": self.type}


class ChangeSet:
    """Every change a transaction stages against the live tree, sorted by path
    bytes. Iterating it yields its changes (``for change in diff``), and its
    length is their number.

    ``sources``: for a changed file whose staged bytes were never copied
    (cowfs.stagers.MetacopyOverlay: a move, or a chmod or touch, of a live
    file), the live path (root-relative) whose bytes it has, as the staging
    layer says; a commit can land it from that object without its bytes.
    Not part of ``diff_hash`` or equality: the changes are what they are."""

    __slots__ = ("root", "changes", "unsupported", "sources")
    root: str
    changes: tuple[Change, ...]
    unsupported: tuple[Unsupported, ...]
    sources: dict[str, str]

    def __init__(
        self, root: str, changes: tuple[Change, ...], unsupported: tuple[Unsupported, ...] = (),
        sources: dict[str, str] | None = None,
    ) -> None:
        self.root, self.changes, self.unsupported = root, changes, unsupported
        self.sources = sources or {}

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChangeSet) and (self.root, self.changes, self.unsupported) == (
            other.root, other.changes, other.unsupported)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChangeSet(root={self.root!r}, changes={self.changes!r}, unsupported={self.unsupported!r})"

    def _replace(self, **fields: Any) -> ChangeSet:
        return ChangeSet(**{"root": self.root, "changes": self.changes, "unsupported": self.unsupported,
                            "sources": self.sources, **fields})

    @property
    def diff_hash(self) -> str:
        return self._hash(owners=True)

    def diff_hashes(self) -> tuple[str, ...]:
        """The diff_hash, and what it was before owners were part of it (a
        journal keeps the hashes its commits recorded then)."""
        return (self.diff_hash, self._hash(owners=False))

    def _hash(self, *, owners: bool) -> str:
        h = xxhash.xxh3_128()
        for c in self.changes:
            new = c.new
            fields = (
                path_key(c.path), c.status.encode(),
                (new.type if new else "").encode(), (new.hash or "" if new else "").encode(),
                (format(new.mode, "04o") if new else "").encode(),
            )
            if owners and new is not None and new.uid is not None:
                # "uid:gid" (the colon tells it from a path); none on a bucket, which keeps no owners.
                fields += (f"{new.uid}:{new.gid}".encode(),)
            h.update(b"\0".join(fields) + b"\0")
        for u in self.unsupported:
            h.update(path_key(u.path) + b"\0unsupported\0" + u.type.encode() + b"\0\0\0")
        return h.hexdigest()

    def moves(self) -> tuple[Move, ...]:
        """The moves of this change set (``pair_moves``): a view, not part of ``diff_hash``."""
        return pair_moves(self.changes, self.sources)

    @property
    def summary(self) -> dict[str, int]:
        """What the diff does: each status counted, a move once under
        ``moved`` (not under added and deleted); ``bytes_written``, the new
        bytes a commit writes (a move's included: it writes them again)."""
        counts = self.counts()
        moved = len(self.moves())
        counts[ADDED] -= moved
        counts[DELETED] -= moved
        written = 0
        for c in self.changes:
            if c.new is not None and c.status != META_CHANGED and c.new.type != DIR:
                written += c.new.size
        return {**counts, MOVED: moved, "bytes_written": written}

    def counts(self) -> dict[str, int]:
        """The entries of ``changes`` by status (a move is one added and one
        deleted here; the counts add up to the number of changed paths)."""
        out = dict.fromkeys(STATUSES, 0)
        for c in self.changes:
            out[c.status] += 1
        return out

    def without_owners(self) -> ChangeSet:
        """The change set as a target that keeps no owners (a bucket) sees it:
        no uid or gid, and an owner change alone is no change."""
        kept = []
        for c in self.changes:
            old = c.old.without_owner() if c.old is not None else None
            new = c.new.without_owner() if c.new is not None else None
            status = classify(old, new)
            if status is not None:
                kept.append(Change(c.path, status, old, new))
        return self._replace(changes=tuple(kept))

    def to_json(self, tx: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tx": tx,
            "root": self.root,
            "diff_hash": self.diff_hash,
            "changes": self._entries_json(),
            "summary": self.summary,
        }
        if self.unsupported:
            out["unsupported"] = [u.to_json() for u in self.unsupported]
        return out

    def _entries_json(self) -> list[dict[str, Any]]:
        """``changes`` as JSON; the two entries of a move name each other
        (``moved_to`` on the deleted one, ``moved_from`` on the added one)."""
        other: dict[str, tuple[str, str]] = {}
        for m in self.moves():
            other[m.source] = ("moved_to", m.dest)
            other[m.dest] = ("moved_from", m.source)
        out = []
        for c in self.changes:
            d = c.to_json()
            if c.path in other:
                key, path = other[c.path]
                d[key] = path
            out.append(d)
        return out


def classify(old: Entry | None, new: Entry | None) -> str | None:
    """The status of a path going from ``old`` to ``new`` (None: no change)."""
    if old is None and new is None:
        return None
    if old is None:
        return ADDED
    if new is None:
        return DELETED
    if old.type != new.type:
        return TYPE_CHANGED
    if not new.same_content(old):
        return MODIFIED
    if not new.same_meta(old):
        return META_CHANGED
    return None


def compare(
    root: str, touches: Iterable[Touch], hashes: HashCache | None = None, unreadable: Unreadable | None = None,
) -> ChangeSet:
    """Compare each touched path's staged state with the live tree (file hashes
    remembered in ``hashes`` when they can be; a live file the tree cannot
    read, as ``unreadable`` gives it: see ``livetree.entry``)."""
    dirs = durable.DirFds(root)
    try:
        return _compare(root, touches, hashes, dirs, unreadable)
    finally:
        dirs.close()


def _compare(
    root: str, touches: Iterable[Touch], hashes: HashCache | None, dirs: durable.DirFds,
    unreadable: Unreadable | None = None,
) -> ChangeSet:
    changes: dict[str, Change] = {}
    unsupported: list[Unsupported] = []
    sources: dict[str, str] = {}

    def delete_below(rel: str) -> None:
        for child, old in livetree.descendants(root, rel, hashes, unreadable):
            if old.type in SUPPORTED:
                changes[child] = Change(child, DELETED, old, None)
            else:
                unsupported.append(Unsupported(child, old.type))

    # One read of each live path per comparison: a move's source is both a
    # deleted path and the bytes of the metacopy file at its destination.
    seen: dict[str, Entry | None] = {}

    def live_entry(rel: str) -> Entry | None:
        if rel not in seen:
            seen[rel] = livetree.entry(root, rel, hashes, dirs, unreadable)
        return seen[rel]

    for t in touches:
        old = live_entry(t.rel)
        if t.staged is None:
            if old is None:
                continue
            if old.type not in SUPPORTED:
                unsupported.append(Unsupported(t.rel, old.type))
                continue
            changes[t.rel] = Change(t.rel, DELETED, old, None)
            if old.type == DIR:
                delete_below(t.rel)
            continue
        if t.lower is not None:
            new = _lower_entry(root, t, live_entry)
            if new.type == FILE:
                sources[t.rel] = t.lower
        else:
            new = read_entry(t.staged, t.st, digest_of=None if hashes is None else (
                lambda st, read, rel=t.rel: hashes.digest("staged", rel, st, read)))
        if new.type not in SUPPORTED:
            unsupported.append(Unsupported(t.rel, new.type))
            if old is not None and old.type == DIR:
                delete_below(t.rel)
            continue
        if old is None:
            changes[t.rel] = Change(t.rel, ADDED, None, new)
        elif old.type not in SUPPORTED:
            unsupported.append(Unsupported(t.rel, old.type))
        elif old.type != new.type:
            changes[t.rel] = Change(t.rel, TYPE_CHANGED, old, new)
            if old.type == DIR:
                delete_below(t.rel)
        elif not new.same_content(old):
            changes[t.rel] = Change(t.rel, MODIFIED, old, new)
        elif not new.same_meta(old):
            changes[t.rel] = Change(t.rel, META_CHANGED, old, new)
    ordered = tuple(sorted(changes.values(), key=lambda c: path_key(c.path)))
    odd = tuple(sorted({u.path: u for u in unsupported}.values(), key=lambda u: path_key(u.path)))
    return ChangeSet(root, ordered, odd, {p: s for p, s in sources.items() if p in changes})


def _lower_entry(root: str, t: Touch, live_entry: Callable[[str], Entry | None]) -> Entry:
    """The staged entry of a touch whose content is the live entry at
    ``t.lower`` (cowfs.upper.Touch): its bytes, hash and size are that
    entry's, read from the live tree (the upper file has no data); a
    metacopy file's mode, mtime and owner are its own."""
    base = live_entry(t.lower)
    if base is None:
        raise FileNotFoundError(f"{t.rel}: its bytes were those of {t.lower}, which is no longer in {root}")
    if t.st is None:
        return base
    st = t.st
    if base.type != FILE or not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(f"{t.rel}: its bytes were those of the file {t.lower}, which is now a {base.type}")
    return Entry(FILE, base.size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, base.hash, None, st.st_uid, st.st_gid)
