"""Rollback: put back exactly what a committed transaction changed.

A rollback is a transaction of its own (``rolls_back`` names the one it
undoes) whose new states are the old states the journal kept, committed
through the same protocol and held to the same policy and approval rules,
so it is atomic, recoverable, refused what a commit would be refused, and
can itself be rolled back. It refuses (exit 3) when the live tree no longer holds what the
transaction wrote, naming the paths and the later transactions that changed
them, unless forced.
"""

from __future__ import annotations

import os
from collections import namedtuple
from contextlib import closing

from cowfs import durable, livetree, policy
from cowfs.changeset import Change, ChangeSet, Move, classify
from cowfs.converge import matches, obstacles
from cowfs.entry import FILE, Entry
from cowfs.errors import Conflict, Refused, RoscoeError, RootError, TransactionState
from cowfs.hashcache import HashCache
from cowfs.hashahead import HashedAhead
from journal.approval import ApprovalNeeded, refuse_rejected, requested, tell_committed, valid_approval
from journal.blobs import BlobCorrupt, BlobStore
from journal.commit import Progress, apply_journaled, blob_store, capture_old, images_shared, logged, replaced
from journal.faults import checkpoint
from journal.rootlock import root_lock
from journal.store import ChangeRow, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from journal.workspace import Workspace


class ImagesDropped(RoscoeError):
    """transaction {tx} is too old to roll back: `roscoe gc` dropped its images"""


class Pins:
    """The files a rollback replaces that the commit wrote, each hard-linked
    into the blob store before it is hashed. The one read of their bytes
    then both checks them against what the commit wrote and vouches for the
    image kept of them, so that the rollback can itself be rolled back."""

    def __init__(self, blobs: BlobStore, dirs: durable.DirFds) -> None:
        self.blobs = blobs
        self.dirs = dirs
        self.pinned: dict[str, tuple[str, os.stat_result]] = {}

    def read(self, rows: list[ChangeRow], hashes: HashCache) -> dict[str, Entry | None]:
        """The live entry of every row's path. Where the commit wrote a file
        that the rollback replaces, it is read through a pin: all of them
        are pinned first, then hashed in order, by helper threads a few
        files ahead when there are many bytes (cowfs.hashahead)."""
        for row in rows:
            if row.new is not None and row.new.type == FILE and replaced(row.new, row.old):
                self._pin(row.path)
        hashed = HashedAhead([temp for temp, _ in self.pinned.values()],
                             sum(st.st_size for _, st in self.pinned.values()))
        try:
            return self._entries(rows, hashes, hashed)
        finally:
            hashed.close()

    def _entries(self, rows: list[ChangeRow], hashes: HashCache, hashed: HashedAhead) -> dict[str, Entry | None]:
        live: dict[str, Entry | None] = {}
        for row in rows:
            pin = self.pinned.get(row.path)
            if pin is not None:
                temp, pinned = pin
                digest = hashed.digest(temp)
                now = livetree.lstat(self.dirs.root, row.path, self.dirs)
                if now is not None and livetree.same_inode(now, pinned):
                    live[row.path] = livetree.file_entry(pinned, digest)
                    continue
                del self.pinned[row.path]
                durable.discard(temp)  # (swapped meanwhile: read it as it is now)
            live[row.path] = livetree.entry(self.dirs.root, row.path, hashes, self.dirs)
        return live

    def _pin(self, path: str) -> None:
        try:
            pin = self.blobs.pin(self.dirs.get(path.rpartition("/")[0]), durable.basename(path))
        except OSError as e:
            if e.errno not in durable.ABSENT:
                raise
            return  # (not there: the plain lookup says what is)
        if pin is not None:
            self.pinned[path] = pin

    def adopt(self, path: str, current: Entry) -> str | None:
        """Keep the pin of ``path`` as the image of ``current`` (its digest),
        or None when it has none."""
        pin = self.pinned.pop(path, None)
        if pin is None:
            return None
        assert current.hash is not None
        self.blobs.adopt(pin[0], current.hash)
        return current.hash

    def close(self) -> None:
        for temp, _ in self.pinned.values():
            durable.discard(temp)
        self.pinned.clear()


class NotCommitted(RoscoeError):
    """transaction {tx} is {state}, not committed: only a committed transaction can be rolled back{hint}"""


class AlreadyRolledBack(RoscoeError):
    """transaction {tx} was already rolled back by {by}; roll back {by} to apply {tx} again"""


class RollbackRefused(Refused):
    """the rollback of transaction {tx} is refused by policy: {violations}; nothing was written"""


class RollbackNeedsApproval(ApprovalNeeded):
    """the rollback of transaction {target} is transaction {tx}, which needs an approval before it can be committed ({reasons}); nothing was written.
    A person approves this exact diff with: roscoe tx approve {tx} --hash {diff_hash}{notified}; then `roscoe tx rollback {target}` (or `roscoe tx commit {tx}`) applies it"""


