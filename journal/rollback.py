"""Rollback: put back exactly what a committed transaction changed.

A rollback is a transaction of its own (``rolls_back`` names the one it
undoes) whose new states are the old states the journal kept, committed
through the same protocol, so it is atomic, recoverable, and can itself be
rolled back. It refuses (exit 3) when the live tree no longer holds what the
transaction wrote, naming the paths and the later transactions that changed
them, unless forced.
"""

from __future__ import annotations

import os
from contextlib import closing

from cowfs import durable, livetree
from cowfs.changeset import Change, ChangeSet, classify
from cowfs.converge import matches, obstacles
from cowfs.entry import FILE, Entry
from cowfs.errors import Conflict, RoscoeError, RootError, TransactionState
from cowfs.hashcache import HashCache
from cowfs.hashahead import HashedAhead
from journal.blobs import BlobCorrupt, BlobStore
from journal.commit import apply_journaled, blob_store, capture_old, images_shared, logged, replaced
from journal.faults import checkpoint
from journal.rootlock import root_lock
from journal.store import ChangeRow, TxRecord


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


def rollback(ws: object, ref: str, *, force: bool = False, progress=None) -> TxRecord:  # type: ignore[no-untyped-def]
    """Roll back the committed transaction ``ref``; returns the new rollback transaction."""
    from journal.workspace import Workspace, new_record

    assert isinstance(ws, Workspace)
    target = ws.get(ref)
    if target.state != "committed":
        raise TransactionState(tx=target.id, state=target.state, action="rollback")
    if target.images_dropped:
        raise ImagesDropped(tx=target.id)
    if target.target:
        from journal.gcs_commit import rollback as rollback_in_bucket

        return rollback_in_bucket(ws, target, force=force)
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
                paths=", ".join(moved) + since,
            ))
        blocked = obstacles(target.root, [(r.path, r.old) for r in written], dirs)
        if blocked:
            raise logged(ws.journal, Conflict(
                what=f"rollback of {target.id} refused: it would have to touch paths it never wrote",
                tx=target.id, paths=", ".join(blocked),
            ))
        for r in written:
            if r.old is not None and r.old.type == FILE and not blobs.has(r.old_blob or ""):
                raise BlobCorrupt(digest=r.old_blob, problem="missing", store=blobs.root)
        # Journaled with its intent: a crash before that leaves no trace of it.
        tx = new_record(target.root, f"rollback of {target.id}", rolls_back=target.id)._replace(state="committing")
        checkpoint("before-images")
        linked = sorted({e.hash or "" for r in written if (e := live[r.path]) is not None and replaced(e, r.old)})
        with images_shared(blobs, tx.id, tx.root, linked):
            rows: list[ChangeRow] = []
            for r in written:
                current, wanted = live[r.path], r.old
                status = classify(current, wanted)
                if status is None:
                    continue
                old_blob = None
                if current is not None and current.type == FILE:
                    link = replaced(current, wanted)
                    old_blob = (pins.adopt(r.path, current) if link else None) or capture_old(
                        blobs, dirs, r.path, current, link=link, hashes=hashes,
                    )
                rows.append(ChangeRow(len(rows), r.path, status, current, wanted, old_blob, r.old_blob))
            blobs.sync()
            checkpoint("after-images")
            diff_hash = ChangeSet(tx.root, tuple(Change(r.path, r.status, r.old, r.new) for r in rows)).diff_hash
            apply_journaled(ws.journal, blobs, tx, rows, diff_hash, known=live, progress=progress, new=True)
    done = ws.journal.get_tx(tx.id)
    assert done is not None
    return done
