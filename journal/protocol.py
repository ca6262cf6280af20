"""The commit protocol: a transaction's change set lands all at once or not
at all, on a local tree or a bucket (``journal.targets``: one interface,
two implementations; the steps below are written once).

Commit (``commit``):

1. lock: the transaction, then the root (one committer per root on this
   machine, whatever the state dir: ``journal.rootlock``), then whatever
   the target adds (a bucket's lease object);
2. policy (``journal.approval``): refuse what can never be committed
   (special files, setuid bits, denied paths, limits) and what needs an
   approval bound to this diff hash that it does not have (exit 4);
3. conflict check: every changed live path still matches the base recorded
   when the last run ended (and, on a bucket, every object is still at the
   generation recorded then): else exit 3, nothing written;
4. images: everything an undo needs, durable in the blob store before any
   of the live tree changes (``Target.images``);
5. intent: every change with its before and after state, journaled in one
   SQLite transaction with synchronous=FULL; the transaction is `committing`;
6. apply: every path made its new state (``Target.apply``); a failure is
   undone on the spot (``Target.undo``);
7. the commit record: one row update to `committed`. That is the commit point.

Recovery (``recover``, on every start: ``journal.opening``): a transaction
left `committing` by a process that is gone is undone: every path it
touched is put back to its old state from the journal and the blob store,
and it is open again (a rollback that never finished is aborted). The undo
is state based, so a crash during recovery is recovered by running it
again. A commit still in progress (its root lock held) is left alone.

Rollback (``rollback``): a transaction of its own (``rolls_back`` names the
one it undoes) whose new states are the old states the journal kept,
through steps 1-7 above, held to the same policy and approval rules, so it
is atomic, recoverable, and can itself be rolled back. It refuses (exit 3)
when the live tree no longer holds what the transaction wrote, naming the
paths and the later transactions that changed them, unless forced.

Fault hooks (``journal.faults``) sit between the steps; the crash tests stop
the process at each one and check that recovery leaves all-old or all-new.
"""

from __future__ import annotations

from collections import namedtuple

from cowfs.changeset import ChangeSet
from cowfs.entry import Entry
from cowfs.errors import LiveUnreadable, RoscoeError
from journal.approval import enforce, requested
from journal.decisions import tell_committed
from journal.errors import ApprovalNeeded, Conflict, RecoveryFailed
from journal.faults import Faults
from journal.images import unshare_left_blobs
from journal.rollback import held_to_policy, pending_or_new, rollable
from journal.rootlock import held_by_someone, root_lock
from journal.store import ChangeRow, TxRecord
from journal.targets import Target, target_of
from journal.targets.base import Holding, Progress
from journal.workspace import Workspace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.stagers import Stager


# -- commit --------------------------------------------------------------------------


def commit(ws: Workspace, ref: str, *, progress: Progress | None = None) -> TxRecord:
    """Commit an open transaction; returns its record, now `committed`."""
    tx = ws.get(ref)
    ws.require_open(tx, "commit")
    if tx.rolls_back:  # a rollback that waited for its approval
        return rollback(ws, tx.rolls_back, progress=progress)
    try:
        _commit(ws, tx, progress)
    except ApprovalNeeded as needed:
        raise requested(ws.journal, needed) from None
    done = ws.journal.get_tx(tx.id)
    assert done is not None
    tell_committed(ws, done)
    return done


