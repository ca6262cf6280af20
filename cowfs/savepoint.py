"""Savepoints of a transaction's staged layer: put it back exactly when a run fails.

``Workspace.run(..., savepoint=Savepoint())`` calls ``take`` once the stager
is prepared (before anything is mounted) and ``settle`` after the run: a run
that exited 0 keeps what it staged, any other puts the staged layer back as
it was, byte for byte, whiteouts and overlay xattrs included. A plan uses it
so that an op failing half-way leaves no trace in the transaction.

The copy kept is cheap for overlay backends: the upper layer's directories
are made again and every other entry is hard-linked. That is safe because
the runs that use savepoints (``cowfs.planrun``) never write an existing
inode in place. The copy backend's tree is copied instead (its manifest
fingerprints files by ctime, which a hard link moves), so savepoints cost a
copy of the tree there.

Crash safety: the copy is made under ``NAME.savepoint.tmp`` and renamed into
place; a savepoint left by a process that died is restored by ``heal`` (called
by the next ``take``), and one being dropped is renamed away first.
"""

from __future__ import annotations

import os
import shutil
import stat

from cowfs.stagers import CopyStager, Stager, remove_tree

SUFFIX = ".savepoint"


def layer_paths(stager: Stager) -> list[str]:
    """What holds the staged state of ``stager``."""
    if isinstance(stager, CopyStager):
        return [stager.tree, stager.manifest]
    return [stager.upper]


def _copy_xattrs(src: str, dst: str) -> None:
    for name in os.listxattr(src, follow_symlinks=False):
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)


def clone(src: str, dst: str, *, link: bool) -> None:
    """A copy of the tree ``src`` at ``dst``: new directories (modes, owners,
    mtimes, xattrs kept), every other entry hard-linked (``link``) or copied."""
    st = os.lstat(src)
    if not stat.S_ISDIR(st.st_mode):
        _clone_leaf(src, dst, st, link=link)
        return
    os.mkdir(dst, 0o700)
    try:
        names = os.listdir(src)
    except PermissionError:  # a directory a run left without r or x for its owner
        os.chmod(src, stat.S_IRWXU)
        try:
            names = os.listdir(src)
        finally:
            os.chmod(src, stat.S_IMODE(st.st_mode))
    for name in names:
        clone(os.path.join(src, name), os.path.join(dst, name), link=link)
    _copy_xattrs(src, dst)
    if os.geteuid() == 0:
        os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _clone_leaf(src: str, dst: str, st: os.stat_result, *, link: bool) -> None:
    if link or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        os.link(src, dst, follow_symlinks=False)
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)
    if os.geteuid() == 0:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _discard(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _put_back(path: str) -> None:
    """Replace ``path`` by its savepoint (atomic per path: rename aside first)."""
    saved = path + SUFFIX
    if os.path.lexists(path):
        aside = path + SUFFIX + ".failed"
        _discard(aside)
        os.rename(path, aside)
        _discard(aside)
    if os.path.exists(saved + ".absent"):
        os.unlink(saved + ".absent")
        return
    os.rename(saved, path)


def heal(stager: Stager) -> bool:
    """Restore a savepoint a dead process left; True when there was one."""
    found = False
    for path in layer_paths(stager):
        for stale in (path + SUFFIX + ".tmp", path + SUFFIX + ".drop", path + SUFFIX + ".failed"):
            _discard(stale)
        if os.path.lexists(path + SUFFIX) or os.path.exists(path + SUFFIX + ".absent"):
            _put_back(path)
            found = True
    return found


class Savepoint:
    """The staged layer of one run's stager as it was before the run."""

    def __init__(self) -> None:
        self.stager: Stager | None = None
        self.restored = False

    def take(self, stager: Stager) -> None:
        if self.stager is not None:  # a backend that could not start: nothing ran on it
            self.drop(self.stager)
        heal(stager)
        link = not isinstance(stager, CopyStager)
        for path in layer_paths(stager):
            if not os.path.lexists(path):
                with open(path + SUFFIX + ".absent", "w"):
                    pass
                continue
            tmp = path + SUFFIX + ".tmp"
            clone(path, tmp, link=link)
            os.rename(tmp, path + SUFFIX)
        self.stager = stager

    def settle(self, exit_code: int) -> bool:
        """Keep the run's changes when it exited 0, else put the layer back;
        True when it was put back."""
        if self.stager is None:
            return False
        stager, self.stager = self.stager, None
        if exit_code == 0:
            self.drop(stager)
            return False
        for path in layer_paths(stager):
            _put_back(path)
        self.restored = True
        return True

    @staticmethod
    def drop(stager: Stager) -> None:
        for path in layer_paths(stager):
            saved = path + SUFFIX
            if os.path.exists(saved + ".absent"):
                os.unlink(saved + ".absent")
            elif os.path.lexists(saved):
                os.rename(saved, saved + ".drop")
                _discard(saved + ".drop")
