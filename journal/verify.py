"""``roscoe verify``: the journal, the blob store and the live tree agree.

Checks SQLite's own integrity, the audit trail's hash chain (journal.audit),
that no commit is left interrupted, that every
image a rollback may need is present and hashes to its name, and that every
path a committed transaction wrote still holds what the newest of them wrote.
"""

from __future__ import annotations

import os
from collections import namedtuple

from cowfs import livetree
from cowfs.converge import matches


class Problem(namedtuple("_Problem", "kind tx path detail")):
    """One thing verify found wrong."""

    __slots__ = ()

    def to_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "tx": self.tx, "path": self.path, "detail": self.detail}


class Report(namedtuple("_Report", "problems checked")):
    __slots__ = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "checked": self.checked, "problems": [p.to_json() for p in self.problems]}


def verify(ws: object) -> Report:
    from journal.commit import blob_store
    from journal.workspace import Workspace

    assert isinstance(ws, Workspace)
    problems: list[Problem] = []
    integrity = ws.journal.integrity()
    if integrity != "ok":
        problems.append(Problem("journal", None, None, integrity))
    for tx_id, what in ws.journal.audit_problems():
        problems.append(Problem("audit", tx_id, None, what))
    for tx in ws.journal.in_state("committing"):
        problems.append(Problem("interrupted", tx.id, None, "a commit was interrupted: run `roscoe recover`"))
    blobs = blob_store(ws.home.path)
    needed = sorted(ws.journal.referenced_blobs())
    for digest in needed:
        problem = blobs.check(digest)
        if problem is not None:
            problems.append(Problem("blob", None, None, f"blob {digest} is {problem}"))
    latest = ws.journal.latest_states()
    total = len(latest)
    in_buckets = {t.id: t for t in ws.journal.committed() if t.target}
    if in_buckets:
        from journal.gcs_commit import verify_objects

        problems.extend(Problem(*p) for p in verify_objects(ws, latest, in_buckets))
        latest = {k: v for k, v in latest.items() if v[0] not in in_buckets}
    for (root, path), (tx_id, entry) in sorted(latest.items(), key=lambda kv: (os.fsencode(kv[0][0]), os.fsencode(kv[0][1]))):
        if not os.path.isdir(root):
            problems.append(Problem("live", tx_id, path, f"root {root} does not exist"))
            continue
        live = livetree.entry(root, path)
        if not matches(live, entry, owners=True):
            want = "absent" if entry is None else entry.type
            have = "absent" if live is None else live.type
            problems.append(Problem("live", tx_id, path, f"{root}: expected the {want} tx {tx_id} wrote, found {have} that differs"))
    head = ws.journal.audit_head()
    checked = {"blobs": len(needed), "paths": total, "transactions": len(ws.journal.committed()),
               "audit_events": head[0] if head else 0}
    return Report(problems, checked)
