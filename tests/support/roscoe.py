"""The CLI as a subprocess (``python -m cli.main``) with its own state dir,
as root or as the unprivileged ``roscoe-test`` user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.system import REPO, TEST_USER, TEST_VENV, lookup_test_user


class Roscoe:
    """Runs ``python -m cli.main`` with ROSCOE_HOME set; returns the CompletedProcess."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = dict(os.environ, ROSCOE_HOME=str(home), PYTHONPATH=str(REPO))
        self.env.pop("ROSCOE_ROOT", None)
        self.env.pop("ROSCOE_BACKEND", None)
        self.env["ROSCOE_SOCKET"] = ""  # local, even where a roscoe service's default socket exists
        self.env.update(env or {})

    def __call__(
        self, *args: str | os.PathLike[str], input: bytes | None = None, cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None, timeout: float = 120, **popen: object,
    ) -> subprocess.CompletedProcess[bytes]:
        """``popen`` goes to subprocess.run: ``stdin``, ``stdout`` or ``pass_fds``
        (then the output not redirected is still captured)."""
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *map(os.fspath, args)],
            input=input, cwd=cwd, env=dict(self.env, **(env or {})), timeout=timeout, **_captured(popen),
        )

    def begin(self, root: Path, *extra: str) -> str:
        done = self("tx", "begin", "--root", root, *extra)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().strip()


class UserRoscoe(Roscoe):
    """roscoe run as the unprivileged ``roscoe-test`` user, from a readable copy
    of the source and the venv scripts/test.sh builds for that user."""

    def __init__(self, home: Path, src: Path) -> None:
        super().__init__(home, {"PYTHONPATH": str(src)})
        self.user = lookup_test_user()
        self.env.update(HOME=self.user.pw_dir, USER=TEST_USER, LOGNAME=TEST_USER)

    def __call__(self, *args, input=None, cwd=None, env=None, timeout=120, **popen):  # type: ignore[no-untyped-def,override]
        return subprocess.run(
            [str(TEST_VENV / "bin" / "python"), "-m", "cli.main", *map(os.fspath, args)],
            input=input, cwd=cwd, env=dict(self.env, **(env or {})), timeout=timeout,
            user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[], **_captured(popen),
        )


def _captured(popen: dict[str, object]) -> dict[str, object]:
    """subprocess.run arguments: stdout and stderr piped unless given."""
    return {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
