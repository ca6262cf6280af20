"""``roscoe serve``: the roscoe service on a unix socket.

It runs as root, owns the state dir and the config, and runs each client's
command for it: the same commands, output and exit codes as a local
``roscoe``, with the client's own stdin, stdout and stderr (passed over the
socket: ``cli.client``), under the service's settings and the caller's
roles (``journal.roles``, from the socket's peer credentials).

One process per connection: the service forks as soon as it accepts, so a
slow or hostile client holds up no one, and the child reads the request,
checks it, runs the command and answers. A child dies with the service
(PR_SET_PDEATHSIG). A client that goes away in the middle of ``tx run`` or
``tx shell`` ends its run as a killed local roscoe would: the child kills
itself, the sandbox goes with it, and the next command records the run as
interrupted (``journal.interrupted``). Other commands finish (a commit is
never left half done by a client that hung up; recovery would undo it
anyway). Recovery runs when the service starts, as on every open.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from cli.children import die_with_parent, end_with_client, reap
from cli.client import MAX_FRAME, send_frame
from cli.errors import say

# What a request may carry: at most the three stdio fds and a report's scratch file.
MAX_FDS = 4
REQUEST_SECONDS = 10.0
# The client's environment is its command's (as a local run's is roscoe's):
# roscoe itself keeps the service's own (Settings.env). Roscoe's own
# variables never pass (a run gets ROSCOE_ROOT and ROSCOE_TX from roscoe).
DROPPED_ENV = ("ROSCOE_",)


USAGE = ("usage: roscoe [--home DIR] [--config FILE] serve [--socket PATH] [--http-socket PATH]"
         " [--http HOST:PORT] [--json]")


def main(args: list[str], settings, run) -> int:  # type: ignore[no-untyped-def]
    """``roscoe serve [--socket PATH] [--json]``; ``run(argv, settings)`` runs one
    client's command (cli.main.dispatch: passed in, since cli.main calls this)."""
    from cli.errors import write_json
    from cli.grammar import SERVE, spellings
    from cowfs.errors import UsageError

    options, given, i = spellings(SERVE), {}, 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if args[i] in ("-h", "--help"):
            print(USAGE + "\n\nThe roscoe service: owns the state dir, the config and the commit authority;"
                  " clients are the same CLI (ROSCOE_SOCKET). See man roscoe, SERVICE.")
            return 0
        option = options.get(name)
        if option is None:
            raise UsageError(detail=f"serve: no such option {args[i]} ({USAGE})")
        if option.value and not eq:
            if i + 1 >= len(args):
                raise UsageError(detail=f"option {name} needs a value")
            value = args[i + 1]
            i += 1
        given[option.attr] = value if option.value else True
        i += 1
    served = serve(settings, given.get("socket"), run, http_socket=given.get("http_socket"), http=given.get("http"))
    if given.get("json_"):
        write_json(served)
    return 0


class BadRequest(Exception):
    """A request the service cannot take; its message goes back to the client."""


