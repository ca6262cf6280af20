"""Rows of the journal are not trusted blindly (issue 14, gaps 2 and 5).

Someone who can write the journal edits a ``changes`` row to point outside
the root: rollback, recovery (run by any command) and verify must refuse to
use it, and nothing outside the root is touched. Rows edited after a commit
no longer hash to the diff_hash its commit event recorded: verify says so.
The config recorded at begin is held to its begin event's hash.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from cowfs.converge import converge
from cowfs.errors import UnsafePath
from tests.conftest import Roscoe, snapshot
from tests.test_policy import committed, error_line, staged, write_config


def journal(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "journal.db", isolation_level=None)


def verify(roscoe: Roscoe) -> dict:
    done = roscoe("verify", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == (0 if report["ok"] else 1 if not report["healthy"] else 3), done.stderr
    return report


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the root that an edited journal row points at."""
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(b"not roscoe's to touch\n")
    return path


def edit_path(home: Path, tx: str, old: str, new: str) -> None:
    db = journal(home)
    db.execute("UPDATE changes SET path = ? WHERE tx = ? AND path = ?", (os.fsencode(new), tx, os.fsencode(old)))
    assert db.total_changes == 1
    db.close()


def refusal(home: Path, tx: str, rel: str) -> str:
    return (f"journal {home / 'journal.db'} cannot be read: transaction {tx} names the path {rel!r}, which is"
            " not a plain path inside its root; it was never written by roscoe (the journal was edited)"
            " and is not used")


def test_a_row_edited_outside_the_root_is_never_rolled_back(
    roscoe: Roscoe, root: Path, home: Path, victim: Path,
) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    committed(roscoe, tx)
    rel = os.path.relpath(victim, root)
    assert rel.startswith("../")
    edit_path(home, tx, "case1/new.txt", rel)
    before = snapshot(root)
    assert error_line(roscoe("tx", "rollback", tx, "--yes"), 1) == refusal(home, tx, rel)
    assert victim.read_bytes() == b"not roscoe's to touch\n"
    assert snapshot(root) == before
    report = verify(roscoe)
    assert [p for p in report["problems"] if p["kind"] == "journal"] == [
        {"kind": "journal", "tx": tx, "path": None, "detail": refusal(home, tx, rel)}]


@pytest.mark.parametrize("rel", ["/etc/passwd-roscoe", "case1//new.txt", "case1/./new.txt", "", "case1/.."])
def test_every_unplain_spelling_is_refused(roscoe: Roscoe, root: Path, home: Path, rel: str) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    committed(roscoe, tx)
    edit_path(home, tx, "case1/new.txt", rel)
    before = snapshot(root)
    assert error_line(roscoe("tx", "rollback", tx, "--yes"), 1) == refusal(home, tx, rel)
    assert snapshot(root) == before


def test_recovery_by_any_command_refuses_a_row_outside_the_root(
    roscoe: Roscoe, root: Path, home: Path, victim: Path,
) -> None:
    # A commit that looks interrupted: recovery (which every command runs
    # first) would put its paths back, deleting what it "added".
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    committed(roscoe, tx)
    rel = os.path.relpath(victim, root)
    edit_path(home, tx, "case1/new.txt", rel)
    db = journal(home)
    db.execute("UPDATE transactions SET state = 'committing' WHERE id = ?", (tx,))
    db.close()
    before = snapshot(root)
    assert error_line(roscoe("tx", "list"), 1) == refusal(home, tx, rel)
    assert victim.read_bytes() == b"not roscoe's to touch\n"
    assert snapshot(root) == before


def test_converge_itself_never_climbs_out_of_the_root(root: Path, victim: Path) -> None:
    rel = os.path.relpath(victim, root)
    with pytest.raises(UnsafePath):
        converge(str(root), [(rel, None)], content=lambda p, e: iter([b""]), tag="t", owners=False)
    assert victim.read_bytes() == b"not roscoe's to touch\n"


@pytest.mark.parametrize(("column", "sql"), [
    ("new", "UPDATE changes SET new = replace(new, '\"0644\"', '\"0600\"') WHERE tx = ?"),
    ("status", "UPDATE changes SET status = 'modified' WHERE tx = ?"),
    ("dropped", "DELETE FROM changes WHERE tx = ? AND seq = 1"),
])
def test_rows_edited_after_the_commit_no_longer_hash_to_its_diff_hash(
    roscoe: Roscoe, root: Path, home: Path, column: str, sql: str,
) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt && echo two > case1/two.txt")
    committed(roscoe, tx)
    assert verify(roscoe)["ok"] is True
    recorded = json.loads(roscoe("tx", "show", tx, "--json").stdout)["diff_hash"]
    db = journal(home)
    db.execute(sql, (tx,))
    assert db.total_changes >= 1
    db.close()
    problems = [p for p in verify(roscoe)["problems"] if p["kind"] == "journal"]
    assert len(problems) == 1, problems
    assert problems[0]["tx"] == tx
    assert problems[0]["detail"].endswith(
        f"not to {recorded}, the diff_hash its commit event recorded: the journal was edited after the commit")


# -- the config in force at begin ------------------------------------------------------

