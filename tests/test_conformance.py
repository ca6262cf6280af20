"""One conformance suite for the commit protocol, run over both targets: a
local tree and a GCS bucket (fake-gcs-server, mounted with rclone, the run
reading through the mount). The protocol is written once
(``journal.protocol``); these tests hold each ``journal.targets`` to it:

- a commit lands whole, and only at commit;
- a live change since the run is a conflict: exit 3, nothing written;
- a crash at every step of the commit leaves, after recovery, the target
  exactly all-old (before the commit record) or all-new (after it), and
  ``verify`` clean;
- a rollback puts back exactly what was there, refuses (exit 3) when the
  live state moved since unless forced, and a crash in it is recovered too.

"Exactly" is each target's own truth: the local tree byte for byte with
modes, owners and mtimes (``snapshot``); the bucket's objects with their
bytes and metadata (generations aside: every write makes a new one).
"""

from __future__ import annotations

import abc
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gcs import MTIME_NS, SCRIPT, SEED, Bucket, FakeGcs, seeded_bucket
from tests.support.roscoe import Roscoe
from tests.support.trees import snapshot

AFTER = {  # the files SCRIPT leaves, by path
    "case1/notes.md": b"# notes\nmore\n",
    "case1/Pleadings/complaint.txt": b"COMPLAINT\n",
    "case3/deep/new.txt": b"new\n",
}
STEPS = ("before-images", "after-images", "after-intent", "apply#1", "before-record", "before-journal-record",
         "after-record")


class Place(abc.ABC):
    """Where a change set lands: its root (where runs see it), how to begin a
    transaction of it, its exact state, and a way to change it from outside."""

    name: str
    root: Path
    roscoe: Roscoe

    @abc.abstractmethod
    def begin(self) -> str:
        """A new transaction over the place; its id."""

    @abc.abstractmethod
    def state(self) -> object:
        """The place's own truth, to compare exactly."""

    @abc.abstractmethod
    def files(self) -> dict[str, bytes]:
        """The regular files, by path, with their bytes."""

    @abc.abstractmethod
    def link(self, path: str) -> str:
        """The target of the symlink at ``path``."""

    @abc.abstractmethod
    def write_outside(self, path: str, data: bytes) -> None:
        """Write ``path`` as someone other than roscoe would."""


class LocalPlace(Place):
    name = "local"

    def __init__(self, root: Path, roscoe: Roscoe) -> None:
        self.root, self.roscoe = root, roscoe
        for key, data in SEED.items():
            path = root / key.removeprefix("projects/")
            if key.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, ns=(MTIME_NS, MTIME_NS))

    def begin(self) -> str:
        return self.roscoe.begin(self.root)

    def state(self) -> object:
        return snapshot(self.root)

    def files(self) -> dict[str, bytes]:
        return {path: body for path, (kind, *_, body) in snapshot(self.root).items()
                if kind == 0o100000 and isinstance(body, bytes)}

    def link(self, path: str) -> str:
        return os.readlink(self.root / path)

    def write_outside(self, path: str, data: bytes) -> None:
        (self.root / path).write_bytes(data)


class BucketPlace(Place):
    name = "bucket"

    def __init__(self, bucket: Bucket, roscoe: Roscoe) -> None:
        self.bucket, self.root, self.roscoe = bucket, bucket.root, roscoe

    def begin(self) -> str:
        return self.roscoe.begin(self.root, "--target", self.bucket.url)

    def state(self) -> object:
        return self.bucket.contents()

    def files(self) -> dict[str, bytes]:
        return {key.removeprefix("projects/"): data for key, (data, meta) in self.bucket.contents().items()
                if not key.endswith("/") and "gcsfuse_symlink_target" not in meta}

    def link(self, path: str) -> str:
        return self.bucket.contents()[f"projects/{path}"][1]["gcsfuse_symlink_target"]

    def write_outside(self, path: str, data: bytes) -> None:
        self.bucket.put(f"projects/{path}", data)
        self.bucket.settle(path, data)


@pytest.fixture(params=["local", "bucket"])
def place(request: pytest.FixtureRequest, tmp_path: Path, home: Path) -> Iterator[Place]:
    if request.param == "local":
        root = tmp_path / "root"
        root.mkdir()
        yield LocalPlace(root, Roscoe(home))
        return
    gcs: FakeGcs = request.getfixturevalue("server")
    env = {"STORAGE_EMULATOR_HOST": gcs.url, "ROSCOE_GCS_RETRIES": "2", "ROSCOE_GCS_LEASE_WAIT": "20"}
    with seeded_bucket(gcs, tmp_path) as bucket:
        yield BucketPlace(bucket, Roscoe(home, env))


