"""Reading an overlay's upper layer: which paths a run touched, and how.

Only the upper layer is walked, never the whole tree. It understands every
form the backends write: whiteouts as 0/0 character devices (kernel overlayfs,
fuse-overlayfs as root), as ``*.overlay.whiteout`` xattrs on empty files
(kernels >= 6.7), as ``.wh.NAME`` files (fuse-overlayfs unprivileged), and
opaque directories as ``*.overlay.opaque`` xattrs or ``.wh..wh..opq`` files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from collections import namedtuple

from cowfs import livetree

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
# bwrap mounts with userxattr, which turns redirect_dir off; refuse rather than misread.
REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
WH_PREFIX = ".wh."
# fuse-overlayfs marks an opaque dir with ".wh..wh..opq" (and sometimes ".wh..opq").
WH_OPAQUE = (".wh..wh..opq", ".wh..opq")


class Touch(namedtuple("_Touch", "rel staged st", defaults=(None,))):
    """A path the run touched: ``staged`` is its new copy, or None when
    deleted; ``st`` that copy's lstat when the walk already took it."""

    __slots__ = ()
    rel: str
    staged: str | None
    st: os.stat_result | None


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT, errno.EPERM, errno.EACCES):
            return None
        raise


def _is_opaque(path: str) -> bool:
    return any(_xattr(path, name) == b"y" for name in OPAQUE_XATTRS)


def _is_xattr_whiteout(path: str, st: os.stat_result) -> bool:
    return st.st_size == 0 and any(_xattr(path, name) is not None for name in WHITEOUT_XATTRS)


class UnsupportedUpper(Exception):
    """The upper layer uses an overlay feature roscoe does not read (redirect_dir)."""


def touches(upper: str, root: str, *, wh_files: bool) -> Iterator[Touch]:
    """Every path the run touched, read from ``upper``; ``wh_files`` turns on
    fuse-overlayfs's ``.wh.`` naming (never on for the kernel, where a file may
    really be called ``.wh.x``)."""
    yield from _walk(upper, "", root, wh_files, False)


def _walk(dirpath: str, rel: str, root: str, wh_files: bool, inside_opaque: bool) -> Iterator[Touch]:
    with os.scandir(dirpath) as it:
        items = list(it)
    names = {d.name for d in items}
    # Below an opaque directory nothing of the lower layer shows: every upper
    # directory there hides its live namesake's children too, marked or not.
    opaque = bool(rel) and (
        inside_opaque or _is_opaque(dirpath) or (wh_files and not names.isdisjoint(WH_OPAQUE)))
    present: set[str] = set()
    for d in items:
        name = d.name
        child = f"{rel}/{name}" if rel else name
        if wh_files and name in WH_OPAQUE:
            continue
        if wh_files and name.startswith(WH_PREFIX):
            yield Touch(f"{rel}/{name[len(WH_PREFIX):]}" if rel else name[len(WH_PREFIX):], None)
            continue
        st = d.stat(follow_symlinks=False)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            yield Touch(child, None)
            continue
        if stat.S_ISREG(st.st_mode) and _is_xattr_whiteout(d.path, st):
            yield Touch(child, None)
            continue
        if stat.S_ISDIR(st.st_mode):
            for xname in REDIRECT_XATTRS:
                if _xattr(d.path, xname) is not None:
                    raise UnsupportedUpper(f"{child}: {xname}")
        present.add(name)
        yield Touch(child, d.path, st)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(d.path, child, root, wh_files, opaque)
    if opaque:
        for name in livetree.children(root, rel):
            if name not in present:
                yield Touch(f"{rel}/{name}", None)
