"""Policy and approval at commit time (step 2 of the protocol), ``tx approve``
and ``tx reject``.

An approval names a diff hash and is valid while the transaction's diff still
hashes to it and no run has happened since: any run after the approval voids
it, even one that changes nothing. A commit that needs an approval and has
none is refused (exit 4) and becomes a request: the ``notify`` command is run
once per diff hash, and ``tx show`` / ``tx list`` show it as pending.

A rejection names a diff hash too and refuses it for good: while the
transaction's diff hashes to it, a commit exits 4 and an approval is refused,
and approvals made of it before are void. Only a run that changes the diff
lifts it (a run that changes nothing does not).
"""

from __future__ import annotations

import re
from collections import namedtuple

from cowfs import policy
from cowfs.changeset import ChangeSet
from cowfs.config import Config
from cowfs.errors import ExitCode, Refused, RoscoeError, TransactionState, UsageError
from journal.store import ApprovalRecord, Journal, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from journal.workspace import Workspace


class PolicyRefused(Refused):
    """transaction {tx} cannot be committed: refused by policy: {violations}; nothing was written"""


class ApprovalNeeded(Refused):
    """transaction {tx} needs an approval before it can be committed ({reasons}); nothing was written.
    A person approves this exact diff with: roscoe tx approve {tx} --hash {diff_hash}{notified}"""

    error_kind = "approval_needed"

    pending: tuple[TxRecord, ChangeSet, list[str], Config]


class Rejected(Refused):
    """transaction {tx} cannot be {action}: its diff {diff_hash} was rejected by {by}{reason}; {outcome}"""

    error_kind = "rejected"


def rejected_error(tx: TxRecord, rejection: ApprovalRecord, action: str) -> Rejected:
    """``Rejected`` for ``tx``, whose diff ``rejection`` refused; ``action`` is what was refused."""
    import json

    if tx.rolls_back:
        lift = f"a rollback runs nothing: abort it (roscoe tx abort {tx.id}) to roll back again"
    else:
        lift = "only a run that changes the diff lifts the rejection"
    undone = "nothing was approved" if action == "approved" else "nothing was written"
    reason = f": {json.dumps(rejection.reason, ensure_ascii=False)}" if rejection.reason else ""
    return Rejected(tx=tx.id, action=action, diff_hash=rejection.diff_hash, by=rejection.approver, reason=reason,
                    outcome=f"{undone}; {lift}")


class StaleApproval(RoscoeError):
    """approval refused: the diff of transaction {tx} now hashes to {current}, not {given}; review it again with `roscoe tx diff {tx}`"""

    exit_code = ExitCode.CONFLICT


class Status(namedtuple("_Status", "refusals reasons approved_by pending rejected", defaults=(None,))):
    """What policy says of a diff: refusals, approval reasons, who approved it
    (None if nobody validly did), whether a request is waiting, and its
    rejection (None unless it was rejected)."""

    __slots__ = ()
    refusals: list[policy.Violation]
    reasons: list[str]
    approved_by: str | None
    pending: bool
    rejected: ApprovalRecord | None

    @property
    def needed(self) -> bool:
        return bool(self.reasons)

    def to_json(self) -> dict[str, Any]:
        r = self.rejected
        return {
            "refusals": [v.to_json() for v in self.refusals], "needed": self.needed,
            "reasons": self.reasons, "approved_by": self.approved_by,
            "pending": self.pending,
            "rejected": None if r is None else {"by": r.approver, "reason": r.reason, "time_ns": r.time_ns},
        }


def rejection(journal: Journal, tx_id: str, diff_hash: str) -> ApprovalRecord | None:
    """The newest rejection of ``diff_hash`` (it holds whatever ran since)."""
    found = [a for a in journal.approvals(tx_id) if a.kind == "rejected" and a.diff_hash == diff_hash]
    return found[-1] if found else None


def valid_approval(journal: Journal, tx_id: str, diff_hash: str) -> ApprovalRecord | None:
    """The newest approval of ``diff_hash`` with no run after it, made by ``tx
    approve`` (an approvals row with no approve event in the audit trail is
    forged and counts for nothing), unless that diff was rejected."""
    last_run = journal.last_run(tx_id)
    rows = journal.approvals(tx_id)
    if any(a.kind == "rejected" and a.diff_hash == diff_hash for a in rows):
        return None
    candidates = [a for a in rows
                  if a.kind == "approved" and a.diff_hash == diff_hash and a.after_run >= last_run]
    if not candidates:
        return None
    recorded = journal.approve_events(tx_id)
    for a in reversed(candidates):
        if (a.diff_hash, a.approver) in recorded:
            return a
    return None


class Decision(namedtuple("_Decision", "outcome diff_hash record")):
    """What the journal says of an open transaction's diff: ``outcome`` is
    ``rejected``, ``approved``, ``pending`` or None, ``record`` the rejection
    or approval that decided it."""

    __slots__ = ()
    outcome: str | None
    diff_hash: str | None
    record: ApprovalRecord | None


def decided(journal: Journal, tx_id: str) -> Decision:
    """``Decision`` from the journal alone (no diff is computed, so it is cheap
    to ask again and again): the diff is the one the newest request,
    approval or rejection since the last run names, else the one the last
    run left (a rollback runs nothing: its newest request's)."""
    rows = journal.approvals(tx_id)
    last_run = journal.last_run(tx_id)
    since = [a for a in rows if a.after_run >= last_run]
    current = since[-1].diff_hash if since else journal.last_diff_hash(tx_id)
    if current is None:
        return Decision(None, None, None)
    refused = [a for a in rows if a.kind == "rejected" and a.diff_hash == current]
    if refused:
        return Decision("rejected", current, refused[-1])
    approval = valid_approval(journal, tx_id, current)
    if approval is not None:
        return Decision("approved", current, approval)
    if any(a.kind == "requested" and a.diff_hash == current for a in rows):
        return Decision("pending", current, None)
    return Decision(None, current, None)


