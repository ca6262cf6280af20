"""Staging a plan into a transaction, and dry runs of plans.

A plan is applied by a sandboxed run of ``python -m cowfs.planrun`` through
``Workspace.run``, like any command: same overlay, stager choice, run record
and bases, so its result shows in ``tx diff`` and commits through the same
protocol; but always over the host's ``/``, even with a ``[run] rootfs``:
planrun is roscoe's own trusted code and needs the host's python. The plan goes in and the outcome comes out on inherited memfds (the
sandbox sees the filesystem read-only). The run takes a savepoint of the
staged layer (``cowfs.savepoint``): a plan that fails at any op stages nothing.

A dry run stages the plan in a scratch transaction of a scratch state dir (a
copy of the transaction's staged layer when ``tx`` is given), takes its diff
and throws it all away: the named transaction, the journal and the live tree
are not touched.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections import namedtuple
from collections.abc import Callable

import cowfs
from cowfs.changeset import ChangeSet
from cowfs.errors import PlanError, RoscoeError, UsageError
from cowfs.plan import Plan, check, load, op_paths, parse
from cowfs.savepoint import Savepoint, clone, heal, layer_paths
from cowfs.stagers import CopyStager, remove_tree
from journal.errors import PlanFailed
from journal.store import TxRecord
from journal.workspace import RunResult, Workspace, resolve_root

FD_FLOOR = 20  # above the fds the sandbox's shim uses (2, 3, 4)


class PlanResult(namedtuple("_PlanResult", "tx root ops began backend run_id changes")):
    """A plan staged: the transaction (``began``: opened for it), how many ops
    ran, the backend and run id, and what the transaction stages now."""

    __slots__ = ()
    tx: str
    root: str
    ops: int
    began: bool
    backend: str
    run_id: int
    changes: ChangeSet

    def to_json(self) -> dict[str, object]:
        return {
            "tx": self.tx, "root": self.root, "ops": self.ops, "began": self.began,
            "backend": self.backend, "diff_hash": self.changes.diff_hash,
            "summary": self.changes.summary, "counts": self.changes.counts(),
        }


class DryRun(namedtuple("_DryRun", "tx root ops changes")):
    """What a plan would stage: ``changes`` is the diff of ``tx`` (None: a new
    transaction) as it would be after the plan. Nothing was staged."""

    __slots__ = ()
    tx: str | None
    root: str
    ops: int
    changes: ChangeSet


def as_plan(plan: Plan | dict[str, object] | str | bytes) -> Plan:
    """A ``Plan`` from a parsed one, its JSON object, or its JSON text."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, bytes)):
        return load(plan)
    return parse(plan)


def stage(
    ws: Workspace, plan: Plan | dict[str, object] | str | bytes, *, tx: str | None = None,
    root: str | None = None, message: str | None = None,
    on_begin: Callable[[TxRecord], None] | None = None, hide: tuple[str, ...] | list[str] = (),
) -> PlanResult:
    """Stage ``plan`` into the open transaction ``tx``, or into a new one over
    ``root`` (begun only once the plan checks out against the live tree).
    ``on_begin`` is called with the transaction before the plan runs. The
    plan runs with ``hide`` (and the config's ``[run] hide``) hidden, and an
    op naming a hidden path fails it (exit 2)."""
    parsed = as_plan(plan)
    began = tx is None
    existing, path = _target(ws, parsed, tx, root, hide)
    record = existing if existing is not None else ws.begin(path, message)
    if on_begin is not None:
        on_begin(record)
    try:
        run = _apply(ws, record, parsed, savepoint=True, hide=hide)
    except BaseException:
        if began:
            _abort_quietly(ws, record.id)
        raise
    return PlanResult(record.id, record.root, len(parsed.ops), began, run.backend, run.run_id, run.changes)


def dry_run(
    ws: Workspace, plan: Plan | dict[str, object] | str | bytes, *, tx: str | None = None,
    root: str | None = None, hide: tuple[str, ...] | list[str] = (),
) -> DryRun:
    """The diff ``tx`` (or a new transaction over ``root``) would have after
    ``plan``; nothing is staged anywhere."""
    parsed = as_plan(plan)
    record, path = _target(ws, parsed, tx, root, hide)
    # the scratch state dir has no config of its own: the hidden paths go as
    # given, and the real state dir is hidden like the scratch one
    hidden, _ = ws.hidden(path, hide, record)
    scratch_hide = [*hidden.paths(), os.path.realpath(ws.home.path)]
    scratch_home = _scratch_home(ws)
    scratch = Workspace.open(scratch_home, settings=ws.settings)
    try:
        fork = scratch.begin(path, "dry run of a plan")
        if record is not None:
            with ws.locked(record, exclusive=False) as record:
                if record.backend:
                    _copy_layer(ws, record, scratch, fork)
            if record.backend:
                scratch.journal.set_backend(fork.id, record.backend)
        _apply(scratch, scratch.get(fork.id), parsed, savepoint=False, hide=scratch_hide)
        changes = scratch.diff(fork.id)
        scratch.abort(fork.id)
        if not _keeps_owners(ws, record, path):  # (the scratch transaction has no target)
            changes = changes.without_owners()
    finally:
        scratch.close()
        remove_tree(scratch_home)
    return DryRun(record.id if record is not None else None, path, len(parsed.ops), changes)


