"""Staging backends: how a transaction's staged layer is presented at the root.

Each ``Stager`` owns ``$ROSCOE_HOME/tx/ID/`` and knows three things: the
bubblewrap arguments that mount its view at the root's own path, what to set
up before and tear down after a run, and which paths a run touched.

- ``kernel``: kernel overlayfs through ``bwrap --overlay`` (root or user namespace).
- ``kernel-bindfs``: kernel overlayfs over a bindfs view of the root without
  xattrs, for lowers the kernel refuses (FUSE filesystems whose xattr lookups
  answer EIO).
- ``kernel-metacopy``: kernel overlayfs that roscoe mounts itself on ``mnt/``
  (bwrap's ``--overlay`` takes no options) with ``metacopy=on,redirect_dir=on``,
  and binds at the root, for a bucket target as root: renaming a file
  copies up its metadata only, never its bytes, over the live root or a
  bindfs view of it as above.
- ``fuse``: fuse-overlayfs mounted on ``mnt/`` and bound at the root; only when
  forced, for its known rename bugs (see ``FuseOverlay``).
- ``copy``: a full copy of the root bound at the root; the last resort.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator

from cowfs import upper as upperlayer
from cowfs.errors import NoBackend, StateDirError
from cowfs.upper import Touch

# Tried in this order on a transaction's first run; "fuse" only when forced.
ORDER = ("kernel", "kernel-bindfs", "copy")


def candidates(*, bucket: bool) -> tuple[str, ...]:
    """The backends a transaction's first run tries, in order: for a bucket
    target, as root, first the overlay whose renames copy no bytes (its
    commit reads a moved file's bytes from the live tree, which only a
    bucket commit, keeping every new byte before it writes any, can do)."""
    if bucket and os.geteuid() == 0:
        return ("kernel-metacopy", *ORDER)
    return ORDER


def remove_tree(path: str) -> None:
    """Remove a staging dir, including overlay work dirs left with mode 000
    (made accessible first, when removing it as it is was refused)."""
    if not os.path.lexists(path):
        return
    import shutil

    try:
        shutil.rmtree(path)
        return
    except PermissionError:
        pass
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IRWXU)
    shutil.rmtree(path)


# What an abort leaves of a transaction's staged layer until the abort is
# journaled: the layer's own directory, renamed and emptied. Its presence says
# the staged changes are gone (an open transaction whose layer is merely
# absent has staged nothing).
DISCARDED = "discarded"


# Where backends mount inside a staging dir: an overlay (kernel or fuse-overlayfs),
# then bindfs's view of the root that may be its lower (so unmounted after it).
MOUNTS = ("mnt", "lower")


def discarded(tx_dir: str) -> bool:
    return os.path.isdir(os.path.join(tx_dir, DISCARDED))


def discard_staging(tx_dir: str) -> None:
    """Remove everything a transaction staged, needing no free byte or inode
    (an abort runs it first, to give the space back even on a full disk):
    the FUSE mounts of any backend are taken down, the staged layer is
    renamed to DISCARDED and emptied, and every other entry but the lock is
    removed. The caller holds the transaction's lock."""
    if not os.path.isdir(tx_dir):
        return
    for name in MOUNTS:
        _fuse_unmount(os.path.join(tx_dir, name))
    refuse_mounts(tx_dir)
    mark = os.path.join(tx_dir, DISCARDED)
    if not os.path.isdir(mark):
        for layer in ("upper", "tree"):
            if os.path.isdir(os.path.join(tx_dir, layer)):
                os.rename(os.path.join(tx_dir, layer), mark)
                break
    if os.path.isdir(mark):
        for name in os.listdir(mark):
            _remove(os.path.join(mark, name))
    for name in os.listdir(tx_dir):
        if name not in ("lock", DISCARDED):
            _remove(os.path.join(tx_dir, name))


