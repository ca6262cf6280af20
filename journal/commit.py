"""The commit protocol: a transaction's change set lands on the live tree all
at once or not at all.

1. lock the root (one committer per root);
2. policy (``journal.approval``): refuse what can never be committed
   (special files, setuid bits, denied paths, limits) and what needs an
   approval bound to this diff hash that it does not have (exit 4);
3. conflict check: every changed live path still matches the base recorded
   when the last run ended (exit 3, nothing written);
4. images: the old bytes of every changed file (read once, and checked
   against its base hash) go to the blob store, fsynced: the old inode
   itself, hard-linked, when the commit replaces or removes it and it has no
   other link (listed first, and unshared again if it is still live when the
   commit ends, see ``images_shared``), else a copy. The new bytes need no
   image: all-old recovery and rollback never read them, and the staging
   layer keeps them until the commit record is written. The same sync makes
   them durable, before any of them is linked into the live tree;
5. intent: every change with its before and after state, journaled in one
   SQLite transaction with synchronous=FULL; the transaction is `committing`;
6. apply: ``cowfs.converge`` makes every path its new state (temp file,
   fsync, rename; directories created and removed, never renamed; fsync of
   every touched directory; on a local disk one syncfs before the renames
   and one after instead of an fsync per file). A staged file on the live
   tree's filesystem is hard-linked instead of copied (straight to its name
   when the path is new): the commit writes no byte of data twice;
7. the commit record: one row update to `committed`. That is the commit point.

A crash before step 7 is undone by ``journal.recovery`` (all-old, always);
a failure in step 6 is undone on the spot. Rollback (``journal.rollback``)
reuses steps 4-7 with a new transaction whose new states are the old ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cowfs import durable
from cowfs.changeset import ChangeSet, path_key
from cowfs.converge import converge, remove_temps
from cowfs.entry import DIR, FILE, Entry
from cowfs.errors import LiveUnreadable, RoscoeError
from cowfs.hashahead import HashedAhead
from cowfs.stagers import Stager
from journal.approval import enforce, requested, tell_committed
from journal.blobs import BlobStore
from journal.errors import ApprovalNeeded, BlobCorrupt, CommitFailed, Conflict, Refused
from journal.faults import checkpoint
from journal.home import FULL
from journal.rootlock import root_lock
from journal.store import ChangeRow, Journal, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowfs.hashcache import HashCache
    from journal.workspace import Workspace

Progress = Callable[[int, int], None]


def blob_store(home: str) -> BlobStore:
    path = os.path.join(home, "blobs")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return BlobStore(path, batch=durable.batches_syncs(path))


def owners_kept() -> bool:
    """Whether roscoe can give a path any owner (as root); otherwise only its own
    user and groups, and an undo restores owners where it can."""
    return os.geteuid() == 0


class OwnerNeedsRoot(Refused):
    """{what}: {paths} would get an owner other than roscoe's own user and groups, which only root can give; nothing was written"""


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


def capture_old(
    blobs: BlobStore, dirs: durable.DirFds, path: str, old: Entry, *, link: bool = False,
    hashes: HashCache | None = None,
) -> str:
    """Put the live file's bytes (``path``, under the root of ``dirs``) into
    the blob store, checking they still hash to what the diff saw; a mismatch
    means the live file changed: a conflict. With ``link`` (the commit
    replaces or removes that file, inside ``images_shared``), its inode is
    hard-linked instead of copied when it can be; then, if ``hashes`` vouches
    for the file as it is now, the linked inode is checked by identity
    instead of by reading its bytes again. Nothing to do when the store
    already has those bytes."""
    assert old.hash is not None
    # (A blob a dead commit linked and never unshared gets its own inode first.)
    if blobs.unshare(old.hash):
        return old.hash
    fd = dirs.get(path.rpartition("/")[0])
    name = durable.basename(path)
    if link:
        st = os.lstat(name, dir_fd=fd)
        known = st if hashes is not None and hashes.vouches(path, st, old.hash) else None
        if blobs.put_linked(fd, name, old.hash, known=known):
            return old.hash
    blobs.put_stream(durable.read_chunks(fd, name), old.hash)
    return old.hash


def replaced(old: Entry | None, new: Entry | None) -> bool:
    """Whether a change leaves no trace of the old file's inode in the live tree
    (so the blob store may have it): it is removed, or gets other bytes."""
    return old is not None and old.type == FILE and (new is None or new.type != FILE or new.hash != old.hash)


