"""This machine as the tests see it: the repo, the ``roscoe-test`` user and
its venv, components that may be missing, a reaped pid, an rclone mount."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
TEST_USER = "roscoe-test"
TEST_VENV = Path("/opt/roscoe-test-venv")


def missing(what: str, how: str = "scripts/test.sh installs it") -> None:
    """A component a test needs is missing: a failure under CI (CI=true), a skip elsewhere."""
    message = f"{what} is missing: {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def lookup_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.fail(f"user {TEST_USER} is missing: scripts/test.sh creates it (useradd {TEST_USER})")


def gone_pid() -> int:
    """The pid of a process that has exited and was reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


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