def staged(place: Place, script: str = SCRIPT) -> str:
    tx = place.begin()
    done = place.roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=place.root)
    assert done.returncode == 0, done.stderr
    return tx


def verified(place: Place) -> None:
    done = place.roscoe("verify", "--json")
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert json.loads(done.stdout)["problems"] == []


def test_a_commit_lands_whole_and_only_at_commit(place: Place) -> None:
    before = place.state()
    tx = staged(place)
    assert place.state() == before
    done = place.roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert place.files() == AFTER
    assert place.link("case3/link") == "../case1/notes.md"
    assert json.loads(place.roscoe("tx", "show", tx, "--json").stdout)["state"] == "committed"
    verified(place)


def test_a_live_change_since_the_run_is_a_conflict_and_nothing_is_written(place: Place) -> None:
    tx = staged(place)
    place.write_outside("case1/notes.md", b"someone else\n")
    before = place.state()
    done = place.roscoe("tx", "commit", tx, "--yes", "--json")
    assert done.returncode == 3, done.stderr
    error = json.loads(done.stdout)["error"]
    assert (error["kind"], error["paths"]) == ("conflict", ["case1/notes.md"])
    assert place.state() == before
    assert json.loads(place.roscoe("tx", "show", tx, "--json").stdout)["state"] == "open"


@pytest.mark.parametrize("step", STEPS)
def test_a_commit_killed_at_any_step_is_all_old_or_all_new_after_recovery(place: Place, step: str) -> None:
    before = place.state()
    tx = staged(place)
    done = place.roscoe("tx", "commit", tx, "--yes", env={"ROSCOE_FAULT": step, "ROSCOE_FAULT_ACTION": "kill"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    recovered = place.roscoe("recover")
    state = json.loads(place.roscoe("tx", "show", tx, "--json").stdout)["state"]
    if step == "after-record":
        assert recovered.returncode == 0, recovered.stderr
        assert state == "committed" and place.files() == AFTER
    elif step == "before-journal-record" and place.name == "bucket":
        # Its manifest, the commit point on the bucket, was written: recovery finishes it.
        assert recovered.returncode == 6, recovered.stderr
        assert state == "committed" and place.files() == AFTER
    else:
        assert recovered.returncode == (0 if step in ("before-images", "after-images") else 6), recovered.stderr
        assert state == "open" and place.state() == before
    verified(place)


def test_a_rollback_puts_back_exactly_what_was_there(place: Place) -> None:
    before = place.state()
    tx = staged(place)
    assert place.roscoe("tx", "commit", tx, "--yes").returncode == 0
    done = place.roscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert place.state() == before
    verified(place)


def test_a_rollback_refuses_a_later_change_unless_forced(place: Place) -> None:
    before = place.state()
    tx = staged(place)
    assert place.roscoe("tx", "commit", tx, "--yes").returncode == 0
    place.write_outside("case1/notes.md", b"edited since\n")
    changed = place.state()
    done = place.roscoe("tx", "rollback", tx, "--yes", "--json")
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["error"]["paths"] == ["case1/notes.md"]
    assert place.state() == changed
    forced = place.roscoe("tx", "rollback", tx, "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert place.files() == {path: data for path, data in ((k.removeprefix("projects/"), v) for k, v in SEED.items())
                             if not path.endswith("/")}
    if place.name == "local":
        assert place.state() == before


def test_a_rollback_killed_mid_apply_is_undone_by_recovery(place: Place) -> None:
    tx = staged(place)
    assert place.roscoe("tx", "commit", tx, "--yes").returncode == 0
    committed = place.state()
    done = place.roscoe("tx", "rollback", tx, "--yes", env={"ROSCOE_FAULT": "apply#1", "ROSCOE_FAULT_ACTION": "kill"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert place.roscoe("recover").returncode == 6
    assert place.state() == committed
    verified(place)
    again = place.roscoe("tx", "rollback", tx, "--yes")
    assert again.returncode == 0, again.stderr
    assert place.files() == {k.removeprefix("projects/"): v for k, v in SEED.items() if not k.endswith("/")}