@contextmanager
def images_shared(blobs: BlobStore, tx_id: str, root: str, digests: list[str]) -> Iterator[None]:
    """Around capturing old images by hard link and applying the change: list
    ``digests`` durably first, and once the commit is done, failed or undone,
    give each blob an inode of its own again (a file the commit did not
    replace still shares it). A crash in between leaves the list to
    ``recovery``."""
    if not digests:
        yield
        return
    marker = blobs.share_marker(tx_id)
    durable.save_new(marker, iter([json.dumps({"root": root, "digests": digests}).encode()]), mode=0o600)
    try:
        yield
    finally:
        unshare_listed(blobs, marker)


def unshare_listed(blobs: BlobStore, marker: str) -> None:
    with open(marker, encoding="utf-8") as f:
        listed = json.load(f)
    for digest in listed["digests"]:
        blobs.unshare(digest)
    os.unlink(marker)


Content = Callable[[str, Entry], "Iterator[bytes] | str"]


def apply_journaled(
    journal: Journal, blobs: BlobStore, tx: TxRecord, rows: list[ChangeRow], diff_hash: str, *,
    known: dict[str, Entry | None] | None, progress: Progress | None = None, content: Content | None = None,
    new: bool = False,
) -> None:
    """Steps 5-7 for ``rows``, whose old images are already in ``blobs``.
    ``content(path, entry)`` gives a new file's bytes (by default its blob,
    read and checked). With ``new``, ``tx`` (a rollback) is journaled together
    with its intent."""

    images = [] if content is not None else [
        r.new for r in sorted(rows, key=lambda r: path_key(r.path))
        if r.new is not None and r.new.type == FILE and r.new.hash is not None]
    checked = HashedAhead([blobs.path(e.hash or "") for e in images], sum(e.size for e in images), workers=1)

    def from_blobs(path: str, entry: Entry) -> str:
        return blobs.verified(entry.hash or "", checked.digest)

    try:
        _apply(journal, blobs, tx, rows, diff_hash, known=known, progress=progress, content=content or from_blobs,
               new=new)
    finally:
        checked.close()


def _apply(
    journal: Journal, blobs: BlobStore, tx: TxRecord, rows: list[ChangeRow], diff_hash: str, *,
    known: dict[str, Entry | None] | None, progress: Progress | None, content: Content, new: bool,
) -> None:
    owners_settable(tx, rows)
    journal.record_intent(tx.id, rows, diff_hash, new=tx if new else None)
    checkpoint("after-intent")
    total = len(rows)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        checkpoint("apply")
        if progress is not None:
            progress(min(done, total), total)

    try:
        converge(
            tx.root, [(r.path, r.new) for r in rows], content=content,
            tag=tx.id, owners=True, step=step, known=known,
        )
    except (OSError, RoscoeError) as e:
        problem = undo(journal, blobs, tx, rows)
        where = getattr(e, "filename", None) or "a path"
        reason = e.message if isinstance(e, RoscoeError) else (e.strerror or str(e))
        outcome = "the live tree was put back as it was" if problem is None else (
            f"the live tree could not be put back yet ({problem}): run `roscoe recover`")
        raise CommitFailed(tx=tx.id, path=where, reason=reason, outcome=outcome) from e
    checkpoint("before-record")
    journal.mark_committed(tx.id)
    checkpoint("after-record")


def undo(journal: Journal, blobs: BlobStore, tx: TxRecord, rows: list[ChangeRow]) -> str | None:
    """Put every path of ``rows`` back to its old state and leave `committing`
    (an undone rollback is aborted; an undone commit is open again). Returns
    None when done, else why it could not be done yet."""
    wrote = {r.path: r.new for r in rows}
    try:
        remove_temps(tx.root, [r.path for r in rows], tx.id)
        converge(
            tx.root, [(r.path, r.old) for r in rows], content=lambda p, e: blobs.verified(e.hash or ""),
            tag=tx.id, owners=owners_kept(), step=lambda: checkpoint("undo"),
            spare=lambda path, entry: not made_by(entry, wrote.get(path)),
        )
        remove_temps(tx.root, [r.path for r in rows], tx.id)
    except RoscoeError as e:
        return e.message
    except OSError as e:
        return f"{e.filename or 'a path'}: {e.strerror or e}"
    checkpoint("before-reopen")
    journal.reopen(tx.id, "aborted" if tx.rolls_back else "open")
    return None


