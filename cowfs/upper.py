"""Reading an overlay's upper layer: which paths a run touched, and how.

Only the upper layer is walked, never the whole tree. It understands every
form the backends write: whiteouts as 0/0 character devices (kernel overlayfs,
fuse-overlayfs as root), as ``*.overlay.whiteout`` xattrs on empty files
(kernels >= 6.7), as ``.wh.NAME`` files (fuse-overlayfs unprivileged), and
opaque directories as ``*.overlay.opaque`` xattrs or ``.wh..wh..opq`` files.

With ``metacopy=on,redirect_dir=on`` (cowfs.stagers.MetacopyOverlay) a
renamed lower file is an upper file with no data (``*.overlay.metacopy``)
whose bytes are the lower file's, at ``*.overlay.redirect`` (absolute from
the layer's root, or a name in the lower dir of its parent) or else at its
own lower path; a renamed directory is an upper dir whose lower is elsewhere
in the same way. The walk follows both: a metacopy file's ``Touch.lower``
names the live file holding its bytes, and a directory whose lower is not
the live path it stands at shows the lower's entries there, not the live
path's.
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
REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
METACOPY_XATTRS = ("trusted.overlay.metacopy", "user.overlay.metacopy")
WH_PREFIX = ".wh."
# fuse-overlayfs marks an opaque dir with ".wh..wh..opq" (and sometimes ".wh..opq").
WH_OPAQUE = (".wh..wh..opq", ".wh..opq")


class Touch(namedtuple("_Touch", "rel staged st lower", defaults=(None, None))):
    """A path the run touched: ``staged`` is its new copy, or None when
    deleted; ``st`` that copy's lstat when the walk already took it;
    ``lower``, for an entry whose content was never copied up, the live
    path (root-relative) that holds it: a metacopy upper file (``st`` is
    the upper file's, with its own mode and mtime), or a live entry shown
    at a renamed directory's new path (``st`` None: all of it is the live
    entry's)."""

    __slots__ = ()
    rel: str
    staged: str | None
    st: os.stat_result | None
    lower: str | None


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
    """The upper layer is in a form roscoe does not read (a redirect it cannot follow)."""


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _is_metacopy(path: str) -> bool:
    return any(_xattr(path, name) is not None for name in METACOPY_XATTRS)


def _xattr_names(path: str) -> frozenset[str]:
    """The xattr names of ``path``: one call tells most upper files have no overlay mark."""
    try:
        return frozenset(os.listxattr(path, follow_symlinks=False))
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENOENT, errno.EPERM, errno.EACCES):
            return frozenset()
        raise


def _redirected(path: str, rel: str, parent_lower: str | None) -> str | None:
    """The lower path an upper entry's redirect xattr names, or None if it has none."""
    for xname in REDIRECT_XATTRS:
        value = _xattr(path, xname)
        if value is None:
            continue
        target = os.fsdecode(value)
        if target.startswith("/"):
            return target.strip("/")
        if parent_lower is None or "/" in target or target in ("", ".", ".."):
            raise UnsupportedUpper(f"{rel}: {xname}={target!r} has no lower directory to be relative to")
        return _join(parent_lower, target)
    return None


def lower_of(upper: str, rel: str) -> str | None:
    """The root-relative live path holding the bytes of the staged file at
    ``rel`` when the upper layer has none of its own: a metacopy upper
    file's, or, when ``rel`` is not in the upper layer, the lower entry the
    view shows there (below a renamed directory, another path's). None
    when the upper file has its own bytes, or the view has nothing there."""
    path: str | None = upper
    lower: str | None = ""
    parts = rel.split("/")
    for i, name in enumerate(parts):
        if path is not None:
            path = os.path.join(path, name)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                path = None
        if path is None:  # only the lower shows from here down
            if lower is None:
                return None
            lower = _join(lower, name)
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None
        redirect = _redirected(path, "/".join(parts[:i + 1]), lower)
        if redirect is not None:
            lower = redirect
        elif lower is not None and not (stat.S_ISDIR(st.st_mode) and _is_opaque(path)):
            lower = _join(lower, name)
        else:
            lower = None
    if path is None:
        return lower
    if not (stat.S_ISREG(st.st_mode) and _is_metacopy(path)):
        return None
    if lower is None:
        raise UnsupportedUpper(f"{rel}: a metacopy file with no lower file")
    return lower


