"""A local tree as a commit target (a directory, or a mount such as gcsfuse's
when no bucket URL is named).

Step 4 keeps the old bytes of every changed file in the blob store (the old
inode itself, hard-linked, when the commit replaces it: ``journal.images``).
Step 6 is ``cowfs.converge``: every path made its new state with a temp
file, fsync and rename; directories created and removed, never renamed;
every touched directory fsynced (on a local disk one syncfs before the
renames and one after instead of an fsync per file). A staged file on the
live tree's filesystem is hard-linked instead of copied (straight to its
name when the path is new): the commit writes no byte of data twice. The
undo is the same convergence towards the old states, sparing what this
transaction did not write.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing, contextmanager

from cowfs import durable, livetree
from cowfs.changeset import Change, ChangeSet, Move, classify, path_key
from cowfs.converge import converge, matches, obstacles, remove_temps
from cowfs.entry import DIR, FILE, Entry
from cowfs.errors import RoscoeError
from cowfs.hashahead import HashedAhead
from cowfs.hashcache import HashCache
from journal.blobs import BlobStore
from journal.errors import BlobCorrupt, CommitFailed, Conflict, OwnerNeedsRoot, RootError
from journal.home import FULL
from journal.images import capture_old, images_shared, release_links, replaced
from journal.store import ChangeRow, TxRecord
from journal.targets.base import Holding, Progress, SameBytes, Seen, Target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.stagers import Stager



def owners_kept() -> bool:
    """Whether roscoe can give a path any owner (as root); otherwise only its own
    user and groups, and an undo restores owners where it can."""
    return os.geteuid() == 0


def owners_settable(tx: TxRecord, rows: list[ChangeRow]) -> None:
    """Without root, refuse a change set that gives a path an owner roscoe
    cannot set, before anything is written (it would land with another)."""
    if owners_kept():
        return
    uid, groups = os.geteuid(), {os.getegid(), *os.getgroups()}
    foreign = [f"{r.path} ({r.new.uid}:{r.new.gid})" for r in rows
               if r.new is not None and r.new.uid is not None and (r.new.uid != uid or r.new.gid not in groups)]
    if foreign:
        what = f"rollback of {tx.rolls_back} refused" if tx.rolls_back else f"transaction {tx.id} cannot be committed"
        raise OwnerNeedsRoot(what=what, paths=", ".join(foreign))


def made_by(entry: Entry, new: Entry | None) -> bool:
    """Whether a live entry is (or could be, half made) the one a change wrote:
    a file with its bytes, a symlink with its target, a directory."""
    return new is not None and entry.type == new.type and (
        entry.type == DIR or (entry.hash, entry.target) == (new.hash, new.target))


def undoing(root: str, written: list[ChangeRow], live: dict[str, Entry | None]) -> ChangeSet:
    """Every path of ``written`` whose ``live`` state is not yet its old one."""
    changes = []
    for r in written:
        status = classify(live[r.path], r.old)
        if status is not None:
            changes.append(Change(r.path, status, live[r.path], r.old))
    return ChangeSet(root, tuple(changes))


class LocalTree(Target):
    """A directory tree on this machine, written through dir fds, never
    following a symlink."""

    # -- commit -------------------------------------------------------------------

    @contextmanager
    def images(
        self, tx: TxRecord, stager: Stager | None, changes: ChangeSet, hashes: HashCache,
    ) -> Iterator[list[ChangeRow]]:
        blobs = self.ctx.blobs
        # Staged files an older roscoe linked into the blob store get their own
        # inode back first: the live tree must never share one with a blob.
        release_links(blobs, stager, self.ctx.home.linked_images(tx.id))
        self.ctx.faults.checkpoint("before-images")
        linked = sorted({c.old.hash or "" for c in changes.changes if replaced(c.old, c.new)})
        with images_shared(blobs, tx.id, tx.root, linked):
            try:
                rows = self._store_images(blobs, tx, changes, hashes)
            except Conflict as e:
                raise self.logged(e) from None
            except OSError as e:  # the blob store, in the state dir, found no room
                if e.errno in FULL:
                    raise self.ctx.home.full(e.errno, "nothing was written to the live tree") from e
                raise
            _staged_durable(stager, blobs)
            yield rows

    def _store_images(self, blobs: BlobStore, tx: TxRecord, changes: ChangeSet, hashes: HashCache) -> list[ChangeRow]:
        """Old bytes from the live tree, hard-linked or copied (checked against
        the hash the diff saw: a mismatch is a conflict), durable before this returns."""
        rows: list[ChangeRow] = []
        with closing(durable.DirFds(tx.root)) as dirs:
            for seq, c in enumerate(changes.changes):
                old_blob = None
                try:
                    if c.old is not None and c.old.type == FILE:
                        old_blob = capture_old(blobs, dirs, c.path, c.old, link=replaced(c.old, c.new), hashes=hashes)
                except (BlobCorrupt, FileNotFoundError, durable.NotADirectoryOnPath):
                    raise Conflict(what="commit refused", tx=tx.id, paths=[c.path]) from None
                rows.append(ChangeRow(seq, c.path, c.status, c.old, c.new, old_blob, None))
        blobs.sync()
        return rows

    def apply(
        self, tx: TxRecord, rows: list[ChangeRow], holding: Holding, *, known: dict[str, Any] | None,
        stager: Stager | None, progress: Progress | None,
    ) -> None:
        total, done = len(rows), 0

        def step() -> None:
            nonlocal done
            done += 1
            self.ctx.faults.checkpoint("apply")
            if progress is not None:
                progress(min(done, total), total)

        if stager is not None:
            converge(tx.root, [(r.path, r.new) for r in rows],
                     content=lambda path, entry: durable.Staged(stager.staged_path(path)),
                     tag=tx.id, owners=True, step=step, known=known)
            return
        blobs = self.ctx.blobs
        images = [r.new for r in sorted(rows, key=lambda r: path_key(r.path))
                  if r.new is not None and r.new.type == FILE and r.new.hash is not None]
        checked = HashedAhead([blobs.path(e.hash or "") for e in images], sum(e.size for e in images), workers=1)
        try:
            converge(tx.root, [(r.path, r.new) for r in rows],
                     content=lambda path, entry: blobs.verified(entry.hash or "", checked.digest),
                     tag=tx.id, owners=True, step=step, known=known)
        finally:
            checked.close()

    def failure(self, tx: TxRecord, error: BaseException, problem: str | None) -> RoscoeError:
        where = getattr(error, "filename", None) or "a path"
        reason = error.message if isinstance(error, RoscoeError) else (getattr(error, "strerror", None) or str(error))
        outcome = "the live tree was put back as it was" if problem is None else (
            f"the live tree could not be put back yet ({problem}): run `roscoe recover`")
        return CommitFailed(tx=tx.id, path=where, reason=reason, outcome=outcome)

    def undo(self, tx: TxRecord, rows: list[ChangeRow]) -> str | None:
        blobs = self.ctx.blobs
        wrote = {r.path: r.new for r in rows}
        try:
            remove_temps(tx.root, [r.path for r in rows], tx.id)
            converge(
                tx.root, [(r.path, r.old) for r in rows], content=lambda p, e: blobs.verified(e.hash or ""),
                tag=tx.id, owners=owners_kept(), step=lambda: self.ctx.faults.checkpoint("undo"),
                spare=lambda path, entry: not made_by(entry, wrote.get(path)),
            )
            remove_temps(tx.root, [r.path for r in rows], tx.id)
        except RoscoeError as e:
            return e.message
        except OSError as e:
            return f"{e.filename or 'a path'}: {e.strerror or e}"
        return None

    # -- rollback -----------------------------------------------------------------

    @contextmanager
    def seen(self, committed: TxRecord, written: list[ChangeRow]) -> Iterator[Seen]:
        """The live state of every path ``committed`` wrote, the files it wrote
        read through pins (``Pins``) that the rollback keeps as their images."""
        if not os.path.isdir(committed.root):
            raise RootError(root=committed.root, reason="no longer exists")
        blobs = self.ctx.blobs
        with closing(durable.DirFds(committed.root)) as dirs, closing(Pins(blobs, dirs)) as pins:
            hashes = HashCache(None, lambda: not durable.is_fuse(committed.root))
            live = pins.read(written, hashes)
            moved = [r.path for r in written if not matches(live[r.path], r.new, owners=True)]
            blocked = obstacles(committed.root, [(r.path, r.old) for r in written], dirs)
            for r in written:
                if r.old is not None and r.old.type == FILE and not blobs.has(r.old_blob or ""):
                    raise BlobCorrupt(digest=r.old_blob, problem="missing", store=blobs.root)
            self._reading = (dirs, pins, hashes)
            try:
                yield Seen(live, moved, blocked, undoing(committed.root, written, live))
            finally:
                del self._reading

    def peek(self, committed: TxRecord, written: list[ChangeRow]) -> Seen:
        with closing(durable.DirFds(committed.root)) as dirs:
            live = {r.path: livetree.entry(committed.root, r.path, None, dirs) for r in written}
        moved = [r.path for r in written if not matches(live[r.path], r.new, owners=True)]
        return Seen(live, moved, [], undoing(committed.root, written, live))

    @contextmanager
    def rollback_images(
        self, tx: TxRecord, written: list[ChangeRow], seen: Seen,
    ) -> Iterator[tuple[list[ChangeRow], str]]:
        """The rollback's rows; the files it replaces that the commit wrote are
        kept by their pins, the others copied or hard-linked."""
        blobs = self.ctx.blobs
        dirs, pins, hashes = self._reading
        changes = seen.changes
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
            yield rows, changes.diff_hash

    def same_bytes_back(self, rows: list[ChangeRow]) -> SameBytes | None:
        blobs = self.ctx.blobs
        images = {r.path: r.old_blob for r in rows}

        def same(move: Move) -> bool:
            digest = images.get(move.dest)
            return digest is not None and livetree.same_bytes(self.root, move.source, blobs.path(digest))

        return same

    # -- verify -------------------------------------------------------------------

    def verify(self, tx: TxRecord, wrote: dict[str, Entry | None]) -> list[tuple[str | None, str]]:
        if not os.path.isdir(self.root):
            return [(path, f"root {self.root} does not exist") for path in sorted(wrote, key=os.fsencode)]
        problems: list[tuple[str | None, str]] = []
        for path in sorted(wrote, key=os.fsencode):
            entry = wrote[path]
            live = livetree.entry(self.root, path)
            if not matches(live, entry, owners=True):
                want = "absent" if entry is None else entry.type
                have = "absent" if live is None else live.type
                problems.append((path, f"{self.root}: expected the {want} tx {tx.id} wrote, found {have} that differs"))
        return problems


def _staged_durable(stager: Stager | None, blobs: BlobStore) -> None:
    """The staged bytes go into the live tree by hard link, never copied and
    synced there: make them durable first. The images' syncfs did, when the
    blob store shares their filesystem; on FUSE each file is fsynced as it is
    placed."""
    if stager is None or not durable.batches_syncs(stager.tx_dir):
        return
    if os.stat(stager.tx_dir).st_dev != os.stat(blobs.root).st_dev:
        durable.sync_filesystem(stager.tx_dir)


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
