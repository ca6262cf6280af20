"""What one path is: ``Entry``, the fingerprint of a file, directory or symlink.

Records on the start-up path of ``tx run`` are frozen namedtuples, not
dataclasses: importing dataclasses (and typing, inspect) costs ~30 ms a run.
"""

from __future__ import annotations

import os
import stat
from collections import namedtuple

from cowfs.hashing import hash_bytes, hash_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

FILE, DIR, SYMLINK = "file", "dir", "symlink"
SUPPORTED = (FILE, DIR, SYMLINK)


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char-device"
    if stat.S_ISBLK(mode):
        return "block-device"
    return "unknown"


def identity(st: os.stat_result) -> list[int]:
    """What tells one state of an inode from any other: any write, chmod,
    rename over or link count change moves one of these (the ctime, which
    no process can set, at least)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_Entry = namedtuple(
    "_Entry", "type size mode mtime_ns hash target uid gid", defaults=(None, None, None, None)
)


class Entry(_Entry):
    """Type, size, permission bits, mtime and content hash of one path.

    ``type`` is file|dir|symlink (or fifo, socket, char-device, block-device);
    ``mode`` the permission bits as an int; ``hash`` xxh3-128 of the bytes
    (symlink: of its target; dir: None); a directory's size is 0 because its
    st_size means nothing across filesystems.
    """

    __slots__ = ()
    type: str
    size: int
    mode: int
    mtime_ns: int
    hash: str | None
    target: str | None
    uid: int | None
    gid: int | None

    def to_json(self) -> dict[str, Any]:
        """The contract's form (``tx diff --json``), also the journal's."""
        return {
            "type": self.type,
            "size": self.size,
            "mode": format(self.mode, "04o"),
            "mtime_ns": self.mtime_ns,
            "uid": self.uid,
            "gid": self.gid,
            "hash": self.hash,
            "target": self.target,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        # (Journals written before owners were in the diff have no uid/gid: None.)
        return cls(d["type"], d["size"], int(d["mode"], 8), d["mtime_ns"], d.get("hash"), d.get("target"),
                   d.get("uid"), d.get("gid"))

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid), or None where none is kept (a bucket)."""
        return None if self.uid is None else (self.uid, self.gid)

    def same_content(self, other: Entry) -> bool:
        return self.type == other.type and self.hash == other.hash and self.size == other.size

    def same_meta(self, other: Entry) -> bool:
        if self.owner != other.owner:
            return False
        # A directory's mtime moves with every change to its entries: not tracked.
        if self.type == DIR:
            return self.mode == other.mode
        if self.type == SYMLINK:
            return self.mtime_ns == other.mtime_ns
        return self.mode == other.mode and self.mtime_ns == other.mtime_ns

    def without_owner(self) -> Entry:
        return self._replace(uid=None, gid=None) if self.uid is not None or self.gid is not None else self


def read_entry(
    path: str, st: os.stat_result | None = None, *, with_hash: bool = True,
    digest_of: Callable[[os.stat_result, Callable[[], str]], str] | None = None,
) -> Entry:
    """Fingerprint ``path`` (never following a final symlink). A file's hash
    is ``digest_of(st, read)`` when given (a cache that calls ``read`` when it
    must), else read."""
    if st is None:
        st = os.lstat(path)
    kind = kind_of(st.st_mode)
    mode = stat.S_IMODE(st.st_mode)
    if kind == FILE:
        if not with_hash:
            digest = None
        elif digest_of is not None:
            digest = digest_of(st, lambda: hash_file(path))
        else:
            digest = hash_file(path)
        return Entry(FILE, st.st_size, mode, st.st_mtime_ns, digest, None, st.st_uid, st.st_gid)
    if kind == SYMLINK:
        target = os.readlink(path)
        raw = os.fsencode(target)
        return Entry(SYMLINK, len(raw), mode, st.st_mtime_ns, hash_bytes(raw), target, st.st_uid, st.st_gid)
    if kind == DIR:
        return Entry(DIR, 0, mode, st.st_mtime_ns, None, None, st.st_uid, st.st_gid)
    return Entry(kind, 0, mode, st.st_mtime_ns, None, None, st.st_uid, st.st_gid)
