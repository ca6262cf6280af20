"""``tx run --report FILE``: a file written for the caller, never in the live
tree or the state dir, never through a symlink, never into a live inode.

Each attack names a report path that reaches a live file (or the state dir)
some way; roscoe refuses it before anything begins (exit 125: roscoe's own
failure in a run, as for every other bad option of ``tx run``), and the live
tree stays byte for byte what it was. The tests run as root, as CI does.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.roscoe import Roscoe
from tests.support.trees import snapshot


def refused(roscoe: Roscoe, root: Path, report: str | Path, *where: str) -> str:
    """Run with ``--report report``: refused before the run; returns the error line."""
    before = snapshot(root)
    done = roscoe("tx", "run", *(where or ("--root", str(root))), "--report", report, "--",
                  "sh", "-c", "echo ran > ran.txt", cwd=root)
    assert done.returncode == 125, done.stderr
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert snapshot(root) == before
    if not where:  # nothing begun
        assert json.loads(roscoe("tx", "list", "--json").stdout) == []
    return lines[0]


def inside(report: str | Path, what: str, path: Path) -> str:
    return f"roscoe: error: --report {report}: is inside {what} {path}; roscoe writes no file there"


def test_a_report_at_a_live_file_is_refused(roscoe: Roscoe, root: Path) -> None:
    report = root / "case1" / "notes.md"
    assert refused(roscoe, root, report) == inside(report, "the root", root)


def test_a_new_report_in_the_root_is_refused(roscoe: Roscoe, root: Path) -> None:
    report = root / "case2" / "report.json"
    assert refused(roscoe, root, report) == inside(report, "the root", root)
    assert not report.exists()


def test_a_report_through_a_symlinked_parent_dir_is_refused(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").symlink_to(root / "case1")
    report = tmp_path / "elsewhere" / "notes.md"
    assert refused(roscoe, root, report) == inside(report, "the root", root)


@pytest.mark.parametrize("spelling", ["lexical", "after-a-symlink"])
def test_a_report_spelled_with_dotdot_is_refused(roscoe: Roscoe, root: Path, tmp_path: Path, spelling: str) -> None:
    if spelling == "lexical":
        report = f"{tmp_path}/outside/../{root.name}/case1/notes.md"
        (tmp_path / "outside").mkdir()
    else:  # the kernel takes `..` from where the symlink leads, not from the link
        (tmp_path / "deep").symlink_to(root / "case1" / "Pleadings")
        report = f"{tmp_path}/deep/../notes.md"
    assert refused(roscoe, root, report) == inside(report, "the root", root)


def test_a_report_relative_to_a_cwd_in_the_root_is_refused(roscoe: Roscoe, root: Path) -> None:
    assert refused(roscoe, root, "case1/notes.md") == inside("case1/notes.md", "the root", root)


@pytest.fixture
def bound(root: Path, tmp_path: Path) -> Iterator[Path]:
    """The root bind-mounted at a second path."""
    alias = tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(root), str(alias)], check=True)
    try:
        yield alias
    finally:
        subprocess.run(["umount", str(alias)], check=True)


def test_a_report_through_a_bind_mount_of_the_root_is_refused(roscoe: Roscoe, root: Path, bound: Path) -> None:
    report = bound / "case1" / "notes.md"
    assert refused(roscoe, root, report) == inside(report, "the root", root)


def test_a_report_into_the_state_dir_is_refused(roscoe: Roscoe, root: Path, home: Path) -> None:
    assert roscoe("tx", "list").returncode == 0  # the state dir exists
    journal = (home / "journal.db").read_bytes()
    report = home / "journal.db"
    assert refused(roscoe, root, report) == inside(report, "the state dir", home)
    assert (home / "journal.db").read_bytes() == journal


def test_a_report_with_an_open_transaction_is_checked_too(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    report = root / "case1" / "notes.md"
    assert refused(roscoe, root, report, "--tx", tx) == inside(report, "the root", root)
    assert json.loads(roscoe("tx", "show", tx, "--json").stdout)["runs"] == []


def test_a_report_path_that_is_a_symlink_is_refused_and_its_target_untouched(
    roscoe: Roscoe, root: Path, tmp_path: Path,
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me\n")
    report = tmp_path / "report.json"
    report.symlink_to(victim)
    line = refused(roscoe, root, report)
    assert line == f"roscoe: error: --report {report}: is a symlink; roscoe writes its file only at a file's own name"
    assert victim.read_bytes() == b"keep me\n"
    assert os.readlink(report) == str(victim)


def test_a_report_over_a_hard_link_to_a_live_file_leaves_the_live_file(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    os.link(root / "case1" / "notes.md", report)
    before = snapshot(root)
    done = roscoe("tx", "run", "--root", root, "--report", report, "--", "true", cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_bytes())["exit_code"] == 0
    assert snapshot(root) == before
    assert os.stat(root / "case1" / "notes.md").st_nlink == 1


def test_a_report_swapped_for_a_symlink_during_the_run_is_refused(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    """Checked again when written: a symlink planted at the name while the
    command ran (from outside: the run itself reaches only --writable dirs) is
    not followed."""
    victim = root / "case1" / "notes.md"
    out = tmp_path / "out"
    out.mkdir()
    report = out / "report.json"
    before = snapshot(root)
    planter = subprocess.Popen(["sh", "-c", f'while [ ! -e "{out}/started" ]; do sleep 0.01; done; '
                                            f'ln -s "{victim}" "{report}"'])
    try:
        done = roscoe("tx", "run", "--root", root, "--writable", out, "--report", report, "--",
                      "sh", "-c", f'touch "{out}/started"; sleep 1', cwd=root)
        planter.wait(timeout=30)
    finally:
        planter.kill()  # (never left behind, whatever failed)
        planter.wait()
    assert done.returncode == 125, done.stderr
    assert done.stderr.decode().splitlines()[-1] == (
        f"roscoe: error: --report {report}: is a symlink; roscoe writes its file only at a file's own name")
    assert snapshot(root) == before
    assert os.readlink(report) == str(victim)
