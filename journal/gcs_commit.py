"""The commit protocol on a GCS target: the change set lands in the bucket
through conditional API calls, all of it or none of it.

The bucket has no multi-object transaction, so the journal is the atomicity:

1. lock the root here, then take the root's lease object in the bucket
   (generation-matched create; a lease past its expiry is taken over by a
   generation-matched rewrite), so commits of one root from many machines
   run one at a time;
2. policy, as for a local root;
3. conflict check under the lease: every object a change rewrites is still
   at the generation recorded when the last run ended (else exit 3);
4. images: pre-images read from the bucket *by generation* (and checked
   against the hash the diff saw) and post-images from staging, into the
   blob store, fsynced; with each object's content type and metadata;
5. intent journaled (synchronous=FULL), state `committing`;
6. conditional ops, many at a time in gcsfs's event loop: deletes
   (``ifGenerationMatch`` = base), then directory placeholders, then files
   and symlinks (``ifGenerationMatch`` = base, 0 for must-not-exist); each
   batch's resulting generations journaled as it completes (audit
   ``gcs-apply``); no ``fs.mv``: a move is a create plus a conditional delete;
7. the commit record. That is the commit point; then the lease is released.

A failed precondition (someone else wrote an object) undoes what was done
and is a conflict (exit 3). Undo is state based and conditional too: an
object is put back only while it holds exactly what this transaction wrote
(or is absent where it deleted it), with ``ifGenerationMatch`` on the
generation seen, so recovery never clobbers a writer it did not see.
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cowfs import durable
from cowfs.changeset import Change, ChangeSet, classify
from cowfs.entry import DIR, FILE, SYMLINK, Entry
from cowfs.errors import GcsError, RoscoeError
from cowfs.gcs import (
    DEFAULT_TYPE, MTIME_KEYS, SYMLINK_KEY, GcsTarget, PreconditionFailed, md5_b64, parse_url, rfc3339, same_object,
)
from journal.blobs import BlobStore
from journal.errors import CommitFailed, Conflict
from journal.faults import checkpoint
from journal.store import ChangeRow, Journal, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from journal.workspace import Workspace

EMPTY_MD5 = md5_b64(b"")


class LeaseBusy(RoscoeError):
    """{url} is being committed to by {owner} (lease held until {until}); try again when it is done"""

    error_kind = "busy"


class LeaseLost(RoscoeError):
    """{url}: the commit lease was taken over by {owner}; the commit was undone"""


def check_target(url: str) -> str:
    """``url`` in canonical form, once its bucket answers."""
    bucket, prefix = parse_url(url)
    canonical = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
    GcsTarget(canonical).check()
    return canonical


def base_generations(tx: TxRecord, paths: list[str]) -> dict[str, dict[str, int]]:
    """For each path, the generations of the objects it can map to (the file
    or symlink object and the directory placeholder), 0 for absent. Empty when
    the bucket cannot be reached: a commit then refuses (no base) instead of guessing."""
    target = GcsTarget(tx.target)
    keys = {p: (target.key(p), target.key(p, dir=True)) for p in paths}
    try:
        found = target.generations(k for pair in keys.values() for k in pair)
    except GcsError:
        return {}
    return {p: {k: found[k] for k in pair} for p, pair in keys.items()}


def object_key(target: GcsTarget, path: str, entry: Entry | None) -> str | None:
    if entry is None:
        return None
    return target.key(path, dir=entry.type == DIR)


def new_state(path: str, entry: Entry, old: dict[str, Any] | None) -> dict[str, Any]:
    """The object ``entry`` becomes: gcsfuse's layout, keeping the content type
    and any other metadata of the object it replaces; md5 filled in with the bytes."""
    if entry.type == DIR:
        return {"kind": "dir", "content_type": DEFAULT_TYPE, "metadata": {}, "md5": EMPTY_MD5, "size": 0}
    same_kind = old is not None and old["kind"] == entry.type
    metadata = dict(old["metadata"]) if same_kind and old is not None else {}
    metadata.pop(SYMLINK_KEY, None)
    for k in MTIME_KEYS:
        metadata[k] = rfc3339(entry.mtime_ns)
    if entry.type == SYMLINK:
        metadata[SYMLINK_KEY] = entry.target or ""
        return {"kind": "symlink", "content_type": old["content_type"] if same_kind and old else DEFAULT_TYPE,
                "metadata": metadata, "md5": EMPTY_MD5, "size": 0}
    content_type = old["content_type"] if same_kind and old else (mimetypes.guess_type(path)[0] or DEFAULT_TYPE)
    return {"kind": "file", "content_type": content_type, "metadata": metadata, "md5": None, "size": entry.size}


def plan(target: GcsTarget, c: Change, current: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The object ops of one change: [{key, old: state or None, new: state or None}]."""
    if c.old is not None and c.new is not None and c.old.type == DIR and c.new.type == DIR:
        return []  # a directory's mode: nothing a bucket keeps
    old_key, new_key = object_key(target, c.path, c.old), object_key(target, c.path, c.new)
    ops = []
    if old_key is not None and old_key == new_key:
        old = current[old_key]
        assert c.new is not None
        new = new_state(c.path, c.new, old)
        unchanged = old is not None and (
            same_object(old, new) if new["kind"] != "file" else
            c.old.type == FILE and c.old.hash == c.new.hash and (old["content_type"], old["metadata"]) == (
                new["content_type"], new["metadata"]))
        if not unchanged:
            ops.append({"key": old_key, "old": old, "new": new})
        return ops
    if old_key is not None and current[old_key] is not None:
        ops.append({"key": old_key, "old": current[old_key], "new": None})
    if new_key is not None:
        assert c.new is not None
        ops.append({"key": new_key, "old": current[new_key], "new": new_state(c.path, c.new, None)})
    return ops