def test_a_config_named_later_cannot_loosen_the_policy(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    write_config(home, '[policy]\ndeny = ["case1/**"]\n')
    tx = staged(roscoe, root, "echo x >> case1/notes.md")
    before = snapshot(root)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    refusal = (f"transaction {tx} cannot be committed: refused by policy: case1/notes.md (deny 'case1/**');"
               " nothing was written")
    assert error_line(roscoe("--config", empty, "tx", "commit", tx, "--yes"), 4) == refusal
    assert error_line(roscoe("tx", "commit", tx, "--yes", env={"ROSCOE_CONFIG": str(empty)}), 4) == refusal
    # Editing the config after the transaction began does not loosen it either.
    write_config(home, "")
    assert error_line(roscoe("tx", "commit", tx, "--yes"), 4) == refusal
    assert snapshot(root) == before


def test_a_config_named_later_adds_its_rules(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    tx = staged(roscoe, root, "echo x >> case1/notes.md")
    stricter = tmp_path / "stricter.toml"
    stricter.write_text('[policy]\ndeny = ["**/notes.md"]\n')
    before = snapshot(root)
    assert error_line(roscoe("--config", stricter, "tx", "commit", tx), 4) == (
        f"transaction {tx} cannot be committed: refused by policy: case1/notes.md (deny '**/notes.md');"
        " nothing was written")
    assert snapshot(root) == before
    committed(roscoe, tx)


def test_a_named_config_adds_to_the_state_dirs_own(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    write_config(home, '[policy]\ndeny = ["case1/**"]\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    done = roscoe("--config", empty, "tx", "run", "--root", root, "--commit", "--yes", "--",
                  "sh", "-c", "echo x >> case1/notes.md", cwd=root)
    assert done.returncode == 4, done.stderr
    assert (root / "case1" / "notes.md").read_text() == "# notes\n"


def test_the_recorded_config_is_in_the_journal_and_the_audit_trail(
    roscoe: Roscoe, root: Path, home: Path, tmp_path: Path,
) -> None:
    import hashlib

    own = write_config(home, "[approval]\nwhen_deleting = true\n")
    named = tmp_path / "named.toml"
    named.write_text("[policy]\nmax_changes = 5\n")
    done = roscoe("--config", named, "tx", "begin", "--root", root)
    assert done.returncode == 0, done.stderr
    tx = done.stdout.decode().strip()
    sources = [{"path": str(own), "sha256": hashlib.sha256(own.read_bytes()).hexdigest()},
               {"path": str(named), "sha256": hashlib.sha256(named.read_bytes()).hexdigest()}]
    events = json.loads(roscoe("audit", "--json").stdout)["events"]
    begin = [e for e in events if e["tx"] == tx and e["kind"] == "begin"]
    assert begin[0]["detail"]["config"] == sources
    db = journal(home)
    (rules,) = db.execute("SELECT rules FROM transactions WHERE id = ?", (tx,)).fetchone()
    assert json.loads(rules) == [[s["path"], s["sha256"], text] for s, text in
                                 zip(sources, ["[approval]\nwhen_deleting = true\n", "[policy]\nmax_changes = 5\n"])]
    assert verify(roscoe)["ok"] is True
    # Loosening the recorded rules in the journal is found.
    db.execute("UPDATE transactions SET rules = replace(rules, 'max_changes = 5', 'max_changes = 500') WHERE id = ?",
               (tx,))
    db.close()
    problems = [p for p in verify(roscoe)["problems"] if p["kind"] == "journal"]
    assert problems == [{"kind": "journal", "tx": tx, "path": None, "detail": (
        f"the config recorded with transaction {tx} is not the one its begin event names ({named}):"
        " the journal was edited")}]


def test_the_strictest_of_configs_keeps_every_rule_of_each(tmp_path: Path) -> None:
    from journal.config import ApprovalRules, Config, Policy, parse, strictest

    loose = parse(b"[policy]\nmax_changes = 50\n[approval]\nwhen_changes_over = 10\nnotify = 'a'\n", "loose")
    strict = parse(b'[policy]\ndeny = ["*.exe"]\nmax_changes = 5\nmax_bytes = 9\n'
                   b'[approval]\nwhen_deleting = true\nwhen_bytes_over = 3\nwhen_paths = ["x/**"]\n', "strict")
    both = strictest([loose, strict])
    strict = strict._replace(policy=strict.policy._replace(owners="keep"))
    loose = loose._replace(policy=loose.policy._replace(symlinks="inside"))
    both = strictest([loose, strict])
    assert both == Config("loose, strict", Policy(("*.exe",), 5, 9, "keep", "inside"),
                          ApprovalRules(True, 10, 3, ("x/**",), ("a",), 30.0), {})
    assert strictest([strict, loose]) == both._replace(path="strict, loose")
    # Every field of Policy and ApprovalRules is merged: a new rule that
    # strictest() forgets would come back as its default here.
    assert all(getattr(both.policy, f) != d for f, d in zip(Policy._fields, Policy()))
    assert all(getattr(both.approval, f) != d for f, d in zip(ApprovalRules._fields, ApprovalRules())
               if f != "notify_timeout")
