"""A file roscoe writes for its caller (``tx run --report FILE``), outside
every tree it guards.

The caller names the path; roscoe may be running as root. So the file is
never inside the root or the state dir, whatever the spelling (symlinked
parent dirs, ``..``, a bind mount of the root elsewhere: the directory's
ancestors are compared by device and inode), and it is never written through
a symlink or into an existing inode (a hard link to a live file): it is a
new file, written to a temp name in its directory and renamed over the name.
"""

from __future__ import annotations

import os
import stat
import time
from collections import namedtuple

from cowfs import durable
from cowfs.errors import UsageError

PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
# The parent: search permission is all a caller needs to write there.
PARENT_FLAGS = PATH_FLAGS | os.O_NOFOLLOW


class CallerFile(namedtuple("_CallerFile", "given parent name")):
    """Where a caller's file goes: the path as given, its parent directory
    with symlinks resolved, and its own name (never followed)."""

    __slots__ = ()
    given: str
    parent: str
    name: str


def place(given: str, option: str, guarded: dict[str, str]) -> CallerFile:
    """Check that ``given`` can be written, before anything else happens;
    ``guarded`` maps what may not hold it ("the root") to its path."""
    name = os.path.basename(given)
    if name in ("", ".", ".."):
        raise UsageError(detail=f"{option} {given}: names a directory; name a file")
    # realpath, not abspath first: a `..` after a symlinked dir goes where the kernel would take it.
    parent = os.path.realpath(os.path.join(os.getcwd(), os.path.dirname(given) or "."))
    where = CallerFile(given, parent, name)
    try:
        fd = os.open(parent, PARENT_FLAGS)
    except OSError as e:
        raise UsageError(detail=f"{option} {given}: {e.strerror}") from None
    try:
        _check(where, fd, option, guarded)
    finally:
        os.close(fd)
    return where


def write(where: CallerFile, data: bytes, option: str, guarded: dict[str, str]) -> None:
    """Write ``data`` as a new file at ``where``, checked again through the
    very directory it lands in."""
    try:
        fd = os.open(where.parent, PARENT_FLAGS)
    except OSError as e:
        raise UsageError(detail=f"{option} {where.given}: {e.strerror}") from None
    try:
        _check(where, fd, option, guarded)
        mask = os.umask(0)
        os.umask(mask)
        temp = f".{where.name}.roscoe-{os.getpid()}.tmp"
        durable.write_file(fd, where.name, temp, iter([data]), mode=0o666 & ~mask, mtime_ns=time.time_ns())
    except OSError as e:
        raise UsageError(detail=f"{option} {where.given}: {e.strerror}") from None
    finally:
        os.close(fd)


def _check(where: CallerFile, fd: int, option: str, guarded: dict[str, str]) -> None:
    inside = _inside(fd, guarded)
    if inside is not None:
        what, path = inside
        raise UsageError(detail=f"{option} {where.given}: is inside {what} {path}; roscoe writes no file there")
    st = durable.lstat_at(fd, where.name)
    if st is None or stat.S_ISREG(st.st_mode):
        return
    kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
    raise UsageError(detail=f"{option} {where.given}: is {kind}; roscoe writes its file only at a file's own name")


def _inside(fd: int, guarded: dict[str, str]) -> tuple[str, str] | None:
    """Which guarded tree the directory ``fd`` is in, if any: its ancestors
    (``..`` from it, up to ``/``) compared by device and inode."""
    keys = {}
    for what, path in guarded.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        keys[(st.st_dev, st.st_ino)] = (what, path)
    here = os.open(".", PATH_FLAGS, dir_fd=fd)
    try:
        st = os.fstat(here)
        while True:
            key = (st.st_dev, st.st_ino)
            if key in keys:
                return keys[key]
            up = os.open("..", PATH_FLAGS, dir_fd=here)
            os.close(here)
            here = up
            st_up = os.fstat(here)
            if (st_up.st_dev, st_up.st_ino) == key:
                return None
            st = st_up
    finally:
        os.close(here)
