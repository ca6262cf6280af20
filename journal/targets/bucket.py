"""A GCS bucket as a commit target: the change set lands in the bucket
through conditional API calls, all of it or none of it.

The bucket has no multi-object transaction, so the journal is the atomicity
(the steps are ``journal.protocol``'s):

1. after the root's lock here, the root's lease object in the bucket
   (generation-matched create; a lease past its expiry is taken over by a
   generation-matched rewrite), so commits of one root from many machines
   run one at a time;
3. conflict check under the lease: every object a change rewrites is still
   at the generation recorded when the last run ended (else exit 3);
4. images: pre-images read from the bucket *by generation* (and checked
   against the hash the diff saw) and post-images from staging, into the
   blob store, fsynced; with each object's content type and metadata;
6. conditional ops, many at a time in gcsfs's event loop: deletes
   (``ifGenerationMatch`` = base), then directory placeholders, then files
   and symlinks (``ifGenerationMatch`` = base, 0 for must-not-exist); each
   batch's resulting generations journaled as it completes (audit
   ``gcs-apply``); no ``fs.mv``: a move is a create plus a conditional delete.
   After the commit record the lease is released.

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
from collections.abc import Iterator
from contextlib import contextmanager

from cowfs import durable
from cowfs.changeset import Change, ChangeSet, classify
from cowfs.entry import DIR, FILE, SYMLINK, Entry
from cowfs.errors import RoscoeError
from cowfs.gcs import (
    DEFAULT_TYPE, MTIME_KEYS, SYMLINK_KEY, GcsError, GcsTarget, PreconditionFailed, md5_b64, parse_url,
    rfc3339, same_object,
)
from journal.blobs import BlobStore
from journal.errors import BlobCorrupt, CommitFailed, Conflict, LeaseBusy, LeaseLost
from journal.images import images_linked, store_new
from journal.store import ChangeRow, Journal, TxRecord
from journal.targets.base import BucketSettings, Context, Holding, Progress, Seen, Target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.hashcache import HashCache
    from cowfs.stagers import Stager

EMPTY_MD5 = md5_b64(b"")




def check_target(url: str) -> str:
    """``url`` in canonical form, once its bucket answers."""
    bucket, prefix = parse_url(url)
    canonical = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
    GcsTarget(canonical).check()
    return canonical


def base_generations(url: str, paths: list[str]) -> dict[str, dict[str, int]]:
    """For each path, the generations of the objects it can map to (the file
    or symlink object and the directory placeholder), 0 for absent. Empty when
    the bucket cannot be reached: a commit then refuses (no base) instead of guessing."""
    target = GcsTarget(url)
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


class Lease(Holding):
    """The root's lease object in the bucket, held by one commit at a time."""

    def __init__(self, target: GcsTarget, journal: Journal, tx: TxRecord, settings: BucketSettings) -> None:
        self.target, self.journal, self.tx = target, journal, tx
        # A rollback's own record exists only from its intent on: audit under the one it undoes.
        self.audit_tx = tx.rolls_back if tx.state == "committing" and tx.rolls_back else tx.id
        self.ttl, self.wait = settings.lease_seconds, settings.lease_wait
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
def leased(target: GcsTarget, journal: Journal, tx: TxRecord, settings: BucketSettings) -> Iterator[Lease]:
    lease = Lease(target, journal, tx, settings)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


# -- the target --------------------------------------------------------------------