def refuse_mounts(tx_dir: str) -> None:
    """Fail before removing a staging dir through a mount left in it (a bindfs
    view of the root would take the live tree with it)."""
    for name in MOUNTS:
        path = os.path.join(tx_dir, name)
        if os.path.ismount(path):
            raise StateDirError(home=path, reason="still mounted after a run; unmount it, then try again")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
    else:
        os.unlink(path)


class Stager(ABC):
    name = "base"

    def __init__(self, tx_dir: str, root: str) -> None:
        self.tx_dir = tx_dir
        self.root = root

    @property
    def upper(self) -> str:
        return os.path.join(self.tx_dir, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.tx_dir, "work")

    def prepare(self) -> None:
        os.makedirs(self.upper, mode=0o755, exist_ok=True)
        os.makedirs(self.work, mode=0o700, exist_ok=True)

    def staged_path(self, rel: str) -> str:
        """Where the staged copy of ``rel`` lives (where its bytes are read)."""
        return os.path.join(self.upper, rel)

    def bytes_from(self, rel: str) -> str | None:
        """The live path (root-relative) whose bytes the staged file ``rel``
        has when staging holds none of its own; None when it holds them."""
        return None

    @abstractmethod
    def mount_args(self) -> list[str]:
        """bwrap arguments that present the staged view at the root's path."""

    def before_run(self) -> None:
        """Set up what must exist outside the sandbox for a run."""

    def after_run(self) -> None:
        """Tear down what ``before_run`` set up; must be safe to call twice."""

    @abstractmethod
    def touches(self) -> Iterator[Touch]:
        """Every path the runs so far touched."""

    def discard(self) -> None:
        self.after_run()
        remove_tree(self.upper)
        remove_tree(self.work)
        for mountpoint in ("lower", "mnt"):
            path = os.path.join(self.tx_dir, mountpoint)
            if os.path.isdir(path) and not os.path.ismount(path):
                os.rmdir(path)


class KernelOverlay(Stager):
    name = "kernel"

    @property
    def lower(self) -> str:
        return self.root

    def mount_args(self) -> list[str]:
        return ["--overlay-src", self.lower, "--overlay", self.upper, self.work, self.root]

    def touches(self) -> Iterator[Touch]:
        return upperlayer.touches(str(self.upper), self.root, wh_files=False)


def _fuse_mount(argv: list[str], mnt: str, root: str) -> None:
    """Run a FUSE daemon that mounts on ``mnt``; NoBackend if it cannot."""
    import shutil
    import subprocess

    if shutil.which(argv[0]) is None:
        raise NoBackend(root=root, detail=f"{argv[0]} is not installed")
    _fuse_unmount(mnt)  # a run killed before its teardown may have left the mount
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NoBackend(root=root, detail=f"{argv[0]}: {done.stderr.strip()}")


def _fuse_unmount(mnt: str) -> None:
    if not os.path.ismount(mnt):
        return
    import subprocess

    unmount = ["umount", mnt] if os.geteuid() == 0 else ["fusermount3", "-u", mnt]
    subprocess.run(unmount, capture_output=True, check=False)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, check=False)


class BindfsKernelOverlay(KernelOverlay):
    """Kernel overlayfs over a bindfs view of the root that answers no xattrs.

    A FUSE lower such as gcsfuse or rclone answers the overlay's xattr lookups
    with EIO; bindfs --xattr-none turns them into ENOTSUP, which the kernel
    accepts, and the upper layer keeps kernel overlayfs's exact semantics.
    """

    name = "kernel-bindfs"

    @property
    def lower(self) -> str:
        return os.path.join(self.tx_dir, "lower")

    def before_run(self) -> None:
        os.makedirs(self.lower, mode=0o700, exist_ok=True)
        # As root, bindfs adds allow_other (the sandbox may be another user
        # namespace); an ordinary user may not, and needs no other user to see it.
        extra = [] if os.geteuid() == 0 else ["--no-allow-other"]
        argv = ["bindfs", "--xattr-none", *extra, "-o", "ro", self.root, self.lower]
        _fuse_mount(argv, self.lower, self.root)

    def after_run(self) -> None:
        _fuse_unmount(self.lower)


