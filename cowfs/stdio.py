"""The file descriptors a run gets: its stdin, stdout and stderr, the ones
its caller names, and nothing else of roscoe's.

A descriptor is a way out of the sandbox: reopened through
``/proc/self/fd/N``, one that names a regular file or a directory opens that
file again on the host's own mount, outside the run's mount namespace and
with any access mode (a stdin of ``< live/a.txt`` would be rewritten in
place; a directory fd is an ``openat`` anywhere below it). So:

- every descriptor roscoe inherited above 2 is made close-on-exec before the
  sandbox starts, except those named in ``pass_fds``;
- a stdin, stdout or stderr that is a regular file, a directory or a block
  device reaches the run as a pipe that a thread of roscoe's pumps from or to
  it: the same bytes, and nothing to reopen. A terminal, a pipe, a socket or
  ``/dev/null`` is handed over as it is (reopened, it is the same thing).
"""

from __future__ import annotations

import os
import stat

_CHUNK = 1 << 16


def _reopenable(fd: int) -> bool:
    """Whether ``fd`` names something that reopening reaches outside the run."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False  # closed: the run gets it closed
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISBLK(mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _feed(source: int, pipe: int, offset: int) -> None:
    """Copy ``source`` from ``offset`` into ``pipe`` until EOF, or until the
    run closes its end. pread: the caller's offset stays put, so a sandbox
    that fails to start (and is tried again) has lost nothing of it."""
    try:
        while chunk := os.pread(source, _CHUNK, offset):
            offset += len(chunk)
            _write_all(pipe, chunk)
    except OSError:
        pass  # EPIPE: the run is done reading; EISDIR: a directory reads as empty
    finally:
        os.close(pipe)


def _drain(pipe: int, target: int) -> None:
    """Copy ``pipe`` into ``target`` until every writer in the run is gone. If
    the caller's file fails (ENOSPC, EIO), the rest is read and dropped: the
    run goes on as it would have, and is not killed by SIGPIPE."""
    failed = False
    try:
        while chunk := os.read(pipe, _CHUNK):
            if not failed:
                try:
                    _write_all(target, chunk)
                except OSError:
                    failed = True
    finally:
        os.close(pipe)


class Stdio:
    """The run's fds 0, 1 and 2 (``fds``) and the threads pumping them."""

    def __init__(self, pass_fds: tuple[int, ...] = (), sources: tuple[int, int, int] = (0, 1, 2)) -> None:
        """``sources``: roscoe's fds that become the run's 0, 1 and 2."""
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in pass_fds:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    continue  # the listing's own fd, already closed
        self.fds = list(sources)
        self._child_ends: list[int] = []
        self._pumps: list[tuple] = []  # (function, args): roscoe's pipe end is in args
        for target, fd in enumerate(sources):
            if not _reopenable(fd):
                continue
            read_end, write_end = os.pipe()  # close-on-exec; the spawn dups the child's end
            if target == 0:
                self.fds[0] = read_end
                try:
                    offset = os.lseek(fd, 0, os.SEEK_CUR)
                except OSError:
                    offset = 0
                self._pumps.append((_feed, (fd, write_end, offset)))
            else:
                self.fds[target] = write_end
                self._pumps.append((_drain, (read_end, fd)))
            self._child_ends.append(self.fds[target])
        self._threads: list = []  # threading.Thread, imported only when a pump runs

    def started(self) -> None:
        """The run holds its ends now: drop ours (so EOF and EPIPE can come) and pump."""
        self._close_child_ends()
        if not self._pumps:
            return
        import threading  # 1 ms of start-up: only for the runs that need a pump

        for work, args in self._pumps:
            thread = threading.Thread(target=work, args=args, daemon=True, name="roscoe-stdio")
            thread.start()
            self._threads.append(thread)
        self._pumps = []

    def finish(self) -> None:
        """Wait for the pumps: every process of the run is gone, so their pipes end."""
        for thread in self._threads:
            thread.join()
        self._threads = []

    def abandon(self) -> None:
        """The run never started: close every pipe end still held."""
        self._close_child_ends()
        for work, args in self._pumps:
            os.close(args[1] if work is _feed else args[0])
        self._pumps = []

    def _close_child_ends(self) -> None:
        for fd in self._child_ends:
            os.close(fd)
        self._child_ends = []
