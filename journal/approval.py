"""Policy and approval at commit time (step 2 of the protocol); ``tx approve``
and ``tx reject`` record decisions (``journal.decisions``).

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

from collections import namedtuple

from cowfs.changeset import ChangeSet
from journal import policy
from journal.config import Config
from journal.errors import ApprovalNeeded, PolicyRefused, Rejected
from journal.store import ApprovalRecord, Journal, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any



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
    was needed (``same_bytes``: see ``journal.policy.approval_reasons``)."""
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
        actor=journal.actor, summary=changes.summary, reasons=reasons,
        commands=[{"argv": r.argv, "cwd": r.cwd, "exit_code": r.exit_code} for r in journal.runs(tx.id)],
        paths=[c.path for c in changes.changes if c.path not in moved][:100],
        moves=[m.to_json() for m in moves[:100]],
        approve=f"roscoe tx approve {tx.id} --hash {changes.diff_hash}",
    )
