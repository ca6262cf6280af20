"""Rollback controls (issue 15, item 5): a dry run, the log marks what was
rolled back, rolling back twice or rolling back what was never committed
says so plainly."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.roscoe import Roscoe
from tests.support.transactions import committed, error_line, staged
from tests.support.trees import snapshot


def test_a_dry_run_prints_the_diff_the_rollback_would_apply(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt && printf 'more\\n' >> case1/notes.md")
    committed(roscoe, tx)
    after = snapshot(root)
    done = roscoe("tx", "rollback", tx, "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    planned = json.loads(done.stdout)
    assert [(c["path"], c["status"]) for c in planned["changes"]] == [
        ("case1/new.txt", "deleted"), ("case1/notes.md", "modified")]
    assert (planned["tx"], planned["rolls_back"], planned["conflicts"], planned["root"]) == (None, tx, [], str(root))
    assert planned["changes"][1]["new"]["hash"] == json.loads(
        roscoe("tx", "diff", tx, "--json").stdout)["changes"][1]["old"]["hash"]
    assert snapshot(root) == after
    assert [t["tx"] for t in json.loads(roscoe("tx", "list", "--json").stdout)] == [tx]
    # The rollback then applies exactly that diff.
    undo = roscoe("tx", "rollback", tx, "--yes")
    assert undo.returncode == 0, undo.stderr
    rb = undo.stdout.decode().strip()
    assert json.loads(roscoe("tx", "diff", rb, "--json").stdout)["diff_hash"] == planned["diff_hash"]
    text = roscoe("tx", "rollback", rb, "--dry-run")
    assert text.returncode == 0 and b"dry run: nothing was staged or written" in text.stdout


def test_a_dry_run_names_the_conflicts_force_would_override(roscoe: Roscoe, root: Path) -> None:
    first = staged(roscoe, root, "echo one > case1/new.txt")
    committed(roscoe, first)
    later = staged(roscoe, root, "echo two > case1/new.txt")
    committed(roscoe, later)
    planned = json.loads(roscoe("tx", "rollback", first, "--dry-run", "--json").stdout)
    assert (planned["conflicts"], [(c["path"], c["status"]) for c in planned["changes"]]) == (
        ["case1/new.txt"], [("case1/new.txt", "deleted")])


def test_the_log_marks_a_rolled_back_commit_and_twice_is_refused_plainly(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    committed(roscoe, tx)
    rb = roscoe("tx", "rollback", tx, "--yes").stdout.decode().strip()
    log = {e["tx"]: e for e in json.loads(roscoe("tx", "log", "--json").stdout)}
    assert (log[tx]["rolled_back_by"], log[rb]["rolled_back_by"]) == (rb, None)
    assert f"(rolled back by {rb})" in roscoe("tx", "log").stdout.decode()
    before = snapshot(root)
    assert error_line(roscoe("tx", "rollback", tx, "--yes"), 1) == (
        f"transaction {tx} was already rolled back by {rb}; roll back {rb} to apply {tx} again")
    assert error_line(roscoe("tx", "rollback", tx, "--yes", "--force"), 1).startswith(
        f"transaction {tx} was already rolled back by {rb}")
    assert snapshot(root) == before
    # Rolling back the rollback applies it again; then it can be rolled back again.
    again = roscoe("tx", "rollback", rb, "--yes").stdout.decode().strip()
    assert (root / "case1" / "new.txt").read_text() == "new\n"
    log = {e["tx"]: e for e in json.loads(roscoe("tx", "log", "--json").stdout)}
    assert (log[tx]["rolled_back_by"], log[rb]["rolled_back_by"]) == (None, again)
    assert roscoe("tx", "rollback", tx, "--yes").returncode == 0
    assert not (root / "case1" / "new.txt").exists()


def test_rolling_back_what_was_never_committed_says_so(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    assert error_line(roscoe("tx", "rollback", tx, "--yes"), 1) == (
        f"transaction {tx} is open, not committed: only a committed transaction can be rolled back;"
        " `roscoe tx abort` discards its staged changes")
    assert error_line(roscoe("tx", "rollback", tx, "--dry-run"), 1).startswith(f"transaction {tx} is open, not committed")
    assert roscoe("tx", "abort", tx).returncode == 0
    assert error_line(roscoe("tx", "rollback", tx, "--yes"), 1) == (
        f"transaction {tx} is aborted, not committed: only a committed transaction can be rolled back;"
        " it never changed the live tree")