def moved_objects(
    changes: ChangeSet, target: GcsTarget, bases: dict[str, dict[str, int] | None],
    current: dict[str, dict[str, Any] | None],
) -> list[str]:
    """Paths whose objects are no longer at the generations recorded when the last run ended."""
    moved = []
    for c in changes.changes:
        recorded = bases.get(c.path)
        keys = [k for k in (object_key(target, c.path, c.old), object_key(target, c.path, c.new)) if k]
        if recorded is None or any(k not in recorded for k in keys):
            moved.append(c.path)
            continue
        if any((current[k]["generation"] if current[k] else 0) != recorded[k] for k in keys):
            moved.append(c.path)
    return moved


def objects_moved(journal: Journal, tx: TxRecord) -> list[str]:
    """Paths of ``tx`` whose objects are no longer at the generations recorded
    when its last run ended, asked of the bucket without reading the mount
    (whose cached view of a replaced object can fail reads)."""
    target = GcsTarget(tx.target or "")
    bases = journal.base_generations(tx.id)
    current = target.stat_many({k for recorded in bases.values() if recorded for k in recorded})
    return [
        path for path, recorded in bases.items() if recorded and any(
            (current[k]["generation"] if current.get(k) else 0) != generation for k, generation in recorded.items())
    ]


# -- the lease ---------------------------------------------------------------------


class Lease:
    """The root's lease object in the bucket, held by one commit at a time."""

    def __init__(self, target: GcsTarget, journal: Journal, tx: TxRecord) -> None:
        self.target, self.journal, self.tx = target, journal, tx
        # A rollback's own record exists only from its intent on: audit under the one it undoes.
        self.audit_tx = tx.rolls_back if tx.state == "committing" and tx.rolls_back else tx.id
        self.ttl = float(os.environ.get("ROSCOE_GCS_LEASE_SECONDS", "60"))
        self.wait = float(os.environ.get("ROSCOE_GCS_LEASE_WAIT", "60"))
        self.generation = 0
        self.taken_at = 0.0

    def holder(self) -> dict[str, Any]:
        return {"owner": f"{os.uname().nodename}.{os.getpid()}", "tx": self.tx.id, "root": self.tx.root,
                "expires_ns": time.time_ns() + int(self.ttl * 1e9)}

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        takeover = None
        while True:
            try:
                self.generation = self.target.run(self.target.lease_write(self.holder(), 0))
                break
            except PreconditionFailed:
                pass
            held, generation = self.target.run(self.target.lease_read())
            if generation == 0:
                continue
            held = held or {}
            expired = int(held.get("expires_ns") or 0) < time.time_ns()
            # Our own crashed commit (recovery), or a holder past its expiry: take over.
            if held.get("tx") == self.tx.id or expired:
                try:
                    self.generation = self.target.run(self.target.lease_write(self.holder(), generation))
                    takeover = held
                    break
                except PreconditionFailed:
                    continue
            if time.monotonic() >= deadline:
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(held.get("expires_ns") or 0) / 1e9))
                raise LeaseBusy(url=self.target.url, owner=held.get("owner", "another roscoe"), until=until)
            time.sleep(0.2)
        self.taken_at = time.monotonic()
        self.journal.log_event(self.audit_tx, "gcs-lease-acquire", {
            "target": self.target.url, "lease": self.target.lease_key(), "generation": self.generation,
            "took_over": takeover})

    def renew(self) -> None:
        """Extend the lease when a third of it is gone; lost to another holder: LeaseLost."""
        if time.monotonic() - self.taken_at < self.ttl / 3:
            return
        try:
            self.generation = self.target.run(self.target.lease_write(self.holder(), self.generation))
        except PreconditionFailed:
            held, _ = self.target.run(self.target.lease_read())
            raise LeaseLost(url=self.target.url, owner=(held or {}).get("owner", "another roscoe")) from None
        self.taken_at = time.monotonic()

    def release(self) -> None:
        try:
            self.target.run(self.target.delete(self.target.lease_key(), if_generation=self.generation))
        except (GcsError, PreconditionFailed):
            return  # it expires on its own
        self.journal.log_event(self.audit_tx, "gcs-lease-release", {"target": self.target.url, "generation": self.generation})