def rollback(ws: Workspace, ref: str, *, force: bool = False, progress: Progress | None = None) -> TxRecord:
    """Roll back the committed transaction ``ref``; returns the rollback transaction.

    A rollback is a commit like any other: its change set is held to the
    policy in force (recorded when the rollback began) and, where the rules
    ask for one, to an approval of its own diff_hash. One that needs an
    approval is journaled as an open transaction (``rolls_back`` names
    ``ref``) with a request; once approved, ``tx rollback ref`` again (or
    ``tx commit`` of it) applies it. ``force`` overrides a conflict, never policy."""
    from journal.rules import encode, in_force
    from journal.workspace import new_record

    target = rollable(ws, ref)
    pending = ws.journal.open_rollback(target.id)
    tx = pending or new_record(
        target.root, f"rollback of {target.id}", rolls_back=target.id, user=ws.journal.actor.user,
    )._replace(state="committing", target=target.target, rules=encode(in_force(ws.home.path, ws.settings.configs)))

    def gate(changes: ChangeSet) -> None:
        held_to_policy(ws, target, tx, changes, pending is not None, moved_back(ws, target))

    try:
        if target.target:
            from journal.gcs_commit import rollback as rollback_in_bucket

            done = rollback_in_bucket(ws, target, tx, gate, new=pending is None, force=force)
        else:
            done = _rollback(ws, target, tx, gate, new=pending is None, force=force, progress=progress)
    except ApprovalNeeded as needed:
        raise requested(ws.journal, needed) from None
    tell_committed(ws, done)
    return done


def rollable(ws: Workspace, ref: str) -> TxRecord:
    """The committed transaction ``ref`` names (or the one an open rollback
    named by ``ref`` rolls back), if it can be rolled back now."""
    target = ws.get(ref)
    if target.rolls_back and target.state == "open":
        target = ws.get(target.rolls_back)  # (the open rollback itself was named)
    if target.state != "committed":
        hint = {"open": "; `roscoe tx abort` discards its staged changes",
                "aborted": "; it never changed the live tree"}.get(target.state, "")
        raise NotCommitted(tx=target.id, state=target.state, hint=hint)
    if target.images_dropped:
        raise ImagesDropped(tx=target.id)
    by = ws.journal.rolled_back_by().get(target.id)
    if by is not None:
        raise AlreadyRolledBack(tx=target.id, by=by)
    return target


class DryRun(namedtuple("_DryRun", "target pending changes conflicts")):
    """What ``tx rollback --dry-run`` says: the change set a rollback of
    ``target`` would apply now, the paths where the live tree no longer
    holds what ``target`` wrote (a conflict without --force), and the open
    rollback waiting for approval, if any."""

    __slots__ = ()
    target: TxRecord
    pending: TxRecord | None
    changes: ChangeSet
    conflicts: list[str]

    def to_json(self) -> dict[str, object]:
        out = self.changes.to_json(self.pending.id if self.pending else None)  # type: ignore[arg-type]
        out["rolls_back"] = self.target.id
        out["conflicts"] = self.conflicts
        return out


def dry_run(ws: Workspace, ref: str) -> DryRun:
    """The rollback of ``ref`` as it would be now; nothing is staged or written."""
    target = rollable(ws, ref)
    changes = preview(ws, target)
    if target.target:
        conflicts: list[str] = []
        from journal.gcs_commit import rollback_conflicts

        conflicts = rollback_conflicts(ws, target)
    else:
        written = ws.journal.changes(target.id)
        with closing(durable.DirFds(target.root)) as dirs:
            conflicts = [r.path for r in written
                         if not matches(livetree.entry(target.root, r.path, None, dirs), r.new, owners=True)]
    return DryRun(target, ws.journal.open_rollback(target.id), changes, conflicts)


def held_to_policy(
    ws: Workspace, target: TxRecord, tx: TxRecord, changes: ChangeSet, journaled: bool,
    same_bytes: policy.SameBytes | None = None,
) -> None:
    """Step 2 for a rollback: refuse what policy forbids (exit 4, logged on the
    rolled-back transaction); where an approval is needed and ``tx`` has no
    valid one, journal ``tx`` as open (unless it is already) and ask for it."""
    if journaled:  # (a rollback rejected while it waited for its approval)
        refuse_rejected(ws.journal, tx, changes.diff_hash)
    config = ws.rules(tx)
    found = policy.refusals(changes, config.policy)
    if found:
        ws.journal.log_event(target.id, "refuse", {
            "reason": "policy", "rollback": True, "diff_hash": changes.diff_hash,
            "violations": [v.to_json() for v in found]})
        raise RollbackRefused(tx=target.id, violations="; ".join(map(str, found)), paths=policy.violating_paths(found))
    reasons = policy.approval_reasons(changes, config.approval, same_bytes)
    if not reasons or (journaled and valid_approval(ws.journal, tx.id, changes.diff_hash) is not None):
        return
    if not journaled:
        ws.journal.insert_tx(tx._replace(state="open"))
    ws.journal.log_event(tx.id, "refuse", {"reason": "approval needed", "diff_hash": changes.diff_hash,
                                           "reasons": reasons})
    needed = RollbackNeedsApproval(target=target.id, tx=tx.id, reasons="; ".join(reasons),
                                   diff_hash=changes.diff_hash, notified="")
    needed.pending = (tx, changes, reasons, config)
    raise needed


