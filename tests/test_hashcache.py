"""The hash cache: `tx diff` and `tx commit` do not read again the bytes the
run's own diff hashed, and never trust a remembered hash when a file may
have changed (cowfs.hashcache).

Reads are counted by wrapping the two functions that hash file bytes; the
outcomes (diffs, conflicts) are checked exactly as everywhere else.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

import cowfs.entry
import cowfs.livetree
from cowfs import hashcache
from journal.workspace import Workspace
from tests.conftest import Roscoe

T0 = 1_700_000_000_000_000_000


class Reads:
    """How many files were hashed by reading them, live and staged."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.live = self.staged = 0
        live_fd, staged_file = cowfs.livetree.hash_fd, cowfs.entry.hash_file

        def counted_fd(fd: int) -> str:
            self.live += 1
            return live_fd(fd)

        def counted_file(path: str) -> str:
            self.staged += 1
            return staged_file(path)

        monkeypatch.setattr(cowfs.livetree, "hash_fd", counted_fd)
        monkeypatch.setattr(cowfs.entry, "hash_file", counted_file)

    def take(self) -> tuple[int, int]:
        got = (self.live, self.staged)
        self.live = self.staged = 0
        return got


@pytest.fixture
def ws(home: Path) -> Iterator[Workspace]:
    w = Workspace.open(home)
    yield w
    w.close()


def aged(root: Path) -> None:
    """Let the live tree's ctimes fall more than RACY_NS behind the clock."""
    time.sleep(hashcache.RACY_NS / 1e9 + 0.2)


SCRIPT = "printf 'edited notes\\n' > case1/notes.md; head -c 200000 /dev/zero > big.bin; rm case1/old.tmp"


def test_a_diff_after_the_run_reads_no_file_again(ws: Workspace, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    aged(root)
    reads = Reads(monkeypatch)
    tx = ws.begin(root).id
    ran = ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root))
    assert ran.exit_code == 0
    assert reads.take() == (2, 2)  # notes.md and old.tmp live; notes.md and big.bin staged
    first = ws.diff(tx)
    assert reads.take() == (0, 0)
    assert [(c.path, c.status) for c in first.changes] == [
        ("big.bin", "added"), ("case1/notes.md", "modified"), ("case1/old.tmp", "deleted")]
    assert ws.diff(tx).diff_hash == first.diff_hash == ran.changes.diff_hash


def test_a_freshly_written_live_file_is_read_again(ws: Workspace, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its ctime is within RACY_NS of the hashing: a write in the same clock
    # tick could go unseen, so the hash is not trusted yet.
    aged(root)
    (root / "case1" / "notes.md").write_text("# notes, just now\n")
    reads = Reads(monkeypatch)
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    reads.take()
    ws.diff(tx)
    assert reads.take() == (1, 0)


def test_a_live_edit_that_keeps_size_and_mtime_is_still_a_conflict(ws: Workspace, root: Path, roscoe: Roscoe) -> None:
    aged(root)
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", "printf 'new\\n' > case1/notes.md"], cwd=os.fspath(root)).exit_code == 0
    ws.diff(tx)  # the cache now holds the live notes.md
    intake = root / "case2" / "intake form.txt"
    assert ws.run(tx, ["sh", "-c", "printf 'INTAKE\\n' > 'case2/intake form.txt'"], cwd=os.fspath(root)).exit_code == 0
    ws.diff(tx)
    # Same length, mtime put back: only the ctime tells.
    notes = root / "case1" / "notes.md"
    notes.write_text("# NOTES\n")
    os.utime(notes, ns=(T0, T0))
    seen = [c.old.hash for c in ws.diff(tx).changes if c.path == "case1/notes.md" and c.old]
    assert seen == [xxhash.xxh3_128_hexdigest(b"# NOTES\n")]
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode().startswith("roscoe: error: commit refused: the live tree changed under transaction")
    assert "case1/notes.md" in done.stderr.decode()
    assert intake.read_text() == "intake\n"


def test_a_staged_file_a_later_run_rewrites_is_hashed_again(ws: Workspace, root: Path) -> None:
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", "printf 'aaaa\\n' > a.txt; touch -d @1800000000 a.txt"], cwd=os.fspath(root)).exit_code == 0
    first = ws.diff(tx).changes[0].new
    assert ws.run(tx, ["sh", "-c", "printf 'bbbb\\n' > a.txt; touch -d @1800000000 a.txt"], cwd=os.fspath(root)).exit_code == 0
    second = ws.diff(tx).changes[0].new
    assert first is not None and second is not None
    assert (first.size, first.mtime_ns) == (second.size, second.mtime_ns)
    assert first.hash != second.hash


def test_a_live_file_replaced_by_another_inode_is_read_again(ws: Workspace, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    aged(root)
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    reads = Reads(monkeypatch)
    notes = root / "case1" / "notes.md"
    spare = root / "case1" / ".spare"
    spare.write_text("# other\n")
    os.utime(spare, ns=(T0, T0))
    os.rename(spare, notes)
    changes = ws.diff(tx).changes
    assert reads.take() == (1, 0)
    assert [c.old.hash for c in changes if c.path == "case1/notes.md" and c.old] == [xxhash.xxh3_128_hexdigest(b"# other\n")]


def test_a_damaged_cache_is_ignored(ws: Workspace, root: Path, home: Path) -> None:
    tx = ws.begin(root).id
    ran = ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root))
    cache = home / "tx" / tx / "hashes.json"
    for damage in (b"{not json", b"[]", json.dumps({"live": {"case1/notes.md": [1, 2]}, "staged": 7}).encode()):
        cache.write_bytes(damage)
        assert ws.diff(tx).diff_hash == ran.changes.diff_hash


def test_live_files_on_fuse_are_never_trusted(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    os.utime(path, ns=(T0, T0))
    st = os.lstat(path)
    reads: list[str] = []

    def read() -> str:
        reads.append("read")
        return "digest"

    cache = hashcache.HashCache(str(tmp_path / "c.json"), lambda: False)
    cache.used["live"]["f"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                               st.st_ctime_ns + 10 * hashcache.RACY_NS, "digest"]
    cache.save()
    again = hashcache.HashCache.load(str(tmp_path / "c.json"), lambda: False)
    assert again.digest("live", "f", st, read) == "digest" and reads == ["read"]
    trusted = hashcache.HashCache.load(str(tmp_path / "c.json"), lambda: True)
    assert trusted.digest("live", "f", st, read) == "digest" and reads == ["read"]
