"""Policy and approval at commit time (step 2 of the protocol), and ``tx approve``.

An approval names a diff hash and is valid while the transaction's diff still
hashes to it and no run has happened since: any run after the approval voids
it, even one that changes nothing. A commit that needs an approval and has
none is refused (exit 4) and becomes a request: the ``notify`` command is run
once per diff hash, and ``tx show`` / ``tx list`` show it as pending.
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


class PolicyRefused(Refused):
    """transaction {tx} cannot be committed: refused by policy: {violations}; nothing was written"""


class ApprovalNeeded(Refused):
    """transaction {tx} needs an approval before it can be committed ({reasons}); nothing was written.
    A person approves this exact diff with: roscoe tx approve {tx} --hash {diff_hash}{notified}"""

    error_kind = "approval_needed"

    pending: tuple[TxRecord, ChangeSet, list[str], Config]


class StaleApproval(RoscoeError):
    """approval refused: the diff of transaction {tx} now hashes to {current}, not {given}; review it again with `roscoe tx diff {tx}`"""

    exit_code = ExitCode.CONFLICT


class Status(namedtuple("_Status", "refusals reasons approved_by pending")):
    """What policy says of a diff: refusals, approval reasons, who approved it
    (None if nobody validly did), and whether a request is waiting."""

    __slots__ = ()
    refusals: list[policy.Violation]
    reasons: list[str]
    approved_by: str | None
    pending: bool

    @property
    def needed(self) -> bool:
        return bool(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "refusals": [v.to_json() for v in self.refusals], "needed": self.needed,
            "reasons": self.reasons, "approved_by": self.approved_by,
            "pending": self.pending,
        }


def valid_approval(journal: Journal, tx_id: str, diff_hash: str) -> ApprovalRecord | None:
    """The newest approval of ``diff_hash`` with no run after it, made by ``tx
    approve`` (an approvals row with no approve event in the audit trail is
    forged and counts for nothing)."""
    last_run = journal.last_run(tx_id)
    candidates = [a for a in journal.approvals(tx_id)
                  if a.kind == "approved" and a.diff_hash == diff_hash and a.after_run >= last_run]
    if not candidates:
        return None
    recorded = journal.approve_events(tx_id)
    for a in reversed(candidates):
        if (a.diff_hash, a.approver) in recorded:
            return a
    return None


def status(
    journal: Journal, tx: TxRecord, changes: ChangeSet, config: Config, same_bytes: policy.SameBytes | None = None,
) -> Status:
    reasons = policy.approval_reasons(changes, config.approval, same_bytes)
    approval = valid_approval(journal, tx.id, changes.diff_hash) if reasons else None
    pending = bool(reasons) and approval is None and any(
        a.kind == "requested" and a.diff_hash == changes.diff_hash for a in journal.approvals(tx.id))
    return Status(policy.refusals(changes, config.policy), reasons,
                  approval.approver if approval else None, pending)


def enforce(
    journal: Journal, tx: TxRecord, changes: ChangeSet, config: Config, same_bytes: policy.SameBytes | None = None,
) -> str | None:
    """Refuse (exit 4) what policy forbids or what needs an approval it lacks,
    journaling the refusal; returns the approver when one was needed
    (``same_bytes``: see ``cowfs.policy.approval_reasons``)."""
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

    outcome = send(rules.notify, request_json(journal, tx, changes, reasons), rules.notify_timeout)
    journal.add_request(tx.id, changes.diff_hash, outcome.ok, {
        "reasons": reasons, "notify": list(rules.notify), "notified": outcome.ok, "outcome": outcome.detail})
    if outcome.ok:
        return f" (request {outcome.detail})"
    return f" (the approval request could not be sent: {outcome.detail}; the transaction is unchanged)"


def request_json(journal: Journal, tx: TxRecord, changes: ChangeSet, reasons: list[str]) -> dict[str, Any]:
    """What the notify command reads on stdin: ``paths``, the first 100
    changed paths that are not part of a move, and ``moves``, the first 100
    moves (``{"from", "to"}``)."""
    moves = changes.moves()
    moved = {m.source for m in moves} | {m.dest for m in moves}
    return {
        "kind": "roscoe.approval-request", "version": 1,
        "tx": tx.id, "root": tx.root, "message": tx.message, "user": tx.user, "host": tx.host,
        "diff_hash": changes.diff_hash, "summary": changes.summary, "changes": len(changes.changes),
        "reasons": reasons,
        "commands": [{"argv": r.argv, "cwd": r.cwd, "exit_code": r.exit_code} for r in journal.runs(tx.id)],
        "paths": [c.path for c in changes.changes if c.path not in moved][:100],
        "moves": [m.to_json() for m in moves[:100]],
        "approve": f"roscoe tx approve {tx.id} --hash {changes.diff_hash}",
    }


HASH = re.compile(r"[0-9a-f]{32}")


def approve(ws: object, ref: str, diff_hash: str, approver: str | None = None) -> ApprovalRecord:
    """Record that ``approver`` (default: the login user) approved the open
    transaction ``ref``'s diff, which must hash to ``diff_hash`` right now."""
    from journal.audit import login_name
    from journal.workspace import Workspace

    assert isinstance(ws, Workspace)
    if not HASH.fullmatch(diff_hash or ""):
        raise UsageError(detail=f"--hash {diff_hash!r}: expected the 32 hex digits of a diff_hash (see `roscoe tx diff ID --json`)")
    if approver is not None and not approver.strip():
        raise UsageError(detail="--by: the approver's name is empty")
    tx = ws.get(ref)
    if tx.state != "open":
        raise TransactionState(tx=tx.id, state=tx.state, action="approve")
    with ws.locked(tx, exclusive=False) as tx:
        current = ws.staged_changes(tx).diff_hash
        if current != diff_hash:
            ws.journal.log_event(tx.id, "refuse", {
                "reason": "stale approval", "given": diff_hash, "diff_hash": current})
            raise StaleApproval(tx=tx.id, current=current, given=diff_hash)
        return ws.journal.add_approval(tx.id, diff_hash, approver.strip() if approver else login_name())