def serve(settings, socket_path: str | None, run, *, http_socket: str | None = None,  # type: ignore[no-untyped-def]
          http: str | None = None) -> dict[str, object]:
    """Serve until SIGTERM or SIGINT; what was served. HTTP/JSON too
    (cli.http_server) on ``http_socket`` and on ``http`` (HOST:PORT)."""
    from cli.state import service

    address = loopback(http) if http is not None else None
    with service(settings) as roscoe:  # (recovery first)
        serving = roscoe.workspace().config().serve
        home = roscoe.home
    handed = systemd_sockets(os.environ)  # (socket activation: systemd made them, and keeps them)
    if handed:  # (the socket unit says where they are: nothing else is listened on but --http)
        path = handed["roscoe"].getsockname() if "roscoe" in handed else socket_path or serving.socket
        http_path = handed["http"].getsockname() if "http" in handed else http_socket
    else:
        path = socket_path or serving.socket
        http_path = http_socket or http_socket_of(path, serving.http_socket)
    token = bearer_token(serving.http_token_file) if address is not None else None
    listener = handed.get("roscoe") or _listen(path, serving.socket_mode, serving.socket_group)
    http_listeners = []
    if http_path is not None:
        http_listeners.append(handed.get("http") or _listen(http_path, serving.socket_mode, serving.socket_group))
    if address is not None:
        http_listeners.append(_listen_tcp(address))
    bound = http_listeners[-1].getsockname()[:2] if address is not None else None
    preload()
    helpers = _start_http(settings, run, listener, http_listeners, token) if http_listeners else []
    stopping = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        listener.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    served: dict[str, object] = {"home": home, "socket": path}
    said = f"serving {home} on {path}"
    if http_path is not None:
        served["http_socket"] = http_path
        said += f", HTTP on {http_path}"
    if bound is not None:
        host, port = bound
        served["http"] = f"{host}:{port}"
        said += f", HTTP on {host}:{port} (bearer token)"
    say(said)
    accepted = 0
    try:
        while not stopping:
            try:
                conn, _ = listener.accept()
            except OSError:
                if stopping:
                    break
                raise
            accepted += 1
            pid = os.fork()
            if pid == 0:
                listener.close()
                code = 1
                try:
                    code = handle(conn, settings, run)
                finally:
                    os._exit(code)
            conn.close()
            reap()
    finally:
        _stop_http(helpers)
        for name, gone in (("roscoe", path), ("http", http_path)):
            try:
                if gone is not None and name not in handed:
                    os.unlink(gone)
            except FileNotFoundError:
                pass
    say("stopped")
    return dict(served, connections=accepted)


def http_socket_of(socket_path: str, configured: str) -> str | None:
    """The HTTP socket when ``--http-socket`` names none: the config's
    ``[serve] http_socket`` when it names one other than the default, else
    the default (/run/roscoe/http.sock) only when the main socket is in the
    default's directory: a service listening elsewhere (a second one, a
    test's) leaves /run/roscoe to the one there."""
    from journal.config import DEFAULT_HTTP_SOCKET

    if configured != DEFAULT_HTTP_SOCKET:
        return configured
    same = os.path.dirname(os.path.abspath(socket_path)) == os.path.dirname(DEFAULT_HTTP_SOCKET)
    return DEFAULT_HTTP_SOCKET if same else None


def loopback(address: str) -> tuple[str, int]:
    """``--http HOST:PORT``'s host and port; a usage error unless HOST is a
    loopback address (127.0.0.1, ::1, localhost) and PORT a port."""
    import ipaddress

    from cowfs.errors import UsageError

    host, colon, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        if not colon or not ipaddress.ip_address(host).is_loopback:
            raise ValueError(host)
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(port)
    except ValueError:
        raise UsageError(detail=f"--http {address}: expected a loopback HOST:PORT such as 127.0.0.1:8421"
                                " (other hosts are refused: use --http-socket, or a proxy)") from None
    return host, number


def bearer_token(path: str | None) -> str:
    """The token every ``--http`` request must carry: the content of
    ``[serve] http_token_file``, stripped."""
    from cowfs.errors import UsageError

    if path is None:
        raise UsageError(detail="--http needs a bearer token: set [serve] http_token_file in the config")
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise UsageError(detail=f"--http: the token file {path} is empty", path=path)
    return token


