"""The content-addressed blob store: pre- and post-images of committed files.

``$ROSCOE_HOME/blobs/ab/cdef...`` holds the bytes whose xxh3-128 is
``abcdef...``: each stored once, fsynced before the journal names it, and
checked against its name whenever it is read back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import xxhash

from cowfs import durable
from cowfs.hashing import hash_file
from journal.errors import BlobCorrupt

# A pin of a process in another pid namespace is kept this long (ns).
PIN_GRACE_NS = 3600 * 10**9


class BlobStore:
    """Blobs under ``path``. With ``batch`` (a local disk) each put skips its own
    fsyncs and ``sync()`` makes all of them durable at once."""

    def __init__(self, path: str, *, batch: bool = False) -> None:
        self.root = os.path.normpath(path)
        self.batch = batch
        self._made: set[str] = set()
        self._pins = 0
        self._pin_prefix: str | None = None  # (``pin``'s temp names: the pins dir, pid namespace, pid)

    def sync(self) -> None:
        """Make every blob put so far durable (one syncfs when batching)."""
        if self.batch and os.path.isdir(self.root):
            durable.sync_filesystem(self.root)

    def path(self, digest: str) -> str:
        # (f-strings, not os.path.join: a rollback of 2,000 files builds 8,000 of these)
        return f"{self.root}/{digest[:2]}/{digest[2:]}"

    def _fan(self, digest: str) -> str:
        """The blob's directory, made if need be (once per store object)."""
        directory = f"{self.root}/{digest[:2]}"
        if directory not in self._made:
            try:
                os.mkdir(directory, mode=0o700)
            except FileExistsError:
                pass
            except FileNotFoundError:  # (no store yet)
                os.makedirs(directory, mode=0o700, exist_ok=True)
            self._made.add(directory)
        return directory

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def put_link(self, src: str, digest: str) -> bool:
        """Store the file at ``src`` (already hashed to ``digest``) by hard link;
        False when it cannot be linked (the caller copies instead)."""
        if self.has(digest):
            return True
        # (The run never fsynced what it wrote: link_new, or sync(), does.)
        return durable.link_new(src, self.path(digest), sync=not self.batch)

    def put_stream(self, chunks: Iterator[bytes], digest: str) -> None:
        """Store bytes that must hash to ``digest``; refuses them otherwise."""
        if self.has(digest):
            for _ in chunks:
                pass
            return
        h = xxhash.xxh3_128()

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                h.update(chunk)
                yield chunk
            if h.hexdigest() != digest:
                raise BlobCorrupt(digest=digest, problem=f"not what was read (read {h.hexdigest()})", store=self.root)

        durable.save_new(self.path(digest), hashed(), sync=not self.batch)

    def put_linked(self, dir_fd: int, name: str, digest: str, *, known: os.stat_result | None = None) -> bool:
        """Store the live file ``name`` of ``dir_fd``, which must hash to
        ``digest``, by hard link: once the commit replaces it in the live tree,
        its inode is the blob's alone, and no byte was copied. False when it
        cannot be linked (the caller copies); BlobCorrupt when its bytes are
        not ``digest``'s (read again, or, when the caller ``known`` the file's
        lstat to hold them, when the linked inode is not that file as it was).
        Until then the blob shares the live file's inode: the caller lists it
        in a share marker first and ``unshare``s it after. (The caller found
        no such blob yet.)"""
        pin = self.pin(dir_fd, name)
        if pin is None:
            return False
        temp, st = pin
        try:
            if known is None:
                for _ in self._read(temp, digest, "not what was read"):
                    pass
            elif (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
                    known.st_dev, known.st_ino, known.st_size, known.st_mtime_ns):
                raise BlobCorrupt(digest=digest, problem="not the file that was hashed", store=self.root)
        except BaseException:
            durable.discard(temp)
            raise
        self._settle(temp, digest)
        return True

    def pin(self, dir_fd: int, name: str) -> tuple[str, os.stat_result] | None:
        """Hard-link the live file ``name`` of ``dir_fd`` to a temp name in
        the store: its bytes can then be hashed there, and kept as a blob
        by ``adopt`` with no second read, as no later swap of ``name`` can
        change what the temp holds. The temp and the inode's lstat, or None
        when it cannot be linked. The caller ``discard``s what it does not
        adopt; ``drop_stale_pins`` removes those of a dead process (as
        every command does first)."""
        if self._pin_prefix is None:
            directory = os.path.join(self.root, ".pins")
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._pin_prefix = f"{directory}/{_pid_namespace()}.{os.getpid()}."
        self._pins += 1
        temp = f"{self._pin_prefix}{self._pins}"
        st = durable.link_aside(dir_fd, name, temp)
        return None if st is None else (temp, st)

    def adopt(self, temp: str, digest: str) -> None:
        """Keep the pinned ``temp``, whose bytes hash to ``digest``, as that
        blob (or drop it if the store has the blob). Like ``put_linked``, the
        blob shares a live file's inode until the commit replaces that file:
        the caller lists it in a share marker first."""
        if self.batch:
            # The common case, a blob the store does not have yet: one
            # rename that refuses to replace one, instead of a look and a
            # rename (2,000 lstats of a rollback of 2,000 files).
            try:
                if durable.rename_new(temp, f"{self._fan(digest)}/{digest[2:]}"):
                    return
            except BaseException:
                durable.discard(temp)
                raise
        if self.unshare(digest):
            durable.discard(temp)
            return
        self._settle(temp, digest)

    def _settle(self, temp: str, digest: str) -> None:
        durable.settle_link(temp, f"{self._fan(digest)}/{digest[2:]}", sync=not self.batch)

    def drop_stale_pins(self) -> None:
        """Remove the pins a dead process left (hard links of live files).
        A pin is named by its process's pid namespace and pid; one of
        another pid namespace (a roscoe in a container sharing this
        ``ROSCOE_HOME``), whose pid means nothing here, is removed once it
        is an hour old."""
        directory = os.path.join(self.root, ".pins")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        ours = _pid_namespace()
        for name in names:
            path = os.path.join(directory, name)
            parts = name.split(".")
            if len(parts) == 3 and parts[0] != ours:
                try:
                    age = time.time_ns() - os.lstat(path).st_ctime_ns
                except FileNotFoundError:
                    continue
                if age < PIN_GRACE_NS:
                    continue
            elif len(parts) in (2, 3) and parts[-2].isdigit() and _alive(parts[-2]):
                continue  # (two parts: a pin of an older roscoe, pid.n)
            durable.discard(path)

    def unshare(self, digest: str) -> bool:
        """Give the blob an inode of its own if it still shares one (with the
        live file it was linked from: an edit there would change the image).
        A shared blob whose bytes no longer hash to its name is dropped.
        Whether the store has the blob."""
        try:
            if os.lstat(self.path(digest)).st_nlink == 1:
                return True
        except FileNotFoundError:
            return False
        try:
            durable.save_new(self.path(digest), self.read(digest))
        except BlobCorrupt:
            self.remove(digest)
            return False
        return True

    def share_marker(self, tx: str) -> str:
        """Where a commit lists the blobs it may link from the live tree, before
        it links them, so a crash cannot leave one shared unnoticed."""
        return os.path.join(self.root, ".shared", tx)

    def share_markers(self) -> Iterator[str]:
        directory = os.path.join(self.root, ".shared")
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                if not name.startswith("."):
                    yield os.path.join(directory, name)

    def read(self, digest: str) -> Iterator[bytes]:
        """The blob's bytes; raises BlobCorrupt at the end if they do not hash to its name."""
        return self._read(self.path(digest), digest, "damaged")

    def verified(self, digest: str, hashed: Callable[[str], str] | None = None) -> str:
        """The path of the blob, once its bytes were read and hash to its name
        (then copy it in the kernel: a reflink where the filesystem has them).
        ``hashed(path)``, when given, is what hashes them (``HashedAhead``)."""
        path = self.path(digest)
        try:
            actual = (hashed or hash_file)(path)
        except FileNotFoundError:
            raise BlobCorrupt(digest=digest, problem="missing", store=self.root) from None
        if actual != digest:
            raise BlobCorrupt(digest=digest, problem=f"damaged (its bytes hash to {actual})", store=self.root)
        return path

    def _read(self, path: str, digest: str, problem: str) -> Iterator[bytes]:
        h = xxhash.xxh3_128()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobCorrupt(digest=digest, problem="missing", store=self.root) from None
        try:
            for chunk in durable.chunks_of(fd):
                h.update(chunk)
                yield chunk
        finally:
            os.close(fd)
        if h.hexdigest() != digest:
            raise BlobCorrupt(digest=digest, problem=f"{problem} (its bytes hash to {h.hexdigest()})", store=self.root)

    def check(self, digest: str) -> str | None:
        """None when the blob is present and whole, else what is wrong with it."""
        try:
            for _ in self.read(digest):
                pass
        except BlobCorrupt as e:
            return str(e.fields["problem"])
        return None

    def digests(self) -> Iterator[str]:
        for fan, name in self._fanned():
            if not name.startswith("."):
                yield fan + name

    def stale_temps(self) -> Iterator[str]:
        """Temp files a dead process left in the fan dirs: a copy into the
        store that a crash interrupted (``.NAME.PID.tmp``)."""
        for fan, name in self._fanned():
            parts = name.rsplit(".", 2)
            if name.startswith(".") and len(parts) == 3 and parts[1].isdigit() and not _alive(parts[1]):
                yield os.path.join(self.root, fan, name)

    def _fanned(self) -> Iterator[tuple[str, str]]:
        """(fan dir, name) of every entry in the fan dirs, sorted."""
        if not os.path.isdir(self.root):
            return
        for fan in sorted(os.listdir(self.root)):
            sub = os.path.join(self.root, fan)
            if len(fan) == 2 and os.path.isdir(sub):
                for name in sorted(os.listdir(sub)):
                    yield fan, name

    def remove(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass


def _alive(pid: str) -> bool:
    return os.path.exists(f"/proc/{pid}")


_NAMESPACE: str | None = None


def _pid_namespace() -> str:
    """This process's pid namespace (the inode of /proc/self/ns/pid)."""
    global _NAMESPACE
    if _NAMESPACE is None:
        try:
            _NAMESPACE = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            _NAMESPACE = "0"
    return _NAMESPACE