def touches(upper: str, root: str, *, wh_files: bool) -> Iterator[Touch]:
    """Every path the run touched, read from ``upper``; ``wh_files`` turns on
    fuse-overlayfs's ``.wh.`` naming (never on for the kernel, where a file may
    really be called ``.wh.x``)."""
    yield from _walk(upper, "", root, wh_files, False, "")


def _walk(
    dirpath: str, rel: str, root: str, wh_files: bool, inside_opaque: bool, lower: str | None,
) -> Iterator[Touch]:
    """``lower``: the live path of this directory's lower (None: it has none)."""
    with os.scandir(dirpath) as it:
        items = list(it)
    names = {d.name for d in items}
    # Below an opaque directory nothing of the lower layer shows: every upper
    # directory there hides its live namesake's children too, marked or not.
    opaque = bool(rel) and (
        inside_opaque or _is_opaque(dirpath) or (wh_files and not names.isdisjoint(WH_OPAQUE)))
    if opaque:
        lower = None
    present: set[str] = set()
    hidden: set[str] = set()  # whiteouts: names of the lower that do not show
    for d in items:
        name = d.name
        child = _join(rel, name)
        if wh_files and name in WH_OPAQUE:
            continue
        if wh_files and name.startswith(WH_PREFIX):
            hidden.add(name[len(WH_PREFIX):])
            yield Touch(_join(rel, name[len(WH_PREFIX):]), None)
            continue
        st = d.stat(follow_symlinks=False)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            hidden.add(name)
            yield Touch(child, None)
            continue
        if stat.S_ISREG(st.st_mode) and _is_xattr_whiteout(d.path, st):
            hidden.add(name)
            yield Touch(child, None)
            continue
        present.add(name)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            yield Touch(child, d.path, st)
            continue
        marks = _xattr_names(d.path)
        redirect = _redirected(d.path, child, lower) if not marks.isdisjoint(REDIRECT_XATTRS) else None
        child_lower = redirect if redirect is not None else None if lower is None else _join(lower, name)
        if stat.S_ISREG(st.st_mode):
            data_at = None
            if not marks.isdisjoint(METACOPY_XATTRS):
                if child_lower is None:
                    raise UnsupportedUpper(f"{child}: a metacopy file with no lower file")
                data_at = child_lower
            yield Touch(child, d.path, st, data_at)
            continue
        yield Touch(child, d.path, st)
        yield from _walk(d.path, child, root, wh_files, opaque, child_lower)
    if rel == lower:
        return  # the live path itself is this directory's lower: what the upper lacks shows from it
    # The view here is the upper and, below it, ``lower`` (another live path,
    # or none): the live path's own entries do not show.
    moved_in = set()
    if lower is not None:
        for name in livetree.children(root, lower):
            if name not in present and name not in hidden:
                moved_in.add(name)
                yield from _shown_from(root, _join(lower, name), _join(rel, name))
    for name in livetree.children(root, rel):
        if name not in present and name not in moved_in:
            yield Touch(_join(rel, name), None)


def _shown_from(root: str, src: str, rel: str) -> Iterator[Touch]:
    """The live entry ``src`` and all below it, shown at ``rel`` (under a
    renamed directory): what is there must become what is at ``src``."""
    st = livetree.lstat(root, src)
    if st is None:
        return  # gone from the live tree since it was listed: the view has nothing there either
    yield Touch(rel, os.path.join(root, src), None, src)
    if not stat.S_ISDIR(st.st_mode):
        return
    names = livetree.children(root, src)
    for name in names:
        yield from _shown_from(root, _join(src, name), _join(rel, name))
    for name in livetree.children(root, rel):
        if name not in names:
            yield Touch(_join(rel, name), None)
