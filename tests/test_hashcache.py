"""The hash cache: `tx diff` and `tx commit` do not read again the bytes the
run's own diff hashed, and never trust a remembered hash when a file may
have changed (cowfs.hashcache).

Reads are counted by wrapping the two functions that hash file bytes; the
outcomes (diffs, conflicts) are checked exactly as everywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

import cowfs.durable
import cowfs.entry
import cowfs.hashahead
import cowfs.livetree
import journal.blobs
from cowfs import hashcache
from journal.errors import Conflict
from journal.blobs import BlobStore
from journal.faults import Faults
from journal.opening import open_workspace
from journal.protocol import commit, rollback
from journal.workspace import Workspace
from tests.support.roscoe import Roscoe
from tests.support.system import REPO, gone_pid, missing
from tests.support.trees import snapshot

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


def image_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose bytes a commit or rollback reads to check an image it
    hard-linked from the live tree (filled as they happen)."""
    checked: list[str] = []
    read = BlobStore._read

    def counted(self: BlobStore, path: str, digest: str, problem: str):  # type: ignore[no-untyped-def]
        if problem == "not what was read":
            checked.append(digest)
        return read(self, path, digest, problem)

    monkeypatch.setattr(BlobStore, "_read", counted)
    return checked


@pytest.fixture
def ws(home: Path) -> Iterator[Workspace]:
    w = open_workspace(home)
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


# -- images hard-linked from the live tree: checked by identity when the cache vouches

