"""A GCS bucket as a commit target: the change set lands in the bucket
through conditional API calls, all of it or none of it, and the journal of
every commit lives in the bucket too (``journal.targets.manifests``), so any
machine can list, verify, recover and roll it back.

The bucket has no multi-object transaction; the steps (``journal.protocol``'s):

1. after the root's lock here, the lease object beside the prefix
   (generation-matched create; a lease past its expiry is taken over by a
   generation-matched rewrite, after settling what its holder left in
   flight), so commits of one prefix from many machines run one at a time;
3. conflict check under the lease: every object a change rewrites is still
   at the generation recorded when the last run ended (else exit 3); a
   commit of only new objects reads nothing (each write is conditional);
4. images, in one round: every object a change replaces or deletes copied
   server side (``rewrite`` at exactly that generation: no bytes through the
   machine) to ``tx/ID/pre/``, and the intent object; post-images from
   staging into the blob store. A move (bytes unchanged) needs neither: it
   lands as a server-side rewrite from its source, and the moved object is
   the source's image; a file whose bytes stay (its mtime changed) is
   rewritten in place;
6. conditional ops, many at a time in gcsfs's event loop: moves, then
   deletes (``ifGenerationMatch`` = base), then placeholders, files and
   symlinks (``ifGenerationMatch`` = base, 0 for must-not-exist); each
   batch's resulting generations journaled as it completes (audit
   ``gcs-apply``);
7. the manifest (``ifGenerationMatch=0``), the commit point on the bucket,
   then the journal's commit record; the lease is released and the intent
   dropped in one round.

A failed precondition (someone else wrote an object) undoes what was done
and is a conflict (exit 3). Undo is state based and conditional too: an
object is put back (server side, from its image) only while it holds
exactly what this transaction wrote (or is absent where it deleted it),
with ``ifGenerationMatch`` on the generation seen, so recovery never
clobbers a writer it did not see.
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cowfs.changeset import Change, ChangeSet, classify
from cowfs.entry import DIR, FILE, SYMLINK, Entry
from cowfs.errors import RoscoeError
from cowfs.gcs import (
    DEFAULT_TYPE, MTIME_KEYS, SYMLINK_KEY, GcsError, GcsSettings, GcsTarget, PreconditionFailed, md5_b64, md5_file,
    parse_url, rfc3339, same_object,
)
from journal.errors import CommitFailed, Conflict, ImagesDropped, LeaseLost
from journal.images import images_linked, store_new
from journal.store import ChangeRow, Journal, TxRecord
from journal.targets import manifests
from journal.targets.base import Context, Holding, Progress, Seen, Target
from journal.targets.lease import Lease
from journal.targets.manifests import Layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.hashcache import HashCache
    from cowfs.stagers import Stager

EMPTY_MD5 = md5_b64(b"")




def canonical(url: str) -> str:
    """``url`` as roscoe writes it (no trailing slash), refused unless it has a
    prefix beside which its journal can live."""
    bucket, prefix = parse_url(url)
    Layout.of(prefix)
    return f"gs://{bucket}/{prefix}"


def check_target(url: str) -> str:
    """``url`` in canonical form, once its bucket answers."""
    url = canonical(url)
    GcsTarget(url).check()
    return url


def base_generations(url: str, paths: list[str], settings: GcsSettings | None = None) -> dict[str, dict[str, int]]:
    """For each path, the generations of the objects it can map to (the file
    or symlink object and the directory placeholder), 0 for absent. Empty when
    the bucket cannot be reached: a commit then refuses (no base) instead of guessing."""
    target = GcsTarget(url, settings)
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


def same_bytes_kept(
    target: GcsTarget, c: Change, current: dict[str, dict[str, Any] | None],
) -> dict[str, Any] | None:
    """For a file whose bytes a change keeps (its mtime, say, changed): its key
    and object state now, so it can be rewritten in place server side."""
    if c.old is None or c.new is None or c.old.type != FILE or c.new.type != FILE or c.old.hash != c.new.hash:
        return None
    key = target.key(c.path)
    old = current.get(key)
    if old is None or old["kind"] != "file" or not old.get("md5") or old["size"] != c.new.size:
        return None
    return {"key": key, "old": old}


def moves_in(
    target: GcsTarget, changes: ChangeSet, current: dict[str, dict[str, Any] | None],
) -> dict[str, dict[str, Any]]:
    """The moves of ``changes`` that can land server side: by added path, its
    source's key and object state (a file object there now)."""
    found = {}
    for m in changes.moves():
        if m.added.new is None or m.added.new.type != FILE:
            continue
        key = target.key(m.deleted.path)
        old = current.get(key)
        if old is not None and old["kind"] == "file" and old.get("md5"):
            found[m.added.path] = {"key": key, "old": old, "op": {}}
    return found


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


