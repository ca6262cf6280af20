"""The service's child processes (cli.serve's and cli.launcher's): each
dies with its parent, is reaped, and a run's ends with its client."""

from __future__ import annotations

import os
import signal
import socket


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_with_client(conn: socket.socket) -> None:
    """When the client hangs up in the middle of its run, end this process as
    a killed local roscoe ends: at once, its sandbox with it."""
    import threading

    def watch() -> None:
        import select

        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLRDHUP)
        while True:
            events = poller.poll()
            if any(e & (select.POLLHUP | select.POLLRDHUP | select.POLLERR) for _, e in events):
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                if not conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    os.kill(os.getpid(), signal.SIGKILL)
            except BlockingIOError:
                continue
            except OSError:
                os.kill(os.getpid(), signal.SIGKILL)
            return  # (a client sends nothing after its request; whatever it sends is ignored)

    threading.Thread(target=watch, daemon=True).start()


def die_with_parent() -> None:
    """This child ends when the service does (PR_SET_PDEATHSIG)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
