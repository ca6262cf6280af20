"""People's decisions on a transaction, and telling them: ``tx approve`` and
``tx reject`` (the rules they are held to are in ``journal.approval``), and
the events sent to the rules' ``notify`` command (approved, rejected,
committed, rolled back).
"""

from __future__ import annotations

import re

from cowfs.errors import RoscoeError, UsageError
from journal.approval import rejected_error, rejection, valid_approval
from journal.errors import StaleApproval, TransactionState
from journal.store import ApprovalRecord, TxRecord
from journal.workspace import Workspace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def tell(ws: Workspace, tx: TxRecord, event: str, diff_hash: str | None, by: str | None, changes: int | None,
         **extra: Any) -> None:
    """Send ``event`` to the notify command of ``tx``'s rules, if they name
    one; a failure is kept in ``ws.notices``, never raised (what it tells of
    already happened). Call it with no lock held."""
    try:
        config = ws.rules(tx)
        if config.approval.notify is None:
            return
        from journal.notify import announce, payload

        notice = announce(ws.journal, config, payload(event, tx, diff_hash, by, changes, actor=ws.journal.actor, **extra))
    except RoscoeError as e:
        notice = f"the {event} event of tx {tx.id} could not be sent: {e.message}"
    if notice is not None:
        ws.notices.append(notice)


def tells(ws: Workspace, tx: TxRecord) -> bool:
    """Whether ``tx``'s rules name a notify command (or cannot be read: ``tell`` says so)."""
    try:
        return ws.rules(tx).approval.notify is not None
    except RoscoeError:
        return True


def tell_committed(ws: Workspace, tx: TxRecord) -> None:
    """``committed`` (or, for a rollback, ``rolled-back``) for ``tx``, just committed."""
    if not tells(ws, tx):
        return
    approval = valid_approval(ws.journal, tx.id, tx.diff_hash) if tx.diff_hash else None
    tell(ws, tx, "rolled-back" if tx.rolls_back else "committed", tx.diff_hash, ws.journal.actor.user,
         ws.journal.change_count(tx.id), approved_by=approval.approver if approval else None,
         rolls_back=tx.rolls_back)


HASH = re.compile(r"[0-9a-f]{32}")


def approve(ws: Workspace, ref: str, diff_hash: str, approver: str | None = None) -> ApprovalRecord:
    """Record that ``approver`` (default: the login user) approved the open
    transaction ``ref``'s diff, which must hash to ``diff_hash`` right now
    and must not have been rejected."""
    if not HASH.fullmatch(diff_hash or ""):
        raise UsageError(detail=f"--hash {diff_hash!r}: expected the 32 hex digits of a diff_hash (see `roscoe tx diff ID --json`)")
    if approver is not None and not approver.strip():
        raise UsageError(detail="--by: the approver's name is empty")
    tx = ws.get(ref)
    if tx.state != "open":
        raise TransactionState(tx=tx.id, state=tx.state, action="approve")
    with ws.locked(tx, exclusive=False) as tx:
        changes = ws.staged_changes(tx)
        current = changes.diff_hash
        if current != diff_hash:
            ws.journal.log_event(tx.id, "refuse", {
                "reason": "stale approval", "given": diff_hash, "diff_hash": current})
            raise StaleApproval(tx=tx.id, current=current, given=diff_hash)
        refused = rejection(ws.journal, tx.id, diff_hash)
        if refused is not None:
            ws.journal.log_event(tx.id, "refuse", {"reason": "rejected", "diff_hash": diff_hash, "approve": True})
            raise rejected_error(tx, refused, "approved")
        record = ws.journal.add_approval(tx.id, diff_hash, approver.strip() if approver else ws.journal.actor.user)
    tell(ws, tx, "approved", diff_hash, record.approver, len(changes.changes), summary=changes.summary)
    return record


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def reject(ws: Workspace, ref: str, by: str, reason: str | None = None) -> ApprovalRecord:
    """Record that ``by`` rejected the open transaction ``ref``'s diff as it
    hashes now, for good: a commit of it is refused (exit 4) and approvals
    of it are void until a run changes the diff. A rollback waiting for its
    approval can be rejected too."""
    if not by or not by.strip():
        raise UsageError(detail="--by: the name of who rejects is empty")
    if CONTROL.search(by):
        raise UsageError(detail=f"--by {by!r}: a name cannot hold control characters")
    if reason is not None and not reason.strip():
        raise UsageError(detail="-m: the reason is empty (leave -m out to give none)")
    tx = ws.get(ref)
    if tx.state != "open":
        raise TransactionState(tx=tx.id, state=tx.state, action="reject")
    with ws.locked(tx, exclusive=False):
        changes = ws.staged_changes(tx)
        record = ws.journal.add_rejection(tx.id, changes.diff_hash, by.strip(), reason)
    tell(ws, tx, "rejected", changes.diff_hash, record.approver, len(changes.changes),
         summary=changes.summary, reason=reason)
    return record
