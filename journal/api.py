"""The Python API for agent frameworks: one function per step of a transaction.

Each call opens the state dir (``home``, else ``$ROSCOE_HOME``), runs
recovery first as every roscoe command does, does one thing and closes it, so
calls may come from any process or thread; each is one method of
``journal.service.Service``, whose settings are read from the environment
here, as the CLI reads them (``journal.settings``). Results are typed (namedtuples of
``cowfs``/``journal``); failures raise ``cowfs.RoscoeError`` subclasses whose
``exit_code`` is the CLI's::

    from journal import api

    tx = api.begin("/mnt/workspace/projects", message="file the March pleadings")
    staged = api.stage_plan(tx, {"version": 1, "ops": [
        {"op": "mkdir", "path": "case1/Filed"},
        {"op": "move", "from": "case1/complaint.txt", "to": "case1/Filed/complaint.txt"}]})
    changes = api.diff(tx)              # cowfs.ChangeSet: .diff_hash, .summary, .moves()
    for change in changes:              # each Change: .path, .status, .old, .new
        print(change.status, change.path)
    ran = api.run(tx, ["python3", "check.py"], capture=True)   # .exit_code, .stdout, .stderr
    api.commit(tx)                      # or api.abort(tx); api.wait(tx) for an approval
    api.rollback_dry_run(tx)            # what api.rollback(tx) would put back
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cowfs.changeset import ChangeSet
from cowfs.plan import Plan, schema
from journal.planning import DryRun, PlanResult, as_plan
from journal.audit import Event
from journal.rollback import DryRun as RollbackDryRun
from journal.service import LogEntry, Service
from journal.settings import Settings
from journal.store import ApprovalRecord, TxRecord
from journal.verify import Report
from journal.waiting import WaitResult
from journal.workspace import RunResult, TxView

HomeDir = str | os.PathLike[str] | None
PlanLike = Plan | dict[str, object] | str | bytes

__all__ = [
    "DryRun", "LogEntry", "PlanResult", "Report", "RollbackDryRun", "RunResult", "WaitResult", "abort", "approve",
    "audit", "begin", "commit", "diff", "dry_run_plan", "log", "plan_schema", "reject", "rollback",
    "rollback_dry_run", "run", "show", "stage_plan", "transactions", "validate_plan", "verify", "wait",
]


@contextmanager
def _service(home: HomeDir) -> Iterator[Service]:
    """The service over ``home`` (else the environment's state dir). The API
    names its roots, so $ROSCOE_ROOT is no default here."""
    with Service(Settings.from_env(os.environ, home=home)._replace(root=None)) as service:
        yield service


def begin(root: str | os.PathLike[str], message: str | None = None, *, home: HomeDir = None) -> str:
    """Open a transaction over ``root``; its id."""
    with _service(home) as roscoe:
        return roscoe.begin(root, message).id


def run(
    tx: str, argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
    network: bool = True, timeout: float | None = None, hide: tuple[str, ...] | list[str] = (),
    capture: bool = False, input: bytes | None = None, home: HomeDir = None,
) -> RunResult:
    """Run ``argv`` in the transaction's overlay; ``RunResult.exit_code`` is the
    command's, ``.changes`` what is staged after it. Its stdio is this
    process's, unless ``capture``: then its stdout and stderr come back as
    ``RunResult.stdout`` and ``.stderr`` (bytes), and its stdin is ``input``
    (empty when not given). ``hide``: paths the run cannot see (``--hide``).
    Its environment is ``env``, else this process's."""
    import tempfile
    from contextlib import ExitStack

    with ExitStack() as files:
        stdio = [0, 1, 2]
        if capture or input is not None:
            given = files.enter_context(tempfile.TemporaryFile())
            given.write(input or b"")
            given.seek(0)
            stdio[0] = given.fileno()
        if capture:
            out, err = (files.enter_context(tempfile.TemporaryFile()) for _ in range(2))
            stdio[1:] = [out.fileno(), err.fileno()]
        with _service(home) as roscoe:
            result = roscoe.run(tx, argv, cwd=cwd, env=dict(os.environ) if env is None else env, network=network,
                                timeout=timeout, hide=hide, stdio=(stdio[0], stdio[1], stdio[2]))
        if not capture:
            return result
        out.seek(0)
        err.seek(0)
        return result._replace(stdout=out.read(), stderr=err.read())


def stage_plan(
    tx: str | None, plan: PlanLike, *, root: str | os.PathLike[str] | None = None,
    message: str | None = None, home: HomeDir = None,
) -> PlanResult:
    """Stage ``plan`` (a dict, JSON text or ``Plan``) into the open transaction
    ``tx``, or into a new one over ``root`` when ``tx`` is None. A plan that
    cannot run raises ``cowfs.errors.PlanError`` (exit_code 2; ``.fields`` has
    ``index``, ``op`` and ``reason``) and stages nothing."""
    with _service(home) as roscoe:
        return roscoe.stage_plan(plan, tx=tx, root=root, message=message)


def dry_run_plan(
    plan: PlanLike, *, tx: str | None = None, root: str | os.PathLike[str] | None = None,
    home: HomeDir = None,
) -> DryRun:
    """The diff ``tx`` (or a new transaction over ``root``) would have after
    ``plan``; nothing is staged."""
    with _service(home) as roscoe:
        return roscoe.dry_run_plan(plan, tx=tx, root=root)


def validate_plan(plan: PlanLike) -> Plan:
    """Check a plan's shape and paths (not the tree); raises PlanError."""
    return as_plan(plan)


def plan_schema() -> dict[str, object]:
    """The plan's JSON Schema (the one ``roscoe tx plan --schema`` prints)."""
    return schema()


def diff(tx: str, *, home: HomeDir = None) -> ChangeSet:
    """The transaction's hashed diff against the live tree (``.to_json(tx)``
    is what ``tx diff --json`` prints)."""
    with _service(home) as roscoe:
        return roscoe.diff(tx)


def show(tx: str, *, home: HomeDir = None) -> TxView:
    """State, runs, diff summary and approvals (``.to_json()`` as ``tx show --json``)."""
    with _service(home) as roscoe:
        return roscoe.show(tx)


def commit(tx: str, *, home: HomeDir = None) -> TxRecord:
    """Commit the transaction atomically; its record, now committed. Raises
    ``Conflict`` (exit_code 3) or ``Refused`` (4) and writes nothing then."""
    with _service(home) as roscoe:
        return roscoe.commit(tx)


def approve(tx: str, diff_hash: str, *, by: str | None = None, home: HomeDir = None) -> ApprovalRecord:
    """Record that ``by`` (default: the login user) approves the transaction's
    diff, which must hash to ``diff_hash`` now (else ``StaleApproval``, exit_code 3).
    A commit that needs an approval goes through while the diff still hashes
    to it and no run happened since."""
    with _service(home) as roscoe:
        return roscoe.approve(tx, diff_hash, by)


def reject(tx: str, by: str, reason: str | None = None, *, home: HomeDir = None) -> ApprovalRecord:
    """Record that ``by`` rejects the transaction's diff as it hashes now, for
    good: a commit of it raises ``Rejected`` (exit_code 4) and approvals of it
    are void, until a run changes the diff."""
    with _service(home) as roscoe:
        return roscoe.reject(tx, by, reason)


def wait(tx: str, timeout: float | None = None, *, home: HomeDir = None) -> WaitResult:
    """Block until the transaction is approved, rejected, committed or aborted
    (``WaitResult.outcome``; ``.exit_code`` is the CLI's), or until ``timeout``
    seconds pass (outcome ``timeout``, exit_code 124)."""
    with _service(home) as roscoe:
        return roscoe.wait(tx, timeout)


def transactions(state: str | None = None, *, home: HomeDir = None) -> list[TxRecord]:
    """Every transaction (or those in ``state``), newest first, as ``tx list --json``."""
    with _service(home) as roscoe:
        return roscoe.list(state).records


def log(*, home: HomeDir = None) -> list[LogEntry]:
    """The committed history, newest commit first (rollbacks included), as
    ``tx log --json``: each record with its number of changes and the
    rollback that undid it, if one stands."""
    with _service(home) as roscoe:
        return roscoe.log()


def rollback(tx: str, *, force: bool = False, home: HomeDir = None) -> TxRecord:
    """Roll back the committed transaction ``tx``; the rollback transaction, now
    committed. Held to policy and approval as a commit is: raises
    ``Conflict`` (3) when the live tree no longer holds what ``tx`` wrote
    (``force`` overrides that, never policy), ``Refused`` (4) when policy
    refuses it or it needs an approval (the error names the open rollback
    transaction to approve; call ``rollback`` again once it is approved)."""
    with _service(home) as roscoe:
        return roscoe.rollback(tx, force=force)


def rollback_dry_run(tx: str, *, home: HomeDir = None) -> RollbackDryRun:
    """What a rollback of ``tx`` would apply now (``.changes``, a ChangeSet) and
    the paths it would be refused at without ``force`` (``.conflicts``);
    nothing is staged or written (``.to_json()`` as ``tx rollback --dry-run --json``)."""
    with _service(home) as roscoe:
        return roscoe.rollback_dry_run(tx)


def verify(*, integrity: bool = False, home: HomeDir = None) -> Report:
    """``roscoe verify``: ``Report.ok`` (nothing wrong), ``.healthy`` (nothing
    but drift of the live tree), ``.problems``. With ``integrity``, the live
    tree is not read."""
    with _service(home) as roscoe:
        return roscoe.verify(live=not integrity)


def audit(tx: str | None = None, *, since_ns: int | None = None, home: HomeDir = None) -> list[Event]:
    """The audit trail, oldest first (``Event.to_json()`` as ``roscoe audit --json``)."""
    with _service(home) as roscoe:
        return roscoe.audit(tx, since_ns).events


def abort(tx: str, *, home: HomeDir = None) -> TxRecord:
    """Discard the transaction's staged changes; its record, now aborted
    (a state dir too full to open is given room first)."""
    with _service(home) as roscoe:
        return roscoe.abort(tx)
