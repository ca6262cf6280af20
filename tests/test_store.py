"""The SQLite journal: schema versioning, WAL + synchronous=FULL, names that
are not UTF-8, and readable with sqlite-utils and the sqlite3 command."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from cowfs.errors import ExitCode
from journal.errors import NewerJournal
from journal.opening import open_workspace
from journal.store import SCHEMA_VERSION, Journal
from tests.support.roscoe import Roscoe


def test_fresh_journal_is_wal_full_and_versioned(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.db"))
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert j.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    j.close()


def test_newer_journal_is_refused_and_left_alone(tmp_path: Path, roscoe: Roscoe, home: Path) -> None:
    home.mkdir()
    db = sqlite3.connect(home / "journal.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    before = (home / "journal.db").read_bytes()
    with pytest.raises(NewerJournal) as err:
        Journal(str(home / "journal.db"))
    assert err.value.exit_code == ExitCode.ERROR
    done = roscoe("tx", "list")
    assert done.returncode == 1
    assert done.stderr == (
        f"roscoe: error: journal {home / 'journal.db'} has schema version {SCHEMA_VERSION + 1}, newer than this"
        f" roscoe understands ({SCHEMA_VERSION}); upgrade roscoe\n"
    ).encode()
    assert (home / "journal.db").read_bytes() == before


def test_corrupt_journal_is_a_clear_error(roscoe: Roscoe, home: Path) -> None:
    home.mkdir()
    (home / "journal.db").write_bytes(b"this is not a database" * 100)
    done = roscoe("tx", "list")
    assert done.returncode == 1
    assert done.stderr == f"roscoe: error: journal {home / 'journal.db'} cannot be read: file is not a database\n".encode()


def test_library_use_without_the_cli(tmp_path: Path) -> None:
    root = tmp_path / os.fsdecode(b"root \xff")
    root.mkdir()
    (root / "a.txt").write_text("a")
    ws = open_workspace(tmp_path / "home")
    try:
        tx = ws.begin(root, "library")
        result = ws.run(tx.id, ["sh", "-c", "echo b > b.txt"], cwd=str(root))
        assert (result.exit_code, result.backend) == (0, "kernel")
        assert [(c.path, c.status) for c in ws.diff(tx.id).changes] == [("b.txt", "added")]
        assert ws.get(tx.id).root == str(root)
        assert [r.argv for r in ws.journal.runs(tx.id)] == [["sh", "-c", "echo b > b.txt"]]
        assert ws.journal.bases(tx.id) == {"b.txt": None}
    finally:
        ws.close()


def test_journal_reads_with_sqlite_utils_and_sqlite3(roscoe: Roscoe, root: Path, home: Path) -> None:
    import sqlite_utils

    tx = roscoe.begin(root, "-m", "audit me")
    assert roscoe("tx", "run", "--tx", tx, "--", "true").returncode == 0
    db = sqlite_utils.Database(home / "journal.db")
    assert {"transactions", "runs", "bases"} <= set(db.table_names())
    row = next(db["transactions"].rows)
    assert (row["id"], row["message"], row["state"], row["root"]) == (tx, "audit me", "open", os.fsencode(root))
    if shutil.which("sqlite3") is None:
        pytest.fail("the sqlite3 command is missing: scripts/test.sh installs it")
    out = subprocess.run(
        ["sqlite3", str(home / "journal.db"), "SELECT id, state FROM transactions"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out == f"{tx}|open\n"
