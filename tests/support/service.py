"""``roscoe serve`` as a real process for tests: its own state dir, config
and socket, started as root (CI runs as root) and stopped at the end; and
clients of it, as root (an operator), as the ``roscoe-test`` user (an
agent, unless the config says otherwise) or as another user, and as
roscoe-test in a container of its own (``Contained``: its own mount, pid,
network, ipc and uts namespaces, seeing only the socket and the CLI)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket as sockets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.roscoe import Roscoe, UserRoscoe
from tests.support.system import REPO, TEST_VENV

# An HTTP client (standard library) over a unix socket or TCP, run as a
# process of its own (so as the agent's uid too): argv is SOCKET-or-HOST:PORT,
# METHOD, PATH, AUTHORIZATION, stdin the body; it prints {"status", "headers", "body"}.
HTTP_CLIENT = """
import http.client, json, socket, sys
where, method, path, auth = sys.argv[1:5]
body = sys.stdin.read()
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(where)
if where.startswith("/"):
    conn = Unix("localhost", timeout=120)
else:
    host, port = where.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
headers = {"Authorization": auth} if auth else {}
conn.request(method, path, body=body.encode() if body else None, headers=headers)
got = conn.getresponse()
raw = got.read()
try:
    data = json.loads(raw)
except ValueError:
    data = raw.decode(errors="replace")
