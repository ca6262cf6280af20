"""The state dir: never inside the root, private (0700, journal 0600), and a
full filesystem under it: abort always works, errors say what ran out and where.

The full filesystems are real: a tmpfs the test mounts (as root, as CI runs)
with a size or an inode count, filled by a run or by an unrelated file.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.roscoe import Roscoe
from tests.support.transactions import run_tx, staged
from tests.support.trees import snapshot

NOT_JOURNALED = ("roscoe: error: transaction {tx}: its staged changes are discarded, but the abort could not be"
                 " journaled: state dir {home}: its filesystem is out of space (tmpfs at {mnt}: 0 bytes of"
                 " 4.0 MiB free); once there is room, roscoe tx abort {tx} finishes it\n")
DISCARDED = ("roscoe: error: the staged changes of transaction {tx} were discarded by an abort that could not"
             " be journaled; nothing of it can be run, shown or committed: roscoe tx abort {tx} finishes the abort\n")


@pytest.fixture
def small(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of 4 MiB (or the options of ``@pytest.mark.parametrize("small", ...,
    indirect=True)``), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    options = getattr(request, "param", "size=4m")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem has no byte left."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    assert os.statvfs(path).f_bavail == 0


def fill_inodes(directory: Path) -> None:
    """Make empty files in ``directory`` until its filesystem has no inode left."""
    directory.mkdir()
    n = 0
    try:
        while True:
            (directory / str(n)).touch()
            n += 1
    except OSError:
        pass
    assert os.statvfs(directory).f_favail == 0


def verified(roscoe: Roscoe) -> None:
    done = roscoe("verify", "--json")
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["problems"] == []


def state(roscoe: Roscoe, tx: str) -> str:
    """From ``tx list`` (``tx show`` of a transaction whose layer an abort discarded fails)."""
    return next(str(t["state"]) for t in json.loads(roscoe("tx", "list", "--json").stdout) if t["tx"] == tx)


# -- a full state dir ------------------------------------------------------------------


def test_abort_gives_back_the_space_a_run_filled(small: Path, root: Path) -> None:
    roscoe = Roscoe(small / "home")
    before = snapshot(root)
    tx, _ = run_tx(roscoe, root, "head -c 64M /dev/zero > big.bin; echo small > small.txt")  # the run fills the disk
    assert os.statvfs(small).f_bavail == 0
    done = roscoe("tx", "abort", tx)
    assert (done.returncode, done.stderr) == (
        0, f"roscoe: tx {tx} aborted; its staged changes are discarded and the live tree was not touched\n".encode())
    assert os.listdir(small / "home" / "tx") == []
    assert state(roscoe, tx) == "aborted"
    assert snapshot(root) == before
    verified(roscoe)


def test_abort_on_a_state_dir_an_unrelated_file_filled(small: Path, root: Path) -> None:
    """The staged layer goes first; the journal, which cannot be opened on a
    full disk, says aborted once there is room; meanwhile every command says
    what happened."""
    home = small / "home"
    roscoe = Roscoe(home)
    before = snapshot(root)
    tx = staged(roscoe, root, "echo staged > staged.txt")
    fill(small / "filler")
    done = roscoe("tx", "abort", tx[:6])
    assert (done.returncode, done.stderr.decode()) == (1, NOT_JOURNALED.format(tx=tx, home=home, mnt=small))
    assert sorted(os.listdir(home / "tx" / tx)) == ["discarded", "lock"]
    assert os.listdir(home / "tx" / tx / "discarded") == []
    os.unlink(small / "filler")
    assert state(roscoe, tx) == "open"
    for args, code, first in ((("tx", "diff", tx), 1, ""), (("tx", "commit", tx, "--yes"), 1, ""),
                              (("tx", "run", "--tx", tx, "--", "true"), 125, f"roscoe: tx {tx}\n")):
        done = roscoe(*args, cwd=root)
        assert (done.returncode, done.stderr.decode()) == (code, first + DISCARDED.format(tx=tx)), args
    assert roscoe("tx", "abort", tx).returncode == 0
    assert state(roscoe, tx) == "aborted"
    assert not (home / "tx" / tx).exists()
    assert snapshot(root) == before
    verified(roscoe)


def test_a_crash_between_discarding_and_journaling_the_abort(roscoe: Roscoe, root: Path, home: Path) -> None:
    tx = staged(roscoe, root, "echo staged > staged.txt")
    done = roscoe("tx", "abort", tx, env={"ROSCOE_FAULT": "abort-discarded"})
    assert done.returncode == 70
    assert state(roscoe, tx) == "open"
    done = roscoe("tx", "show", tx)
    assert (done.returncode, done.stderr.decode()) == (1, DISCARDED.format(tx=tx))
    assert roscoe("tx", "abort", tx).returncode == 0
    assert state(roscoe, tx) == "aborted"
    assert not (home / "tx" / tx).exists()
    verified(roscoe)


@pytest.mark.parametrize("small", ["size=4m"], indirect=True)
def test_a_full_state_dir_says_no_space_and_where(small: Path, root: Path) -> None:
    home = small / "home"
    roscoe = Roscoe(home)
    tx = roscoe.begin(root)
    fill(small / "filler")
    before = snapshot(root)
    message = (f"roscoe: error: state dir {home}: its filesystem is out of space (tmpfs at {small}: 0 bytes of"
               " 4.0 MiB free); nothing was changed\n")
    for args, code in ((("tx", "begin", "--root", root), 1), (("tx", "commit", tx, "--yes"), 1),
                       (("tx", "run", "--tx", tx, "--", "true"), 125)):
        done = roscoe(*args, cwd=root)
        assert (done.returncode, done.stdout, done.stderr.decode()) == (code, b"", message), args
    assert snapshot(root) == before


@pytest.mark.parametrize("small", ["size=16m,nr_inodes=64"], indirect=True)
def test_a_state_dir_out_of_inodes_says_so(small: Path, root: Path) -> None:
    home = small / "home"
    roscoe = Roscoe(home)
    roscoe.begin(root)
    fill_inodes(small / "many")
    done = roscoe("tx", "begin", "--root", root)
    assert (done.returncode, done.stdout, done.stderr.decode()) == (1, b"", (
        f"roscoe: error: state dir {home}: its filesystem is out of inodes (tmpfs at {small}: 0 of 64 inodes"
        " free); nothing was changed\n"))


@pytest.mark.parametrize("small", ["size=8m"], indirect=True)
def test_a_commit_whose_images_do_not_fit_says_where(small: Path, root: Path) -> None:
    """Room for the journal, not for the old bytes a commit keeps: nothing is written."""
    home = small / "home"
    roscoe = Roscoe(home)
    (root / "scan.pdf").write_bytes(os.urandom(6 << 20))
    tx = staged(roscoe, root, "echo page >> scan.pdf")
    with open(small / "filler", "wb") as f:
        f.write(b"\0" * (os.statvfs(small).f_bavail * os.statvfs(small).f_frsize - (1 << 20)))
    before = snapshot(root)
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 1
    assert re.fullmatch(
        rf"roscoe: error: state dir {re.escape(str(home))}: its filesystem is out of space \(tmpfs at"
        rf" {re.escape(str(small))}: [0-9.]+ (KiB|MiB) of 8\.0 MiB free\); nothing was written to the live tree\n",
        done.stderr.decode()), done.stderr
    assert snapshot(root) == before
    assert state(roscoe, tx) == "open"
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []
    verified(roscoe)


# -- where the state dir may be -------------------------------------------------------

INSIDE = {
    "begin --root": ((("tx", "begin", "--root", "{root}"), {}), 2),
    "run --root": ((("tx", "run", "--root", "{root}", "--", "true"), {}), 125),
    "plan --root": ((("tx", "plan", "--root", "{root}", "{plan}"), {}), 2),
    "ROSCOE_ROOT begin": ((("tx", "begin"), {"ROSCOE_ROOT": "{root}"}), 2),
    "ROSCOE_ROOT list": ((("tx", "list"), {"ROSCOE_ROOT": "{root}"}), 2),
}


@pytest.mark.parametrize("how", list(INSIDE))
def test_a_state_dir_inside_the_root_is_refused_before_it_is_made(root: Path, tmp_path: Path, how: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1, "ops": [{"op": "mkdir", "path": "made"}]}')
    (args, env), code = INSIDE[how]
    home = root / "case1" / ".roscoe"
    before = snapshot(root)
    done = Roscoe(home)(*(a.format(root=root, plan=plan) for a in args),
                        env={k: v.format(root=root) for k, v in env.items()}, cwd=tmp_path)
    assert (done.returncode, done.stderr.decode()) == (
        code, f"roscoe: error: root {root}: overlaps the state dir {home}\n")
    assert snapshot(root) == before


def test_the_state_dir_is_0700_and_the_journal_0600_whatever_the_umask(roscoe: Roscoe, root: Path, home: Path) -> None:
    done = subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh", sys.executable, "-m", "cli.main",
                           "tx", "begin", "--root", str(root)], env=roscoe.env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert {p: stat.S_IMODE(os.stat(home / p).st_mode) for p in (".", "tx", "journal.db")} == {
        ".": 0o700, "tx": 0o700, "journal.db": 0o600}


def test_the_journal_files_are_0600_while_open_whatever_the_umask(tmp_path: Path) -> None:
    from journal.opening import open_workspace

    old = os.umask(0)
    try:
        ws = open_workspace(tmp_path / "fresh")
        try:
            ws.journal.log_event(None, "test", {})
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "fresh").glob("journal.db*")}
        finally:
            ws.close()
    finally:
        os.umask(old)
    assert modes == {"journal.db": 0o600, "journal.db-wal": 0o600, "journal.db-shm": 0o600}
    assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) == 0o700
