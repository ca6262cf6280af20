"""Paths a run may not see: ``tx run --hide PATH`` and the config's ``[run] hide``.

A hidden path is a plain path (no globs: a mount needs a concrete path),
relative to the root or absolute. ``resolve`` turns the given paths into
real ones for one run, following symlinks as the live tree has them now: a
path inside the root is kept relative to it, one that leads outside is
hidden where it leads.

``masks`` gives the bwrap arguments that hide them: an empty read-only tmpfs
over a directory, an empty read-only file over anything else. The run can
neither list nor read what was there, nor write into it (EROFS), nor remove
or rename it (EBUSY).

A hidden path inside the root that the staged view does not show (it does
not exist yet, or an earlier run of the transaction deleted it) cannot be
mounted over without making it. ``Guard`` keeps such a path as it is in the
staging layer instead: before the run it notes (and hard-links aside) what
the layer holds there, after the run it removes whatever the run put there
and puts the old entry back, so nothing the run wrote under a hidden path is
ever staged; the files removed are reported as discarded. The guard's notes
live in the transaction's dir until the run is settled, so a run killed
before then is settled by the next command that opens the staged layer
(``heal``).
"""

from __future__ import annotations

import json
import os
import stat
from collections import namedtuple
from collections.abc import Iterable

from cowfs.errors import UsageError
from cowfs.paths import under

KERNEL_FILESYSTEMS = ("/proc", "/dev", "/sys")
GUARD = "hide-guard.json"
KEPT = "hide-kept"


class Hidden(namedtuple("_Hidden", "root inside outside")):
    """The hidden paths of one run: ``inside`` relative to ``root``,
    ``outside`` absolute; both real (no symlink in them), sorted, none below
    another."""

    __slots__ = ()
    root: str
    inside: tuple[str, ...]
    outside: tuple[str, ...]

    def paths(self) -> list[str]:
        """Every hidden path, absolute, sorted: what the audit trail records."""
        return sorted([os.path.join(self.root, rel) for rel in self.inside] + list(self.outside))

    def merge(self, other: Hidden) -> Hidden:
        return Hidden(self.root, _outermost(set(self.inside) | set(other.inside)),
                      _outermost(set(self.outside) | set(other.outside)))


def resolve(given: Iterable[str], root: str, *, option: str = "--hide") -> Hidden:
    """The real paths that ``given`` names for a run over ``root`` (a real
    path). A path that is the root, contains it, or is on a kernel
    filesystem is a UsageError naming ``option``."""
    inside: set[str] = set()
    outside: set[str] = set()
    for path in given:
        shown = f"{option} {path}"
        if not isinstance(path, str) or not path or "\0" in path:
            raise UsageError(detail=f"{option} {path!r}: expected a path")
        if "*" in path or "?" in path:
            raise UsageError(detail=f"{shown}: a plain path is expected, not a glob")
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))
        if not os.path.isabs(path) and not under(full, root):
            raise UsageError(detail=f"{shown}: leaves the root {root}")
        real = os.path.realpath(full)
        if under(root, real):
            what = "is the root" if real == root else "contains the root"
            raise UsageError(detail=f"{shown}: {what} {root}; hide paths inside it")
        if any(under(real, k) for k in KERNEL_FILESYSTEMS):
            raise UsageError(detail=f"{shown}: {real} is on a kernel filesystem")
        if under(real, root):
            inside.add(os.path.relpath(real, root))
        else:
            outside.add(real)
    return Hidden(root, _outermost(inside), _outermost(outside))


