"""The journal in the bucket: what any machine needs to list, verify, recover
and roll back the commits of a bucket target, kept next to the data.

Everything lives under ``.roscoe/`` *beside* the prefix, never inside it, so
a mount of the prefix (gcsfuse ``--only-dir``, rclone ``:gcs:BUCKET/PREFIX``)
never shows it: ``gs://B/projects`` keeps its journal in ``gs://B/.roscoe/projects/``,
``gs://B/firm/projects`` in ``gs://B/firm/.roscoe/projects/``::

    lease                     the root's lease (one committer at a time)
    tx/ID/intent.json         a commit in flight: its changes, written before
                              the first object changes, removed once undone
    tx/ID/pre/SEQ.N           the pre-image of an object the commit changes or
                              deletes: a server-side copy (rewrite) of the
                              generation it replaces, no bytes through the machine
    log/ID.json               the manifest of a committed transaction: the
                              commit point on the bucket (written with
                              ifGenerationMatch=0, so never twice); its custom
                              metadata is what ``tx log`` lists in one request

A manifest holds the transaction (root, message, user, host, times, the
config recorded at begin), its changes with old and new states, the object
ops with old and new generations and where each pre-image is, the diff_hash,
the approvals, the audit events of the committing machine and the lease.
Another machine imports it into its own journal (``import_manifest``) and
then lists, verifies and rolls back the transaction as if it had committed it.

A manifest is data another machine wrote: it is checked before it is used
(plain paths, object keys that are the paths' own, images under its own
``tx/ID/pre/``) and refused otherwise.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import namedtuple

from cowfs.entry import Entry
from cowfs.errors import UsageError
from cowfs.paths import plain
from journal.errors import JournalCorrupt
from journal.store import ChangeRow, Journal, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.gcs import GcsTarget

VERSION = 1
TX_ID = re.compile(r"[0-9a-zA-Z][0-9a-zA-Z._-]{0,63}")


class Layout(namedtuple("_Layout", "prefix base")):
    """The keys of one target's journal in its bucket."""

    __slots__ = ()

    @classmethod
    def of(cls, prefix: str) -> Layout:
        if not prefix or ".roscoe" in prefix.split("/"):
            raise UsageError(detail=(
                "a bucket target needs a prefix that is not .roscoe (gs://BUCKET/PREFIX): roscoe keeps"
                " its journal beside the prefix, in .roscoe/, where a mount of the prefix does not show it"))
        parent, _, name = prefix.rpartition("/")
        return cls(prefix, f"{parent}/.roscoe/{name}" if parent else f".roscoe/{name}")

    @property
    def lease(self) -> str:
        return f"{self.base}/lease"

    @property
    def log(self) -> str:
        return f"{self.base}/log/"

    def intent(self, tx: str) -> str:
        return f"{self.base}/tx/{tx}/intent.json"

    def images(self, tx: str) -> str:
        return f"{self.base}/tx/{tx}/pre/"

    def image(self, tx: str, seq: int, n: int) -> str:
        return f"{self.images(tx)}{seq}.{n}"

    def manifest(self, tx: str) -> str:
        return f"{self.log}{tx}.json"


def row_json(r: ChangeRow) -> dict[str, Any]:
    return {"seq": r.seq, "path": r.path, "status": r.status,
            "old": r.old.to_json() if r.old else None, "new": r.new.to_json() if r.new else None,
            "objects": r.objects, "results": r.results}


def document(tx: TxRecord, rows: list[ChangeRow], diff_hash: str) -> dict[str, Any]:
    """The intent of ``tx``'s commit: enough to undo it from the bucket alone."""
    return {"version": VERSION, "tx": tx.id, "url": tx.target, "root": tx.root, "message": tx.message,
            "user": tx.user, "host": tx.host, "created_ns": tx.created_ns, "rolls_back": tx.rolls_back,
            "rules": tx.rules, "diff_hash": diff_hash, "changes": [row_json(r) for r in rows]}