def _commit(ws: Workspace, tx: TxRecord, progress: Progress | None) -> None:
    # 1. lock
    with ws.locked(tx, exclusive=True), root_lock(ws.home.path, tx.root, faults=ws.faults):
        tx = ws.get(tx.id)
        ws.require_open(tx, "commit")
        target = target_of(ws.context, tx)
        stager = ws.stager(tx)
        hashes = ws.hash_cache(tx)
        try:
            changes = ws.compare(tx, stager, hashes)
        except LiveUnreadable:
            moved = target.unreadable_conflicts(tx)
            if moved:
                raise target.logged(Conflict(what="commit refused", tx=tx.id, paths=moved)) from None
            raise
        # 2. policy
        enforce(ws.journal, tx, changes, ws.rules(tx), ws.same_bytes(tx, stager))
        # 3. conflicts
        moved = check_bases(changes, ws.journal.bases(tx.id))
        if moved:
            raise target.logged(Conflict(what="commit refused", tx=tx.id, paths=moved))
        with target.held(tx) as holding:
            moved = target.conflicts(tx, changes)
            if moved:
                raise target.logged(Conflict(what="commit refused", tx=tx.id, paths=moved))
            # 4. images
            with target.images(tx, stager, changes, hashes) as rows:
                ws.faults.checkpoint("after-images")
                # 5.-7.
                land(ws.faults, target, tx, rows, changes.diff_hash, holding,
                     known={c.path: c.old for c in changes.changes}, stager=stager, progress=progress)
        if stager is not None:
            stager.discard()
        ws.remove_tx_dir(tx.id)


def land(
    faults: Faults, target: Target, tx: TxRecord, rows: list[ChangeRow], diff_hash: str, holding: Holding, *,
    known: dict[str, Any] | None, stager: Stager | None, progress: Progress | None, new: bool = False,
) -> None:
    """Steps 5-7 for ``rows``, whose images are kept. With ``new``, ``tx`` (a
    rollback) is journaled together with its intent."""
    from journal.targets.local import owners_settable

    journal = target.ctx.journal
    owners_settable(tx, rows)
    # 5. intent
    journal.record_intent(tx.id, rows, diff_hash, new=tx if new else None)
    faults.checkpoint("after-intent")
    # 6. apply
    try:
        target.apply(tx, rows, holding, known=known, stager=stager, progress=progress)
    except target.failures as e:
        problem = undo(faults, target, tx, journal.changes(tx.id))
        raise target.failure(tx, e, problem) from e
    # 7. the commit record: on the target (a bucket's manifest), then in the journal
    faults.checkpoint("before-record")
    try:
        target.record(tx, diff_hash)
    except target.failures as e:
        problem = undo(faults, target, tx, journal.changes(tx.id))
        raise target.failure(tx, e, problem) from e
    faults.checkpoint("before-journal-record")
    journal.mark_committed(tx.id)
    faults.checkpoint("after-record")


def undo(faults: Faults, target: Target, tx: TxRecord, rows: list[ChangeRow]) -> str | None:
    """Put every path of ``rows`` back to its old state and leave `committing`
    (an undone rollback is aborted; an undone commit is open again). Returns
    None when done, else why it could not be done yet."""
    problem = target.undo(tx, rows)
    if problem is not None:
        return problem
    faults.checkpoint("before-reopen")
    target.ctx.journal.reopen(tx.id, "aborted" if tx.rolls_back else "open")
    return None


def check_bases(changes: ChangeSet, bases: dict[str, Entry | None]) -> list[str]:
    """Paths whose live state is no longer the one recorded when the last run ended."""
    return [c.path for c in changes.changes if c.path not in bases or not same_state(c.old, bases[c.path])]


def same_state(a: Entry | None, b: Entry | None) -> bool:
    """Whether the live ``a`` is still the base ``b``: a chown since is a change
    too (a base from before owners were recorded has none to compare)."""
    if a is None or b is None:
        return a is b
    return (a.type, a.size, a.mode, a.hash, a.target) == (b.type, b.size, b.mode, b.hash, b.target) and (
        a.type == "dir" or a.mtime_ns == b.mtime_ns) and (b.owner is None or a.owner == b.owner)


# -- rollback ------------------------------------------------------------------------


