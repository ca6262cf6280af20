"""``roscoe serve`` as a real process for tests: its own state dir, config
and socket, started as root (CI runs as root) and stopped at the end; and
clients of it, as root (an operator) or as the ``roscoe-test`` user (an
agent, unless the config says otherwise)."""

from __future__ import annotations

import os
import signal
import shutil
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

    def start(self) -> Served:
        env = dict(os.environ, ROSCOE_HOME=str(self.home), PYTHONPATH=str(REPO), ROSCOE_SOCKET="")
        for name in ("ROSCOE_ROOT", "ROSCOE_CONFIG", "ROSCOE_BACKEND"):
            env.pop(name, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--socket", str(self.socket), *self.args],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"roscoe serve never listened: {self.log.read_text()}"
            time.sleep(0.05)
        while "roscoe: serving " not in self.log.read_text():  # (said once every listener is up)
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"roscoe serve never said it serves: {self.log.read_text()}"
            time.sleep(0.05)
        return self

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