def manifest(journal: Journal, tx: TxRecord, rows: list[ChangeRow], diff_hash: str, committed_ns: int,
             lease: dict[str, Any]) -> dict[str, Any]:
    """The manifest of ``tx``, committed at ``committed_ns``: its intent, the
    generations each op left, the approvals and the audit events so far."""
    doc = document(tx, rows, diff_hash)
    head = journal.audit_head()
    doc.update({
        "committed_ns": committed_ns, "lease": lease,
        "approvals": [{"kind": a.kind, "diff_hash": a.diff_hash, "approver": a.approver, "time_ns": a.time_ns,
                       "reason": a.reason} for a in journal.approvals(tx.id)],
        "events": [e.to_json() for e in journal.audit_events(tx.id)],
        "audit_head": list(head) if head else None,
    })
    return doc


def listing_metadata(doc: dict[str, Any]) -> dict[str, str]:
    """What ``tx log`` shows of a manifest, as custom metadata (one listing gives it all)."""
    return {"roscoe_tx": doc["tx"], "roscoe_committed_ns": str(doc["committed_ns"]),
            "roscoe_changes": str(len(doc["changes"])), "roscoe_rolls_back": doc.get("rolls_back") or "",
            "roscoe_diff_hash": doc["diff_hash"]}


# -- reading another machine's documents ------------------------------------------------


def rows_of(doc: dict[str, Any], target: GcsTarget, layout: Layout) -> list[ChangeRow]:
    """The change rows of a manifest or intent, checked: plain paths, the
    paths' own object keys, pre-images under the transaction's own prefix."""
    tx = doc.get("tx", "")
    where = f"gs://{target.bucket}/{layout.intent(tx) if 'committed_ns' not in doc else layout.manifest(tx)}"
    rows = []
    try:
        # An image is this transaction's own (tx/ID/pre/), the pre-image of the
        # transaction it rolls back, or an object of its own paths (a move).
        keys = {target.key(c["path"], dir=d) for c in doc["changes"] if isinstance(c["path"], str) for d in (False, True)}
        kept = tuple(layout.images(t) for t in (tx, doc.get("rolls_back")) if isinstance(t, str) and TX_ID.fullmatch(t))
        for c in doc["changes"]:
            path = c["path"]
            if not isinstance(path, str) or not plain(path):
                raise ValueError(f"the path {path!r} is not a plain path inside the root")
            own = {target.key(path), target.key(path, dir=True)}
            for op in c.get("objects") or []:
                if op["key"] not in own:
                    raise ValueError(f"the object {op['key']!r} is not the path {path!r}'s")
                for ref in (op.get("image"), op.get("source")):
                    if ref is not None and not (ref["key"] in keys or (kept and ref["key"].startswith(kept))):
                        raise ValueError(f"the image {ref['key']!r} is neither its own nor one of its objects")
            rows.append(ChangeRow(
                int(c["seq"]), path, c["status"], Entry.from_json(c["old"]) if c["old"] else None,
                Entry.from_json(c["new"]) if c["new"] else None, None, None, c.get("objects"), c.get("results")))
    except (KeyError, TypeError, ValueError) as e:
        raise JournalCorrupt(path=where, reason=f"it cannot be used: {e}") from None
    return rows


def record_of(doc: dict[str, Any], url: str, root: str) -> TxRecord:
    tx = doc["tx"]
    if not isinstance(tx, str) or not TX_ID.fullmatch(tx):
        raise JournalCorrupt(path=url, reason=f"a manifest names the transaction {tx!r}")
    rolls_back = doc.get("rolls_back") or None
    if rolls_back is not None and not TX_ID.fullmatch(str(rolls_back)):
        raise JournalCorrupt(path=url, reason=f"manifest {tx} rolls back {rolls_back!r}")
    return TxRecord(
        tx, root, doc.get("message"), "committed", "imported", doc.get("user"), doc.get("host"),
        int(doc["created_ns"]), int(doc["committed_ns"]), rolls_back, int(doc["committed_ns"]),
        doc["diff_hash"], 1 if doc.get("images_dropped") else 0, url, doc.get("rules"))


def digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()