def status(
    journal: Journal, tx: TxRecord, changes: ChangeSet, config: Config, same_bytes: policy.SameBytes | None = None,
) -> Status:
    reasons = policy.approval_reasons(changes, config.approval, same_bytes)
    refused = rejection(journal, tx.id, changes.diff_hash)
    approval = valid_approval(journal, tx.id, changes.diff_hash) if reasons else None
    pending = bool(reasons) and approval is None and refused is None and any(
        a.kind == "requested" and a.diff_hash == changes.diff_hash for a in journal.approvals(tx.id))
    return Status(policy.refusals(changes, config.policy), reasons,
                  approval.approver if approval else None, pending, refused)


def refuse_rejected(journal: Journal, tx: TxRecord, diff_hash: str) -> None:
    """Refuse (exit 4) to commit a diff that was rejected, journaling the refusal."""
    refused = rejection(journal, tx.id, diff_hash)
    if refused is not None:
        journal.log_event(tx.id, "refuse", {"reason": "rejected", "diff_hash": diff_hash, "by": refused.approver})
        raise rejected_error(tx, refused, "committed")


def enforce(
    journal: Journal, tx: TxRecord, changes: ChangeSet, config: Config, same_bytes: policy.SameBytes | None = None,
) -> str | None:
    """Refuse (exit 4) a rejected diff, what policy forbids or what needs an
    approval it lacks, journaling the refusal; returns the approver when one
    was needed (``same_bytes``: see ``cowfs.policy.approval_reasons``)."""
    refuse_rejected(journal, tx, changes.diff_hash)
    found = policy.refusals(changes, config.policy)
    if found:
        journal.log_event(tx.id, "refuse", {
            "reason": "policy", "diff_hash": changes.diff_hash, "violations": [v.to_json() for v in found]})
        raise PolicyRefused(tx=tx.id, violations="; ".join(map(str, found)), paths=policy.violating_paths(found))
    reasons = policy.approval_reasons(changes, config.approval, same_bytes)
    if not reasons:
        return None
    approval = valid_approval(journal, tx.id, changes.diff_hash)
    if approval is not None:
        return approval.approver
    journal.log_event(tx.id, "refuse", {"reason": "approval needed", "diff_hash": changes.diff_hash, "reasons": reasons})
    needed = ApprovalNeeded(tx=tx.id, reasons="; ".join(reasons), diff_hash=changes.diff_hash, notified="")
    needed.pending = (tx, changes, reasons, config)
    raise needed


def requested(journal: Journal, needed: ApprovalNeeded) -> ApprovalNeeded:
    """``needed`` again, after its request was made (``notify`` run), saying
    how that went. Called once the commit's locks are released: a slow notify
    command must not hold up other commits of the root."""
    tx, changes, reasons, config = needed.pending
    notified = request(journal, tx, changes, reasons, config)
    return type(needed)(**{**needed.fields, "notified": notified})


def request(journal: Journal, tx: TxRecord, changes: ChangeSet, reasons: list[str], config: Config) -> str:
    """Record an approval request and run ``notify`` unless it already took one
    for this diff hash; returns what to tell the person committing."""
    rules = config.approval
    earlier = [a for a in journal.approvals(tx.id) if a.kind == "requested" and a.diff_hash == changes.diff_hash]
    if rules.notify is None:
        if not earlier:
            journal.add_request(tx.id, changes.diff_hash, None, {"reasons": reasons, "notify": None})
        return ""
    if any(a.notified for a in earlier):
        return f" (a request for this diff was already sent to {rules.notify[0]})"
    from journal.notify import send

    outcome = send(rules.notify, request_event(journal, tx, changes, reasons), rules.notify_timeout)
    journal.add_request(tx.id, changes.diff_hash, outcome.ok, {
        "reasons": reasons, "notify": list(rules.notify), "notified": outcome.ok, "outcome": outcome.detail})
    if outcome.ok:
        return f" (request {outcome.detail})"
    return f" (the approval request could not be sent: {outcome.detail}; the transaction is unchanged)"


def request_event(journal: Journal, tx: TxRecord, changes: ChangeSet, reasons: list[str]) -> dict[str, Any]:
    """What the notify command reads on stdin when an approval is requested:
    ``paths``, the first 100 changed paths that are not part of a move, and
    ``moves``, the first 100 moves (``{"from", "to"}``)."""
    from journal.notify import payload

    moves = changes.moves()
    moved = {m.source for m in moves} | {m.dest for m in moves}
    return payload(
        "approval-requested", tx, changes.diff_hash, journal.actor.user, len(changes.changes),
        summary=changes.summary, reasons=reasons,
        commands=[{"argv": r.argv, "cwd": r.cwd, "exit_code": r.exit_code} for r in journal.runs(tx.id)],
        paths=[c.path for c in changes.changes if c.path not in moved][:100],
        moves=[m.to_json() for m in moves[:100]],
        approve=f"roscoe tx approve {tx.id} --hash {changes.diff_hash}",
    )


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

        notice = announce(ws.journal, config, payload(event, tx, diff_hash, by, changes, **extra))
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
