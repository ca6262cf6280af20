"""One committer per root on this machine: a lock file that names its owner.

The lock is an ``flock`` on ``$ROSCOE_HOME/locks/<hash of the root>.lock``:
the kernel releases it when its process dies, so a dead owner's lock is
broken by construction; the file names the owner (host.pid) for messages.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import xxhash

from cowfs.errors import RoscoeError


class RootBusy(RoscoeError):
    """root {root} is being committed to by {owner}; try again when it is done"""

    error_kind = "busy"
    path_fields = ("root",)


def lock_path(home: str, root: str) -> str:
    return os.path.join(home, "locks", xxhash.xxh3_64_hexdigest(os.fsencode(root)) + ".lock")


@contextmanager
def root_lock(home: str, root: str, *, wait: float = 30.0) -> Iterator[None]:
    """Hold the root's lock, waiting up to ``wait`` seconds for another committer."""
    path = lock_path(home, root)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    owner = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
                    raise RootBusy(root=root, owner=owner) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.uname().nodename}.{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def held_by_someone(home: str, root: str) -> bool:
    """True while a live process holds the root's lock (a commit in progress)."""
    path = lock_path(home, root)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
