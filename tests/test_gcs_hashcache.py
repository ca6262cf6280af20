"""A bucket transaction reads each old object through its mount once: the
hashes of live files are remembered by (object key, generation)
(``cowfs.hashcache``, ``cowfs.objectstates``), so a second ``tx diff`` and
the commit read none of them again, and an object replaced behind the
transaction (a new generation) is read again and its new hash is used.

The mount (rclone over fake-gcs-server) and roscoe's API calls each go
through a counting proxy (tests/support/proxy.py), so what goes through the
mount is counted apart from what the API moves. The touched objects are
1 MiB and the rest of the 2,000 small, so that reading one touched object
again is more than everything else a diff moves through the mount (its
listings and JSON).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from tests.support.gcs import MTIME, FakeGcs, free_port, rclone_mount
from tests.support.proxy import Proxy, proxied
from tests.support.roscoe import Roscoe

BIG = 1 << 20
DIRS, PER_DIR = 20, 100  # 2,000 objects
TOUCHED = [f"d03/big{i}.pdf" for i in range(5)] + [f"d11/big{i}.pdf" for i in range(5, 10)]


def old_bytes(rel: str) -> bytes:
    return (rel.encode() + b"\n") * (BIG // (len(rel) + 1)) + b"x" * (BIG % (len(rel) + 1))


@dataclass
class Mounted:
    server: FakeGcs
    name: str
    root: Path
    url: str
    mount: Proxy  # between rclone and the server
    api: Proxy  # between roscoe's API calls and the server

    def put(self, rel: str, data: bytes) -> None:
        self.server.put(self.name, f"projects/{rel}", data, {"gcsfuse_mtime": MTIME, "mtime": MTIME})


@contextmanager
def mounted(server: FakeGcs, tmp_path: Path, dir_cache: str = "200ms") -> Iterator[Mounted]:
    name = f"roscoe-{uuid.uuid4().hex[:12]}"
    server.make_bucket(name)
    small = [f"d{d:02}/f{i:03}.txt" for d in range(DIRS) for i in range(PER_DIR - (5 if d in (3, 11) else 0))]
    objects = {rel: rel.encode() * 16 for rel in small} | {rel: old_bytes(rel) for rel in TOUCHED}
    assert len(objects) == DIRS * PER_DIR
    meta = {"gcsfuse_mtime": MTIME, "mtime": MTIME}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: server.put(name, f"projects/{kv[0]}", kv[1], meta), objects.items()))
    with proxied(server.port) as mount, proxied(server.port) as api, \
            rclone_mount(server, name, tmp_path / "mnt", dir_cache, endpoint=mount.url) as mnt:
        yield Mounted(server, name, mnt / "projects", f"gs://{name}/projects", mount, api)


@pytest.fixture
def bucket(server: FakeGcs, tmp_path: Path) -> Iterator[Mounted]:
    with mounted(server, tmp_path) as b:
        yield b


@pytest.fixture
def stale_bucket(server: FakeGcs, tmp_path: Path) -> Iterator[Mounted]:
    """The mount keeps what it listed for an hour: a replaced object cannot be read through it."""
    with mounted(server, tmp_path, "1h") as b:
        yield b


@pytest.fixture
def roscoe(home: Path, bucket: Mounted) -> Roscoe:
    return api_roscoe(home, bucket)


def api_roscoe(home: Path, bucket: Mounted) -> Roscoe:
    return Roscoe(home, {"STORAGE_EMULATOR_HOST": bucket.api.url, "ROSCOE_GCS_RETRIES": "2"})


REWRITE = " && ".join(f"printf 'new {rel}\\n' > {rel}" for rel in TOUCHED)


def run(roscoe: Roscoe, bucket: Mounted) -> str:
    tx = roscoe.begin(bucket.root, "--target", bucket.url)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", REWRITE, cwd=bucket.root)
    assert done.returncode == 0, done.stderr
    return tx


def diff(roscoe: Roscoe, tx: str) -> dict[str, dict[str, object]]:
    done = roscoe("tx", "diff", tx, "--json")
    assert done.returncode == 0, done.stderr
    return {c["path"]: c for c in json.loads(done.stdout)["changes"]}


def old_hashes(changes: dict[str, dict[str, object]]) -> dict[str, object]:
    return {p: c["old"]["hash"] for p, c in changes.items()}  # type: ignore[index]


def expected_old() -> dict[str, str]:
    return {rel: xxhash.xxh3_128_hexdigest(old_bytes(rel)) for rel in TOUCHED}


def read_down(bucket: Mounted, action) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    """What ``action()`` brought down through the mount, and what it returned."""
    bucket.mount.reset()
    out = action()
    return bucket.mount.down, out


def test_each_old_object_is_read_through_the_mount_once(roscoe: Roscoe, bucket: Mounted) -> None:
    ran, tx = read_down(bucket, lambda: run(roscoe, bucket))
    # The run's end hashes the ten old objects (and the overlay may copy them up).
    assert ran >= 10 * BIG
    first, changes = read_down(bucket, lambda: diff(roscoe, tx))
    assert sorted(changes) == sorted(TOUCHED)
    assert {p: c["status"] for p, c in changes.items()} == dict.fromkeys(TOUCHED, "modified")
    assert old_hashes(changes) == expected_old()
    assert first < BIG, f"the first diff read {first} bytes through the mount"
    second, again = read_down(bucket, lambda: diff(roscoe, tx))
    assert again == changes
    assert second < BIG, f"the second diff read {second} bytes through the mount"
    committed, done = read_down(bucket, lambda: roscoe("tx", "commit", tx, "--yes"))
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    assert committed < BIG, f"the commit read {committed} bytes through the mount"
    got = bucket.server.contents(bucket.name, "projects/d03/")
    assert got["projects/d03/big0.pdf"][0] == b"new d03/big0.pdf\n"


def test_an_object_replaced_behind_the_transaction_is_read_again(roscoe: Roscoe, bucket: Mounted) -> None:
    tx = run(roscoe, bucket)
    assert old_hashes(diff(roscoe, tx)) == expected_old()
    replaced = TOUCHED[6]
    theirs = b"THEIRS " * (BIG // 7) + b"!" * (BIG % 7)  # same size, other bytes: a new generation
    bucket.put(replaced, theirs)
    settle(bucket.root / replaced, theirs)
    down, changes = read_down(bucket, lambda: diff(roscoe, tx))
    assert old_hashes(changes) == expected_old() | {replaced: xxhash.xxh3_128_hexdigest(theirs)}
    assert BIG <= down < 2 * BIG, f"the diff read {down} bytes through the mount"
    down, done = read_down(bucket, lambda: roscoe("tx", "commit", tx, "--yes", "--json"))
    assert done.returncode == 3, done.stderr  # type: ignore[attr-defined]
    assert json.loads(done.stdout)["error"]["paths"] == [replaced]  # type: ignore[attr-defined]
    assert down < BIG, f"the commit read {down} bytes through the mount"


def test_an_object_the_mount_cannot_read_is_read_from_the_bucket_once(
    home: Path, stale_bucket: Mounted,
) -> None:
    roscoe = api_roscoe(home, stale_bucket)
    tx = run(roscoe, stale_bucket)
    replaced = TOUCHED[2]
    theirs = b"THEIRS, LONGER " * (BIG // 8)
    stale_bucket.put(replaced, theirs)
    with pytest.raises(OSError):  # the mount still lists the old size
        (stale_bucket.root / replaced).read_bytes()
    stale_bucket.api.reset()
    changes = diff(roscoe, tx)
    assert old_hashes(changes)[replaced] == xxhash.xxh3_128_hexdigest(theirs)
    first = stale_bucket.api.down
    assert first >= len(theirs)
    stale_bucket.api.reset()
    assert diff(roscoe, tx) == changes
    assert stale_bucket.api.down < len(theirs) // 2, f"the second diff read {stale_bucket.api.down} bytes"
    done = roscoe("tx", "commit", tx, "--yes", "--json")
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["error"]["paths"] == [replaced]


def test_without_the_api_the_mount_is_read_as_before(home: Path, roscoe: Roscoe, bucket: Mounted) -> None:
    tx = run(roscoe, bucket)
    changes = diff(roscoe, tx)
    cut_off = Roscoe(home, {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}", "ROSCOE_GCS_RETRIES": "1"})
    down, again = read_down(bucket, lambda: diff(cut_off, tx))
    assert again == changes
    assert down >= 10 * BIG
    # What the bucket answered before is still remembered once it answers again.
    down, again = read_down(bucket, lambda: diff(roscoe, tx))
    assert again == changes
    assert down < BIG, f"the diff after the outage read {down} bytes through the mount"


def test_bytes_that_are_not_the_generation_are_not_filed_under_it(
    server: FakeGcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mount that lags behind the bucket shows other bytes than the
    generation the bucket names: their hash is used, never remembered under
    that generation. (A plain directory stands for the lagging mount.)"""
    from cowfs.hashcache import HashCache
    from cowfs.livetree import entry
    from cowfs.objectstates import ObjectStates

    name = f"roscoe-{uuid.uuid4().hex[:12]}"
    server.make_bucket(name)
    server.put(name, "projects/a.pdf", b"B" * BIG)
    lagging = tmp_path / "mount"
    lagging.mkdir()
    (lagging / "a.pdf").write_bytes(b"A" * BIG)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    for _ in range(2):
        hashes = HashCache.load(str(tmp_path / "hashes.json"), lambda: False)
        hashes.objects = ObjectStates(f"gs://{name}/projects", ["a.pdf"])
        got = entry(str(lagging), "a.pdf", hashes)
        assert got is not None and got.hash == xxhash.xxh3_128_hexdigest(b"A" * BIG)
        assert hashes.used["objects"] == {}
        hashes.save()
    (lagging / "a.pdf").write_bytes(b"B" * BIG)  # the mount catches up
    hashes = HashCache.load(str(tmp_path / "hashes.json"), lambda: False)
    hashes.objects = ObjectStates(f"gs://{name}/projects", ["a.pdf"])
    got = entry(str(lagging), "a.pdf", hashes)
    assert got is not None and got.hash == xxhash.xxh3_128_hexdigest(b"B" * BIG)
    generation = int(server.objects(name)["projects/a.pdf"]["generation"])  # type: ignore[call-overload]
    assert hashes.used["objects"] == {"projects/a.pdf": [generation, BIG, got.hash]}


def settle(path: Path, data: bytes) -> None:
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the mount never showed {path} as the new object"
        time.sleep(0.2)