def _listen_tcp(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(64)
    return listener


def _start_http(settings, run, listener: socket.socket, http_listeners: list[socket.socket],  # type: ignore[no-untyped-def]
                token: str | None) -> list[int]:
    """Fork the launcher (cli.launcher) and the HTTP server (cli.http_server,
    which imports aiohttp in its own process); their pids. The HTTP
    listeners are theirs from now on."""
    from cli import launcher

    channel, launcher_pid = launcher.start(settings, run, [listener, *http_listeners])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            listener.close()
            die_with_parent()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            from cli.http_server import serve as serve_http

            serve_http(channel, http_listeners, token)
        except BaseException as e:  # noqa: BLE001 (said, then this process ends; the main socket serves on)
            say(f"error: the HTTP server stopped: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    channel.close()
    for s in http_listeners:
        s.close()
    return [pid, launcher_pid]


def _stop_http(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def systemd_sockets(environ: os._Environ[str] | dict[str, str]) -> dict[str, socket.socket]:
    """The listening sockets systemd passed this process (sd_listen_fds(3):
    fds from 3 on, named by ``FileDescriptorName=`` in roscoe.socket: ``roscoe``
    for the main socket, ``http`` for HTTP/JSON), by name; none when it passed none."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    names = (environ.get("LISTEN_FDNAMES") or "").split(":")
    count = int(environ.get("LISTEN_FDS") or 0)
    handed = {}
    for i in range(count):
        name = names[i] if i < len(names) and names[i] else ("roscoe" if i == 0 else f"fd{3 + i}")
        os.set_inheritable(3 + i, False)
        handed[name] = socket.socket(fileno=3 + i)
    signal.signal(signal.SIGCHLD, lambda signum, frame: reap())
    return handed


def _listen(path: str, mode: int, group: str | None) -> socket.socket:
    """The listening socket at ``path``, with ``mode`` and ``group``: its
    directory made if need be (0755), a stale socket there replaced."""
    import stat

    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    if group is not None:
        import grp

        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, lambda signum, frame: reap())
    return listener




def preload() -> None:
    """Import what every command needs once, before forking: a child starts
    warm (the typer app of the commands without a fast path included, which
    costs a cold child about 90 ms)."""
    import ctypes  # noqa: F401
    import grp  # noqa: F401
    import struct  # noqa: F401

    import cli.agent  # noqa: F401
    import cli.app  # noqa: F401
    import cli.run  # noqa: F401
    import journal.roles  # noqa: F401
    import journal.service  # noqa: F401
    import journal.workspace  # noqa: F401


def handle(conn: socket.socket, settings, run) -> int:  # type: ignore[no-untyped-def]
    """In the child: one client's request, start to answer. Its exit status."""
    die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    from journal.roles import Caller

    pid, uid, gid = peer(conn)
    caller = Caller.of(uid, gid, pid)
    conn.settimeout(REQUEST_SECONDS)
    try:
        request, fds = receive_request(conn)
    except (BadRequest, OSError, ValueError) as e:
        return _refuse(conn, 2, "usage", f"bad request to the roscoe service: {e}")
    conn.settimeout(None)
    relay = None
    if request.get("tty") is True and os.isatty(fds[0]) and os.isatty(fds[1]):
        relay = Terminal(fds[0], fds[1])
    else:
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        os.dup2(fds[2], 2)
    report_fd = fds[3] if len(fds) > 3 else None
    for fd in fds[:3]:
        if fd > 2 and relay is None:
            os.close(fd)
    os.chdir(_working_dir(request.get("cwd"), settings))
    code = run_for(run, caller, request["argv"], settings._replace(
        caller=caller, user=caller.user, root=request["env"].get("ROSCOE_ROOT") or settings.root,
        report_fd=report_fd if request.get("report") else None, debug=False,
        env={k: v for k, v in request["env"].items() if not k.startswith(DROPPED_ENV)},
    ), conn)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass
    if relay is not None:
        relay.drain()
    try:
        send_frame(conn, json.dumps({"exit": code}).encode())
    except OSError:
        pass
    return code


class Terminal:
    """A terminal of the run's own, for a client at one: a pty whose slave is
    this child's stdin, stdout and stderr and its controlling terminal (this
    child leads a session of its own), so that the run's shell does job
    control and a ^C reaches the command in the foreground, as at a local
    terminal. A thread relays bytes between it and the client's terminal
    (raw on the client's side: cli.client), and its window size."""

    def __init__(self, client_in: int, client_out: int) -> None:
        import fcntl
        import termios
        import threading

        self.client_in, self.client_out = client_in, client_out
        self.master, slave = os.openpty()
        self._size()
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(slave)
        sys.stdin = open(0, "r", closefd=False)  # (isatty and the rest see the new fds)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _size(self) -> None:
        import fcntl
        import termios

        try:
            size = fcntl.ioctl(self.client_out, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            pass

    def _relay(self) -> None:
        import select

        open_in = True
        while True:
            ready, _, _ = select.select([self.master] + ([self.client_in] if open_in else []), [], [], 0.5)
            self._size()
            if self.client_in in ready:
                data = os.read(self.client_in, 65536)
                if not data:
                    open_in = False
                else:
                    os.write(self.master, data)
            if self.master in ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every slave fd is closed, the run is over
                    data = b""
                if not data:
                    self.done.set()
                    return
                os.write(self.client_out, data)

    def drain(self) -> None:
        """Once the command is done: let what it wrote reach the client."""
        for fd in (0, 1, 2):
            os.close(fd)
        self.done.wait(5)


def _working_dir(cwd: object, settings) -> str:  # type: ignore[no-untyped-def]
    """Where the child works: the client's cwd when it lies inside a root the
    config serves (a run starts there, as a local one would), else /proc,
    where a run never starts (``cowfs.sandbox.sandbox_cwd``): it starts at
    its root. (A client's cwd elsewhere is a path in its own mount
    namespace, a container's, and means nothing here.)"""
    from cowfs.paths import under
    from journal.rules import in_force, strictest

    if isinstance(cwd, str) and os.path.isabs(cwd) and os.path.isdir(cwd):
        roots = strictest(None, in_force(settings.home, settings.configs)).roots
        if any(under(os.path.realpath(cwd), root) for root in roots):
            return cwd
    return "/proc"


def run_for(run, caller, argv: list[str], given, conn: socket.socket) -> int:  # type: ignore[no-untyped-def]
    """Run the command line ``argv`` for ``caller`` with the settings ``given``."""
    from cli.errors import fail, json_requested, use_json
    from cli.options import split_globals
    from journal.roles import refuse_globals

    use_json(json_requested(argv))
    in_run = False
    try:
        g, rest = split_globals(argv)
        in_run = rest[:2] in (["tx", "run"], ["tx", "shell"])
        use_json(json_requested(rest))
        refuse_globals(caller, g.home, g.config)
        if not rest or rest[0] in ("serve", "mcp"):
            from cowfs.errors import UsageError

            raise UsageError(detail=f"{' '.join(rest[:1]) or 'no command'}: not a command the roscoe service runs")
        if in_run:
            end_with_client(conn)
        return run(rest, given._replace(debug=g.debug))
    except (Exception, KeyboardInterrupt) as e:
        return fail(e, in_run=in_run)




def peer(conn: socket.socket) -> tuple[int, int, int]:
    """The client's pid, uid and gid, from the kernel (SO_PEERCRED)."""
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def receive_request(conn: socket.socket) -> tuple[dict, list[int]]:  # type: ignore[type-arg]
    """The request frame and the fds that came with it, checked."""
    import array
    import struct

    fds = array.array("i")
    head, ancillary, flags, _ = conn.recvmsg(4, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    got = list(fds)
    if flags & socket.MSG_CTRUNC:
        raise BadRequest(f"more than {MAX_FDS} file descriptors")
    if len(head) < 4:
        if len(head) == 0:
            raise BadRequest("the client sent nothing")
        head += conn.recv(4 - len(head), socket.MSG_WAITALL)
    (size,) = struct.unpack("!I", head)
    if size > MAX_FRAME:
        raise BadRequest(f"a request of {size} bytes, more than the {MAX_FRAME} allowed")
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise BadRequest("the request ended early")
        body += chunk
    request = json.loads(body)
    if not isinstance(request, dict) or request.get("v") != 1:
        raise BadRequest("not a roscoe request (version 1)")
    argv, env = request.get("argv"), request.get("env")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise BadRequest("argv must be a list of strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise BadRequest("env must map strings to strings")
    if len(got) < 3:
        raise BadRequest("stdin, stdout and stderr must come with the request")
    return request, got


def _refuse(conn: socket.socket, code: int, kind: str, message: str) -> int:
    """Answer a request that could not be taken (no stdio of the client's to say it on)."""
    from cowfs.errors import error_json

    try:
        send_frame(conn, json.dumps({"exit": code, "error": error_json(code, kind, message, [])["error"]}).encode())
    except OSError:
        pass
    return code
