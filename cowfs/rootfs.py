"""A run over an unpacked container image (``[run] rootfs``) instead of the host's ``/``.

cowfs.sandbox binds the image read-only as the run's ``/`` (``--ro-bind
ROOTFS /`` in place of ``--ro-bind / /``) and builds the rest of the sandbox
over it as for a run over the host: the transaction's overlay at the root's
own path, a private ``/dev``, ``/proc`` with runc's masked and read-only
paths, the host's ``/sys`` read-only with its masked paths, writable binds,
seccomp, capabilities, hidden paths. ``/tmp`` starts empty: the host's
``/tmp`` is not the image's. A host path outside the root, ``/tmp``, the
kernel filesystems and the writable binds is not in the run at all, unless
it is inside the image directory (``shown_at``).

Mount points. bwrap makes a mount point that is missing with ``mkdir``
inside the new root, which fails on the read-only image (EROFS). ``check``
refuses such an image before the run starts, naming the missing directory,
rather than put a writable layer under the image (a tmpfs, or an overlay
with a tmpfs upper) to make them in. That is the safer choice: the run's
``/`` stays exactly the directory the operator unpacked, read-only, with
nothing of roscoe's own in it and no extra mount that could fail where
overlayfs refuses the image's filesystem as a lower, or leave a writable
layer behind a missed remount. The operator makes the mount points once
(``mkdir -p ROOTFS/mnt/cases``, or ``RUN mkdir -p`` in the image's
Dockerfile); ``docker export`` already has ``/dev``, ``/proc``, ``/sys`` and
``/tmp``. A mount point must be reached without symlinks: a symlink in the
image resolves against the image in the run, not where the host looked.
"""

from __future__ import annotations

import os
import stat

from cowfs.errors import UsageError
from cowfs.paths import under

# Where the sandbox mounts its own filesystems over the image.
MOUNT_POINTS = ("/dev", "/proc", "/sys", "/tmp")
SHELL = "/bin/sh"  # the sandbox's shim runs with the image's shell
_HOPS = 40  # symlinks followed in one lookup, as the kernel's MAXSYMLINKS


def check(rootfs: str, root: str, writable: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse (exit 2) an image a run over ``root`` cannot use: one that
    overlaps the root (the live tree would show beside the overlay, past
    ``--hide``), one without a shell, or without a mount point the sandbox
    needs: MOUNT_POINTS, the root's path (unless under ``/tmp``, which is
    the run's own) and each ``writable`` path."""
    real = os.path.realpath(rootfs)
    if not os.path.isdir(real):
        raise UsageError(detail=f"[run] rootfs {rootfs}: not a directory")
    if under(root, real) or under(real, root):
        raise UsageError(detail=f"[run] rootfs {rootfs}: overlaps the root {root}")
    shell = lookup(real, SHELL)
    if shell is None or not os.path.isfile(shell) or not os.access(shell, os.X_OK):
        raise UsageError(detail=f"[run] rootfs {rootfs}: has no {SHELL} (the sandbox starts the command with it)")
    wanted = [(p, True) for p in MOUNT_POINTS]
    if not under(root, "/tmp"):
        wanted.append((root, True))
    for given in writable:
        path = os.path.realpath(given)
        if not under(path, "/tmp"):
            wanted.append((path, os.path.isdir(path)))
    for path, is_dir in wanted:
        inside = real + path
        kind = "directory" if is_dir else "file"
        if os.path.realpath(inside) != inside or not (os.path.isdir if is_dir else os.path.isfile)(inside):
            raise UsageError(detail=(
                f"[run] rootfs {rootfs}: has no {kind} {path} to mount on (a symlink will not do); "
                f"create {inside}"
            ))


def shown_at(path: str, rootfs: str) -> str | None:
    """Where a run over ``rootfs`` sees the host's ``path`` through the image
    (the path inside it), or None when the image does not hold it."""
    real = os.path.realpath(rootfs)
    if not under(path, real):
        return None
    return "/" + os.path.relpath(path, real) if path != real else "/"


def lookup(rootfs: str, path: str) -> str | None:
    """The host path of what the absolute ``path`` names in a run over
    ``rootfs``: symlinks resolved inside the image, as the run resolves
    them. None when it does not exist (or loops)."""
    parts = [p for p in path.split("/") if p]
    done = ""  # the image path resolved so far ("": its /)
    hops = _HOPS
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            done = done.rsplit("/", 1)[0]
            continue
        host = rootfs + done + "/" + name
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if not stat.S_ISLNK(st.st_mode):
            done += "/" + name
            continue
        hops -= 1
        if hops < 0:
            return None
        target = os.readlink(host)
        if target.startswith("/"):
            done = ""
        parts = [p for p in target.split("/") if p] + parts
    return rootfs + done if done else rootfs
