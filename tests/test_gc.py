"""Retention: `roscoe gc --keep-days N` drops the images of old commits, and a
rollback that would need them says so instead of guessing."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from journal.gc import gc
from journal.store import SCHEMA_VERSION
from journal.opening import open_workspace
from tests.support.roscoe import Roscoe
from tests.support.system import gone_pid
from tests.support.trees import snapshot


def committed(roscoe: Roscoe, root: Path, script: str) -> str:
    tx = roscoe.begin(root)
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=root).returncode == 0
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    return tx


def blob_count(home: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(home / "blobs"))


def test_gc_keeps_recent_images_and_drops_old_ones(roscoe: Roscoe, root: Path, home: Path) -> None:
    tx = committed(roscoe, root, "printf 'v2\\n' > case1/notes.md && rm case1/old.tmp")
    assert blob_count(home) == 2  # old notes.md, old old.tmp (new bytes need no image)
    done = roscoe("gc", "--keep-days", "30", "--json")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"dropped": [], "removed_blobs": 0, "freed_bytes": 0})
    after = snapshot(root)
    ws = open_workspace(home)
    try:
        assert gc(ws, 0, grace_ns=0) == {"dropped": [tx], "removed_blobs": 2, "freed_bytes": 8 + 9}
    finally:
        ws.close()
    assert blob_count(home) == 0
    done = roscoe("tx", "rollback", tx, "--yes")
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr == f"roscoe: error: transaction {tx} is too old to roll back: `roscoe gc` dropped its images\n".encode()
    assert snapshot(root) == after
    log = json.loads(roscoe("tx", "log", "--json").stdout)
    assert [(t["tx"], t["images_dropped"]) for t in log] == [(tx, True)]
    assert roscoe("verify").returncode == 0


def test_gc_rejects_a_negative_age(roscoe: Roscoe) -> None:
    done = roscoe("gc", "--keep-days", "-1")
    assert (done.returncode, done.stderr) == (2, b"roscoe: error: --keep-days must be 0 or more\n")


def test_a_version_1_journal_is_migrated(roscoe: Roscoe, root: Path, home: Path) -> None:
    home.mkdir()
    db = sqlite3.connect(home / "journal.db")
    from journal.store import SCHEMA

    db.executescript(SCHEMA[0])
    db.execute(
        "INSERT INTO transactions VALUES ('aaaaaaaaaaaa', ?, 'old', 'open', NULL, 'u', 'h', 1, 1)",
        (os.fsencode(root),),
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    listed = json.loads(roscoe("tx", "list", "--json").stdout)
    assert [(t["tx"], t["state"], t["message"], t["rolls_back"]) for t in listed] == [("aaaaaaaaaaaa", "open", "old", None)]
    db = sqlite3.connect(home / "journal.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"changes", "audit", "approvals"} <= {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_recover_removes_the_staging_a_crash_after_the_commit_record_left(roscoe: Roscoe, root: Path, home: Path) -> None:
    tx = roscoe.begin(root)
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo x > x.txt", cwd=root).returncode == 0
    done = roscoe("tx", "commit", tx, "--yes", env={"ROSCOE_FAULT": "after-record"})
    assert done.returncode == 70
    assert (home / "tx" / tx / "upper" / "x.txt").exists()
    done = roscoe("recover")
    assert (done.returncode, done.stderr) == (0, (
        f"roscoe: removed the leftover staging dir of finished tx {tx}\nroscoe: nothing to recover\n").encode())
    assert not (home / "tx" / tx).exists()
    assert (root / "x.txt").read_text() == "x\n"
    assert roscoe("verify").returncode == 0


def test_gc_removes_the_temp_files_of_a_crashed_copy_into_the_store(roscoe: Roscoe, root: Path, home: Path) -> None:
    committed(roscoe, root, "printf 'v2\\n' > case1/notes.md && rm case1/old.tmp")
    dead = gone_pid()
    fan = home / "blobs" / "ab"
    fan.mkdir(exist_ok=True)
    (fan / f".cdef.{dead}.tmp").write_bytes(b"x" * 100)
    (fan / f".cdef.{os.getpid()}.tmp").write_bytes(b"y" * 10)  # a copy still being written
    ws = open_workspace(home)
    try:
        assert gc(ws, 30, grace_ns=0) == {"dropped": [], "removed_blobs": 0, "freed_bytes": 100}
    finally:
        ws.close()
    assert sorted(p.name for p in fan.iterdir()) == [f".cdef.{os.getpid()}.tmp"]
    assert blob_count(home) == 3
    assert roscoe("verify").returncode == 0
