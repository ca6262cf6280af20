"""Images: the bytes a commit keeps in the blob store so that it can be undone.

The old bytes of every file a commit replaces or removes go into the blob
store before the live tree changes (step 4 of ``journal.protocol``): the
old inode itself, hard-linked, when the commit replaces or removes it and
it has no other link, else a copy, read once and checked against the hash
the diff saw (a mismatch is a conflict). A hard-linked inode that stays
live (the commit did not go through) gets an inode of its own again
(``images_shared``); a crash in between leaves the list to recovery.

A bucket commit also keeps the new bytes, hard-linked from staging where
it can; such a staged file must never be written through while its
transaction stays open (``images_linked``, ``release_links``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from cowfs import durable
from cowfs.changeset import ChangeSet
from cowfs.entry import FILE, Entry
from cowfs.stagers import Stager
from journal.blobs import BlobStore
from journal.faults import NONE, Faults
from journal.rootlock import held_by_someone, root_lock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowfs.hashcache import HashCache


def blob_store(home: str) -> BlobStore:
    """The blob store of the state dir ``home``."""
    path = os.path.join(home, "blobs")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return BlobStore(path, batch=durable.batches_syncs(path))


def replaced(old: Entry | None, new: Entry | None) -> bool:
    """Whether a change leaves no trace of the old file's inode in the live tree
    (so the blob store may have it): it is removed, or gets other bytes."""
    return old is not None and old.type == FILE and (new is None or new.type != FILE or new.hash != old.hash)


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


@contextmanager
def images_shared(blobs: BlobStore, tx_id: str, root: str, digests: list[str]) -> Iterator[None]:
    """Around capturing old images by hard link and applying the change: list
    ``digests`` durably first, and once the commit is done, failed or undone,
    give each blob an inode of its own again (a file the commit did not
    replace still shares it). A crash in between leaves the list to
    recovery."""
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


@contextmanager
def images_linked(blobs: BlobStore, links: str, stager: Stager | None, changes: ChangeSet) -> Iterator[None]:
    """Around keeping the new bytes of a bucket commit: list the staged files
    about to be hard-linked into the blob store (in ``links``) before linking
    them, and give them back their own copies if the commit does not go
    through (an open transaction never writes a blob)."""
    release_links(blobs, stager, links)
    durable.save_new(links, iter([json.dumps(
        [[c.path, c.new.hash] for c in changes.changes if c.new is not None and c.new.type == FILE],
        ensure_ascii=True).encode()]), mode=0o600)
    try:
        yield
    except BaseException:
        release_links(blobs, stager, links)
        raise


def store_new(blobs: BlobStore, stager: Stager | None, path: str, new: Entry) -> str:
    """The staged bytes of ``path`` in the blob store: hard-linked when staging
    shares its filesystem, else copied (the caller syncs). Their digest."""
    assert stager is not None and new.hash is not None
    staged = stager.staged_path(path)
    if not blobs.put_link(staged, new.hash):
        with open(staged, "rb") as f:
            blobs.put_stream(iter(lambda: f.read(durable.CHUNK), b""), new.hash)
    return new.hash


def release_links(blobs: BlobStore, stager: Stager | None, links: str) -> None:
    """A transaction that stays open must never write into a blob through a
    hard link: give each staged file listed in ``links`` its own copy again."""
    if not os.path.exists(links):
        return
    with open(links, encoding="utf-8") as f:
        pairs = json.load(f)
    if stager is not None:
        for path, digest in pairs:
            _unshare(blobs, stager, path, digest)
    os.unlink(links)


def _unshare(blobs: BlobStore, stager: Stager, path: str, digest: str) -> None:
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


def unshare_left_blobs(home: str, *, faults: Faults = NONE) -> None:
    """Blobs a commit that died had hard-linked from live files it never
    replaced get an inode of their own (``images_shared``);
    those of a commit still running (its root lock held) are left to it.
    The pins a dead rollback left (``journal.targets.local.Pins``) are removed,
    and so is a list a commit died writing (``.TX.PID.tmp``: nothing was
    linked before its list was in place)."""
    pins = os.path.join(home, "blobs", ".pins")
    if os.path.isdir(pins) and os.listdir(pins):
        BlobStore(os.path.join(home, "blobs")).drop_stale_pins()
    shared = os.path.join(home, "blobs", ".shared")
    if not os.path.isdir(shared):
        return
    for name in os.listdir(shared):
        pid = name.rsplit(".", 2)[-2] if name.startswith(".") and name.endswith(".tmp") else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            os.unlink(os.path.join(shared, name))
    blobs = blob_store(home)
    for marker in blobs.share_markers():
        with open(marker, encoding="utf-8") as f:
            root = json.load(f)["root"]
        if held_by_someone(home, root):
            continue
        with root_lock(home, root, faults=faults):
            if os.path.exists(marker):
                unshare_listed(blobs, marker)
