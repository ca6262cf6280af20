"""Hashing ahead in helper threads (cowfs.hashahead): the digests handed over
are those of the files asked for, whatever the order the helpers finish in;
a read error reaches the reader; the helpers stay within their window."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
import xxhash

import cowfs.hashahead
from cowfs.hashahead import HashedAhead

MiB = 1 << 20


def files(tmp_path: Path, count: int, size: int) -> list[str]:
    out = []
    for i in range(count):
        path = tmp_path / f"f{i:03d}"
        path.write_bytes(os.urandom(size))
        out.append(str(path))
    return out


def real(path: str) -> str:
    with open(path, "rb") as f:
        return xxhash.xxh3_128_hexdigest(f.read())


def test_threads_hand_over_the_digest_of_each_file_asked_for(tmp_path: Path) -> None:
    paths = files(tmp_path, 40, MiB)
    hashed = HashedAhead(paths + paths[:3], 40 * MiB)  # (a path listed twice is hashed once)
    try:
        assert len(hashed.threads) == 2
        asked = paths[::-1] + paths[:3]  # out of order, and some twice
        assert [hashed.digest(p) for p in asked] == [real(p) for p in asked]
        assert hashed.digest(str(tmp_path / "f000")) == real(paths[0])
    finally:
        hashed.close()
    assert not any(t.is_alive() for t in hashed.threads)  # type: ignore[attr-defined]


def test_few_bytes_start_no_thread(tmp_path: Path) -> None:
    paths = files(tmp_path, 3, 1024)
    before = threading.active_count()
    hashed = HashedAhead(paths, 3 * 1024)
    assert hashed.threads == [] and threading.active_count() == before
    assert [hashed.digest(p) for p in paths] == [real(p) for p in paths]
    hashed.close()


def test_small_files_start_no_thread_however_many(tmp_path: Path) -> None:
    """Handing a digest between threads costs about what hashing 16 KiB does."""
    paths = files(tmp_path, 200, 128 << 10)  # 25 MiB in all, 128 KiB a file
    hashed = HashedAhead(paths, 200 * (128 << 10))
    assert hashed.threads == []
    assert [hashed.digest(p) for p in paths] == [real(p) for p in paths]
    hashed.close()


def test_a_read_error_is_raised_where_the_digest_is_asked_for(tmp_path: Path) -> None:
    paths = files(tmp_path, 4, 8 * MiB)
    os.unlink(paths[1])
    os.unlink(paths[2])
    os.symlink(paths[0], paths[2])  # never followed
    hashed = HashedAhead(paths, 32 * MiB)
    try:
        assert hashed.digest(paths[0]) == real(paths[0])
        with pytest.raises(FileNotFoundError):
            hashed.digest(paths[1])
        with pytest.raises(OSError) as raised:
            hashed.digest(paths[2])
        assert raised.value.errno == errno.ELOOP
        assert hashed.digest(paths[3]) == real(paths[3])
    finally:
        hashed.close()


def test_helpers_stay_within_their_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cowfs.hashahead, "WINDOW", 4)
    paths = files(tmp_path, 20, MiB)
    started: list[str] = []
    original = cowfs.hashahead.hash_file

    def counted(path: str) -> str:
        started.append(path)
        return original(path)

    monkeypatch.setattr(cowfs.hashahead, "hash_file", counted)
    hashed = HashedAhead(paths, 20 * MiB)
    try:
        hashed.digest(paths[0])
        hashed.digest(paths[2])
        deadline = 50
        while len(started) < 7 and deadline:
            threading.Event().wait(0.01)
            deadline -= 1
        threading.Event().wait(0.1)
        assert sorted(started) == paths[:7]  # asked up to index 2: 3 + a window of 4
        assert [hashed.digest(p) for p in paths] == [real(p) for p in paths]
        assert sorted(started) == paths
    finally:
        hashed.close()
