"""Read-only access to the live tree that never follows a symlink inside it.

Paths are resolved by ``cowfs.durable`` one component at a time with
``O_NOFOLLOW | O_DIRECTORY`` opens, so a symlink planted in the live tree can
never redirect a read outside the path it names.

A read that fails (other than for an absent path) is ``LiveUnreadable``,
naming the live path: never mistaken for a failure of the staged layer. A
mount's cached view of an object replaced behind it is the usual cause (rclone
answers EIO, gcsfuse ESTALE, until the cache expires); ``entry`` and
``descendants`` then take a file's entry from ``unreadable(rel, lstat)`` when
given one (a bucket target reads the object through its API).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

from cowfs import durable
from cowfs.entry import Entry, identity, kind_of
from cowfs.errors import LiveUnreadable
from cowfs.hashing import hash_bytes, hash_fd

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing stays off the start-up path of `tx run`)
    from typing import Any, TypeVar

    from cowfs.hashcache import HashCache

    T = TypeVar("T")
    Unreadable = Callable[[str, os.stat_result], Entry | None]

def lstat(root: str, rel: str, dirs: durable.DirFds | None = None) -> os.stat_result | None:
    """lstat of ``rel`` under ``root`` without following symlinks on the way
    (its parent taken from ``dirs`` when given, as in ``entry``)."""
    return _in_parent(root, rel, dirs, lambda fd: _lstat_in(fd, rel))


def _in_parent(root: str, rel: str, dirs: durable.DirFds | None, read: Callable[[int], T | None]) -> T | None:
    """``read(fd)`` of the real directory holding ``rel`` (from ``dirs``, or
    walked from ``root``), or None when it has none."""
    if dirs is not None:
        try:
            fd = dirs.get(rel.rpartition("/")[0])
        except durable.NotADirectoryOnPath:
            return None
        return read(fd)
    with durable.parent_dir(root, rel) as parent:
        return None if parent is None else read(parent)


def _lstat_in(dir_fd: int, rel: str) -> os.stat_result | None:
    try:
        return os.lstat(durable.basename(rel), dir_fd=dir_fd)
    except OSError as e:
        if e.errno in durable.ABSENT:
            return None
        raise


def entry(
    root: str, rel: str, hashes: HashCache | None = None, dirs: durable.DirFds | None = None,
    unreadable: Unreadable | None = None,
) -> Entry | None:
    """The fingerprint (with content hash, remembered in ``hashes`` when it
    can be) of ``rel`` in the live tree, or None. With ``dirs`` (open fds of
    ``root``'s directories, for many lookups), its parent is taken from there.
    A file whose bytes cannot be read is ``unreadable(rel, lstat)``'s entry
    when it is given, else (as any other failed read) ``LiveUnreadable``."""
    try:
        return _in_parent(root, rel, dirs, lambda fd: _entry_in(fd, rel, hashes, unreadable))
    except OSError as e:
        raise unreadable_error(root, rel, e) from e


def unreadable_error(root: str, rel: str, error: OSError) -> LiveUnreadable:
    return LiveUnreadable(root=root, path=rel, detail=error.strerror or str(error))


def _entry_in(dir_fd: int, rel: str, hashes: HashCache | None, unreadable: Unreadable | None) -> Entry | None:
    st = _lstat_in(dir_fd, rel)
    return None if st is None else _entry_at(dir_fd, durable.basename(rel), st, rel, hashes, unreadable)


def _entry_at(
    dir_fd: int, name: str, st: os.stat_result, rel: str, hashes: HashCache | None, unreadable: Unreadable | None,
) -> Entry | None:
    kind = kind_of(st.st_mode)
    mode = stat.S_IMODE(st.st_mode)
    common = dict(uid=st.st_uid, gid=st.st_gid)
    if kind == "file":

        def read(also: Any = None) -> str:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                return hash_fd(fd) if also is None else hash_fd(fd, also)
            finally:
                os.close(fd)

        try:
            digest = read() if hashes is None else hashes.digest("live", rel, st, read)
        except OSError:
            if unreadable is None:
                raise
            return unreadable(rel, st)
        return file_entry(st, digest)
    if kind == "symlink":
        target = os.readlink(name, dir_fd=dir_fd)
        raw = os.fsencode(target)
        return Entry("symlink", len(raw), mode, st.st_mtime_ns, hash_bytes(raw), target, **common)
    return Entry(kind, 0, mode, st.st_mtime_ns, None, None, **common)


def file_entry(st: os.stat_result, digest: str) -> Entry:
    """The fingerprint of a regular file whose lstat is ``st`` and whose bytes hash to ``digest``."""
    return Entry("file", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest, None,
                 uid=st.st_uid, gid=st.st_gid)


def same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two lstats are of one inode, unchanged in between."""
    return identity(a) == identity(b)


def children(root: str, rel: str) -> list[str]:
    """Names in the live directory ``rel`` ([] when it is not a real directory)."""
    try:
        return _children(root, rel)
    except OSError as e:
        raise unreadable_error(root, rel, e) from e


def _children(root: str, rel: str) -> list[str]:
    with durable.parent_dir(root, rel) as fd:
        if fd is None:
            return []
        parts = durable.split(rel)
        try:
            dfd = os.open(parts[-1], durable.DIR_FLAGS, dir_fd=fd) if parts else os.dup(fd)
        except OSError as e:
            if e.errno in durable.ABSENT:
                return []
            raise
        try:
            return os.listdir(dfd)
        finally:
            os.close(dfd)


def descendants(
    root: str, rel: str, hashes: HashCache | None = None, unreadable: Unreadable | None = None,
) -> Iterator[tuple[str, Entry]]:
    """Every path below the live directory ``rel``, parents before children."""
    for name in children(root, rel):
        child = f"{rel}/{name}" if rel else name
        found = entry(root, child, hashes, unreadable=unreadable)
        if found is None:
            continue
        yield child, found
        if found.type == "dir":
            yield from descendants(root, child, hashes, unreadable)


def read_bytes(root: str, rel: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the live regular file ``rel`` (None if not one)."""
    try:
        return _read_bytes(root, rel, limit)
    except OSError as e:
        raise unreadable_error(root, rel, e) from e


def _read_bytes(root: str, rel: str, limit: int) -> bytes | None:
    with durable.parent_dir(root, rel) as fd:
        if fd is None:
            return None
        try:
            file_fd = os.open(durable.split(rel)[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            if e.errno in durable.ABSENT:
                return None
            raise
        try:
            if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                return None
            return os.read(file_fd, limit)
        finally:
            os.close(file_fd)


def same_bytes(root: str, rel: str, other: str) -> bool:
    """Whether the live regular file ``rel`` holds exactly the bytes of the
    regular file ``other`` (outside the live tree; a final symlink is not
    followed), compared byte for byte, not by hash. False when either cannot
    be read."""
    try:
        with durable.parent_dir(root, rel) as fd:
            if fd is None:
                return False
            live = os.open(durable.basename(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                theirs = os.open(other, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    a, b = os.fstat(live), os.fstat(theirs)
                    if not (stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode)) or a.st_size != b.st_size:
                        return False
                    return _same_stream(durable.chunks_of(live), durable.chunks_of(theirs))
                finally:
                    os.close(theirs)
            finally:
                os.close(live)
    except OSError:
        return False


def _same_stream(a: Iterator[bytes], b: Iterator[bytes]) -> bool:
    left = right = memoryview(b"")
    while True:
        if not left:
            left = memoryview(next(a, b""))
        if not right:
            right = memoryview(next(b, b""))
        if not left or not right:
            return not left and not right
        n = min(len(left), len(right))
        if left[:n] != right[:n]:
            return False
        left, right = left[n:], right[n:]