def staged_durable(stager: Stager | None, blobs: BlobStore) -> None:
    """The staged bytes go into the live tree by hard link, never copied and
    synced there: make them durable first. The images' syncfs did, when the
    blob store shares their filesystem; on FUSE each file is fsynced as it is
    placed."""
    if stager is None or not durable.batches_syncs(stager.tx_dir):
        return
    if os.stat(stager.tx_dir).st_dev != os.stat(blobs.root).st_dev:
        durable.sync_filesystem(stager.tx_dir)


def made_by(entry: Entry, new: Entry | None) -> bool:
    """Whether a live entry is (or could be, half made) the one a change wrote:
    a file with its bytes, a symlink with its target, a directory."""
    return new is not None and entry.type == new.type and (
        entry.type == DIR or (entry.hash, entry.target) == (new.hash, new.target))


def check_bases(changes: ChangeSet, bases: dict[str, Entry | None]) -> list[str]:
    """Paths whose live state is no longer the one recorded when the last run ended."""
    moved = []
    for c in changes.changes:
        if c.path not in bases:
            moved.append(c.path)
            continue
        base = bases[c.path]
        if not same_state(c.old, base):
            moved.append(c.path)
    return moved


def same_state(a: Entry | None, b: Entry | None) -> bool:
    """Whether the live ``a`` is still the base ``b``: a chown since is a change
    too (a base from before owners were recorded has none to compare)."""
    if a is None or b is None:
        return a is b
    return (a.type, a.size, a.mode, a.hash, a.target) == (b.type, b.size, b.mode, b.hash, b.target) and (
        a.type == "dir" or a.mtime_ns == b.mtime_ns) and (b.owner is None or a.owner == b.owner)


def commit(ws: Workspace, ref: str, *, progress: Progress | None = None) -> TxRecord:
    """Commit an open transaction; returns its record, now `committed`."""
    tx = ws.get(ref)
    ws.require_open(tx, "commit")
    if tx.rolls_back:  # a rollback that waited for its approval
        from journal.rollback import rollback

        return rollback(ws, tx.rolls_back, progress=progress)
    blobs = blob_store(ws.home.path)
    try:
        if tx.target:
            from journal.gcs_commit import commit_locked as commit_to_bucket

            commit_to_bucket(ws, tx, blobs)
        else:
            _commit_locked(ws, tx, blobs, progress)
    except ApprovalNeeded as needed:
        raise requested(ws.journal, needed) from None
    done = ws.journal.get_tx(tx.id)
    assert done is not None
    tell_committed(ws, done)
    return done


def _commit_locked(ws: Workspace, tx: TxRecord, blobs: BlobStore, progress: Progress | None) -> None:
    with checked(ws, tx) as (tx, stager, changes, hashes):
        # Staged files an older roscoe linked into the blob store get their own
        # inode back first: the live tree must never share one with a blob.
        release_links(blobs, stager, ws.home.linked_images(tx.id))
        checkpoint("before-images")
        linked = sorted({c.old.hash or "" for c in changes.changes if replaced(c.old, c.new)})
        with images_shared(blobs, tx.id, tx.root, linked):
            try:
                rows = store_images(blobs, tx, changes, hashes)
            except Conflict as e:
                raise logged(ws.journal, e) from None
            except OSError as e:  # the blob store, in the state dir, found no room
                if e.errno in FULL:
                    raise ws.home.full(e.errno, "nothing was written to the live tree") from e
                raise
            staged_durable(stager, blobs)
            checkpoint("after-images")
            known = {c.path: c.old for c in changes.changes}

            def staged(path: str, entry: Entry) -> str:
                assert isinstance(stager, Stager)
                return durable.Staged(stager.staged_path(path))

            apply_journaled(
                ws.journal, blobs, tx, rows, changes.diff_hash, known=known, progress=progress, content=staged)


