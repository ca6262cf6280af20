"""Where roscoe keeps its state: one ``Home`` object names every path under it.

Tests point it at ``tmp_path``; nothing else builds state paths by hand.
(Plain strings, not pathlib: this sits on the start-up path of every run.)
"""

from __future__ import annotations

import errno
import os
from collections import namedtuple

from cowfs.errors import StateDirError
from journal.errors import StateDirFull


class Home(namedtuple("_Home", "path")):
    """The state directory: journal, staging dirs of transactions, blobs."""

    __slots__ = ()
    path: str

    @classmethod
    def resolve(cls, path: str | os.PathLike[str]) -> Home:
        """The state dir at ``path`` (the caller's settings name it: journal.settings)."""
        return cls(os.path.abspath(path))

    @property
    def journal(self) -> str:
        return os.path.join(self.path, "journal.db")

    @property
    def config(self) -> str:
        """The state dir's own config file (a named one adds to it: journal.rules)."""
        return os.path.join(self.path, "config.toml")

    def tx_dir(self, tx: str) -> str:
        return os.path.join(self.path, "tx", tx)

    def hash_cache(self, tx: str) -> str:
        """The content hashes of the transaction's files, by identity (``cowfs.hashcache``)."""
        return os.path.join(self.tx_dir(tx), "hashes.json")

    def linked_images(self, tx: str) -> str:
        """Where a commit lists the staged files it is about to hard-link into
        the blob store, before it links them, so a crash cannot forget them."""
        return os.path.join(self.tx_dir(tx), "linked-images.json")

    def ensure(self) -> None:
        """Create the state dir (mode 0700, whatever the umask) and its ``tx/``."""
        tx = os.path.join(self.path, "tx")
        if os.path.isdir(tx):
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            for path in (self.path, tx):
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    continue
                os.chmod(path, 0o700)
        except OSError as e:
            if e.errno in FULL:
                raise self.full(e.errno, "nothing was created") from e
            raise StateDirError(home=self.path, reason=e.strerror or str(e)) from e

    def full(self, errno_: int | None, outcome: str) -> StateDirFull:
        """The error for a write to the state dir that found no room: what ran
        out (space, inodes, the disk quota) and where."""
        what, where = exhausted(self.path if os.path.exists(self.path) else os.path.dirname(self.path))
        if errno_ == errno.EDQUOT:
            what = f"disk quota (of uid {os.geteuid()})"
        return StateDirFull(home=self.path, what=what, where=where, outcome=outcome)


# A write that found no room: no space or inodes left, or over the quota.
FULL = (errno.ENOSPC, errno.EDQUOT)


def exhausted(path: str) -> tuple[str, str]:
    """What ran out on the filesystem holding ``path`` (``space`` or
    ``inodes``) and where, for messages: its type, mount point and what is free."""
    try:
        st = os.statvfs(path)
    except OSError:
        return "space", path
    fstype, mount = _mount_of(path)
    if st.f_files and not st.f_favail:
        return "inodes", f"{fstype} at {mount}: 0 of {st.f_files} inodes free"
    return "space", f"{fstype} at {mount}: {_size(st.f_bavail * st.f_frsize)} of {_size(st.f_blocks * st.f_frsize)} free"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _mount_of(path: str) -> tuple[str, str]:
    """The type and mount point of the filesystem holding ``path``."""
    here = os.path.realpath(path)
    dev = os.stat(here).st_dev
    while here != "/":
        up = os.path.dirname(here)
        if os.stat(up).st_dev != dev:
            break
        here = up
    fstype = "filesystem"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and _unescape(fields[1]) == here:
                    fstype = fields[2]
    except OSError:
        pass
    return fstype, here


def _unescape(field: str) -> str:
    """A path as /proc/self/mounts spells it (space, tab, newline, backslash as octal escapes)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