def _outermost(paths: set[str]) -> tuple[str, ...]:
    """``paths`` sorted, without those inside another (its mask covers them)."""
    kept: list[str] = []
    for path in sorted(paths, key=lambda p: (p.count("/"), p)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return tuple(sorted(kept))


def check_writable(hidden: Hidden, writable: Iterable[str]) -> None:
    """A --writable path inside a hidden one would be hidden too: refused."""
    for given in writable:
        real = os.path.realpath(given)
        for path in hidden.paths():
            if under(real, path):
                raise UsageError(detail=f"--writable {given}: is inside the hidden path {path}")


def missing_outside(hidden: Hidden) -> list[str]:
    """The hidden paths outside the root that do not exist: nothing to hide."""
    return [p for p in hidden.outside if not os.path.lexists(p)]


# -- what the staged view shows ------------------------------------------------------

DIR, OTHER = "dir", "other"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _whiteout(path: str, st: os.stat_result) -> bool:
    from cowfs.upper import _is_xattr_whiteout

    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return stat.S_ISREG(st.st_mode) and _is_xattr_whiteout(path, st)


def _opaque(path: str, wh_files: bool) -> bool:
    from cowfs.upper import WH_OPAQUE, _is_opaque

    if _is_opaque(path):
        return True
    return wh_files and any(os.path.lexists(os.path.join(path, n)) for n in WH_OPAQUE)


def _xattr_of(path: str, name: str) -> bool:
    from cowfs.upper import _xattr

    return _xattr(path, name) is not None


def _kind(st: os.stat_result) -> str | None:
    if stat.S_ISDIR(st.st_mode):
        return DIR
    if stat.S_ISLNK(st.st_mode):
        return None  # a mount would follow it: nothing of the live path shows there
    return OTHER


def shown(layout: Layout, rel: str) -> str | None:
    """What the staged view shows at ``rel``: DIR, OTHER, or None (nothing, or
    a symlink, or a path through a symlink or a file)."""
    parts = rel.split("/")
    if layout.tree is not None:  # a full copy: the view itself
        for i in range(1, len(parts)):
            st = _lstat(os.path.join(layout.tree, *parts[:i]))
            if st is None or not stat.S_ISDIR(st.st_mode):
                return None
        st = _lstat(os.path.join(layout.tree, rel))
        return None if st is None else _kind(st)
    from cowfs.upper import REDIRECT_XATTRS, _redirected

    lower: str | None = ""  # the live path that shows below at this depth (a renamed dir's is elsewhere)
    kind: str | None = None
    for i, name in enumerate(parts):
        prefix = "/".join(parts[:i + 1])
        up = os.path.join(layout.upper, prefix)
        if layout.wh_files and os.path.lexists(os.path.join(layout.upper, *parts[:i], ".wh." + name)):
            return None
        st = _lstat(up)
        if st is not None and _whiteout(up, st):
            return None
        below = None if lower is None else f"{lower}/{name}" if lower else name
        if st is None:
            if below is None:
                return None
            st = _lstat(os.path.join(layout.root, below))
            if st is None:
                return None
            lower = below
        elif stat.S_ISDIR(st.st_mode) and _opaque(up, layout.wh_files):
            lower = None
        elif stat.S_ISDIR(st.st_mode) and any(_xattr_of(up, x) for x in REDIRECT_XATTRS):
            lower = _redirected(up, prefix, lower)
        else:
            lower = below
        kind = _kind(st)
        if kind != DIR and i < len(parts) - 1:
            return None
    return kind


class Layout(namedtuple("_Layout", "root upper tree wh_files")):
    """Where a stager keeps the staged layer: an overlay's ``upper`` over the
    live ``root`` (``wh_files``: fuse-overlayfs's ``.wh.`` names), or the
    full copy ``tree``."""

    __slots__ = ()
    root: str
    upper: str
    tree: str | None
    wh_files: bool

    @property
    def base(self) -> str:
        return self.tree if self.tree is not None else self.upper

    def entries(self, rel: str) -> list[str]:
        """The layer's entries that say what the view has at ``rel``."""
        if self.tree is not None:
            return [os.path.join(self.tree, rel)]
        found = [os.path.join(self.upper, rel)]
        if self.wh_files:
            parent, _, name = rel.rpartition("/")
            found.append(os.path.join(self.upper, parent, ".wh." + name))
        return found


def masks(hidden: Hidden, layout: Layout | None) -> tuple[list[tuple[str, bool]], list[str]]:
    """The mounts that hide what ``hidden`` names, for cowfs.sandbox.run (a
    path, and whether it is a directory, to get an empty read-only dir, or
    else an empty read-only file), and the hidden paths inside the root that
    the view does not show (for ``Guard``)."""
    found: list[tuple[str, bool]] = []
    absent: list[str] = []
    for rel in hidden.inside:
        kind = shown(layout, rel) if layout is not None else None
        if kind is None:
            absent.append(rel)
        else:
            found.append((os.path.join(hidden.root, rel), kind == DIR))
    for path in hidden.outside:
        try:
            st = os.stat(path)
        except OSError:
            continue  # nothing there to hide (and nothing the run could make: it is read-only)
        found.append((path, stat.S_ISDIR(st.st_mode)))
    return found, absent


# -- the guard on hidden paths the view does not show ---------------------------------


class Guard:
    """Keeps what the staging layer holds at hidden paths that do not show,
    so that the run cannot stage anything there (see the module's docstring)."""

    def __init__(self, tx_dir: str) -> None:
        self.tx_dir = tx_dir
        self.notes = os.path.join(tx_dir, GUARD)
        self.kept = os.path.join(tx_dir, KEPT)

    def take(self, layout: Layout, absent: list[str]) -> None:
        heal(self.tx_dir)
        if not absent:
            return
        entries = []
        for rel in absent:
            for entry in layout.entries(rel):
                if not _in_layer(layout.base, entry):
                    continue  # below a symlink or a file of the layer: nothing can be staged there
                kept = None
                if os.path.lexists(entry):
                    os.makedirs(self.kept, mode=0o700, exist_ok=True)
                    kept = os.path.join(self.kept, str(len(entries)))
                    os.link(entry, kept, follow_symlinks=False)
                entries.append({"base": layout.base, "rel": rel, "entry": entry, "kept": kept})
        tmp = self.notes + ".tmp"
        with open(tmp, "w") as f:
            json.dump(entries, f, ensure_ascii=True)
        os.replace(tmp, self.notes)

    def settle(self) -> list[str]:
        """Put the guarded paths back; the files the run had put there
        (root-relative), which are gone now."""
        return heal(self.tx_dir)


def heal(tx_dir: str) -> list[str]:
    """Settle a guard left in ``tx_dir`` (by this run, or one that was killed)."""
    notes = os.path.join(tx_dir, GUARD)
    if not os.path.exists(notes):
        return []
    claimed = f"{notes}.{os.getpid()}"
    try:
        os.rename(notes, claimed)  # one settler, even among concurrent readers
    except FileNotFoundError:
        return []
    with open(claimed) as f:
        entries = json.load(f)
    dropped: list[str] = []
    for e in entries:
        entry, kept = e["entry"], e["kept"]
        if not _in_layer(e["base"], entry):
            # the run made a parent a symlink (never followed: it may lead
            # out of the layer) or removed it: the view has nothing there
            if kept is not None:
                os.unlink(kept)
            continue
        now = _lstat(entry)
        if kept is not None:
            before = os.lstat(kept)
            if now is not None and (now.st_ino, now.st_dev) == (before.st_ino, before.st_dev):
                os.unlink(kept)
                continue
        if now is not None:
            dropped += _files(entry, e["rel"], now)
            _remove(entry, now)
        if kept is not None:
            if os.path.isdir(os.path.dirname(entry)):  # else the run removed a parent: nothing to put back
                os.link(kept, entry, follow_symlinks=False)
            os.unlink(kept)
    os.unlink(claimed)
    try:
        os.rmdir(os.path.join(tx_dir, KEPT))
    except OSError:
        pass
    return sorted(set(dropped))


def _in_layer(base: str, entry: str) -> bool:
    """Whether every parent of ``entry`` below ``base`` that exists is a
    directory (not a symlink): then ``entry`` names a path of the layer."""
    path = base
    for name in os.path.relpath(os.path.dirname(entry), base).split("/"):
        if name == ".":
            continue
        path = os.path.join(path, name)
        st = _lstat(path)
        if st is None:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


def _files(path: str, rel: str, st: os.stat_result) -> list[str]:
    """The non-directories at and under ``path`` (whiteouts aside), as ``rel``/..."""
    if not stat.S_ISDIR(st.st_mode):
        return [] if _whiteout(path, st) or os.path.basename(path).startswith(".wh.") else [rel]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            child = os.lstat(full)
            if not _whiteout(full, child) and not name.startswith(".wh."):
                found.append(os.path.join(rel, os.path.relpath(full, path)))
    return found


def _remove(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        from cowfs.stagers import remove_tree

        remove_tree(path)
    else:
        os.unlink(path)


def layout_of(stager: object) -> Layout:
    """The Layout of a cowfs.stagers.Stager."""
    from cowfs.stagers import CopyStager, FuseOverlay, Stager

    assert isinstance(stager, Stager)
    if isinstance(stager, CopyStager):
        return Layout(stager.root, stager.upper, stager.tree, False)
    return Layout(stager.root, stager.upper, None, isinstance(stager, FuseOverlay))