class MountedOverlay(Stager):
    """An overlay roscoe mounts itself on ``mnt/`` (with options bwrap's
    ``--overlay`` cannot pass), bound at the root for the run."""

    @property
    def mnt(self) -> str:
        return os.path.join(self.tx_dir, "mnt")

    def prepare(self) -> None:
        super().prepare()
        os.makedirs(self.mnt, mode=0o700, exist_ok=True)

    def mount_args(self) -> list[str]:
        return ["--bind", self.mnt, self.root]


class MetacopyOverlay(MountedOverlay):
    """Kernel overlayfs with ``metacopy=on,redirect_dir=on``, mounted by
    roscoe on ``mnt/`` and bound at the root (bwrap's ``--overlay`` cannot
    take mount options). A rename of a live file, or a chmod or touch of
    one, copies up its metadata only: the upper file has no data
    (``*.overlay.metacopy``) and names where its bytes are
    (``*.overlay.redirect``). ``staged_path`` answers that live path for
    such a file, so whatever reads a staged file's bytes reads the live
    file's, never the empty upper one. A lower whose xattr lookups answer
    EIO (rclone) is seen through bindfs --xattr-none, as ``kernel-bindfs``
    does; one answering ENOTSUP or ENOSYS (gcsfuse) is taken as it is.
    Root only: a user namespace mount of overlayfs has no redirect_dir."""

    name = "kernel-metacopy"
    OPTIONS = "metacopy=on,redirect_dir=on,index=off,xino=off"

    @property
    def bindfs(self) -> str:
        return os.path.join(self.tx_dir, "lower")

    def before_run(self) -> None:
        import subprocess

        if os.geteuid() != 0:
            raise NoBackend(root=self.root, detail="metacopy overlays need root")
        if any(ch in self.root + self.tx_dir for ch in ",:\\"):
            raise NoBackend(root=self.root, detail="overlay options cannot take a path with ',' ':' or '\\'")
        self.prepare()
        _fuse_unmount(self.mnt)  # a run killed before its teardown may have left the mounts
        lower = self.root
        if _xattrs_fail(self.root):
            os.makedirs(self.bindfs, mode=0o700, exist_ok=True)
            _fuse_mount(["bindfs", "--xattr-none", "-o", "ro", self.root, self.bindfs], self.bindfs, self.root)
            lower = self.bindfs
        opts = f"lowerdir={lower},upperdir={self.upper},workdir={self.work},{self.OPTIONS}"
        done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, self.mnt],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            _fuse_unmount(self.bindfs)
            raise NoBackend(root=self.root, detail=f"overlay with {self.OPTIONS}: {done.stderr.strip()}")

    def after_run(self) -> None:
        _fuse_unmount(self.mnt)
        _fuse_unmount(self.bindfs)

    def touches(self) -> Iterator[Touch]:
        return upperlayer.touches(str(self.upper), self.root, wh_files=False)

    def bytes_from(self, rel: str) -> str | None:
        try:
            return upperlayer.lower_of(self.upper, rel)
        except OSError:  # nothing staged there: the callers find that out themselves
            return None

    def staged_path(self, rel: str) -> str:
        """Where the staged bytes of ``rel`` are: the upper file, or for a
        file whose data was never copied up, the live file holding them."""
        lower = self.bytes_from(rel)
        return os.path.join(self.upper, rel) if lower is None else os.path.join(self.root, lower)


def _xattrs_fail(root: str) -> bool:
    """Whether the lower ``root`` answers the overlay's xattr lookups with
    an error the kernel refuses (rclone's EIO, on files only) rather than
    none, ENOTSUP or ENOSYS (gcsfuse). The first file found within three
    levels tells; with none found, any FUSE lower is taken to fail."""
    from cowfs import durable

    found = _first_file(root, 3)
    if found is None:
        return durable.is_fuse(root)
    try:
        os.getxattr(found, "trusted.overlay.metacopy", follow_symlinks=False)
    except OSError as e:
        return e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.ENOSYS)
    return False


