"""One committer per root on this machine, whatever the state dir or user.

Two state dirs over one root commit overlapping changes at once: the second
waits for the first and then finds its change (exit 3). The processes are
interleaved exactly with ``ROSCOE_FAULT_ACTION=stop`` (journal.faults): the
first stops inside the lock, its conflict check done; the second stops when
it finds the lock held.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs.stagers import remove_tree
from journal.errors import RootBusy
from journal.rootlock import held_by_someone, root_lock
from tests.conftest import (
    REPO, TEST_VENV, Roscoe, chown_tree, lookup_test_user, make_tree, missing, rclone_mounted,
    snapshot,
)

TARGET = "case1/notes.md"


def staged(r: Roscoe, root: Path, script: str) -> str:
    done = r("tx", "run", "--root", root, "--", "sh", "-c", f'set -e; cd "$1"; {script}', "sh", str(root), cwd=root)
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(r"roscoe: tx ([0-9a-f]{12})", done.stderr.decode().splitlines()[0])
    assert match, done.stderr
    return match.group(1)


def started(r: Roscoe, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``roscoe ARGS`` as ``r`` runs it, in the background. (pytest loads
    conftest as a module of its own: UserRoscoe is known by its ``user``.)"""
    user = getattr(r, "user", None)
    if user is not None:
        return subprocess.Popen(
            [str(TEST_VENV / "bin" / "python"), "-m", "cli.main", *args], env=dict(r.env, **env), cwd="/",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        )
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=dict(r.env, **env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stopped(p: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Wait until ``p`` stops itself (True) or exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] in ("T", "t"):
                return True
        time.sleep(0.02)
    raise AssertionError("the process neither stopped nor exited")


def verified(r: Roscoe) -> None:
    done = r("verify", "--json")
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["problems"] == []


@pytest.fixture(params=["root+root", "user+root"])
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Roscoe, Roscoe, Path]]:
    """Two callers with state dirs of their own over one root: both root, or
    the unprivileged test user (who owns the tree) and root."""
    if request.param == "root+root":
        yield Roscoe(tmp_path / "home-a"), Roscoe(tmp_path / "home-b"), make_tree(tmp_path / "live")
        return
    user_dir = request.getfixturevalue("user_dir")
    first = request.getfixturevalue("unprivileged")
    user = lookup_test_user()
    root = make_tree(user_dir / "live")
    chown_tree(root, user.pw_uid, user.pw_gid)
    yield first, Roscoe(tmp_path / "home-b"), root


def test_two_state_dirs_committing_one_root_at_once_serialize(two: tuple[Roscoe, Roscoe, Path], tmp_path: Path) -> None:
    first, second, root = two
    a = staged(first, root, f'printf "from a\\n" > {TARGET}')
    b = staged(second, root, f'printf "from b, longer\\n" > {TARGET}')
    expected = snapshot(root)
    winner = started(first, "tx", "commit", a, "--yes",
                     env={"ROSCOE_FAULT": "before-images", "ROSCOE_FAULT_ACTION": "stop"})
    loser = None
    try:
        assert stopped(winner), winner.communicate()
        loser = started(second, "tx", "commit", b, "--yes",
                        env={"ROSCOE_FAULT": "lock-busy", "ROSCOE_FAULT_ACTION": "stop"})
        assert stopped(loser), ("the second commit did not wait for the first", loser.communicate())
        os.kill(winner.pid, signal.SIGCONT)
        out, err = winner.communicate(timeout=120)
        assert winner.returncode == 0, err
        os.kill(loser.pid, signal.SIGCONT)
        out, err = loser.communicate(timeout=120)
    finally:
        for p in (winner, loser):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert loser.returncode == 3, err
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roscoe: error: commit refused: the live tree changed") \
        and lines[0].endswith(f"Changed: {TARGET}"), err
    after = snapshot(root)
    assert (root / TARGET).read_bytes() == b"from a\n"
    assert {k: v for k, v in after.items() if k != TARGET} == {k: v for k, v in expected.items() if k != TARGET}
    assert json.loads(first("tx", "show", a, "--json").stdout)["state"] == "committed"
    assert json.loads(second("tx", "show", b, "--json").stdout)["state"] == "open"
    verified(first)
    verified(second)


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A scratch dir outside /tmp, which a run sees as the host does (its /tmp is private)."""
    path = Path(tempfile.mkdtemp(prefix="roscoe-lock-", dir="/var/tmp"))
    try:
        yield path
    finally:
        remove_tree(path)


def test_a_run_that_locks_what_it_sees_at_the_root_holds_up_no_commit(tmp_path: Path, outside_tmp: Path) -> None:
    """Inside a run the root's path is the overlay (another inode): a run that
    flocks it, and its parent, for as long as it lives stops no commit."""
    roscoe = Roscoe(tmp_path / "home")
    root = make_tree(outside_tmp / "live")
    other = staged(roscoe, root, f'printf "committed meanwhile\\n" > {TARGET}')
    holder = started(roscoe, "tx", "run", "--root", str(root), "--", "flock", "-x", str(root),
                     "flock", "-x", str(root.parent), "sh", "-c", "echo locked; exec sleep 120", env={})
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n", holder.communicate()
        began = time.monotonic()
        done = roscoe("tx", "commit", other, "--yes")
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - began < 20
    finally:
        holder.kill()
        holder.wait()
    assert (root / TARGET).read_bytes() == b"committed meanwhile\n"


@pytest.fixture(params=["local", "bindfs", "rclone"])
def mounted_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A root on the kinds of filesystem the tests mount: a local dir, a
    bindfs mount and an rclone mount (FUSE: the kernel keeps the lock)."""
    src = make_tree(tmp_path / "src")
    if request.param == "local":
        yield src
        return
    mnt = tmp_path / "mnt"
    if request.param == "rclone":
        with rclone_mounted(str(src), mnt):
            yield mnt
        return
    if shutil.which("bindfs") is None:
        missing("bindfs")
    mnt.mkdir()
    subprocess.run(["bindfs", str(src), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_the_lock_of_a_root_is_shared_by_every_state_dir_and_names_its_holder(mounted_root: Path, tmp_path: Path) -> None:
    root = str(mounted_root)
    home_a, home_b = str(tmp_path / "a"), str(tmp_path / "b")
    assert not held_by_someone(home_b, root)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom journal.rootlock import root_lock\n"
         "with root_lock(sys.argv[1], sys.argv[2]):\n print('held', flush=True); sys.stdin.read()",
         home_a, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert held_by_someone(home_b, root)
        with pytest.raises(RootBusy) as busy:
            with root_lock(home_b, root, wait=0.2):
                pass
        with open(f"/proc/{holder.pid}/comm") as f:
            name = f.read().strip()
        assert busy.value.message == (
            f"root {root} is being committed to by pid {holder.pid} ({name}); try again when it is done")
    finally:
        holder.communicate(b"")
    assert not held_by_someone(home_b, root)
    with root_lock(home_b, root, wait=0.2):
        assert held_by_someone(home_a, root)


def test_a_root_that_is_gone_is_locked_in_the_state_dir(tmp_path: Path) -> None:
    """Recovery of a root that was removed still serializes within its state dir."""
    home, root = str(tmp_path / "home"), str(tmp_path / "gone")
    with root_lock(home, root, wait=0.2):
        assert held_by_someone(home, root)
        with pytest.raises(RootBusy):
            with root_lock(home, root, wait=0.2):
                pass
    assert not held_by_someone(home, root)
