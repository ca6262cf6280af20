"""One committer per root on this machine, whatever the state dir.

Two ``flock`` locks, taken in this order and held until the commit is done:

- the state dir's, on ``$ROSCOE_HOME/locks/<hash of the root path>.lock``;
  the file names its owner (host.pid), and it still works when the root is
  gone (recovery of a root that was removed or renamed);
- the tree's, on the root directory itself (an ``O_RDONLY|O_NOFOLLOW`` fd).
  The kernel keys it by the directory's inode, so every state dir and every
  user who can read the root contends for the same lock; on a FUSE mount the
  kernel keeps it locally. A sandboxed run sees the overlay at the root's
  path, another inode, so it can neither take this lock nor hold it. Its
  owner, for messages, comes from ``/proc/locks`` (pid, device, inode).

``flock``, not ``fcntl``: a POSIX lock is dropped as soon as its process
closes any fd of the inode, and a commit opens and closes the root's fds all
the time. The kernel releases both when their process dies, so a dead
owner's lock is broken by construction.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import xxhash

from cowfs.durable import DIR_FLAGS
from journal.errors import RootBusy
from journal.faults import NONE, Faults


def lock_path(home: str, root: str) -> str:
    return os.path.join(home, "locks", xxhash.xxh3_64_hexdigest(os.fsencode(root)) + ".lock")


@contextmanager
def root_lock(home: str, root: str, *, wait: float = 30.0, faults: Faults = NONE) -> Iterator[None]:
    """Hold the root's locks, waiting up to ``wait`` seconds for another committer."""
    deadline = time.monotonic() + wait
    path = lock_path(home, root)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _acquire(fd, deadline, lambda: os.pread(fd, 256, 0).decode(errors="replace").strip(), root, faults)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.uname().nodename}.{os.getpid()}\n".encode(), 0)
        tree = _open_tree(root)
        try:
            if tree is not None:
                _acquire(tree, deadline, lambda: tree_owner(tree), root, faults)
            yield
        finally:
            if tree is not None:
                os.close(tree)
    finally:
        os.close(fd)


def _acquire(fd: int, deadline: float, owner: Callable[[], str], root: str, faults: Faults) -> None:
    """``flock`` ``fd`` exclusively, polling until ``deadline``; ``owner()`` names the holder."""
    busy = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not busy:
                busy = True
                faults.checkpoint("lock-busy")
            if time.monotonic() >= deadline:
                raise RootBusy(root=root, owner=owner() or "another process") from None
            time.sleep(0.05)


def _open_tree(root: str) -> int | None:
    """An fd of the root directory to lock, or None when there is none to lock:
    the root cannot be opened (gone, not a directory, a dead FUSE mount:
    nobody can commit to it then, and the state dir's lock covers recovery),
    or its filesystem keeps no ``flock`` (then the state dir's lock is all
    there is, as before roscoe locked the tree)."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        pass
    except OSError:  # ENOLCK, EINVAL, EOPNOTSUPP: no flock on this filesystem
        os.close(fd)
        return None
    return fd


def tree_owner(fd: int) -> str:
    """Who holds the ``flock`` of the directory ``fd``, from ``/proc/locks``."""
    st = os.fstat(fd)
    key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; waiters have "->" after the number.
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, ino = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(ino)) != key:
            continue
        pid = fields[4]
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                return f"pid {pid} ({f.read().strip()})"
        except OSError:
            return f"pid {pid}"
    return ""


def held_by_someone(home: str, root: str) -> bool:
    """True while a live process holds either of the root's locks (a commit in progress)."""
    try:
        fd = os.open(lock_path(home, root), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    if fd is not None and _held(fd):
        return True
    tree = _open_tree(root)
    return tree is not None and _held(tree)


def _held(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
