"""roscoe's commands as one object: ``Service(settings)`` has a method per
command (begin, run, plan, diff, show, list, approve, reject, wait, commit,
abort, rollback, log, recover, verify, audit, gc).

It opens the state dir on the first call that needs it (recovery runs then,
as on every open: ``journal.protocol.recover``), keeps it for the calls after, and
closes it on ``close`` or at the end of a ``with`` block. It returns the
result objects of ``journal`` and ``cowfs`` and never prints: the CLI
(``cli/``) and the Python API (``journal.api``) call it and say what they
like of the results.

    with Service(Settings.from_env(os.environ)) as roscoe:
        tx = roscoe.begin("/srv/tree", "reorganize")
        roscoe.run(tx.id, ["python3", "reorganize.py"])
        roscoe.commit(tx.id)
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Callable

from cowfs.errors import UsageError
from journal.settings import Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowfs.changeset import ChangeSet
    from cowfs.limits import Limits
    from cowfs.patch import FilePatch
    from cowfs.plan import Plan
    from cowfs.savepoint import Savepoint
    from journal.audit import Event
    from journal.planning import DryRun, PlanResult
    from journal.protocol import Recovered
    from journal.rollback import DryRun as RollbackDryRun
    from journal.store import ApprovalRecord, TxRecord
    from journal.verify import Report
    from journal.waiting import WaitResult
    from journal.workspace import RunResult, TxView, Workspace

Progress = Callable[[int, int], None]


class LogEntry(namedtuple("_LogEntry", "record changes rolled_back_by")):
    """One committed transaction of ``log()``: its record, its number of changed
    paths, and the rollback that undid it (None when none stands)."""

    __slots__ = ()
    record: TxRecord
    changes: int
    rolled_back_by: str | None

    def to_json(self) -> dict[str, object]:
        return dict(self.record.to_json(), changes=self.changes, rolled_back_by=self.rolled_back_by)


class Recovery(namedtuple("_Recovery", "recovered staging_removed")):
    """What ``recover()`` did: the interrupted commits it undid (journal.protocol.Recovered),
    and the transactions whose leftover staging dirs it removed."""

    __slots__ = ()
    recovered: list[Recovered]
    staging_removed: list[str]


class AuditTrail(namedtuple("_AuditTrail", "events head")):
    """The audit events asked for, oldest first, and the trail's head (seq, hash), None when empty."""

    __slots__ = ()
    events: list[Event]
    head: tuple[int, str] | None

    def to_json(self) -> dict[str, object]:
        return {
            "head": {"seq": self.head[0], "hash": self.head[1]} if self.head else None,
            "events": [e.to_json() for e in self.events],
        }


class Listing(namedtuple("_Listing", "records runs approvals")):
    """``list()``: the transactions, newest first, with their number of runs
    and their approval state (``journal.approval``) by id."""

    __slots__ = ()
    records: list[TxRecord]
    runs: dict[str, int]
    approvals: dict[str, str]

    def to_json(self) -> list[dict[str, object]]:
        return [dict(r.to_json(), runs=self.runs.get(r.id, 0), approval=self.approvals.get(r.id))
                for r in self.records]


STATES = ("open", "committing", "committed", "aborted")