# -- the target --------------------------------------------------------------------


class Bucket(Target):
    """The objects under gs://BUCKET/PREFIX, mounted at the root; the journal
    of their commits in the bucket beside them (``journal.targets.manifests``)."""

    failures = (PreconditionFailed, LeaseLost, GcsError, OSError)

    def __init__(self, ctx: Context, root: str, url: str | None = None) -> None:
        super().__init__(ctx, root, url)
        assert url is not None
        self.gcs = GcsTarget(url, ctx.bucket.gcs)
        self.layout = Layout.of(self.gcs.prefix)
        self._lease: Lease | None = None
        self._intent = 0  # the generation of this commit's intent object
        self._current: dict[str, dict[str, Any] | None] = {}

    def base_generations(self, paths: list[str]) -> dict[str, dict[str, int]] | None:
        return base_generations(self.gcs.url, paths, self.gcs.settings)

    # -- commit -------------------------------------------------------------------

    def lease(self, tx: TxRecord | None) -> Lease:
        return Lease(self.gcs, self.layout.lease, self.ctx.journal, self.ctx.bucket, tx, self.settle_intent)

    @contextmanager
    def held(self, tx: TxRecord) -> Iterator[Holding]:
        lease = self.lease(tx)
        lease.acquire()
        self._lease = lease
        try:
            yield lease
        finally:
            self._lease = None
            lease.release()

    def conflicts(self, tx: TxRecord, changes: ChangeSet) -> list[str]:
        keys = {k for c in changes.changes for k in (self.gcs.key(c.path), self.gcs.key(c.path, dir=True))}
        bases = self.ctx.journal.base_generations(tx.id)
        recorded = {k: g for paths in bases.values() if paths for k, g in paths.items()}
        if keys and all(recorded.get(k, -1) == 0 for k in keys):
            # Only new objects: nothing to read first. Each write is conditional on
            # there being none (ifGenerationMatch=0), so one that appeared since is
            # still a conflict, found by the write itself and undone.
            self._current = dict.fromkeys(keys)
            return []
        self._current = self.gcs.stat_many(keys)
        return moved_objects(changes, self.gcs, bases, self._current)

    def unreadable_conflicts(self, tx: TxRecord) -> list[str]:
        return objects_moved(self.ctx.journal, tx)

    @contextmanager
    def images(
        self, tx: TxRecord, stager: Stager | None, changes: ChangeSet, hashes: HashCache,
    ) -> Iterator[list[ChangeRow]]:
        """Post-images from staging into the blob store; pre-images copied in the
        bucket, server side, from the generations checked; the intent beside them."""
        blobs = self.ctx.blobs
        self.ctx.faults.checkpoint("before-images")
        with images_linked(blobs, self.ctx.home.linked_images(tx.id), stager, changes):
            rows: list[ChangeRow] = []
            moved = moves_in(self.gcs, changes, self._current)
            for seq, c in enumerate(changes.changes):
                ops = plan(self.gcs, c, self._current)
                new_blob = None
                same = same_bytes_kept(self.gcs, c, self._current)
                if c.path in moved:  # (a move: server side from its source, which serves as its own image)
                    source = moved[c.path]
                    for op in ops:
                        if op["new"] is not None and op["new"]["kind"] == "file":
                            op["new"] = new_state(c.path, c.new, source["old"])
                            op["new"]["md5"] = source["old"]["md5"]
                            op["source"] = {"key": source["key"], "generation": source["old"]["generation"]}
                            source["dest"] = op["key"]
                elif same is not None:  # (its bytes unchanged, its metadata not: server side, in place)
                    for op in ops:
                        if op["key"] == same["key"] and op["new"] is not None:
                            op["new"]["md5"] = same["old"]["md5"]
                            op["source"] = {"key": same["key"], "generation": same["old"]["generation"]}
                elif c.new is not None and c.new.type == FILE:
                    new_blob = store_new(blobs, stager, c.path, c.new)
                    for op in ops:
                        if op["new"] is not None and op["new"]["kind"] == "file":
                            op["new"]["md5"] = md5_file(blobs.path(new_blob))
                for op in ops:
                    if op["old"] is not None and op["old"]["kind"] == "file" and (
                            c.old is None or c.old.type != FILE or c.old.hash is None):
                        raise self.logged(Conflict(what="commit refused", tx=tx.id, paths=[c.path]))
                    for m in moved.values():
                        if m["key"] == op["key"] and op["new"] is None:
                            m["op"] = op  # (its image is the object it is moved to)
                rows.append(ChangeRow(seq, c.path, c.status, c.old, c.new, None, new_blob, ops, {}))
            for m in moved.values():  # (the source's image is the object it is moved to)
                if m["op"] and "dest" in m:
                    m["op"]["image"] = {"key": m["dest"], "generation": 0}
            blobs.sync()
            self.keep_images(tx, rows, changes.diff_hash)
            yield rows

    def keep_images(self, tx: TxRecord, rows: list[ChangeRow], diff_hash: str) -> None:
        """Step 4 in the bucket, in one round: every object a commit replaces or
        deletes copied server side to ``tx/ID/pre/`` (at the generation the
        op is conditional on; gone since: a conflict), and the intent. Until
        the intent is settled the lease is not released."""
        target, layout = self.gcs, self.layout
        copies = []
        for r in rows:
            for n, op in enumerate(r.objects or []):
                old = op["old"]
                if old is not None and old["kind"] == "file" and "image" not in op:
                    op["image"] = {"key": layout.image(tx.id, r.seq, n), "generation": 0}
                    copies.append((r, op))

        async def copy(r: ChangeRow, op: dict[str, Any]) -> None:
            try:
                kept = await target.rewrite(op["key"], op["old"]["generation"], op["image"]["key"], if_generation=0)
            except PreconditionFailed as e:
                if e.key == op["key"]:  # (the generation the op is conditional on is gone)
                    raise self.logged(Conflict(what="commit refused", tx=tx.id, paths=[r.path])) from None
                raise
            op["image"]["generation"] = kept["generation"]

        if self._lease is not None:
            self._lease.clean = False
        # One round: the intent goes with the copies (it names each image at
        # generation 0: written once per attempt, an image is whatever generation
        # holds the old bytes; the manifest names the generations).
        intent = json.loads(json.dumps(manifests.document(tx, rows, diff_hash)))

        async def write_intent() -> None:
            self._intent = await target.write_json(layout.intent(tx.id), intent, if_generation=0)

        try:
            target.run(target.gather([write_intent] + [lambda r=r, op=op: copy(r, op) for r, op in copies]))
        except BaseException:
            if self.drop_intent(tx.id) is None and self._lease is not None:
                self._lease.clean = True
            raise

    def drop_intent(self, tx_id: str, *, images: bool = True) -> str | None:
        """Remove ``tx_id``'s intent (it is settled: undone, or superseded by its
        manifest), and with ``images`` its pre-images (undone: nothing needs
        them). None when done, else why not."""
        target, layout = self.gcs, self.layout

        async def drop() -> None:
            intent = layout.intent(tx_id)
            found = await target.list_prefix(f"{layout.base}/tx/{tx_id}/") if images else {
                intent: await target.stat(intent)}
            if found.get(intent):
                await target.delete(intent, if_generation=found[intent]["generation"])
            await target.gather([lambda k=k, st=st: target.delete(k, if_generation=st["generation"])
                                 for k, st in found.items() if k != intent and st])

        try:
            target.run(drop())
        except (GcsError, PreconditionFailed, OSError) as e:
            return str(e)
        return None

    def apply(
        self, tx: TxRecord, rows: list[ChangeRow], holding: Holding, *, known: dict[str, Any] | None,
        stager: Stager | None, progress: Progress | None,
    ) -> None:
        """Moves, then deletes, then placeholders, files and symlinks; each
        batch's generations journaled before the next batch starts."""
        import asyncio

        target, journal, faults = self.gcs, self.ctx.journal, self.ctx.faults
        faults.pause("after-intent")
        batch = self.ctx.bucket.batch
        # Moves (server-side copies from objects this commit deletes) first, then
        # deletes, then directory placeholders, files and symlinks together (a
        # bucket needs no placeholder before the objects under it).
        phases: list[list[tuple[ChangeRow, dict[str, Any]]]] = [[], [], []]
        for r in rows:
            for op in r.objects or []:
                phase = 1 if op["new"] is None else 0 if op.get("source") else 2
                phases[phase].append((r, op))
        for phase in phases:
            for start in range(0, len(phase), batch):
                chunk = phase[start:start + batch]

                async def one(r: ChangeRow, op: dict[str, Any]) -> int:
                    base = op["old"]["generation"] if op["old"] else 0
                    if op["new"] is None:
                        await target.delete(op["key"], if_generation=base)
                        return 0
                    return await self.put(op["key"], op["new"], op.get("source"), r.new_blob, if_generation=base)

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

    async def put(self, key: str, state: dict[str, Any], source: dict[str, Any] | None, blob: str | None, *,
                  if_generation: int) -> int:
        """Make ``key`` the object ``state``: server side from ``source`` (a kept
        image) when there is one, else uploaded (a file from the blob store)."""
        target = self.gcs
        if source is not None and state["kind"] == "file":
            generation = source["generation"]
            if not generation:  # (a moved object as its source's image: whatever generation holds its bytes)
                there = await target.stat(source["key"])
                if there is None or there.get("md5") != state.get("md5"):
                    raise PreconditionFailed(source["key"], 0)
                generation = there["generation"]
            done = await target.rewrite(source["key"], generation, key, if_generation=if_generation,
                                        content_type=state["content_type"], metadata=state["metadata"])
            return int(done["generation"])
        if state["kind"] == "file":
            if blob is None:
                raise GcsError(url=target.url, reason=f"no image of the bytes {key} should hold is kept")
            return int(await target.upload_file(
                key, self.ctx.blobs.path(blob), if_generation=if_generation, content_type=state["content_type"],
                metadata=state["metadata"], md5=state.get("md5")))
        return int(await target.write(key, b"", if_generation=if_generation, content_type=state["content_type"],
                                      metadata=state["metadata"]))

    def record(self, tx: TxRecord, diff_hash: str) -> None:
        """The commit point on the bucket: the manifest, written once
        (ifGenerationMatch=0), while the lease is surely still this commit's."""
        journal = self.ctx.journal
        rows = journal.changes(tx.id)
        written = {k: g for r in rows for k, g in (r.results or {}).items()}
        for r in rows:  # (a moved object's source: its image is the generation the move wrote)
            for op in r.objects or []:
                if op.get("image") and not op["image"]["generation"] and op["image"]["key"] in written:
                    op["image"]["generation"] = written[op["image"]["key"]]
        current = journal.get_tx(tx.id) or tx
        lease = self._lease
        if lease is not None:
            lease.renew()
        doc = manifests.manifest(journal, current, rows, diff_hash, time.time_ns(),
                                 {"key": self.layout.lease, "generation": lease.generation if lease else 0})
        self.gcs.run(self.gcs.write_json(self.layout.manifest(tx.id), doc, if_generation=0,
                                         metadata=manifests.listing_metadata(doc)))
        journal.log_event(tx.id, "gcs-manifest", {"target": self.gcs.url, "manifest": self.layout.manifest(tx.id),
                                                   "sha256": manifests.digest(doc)})
        # The intent is superseded: dropped in the same round as the lease's release.
        if lease is not None:
            lease.clean = True
            lease.with_release = [lambda: self.gcs.delete(self.layout.intent(tx.id), if_generation=self._intent)]

    def recover(self) -> str | None:
        """Settle what a commit from another machine left in flight, once its
        lease expired (``roscoe recover --target``): the id of the transaction
        settled, or None when there was none."""
        held, generation = self.lease(None).read()
        if generation == 0 or not isinstance(held.get("tx"), str):
            return None
        lease = self.lease(None)
        lease.acquire()  # (waits for the expiry, then takes over and settles)
        lease.release()
        return lease.settled

    def in_flight(self) -> list[tuple[str, str]]:
        """Commits to this target left in flight by a machine that is gone: an
        intent whose transaction does not hold an unexpired lease. (id, why)."""
        target, layout = self.gcs, self.layout
        found = target.run(target.list_prefix(f"{layout.base}/tx/"))
        intents = sorted(k.split("/")[-2] for k in found if k.endswith("/intent.json"))
        if not intents:
            return []
        held, generation = self.lease(None).read()
        live = generation != 0 and int(held.get("expires_ns") or 0) >= time.time_ns()
        return [(tx_id, f"a commit of {tx_id} to {target.url} was interrupted on another machine"
                        f" (its intent is in the bucket): run `roscoe recover --target {target.url}`")
                for tx_id in intents if not (live and held.get("tx") == tx_id)]

    def drop_images(self, tx_id: str) -> int:
        """``roscoe gc``: delete ``tx_id``'s pre-images from the bucket and say so
        in its manifest (so every machine knows it is past rollback). The
        number of images deleted."""
        target, layout = self.gcs, self.layout

        async def drop() -> int:
            doc, generation = await target.read_json(layout.manifest(tx_id))
            if isinstance(doc, dict) and not doc.get("images_dropped"):
                doc["images_dropped"] = True
                await target.write_json(layout.manifest(tx_id), doc, if_generation=generation,
                                        metadata=dict(manifests.listing_metadata(doc), roscoe_images_dropped="1"))
            found = await target.list_prefix(layout.images(tx_id))
            await target.gather([lambda k=k, st=st: target.delete(k, if_generation=st["generation"])
                                 for k, st in found.items()])
            return len(found)

        return int(target.run(drop()))

    def landed(self, tx: TxRecord) -> bool:
        """Whether ``tx``'s manifest is in the bucket: its commit point was
        reached (then its intent, if left, is dropped: the manifest supersedes it)."""
        if not self.landed_id(tx.id):
            return False
        if self.drop_intent(tx.id, images=False) is None and self._lease is not None:
            self._lease.clean = True
        return True

    def landed_id(self, tx_id: str) -> bool:
        return self.gcs.run(self.gcs.stat(self.layout.manifest(tx_id))) is not None

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
        """Put every object of ``rows`` back to its old state, conditionally,
        from the images kept in the bucket; then drop the intent. An object
        that holds neither the old nor this transaction's new state was
        written by someone else: it is left alone (and named in the audit trail)."""
        journal = self.ctx.journal
        try:
            restored, foreign = self.restore(rows)
        except PreconditionFailed as e:
            return f"{e.key} changed while it was being put back"
        except RoscoeError as e:
            return e.message
        except OSError as e:
            return str(e)
        self.ctx.faults.checkpoint("undo")
        problem = self.drop_intent(tx.id)
        if problem is not None:
            return problem
        if self._lease is not None:
            self._lease.clean = True
        with journal.write():
            journal.rebase_generations(tx.id, restored)
            if tx.rolls_back:  # (the objects are again what the rolled-back transaction wrote)
                journal.rebase_results(tx.rolls_back, restored)
            journal.event(tx.id, "gcs-undo", {"target": self.gcs.url, "objects": sum(len(r.objects or []) for r in rows),
                                              "left_alone": foreign})
        return None

    def restore(self, rows: list[ChangeRow]) -> tuple[dict[str, int], list[str]]:
        """The state-based undo of ``rows``: objects put back first (a moved
        object's source from the object it was moved to), added ones removed
        after. The generations restored, and the keys left alone."""
        target = self.gcs
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
                restored[key] = await self.put(key, old, op.get("image"), r.old_blob, if_generation=0)
                return None
            if new is None or not same_object(now, new):
                return key
            if old is None:
                await target.delete(key, if_generation=now["generation"])
            else:
                restored[key] = await self.put(key, old, op.get("image"), r.old_blob, if_generation=now["generation"])
            return None

        ops = [(r, op) for r in rows for op in r.objects or []]
        left = target.run(target.gather([lambda r=r, op=op: one(r, op) for r, op in ops if op["old"] is not None]))
        left += target.run(target.gather([lambda r=r, op=op: one(r, op) for r, op in ops if op["old"] is None]))
        return restored, sorted(k for k in left if k)

    def settle_intent(self, tx_id: str) -> str | None:
        """Another commit (``tx_id``) held the lease and is gone: if its manifest
        is there it landed (its intent is dropped), else it is undone from its
        intent and images alone. None when settled, else why not yet."""
        target, layout, journal = self.gcs, self.layout, self.ctx.journal
        doc, generation = target.run(target.read_json(layout.intent(tx_id)))
        if generation == 0:
            return None
        _, landed = target.run(target.read_json(layout.manifest(tx_id)))
        if landed:
            return self.drop_intent(tx_id, images=False)
        try:
            rows = manifests.rows_of(doc, target, layout)
            restored, foreign = self.restore(rows)
        except (RoscoeError, PreconditionFailed, OSError) as e:
            return str(e)
        problem = self.drop_intent(tx_id)
        if problem is None:
            journal.log_event(None, "gcs-recover", {
                "target": target.url, "tx": tx_id, "objects": sum(len(r.objects or []) for r in rows),
                "left_alone": foreign, "restored": len(restored)})
        return problem

    # -- rollback -----------------------------------------------------------------

    @contextmanager
    def seen(self, committed: TxRecord, written: list[ChangeRow]) -> Iterator[Seen]:
        """The objects there now, asked of the bucket (not the mount, whose cache
        may lag), and in the same round the images a rollback restores from:
        one gone (``roscoe gc`` on some machine dropped it) refuses the rollback."""
        kept = self.layout.base + "/tx/"  # (a moved object, its source's image, is checked as a conflict)
        images = [op["image"]["key"] for r in written for op in r.objects or []
                  if op.get("image") and op["image"]["key"].startswith(kept)]
        found = self.gcs.stat_many([op["key"] for r in written for op in r.objects or []] + images)
        if any(found.get(k) is None for k in images):
            raise ImagesDropped(tx=committed.id)
        current = {op["key"]: found[op["key"]] for r in written for op in r.objects or []}
        yield Seen(current, moved_since(written, current), [], rollback_changes(committed.root, written, current))

    @contextmanager
    def rollback_images(
        self, tx: TxRecord, written: list[ChangeRow], seen: Seen,
    ) -> Iterator[tuple[list[ChangeRow], str]]:
        """Ops that put back the old objects, server side from the images the
        commit kept, conditional on the generations there now; what they
        replace is kept as this rollback's own images, so it can be undone too."""
        current = seen.live
        rows: list[ChangeRow] = []
        for r in written:
            ops = []
            for op in r.objects or []:
                now = current[op["key"]]
                if same_object(now, op["old"]):
                    continue
                ops.append({"key": op["key"], "old": now, "new": op["old"], "source": op.get("image")})
            if not ops:
                continue
            status = classify(r.new, r.old) or "modified"
            # (a commit journaled before images were kept in the bucket has them in the blob store)
            rows.append(ChangeRow(len(rows), r.path, status, r.new, r.old, None, r.old_blob, ops, {}))
        diff_hash = ChangeSet(tx.root, tuple(Change(r.path, r.status, r.old, r.new) for r in rows)).diff_hash
        self.keep_images(tx, rows, diff_hash)
        yield rows, diff_hash

    # -- verify -------------------------------------------------------------------

    def verify(self, tx: TxRecord, wrote: dict[str, Entry | None]) -> list[tuple[str | None, str]]:
        """Each object is still at the generation ``tx`` journaled, and every
        image a rollback of it needs is in the bucket (read through the API,
        not the mount, whose cache may lag)."""
        all_rows = self.ctx.journal.changes(tx.id)
        rows = [r for r in all_rows if r.path in wrote]
        expect = {(r.path, op["key"]): (r.results or {}).get(op["key"]) for r in rows for op in r.objects or []}
        images = {(r.path, op["image"]["key"]): op["image"]["generation"]
                  for r in all_rows for op in r.objects or [] if op.get("image") and op["image"]["generation"]
                  and not tx.images_dropped and op["image"]["key"].startswith(self.layout.base + "/tx/")}
        try:
            now = self.gcs.stat_many([k for _, k in expect] + [k for _, k in images])
        except RoscoeError as e:
            return [(None, e.message)]
        problems: list[tuple[str | None, str]] = []
        for (path, key), generation in sorted(expect.items()):
            have = now[key]["generation"] if now.get(key) else 0
            if have != generation:
                problems.append((path, f"{self.gcs.url}: object {key} is at generation {have}, "
                                       f"tx {tx.id} wrote {generation}"))
        for (path, key), generation in sorted(images.items()):
            have = now[key]["generation"] if now.get(key) else 0
            if have != generation:
                problems.append((path, f"gs://{self.gcs.bucket}/{key}: the image of {path} that a rollback of"
                                       f" tx {tx.id} needs is {'gone' if not have else f'at generation {have}'}"))
        return problems


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