def moved_back(ws: Workspace, target: TxRecord) -> policy.SameBytes | None:
    """For ``when_deleting``: whether a move a rollback of ``target`` makes
    puts back exactly the bytes it removes (the live file at the move's old
    path against the image it restores at the new one). None on a bucket
    target, whose images are in the bucket: its moves count as deletions."""
    if target.target:
        return None
    blobs = blob_store(ws.home.path)
    images = {r.path: r.old_blob for r in ws.journal.changes(target.id)}

    def same(move: Move) -> bool:
        digest = images.get(move.dest)
        return digest is not None and livetree.same_bytes(target.root, move.source, blobs.path(digest))

    return same


def preview(ws: Workspace, target: TxRecord) -> ChangeSet:
    """The change set a rollback of ``target`` would apply to the live tree now."""
    if target.target:
        from journal.gcs_commit import preview as preview_in_bucket

        return preview_in_bucket(ws, target)
    written = ws.journal.changes(target.id)
    with closing(durable.DirFds(target.root)) as dirs:
        live = {r.path: livetree.entry(target.root, r.path, None, dirs) for r in written}
    return undoing(target.root, written, live)


def undoing(root: str, written: list[ChangeRow], live: dict[str, Entry | None]) -> ChangeSet:
    """Every path of ``written`` whose ``live`` state is not yet its old one."""
    changes = []
    for r in written:
        status = classify(live[r.path], r.old)
        if status is not None:
            changes.append(Change(r.path, status, live[r.path], r.old))
    return ChangeSet(root, tuple(changes))


def _rollback(
    ws: Workspace, target: TxRecord, tx: TxRecord, gate: Callable[[ChangeSet], None], *, new: bool, force: bool,
    progress: Progress | None,
) -> TxRecord:
    if not os.path.isdir(target.root):
        raise RootError(root=target.root, reason="no longer exists")
    blobs = blob_store(ws.home.path)
    written = ws.journal.changes(target.id)
    with root_lock(ws.home.path, target.root), closing(durable.DirFds(target.root)) as dirs, \
            closing(Pins(blobs, dirs)) as pins:
        hashes = HashCache(None, lambda: not durable.is_fuse(target.root))
        live = pins.read(written, hashes)
        moved = [r.path for r in written if not matches(live[r.path], r.new, owners=True)]
        if moved and not force:
            later = ws.journal.later_commits_touching(target, moved)
            since = f" (changed since by {', '.join(later)})" if later else ""
            raise logged(ws.journal, Conflict(
                what=f"rollback of {target.id} refused (--force overrides)", tx=target.id,
                paths=moved, since=since,
            ))
        blocked = obstacles(target.root, [(r.path, r.old) for r in written], dirs)
        if blocked:
            raise logged(ws.journal, Conflict(
                what=f"rollback of {target.id} refused: it would have to touch paths it never wrote",
                tx=target.id, paths=blocked,
            ))
        for r in written:
            if r.old is not None and r.old.type == FILE and not blobs.has(r.old_blob or ""):
                raise BlobCorrupt(digest=r.old_blob, problem="missing", store=blobs.root)
        changes = undoing(target.root, written, live)
        gate(changes)
        # A new rollback is journaled with its intent: a crash before that leaves no trace of it.
        checkpoint("before-images")
        linked = sorted({e.hash or "" for c in changes.changes if (e := c.old) is not None and replaced(e, c.new)})
        with images_shared(blobs, tx.id, tx.root, linked):
            rows: list[ChangeRow] = []
            blob_of = {r.path: r.old_blob for r in written}
            for c in changes.changes:
                current, wanted = c.old, c.new
                old_blob = None
                if current is not None and current.type == FILE:
                    link = replaced(current, wanted)
                    old_blob = (pins.adopt(c.path, current) if link else None) or capture_old(
                        blobs, dirs, c.path, current, link=link, hashes=hashes,
                    )
                rows.append(ChangeRow(len(rows), c.path, c.status, current, wanted, old_blob, blob_of[c.path]))
            blobs.sync()
            checkpoint("after-images")
            apply_journaled(ws.journal, blobs, tx, rows, changes.diff_hash, known=live, progress=progress, new=new)
    done = ws.journal.get_tx(tx.id)
    assert done is not None
    return done