class Service:
    """The commands over the state dir ``settings.home``. ``on_recovered`` is
    told of each interrupted commit that recovery undid when the state dir
    was opened (before the command's own work)."""

    def __init__(self, settings: Settings, *, on_recovered: Callable[[Recovered], None] | None = None) -> None:
        self.settings = settings
        self.on_recovered = on_recovered
        self._ws: Workspace | None = None

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            ws.close()

    # -- the state dir ------------------------------------------------------------

    def workspace(self, root: str | os.PathLike[str] | None = None, *, aborting: str | None = None) -> Workspace:
        """The state dir, opened (after recovery) on the first call. A state
        dir that overlaps ``root`` (the one the command names) or the
        settings' default root is refused before anything is created in it.
        For ``abort`` (``aborting``), a full state dir is given room first."""
        if self._ws is not None:
            return self._ws
        from journal.opening import open_workspace

        roots = tuple(r for r in (root, self.settings.root) if r)
        ws = self._ws = open_workspace(roots=roots, settings=self.settings, aborting=aborting)
        if self.on_recovered is not None:
            for r in ws.recovered:
                self.on_recovered(r)  # type: ignore[arg-type]
        return ws

    @property
    def home(self) -> str:
        """The state dir's path."""
        return self.workspace().home.path

    @property
    def notices(self) -> list[str]:
        """What could not be told (a notify command that failed): to be said, never fatal."""
        return list(self._ws.notices) if self._ws is not None else []

    def allow(self, command: str, *, tx: str | None = None, **named: object) -> None:
        """Refuse (exit 4) what the caller may not do (``journal.roles``): a
        client of ``roscoe serve``; a local command is the operator's. A
        transaction ``tx`` counts as a new one over its root would: an agent
        touches none over a root the config does not serve."""
        if self.settings.caller is None:
            return
        from journal.roles import authorize

        ws = self.workspace()
        if tx is not None:
            named["root"] = ws.get(tx).root
        authorize(self.settings.caller, ws.config(), command, **named)  # type: ignore[arg-type]

    def default_root(self, root: str | os.PathLike[str] | None) -> str:
        """``root``, else the settings' (``$ROSCOE_ROOT``)."""
        chosen = root or self.settings.root
        if not chosen:
            raise UsageError(detail="no root: pass --root DIR or set ROSCOE_ROOT")
        return os.fspath(chosen)

    # -- transactions -------------------------------------------------------------

    def get(self, ref: str) -> TxRecord:
        """The transaction ``ref`` names (an id, or a unique prefix of 4+ chars)."""
        return self.workspace().get(ref)

    def begin(
        self, root: str | os.PathLike[str] | None = None, message: str | None = None, target: str | None = None,
    ) -> TxRecord:
        """Open a transaction over ``root`` (default: the settings')."""
        ws = self.workspace(root)
        path = self.default_root(root)
        self.allow("tx begin", root=os.path.abspath(path), target=target)
        return ws.begin(path, message, target)

    def check_run(
        self, tx: str | None, root: str | None, argv: list[str], *,
        writable: tuple[str, ...] | list[str] = (), hide: tuple[str, ...] | list[str] = (),
    ) -> tuple[TxRecord | None, str]:
        """Before a run (``tx run``): the open transaction ``tx`` (whose root
        ``root``, when given, must be) and its root; or, without ``tx``, None
        and the root a new transaction would have, once ``argv`` is found
        invocable there and the ``writable`` and ``hide`` paths are found
        good, so that bad ones fail before a transaction exists."""
        from cowfs.hide import check_writable
        from cowfs.sandbox import writable_binds

        ws = self.workspace(root)
        if tx:
            self.allow("tx run", tx=tx, writable=writable)
        else:
            self.allow("tx run", root=os.path.abspath(self.default_root(root)), writable=writable)
        if tx:
            record = ws.get(tx)
            if root and os.path.realpath(root) != record.root:
                raise UsageError(detail=f"--root {root} is not the root of tx {record.id} ({record.root})")
            ws.require_open(record, "run")
            writable_binds(writable, record.root, ws.home.path)
            return record, record.root
        path = ws.check_invocable(self.default_root(root), argv)
        writable_binds(writable, path, ws.home.path)
        check_writable(ws.hidden(path, hide)[0], writable)
        return None, path

    def run(
        self, ref: str, argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
        network: bool = True, timeout: float | None = None, limits: Limits | None = None,
        writable: tuple[str, ...] | list[str] = (), savepoint: Savepoint | None = None,
        pass_fds: tuple[int, ...] = (), hide: tuple[str, ...] | list[str] = (),
        stdio: tuple[int, int, int] = (0, 1, 2),
    ) -> RunResult:
        """Run ``argv`` in the transaction's overlay (``Workspace.run``)."""
        self.allow("tx run", tx=ref, writable=writable)
        return self.workspace().run(
            ref, argv, cwd=cwd, env=env, network=network, timeout=timeout, limits=limits, writable=writable,
            savepoint=savepoint, pass_fds=pass_fds, hide=hide, stdio=stdio)

    def stage_plan(
        self, plan: Plan | dict[str, object] | str | bytes, *, tx: str | None = None,
        root: str | os.PathLike[str] | None = None, message: str | None = None,
        on_begin: Callable[[TxRecord], None] | None = None, hide: tuple[str, ...] | list[str] = (),
    ) -> PlanResult:
        """Stage ``plan`` into the open transaction ``tx``, or a new one over
        ``root`` (``journal.planning.stage``)."""
        from journal import planning

        ws = self.workspace(root)
        if tx:
            self.allow("tx plan", tx=tx)
        else:
            self.allow("tx plan", root=os.path.abspath(self.default_root(root)))
        return planning.stage(ws, plan, tx=tx, root=None if root is None else os.fspath(root), message=message,
                              on_begin=on_begin, hide=hide)

    def dry_run_plan(
        self, plan: Plan | dict[str, object] | str | bytes, *, tx: str | None = None,
        root: str | os.PathLike[str] | None = None, hide: tuple[str, ...] | list[str] = (),
    ) -> DryRun:
        """The diff ``tx`` (or a new transaction over ``root``) would have after ``plan``; nothing is staged."""
        from journal import planning

        ws = self.workspace(root)
        if tx:
            self.allow("tx plan", tx=tx)
        else:
            self.allow("tx plan", root=os.path.abspath(self.default_root(root)))
        return planning.dry_run(ws, plan, tx=tx if tx is None else ws.get(tx).id,
                                root=None if root is None else os.fspath(root), hide=hide)

    def diff(self, ref: str) -> ChangeSet:
        """The transaction's hashed diff against the live tree."""
        self.allow("tx diff", tx=ref)
        return self.workspace().diff(ref)

    def patches(self, ref: str) -> list[FilePatch]:
        """Unified diffs of the transaction's changed text files."""
        self.allow("tx diff", tx=ref)
        return self.workspace().patches(ref)

    def show(self, ref: str) -> TxView:
        self.allow("tx show", tx=ref)
        return self.workspace().show(ref)

    def list(self, state: str | None = None) -> Listing:
        """Transactions (those in ``state``), newest first."""
        if state is not None and state not in STATES:
            raise UsageError(detail=f"--state {state}: expected one of {', '.join(STATES)}")
        self.allow("tx list")
        ws = self.workspace()
        return Listing(ws.list(state), ws.run_counts(), ws.approval_states())

    def approve(self, ref: str, diff_hash: str, by: str | None = None) -> ApprovalRecord:
        from journal.decisions import approve

        self.allow("tx approve", tx=ref)
        return approve(self.workspace(), ref, diff_hash, by)

    def reject(self, ref: str, by: str, reason: str | None = None) -> ApprovalRecord:
        from journal.decisions import reject

        self.allow("tx reject", tx=ref)
        return reject(self.workspace(), ref, by, reason)

    def wait(self, ref: str, timeout: float | None = None) -> WaitResult:
        from journal.waiting import wait

        self.allow("tx wait", tx=ref)
        return wait(self.workspace(), ref, timeout)

    def abort(self, ref: str) -> TxRecord:
        """Discard the transaction's staged changes (a state dir too full to
        open is given room first)."""
        ws = self.workspace(aborting=ref)
        self.allow("tx abort", tx=ref)
        return ws.abort(ref)

    def commit(self, ref: str, *, progress: Progress | None = None) -> TxRecord:
        """Commit the transaction atomically; its record, now committed."""
        from journal.protocol import commit

        self.allow("tx commit", tx=ref)
        return commit(self.workspace(), ref, progress=progress)

    def rollback(self, ref: str, *, force: bool = False, progress: Progress | None = None) -> TxRecord:
        """Roll back the committed transaction ``ref``; the rollback transaction, committed."""
        from journal.bucketlog import or_imported
        from journal.protocol import rollback

        self.allow("tx rollback", tx=ref)
        ws = self.workspace()
        or_imported(ws, ref)  # (committed by another machine to a bucket this one knows)
        return rollback(ws, ref, force=force, progress=progress)

    def rollback_dry_run(self, ref: str) -> RollbackDryRun:
        """What a rollback of ``ref`` would apply now; nothing is staged or written."""
        from journal.bucketlog import or_imported
        from journal.rollback import dry_run

        self.allow("tx rollback --dry-run", tx=ref)
        ws = self.workspace()
        or_imported(ws, ref)
        return dry_run(ws, ref)

    # -- history and upkeep -----------------------------------------------------------

    def entry(self, ref: str) -> LogEntry:
        """The transaction ``ref`` as ``log()`` lists it."""
        self.allow("tx log", tx=ref)
        ws = self.workspace()
        record = ws.get(ref)
        return LogEntry(record, ws.journal.change_count(record.id), ws.journal.rolled_back_by().get(record.id))

    def log(self, target: str | None = None) -> list[LogEntry]:
        """The committed history, newest first (rollbacks included); with
        ``target`` (gs://BUCKET/PREFIX), that target's, read from the journal
        in its bucket (whichever machine committed it)."""
        self.allow("tx log")
        ws = self.workspace()
        records = ws.journal.committed()
        if target is not None:
            from journal.bucketlog import import_target
            from journal.targets.bucket import canonical

            import_target(ws, target)
            url = canonical(target)
            records = [r for r in ws.journal.committed() if r.target == url]
        counts = {r.id: ws.journal.change_count(r.id) for r in records}
        undone = ws.journal.rolled_back_by()
        return [LogEntry(r, counts[r.id], undone.get(r.id)) for r in records]

    def recover(self, target: str | None = None) -> Recovery:
        """Undo any commit a crash interrupted (opening does: ``journal.protocol.recover``)
        and remove the staging dirs of finished transactions; with ``target``,
        also settle a commit to that bucket that another machine left in flight."""
        self.allow("recover")
        ws = self.workspace()
        found = list(ws.recovered)
        if target is not None:
            from journal.bucketlog import recover_target

            settled = recover_target(ws, target)
            if settled is not None:
                found.append(settled)
                if self.on_recovered is not None:
                    self.on_recovered(settled)
        return Recovery(found, ws.clean_finished())  # type: ignore[arg-type]

    def verify(self, *, live: bool = True, target: str | None = None) -> Report:
        """Every check; with ``target``, first read what other machines
        committed to it from its bucket, so their commits are checked too."""
        from journal.verify import verify

        self.allow("verify")
        ws = self.workspace()
        if target is None:
            return verify(ws, live=live)
        from journal.bucketlog import import_target, in_flight

        import_target(ws, target)
        report = verify(ws, live=live)
        return report._replace(problems=report.problems + in_flight(ws, target))

    def audit(self, tx: str | None = None, since_ns: int | None = None) -> AuditTrail:
        """The audit events (of ``tx``; at or after ``since_ns``), oldest first, and the trail's head."""
        self.allow("audit")
        ws = self.workspace()
        tx_id = ws.get(tx).id if tx is not None else None
        return AuditTrail(ws.journal.audit_events(tx_id, since_ns), ws.journal.audit_head())

    def gc(self, keep_days: float) -> dict[str, object]:
        """Drop the images no rollback can need any more (``journal.gc``)."""
        from journal.gc import gc

        if keep_days < 0:
            raise UsageError(detail="--keep-days must be 0 or more")
        self.allow("gc")
        return gc(self.workspace(), keep_days)