def test_a_commit_checks_its_linked_images_by_identity(ws: Workspace, root: Path, home: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    aged(root)
    before = snapshot(root)
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    checks = image_checks(monkeypatch)
    reads = Reads(monkeypatch)
    commit(ws, tx)
    assert (checks, reads.take()) == ([], (0, 0))
    blobs = BlobStore(os.fspath(home / "blobs"))
    images = [r.old_blob for r in ws.journal.changes(tx) if r.old_blob]
    assert sorted(images) == sorted(xxhash.xxh3_128_hexdigest(b) for b in (b"# notes\n", b"\x00\x01binary\xff"))
    assert [blobs.check(d) for d in images] == [None, None]
    aged(root)
    rollback(ws, tx)
    assert checks == []  # the rollback's own images (what the commit wrote) by identity too
    assert snapshot(root) == before


def test_an_image_of_a_file_written_just_before_the_run_is_read_to_check_it(
        ws: Workspace, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    aged(root)
    (root / "case1" / "notes.md").write_text("# notes, just now\n")
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    checks = image_checks(monkeypatch)
    commit(ws, tx)
    assert checks == [xxhash.xxh3_128_hexdigest(b"# notes, just now\n")]


@pytest.mark.parametrize("how", ["rename", "rewrite", "rename-after-vouching"])
def test_a_file_changed_after_the_check_and_before_its_link_is_a_conflict(
        ws: Workspace, root: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # Same size, same mtime: only the other inode (rename) or the ctime (a
    # rewrite in place) tells; either way the old bytes are read and refused.
    # Once the cache has vouched for the file, only an inode swap can still
    # be seen (a same-size rewrite in place in those microseconds lands in
    # the image, as a write through a descriptor kept open would: `verify`
    # and the rollback's read of the image catch it).
    aged(root)
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    notes = root / "case1" / "notes.md"
    swapped: dict[str, tuple[object, ...]] = {}

    def change() -> None:
        if how == "rewrite":
            notes.write_text("# NOTES\n")
            os.utime(notes, ns=(T0, T0))
        else:
            (root / "case1" / "spare").write_text("# NOTES\n")
            os.utime(root / "case1" / "spare", ns=(T0, T0))
            os.rename(root / "case1" / "spare", notes)
        swapped.update(snapshot(root))

    if how == "rename-after-vouching":
        vouches = hashcache.HashCache.vouches

        def then_change(self: hashcache.HashCache, rel: str, st: os.stat_result, digest: str) -> bool:
            assert vouches(self, rel, st, digest)
            if rel == "case1/notes.md":
                change()
            return True

        monkeypatch.setattr(hashcache.HashCache, "vouches", then_change)
    else:

        class ChangeFirst(Faults):
            def checkpoint(self, step: str) -> None:
                if step == "before-images":
                    change()

        ws.faults = ChangeFirst()
    checks = image_checks(monkeypatch)
    with pytest.raises(Conflict) as refused:
        commit(ws, tx)
    assert refused.value.fields["paths"] == ["case1/notes.md"]
    assert checks == ([] if how == "rename-after-vouching" else [xxhash.xxh3_128_hexdigest(b"# notes\n")])
    assert notes.read_text() == "# NOTES\n" and snapshot(root) == swapped
    assert ws.get(tx).state == "open"


# -- a rollback reads each file it replaces once, through a pin in the blob store

def pins(home: Path) -> list[str]:
    directory = home / "blobs" / ".pins"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def pin_reads(monkeypatch: pytest.MonkeyPatch, then: Callable[[str], None] | None = None) -> list[str]:
    """The pins a rollback hashed (filled as they happen); ``then(digest)`` runs after each."""
    read: list[str] = []
    real = cowfs.hashahead.hash_file

    def counted(path: str) -> str:
        digest = real(path)
        if os.sep + ".pins" + os.sep not in path:
            return digest  # (a blob checked as it is copied back)
        read.append(digest)
        if then is not None:
            then(digest)
        return digest

    monkeypatch.setattr(cowfs.hashahead, "hash_file", counted)
    return read


def test_a_rollback_right_after_its_commit_reads_each_replaced_file_once(
        ws: Workspace, root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The files the commit just wrote are far inside the racy window, so no
    # remembered hash may vouch for them: they are hard-linked into the
    # store first and read there, once, which checks them against what the
    # commit wrote and is the image the rollback keeps of them.
    before = snapshot(root)
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    commit(ws, tx)
    committed = snapshot(root)
    reads, checks, pinned = Reads(monkeypatch), image_checks(monkeypatch), pin_reads(monkeypatch)
    undone = rollback(ws, tx)
    assert sorted(pinned) == sorted(xxhash.xxh3_128_hexdigest(b) for b in (b"edited notes\n", bytes(200000)))
    assert (reads.take(), checks) == ((0, 0), [])
    assert snapshot(root) == before and pins(home) == []
    blobs = BlobStore(os.fspath(home / "blobs"))
    images = sorted(r.old_blob for r in ws.journal.changes(undone.id) if r.old_blob)
    assert images == sorted(pinned)
    assert [os.stat(blobs.path(d)).st_nlink for d in images] == [1, 1]
    assert [blobs.check(d) for d in images] == [None, None]
    rollback(ws, undone.id)  # the pinned images give back exactly what the commit wrote
    assert snapshot(root) == committed


def test_a_file_swapped_after_its_pin_is_read_as_it_is_now(
        ws: Workspace, root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Other bytes of the same size and mtime, renamed over the file between
    # its pin and the check that the pin is still the file: read again, a
    # conflict, and the swapped-in file is left alone.
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    commit(ws, tx)
    notes = root / "case1" / "notes.md"
    st = notes.stat()
    swapped: dict[str, tuple[object, ...]] = {}

    def swap(digest: str) -> None:
        if digest == xxhash.xxh3_128_hexdigest(b"edited notes\n"):
            (root / "case1" / "spare").write_bytes(b"EDITED NOTES\n")
            os.utime(root / "case1" / "spare", ns=(st.st_mtime_ns, st.st_mtime_ns))
            os.rename(root / "case1" / "spare", notes)
            swapped.update(snapshot(root))

    pinned = pin_reads(monkeypatch, then=swap)
    reads = Reads(monkeypatch)
    blobs_before = sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file())
    with pytest.raises(Conflict) as refused:
        rollback(ws, tx)
    assert refused.value.fields["paths"] == ["case1/notes.md"]
    assert len(pinned) == 2 and reads.take() == (1, 0)  # notes.md read again, as it is now
    assert notes.read_bytes() == b"EDITED NOTES\n" and snapshot(root) == swapped
    assert pins(home) == [] and sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file()) == blobs_before


def test_a_file_with_another_hard_link_is_copied_not_pinned(
        ws: Workspace, root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A write through the other name would change a pinned image: such a
    # file is read where it is and its image is a copy of its own.
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    commit(ws, tx)
    os.link(root / "case1" / "notes.md", root / "case1" / "notes-hard")
    pinned, reads = pin_reads(monkeypatch), Reads(monkeypatch)
    undone = rollback(ws, tx)
    assert pinned == [xxhash.xxh3_128_hexdigest(bytes(200000))] and reads.take() == (1, 0)
    assert (root / "case1" / "notes.md").read_text() == "# notes\n"
    assert (root / "case1" / "notes-hard").read_text() == "edited notes\n"
    image = xxhash.xxh3_128_hexdigest(b"edited notes\n")
    assert image in [r.old_blob for r in ws.journal.changes(undone.id)]
    blobs = BlobStore(os.fspath(home / "blobs"))
    assert os.stat(blobs.path(image)).st_nlink == 1 and blobs.check(image) is None and pins(home) == []


def test_a_refused_rollback_leaves_no_pin_and_no_image(
        ws: Workspace, root: Path, home: Path, roscoe: Roscoe) -> None:
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", SCRIPT], cwd=os.fspath(root)).exit_code == 0
    commit(ws, tx)
    (root / "case1" / "notes.md").write_text("edited by hand\n")
    blobs_before = sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file())
    edited = snapshot(root)
    done = roscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode() == (
        f"roscoe: error: rollback of {tx} refused (--force overrides): "
        f"the live tree changed under transaction {tx}; nothing was written. Changed: case1/notes.md\n")
    assert snapshot(root) == edited and pins(home) == []
    assert sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file()) == blobs_before


def test_pins_of_a_dead_rollback_are_removed_by_the_next_command(root: Path, home: Path, roscoe: Roscoe) -> None:
    assert roscoe("tx", "list").returncode == 0
    directory = home / "blobs" / ".pins"
    directory.mkdir(parents=True)
    ours, dead = journal.blobs._pid_namespace(), gone_pid()
    os.link(root / "case1" / "notes.md", directory / f"{ours}.{dead}.1")
    os.link(root / "case1" / "old.tmp", directory / f"{ours}.{os.getpid()}.1")  # a rollback still running
    os.link(root / "case2" / "script.sh", directory / f"{dead}.1")  # an older roscoe's name: pid.n
    assert roscoe("tx", "list").returncode == 0
    assert pins(home) == [f"{ours}.{os.getpid()}.1"]
    assert os.stat(root / "case1" / "notes.md").st_nlink == 1
    assert os.stat(root / "case2" / "script.sh").st_nlink == 1


def test_a_roscoe_in_another_pid_namespace_keeps_our_pins(root: Path, home: Path, roscoe: Roscoe) -> None:
    """Its /proc does not show our pid: it must not take our pins for a dead
    process's (a rollback running here would fail), nor we its."""
    unshare = shutil.which("unshare")
    if unshare is None:
        missing("unshare (util-linux)")
    store = BlobStore(str(home / "blobs"))
    fd = os.open(root / "case1", os.O_RDONLY | os.O_DIRECTORY)
    try:
        pin = store.pin(fd, "notes.md")
    finally:
        os.close(fd)
    assert pin is not None
    mine = os.path.basename(pin[0])
    assert mine == f"{journal.blobs._pid_namespace()}.{os.getpid()}.1"
    done = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-m", "cli.main", "tx", "list"],
                          capture_output=True, env=roscoe.env, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert pins(home) == [mine]

    theirs = f"{int(journal.blobs._pid_namespace()) + 1}.{gone_pid()}.1"
    os.link(root / "case1" / "old.tmp", home / "blobs" / ".pins" / theirs)
    store.drop_stale_pins()
    assert pins(home) == sorted([mine, theirs])  # its pid means nothing here: kept for an hour


def test_a_pin_of_another_pid_namespace_goes_after_an_hour(
        root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = home / "blobs" / ".pins"
    directory.mkdir(parents=True)
    theirs = f"{int(journal.blobs._pid_namespace()) + 1}.{os.getpid()}.1"
    os.link(root / "case1" / "old.tmp", directory / theirs)
    store = BlobStore(str(home / "blobs"))
    store.drop_stale_pins()
    assert pins(home) == [theirs]
    monkeypatch.setattr(journal.blobs, "PIN_GRACE_NS", 0)
    store.drop_stale_pins()
    assert pins(home) == [] and os.stat(root / "case1" / "old.tmp").st_nlink == 1




@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "check-then-rename"])
def test_adopting_a_pin_never_replaces_a_blob_the_store_has(
        root: Path, home: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool) -> None:
    """A rollback keeps each pin as a blob with one rename that refuses to
    replace an existing blob: the one there (its own inode, maybe named by
    other transactions) stays, and the pin, which shares a live file's
    inode, goes. Without renameat2 the store checks first, as before."""
    monkeypatch.setattr(cowfs.durable, "_noreplace", renameat2)
    live = root / "case1" / "notes.md"
    digest = xxhash.xxh3_128_hexdigest(live.read_bytes())
    store = BlobStore(str(home / "blobs"), batch=True)
    blob = Path(store.path(digest))
    blob.parent.mkdir(parents=True)
    shutil.copyfile(live, blob)
    kept = os.lstat(blob)
    fd = os.open(root / "case1", os.O_RDONLY | os.O_DIRECTORY)
    try:
        pin = store.pin(fd, "notes.md")
    finally:
        os.close(fd)
    assert pin is not None and os.lstat(live).st_nlink == 2
    store.adopt(pin[0], digest)
    now = os.lstat(blob)
    assert (now.st_ino, now.st_nlink) == (kept.st_ino, 1) and blob.read_bytes() == live.read_bytes()
    assert pins(home) == [] and os.lstat(live).st_nlink == 1

    other = root / "case2" / "script.sh"  # a blob the store does not have: the pin becomes it
    digest = xxhash.xxh3_128_hexdigest(other.read_bytes())
    fd = os.open(root / "case2", os.O_RDONLY | os.O_DIRECTORY)
    try:
        pin = store.pin(fd, "script.sh")
    finally:
        os.close(fd)
    assert pin is not None
    store.adopt(pin[0], digest)
    assert os.lstat(store.path(digest)).st_ino == os.lstat(other).st_ino and pins(home) == []
