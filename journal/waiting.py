"""``tx wait``: block until a transaction is decided or finished.

It polls the journal (a few cheap SELECTs every ``POLL`` seconds; no diff is
computed and no lock is taken, so the approve, reject, commit or abort it
waits for is never held up) and returns how the transaction ended up:
approved (exit 0), rejected (4), committed (0), aborted (1), or ``timeout``
(124) when the time given passed first.
"""

from __future__ import annotations

import time
from collections import namedtuple

from cowfs.errors import UsageError
from journal.approval import decided, valid_approval

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from journal.workspace import Workspace

POLL = 0.2
TIMED_OUT = 124
EXIT_CODES = {"approved": 0, "committed": 0, "rejected": 4, "aborted": 1, "timeout": TIMED_OUT}


class WaitResult(namedtuple("_WaitResult", "tx outcome state diff_hash by reason waited_ns")):
    """How a wait ended: ``outcome`` is ``approved``, ``rejected``,
    ``committed``, ``aborted`` or ``timeout``; ``state`` the transaction's
    state then; ``by`` who approved or rejected it (for a commit, who
    approved it, if anyone); ``reason`` the rejection's."""

    __slots__ = ()
    tx: str
    outcome: str
    state: str
    diff_hash: str | None
    by: str | None
    reason: str | None
    waited_ns: int

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def to_json(self) -> dict[str, Any]:
        return {"tx": self.tx, "outcome": self.outcome, "state": self.state, "diff_hash": self.diff_hash,
                "by": self.by, "reason": self.reason, "exit_code": self.exit_code,
                "waited_ms": self.waited_ns // 1_000_000}


def seconds(text: str | float | None) -> float | None:
    """``--timeout SECONDS``: a finite number, 0 or more (0: look once)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UsageError(detail=f"--timeout {text}: expected a number of seconds, 0 or more")
    return value


def wait(ws: Workspace, ref: str, timeout: float | None = None, *, poll: float = POLL) -> WaitResult:
    """Block until the transaction ``ref`` is approved, rejected, committed or
    aborted, or until ``timeout`` seconds pass (None: no limit)."""
    if timeout is not None and not 0 <= timeout < float("inf"):
        raise UsageError(detail=f"timeout {timeout}: expected a number of seconds, 0 or more")
    tx_id = ws.get(ref).id
    started = time.monotonic_ns()
    deadline = None if timeout is None else started + int(timeout * 1e9)
    while True:
        found = ended(ws, tx_id, time.monotonic_ns() - started)
        if found is not None:
            return found
        now = time.monotonic_ns()
        if deadline is not None and now >= deadline:
            tx = ws.journal.get_tx(tx_id)
            assert tx is not None
            open_now = decided(ws.journal, tx_id) if tx.state == "open" else None
            return WaitResult(tx_id, "timeout", tx.state, open_now.diff_hash if open_now else tx.diff_hash,
                              None, None, now - started)
        pause = poll if deadline is None else min(poll, (deadline - now) / 1e9)
        time.sleep(max(pause, 0.0))


def ended(ws: Workspace, tx_id: str, waited_ns: int) -> WaitResult | None:
    """The outcome the journal shows now, or None while there is none."""
    tx = ws.journal.get_tx(tx_id)
    assert tx is not None
    if tx.state == "committed":
        approval = valid_approval(ws.journal, tx.id, tx.diff_hash) if tx.diff_hash else None
        return WaitResult(tx.id, "committed", tx.state, tx.diff_hash, approval.approver if approval else None,
                          None, waited_ns)
    if tx.state == "aborted":
        return WaitResult(tx.id, "aborted", tx.state, None, None, None, waited_ns)
    if tx.state != "open":
        return None  # (committing: wait for the commit record or its undo)
    decision = decided(ws.journal, tx.id)
    if decision.outcome in ("approved", "rejected"):
        record = decision.record
        assert record is not None
        return WaitResult(tx.id, decision.outcome, tx.state, decision.diff_hash, record.approver,
                          record.reason, waited_ns)
    return None
