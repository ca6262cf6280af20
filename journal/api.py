"""The Python API for agent frameworks: one function per step of a transaction.

Each call opens the state dir (``home``, else ``$ROSCOE_HOME``), runs
recovery first as every roscoe command does, does one thing and closes it, so
calls may come from any process or thread. Results are typed (namedtuples of
``cowfs``/``journal``); failures raise ``cowfs.RoscoeError`` subclasses whose
``exit_code`` is the CLI's::

    from journal import api

    tx = api.begin("/mnt/workspace/projects", message="file the March pleadings")
    staged = api.stage_plan(tx, {"version": 1, "ops": [
        {"op": "mkdir", "path": "case1/Filed"},
        {"op": "move", "from": "case1/complaint.txt", "to": "case1/Filed/complaint.txt"}]})
    changes = api.diff(tx)              # cowfs.ChangeSet: .changes, .diff_hash, .summary
    api.commit(tx)                      # or api.abort(tx)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cowfs.changeset import ChangeSet
from cowfs.plan import Plan, schema
from journal.planning import DryRun, PlanResult, as_plan
from journal.audit import Event
from journal.store import ApprovalRecord, TxRecord
from journal.waiting import WaitResult
from journal.workspace import RunResult, TxView, Workspace

HomeDir = str | os.PathLike[str] | None
PlanLike = Plan | dict[str, object] | str | bytes

__all__ = [
    "DryRun", "PlanResult", "WaitResult", "abort", "approve", "audit", "begin", "commit", "diff", "dry_run_plan",
    "plan_schema", "reject", "run", "show", "stage_plan", "validate_plan", "wait",
]


@contextmanager
def _workspace(home: HomeDir, root: str | os.PathLike[str] | None = None) -> Iterator[Workspace]:
    ws = Workspace.open(home, roots=() if root is None else (root,))
    try:
        yield ws
    finally:
        ws.close()


def begin(root: str | os.PathLike[str], message: str | None = None, *, home: HomeDir = None) -> str:
    """Open a transaction over ``root``; its id."""
    with _workspace(home, root) as ws:
        return ws.begin(root, message).id


def run(
    tx: str, argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
    network: bool = True, timeout: float | None = None, home: HomeDir = None,
) -> RunResult:
    """Run ``argv`` in the transaction's overlay (its stdio is this process's);
    ``RunResult.exit_code`` is the command's, ``.changes`` what is staged after it."""
    with _workspace(home) as ws:
        return ws.run(tx, argv, cwd=cwd, env=env, network=network, timeout=timeout)


def stage_plan(
    tx: str | None, plan: PlanLike, *, root: str | os.PathLike[str] | None = None,
    message: str | None = None, home: HomeDir = None,
) -> PlanResult:
    """Stage ``plan`` (a dict, JSON text or ``Plan``) into the open transaction
    ``tx``, or into a new one over ``root`` when ``tx`` is None. A plan that
    cannot run raises ``cowfs.plan.PlanError`` (exit_code 2; ``.fields`` has
    ``index``, ``op`` and ``reason``) and stages nothing."""
    from journal import planning

    with _workspace(home, root) as ws:
        return planning.stage(
            ws, plan, tx=tx, root=None if root is None else os.fspath(root), message=message)


def dry_run_plan(
    plan: PlanLike, *, tx: str | None = None, root: str | os.PathLike[str] | None = None,
    home: HomeDir = None,
) -> DryRun:
    """The diff ``tx`` (or a new transaction over ``root``) would have after
    ``plan``; nothing is staged."""
    from journal import planning

    with _workspace(home, root) as ws:
        return planning.dry_run(ws, plan, tx=tx, root=None if root is None else os.fspath(root))


def validate_plan(plan: PlanLike) -> Plan:
    """Check a plan's shape and paths (not the tree); raises PlanError."""
    return as_plan(plan)


def plan_schema() -> dict[str, object]:
    """The plan's JSON Schema (the one ``roscoe tx plan --schema`` prints)."""
    return schema()


def diff(tx: str, *, home: HomeDir = None) -> ChangeSet:
    """The transaction's hashed diff against the live tree (``.to_json(tx)``
    is what ``tx diff --json`` prints)."""
    with _workspace(home) as ws:
        return ws.diff(tx)


def show(tx: str, *, home: HomeDir = None) -> TxView:
    """State, runs, diff summary and approvals (``.to_json()`` as ``tx show --json``)."""
    with _workspace(home) as ws:
        return ws.show(tx)


def commit(tx: str, *, home: HomeDir = None) -> TxRecord:
    """Commit the transaction atomically; its record, now committed. Raises
    ``Conflict`` (exit_code 3) or ``Refused`` (4) and writes nothing then."""
    from journal.commit import commit as commit_tx

    with _workspace(home) as ws:
        return commit_tx(ws, tx)


def approve(tx: str, diff_hash: str, *, by: str | None = None, home: HomeDir = None) -> ApprovalRecord:
    """Record that ``by`` (default: the login user) approves the transaction's
    diff, which must hash to ``diff_hash`` now (else ``StaleApproval``, exit_code 3).
    A commit that needs an approval goes through while the diff still hashes
    to it and no run happened since."""
    from journal.approval import approve as approve_tx

    with _workspace(home) as ws:
        return approve_tx(ws, tx, diff_hash, by)


def reject(tx: str, by: str, reason: str | None = None, *, home: HomeDir = None) -> ApprovalRecord:
    """Record that ``by`` rejects the transaction's diff as it hashes now, for
    good: a commit of it raises ``Rejected`` (exit_code 4) and approvals of it
    are void, until a run changes the diff."""
    from journal.approval import reject as reject_tx

    with _workspace(home) as ws:
        return reject_tx(ws, tx, by, reason)


def wait(tx: str, timeout: float | None = None, *, home: HomeDir = None) -> WaitResult:
    """Block until the transaction is approved, rejected, committed or aborted
    (``WaitResult.outcome``; ``.exit_code`` is the CLI's), or until ``timeout``
    seconds pass (outcome ``timeout``, exit_code 124)."""
    from journal.waiting import wait as wait_tx

    with _workspace(home) as ws:
        return wait_tx(ws, tx, timeout)


def audit(tx: str | None = None, *, since_ns: int | None = None, home: HomeDir = None) -> list[Event]:
    """The audit trail, oldest first (``Event.to_json()`` as ``roscoe audit --json``)."""
    with _workspace(home) as ws:
        return ws.journal.audit_events(ws.get(tx).id if tx is not None else None, since_ns)


def abort(tx: str, *, home: HomeDir = None) -> TxRecord:
    """Discard the transaction's staged changes; its record, now aborted
    (a state dir too full to open is given room first)."""
    ws = Workspace.open_to_abort(tx, home)
    try:
        return ws.abort(tx)
    finally:
        ws.close()