def rollback(ws: Workspace, ref: str, *, force: bool = False, progress: Progress | None = None) -> TxRecord:
    """Roll back the committed transaction ``ref``; returns the rollback transaction.

    Its change set is held to the policy in force (recorded when the rollback
    began) and, where the rules ask for one, to an approval of its own
    diff_hash. One that needs an approval is journaled as an open transaction
    (``rolls_back`` names ``ref``) with a request; once approved, ``tx
    rollback ref`` again (or ``tx commit`` of it) applies it. ``force``
    overrides a conflict, never policy."""
    committed = rollable(ws, ref)
    tx, new = pending_or_new(ws, committed)
    target = target_of(ws.context, committed)
    written = ws.journal.changes(committed.id)
    try:
        # 1. lock
        with root_lock(ws.home.path, committed.root, faults=ws.faults), target.held(tx) as holding, \
                target.seen(committed, written) as seen:
            # 3. conflicts: the live tree still holds what ``committed`` wrote
            if seen.moved and not force:
                later = ws.journal.later_commits_touching(committed, seen.moved)
                since = f" (changed since by {', '.join(later)})" if later else ""
                raise target.logged(Conflict(
                    what=f"rollback of {committed.id} refused (--force overrides)", tx=committed.id,
                    paths=seen.moved, since=since))
            if seen.blocked:
                raise target.logged(Conflict(
                    what=f"rollback of {committed.id} refused: it would have to touch paths it never wrote",
                    tx=committed.id, paths=seen.blocked))
            # 2. policy (a new rollback is journaled with its intent: a crash before that leaves no trace of it)
            held_to_policy(ws, committed, tx, seen.changes, not new, target.same_bytes_back(written))
            # 4. images
            ws.faults.checkpoint("before-images")
            with target.rollback_images(tx, written, seen) as (rows, diff_hash):
                ws.faults.checkpoint("after-images")
                # 5.-7.
                land(ws.faults, target, tx, rows, diff_hash, holding, known=seen.live, stager=None,
                     progress=progress, new=new)
    except ApprovalNeeded as needed:
        raise requested(ws.journal, needed) from None
    done = ws.journal.get_tx(tx.id)
    assert done is not None
    tell_committed(ws, done)
    return done


# -- recovery ------------------------------------------------------------------------



class Recovered(namedtuple("_Recovered", "tx root paths state")):
    """One interrupted commit that recovery undid, and the state it is in now."""

    __slots__ = ()


def recover(ws: Workspace) -> list[Recovered]:
    """Undo every interrupted commit; the list of what was undone. Cheap when there are none."""
    if not ws.leftovers():
        return []
    found: list[Recovered] = []
    for tx in ws.journal.in_state("committing"):
        if held_by_someone(ws.home.path, tx.root):
            continue
        with root_lock(ws.home.path, tx.root, faults=ws.faults):
            current = ws.journal.get_tx(tx.id)
            if current is None or current.state != "committing":
                continue
            rows = ws.journal.changes(tx.id)
            ws.journal.log_event(tx.id, "recover-start", {"paths": len(rows)})
            ws.faults.checkpoint("recover-start")
            target = target_of(ws.context, current)
            try:
                with target.held(current):  # (a bucket's lease, taken over from the crashed commit)
                    if target.landed(current):  # (its commit point was reached on the target: finish it)
                        ws.journal.mark_committed(current.id)
                        ws.journal.log_event(tx.id, "recover-forward", {"paths": len(rows)})
                        problem = None
                    else:
                        problem = undo(ws.faults, target, current, rows)
            except RoscoeError as e:
                problem = e.message
            if problem is not None:
                raise RecoveryFailed(tx=tx.id, reason=problem)
            ws.release_links(current)
            ws.journal.log_event(tx.id, "recover-done", {"paths": len(rows)})
            after = ws.journal.get_tx(tx.id)
            found.append(Recovered(tx.id, tx.root, len(rows), after.state if after else "gone"))
    unshare_left_blobs(ws.home.path, faults=ws.faults)
    return found


__all__ = ["commit", "rollback", "recover", "Recovered", "RecoveryFailed"]