@contextmanager
def leased(target: GcsTarget, journal: Journal, tx: TxRecord) -> Iterator[Lease]:
    lease = Lease(target, journal, tx)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


# -- commit ------------------------------------------------------------------------


def commit_locked(ws: Workspace, tx: TxRecord, blobs: BlobStore) -> None:
    """Commit the open transaction ``tx`` of a GCS target (``journal.commit.commit``
    calls this, and turns a missing approval into a request)."""
    from journal.commit import checked, images_linked, logged

    target = GcsTarget(tx.target)
    with checked(ws, tx) as (tx, stager, changes, _):
        with leased(target, ws.journal, tx) as lease:
            keys = {k for c in changes.changes for k in (target.key(c.path), target.key(c.path, dir=True))}
            current = target.stat_many(keys)
            moved = moved_objects(changes, target, ws.journal.base_generations(tx.id), current)
            if moved:
                raise logged(ws.journal, Conflict(what="commit refused", tx=tx.id, paths=moved))
            with images_linked(ws, blobs, tx, stager, changes):
                try:
                    rows = store_images(blobs, target, tx, stager, changes, current)
                except Conflict as e:
                    raise logged(ws.journal, e) from None
                checkpoint("after-images")
                apply_journaled(ws.journal, blobs, target, tx, rows, changes.diff_hash, lease)


def store_images(
    blobs: BlobStore, target: GcsTarget, tx: TxRecord, stager: object, changes: ChangeSet,
    current: dict[str, dict[str, Any] | None],
) -> list[ChangeRow]:
    """Step 4: every pre-image read from the bucket at the generation checked (its
    bytes must hash to what the diff saw), every post-image from staging."""
    from journal.commit import store_new

    rows: list[ChangeRow] = []
    reads: list[tuple[str, int, str, str]] = []
    for seq, c in enumerate(changes.changes):
        ops = plan(target, c, current)
        new_blob = None
        if c.new is not None and c.new.type == FILE:
            new_blob = store_new(blobs, stager, c.path, c.new)
            for op in ops:
                if op["new"] is not None and op["new"]["kind"] == "file":
                    op["new"]["md5"] = md5_file(blobs.path(new_blob))
        old_blob = None
        for op in ops:
            old = op["old"]
            if old is not None and old["kind"] == "file":
                if c.old is None or c.old.type != FILE or c.old.hash is None:
                    raise Conflict(what="commit refused", tx=tx.id, paths=[c.path])
                old_blob = c.old.hash
                reads.append((c.path, old["generation"], op["key"], old_blob))
        rows.append(ChangeRow(seq, c.path, c.status, c.old, c.new, old_blob, new_blob, ops, {}))

    async def fetch(path: str, generation: int, key: str, digest: str) -> None:
        if blobs.has(digest):
            return
        try:
            data = await target.read(key, generation)
        except PreconditionFailed:
            raise Conflict(what="commit refused", tx=tx.id, paths=[path]) from None
        from journal.errors import BlobCorrupt

        try:
            blobs.put_stream(iter([data]), digest)
        except BlobCorrupt:
            raise Conflict(what="commit refused", tx=tx.id, paths=[path]) from None

    target.run(target.gather([lambda r=r: fetch(*r) for r in reads]))
    blobs.sync()
    return rows