class Bucket(Target):
    """The objects under gs://BUCKET/PREFIX, mounted at the root."""

    failures = (PreconditionFailed, LeaseLost, GcsError, OSError)

    def __init__(self, ctx: Context, root: str, url: str | None = None) -> None:
        super().__init__(ctx, root, url)
        assert url is not None
        self.gcs = GcsTarget(url)

    def base_generations(self, paths: list[str]) -> dict[str, dict[str, int]] | None:
        return base_generations(self.gcs.url, paths)

    # -- commit -------------------------------------------------------------------

    @contextmanager
    def held(self, tx: TxRecord) -> Iterator[Holding]:
        with leased(self.gcs, self.ctx.journal, tx, self.ctx.bucket) as lease:
            yield lease

    def conflicts(self, tx: TxRecord, changes: ChangeSet) -> list[str]:
        keys = {k for c in changes.changes for k in (self.gcs.key(c.path), self.gcs.key(c.path, dir=True))}
        self._current = self.gcs.stat_many(keys)
        return moved_objects(changes, self.gcs, self.ctx.journal.base_generations(tx.id), self._current)

    def unreadable_conflicts(self, tx: TxRecord) -> list[str]:
        return objects_moved(self.ctx.journal, tx)

    @contextmanager
    def images(
        self, tx: TxRecord, stager: Stager | None, changes: ChangeSet, hashes: HashCache,
    ) -> Iterator[list[ChangeRow]]:
        """Every pre-image read from the bucket at the generation checked (its
        bytes must hash to what the diff saw), every post-image from staging."""
        blobs = self.ctx.blobs
        self.ctx.faults.checkpoint("before-images")
        with images_linked(blobs, self.ctx.home.linked_images(tx.id), stager, changes):
            try:
                rows = self._store_images(blobs, tx, stager, changes, self._current)
            except Conflict as e:
                raise self.logged(e) from None
            yield rows

    def _store_images(
        self, blobs: BlobStore, tx: TxRecord, stager: Stager | None, changes: ChangeSet,
        current: dict[str, dict[str, Any] | None],
    ) -> list[ChangeRow]:
        target = self.gcs
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
            try:
                blobs.put_stream(iter([data]), digest)
            except BlobCorrupt:
                raise Conflict(what="commit refused", tx=tx.id, paths=[path]) from None

        target.run(target.gather([lambda r=r: fetch(*r) for r in reads]))
        blobs.sync()
        return rows

    def apply(
        self, tx: TxRecord, rows: list[ChangeRow], holding: Holding, *, known: dict[str, Any] | None,
        stager: Stager | None, progress: Progress | None,
    ) -> None:
        """Deletes, then directory placeholders, then files and symlinks; each batch's
        generations journaled before the next batch starts."""
        import asyncio

        target, journal, blobs, faults = self.gcs, self.ctx.journal, self.ctx.blobs, self.ctx.faults
        faults.pause("after-intent")
        batch = self.ctx.bucket.batch
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

                async def run_chunk(chunk: list[tuple[ChangeRow, dict[str, Any]]] = chunk) -> list[Any]:
                    limit = asyncio.Semaphore(target.concurrency)

                    async def limited(r: ChangeRow, op: dict[str, Any]) -> int:
                        async with limit:
                            return await one(r, op)

                    return await asyncio.gather(*(limited(r, op) for r, op in chunk), return_exceptions=True)

                outcomes = target.run(run_chunk())
                faults.checkpoint("apply")
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
                faults.pause("after-batch")
                holding.renew()

    def failure(self, tx: TxRecord, error: BaseException, problem: str | None) -> RoscoeError:
        """A failed precondition or a lost lease, undone, is a conflict; a
        network failure is a failed commit (undone, or left to `roscoe recover`)."""
        if isinstance(error, (PreconditionFailed, LeaseLost)) and problem is None:
            if isinstance(error, PreconditionFailed):
                return self.logged(Conflict(
                    what="commit undone: an object was written by someone else during it", tx=tx.id,
                    paths=[error.key]))
            return self.logged(Conflict(what=error.message, tx=tx.id, paths=[], changed="the lease"))
        outcome = "the bucket was put back as it was" if problem is None else (
            f"the bucket could not be put back yet ({problem}): run `roscoe recover`")
        reason = error.message if isinstance(error, RoscoeError) else str(error)
        where = error.key if isinstance(error, PreconditionFailed) else self.gcs.url
        return CommitFailed(tx=tx.id, path=where, reason=reason, outcome=outcome)

    def undo(self, tx: TxRecord, rows: list[ChangeRow]) -> str | None:
        """Put every object of ``rows`` back to its old state, conditionally. An
        object that holds neither the old nor this transaction's new state was
        written by someone else: it is left alone (and named in the audit trail)."""
        target, journal, blobs = self.gcs, self.ctx.journal, self.ctx.blobs
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
        self.ctx.faults.checkpoint("undo")
        foreign = sorted(k for k in left if k)
        with journal.write():
            journal.rebase_generations(tx.id, restored)
            if tx.rolls_back:  # (the objects are again what the rolled-back transaction wrote)
                journal.rebase_results(tx.rolls_back, restored)
            journal.event(tx.id, "gcs-undo", {"target": target.url, "objects": len(pairs), "left_alone": foreign})
        return None

    # -- rollback -----------------------------------------------------------------

    @contextmanager
    def seen(self, committed: TxRecord, written: list[ChangeRow]) -> Iterator[Seen]:
        """The objects there now, asked of the bucket (not the mount, whose cache may lag)."""
        current = self.gcs.stat_many([op["key"] for r in written for op in r.objects or []])
        yield Seen(current, moved_since(written, current), [], rollback_changes(committed.root, written, current))

    @contextmanager
    def rollback_images(
        self, tx: TxRecord, written: list[ChangeRow], seen: Seen,
    ) -> Iterator[tuple[list[ChangeRow], str]]:
        """Ops that put back the old objects, conditional on the generations
        there now; where --force goes over a later write, its bytes are kept
        so that this rollback can be undone too."""
        from cowfs.hashing import hash_bytes

        blobs, current = self.ctx.blobs, seen.live
        rows: list[ChangeRow] = []
        for r in written:
            ops = []
            old_blob = r.new_blob
            for op in r.objects or []:
                now = current[op["key"]]
                if same_object(now, op["old"]):
                    continue
                if now is not None and now["kind"] == "file" and not same_object(now, op["new"]):
                    data = self.gcs.run(self.gcs.read(op["key"], now["generation"]))
                    old_blob = hash_bytes(data)
                    blobs.put_stream(iter([data]), old_blob)
                ops.append({"key": op["key"], "old": now, "new": op["old"]})
            if not ops:
                continue
            status = classify(r.new, r.old) or "modified"
            rows.append(ChangeRow(len(rows), r.path, status, r.new, r.old, old_blob, r.old_blob, ops, {}))
        blobs.sync()
        yield rows, ChangeSet(tx.root, tuple(Change(r.path, r.status, r.old, r.new) for r in rows)).diff_hash

    # -- verify -------------------------------------------------------------------

    def verify(self, tx: TxRecord, wrote: dict[str, Entry | None]) -> list[tuple[str | None, str]]:
        """Each object is still at the generation ``tx`` journaled (read through
        the API, not the mount, whose cache may lag)."""
        rows = [r for r in self.ctx.journal.changes(tx.id) if r.path in wrote]
        expect = {(r.path, op["key"]): (r.results or {}).get(op["key"]) for r in rows for op in r.objects or []}
        try:
            now = self.gcs.stat_many(k for _, k in expect)
        except RoscoeError as e:
            return [(None, e.message)]
        problems: list[tuple[str | None, str]] = []
        for (path, key), generation in sorted(expect.items()):
            have = now[key]["generation"] if now.get(key) else 0
            if have != generation:
                problems.append((path, f"{self.gcs.url}: object {key} is at generation {have}, "
                                       f"tx {tx.id} wrote {generation}"))
        return problems


def md5_file(path: str) -> str:
    import base64
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(durable.CHUNK), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def content(blobs: BlobStore, row: ChangeRow, state: dict[str, Any], *, old: bool) -> bytes:
    if state["kind"] != "file":
        return b""
    digest = row.old_blob if old else row.new_blob
    return b"".join(blobs.read(digest or ""))


def rollback_changes(root: str, written: list[ChangeRow], current: dict[str, dict[str, Any] | None]) -> ChangeSet:
    """What rolling back ``written`` changes, given the objects there now: every
    path one of whose objects is not yet as it was before."""
    return ChangeSet(root, tuple(
        Change(r.path, classify(r.new, r.old) or "modified", r.new, r.old) for r in written
        if any(not same_object(current[op["key"]], op["old"]) for op in r.objects or [])))


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
