"""Transactions another machine committed to a bucket target, read from the
journal that lives in the bucket (``journal.targets.manifests``) into this
state dir's journal: then ``tx log``, ``verify`` and ``tx rollback`` treat
them as any other commit (generations, policy and approval included). A VM
that lost its disk loses nothing a rollback needs.

An imported transaction keeps its id and its changes, is journaled with
begin and commit events naming the manifest it came from (its key,
generation and SHA-256), and lands on this machine's mount of the bucket
when the config maps one to the target (``[roots."/mnt/..."] target``),
else on the root the committing machine named.
"""

from __future__ import annotations

from cowfs.errors import RoscoeError
from journal.errors import NoSuchTransaction
from journal.workspace import Workspace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def known_targets(ws: Workspace) -> list[str]:
    """Bucket targets this state dir knows: the config's and its transactions'."""
    found = {t for t in (r.target for r in ws.journal.list_tx()) if t}
    found.update(t for t in _config_roots(ws).values() if t)
    return sorted(found)


def _config_roots(ws: Workspace) -> dict[str, str | None]:
    from journal.rules import strictest

    sources = ws.sources()
    if not any(s.text is not None for s in sources):
        return {}
    from journal.targets.bucket import canonical

    found: dict[str, str | None] = {}
    for root, table in strictest(None, sources).roots.items():
        try:
            found[root] = canonical(table.target) if table.target else None
        except RoscoeError:
            continue
    return found


def import_target(ws: Workspace, url: str) -> list[str]:
    """Journal here every transaction committed to ``url`` that this journal
    does not have yet; their ids, oldest first."""
    from journal.targets import checked_url
    from journal.targets import manifests
    from journal.targets.bucket import Bucket

    url = checked_url(url)
    mine = [root for root, target in _config_roots(ws).items() if target == url]
    bucket = Bucket(ws.context, mine[0] if mine else "/", url)
    gcs, layout = bucket.gcs, bucket.layout
    listed = gcs.run(gcs.list_prefix(layout.log))
    wanted = sorted(
        (k for k, st in listed.items() if k.endswith(".json") and st
         and ws.journal.get_tx(k[len(layout.log):-len(".json")]) is None),
        key=lambda k: (int((listed[k] or {}).get("metadata", {}).get("roscoe_committed_ns") or 0), k))
    docs = gcs.run(gcs.gather([lambda k=k: gcs.read_json(k) for k in wanted]))
    imported = []
    for key, (doc, generation) in zip(wanted, docs):
        where = f"gs://{gcs.bucket}/{key}"
        if not isinstance(doc, dict) or key != layout.manifest(str(doc.get("tx"))):
            from journal.errors import JournalCorrupt

            raise JournalCorrupt(path=where, reason="it is not the manifest its name says")
        rows = manifests.rows_of(doc, gcs, layout)
        record = manifests.record_of(doc, url, mine[0] if mine else str(doc.get("root") or "/"))
        ws.journal.import_committed(record, rows, {"manifest": where, "generation": generation,
                                                   "sha256": manifests.digest(doc)})
        imported.append(record.id)
    return imported


def find(ws: Workspace, ref: str) -> bool:
    """Import ``ref`` (an id) from whichever known target holds it; whether one did."""
    for url in known_targets(ws):
        try:
            if ref in import_target(ws, url) or _has(ws, ref):
                return True
        except RoscoeError:
            continue
    return False


def _has(ws: Workspace, ref: str) -> bool:
    try:
        ws.get(ref)
    except NoSuchTransaction:
        return False
    return True


def or_imported(ws: Workspace, ref: str) -> Any:
    """``ws.get(ref)``, importing ``ref`` from a known bucket target first when this journal lacks it."""
    try:
        return ws.get(ref)
    except NoSuchTransaction:
        if not find(ws, ref):
            raise
        return ws.get(ref)


def recover_target(ws: Workspace, url: str) -> Any:
    """Settle a commit to ``url`` that another machine left in flight (its
    lease expired: it is gone): finished if its manifest is there, else
    undone from its intent and the images in the bucket. Its id, or None."""
    from journal.targets import checked_url
    from journal.targets.bucket import Bucket

    from journal.protocol import Recovered

    url = checked_url(url)
    bucket = Bucket(ws.context, "/", url)
    settled = bucket.recover()
    if settled is None:
        return None
        # (its manifest there: it had landed and is only finished; else it was undone)
    state = "committed" if bucket.landed_id(settled) else "undone"
    return Recovered(settled, url, 0, state)


def in_flight(ws: Workspace, url: str) -> list[Any]:
    """verify's problems for commits to ``url`` left in flight by a machine that is gone."""
    from journal.targets import checked_url
    from journal.targets.bucket import Bucket
    from journal.verify import Problem

    url = checked_url(url)
    return [Problem("interrupted", tx_id, None, why) for tx_id, why in Bucket(ws.context, "/", url).in_flight()]