def md5_file(path: str) -> str:
    import base64
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(durable.CHUNK), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def apply_journaled(
    journal: Journal, blobs: BlobStore, target: GcsTarget, tx: TxRecord, rows: list[ChangeRow],
    diff_hash: str, lease: Lease, *, new: bool = False,
) -> None:
    """Steps 5-7 for ``rows`` whose images are in ``blobs``. A failed precondition
    or a lost lease undoes what was done and is a conflict; a network failure
    undoes it too, or leaves it to `roscoe recover` when the undo cannot run."""
    journal.record_intent(tx.id, rows, diff_hash, new=tx if new else None)
    checkpoint("after-intent")
    pause("after-intent")
    try:
        apply_ops(journal, blobs, target, tx, rows, lease)
    except (PreconditionFailed, LeaseLost, GcsError, OSError) as e:
        problem = undo(journal, blobs, target, tx, journal.changes(tx.id))
        if isinstance(e, (PreconditionFailed, LeaseLost)) and problem is None:
            from journal.commit import logged

            what = e.message if isinstance(e, LeaseLost) else "commit undone: an object was written by someone else during it"
            if isinstance(e, PreconditionFailed):
                raise logged(journal, Conflict(what=what, tx=tx.id, paths=[e.key])) from None
            raise logged(journal, Conflict(what=what, tx=tx.id, paths=[], changed="the lease")) from None
        outcome = "the bucket was put back as it was" if problem is None else (
            f"the bucket could not be put back yet ({problem}): run `roscoe recover`")
        reason = e.message if isinstance(e, RoscoeError) else str(e)
        where = e.key if isinstance(e, PreconditionFailed) else target.url
        raise CommitFailed(tx=tx.id, path=where, reason=reason, outcome=outcome) from e
    checkpoint("before-record")
    journal.mark_committed(tx.id)
    checkpoint("after-record")


_paused: set[str] = set()


def pause(step: str) -> None:
    """Test hook: with ``ROSCOE_GCS_PAUSE=STEP`` the commit creates the file
    ``$ROSCOE_GCS_PAUSE_FILE`` at STEP and waits (30 s at most) until it is
    removed, so a test can act as another writer in the middle of a commit
    (or cut the network). It pauses once per step and process."""
    if os.environ.get("ROSCOE_GCS_PAUSE") != step or step in _paused:
        return
    _paused.add(step)
    flag = os.environ["ROSCOE_GCS_PAUSE_FILE"]
    with open(flag, "w"):
        pass
    deadline = time.monotonic() + 30
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.05)


def content(blobs: BlobStore, row: ChangeRow, state: dict[str, Any], *, old: bool) -> bytes:
    if state["kind"] != "file":
        return b""
    digest = row.old_blob if old else row.new_blob
    return b"".join(blobs.read(digest or ""))


def apply_ops(
    journal: Journal, blobs: BlobStore, target: GcsTarget, tx: TxRecord, rows: list[ChangeRow], lease: Lease,
) -> None:
    """Deletes, then directory placeholders, then files and symlinks; each batch's
    generations journaled before the next batch starts."""
    batch = int(os.environ.get("ROSCOE_GCS_BATCH", "256"))
    phases: list[list[tuple[ChangeRow, dict[str, Any]]]] = [[], [], []]
    for r in rows:
        for op in r.objects or []:
            phase = 0 if op["new"] is None else 1 if op["new"]["kind"] == "dir" else 2
            phases[phase].append((r, op))
    for phase in phases:
        for start in range(0, len(phase), batch):
            chunk = phase[start:start + batch]

            async def one(r: ChangeRow, op: dict[str, Any]) -> int:
                base = op["old"]["generation"] if op["old"] else 0
                if op["new"] is None:
                    await target.delete(op["key"], if_generation=base)
                    return 0
                return await target.write(
                    op["key"], content(blobs, r, op["new"], old=False), if_generation=base,
                    content_type=op["new"]["content_type"], metadata=op["new"]["metadata"])

            async def run_chunk() -> list[Any]:
                import asyncio

                limit = asyncio.Semaphore(target.concurrency)

                async def limited(r: ChangeRow, op: dict[str, Any]) -> int:
                    async with limit:
                        return await one(r, op)

                return await asyncio.gather(*(limited(r, op) for r, op in chunk), return_exceptions=True)

            outcomes = target.run(run_chunk())
            checkpoint("apply")
            done: dict[int, dict[str, int]] = {}
            failure: BaseException | None = None
            for (r, op), outcome in zip(chunk, outcomes):
                if isinstance(outcome, BaseException):
                    failure = failure or outcome
                else:
                    done.setdefault(r.seq, {})[op["key"]] = outcome
            journal.record_generations(tx.id, done, "gcs-apply", {
                "target": target.url, "ops": len(chunk), "done": sum(map(len, done.values()))})
            if failure is not None:
                raise failure
            pause("after-batch")
            lease.renew()


