"""``roscoe verify``: the journal, the blob store and the live tree agree.

Checks SQLite's own integrity, the audit trail's hash chain (journal.audit),
that the changes journaled for every committed transaction still hash to the
diff_hash its commit event recorded and name only plain paths, that the
config each transaction recorded at its begin is the one its begin event
names, that no commit is left interrupted, that every
image a rollback may need is present and hashes to its name, and that every
path a committed transaction wrote still holds what the newest of them wrote.

A live path that differs is drift (someone changed the tree outside roscoe
since its commit), not corruption: ``Report.healthy`` tells the two apart,
and ``roscoe verify`` exits 3 for drift alone, 1 when anything of roscoe's
own is wrong.
"""

from __future__ import annotations

import os
from collections import namedtuple

from cowfs.entry import Entry
from journal.images import blob_store
from journal.store import Journal
from journal.targets import target_of
from journal.workspace import Workspace


class Problem(namedtuple("_Problem", "kind tx path detail")):
    """One thing verify found wrong."""

    __slots__ = ()

    def to_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "tx": self.tx, "path": self.path, "detail": self.detail}


DRIFT = "live"  # the live tree differs from what roscoe last committed there


class Report(namedtuple("_Report", "problems checked")):
    """What verify found. ``healthy``: the journal, the blobs and the audit trail
    are intact (no problem but drift); ``ok``: no problem at all."""

    __slots__ = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def healthy(self) -> bool:
        return all(p.kind == DRIFT for p in self.problems)

    @property
    def drift(self) -> int:
        return sum(p.kind == DRIFT for p in self.problems)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "healthy": self.healthy, "drift": self.drift, "checked": self.checked,
                "problems": [p.to_json() for p in self.problems]}


def verify(ws: Workspace, *, live: bool = True) -> Report:
    """Every check; without ``live``, the live tree is not read (a health check
    of roscoe's own state: the journal, the blobs and the audit trail)."""
    problems: list[Problem] = []
    integrity = ws.journal.integrity()
    if integrity != "ok":
        problems.append(Problem("journal", None, None, integrity))
    for tx_id, what in ws.journal.audit_problems():
        problems.append(Problem("audit", tx_id, None, what))
    problems.extend(_journaled_commits(ws.journal))
    for tx in ws.journal.in_state("committing"):
        problems.append(Problem("interrupted", tx.id, None, "a commit was interrupted: run `roscoe recover`"))
    blobs = blob_store(ws.home.path)
    needed = sorted(ws.journal.referenced_blobs())
    for digest in needed:
        problem = blobs.check(digest)
        if problem is not None:
            problems.append(Problem("blob", None, None, f"blob {digest} is {problem}"))
    latest = ws.journal.latest_states() if live else {}
    total = len(latest)
    problems.extend(_live(ws, latest))
    head = ws.journal.audit_head()
    checked = {"blobs": len(needed), "paths": total, "transactions": len(ws.journal.committed()),
               "audit_events": head[0] if head else 0}
    return Report(problems, checked)


def _live(ws: Workspace, latest: dict[tuple[str, str], tuple[str, Entry | None]]) -> list[Problem]:
    """Whether every path is still what the transaction that wrote it last
    wrote, asked of its target: bucket transactions first, then local paths
    in the order of their roots and names."""
    wrote: dict[str, dict[str, Entry | None]] = {}
    for (_, path), (tx_id, entry) in latest.items():
        wrote.setdefault(tx_id, {})[path] = entry
    txs = {t.id: t for t in ws.journal.committed()}
    found: list[tuple[bool, bytes, bytes, Problem]] = []
    for tx_id in sorted(wrote):
        tx = txs[tx_id]
        for path, detail in target_of(ws.context, tx).verify(tx, wrote[tx_id]):
            order = (False, b"", b"") if tx.target else (True, os.fsencode(tx.root), os.fsencode(path or ""))
            found.append((*order, Problem("live", tx_id, path, detail)))
    return [p for *_, p in sorted(found, key=lambda f: f[:3])]


def _journaled_commits(journal: Journal) -> list[Problem]:
    """Committed transactions whose journaled changes are not what their audit
    events say: rows edited (their diff_hash recomputed differs from the one
    the commit event recorded) or naming paths outside the root; and
    transactions whose recorded config is not the one their begin event names."""
    from cowfs.changeset import Change, ChangeSet
    from journal.rules import decode
    from journal.errors import JournalCorrupt

    problems: list[Problem] = []
    recorded = journal.commit_hashes()
    for tx in journal.committed():
        try:
            rows = journal.changes(tx.id)
        except JournalCorrupt as e:
            problems.append(Problem("journal", tx.id, None, e.message))
            continue
        want = recorded.get(tx.id)
        if want is None:
            continue  # (no commit event: audit_problems says so)
        changes = ChangeSet(tx.root, tuple(Change(r.path, r.status, r.old, r.new) for r in rows))
        if want not in changes.diff_hashes() or tx.diff_hash != want:
            problems.append(Problem("journal", tx.id, None, (
                f"the changes journaled for transaction {tx.id} hash to {changes.diff_hash}, not to"
                f" {want}, the diff_hash its commit event recorded: the journal was edited after the commit")))
    begun = journal.begin_configs()
    for tx in journal.list_tx():
        sources = decode(tx.rules)
        if sources is None or tx.id not in begun:
            continue  # (no begin event: audit_problems says so)
        from journal.audit import _sha256

        edited = [s.path for s in sources if s.text is not None and _sha256(s.text.encode()) != s.sha256]
        if edited or begun.get(tx.id) != [s.to_event() for s in sources]:
            problems.append(Problem("journal", tx.id, None, (
                f"the config recorded with transaction {tx.id} is not the one its begin event names"
                f" ({', '.join(edited) or 'path or hash differs'}): the journal was edited")))
    return problems