def _first_file(path: str, depth: int) -> str | None:
    dirs = []
    try:
        with os.scandir(path) as it:
            for d in it:
                if d.is_file(follow_symlinks=False):
                    return d.path
                if d.is_dir(follow_symlinks=False):
                    dirs.append(d.path)
    except OSError:
        return None
    if depth > 1:
        for sub in dirs:
            found = _first_file(sub, depth - 1)
            if found is not None:
                return found
    return None


class FuseOverlay(MountedOverlay):
    """fuse-overlayfs on ``mnt/``, bound at the root. Only when asked for
    (ROSCOE_BACKEND=fuse): Debian's 1.10 loses deletions after some renames
    (a dir made where one was deleted, then renamed; a rename over a lower
    file, then deleted), so it is never chosen automatically."""

    name = "fuse"

    def before_run(self) -> None:
        if any(ch in self.root + self.tx_dir for ch in ",:\\"):
            raise NoBackend(root=self.root, detail="fuse-overlayfs cannot take a path with ',' ':' or '\\'")
        self.prepare()
        opts = f"lowerdir={self.root},upperdir={self.upper},workdir={self.work}"
        _fuse_mount(["fuse-overlayfs", "-o", opts, self.mnt], self.mnt, self.root)

    def after_run(self) -> None:
        _fuse_unmount(self.mnt)

    def touches(self) -> Iterator[Touch]:
        return upperlayer.touches(str(self.upper), self.root, wh_files=True)


def _signature(st: os.stat_result) -> list[int]:
    # ctime moves on every write, chmod and rename, and no program can set it back.
    return [st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_mode]


class CopyStager(Stager):
    """A full copy of the root, with a manifest of what each copied path looked like."""

    name = "copy"

    @property
    def tree(self) -> str:
        return os.path.join(self.tx_dir, "tree")

    @property
    def manifest(self) -> str:
        return os.path.join(self.tx_dir, "manifest.json")

    def prepare(self) -> None:
        if os.path.exists(self.manifest):
            return
        import subprocess

        remove_tree(self.tree)
        done = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", self.root, self.tree],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise NoBackend(root=self.root, detail=f"copy failed: {done.stderr.strip()}")
        signatures = {rel: _signature(st) for rel, st in self._walk()}
        tmp = self.manifest + ".tmp"
        with open(tmp, "w") as f:
            json.dump(signatures, f, ensure_ascii=True)
        os.replace(tmp, self.manifest)

    def staged_path(self, rel: str) -> str:
        return os.path.join(self.tree, rel)

    def mount_args(self) -> list[str]:
        return ["--bind", self.tree, self.root]

    def before_run(self) -> None:
        self.prepare()

    def _walk(self) -> Iterator[tuple[str, os.stat_result]]:
        base = self.tree
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(os.path.join(base, rel) if rel else base) as it:
                for d in it:
                    child = f"{rel}/{d.name}" if rel else d.name
                    st = d.stat(follow_symlinks=False)
                    yield child, st
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(child)

    def touches(self) -> Iterator[Touch]:
        if not os.path.exists(self.manifest):
            return
        with open(self.manifest) as f:
            before: dict[str, list[int]] = json.load(f)
        seen: set[str] = set()
        for rel, st in self._walk():
            seen.add(rel)
            if before.get(rel) != _signature(st):
                yield Touch(rel, os.path.join(self.tree, rel))
        for rel in sorted(set(before) - seen):
            parent = rel.rpartition("/")[0]
            if not parent or parent in seen:
                yield Touch(rel, None)

    def discard(self) -> None:
        remove_tree(self.tree)
        if os.path.exists(self.manifest):
            os.unlink(self.manifest)
        super().discard()


STAGERS: dict[str, type[Stager]] = {
    "kernel": KernelOverlay, "kernel-bindfs": BindfsKernelOverlay, "kernel-metacopy": MetacopyOverlay,
    "fuse": FuseOverlay, "copy": CopyStager,
}


def stager_for(name: str, tx_dir: str, root: str) -> Stager:
    return STAGERS[name](tx_dir, root)