@contextmanager
def checked(ws: Workspace, tx: TxRecord) -> Iterator[tuple[TxRecord, Stager | None, ChangeSet, HashCache]]:
    """Steps 1-3 under the transaction's lock and the root's: the transaction
    (read again), its stager, its change set (past policy and conflicts) and
    the hashes that change set was made with. Once the body returns, the
    staging dir is removed."""
    with ws.locked(tx, exclusive=True), root_lock(ws.home.path, tx.root):
        tx = ws.get(tx.id)
        ws.require_open(tx, "commit")
        stager = ws.stager(tx)
        hashes = ws.hash_cache(tx)
        try:
            changes = ws._compare(tx, stager, hashes)
        except LiveUnreadable:
            if tx.target:  # what neither the mount nor the bucket could give: ask the bucket what moved
                from journal.gcs_commit import objects_moved

                moved = objects_moved(ws.journal, tx)
                if moved:
                    raise logged(ws.journal, Conflict(what="commit refused", tx=tx.id, paths=moved)) from None
            raise
        enforce(ws.journal, tx, changes, ws.rules(tx), ws.same_bytes(tx, stager))
        moved = check_bases(changes, ws.journal.bases(tx.id))
        if moved:
            raise logged(ws.journal, Conflict(what="commit refused", tx=tx.id, paths=moved))
        yield tx, stager, changes, hashes
        if stager is not None:
            stager.discard()
        ws.remove_tx_dir(tx.id)


@contextmanager
def images_linked(
    ws: Workspace, blobs: BlobStore, tx: TxRecord, stager: Stager | None, changes: ChangeSet,
) -> Iterator[None]:
    """Around step 4 on, for the GCS commit: list the staged files about to be
    hard-linked into the blob store before linking them, and give them back
    their own copies if the commit does not go through (an open transaction
    never writes a blob)."""
    checkpoint("before-images")
    links = ws.home.linked_images(tx.id)
    release_links(blobs, stager, links)
    durable.save_new(links, iter([json.dumps(
        [[c.path, c.new.hash] for c in changes.changes if c.new is not None and c.new.type == FILE],
        ensure_ascii=True).encode()]), mode=0o600)
    try:
        yield
    except BaseException:
        release_links(blobs, stager, links)
        raise


def logged(journal: Journal, conflict: Conflict) -> Conflict:
    """Journal a conflict in the audit trail, and hand it back to be raised."""
    journal.log_event(conflict.fields.get("tx"), "conflict", {"error": conflict.message})  # type: ignore[arg-type]
    return conflict


def store_images(blobs: BlobStore, tx: TxRecord, changes: ChangeSet, hashes: HashCache) -> list[ChangeRow]:
    """Step 4: old bytes from the live tree, hard-linked or copied (checked
    against the hash the diff saw: a mismatch is a conflict), durable before
    this returns."""
    rows: list[ChangeRow] = []
    dirs = durable.DirFds(tx.root)
    try:
        for seq, c in enumerate(changes.changes):
            old_blob = None
            try:
                if c.old is not None and c.old.type == FILE:
                    old_blob = capture_old(blobs, dirs, c.path, c.old, link=replaced(c.old, c.new), hashes=hashes)
            except (BlobCorrupt, FileNotFoundError, durable.NotADirectoryOnPath):
                raise Conflict(what="commit refused", tx=tx.id, paths=[c.path]) from None
            rows.append(ChangeRow(seq, c.path, c.status, c.old, c.new, old_blob, None))
    finally:
        dirs.close()
    blobs.sync()
    return rows


def store_new(blobs: BlobStore, stager: object, path: str, new: Entry) -> str:
    """The staged bytes of ``path`` in the blob store: hard-linked when staging
    shares its filesystem, else copied (the caller syncs). Their digest."""
    assert isinstance(stager, Stager) and new.hash is not None
    staged = stager.staged_path(path)
    if not blobs.put_link(staged, new.hash):
        with open(staged, "rb") as f:
            blobs.put_stream(iter(lambda: f.read(durable.CHUNK), b""), new.hash)
    return new.hash


def release_links(blobs: BlobStore, stager: object, links: str) -> None:
    """A transaction that stays open must never write into a blob through a
    hard link: give each staged file listed in ``links`` its own copy again."""
    if not os.path.exists(links):
        return
    with open(links, encoding="utf-8") as f:
        pairs = json.load(f)
    if isinstance(stager, Stager):
        for path, digest in pairs:
            unshare(blobs, stager, path, digest)
    os.unlink(links)


def unshare(blobs: BlobStore, stager: Stager, path: str, digest: str) -> None:
    """Replace the staged ``path`` by a copy if it is the blob ``digest`` itself."""
    staged = stager.staged_path(path)
    try:
        if os.stat(staged).st_ino != os.stat(blobs.path(digest)).st_ino:
            return
    except FileNotFoundError:
        return
    st = os.lstat(staged)
    temp = staged + ".roscoe-unshare"
    with open(temp, "wb") as out:
        for chunk in blobs.read(digest):
            out.write(chunk)
    os.chmod(temp, st.st_mode & 0o7777)
    os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(temp, staged)
