"""The CLI as a client of ``roscoe serve``.

The whole command line goes to the service over its unix socket, with this
process's stdin, stdout and stderr (SCM_RIGHTS): the service runs the
command with them, so output streams straight to the caller, a terminal
works, and the exit status is the command's. The client names nothing the
service acts on as root: a plan file is opened here and handed over as
stdin (``tx plan FILE`` goes as ``tx plan -``), and ``--report FILE`` is
written here, from a scratch file the service fills. The service knows the
caller from the socket's peer credentials, never from what it sends.

The wire: the request is one frame, a 4-byte big-endian length then JSON
``{"v": 1, "argv": [...], "cwd": ..., "env": {...}, "report": bool}``, sent
with the fds (stdin, stdout, stderr, and the report's scratch file); the
answer is one frame ``{"exit": N}`` (with ``"error"``: a message, when the
service refused the request before running it), sent when the command is
done. A client that goes away mid-run ends its run: the service records it
as interrupted, as a killed local run is.
"""

from __future__ import annotations

import os

DEFAULT_SOCKET = "/run/roscoe/roscoe.sock"
MAX_FRAME = 1 << 20


def socket_path(environ: os._Environ[str] | dict[str, str]) -> str | None:
    """The service's socket: ``$ROSCOE_SOCKET`` (empty: none, run locally),
    else the default one when it exists; None: run locally."""
    named = environ.get("ROSCOE_SOCKET")
    if named is not None:
        return named or None
    return DEFAULT_SOCKET if os.path.exists(DEFAULT_SOCKET) else None


def forward(argv: list[str], path: str, *, in_run: bool = False) -> int:
    """Run ``argv`` (the whole command line) through the service at ``path``;
    its exit status."""
    import json
    import socket

    fds = [0, 1, 2]
    opened: list[int] = []
    argv, plan_fd = _plan_from_file(argv)
    if plan_fd is not None:
        opened.append(plan_fd)
        fds[0] = plan_fd
    argv, report = _report_here(argv)
    scratch = None
    if report is not None:
        import tempfile

        scratch = tempfile.TemporaryFile()
        fds.append(scratch.fileno())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROSCOE_") or k == "ROSCOE_ROOT"}
    # At a terminal, the run gets a terminal of its own on the service's side
    # (cli.serve): this one goes raw, and every key, ^C included, is relayed.
    terminal = _raw_terminal() if in_run else None
    try:
        cwd: str | None = os.getcwd()
    except FileNotFoundError:
        cwd = None
    body = json.dumps({"v": 1, "argv": argv, "cwd": cwd, "env": env, "report": report is not None,
                       "tty": terminal is not None}).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            conn.connect(path)
            send_frame(conn, body, fds)
        except OSError as e:
            raise unreachable(path, e.strerror or str(e)) from None
        for fd in opened:
            os.close(fd)
        opened.clear()
        try:
            answer = receive_frame(conn)
        except KeyboardInterrupt:
            return 130  # (closing the socket ends the run on the service's side)
        except OSError as e:
            raise unreachable(path, e.strerror or str(e)) from None
    finally:
        conn.close()
        for fd in opened:
            os.close(fd)
        if terminal is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, terminal)
    if answer is None:
        raise unreachable(path, "it closed the connection without an answer")
    reply = json.loads(answer)
    if reply.get("error"):
        from cli.errors import fail
        from journal.errors import ServiceRefused

        return fail(ServiceRefused.relayed(reply["error"]), in_run=in_run)
    if report is not None and scratch is not None:
        from cowfs import callerfile

        scratch.seek(0)
        data = scratch.read()
        if data:
            callerfile.write(report, data, "--report", {})
    return int(reply["exit"])


def _raw_terminal() -> list[object] | None:
    """When stdin and stdout are a terminal: put it in raw mode, and return
    its settings to put back; else None."""
    if not (os.isatty(0) and os.isatty(1)):
        return None
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSADRAIN)
    return saved


def unreachable(path: str, reason: str) -> Exception:
    from journal.errors import ServiceUnreachable

    return ServiceUnreachable(path=path, reason=reason)


def send_frame(conn, body: bytes, fds: list[int] | None = None) -> None:  # type: ignore[no-untyped-def]
    """One frame: the length, then ``body``; ``fds`` ride along with the first bytes."""
    import array
    import socket
    import struct

    data = struct.pack("!I", len(body)) + body
    if fds:
        sent = conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sent = conn.send(data)
    if sent < len(data):
        conn.sendall(data[sent:])


def receive_frame(conn) -> bytes | None:  # type: ignore[no-untyped-def]
    """One frame's body; None when the other end closed first."""
    import struct

    head = _exactly(conn, 4)
    if head is None:
        return None
    (size,) = struct.unpack("!I", head)
    if size > MAX_FRAME:
        raise OSError(f"a frame of {size} bytes, more than {MAX_FRAME}")
    return _exactly(conn, size)


def _exactly(conn, size: int) -> bytes | None:  # type: ignore[no-untyped-def]
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _plan_from_file(argv: list[str]) -> tuple[list[str], int | None]:
    """``tx plan ... FILE``: open FILE here (as this user, in this mount
    namespace) and send ``-`` instead; the opened fd becomes the stdin the
    service reads the plan from."""
    from cli.options import split_globals

    _, rest = split_globals(argv)
    if rest[:2] != ["tx", "plan"]:
        return argv, None
    from cli.grammar import PLAN, spellings

    options = spellings(PLAN)
    at = len(argv) - len(rest) + 2
    i = at
    while i < len(argv):
        arg = argv[i]
        name = arg.partition("=")[0]
        option = options.get(name)
        if option is not None:
            i += 2 if option.value and "=" not in arg else 1
            continue
        if arg == "--" and i + 1 < len(argv):
            i += 1
            arg = argv[i]
        elif arg.startswith("-") and arg != "-":
            return argv, None  # (an unknown option: the service says so)
        if arg == "-":
            return argv, None
        fd = os.open(arg, os.O_RDONLY | os.O_CLOEXEC)
        return argv[:i] + ["-"] + argv[i + 1:], fd
    return argv, None


def _report_here(argv: list[str]) -> tuple[list[str], object]:
    """``tx run --report FILE``: the report is written here (cowfs.callerfile
    checks FILE now, as a local run would); the service gets no path."""
    from cli.options import split_globals

    _, rest = split_globals(argv)
    if rest[:2] not in (["tx", "run"], ["tx", "shell"]):
        return argv, None
    from cli.grammar import RUN, spellings

    options = spellings(RUN)
    at = len(argv) - len(rest) + 2
    out, report, i = argv[:at], None, at
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        option = options.get(name)
        if option is None:  # "--", or the command's first word: the rest is the command's
            out.extend(argv[i:])
            break
        width = 2 if option.value and not eq else 1
        if option.attr == "report":
            report = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        else:
            out.extend(argv[i:i + width])
        i += width
    if report is None:
        return argv, None
    from cowfs import callerfile

    return out, callerfile.place(report, "--report", {})
