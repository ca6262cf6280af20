"""Where ``roscoe serve`` runs its HTTP requests' commands: a process it
forks at start (single-threaded, warm: ``cli.serve.preload``), which forks
one child per request as the main socket's loop does. The HTTP server
(cli.http_server, its own process with its event loop and threads) never
forks: it sends each request here over a private socketpair, only the
service's own processes hold, and gets the answer on the socketpair that
came with it.

A request is one datagram: JSON ``{"argv": [...], "peer": [pid, uid, gid]}``
(the caller as the kernel named it to the HTTP server, SO_PEERCRED) or
``{"argv": [...], "bearer": true}`` (a bearer of the ``--http`` token: an
agent with no uid, ``journal.roles``), with five fds: the command's stdin,
stdout and stderr, a scratch file for ``tx run``'s report, and the socket
the answer goes on: one frame ``{"exit": N, "error": {...} or null}``, the
error object of what the command raised. The child runs with the
service's settings (and roscoe with the service's environment); a run's
command starts from ``RUN_ENV`` (Settings.env), never the service's.
"""

from __future__ import annotations

import json
import os
import signal
import socket

FDS = 5
MAX_REQUEST = 64 << 10
# What a command run for an HTTP caller sees of roscoe's environment (a run
# gets the body's ``env`` on top, as ``--env``).
RUN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
BEARER = ("http", -1)  # the bearer's user name and uid (and gid and pid)


def start(settings, run, closing: list[socket.socket]) -> tuple[socket.socket, int]:  # type: ignore[no-untyped-def]
    """Fork the launcher; its channel's other end, and its pid. ``closing``:
    the service's sockets, which the launcher does not keep."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            for s in closing:
                s.close()
            code = loop(theirs, settings, run)
        finally:
            os._exit(code)
    theirs.close()
    return ours, pid


def loop(channel: socket.socket, settings, run) -> int:  # type: ignore[no-untyped-def]
    """Fork a child per request until the HTTP side closes the channel."""
    import array

    from cli.children import die_with_parent, reap

    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, lambda signum, frame: reap())
    while True:
        fds = array.array("i")
        data, ancillary, _, _ = channel.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(FDS * fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if not data and not fds:
            return 0
        if len(fds) == FDS and os.fork() == 0:
            code = 1
            try:
                channel.close()
                code = child(data, list(fds), settings, run)
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


def child(data: bytes, fds: list[int], settings, run) -> int:  # type: ignore[no-untyped-def]
    """One request's command, run for its caller; its exit status."""
    from cli.client import send_frame
    from cli.errors import describe, fail, json_requested, use_json
    from cli.children import die_with_parent, end_with_client
    from journal.roles import Caller

    die_with_parent()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stdin, stdout, stderr, report, answer = fds
    conn = socket.socket(fileno=answer)
    for fd, std in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, std)
        os.close(fd)
    os.chdir("/proc")  # (a run starts at its root: cli.serve._working_dir)
    request = json.loads(data)
    argv = request["argv"]
    if request.get("bearer") is True:
        user, uid = BEARER
        caller = Caller(uid, uid, uid, user, ())
    else:
        pid, uid, gid = request["peer"]
        caller = Caller.of(uid, gid, pid)
    in_run = argv[:2] == ["tx", "run"]
    use_json(json_requested(argv))
    if in_run:
        end_with_client(conn)
    error = None
    try:
        code = run(argv, settings._replace(caller=caller, user=caller.user, report_fd=report if in_run else None,
                                           debug=False, env=dict(RUN_ENV)))
    except (Exception, KeyboardInterrupt) as e:
        error = describe(e)["error"]
        code = fail(e)
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    try:
        send_frame(conn, json.dumps({"exit": code, "error": error}).encode())
    except OSError:
        pass
    return code
