"""Read-ahead (cowfs.durable.ReadAhead): a loop that reads files one after
another asks the kernel for the next ones first. What reaches the page cache
is checked with util-linux's fincore, after the files were dropped from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cowfs import durable
from tests.support.system import missing

MiB = 1 << 20


def cached(path: Path) -> int:
    """Bytes of ``path`` in the page cache."""
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "-o", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def dropped(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes, on disk and out of the page cache."""
    path.write_bytes(os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert cached(path) == 0, f"{path} stays in the page cache (tmpfs?): this test needs a disk"
    return path


def settled(path: Path, expected: int) -> int:
    """The cached bytes of ``path`` once they reach ``expected`` (or after 5 s)."""
    deadline = time.monotonic() + 5
    while (now := cached(path)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return now


@pytest.fixture(autouse=True)
def fincore() -> None:
    if shutil.which("fincore") is None:
        missing("fincore (util-linux)")


def test_the_next_files_are_asked_for_before_their_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "READ_AHEAD_FILES", 2)
    big = dropped(tmp_path / "big", 12 * MiB)
    small = dropped(tmp_path / "small", MiB)
    later = dropped(tmp_path / "later", MiB)
    ahead = durable.ReadAhead([str(big), str(small), str(later)])

    ahead.reached(str(big))
    assert settled(big, 8 * MiB) == 8 * MiB  # the first 8 MiB: the kernel reads on from there
    assert settled(small, MiB) == MiB
    assert cached(later) == 0

    ahead.reached(str(small))
    assert settled(later, MiB) == MiB
    assert ahead.advised == 3


def test_a_file_that_cannot_be_opened_is_left_to_its_reader(tmp_path: Path) -> None:
    there = dropped(tmp_path / "there", MiB)
    target = dropped(tmp_path / "target", MiB)
    (tmp_path / "link").symlink_to(target)
    paths = [str(tmp_path / "gone"), str(tmp_path / "link"), str(there)]

    assert list(durable.ReadAhead(paths)) == paths
    assert settled(there, MiB) == MiB
    assert cached(target) == 0  # never through a symlink


def test_paths_it_was_not_given_change_nothing(tmp_path: Path) -> None:
    there = dropped(tmp_path / "there", MiB)
    ahead = durable.ReadAhead([str(there)])
    ahead.reached(str(tmp_path / "other"))
    assert ahead.advised == 0
    assert cached(there) == 0
