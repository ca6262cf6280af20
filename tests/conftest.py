"""Shared fixtures: a scratch state dir and live tree, the CLI as a subprocess,
byte-for-byte tree snapshots, and roscoe run as an ordinary user."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cowfs.stagers import remove_tree

REPO = Path(__file__).resolve().parent.parent
TEST_USER = "roscoe-test"
TEST_VENV = Path("/opt/roscoe-test-venv")
BACKENDS = ("kernel", "kernel-bindfs", "fuse", "copy")


def snapshot(root: str | os.PathLike[str]) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, mode, mtime_ns, owner, and bytes or target."""
    out: dict[str, tuple[object, ...]] = {}
    base = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    body: object = f.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            else:
                body = None
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), mtime, st.st_uid, st.st_gid, body)
    return out


def make_tree(root: Path) -> Path:
    """A small case tree with the awkward parts: spaces, a newline, a non-UTF-8
    name, a symlink, an empty dir, nested dirs and modes other than 0644."""
    (root / "case1" / "Pleadings").mkdir(parents=True)
    (root / "case1" / "Pleadings" / "complaint.txt").write_text("COMPLAINT\nline 2\n")
    (root / "case1" / "notes.md").write_text("# notes\n")
    (root / "case1" / "old.tmp").write_bytes(b"\x00\x01binary\xff")
    (root / "case2").mkdir()
    (root / "case2" / "intake form.txt").write_text("intake\n")
    (root / "case2" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "case2" / "script.sh", 0o755)
    (root / "case2" / "empty").mkdir()
    os.symlink("../case1/notes.md", root / "case2" / "notes-link")
    os.mkdir(os.path.join(os.fsencode(root), b"odd \xff dir"))
    with open(os.path.join(os.fsencode(root), b"odd \xff dir", b"line\nbreak.txt"), "wb") as f:
        f.write(b"odd\n")
    # Fixed mtimes, so a test can tell an mtime that moved.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), ns=(1_700_000_000_000_000_000,) * 2, follow_symlinks=False)
    os.utime(root / "case2" / "notes-link", ns=(1_700_000_000_000_000_000,) * 2, follow_symlinks=False)
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "live")


class Roscoe:
    """Runs ``python -m cli.main`` with ROSCOE_HOME set; returns the CompletedProcess."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = dict(os.environ, ROSCOE_HOME=str(home), PYTHONPATH=str(REPO))
        self.env.pop("ROSCOE_ROOT", None)
        self.env.pop("ROSCOE_BACKEND", None)
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


@pytest.fixture
def roscoe(home: Path) -> Roscoe:
    return Roscoe(home)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def gone_pid() -> int:
    """The pid of a process that has exited and was reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def missing(what: str, how: str = "scripts/test.sh installs it") -> None:
    """A component a test needs is missing: a failure under CI (CI=true), a skip elsewhere."""
    message = f"{what} is missing: {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def rclone_mounted(source: str, mnt: Path, *options: str) -> Iterator[Path]:
    """``rclone mount SOURCE MNT`` as a daemon (fuse3), unmounted afterwards."""
    if shutil.which("rclone") is None:
        missing("rclone")
    if shutil.which("fusermount3") is None:
        missing("fuse3")
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["rclone", "mount", source, str(mnt), *options, "--daemon", "--config", "/dev/null", "--log-level", "ERROR"],
        check=True, capture_output=True,
    )
    deadline = time.monotonic() + 15
    while not os.path.ismount(mnt):
        assert time.monotonic() < deadline, "rclone mount did not come up"
        time.sleep(0.05)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def lookup_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.fail(f"user {TEST_USER} is missing: scripts/test.sh creates it (useradd {TEST_USER})")


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


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A scratch dir under /tmp that roscoe-test owns (pytest's own tmp dirs are 0700 root)."""
    if os.geteuid() != 0:
        pytest.fail("unprivileged tests switch to the roscoe-test user and need root (CI runs as root)")
    user = lookup_test_user()
    path = Path(tempfile.mkdtemp(prefix="roscoe-user-", dir="/tmp"))
    os.chmod(path, 0o755)
    os.chown(path, user.pw_uid, user.pw_gid)
    try:
        yield path
    finally:
        remove_tree(path)


@pytest.fixture
def unprivileged(user_dir: Path) -> UserRoscoe:
    """roscoe as roscoe-test, with a copy of roscoe's source in ``user_dir``."""
    if not (TEST_VENV / "bin" / "python").exists():
        pytest.fail(f"{TEST_VENV} is missing: scripts/test.sh builds it")
    src = user_dir / "src"
    for pkg in ("cowfs", "journal", "cli"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    user = lookup_test_user()
    chown_tree(src, user.pw_uid, user.pw_gid)
    return UserRoscoe(user_dir / "home", src)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