print(json.dumps({"status": got.status, "headers": dict(got.getheaders()), "body": data}))
"""


def http(where: str | Path, method: str, path: str, body: object = None, *, raw: str | None = None,
         auth: str = "", user: int | None = None) -> dict:  # type: ignore[type-arg]
    """One HTTP request to ``where`` (a unix socket, or HOST:PORT): its status,
    headers and JSON body; as ``user`` (a uid) when given, else as root."""
    import json
    import pwd

    text = raw if raw is not None else ("" if body is None else json.dumps(body))
    python = str(TEST_VENV / "bin" / "python") if user is not None else sys.executable
    extra: dict[str, object] = {}
    if user is not None:
        extra = {"user": user, "group": pwd.getpwuid(user).pw_gid, "extra_groups": []}
    done = subprocess.run([python, "-c", HTTP_CLIENT, str(where), method, path, auth],
                          input=text, capture_output=True, text=True, timeout=180, env={"PATH": os.environ["PATH"]},
                          cwd="/", **extra)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def config_text(root: Path, *, agents: str = '"roscoe-test"', approvers: str = "", extra: str = "") -> str:
    return (f"[roles]\nagents = [{agents}]\napprovers = [{approvers}]\n"
            f'[serve]\nsocket_mode = "0666"\n[roots."{root}"]\n{extra}')


class Served:
    """A running ``roscoe serve`` over ``home`` on ``socket``."""

    def __init__(self, home: Path, socket: Path, config: str, log: Path, args: tuple[str, ...] = ()) -> None:
        self.home, self.socket, self.log, self.args = home, socket, log, args
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        (home / "config.toml").write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Served:
        """Start the service (again, after ``kill``: a stale socket is no
        sign of it), with ``env`` added to its environment."""
        environ = dict(os.environ, ROSCOE_HOME=str(self.home), PYTHONPATH=str(REPO), ROSCOE_SOCKET="")
        for name in ("ROSCOE_ROOT", "ROSCOE_CONFIG", "ROSCOE_BACKEND", "ROSCOE_FAULT", "ROSCOE_FAULT_ACTION"):
            environ.pop(name, None)
        environ.update(env or {})
        said = self.log.stat().st_size if self.log.exists() else 0  # (what an earlier start said)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--socket", str(self.socket), *self.args],
                env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.listening():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"roscoe serve never listened: {self.log.read_text()}"
            time.sleep(0.05)
        while "roscoe: serving " not in self.log.read_text()[said:]:  # (said once every listener is up)
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"roscoe serve never said it serves: {self.log.read_text()}"
            time.sleep(0.05)
        return self

    def listening(self) -> bool:
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL the service and every process of its session (what systemd's stop does, abruptly)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def operator(self) -> Roscoe:
        """A client as root (always an operator)."""
        return Roscoe(self.home, {"ROSCOE_SOCKET": str(self.socket), "ROSCOE_HOME": "/nonexistent"})

    def agent(self, src: Path) -> UserRoscoe:
        """A client as roscoe-test, running roscoe from ``src`` (a copy it can read)."""
        client = UserRoscoe(Path("/nonexistent"), src)
        client.env["ROSCOE_SOCKET"] = str(self.socket)
        return client

    def client_as(self, user: str, src: Path) -> UserRoscoe:
        """A client as ``user``, running roscoe from ``src`` as ``agent`` does."""
        client = self.agent(src)
        client.user = pwd.getpwnam(user)
        client.env.update(HOME=client.user.pw_dir, USER=user, LOGNAME=user)
        return client


# Where the container sees the socket (the default one: no ROSCOE_SOCKET
# needed) and the CLI's source.
CONTAINER_SOCKET = "/run/roscoe/roscoe.sock"
CONTAINER_SRC = "/opt/roscoe/src"


class Contained:
    """The CLI as roscoe-test in a container of its own, as a Docker
    container with only the socket bound in: bwrap (as root) makes the mount,
    pid, network, ipc and uts namespaces, an empty tmpfs as ``/`` holding
    read-only binds of only what the test venv's python needs (/usr and its
    /lib links, /etc/passwd and group, the venv, roscoe's source) and the
    socket at the default path; then setpriv becomes roscoe-test, with no
    capabilities and no way to gain any, and runs the CLI. The service sees
    roscoe-test's real uid (no user namespace maps it)."""

    def __init__(self, socket: Path, src: Path) -> None:
        from cowfs.sandbox import bwrap_path

        self.user = pwd.getpwnam("roscoe-test")
        binds = ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(top):
                binds += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                binds += ["--ro-bind", top, top]
        python_home = os.path.dirname(os.path.realpath(TEST_VENV / "bin" / "python"))
        if not python_home.startswith("/usr/"):
            binds += ["--ro-bind", python_home, python_home]
        self.prefix = [
            bwrap_path(), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session", "--hostname", "container",
            *binds, *dirs(str(TEST_VENV), CONTAINER_SRC, CONTAINER_SOCKET),
            "--ro-bind", "/etc/passwd", "/etc/passwd", "--ro-bind", "/etc/group", "/etc/group",
            "--ro-bind", str(TEST_VENV), str(TEST_VENV),
            "--ro-bind", str(src), CONTAINER_SRC,
            "--bind", str(socket), CONTAINER_SOCKET,
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "USER", "roscoe-test", "--setenv", "LOGNAME", "roscoe-test",
            "--setenv", "PYTHONPATH", CONTAINER_SRC,
            "--", "/usr/bin/setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
            "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        ]

        # (setpriv's --inh-caps and --bounding-set clear what bwrap, as root, lets the command keep.)

    def sh(self, script: str, *, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """``sh -c SCRIPT`` in the container, as roscoe-test."""
        return subprocess.run([*self.prefix, "/bin/sh", "-c", script], capture_output=True, timeout=timeout)

    def __call__(
        self, *args: str | os.PathLike[str], input: bytes | None = None, timeout: float = 120,
    ) -> subprocess.CompletedProcess[bytes]:
        """``roscoe ARGS`` in the container (the default socket: the service)."""
        return subprocess.run(
            [*self.prefix, str(TEST_VENV / "bin" / "python"), "-m", "cli.main", *map(os.fspath, args)],
            input=input, capture_output=True, timeout=timeout)


def dirs(*paths: str) -> list[str]:
    """bwrap options making the directories above ``paths``, mode 0755 (the
    ones bwrap makes on its own for a bind are root's alone)."""
    made: list[str] = []
    for path in paths:
        parent = os.path.dirname(path)
        chain = []
        while parent not in ("/", "") and parent not in made:
            chain.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(chain):
            made.append(d)
    return [arg for d in made for arg in ("--perms", "0755", "--dir", d)]

@contextmanager
def serving(tmp_path: Path, config: str, args: tuple[str, ...] = ()) -> Iterator[Served]:
    """A running service over ``tmp_path/home`` with ``config``, its sockets in
    a fresh dir under /tmp that every user can reach (as /run/roscoe is);
    stopped and its dir removed at the end. ``args`` go to ``roscoe serve``
    (``{run}`` in them is that dir)."""
    run = Path(tempfile.mkdtemp(prefix="roscoe-run-", dir="/tmp"))
    os.chmod(run, 0o755)
    service = Served(tmp_path / "home", run / "roscoe.sock", config, tmp_path / "serve.log",
                     tuple(a.replace("{run}", str(run)) for a in args))
    service.start()
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(run, ignore_errors=True)


def error_of(done: subprocess.CompletedProcess[bytes]) -> str:
    """The one ``roscoe: error:`` line a client ended with, without its prefix."""
    lines = done.stderr.decode().splitlines()
    assert lines and lines[-1].startswith("roscoe: error: "), done.stderr
    return lines[-1].removeprefix("roscoe: error: ")