def _keeps_owners(ws: Workspace, record: TxRecord | None, root: str) -> bool:
    """Whether the transaction (or a new one over ``root``) commits where owners
    are kept: not to a bucket."""
    if record is not None:
        return not record.target
    return not ws.config().root(root).target


def _target(
    ws: Workspace, plan: Plan, tx: str | None, root: str | None, hide: tuple[str, ...] | list[str],
) -> tuple[TxRecord | None, str]:
    """The open transaction named by ``tx`` and its root; without one, None
    and ``root`` resolved, once the plan was checked against the live tree
    (a plan that cannot run opens no transaction). An op naming a hidden
    path (``hide``, ``[run] hide``) fails the plan, here or in the run."""
    if tx is not None:
        record = ws.get(tx)
        ws.require_open(record, "stage a plan")
        if root is not None and os.path.realpath(root) != record.root:
            raise UsageError(detail=f"--root {root} is not the root of tx {record.id} ({record.root})")
        ws.hidden(record.root, hide, record)  # a bad --hide fails here; the ops are checked in the run
        return record, record.root
    if root is None:
        raise UsageError(detail="no root: pass --root DIR or set ROSCOE_ROOT")
    path = resolve_root(root, ws.home)
    hidden, _ = ws.hidden(path, hide)
    check(plan, path, hidden.inside)
    return None, path


def _apply(
    ws: Workspace, record: TxRecord, plan: Plan, *, savepoint: bool, hide: tuple[str, ...] | list[str],
) -> RunResult:
    """Run ``cowfs.planrun`` on ``plan`` in ``record``'s overlay, with ``hide``
    hidden; raise PlanError (exit 2) when an op cannot run."""
    hidden, _ = ws.hidden(record.root, hide, record)
    plan_fd = _memfd("roscoe-plan", plan.dumps().encode())
    result_fd = _memfd("roscoe-plan-result", b"")
    argv = [
        sys.executable, "-P", "-m", "cowfs.planrun", "--root", record.root,
        "--result-fd", str(result_fd), *(a for rel in hidden.inside for a in ("--hidden", rel)),
        f"/dev/fd/{plan_fd}",
    ]
    env = dict(os.environ)  # the planrun child's environment: roscoe's own, as any run's
    # over the host's / even with a [run] rootfs: planrun is roscoe's own code, as
    # trusted as roscoe, and needs the python roscoe runs on (an image may have none)
    # the sandboxed python must import this very cowfs, wherever it came from
    here = os.path.dirname(os.path.dirname(os.path.abspath(cowfs.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    points = Savepoint() if savepoint else None
    try:
        try:
            run = ws.run(record.id, argv, cwd=record.root, env=env, savepoint=points,
                         pass_fds=(plan_fd, result_fd), hide=hide, over_host=True)
        except BaseException:
            if points is not None:
                _heal(ws, record)
            raise
        raw = os.pread(result_fd, 1 << 20, 0)
    finally:
        os.close(plan_fd)
        os.close(result_fd)
    try:
        outcome = json.loads(raw) if raw else {}
    except ValueError:
        outcome = {}
    if run.exit_code == 0 and outcome.get("ok"):
        return run
    if outcome.get("reason"):
        index, op = outcome.get("index"), outcome.get("op")
        where = "" if index is None else f" ops[{index}] ({op})"
        named = op_paths(plan.ops[index]) if isinstance(index, int) and 0 <= index < len(plan.ops) else []
        raise PlanError(where=where, reason=outcome["reason"], index=index, op=op, paths=named)
    raise PlanFailed(detail=f"the plan applier exited {run.exit_code} without a result")


def _memfd(name: str, data: bytes) -> int:
    """An inheritable memfd holding ``data``, numbered above the shim's fds."""
    fd = os.memfd_create(name, 0)
    try:
        os.write(fd, data)
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, FD_FLOOR)
    finally:
        os.close(fd)
    os.set_inheritable(high, True)
    return high


def _heal(ws: Workspace, record: TxRecord) -> None:
    """Put back a savepoint an interrupted run left (under the run lock)."""
    fresh = ws.get(record.id)
    stager = ws.stager(fresh)
    if stager is not None:
        with ws.locked(fresh, exclusive=True):
            heal(stager)


def _abort_quietly(ws: Workspace, tx_id: str) -> None:
    try:
        ws.abort(tx_id)
    except RoscoeError:
        pass


def _copy_layer(ws: Workspace, record: TxRecord, scratch: Workspace, fork: TxRecord) -> None:
    """Copy ``record``'s staged layer into ``fork``'s staging dir."""
    source = ws.stager(record)
    target = scratch.stager(fork, record.backend)
    assert source is not None and target is not None
    link = not isinstance(source, CopyStager)
    for src, dst in zip(layer_paths(source), layer_paths(target)):
        if os.path.lexists(src):
            clone(src, dst, link=link)


def _scratch_home(ws: Workspace) -> str:
    """A fresh state dir for a dry run; those of dead processes are removed."""
    base = os.path.join(ws.home.path, "dry-run")
    os.makedirs(base, mode=0o700, exist_ok=True)
    for name in os.listdir(base):
        pid = name.partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                remove_tree(os.path.join(base, name))
            except OSError:
                pass
    return os.path.join(base, f"{os.getpid()}-{os.urandom(4).hex()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
