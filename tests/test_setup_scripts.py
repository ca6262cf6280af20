"""The demo's inputs and the set-up scripts: examples/cases, examples/reorganize.py, scripts/, .ci/run;
the demo's whole job (run, diff, commit, rollback, verify) as scripts/demo.sh does it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import snapshot

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "examples" / "cases"
REORGANIZE = REPO / "examples" / "reorganize.py"
COMMANDS = [REPO / ".ci" / "run", REPO / "scripts" / "demo.sh", REPO / "scripts" / "test.sh"]

# The tree reorganize.py must leave behind for examples/cases, path -> source path
# (None: a file it writes).
EXPECTED = {
    "acme-corp-lease-dispute/Contracts/2022-09-01 first amendment.txt":
        "acme-corp-lease-dispute/Contracts/first amendment - 2022-09-01.txt",
    "acme-corp-lease-dispute/Contracts/commercial lease 2021.txt":
        "acme-corp-lease-dispute/Contracts/commercial lease 2021.txt",
    "acme-corp-lease-dispute/Correspondence/2024-02-05 notice of default.txt":
        "acme-corp-lease-dispute/Correspondence/20240205_notice_of_default.txt",
    "acme-corp-lease-dispute/Correspondence/draft.txt": "acme-corp-lease-dispute/Correspondence/draft.txt",
    "acme-corp-lease-dispute/Discovery/privilege log.txt": "acme-corp-lease-dispute/Discovery/privilege log.txt",
    "acme-corp-lease-dispute/INDEX.md": None,
    "acme-corp-lease-dispute/Pleadings/petition for declaratory judgment.txt":
        "acme-corp-lease-dispute/Pleadings/petition for declaratory judgment.txt",
    "acme-corp-lease-dispute/Unsorted/scan0004.txt": "acme-corp-lease-dispute/Correspondence/scan0004.txt",
    "acme-corp-lease-dispute/notes.md": "acme-corp-lease-dispute/notes.md",
    "estate-of-hargrove/Correspondence/2024-01-18 letter to executor (copy).txt":
        "estate-of-hargrove/Correspondence/2024-01-18 letter to executor (copy).txt",
    "estate-of-hargrove/Correspondence/2024-01-18 letter to executor.txt":
        "estate-of-hargrove/Correspondence/2024-01-18 letter to executor.txt",
    "estate-of-hargrove/Correspondence/2024-02-26 notice to creditors.txt":
        "estate-of-hargrove/Correspondence/20240226_notice_to_creditors.txt",
    "estate-of-hargrove/INDEX.md": None,
    "estate-of-hargrove/Inventory/2024-02-05 appraisal.txt": "estate-of-hargrove/Inventory/appraisal_2024_02_05.txt",
    "estate-of-hargrove/Inventory/asset inventory.txt": "estate-of-hargrove/Inventory/asset inventory.txt",
    "estate-of-hargrove/Unsorted/scan0003.txt": "estate-of-hargrove/scan0003.txt",
    "estate-of-hargrove/Will/2019-06-12 codicil.txt": "estate-of-hargrove/Will/codicil 2019-06-12.txt",
    "estate-of-hargrove/Will/last will and testament.txt": "estate-of-hargrove/Will/last will and testament.txt",
    "estate-of-hargrove/notes.md": "estate-of-hargrove/notes.md",
    "in-re-delgado-custody/Correspondence/2024-04-02 letter from guardian ad litem.txt":
        "in-re-delgado-custody/Correspondence/Apr 2 2024 letter from guardian ad litem.txt",
    "in-re-delgado-custody/Court Orders/2024-03-28 temporary order.txt":
        "in-re-delgado-custody/Court Orders/temporary order 2024-03-28.txt",
    "in-re-delgado-custody/INDEX.md": None,
    "in-re-delgado-custody/Pleadings/2024-03-20 declaración de la madre.txt":
        "in-re-delgado-custody/Pleadings/declaración de la madre 2024-03-20.txt",
    "in-re-delgado-custody/Pleadings/petition for custody.txt": "in-re-delgado-custody/Pleadings/petition for custody.txt",
    "in-re-delgado-custody/Unsorted/scan0005.txt": "in-re-delgado-custody/scan0005.txt",
    "in-re-delgado-custody/notes.md": "in-re-delgado-custody/notes.md",
    "smith-v-jones/Correspondence/2024-03-01 letter to client.txt":
        "smith-v-jones/Correspondence/2024-03-01 letter to client.txt",
    "smith-v-jones/Correspondence/2024-03-15 letter to opposing counsel.txt":
        "smith-v-jones/Correspondence/letter to opposing counsel 03-15-2024.txt",
    "smith-v-jones/Correspondence/2024-03-22 email from client.txt":
        "smith-v-jones/Correspondence/email from client March 22, 2024.txt",
    "smith-v-jones/Discovery/2024-04-10 request for production.txt":
        "smith-v-jones/Discovery/request_for_production_2024_04_10.txt",
    "smith-v-jones/Discovery/interrogatories set 1.txt": "smith-v-jones/Discovery/interrogatories set 1.txt",
    "smith-v-jones/INDEX.md": None,
    "smith-v-jones/Pleadings/answer and affirmative defenses.txt":
        "smith-v-jones/Pleadings/answer and affirmative defenses.txt",
    "smith-v-jones/Pleadings/complaint.txt": "smith-v-jones/Pleadings/complaint.txt",
    "smith-v-jones/Unsorted/scan0001.txt": "smith-v-jones/scan0001.txt",
    "smith-v-jones/Unsorted/scan0002.txt": "smith-v-jones/Discovery/scan0002.txt",
    "smith-v-jones/Unsorted/scan0006.txt": "scan0006.txt",
    "smith-v-jones/notes.md": "smith-v-jones/notes.md",
}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def reorganize(root: Path) -> str:
    done = subprocess.run([sys.executable, str(REORGANIZE), str(root)],
                          capture_output=True, text=True, check=True)
    assert done.stderr == ""
    return done.stdout


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    root = tmp_path / "projects"
    shutil.copytree(CASES, root)
    return root


def test_sample_cases_are_small_and_plain_text():
    files = tree(CASES)
    assert 25 <= len(files) <= 40
    assert sum(map(len, files.values())) < 50_000
    for data in files.values():
        data.decode("utf-8")


def test_reorganize_gives_the_expected_tree(cases: Path):
    before = tree(cases)
    out = reorganize(cases)
    after = tree(cases)
    assert sorted(after) == sorted(EXPECTED)
    for path, source in EXPECTED.items():
        if source is not None:
            assert after[path] == before[source], path
    assert out.splitlines()[-1] == (
        "reorganize: 4 cases; 2 duplicates deleted, 6 scans moved, 11 files renamed, "
        "4 indexes written, 1 left for review")


def test_reorganize_writes_an_index_per_case(cases: Path):
    reorganize(cases)
    case = cases / "in-re-delgado-custody"
    size = {p.relative_to(case).as_posix(): f"({p.stat().st_size:,} bytes)" for p in case.rglob("*.*")}
    assert (case / "INDEX.md").read_text(encoding="utf-8") == (
        "# in-re-delgado-custody\n\n"
        "6 files. Written by reorganize.py; rewritten on its next run.\n\n"
        f"## (case folder)\n\n- notes.md {size['notes.md']}\n\n"
        "## Correspondence\n\n- 2024-04-02 letter from guardian ad litem.txt "
        f"{size['Correspondence/2024-04-02 letter from guardian ad litem.txt']}\n\n"
        "## Court Orders\n\n- 2024-03-28 temporary order.txt "
        f"{size['Court Orders/2024-03-28 temporary order.txt']}\n\n"
        "## Pleadings\n\n- 2024-03-20 declaración de la madre.txt "
        f"{size['Pleadings/2024-03-20 declaración de la madre.txt']}\n"
        f"- petition for custody.txt {size['Pleadings/petition for custody.txt']}\n\n"
        f"## Unsorted\n\n- scan0005.txt {size['Unsorted/scan0005.txt']}\n")


def test_reorganize_is_deterministic_and_a_second_run_changes_nothing(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(CASES, first)
    shutil.copytree(CASES, second)
    assert reorganize(first) == reorganize(second).replace(str(second), str(first))
    assert tree(first) == tree(second)
    settled = tree(first)
    again = reorganize(first)
    assert tree(first) == settled
    assert again == (
        "keep    estate-of-hargrove/Correspondence/2024-01-18 letter to executor (copy).txt"
        " (differs from 2024-01-18 letter to executor.txt)\n"
        "reorganize: 4 cases; 0 duplicates deleted, 0 scans moved, 0 files renamed, "
        "0 indexes written, 1 left for review\n")


@pytest.mark.parametrize("script", [*COMMANDS, REPO / "scripts" / "lib.sh"],
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_scripts_parse(script: Path):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_commands_are_executable(command: Path):
    assert os.access(command, os.X_OK)


def test_demo_commits_rolls_back_to_the_same_tree_and_verifies(tmp_path: Path):
    """scripts/demo.sh without its set-up (the roscoe on PATH is this checkout's), twice:
    each run works in a scratch dir of its own under TMPDIR and leaves examples/cases alone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "roscoe").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m cli.main "$@"\n')
    (bin_dir / "roscoe").chmod(0o755)
    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROSCOE_")}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(scratch_parent),
               ROSCOE_CONFIG=str(tmp_path / "absent.toml"))  # the demo unsets it: no config of the caller's
    cases = snapshot(CASES)
    for round_ in (1, 2):
        done = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--no-install"], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(list(scratch_parent.iterdir())) == round_
        lines = done.stdout.splitlines()
        scratch = next(p for p in scratch_parent.iterdir() if f"live tree:    {p}/projects " in done.stdout)
        before = (scratch / "before.txt").read_text()
        assert f"    the listing matches: every path in {scratch}/projects is as it was." in lines
        assert (scratch / "staged.txt").read_text() == before
        assert (scratch / "committed.txt").read_text() != before
        assert (scratch / "after.txt").read_text() == before
        assert sorted(p.name for p in scratch.iterdir()) == [
            "after.txt", "before.txt", "committed.txt", "projects", "staged.txt", "state"]
        assert f"    the listing matches the one taken before the run ({len(before.splitlines())} paths: " \
            "bytes, modes, owners and mtimes)" in lines
        assert "ok: checked 2 committed transactions, 23 blobs, 44 live paths, 10 audit events" in lines
        assert " rolled back by tx " in done.stderr
    assert snapshot(CASES) == cases