def undo(journal: Journal, blobs: BlobStore, target: GcsTarget, tx: TxRecord, rows: list[ChangeRow]) -> str | None:
    """Put every object of ``rows`` back to its old state, conditionally, and leave
    `committing`. An object that holds neither the old nor this transaction's
    new state was written by someone else: it is left alone (and named in the
    audit trail). Returns None when done, else why it could not be done yet."""
    restored: dict[str, int] = {}

    async def one(r: ChangeRow, op: dict[str, Any]) -> str | None:
        key, old, new = op["key"], op["old"], op["new"]
        now = await target.stat(key)
        if same_object(now, old):
            if now is not None:
                restored[key] = now["generation"]
            return None
        if now is None:
            if new is not None:
                return key  # ours was to write it; someone deleted it since
            assert old is not None
            restored[key] = await target.write(key, content(blobs, r, old, old=True), if_generation=0,
                                               content_type=old["content_type"], metadata=old["metadata"])
            return None
        if new is None or not same_object(now, new):
            return key
        if old is None:
            await target.delete(key, if_generation=now["generation"])
        else:
            restored[key] = await target.write(
                key, content(blobs, r, old, old=True), if_generation=now["generation"],
                content_type=old["content_type"], metadata=old["metadata"])
        return None

    pairs = [(r, op) for r in rows for op in r.objects or []]
    try:
        left = target.run(target.gather([lambda r=r, op=op: one(r, op) for r, op in pairs]))
    except PreconditionFailed as e:
        return f"{e.key} changed while it was being put back"
    except RoscoeError as e:
        return e.message
    except OSError as e:
        return str(e)
    checkpoint("undo")
    foreign = sorted(k for k in left if k)
    checkpoint("before-reopen")
    with journal.write():
        journal.rebase_generations(tx.id, restored)
        journal.event(tx.id, "gcs-undo", {"target": target.url, "objects": len(pairs), "left_alone": foreign})
    journal.reopen(tx.id, "aborted" if tx.rolls_back else "open")
    return None


def recover_one(ws: Workspace, tx: TxRecord, rows: list[ChangeRow]) -> str | None:
    """Undo the interrupted commit ``tx`` under the root's lease (taken over from
    the crashed commit, which held it for the same transaction)."""
    from journal.commit import blob_store

    target = GcsTarget(tx.target)
    try:
        with leased(target, ws.journal, tx):
            return undo(ws.journal, blob_store(ws.home.path), target, tx, rows)
    except RoscoeError as e:
        return e.message


# -- rollback ----------------------------------------------------------------------


def rollback_changes(root: str, written: list[ChangeRow], current: dict[str, dict[str, Any] | None]) -> ChangeSet:
    """What rolling back ``written`` changes, given the objects there now: every
    path one of whose objects is not yet as it was before."""
    return ChangeSet(root, tuple(
        Change(r.path, classify(r.new, r.old) or "modified", r.new, r.old) for r in written
        if any(not same_object(current[op["key"]], op["old"]) for op in r.objects or [])))


def preview(ws: Workspace, target_tx: TxRecord) -> ChangeSet:
    """The change set a rollback of ``target_tx`` would apply now (asked of the bucket)."""
    written = ws.journal.changes(target_tx.id)
    target = GcsTarget(target_tx.target or "")
    current = target.stat_many([op["key"] for r in written for op in r.objects or []])
    return rollback_changes(target_tx.root, written, current)


def moved_since(written: list[ChangeRow], current: dict[str, dict[str, Any] | None]) -> list[str]:
    """Paths whose objects are no longer at the generations ``written`` left."""
    moved = []
    for r in written:
        for op in r.objects or []:
            wrote = (r.results or {}).get(op["key"])
            now = current[op["key"]]
            if (now["generation"] if now else 0) != wrote:
                moved.append(r.path)
    return sorted(set(moved), key=os.fsencode)


