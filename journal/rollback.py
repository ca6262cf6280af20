"""Rollback, the rules around it: which transaction can be rolled back, what a
dry run shows, and the policy and approval a rollback is held to. The
rollback itself goes through the commit protocol (``journal.protocol.rollback``).
"""

from __future__ import annotations

from collections import namedtuple

from cowfs.changeset import ChangeSet
from journal import policy
from journal.approval import refuse_rejected, valid_approval
from journal.errors import AlreadyRolledBack, ImagesDropped, NotCommitted, RollbackNeedsApproval, RollbackRefused
from journal.store import TxRecord
from journal.targets import target_of
from journal.workspace import Workspace, new_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from journal.targets.base import SameBytes







def rollable(ws: Workspace, ref: str) -> TxRecord:
    """The committed transaction ``ref`` names (or the one an open rollback
    named by ``ref`` rolls back), if it can be rolled back now."""
    target = ws.get(ref)
    if target.rolls_back and target.state == "open":
        target = ws.get(target.rolls_back)  # (the open rollback itself was named)
    if target.state != "committed":
        hint = {"open": "; `roscoe tx abort` discards its staged changes",
                "aborted": "; it never changed the live tree"}.get(target.state, "")
        raise NotCommitted(tx=target.id, state=target.state, hint=hint)
    if target.images_dropped:
        raise ImagesDropped(tx=target.id)
    by = ws.journal.rolled_back_by().get(target.id)
    if by is not None:
        raise AlreadyRolledBack(tx=target.id, by=by)
    return target


class DryRun(namedtuple("_DryRun", "target pending changes conflicts")):
    """What ``tx rollback --dry-run`` says: the change set a rollback of
    ``target`` would apply now, the paths where the live tree no longer
    holds what ``target`` wrote (a conflict without --force), and the open
    rollback waiting for approval, if any."""

    __slots__ = ()
    target: TxRecord
    pending: TxRecord | None
    changes: ChangeSet
    conflicts: list[str]

    def to_json(self) -> dict[str, object]:
        out = self.changes.to_json(self.pending.id if self.pending else None)  # type: ignore[arg-type]
        out["rolls_back"] = self.target.id
        out["conflicts"] = self.conflicts
        return out


def dry_run(ws: Workspace, ref: str) -> DryRun:
    """The rollback of ``ref`` as it would be now; nothing is staged or written."""
    committed = rollable(ws, ref)
    seen = target_of(ws.context, committed).peek(committed, ws.journal.changes(committed.id))
    return DryRun(committed, ws.journal.open_rollback(committed.id), seen.changes, seen.moved)


def pending_or_new(ws: Workspace, committed: TxRecord) -> tuple[TxRecord, bool]:
    """The rollback of ``committed``: the open one waiting for its approval, or
    a new one (not yet journaled: True), in state `committing`."""
    from journal.rules import encode, in_force

    pending = ws.journal.open_rollback(committed.id)
    if pending is not None:
        return pending, False
    return new_record(committed.root, f"rollback of {committed.id}", rolls_back=committed.id,
                      user=ws.journal.actor.user)._replace(
        state="committing", target=committed.target, rules=encode(in_force(ws.home.path, ws.settings.configs))), True


def held_to_policy(
    ws: Workspace, target: TxRecord, tx: TxRecord, changes: ChangeSet, journaled: bool,
    same_bytes: SameBytes | None = None,
) -> None:
    """Step 2 for a rollback: refuse what policy forbids (exit 4, logged on the
    rolled-back transaction); where an approval is needed and ``tx`` has no
    valid one, journal ``tx`` as open (unless it is already) and ask for it."""
    if journaled:  # (a rollback rejected while it waited for its approval)
        refuse_rejected(ws.journal, tx, changes.diff_hash)
    config = ws.rules(tx)
    found = policy.refusals(changes, config.policy)
    if found:
        ws.journal.log_event(target.id, "refuse", {
            "reason": "policy", "rollback": True, "diff_hash": changes.diff_hash,
            "violations": [v.to_json() for v in found]})
        raise RollbackRefused(tx=target.id, violations="; ".join(map(str, found)), paths=policy.violating_paths(found))
    reasons = policy.approval_reasons(changes, config.approval, same_bytes)
    if not reasons or (journaled and valid_approval(ws.journal, tx.id, changes.diff_hash) is not None):
        return
    if not journaled:
        ws.journal.insert_tx(tx._replace(state="open"))
    ws.journal.log_event(tx.id, "refuse", {"reason": "approval needed", "diff_hash": changes.diff_hash,
                                           "reasons": reasons})
    needed = RollbackNeedsApproval(target=target.id, tx=tx.id, reasons="; ".join(reasons),
                                   diff_hash=changes.diff_hash, notified="")
    needed.pending = (tx, changes, reasons, config)
    raise needed


