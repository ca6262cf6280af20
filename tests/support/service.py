"""``roscoe serve`` as a real process for tests: its own state dir, config
and socket, started as root (CI runs as root) and stopped at the end; and
clients of it, as root (an operator) or as the ``roscoe-test`` user (an
agent, unless the config says otherwise)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.roscoe import Roscoe, UserRoscoe
from tests.support.system import REPO


def config_text(root: Path, *, agents: str = '"roscoe-test"', approvers: str = "", extra: str = "") -> str:
    return (f"[roles]\nagents = [{agents}]\napprovers = [{approvers}]\n"
            f'[serve]\nsocket_mode = "0666"\n[roots."{root}"]\n{extra}')


class Served:
    """A running ``roscoe serve`` over ``home`` on ``socket``."""

    def __init__(self, home: Path, socket: Path, config: str, log: Path) -> None:
        self.home, self.socket, self.log = home, socket, log
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
                [sys.executable, "-m", "cli.main", "serve", "--socket", str(self.socket)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"roscoe serve never listened: {self.log.read_text()}"
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
