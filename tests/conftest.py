"""Shared fixtures: a scratch state dir and live tree, the CLI as a
subprocess (as root, as the ``clerk`` login, as the ``roscoe-test`` user),
and a seeded GCS bucket behind fake-gcs-server. The helpers they are built
from, and every helper test modules share, live in ``tests/support/``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs.stagers import remove_tree
from tests.support.gcs import Bucket, FakeGcs, fake_gcs, seeded_bucket
from tests.support.roscoe import Roscoe, UserRoscoe
from tests.support.service import Served, config_text, serving
from tests.support.system import REPO, TEST_VENV, lookup_test_user
from tests.support.transactions import CLERK
from tests.support.trees import chown_tree, make_tree

BACKENDS = ("kernel", "kernel-bindfs", "fuse", "copy")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "live")


@pytest.fixture
def roscoe(home: Path) -> Roscoe:
    return Roscoe(home)


@pytest.fixture
def clerk(home: Path) -> Roscoe:
    """roscoe as the login user CLERK, with $USER naming someone else."""
    return Roscoe(home, {"LOGNAME": CLERK, "USER": "not-this-one"})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- roscoe as an ordinary user -------------------------------------------------------

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


# -- a GCS target ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[FakeGcs]:
    """One fake-gcs-server for a test module."""
    with fake_gcs() as s:
        yield s


@pytest.fixture
def bucket(server: FakeGcs, tmp_path: Path) -> Iterator[Bucket]:
    with seeded_bucket(server, tmp_path) as b:
        yield b


@pytest.fixture
def stale_bucket(server: FakeGcs, tmp_path: Path) -> Iterator[Bucket]:
    """A bucket whose mount keeps what it listed for an hour: an object
    replaced behind it cannot be read through it for the whole test."""
    with seeded_bucket(server, tmp_path, "1h") as b:
        yield b


@pytest.fixture
def gcs_env(server: FakeGcs) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": server.url, "ROSCOE_GCS_RETRIES": "2", "ROSCOE_GCS_LEASE_WAIT": "20"}


@pytest.fixture
def groscoe(home: Path, gcs_env: dict[str, str]) -> Roscoe:
    """roscoe pointed at the module's fake-gcs-server."""
    return Roscoe(home, gcs_env)


# -- a roscoe service -----------------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The case tree a service serves (tests/support/trees.make_tree)."""
    return make_tree(tmp_path / "root")


@pytest.fixture
def served(tmp_path: Path, tree: Path) -> Iterator[Served]:
    """``roscoe serve`` over ``tree``, roscoe-test its agent (tests/support/service)."""
    with serving(tmp_path, config_text(tree)) as service:
        yield service