def rollback_conflicts(ws: Workspace, target_tx: TxRecord) -> list[str]:
    """What a rollback of ``target_tx`` would refuse without --force (asked of the bucket)."""
    written = ws.journal.changes(target_tx.id)
    target = GcsTarget(target_tx.target or "")
    return moved_since(written, target.stat_many([op["key"] for r in written for op in r.objects or []]))


def rollback(
    ws: Workspace, target_tx: TxRecord, tx: TxRecord, gate: Callable[[ChangeSet], None], *, new: bool,
    force: bool = False,
) -> TxRecord:
    """Roll back the committed GCS transaction ``target_tx`` as the transaction
    ``tx`` (``new``: not yet journaled), whose ops put back the old objects,
    conditional on the generations it wrote. ``gate(changes)`` holds it to
    policy and approval before anything is written."""
    from journal.commit import blob_store, logged
    from journal.rootlock import root_lock

    blobs = blob_store(ws.home.path)
    written = ws.journal.changes(target_tx.id)
    target = GcsTarget(target_tx.target or "")
    with root_lock(ws.home.path, target_tx.root), leased(target, ws.journal, tx) as lease:
        keys = [op["key"] for r in written for op in r.objects or []]
        current = target.stat_many(keys)
        moved = moved_since(written, current)
        if moved and not force:
            later = ws.journal.later_commits_touching(target_tx, moved)
            since = f" (changed since by {', '.join(later)})" if later else ""
            raise logged(ws.journal, Conflict(
                what=f"rollback of {target_tx.id} refused (--force overrides)", tx=target_tx.id,
                paths=moved, since=since))
        gate(rollback_changes(target_tx.root, written, current))
        checkpoint("before-images")
        rows: list[ChangeRow] = []
        for r in written:
            ops = []
            old_blob = r.new_blob
            for op in r.objects or []:
                now = current[op["key"]]
                if same_object(now, op["old"]):
                    continue
                if now is not None and now["kind"] == "file" and not same_object(now, op["new"]):
                    # --force over a later write: keep its bytes so this rollback can be undone too
                    data = target.run(target.read(op["key"], now["generation"]))
                    from cowfs.hashing import hash_bytes

                    old_blob = hash_bytes(data)
                    blobs.put_stream(iter([data]), old_blob)
                ops.append({"key": op["key"], "old": now, "new": op["old"]})
            if not ops:
                continue
            status = classify(r.new, r.old) or "modified"
            rows.append(ChangeRow(len(rows), r.path, status, r.new, r.old, old_blob, r.old_blob, ops, {}))
        blobs.sync()
        checkpoint("after-images")
        diff_hash = ChangeSet(tx.root, tuple(Change(r.path, r.status, r.old, r.new) for r in rows)).diff_hash
        apply_journaled(ws.journal, blobs, target, tx, rows, diff_hash, lease, new=new)
    done = ws.journal.get_tx(tx.id)
    assert done is not None
    return done


# -- verify ------------------------------------------------------------------------


def verify_objects(
    ws: Workspace, latest: dict[tuple[str, str], tuple[str, Entry | None]], in_buckets: dict[str, TxRecord],
) -> list[tuple[str, str | None, str | None, str]]:
    """``roscoe verify`` for paths a GCS transaction wrote last: each object is
    still at the generation that transaction journaled (read through the API,
    not the mount, whose cache may lag). Problems as (kind, tx, path, detail)."""
    problems: list[tuple[str, str | None, str | None, str]] = []
    by_tx: dict[str, list[str]] = {}
    for (_, path), (tx_id, _) in latest.items():
        if tx_id in in_buckets:
            by_tx.setdefault(tx_id, []).append(path)
    for tx_id, paths in sorted(by_tx.items()):
        tx = in_buckets[tx_id]
        target = GcsTarget(tx.target)
        wanted = set(paths)
        rows = [r for r in ws.journal.changes(tx_id) if r.path in wanted]
        expect = {(r.path, op["key"]): (r.results or {}).get(op["key"]) for r in rows for op in r.objects or []}
        try:
            now = target.stat_many(k for _, k in expect)
        except RoscoeError as e:
            problems.append(("live", tx_id, None, e.message))
            continue
        for (path, key), generation in sorted(expect.items()):
            have = now[key]["generation"] if now.get(key) else 0
            if have != generation:
                problems.append(("live", tx_id, path, f"{tx.target}: object {key} is at generation {have}, "
                                 f"tx {tx_id} wrote {generation}"))
    return problems
