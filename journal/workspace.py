"""The transaction lifecycle over one state dir: begin, run, diff, show, list, abort.

``Workspace`` ties the journal (what happened) to the stagers and sandbox of
``cowfs`` (where it happened). The CLI calls one method per command.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from collections import namedtuple

from cowfs import durable, livetree
from cowfs.changeset import Change, ChangeSet, Move, compare
from cowfs.errors import LiveUnreadable, NoBackend, SandboxError, StateDirError, UsageError
from cowfs.paths import under
from cowfs.stagers import STAGERS, MetacopyOverlay, Stager, candidates, discard_staging, discarded, stager_for
from cowfs.upper import UnsupportedUpper
from journal.errors import (
    AbortNotJournaled, AmbiguousTransaction, NoSuchTransaction, RootError, StagingCorrupt, StagingDiscarded,
    StateDirFull, TransactionBusy, TransactionState,
)
from journal.faults import NONE, Faults
from journal.home import FULL, Home
from journal.settings import Settings
from journal.targets.base import BucketSettings, Context
from journal.store import ApprovalRecord, Journal, RunRecord, TxRecord, now_ns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowfs import sandbox
    from cowfs.hide import Hidden
    from journal.config import Config, RunRules
    from cowfs.bucketreads import BucketReads
    from cowfs.hashcache import HashCache
    from cowfs.patch import FilePatch
    from cowfs.savepoint import Savepoint
    from journal.approval import Status
    from journal.rules import Source

OPEN, ABORTED = "open", "aborted"


class RunResult(namedtuple(
    "_RunResult",
    "tx root run_id argv cwd backend exit_code timed_out started_ns ended_ns changes limits warnings"
    " hidden discarded stdout stderr",
    defaults=(None, (), (), (), None, None),
)):
    """How one run ended, and what the transaction stages after it; ``limits``
    (cowfs.limits.Enforced) says how its memory and process limits were kept;
    ``hidden`` lists the paths it could not see (cowfs.hide) and
    ``discarded`` the files it wrote that are gone with it (absolute: in its
    private /tmp, or under a hidden path that did not show); ``stdout`` and
    ``stderr`` the command's output when the Python API captured it, else None."""

    __slots__ = ()
    tx: str
    root: str
    run_id: int
    argv: list[str]
    cwd: str
    backend: str
    exit_code: int
    timed_out: bool
    started_ns: int
    ended_ns: int
    changes: ChangeSet
    limits: sandbox.Enforced | None
    warnings: tuple[str, ...]
    hidden: tuple[str, ...]
    discarded: tuple[str, ...]

    def report(self) -> dict[str, object]:
        return {
            "tx": self.tx, "root": self.root, "argv": self.argv, "cwd": self.cwd,
            "backend": self.backend, "exit_code": self.exit_code, "timed_out": self.timed_out,
            "started_ns": self.started_ns, "ended_ns": self.ended_ns,
            "duration_ms": round((self.ended_ns - self.started_ns) / 1e6, 3),
            "diff_hash": self.changes.diff_hash, "summary": self.changes.summary,
            "unsupported": [u.to_json() for u in self.changes.unsupported],
            "limits": self.limits.to_json() if self.limits is not None else None,
            "warnings": list(self.warnings),
            "hide": list(self.hidden), "discarded": list(self.discarded),
        }


class TxView(namedtuple("_TxView", "record runs changes approvals policy")):
    """Everything ``tx show`` tells about one transaction: ``policy`` is what
    the config says of its diff now (open transactions only)."""

    __slots__ = ()
    record: TxRecord
    runs: list[RunRecord]
    changes: ChangeSet | None
    approvals: list[ApprovalRecord]
    policy: Status | None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = self.record.to_json()
        out["runs"] = [r.to_json() for r in self.runs]
        out["diff"] = (
            {"diff_hash": self.changes.diff_hash, "summary": self.changes.summary,
             "counts": self.changes.counts(),
             "unsupported": [u.to_json() for u in self.changes.unsupported]}
            if self.changes is not None else None
        )
        out["approvals"] = [a.to_json() for a in self.approvals if a.kind == "approved"]
        out["approval_requests"] = [a.to_json() for a in self.approvals if a.kind == "requested"]
        out["rejections"] = [a.to_json() for a in self.approvals if a.kind == "rejected"]
        out["policy"] = self.policy.to_json() if self.policy is not None else None
        return out


def resolve_root(root: str | os.PathLike[str], home: Home) -> str:
    given = os.fspath(root)
    path = os.path.realpath(os.path.abspath(given))
    if not os.path.lexists(path):
        raise RootError(root=given, reason="does not exist")
    if not os.path.isdir(path):
        raise RootError(root=given, reason="is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise RootError(root=given, reason="is not readable")
    if path == "/":
        raise RootError(root=given, reason="the whole filesystem cannot be a root; name the tree to stage")
    keep_apart(given, home)
    return path


def keep_apart(root: str | os.PathLike[str], home: Home) -> None:
    """Refuse a root that is, holds or lies inside the state dir (paths
    resolved; neither needs to exist yet)."""
    given = os.fspath(root)
    path = os.path.realpath(os.path.abspath(given))
    state = os.path.realpath(home.path)
    if under(state, path) or under(path, state):
        raise RootError(root=given, reason=f"overlaps the state dir {home.path}")


class Workspace:
    def __init__(
        self, home: Home, journal: Journal, settings: Settings | None = None, *, faults: Faults | None = None,
        bucket: BucketSettings | None = None,
    ) -> None:
        """``settings`` (journal.settings): what the state dir is run with;
        ``faults`` and ``bucket``, when given, instead of the settings' own."""
        self.home = home
        self.journal = journal
        self.settings = settings if settings is not None else Settings.at(home.path)
        self.faults: Faults = faults or self.settings.faults or NONE
        self.bucket: BucketSettings = bucket or self.settings.bucket or BucketSettings()
        self.recovered: list[object] = []
        # What could not be told (a notify command that failed): said, never fatal.
        self.notices: list[str] = []

    @property
    def context(self) -> Context:
        """What the commit targets work with (``journal.targets``)."""
        return Context(self.home, self.journal, self.faults, self.bucket)

    @classmethod
    def open_to_abort(
        cls, ref: str, home: str | os.PathLike[str] | None = None, *, roots: tuple[str | os.PathLike[str], ...] = (),
        settings: Settings | None = None, faults: Faults | None = None, bucket: BucketSettings | None = None,
    ) -> Workspace:
        """``open``, for ``tx abort REF``: when the state dir is too full even to
        open the journal, REF's staged layer is discarded first (under its
        lock), which gives the space back, and then it is opened."""
        settings = _settings(home, settings, faults, bucket)
        try:
            return cls.open(roots=roots, settings=settings)
        except StateDirFull as full:
            resolved = Home.resolve(settings.home)
            tx_id = _staging_of(resolved, ref)
            if tx_id is None:
                raise
            with tx_locked(resolved, tx_id, exclusive=True):
                discard_staging(resolved.tx_dir(tx_id))
            try:
                return cls.open(roots=roots, settings=settings)
            except StateDirFull as still:
                raise AbortNotJournaled(tx=tx_id, reason=still.cause) from full

    @classmethod
    def open(
        cls, home: str | os.PathLike[str] | None = None, *, roots: tuple[str | os.PathLike[str], ...] = (),
        settings: Settings | None = None, faults: Faults | None = None, bucket: BucketSettings | None = None,
    ) -> Workspace:
        """The state dir ``home`` (else ``settings.home``), created if need be
        (recovery is the opener's: ``journal.opening.open_workspace``). A
        state dir that overlaps any of ``roots`` (those the caller is about to
        use) is refused before anything is created or opened in it."""
        settings = _settings(home, settings, faults, bucket)
        resolved = Home.resolve(settings.home)
        for root in roots:
            keep_apart(root, resolved)
        resolved.ensure()
        return cls(resolved, Journal(resolved.journal, settings.user, settings.caller), settings)

    def close(self) -> None:
        self.journal.close()

    def sources(self) -> list[Source]:
        """The config files in force now: the state dir's and those the
        settings name (``journal.rules``; read on each call)."""
        from journal.rules import in_force

        return in_force(self.home.path, self.settings.configs)

    def config(self) -> Config:
        """The rules of the config files in force now (``journal.rules``; read on each call)."""
        from journal.rules import strictest

        return strictest(None, self.sources())

    def rules(self, tx: TxRecord) -> Config:
        """What ``tx`` is held to: the rules recorded when it began, and any a
        config in force now adds (``journal.rules``)."""
        from journal.rules import decode, strictest

        return strictest(decode(tx.rules), self.sources())

    # -- lookup -----------------------------------------------------------------

    def get(self, ref: str) -> TxRecord:
        """The transaction named by ``ref``: a full id or a unique prefix of 4+ chars."""
        found = self.journal.get_tx(ref)
        if found is not None:
            return found
        matches = self.journal.match_tx(ref) if len(ref) >= 4 else []
        if len(matches) == 1:
            record = self.journal.get_tx(matches[0])
            assert record is not None
            return record
        if len(matches) > 1:
            raise AmbiguousTransaction(tx=ref, matches=", ".join(matches))
        raise NoSuchTransaction(tx=ref)

    def stager(self, tx: TxRecord, backend: str | None = None) -> Stager | None:
        """The transaction's stager. Callers hold the transaction's lock, so a
        savepoint found on an open transaction was left by a plan whose process
        died: it is put back first (see cowfs.savepoint)."""
        name = backend or tx.backend
        if tx.state == OPEN and discarded(self.home.tx_dir(tx.id)):
            raise StagingDiscarded(tx=tx.id)
        if not name:
            return None
        stager = stager_for(name, self.home.tx_dir(tx.id), tx.root)
        if tx.state == OPEN:
            from cowfs.savepoint import heal

            heal(stager)
            if os.path.exists(os.path.join(stager.tx_dir, "hide-guard.json")):  # cowfs.hide.GUARD
                from cowfs.hide import heal as settle_guard

                settle_guard(stager.tx_dir)  # left by a run that was killed
        return stager

    @contextmanager
    def locked(self, tx: TxRecord, *, exclusive: bool, aborting: bool = False) -> Iterator[TxRecord]:
        """One run at a time per transaction; diffs wait for no run. A run
        left without an end by a roscoe that died is settled first
        (``journal.interrupted``); yields ``tx``, read again if it was. An
        abort goes on when the journal is too full to record the settling."""
        settled = [tx]

        def settle() -> None:
            from journal.interrupted import settle as finish

            try:
                settled[0] = finish(self.home, self.journal, tx, self.compare, self.base_generations)
            except StateDirError:
                if not aborting:
                    raise

        # A run keeps the lock until its row has an end: a row without one is
        # a live run (the lock is held) or a dead one (it is free).
        dead = bool(self.journal.unended_runs(tx.id))
        with tx_locked(self.home, tx.id, exclusive=exclusive, settle=settle if dead else None):
            yield settled[0]

    def remove_tx_dir(self, tx_id: str) -> None:
        """Remove a finished transaction's staging dir (its lock file included)."""
        from cowfs.stagers import refuse_mounts, remove_tree

        refuse_mounts(self.home.tx_dir(tx_id))
        remove_tree(self.home.tx_dir(tx_id))

    def clean_finished(self) -> list[str]:
        """Remove staging dirs left by transactions that are no longer open
        (a crash right after a commit record leaves one)."""
        removed = []
        base = os.path.join(self.home.path, "tx")
        for tx_id in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            tx = self.journal.get_tx(tx_id)
            if tx is not None and tx.state in ("committed", ABORTED):
                stager = self.stager(tx)
                if stager is not None:
                    stager.after_run()
                self.remove_tx_dir(tx_id)
                removed.append(tx_id)
        return removed

    def leftovers(self) -> bool:
        """Whether a commit or rollback that died left anything for recovery
        (``journal.protocol.recover``): cheap when there is nothing."""
        blobs = os.path.join(self.home.path, "blobs")
        left = any(os.path.isdir(d) and os.listdir(d) for d in (f"{blobs}/.shared", f"{blobs}/.pins"))
        return left or bool(self.journal.in_state("committing"))

    def require_open(self, tx: TxRecord, action: str) -> None:
        if tx.state != OPEN:
            raise TransactionState(tx=tx.id, state=tx.state, action=action)

    # -- commands ---------------------------------------------------------------

    def check_invocable(
        self, root: str | os.PathLike[str], argv: list[str], env: Mapping[str, str] | None = None,
    ) -> str:
        """Resolve ``root`` and fail (127/126) now if ``argv[0]`` cannot run
        there with ``env``'s PATH (the run's environment; None: roscoe's own,
        which a run given none inherits)."""
        from cowfs import sandbox

        path = resolve_root(root, self.home)
        if argv:
            search = (os.environ if env is None else env).get("PATH")
            rootfs = self.rootfs(path)
            sandbox.precheck(argv[0], sandbox.sandbox_cwd(_cwd(), path, rootfs), path, search, rootfs)
        return path

    def begin(
        self, root: str | os.PathLike[str], message: str | None = None, target: str | None = None,
    ) -> TxRecord:
        """Open a transaction of ``root``. ``target`` (gs://BUCKET/PREFIX, else the
        config's ``[roots."ROOT"] target``) commits through the GCS API."""
        from journal.rules import encode, strictest

        path = resolve_root(root, self.home)
        sources = self.sources()
        if target is None and any(s.text is not None for s in sources):  # no config: no import of journal.config
            target = strictest(None, sources).root(path).target
        if target:
            from journal.targets import checked_url

            target = checked_url(target)
        record = new_record(path, message, user=self.journal.actor.user)._replace(target=target, rules=encode(sources))
        try:
            os.makedirs(self.home.tx_dir(record.id), mode=0o700)
        except OSError as e:
            if e.errno in FULL:
                raise self.home.full(e.errno, "no transaction was begun") from e
            raise
        try:
            self.journal.insert_tx(record)
        except StateDirError:
            os.rmdir(self.home.tx_dir(record.id))
            raise
        return record

    def run_rules(self, tx: TxRecord | None = None) -> RunRules | None:
        """The config's ``[run]`` rules for a run of ``tx`` (its rules,
        journal.rules), else of a new transaction (those in force now); None
        when there is no config at all."""
        from journal.rules import decode

        sources = self.sources() + ((decode(tx.rules) or []) if tx is not None else [])
        if not any(s.text is not None for s in sources):  # no config: no import of journal.config
            return None
        return (self.rules(tx) if tx is not None else self.config()).run

    def rootfs(
        self, root: str, tx: TxRecord | None = None, writable: tuple[str, ...] | list[str] = (),
    ) -> str | None:
        """The ``[run] rootfs`` image a run over ``root`` (of ``tx``, else of a
        new transaction) goes over, resolved and checked (cowfs.rootfs.check,
        a usage error before anything runs); None: the host's ``/``."""
        rules = self.run_rules(tx)
        if rules is None or rules.rootfs is None:
            return None
        from cowfs.rootfs import check

        rootfs = os.path.realpath(rules.rootfs)
        check(rootfs, root, writable)
        return rootfs

    def hidden(
        self, root: str, hide: tuple[str, ...] | list[str] = (), tx: TxRecord | None = None,
    ) -> tuple[Hidden, list[str]]:
        """The paths a run over ``root`` may not see (cowfs.hide): ``hide``
        and the config's ``[run] hide`` (``tx``'s rules, else those in force
        now); and a warning for each of ``hide`` outside the root that does
        not exist. The state dir, always hidden, is not among them."""
        from cowfs import hide as hiding

        given = hiding.resolve(hide, root) if hide else hiding.Hidden(root, (), ())
        rules = self.run_rules(tx)
        configured = rules.hide if rules is not None else ()
        merged = given.merge(hiding.resolve(configured, root, option="[run] hide")) if configured else given
        state = os.path.realpath(self.home.path)
        merged = merged._replace(outside=tuple(p for p in merged.outside if not under(p, state)))
        warnings = [f"--hide {p}: does not exist; nothing to hide there" for p in hiding.missing_outside(given)]
        return merged, warnings

    def run(
        self, ref: str, argv: list[str], *, cwd: str | None = None,
        env: dict[str, str] | None = None, network: bool = True, timeout: float | None = None,
        limits: sandbox.Limits | None = None, writable: tuple[str, ...] | list[str] = (),
        savepoint: Savepoint | None = None, pass_fds: tuple[int, ...] = (),
        hide: tuple[str, ...] | list[str] = (), stdio: tuple[int, int, int] = (0, 1, 2),
        over_host: bool = False,
    ) -> RunResult:
        """Run ``argv`` in the transaction's overlay, over the config's ``[run]
        rootfs`` (cowfs.rootfs) when it names one and ``over_host`` is False
        (the plan applier, roscoe's own code, runs over the host's ``/``, whose
        python it needs), else over the host's ``/``. ``limits`` caps memory and
        processes; ``writable`` paths outside the root are bound read-write;
        ``hide`` paths (and the config's ``[run] hide``) are hidden from it
        (cowfs.hide); ``pass_fds`` reach the command (no other fd of
        roscoe's above 2 does), whose stdin, stdout and stderr are ``stdio``. With a ``savepoint`` (cowfs.savepoint), a run
        that exits non-zero leaves the staged layer, and the bases, exactly
        as they were."""
        from cowfs import hide as hiding, sandbox

        if limits is None:
            limits = sandbox.NO_LIMITS
        if not argv:
            raise UsageError(detail="no command given")
        tx = self.get(ref)
        self.require_open(tx, "run")
        if tx.rolls_back:
            raise UsageError(detail=f"transaction {tx.id} is the rollback of {tx.rolls_back}: it runs no commands;"
                                    f" approve it, or abort it and roll back again")
        binds = sandbox.writable_binds(tuple(writable), tx.root, self.home.path)
        hidden, hide_warnings = self.hidden(tx.root, hide, tx)
        hiding.check_writable(hidden, writable)
        rootfs = None if over_host else self.rootfs(tx.root, tx, writable)
        env = dict(os.environ if env is None else env)  # none given: roscoe's own, as subprocess does
        inner_cwd = sandbox.sandbox_cwd(_cwd() if cwd is None else cwd, tx.root, rootfs)
        if not os.path.isdir(tx.root):
            raise RootError(root=tx.root, reason="no longer exists")
        sandbox.precheck(argv[0], inner_cwd, tx.root, env.get("PATH"), rootfs)
        env["ROSCOE_TX"] = tx.id
        env["ROSCOE_ROOT"] = tx.root
        with self.locked(tx, exclusive=True) as tx:
            if discarded(self.home.tx_dir(tx.id)):
                raise StagingDiscarded(tx=tx.id)
            self.release_links(tx)
            candidates = self._candidates(tx)
            run_id = self.journal.start_run(tx.id, argv, inner_cwd, candidates[0], hide=hidden.paths())
            started = now_ns()
            failures: list[str] = []
            tx_dir = self.home.tx_dir(tx.id)
            guard = hiding.Guard(tx_dir)
            dropped: list[str] = []
            for name in candidates:
                if name != candidates[0]:  # so that a run whose roscoe dies names the layer it wrote
                    self.journal.set_run_backend(run_id, name)
                stager = stager_for(name, tx_dir, tx.root)
                try:
                    stager.prepare()
                    if savepoint is not None:
                        savepoint.take(stager)
                    stager.before_run()
                    layout = hiding.layout_of(stager)
                    masks, absent = hiding.masks(hidden, layout)
                    guard.take(layout, absent)
                    outcome = sandbox.run(
                        argv, root=tx.root, mount_args=stager.mount_args(), cwd=inner_cwd,
                        env=env, probe=tx.backend is None, network=network, timeout=timeout,
                        limits=limits, binds=binds, hidden=(os.path.realpath(self.home.path),), pass_fds=pass_fds, stdio=stdio,
                        masks=masks, scratch=tx_dir, bwrap=self.settings.bwrap, rootfs=rootfs,
                    )
                except NoBackend as e:
                    failures.append(f"{name}: {e.fields.get('detail')}")
                    continue
                except SandboxError:
                    self.journal.end_run(run_id, 125, None, None, None, name)
                    raise
                finally:
                    stager.after_run()
                    dropped = guard.settle()
                if outcome.started:
                    break
                failures.append(f"{name}: {outcome.error or 'sandbox setup failed'}")
                if tx.backend is not None:
                    self.journal.end_run(run_id, 125, None, None, None, name)
                    raise SandboxError(detail=f"{outcome.error or 'bwrap failed'}{_hint()}")
                stager.discard()
            else:
                self.journal.end_run(run_id, 125, None, None, None, candidates[-1])
                raise NoBackend(root=tx.root, detail="; ".join(failures) + _hint())
            if tx.backend is None:
                self.journal.set_backend(tx.id, stager.name)
            restored = savepoint is not None and savepoint.settle(outcome.exit_code)
            changes = self.compare(tx, stager)
            generations = None if restored or not tx.target else self.base_generations(tx, changes)
            warnings: tuple[str, ...] = tuple(hide_warnings)
            if generations is not None and changes.changes and not generations:
                warnings += (f"{tx.target}: the bucket could not be read when the run ended, so the object"
                            " generations a commit is conditional on were not recorded; the commit will"
                            " refuse (exit 3) until a later run records them",)
            self.journal.end_run(
                run_id, outcome.exit_code, changes.diff_hash, len(changes.changes),
                None if restored else {c.path: c.old for c in changes.changes}, stager.name,
                generations=generations,
            )
        lost = tuple(os.path.join("/tmp", p) for p in outcome.discarded)
        lost += tuple(os.path.join(tx.root, p) for p in dropped)
        return RunResult(
            tx.id, tx.root, run_id, argv, inner_cwd, stager.name, outcome.exit_code,
            outcome.timed_out, started, now_ns(), changes, outcome.enforced, warnings,
            tuple(hidden.paths()), lost,
        )

    def base_generations(self, tx: TxRecord, changes: ChangeSet) -> dict[str, dict[str, int]] | None:
        """The object generations of a GCS target's changed paths, the base its commit is conditional on."""
        from journal.targets import target_of

        return target_of(self.context, tx).base_generations([c.path for c in changes.changes])

    def release_links(self, tx: TxRecord) -> None:
        """A commit that died after linking staged files into the blob store
        leaves them listed: unlink them before a run can write into a blob."""
        links = self.home.linked_images(tx.id)
        if os.path.exists(links):
            from journal.images import blob_store, release_links

            release_links(blob_store(self.home.path), self.stager(tx), links)

    def _candidates(self, tx: TxRecord) -> list[str]:
        if tx.backend:
            return [tx.backend]
        forced = self.settings.backend
        if forced:
            if forced not in STAGERS:
                raise UsageError(detail=f"ROSCOE_BACKEND={forced}: expected one of {', '.join(STAGERS)}")
            if forced == MetacopyOverlay.name and not tx.target:
                raise UsageError(detail=f"ROSCOE_BACKEND={forced}: only for a bucket target (--target gs://...)")
            return [forced]
        return list(candidates(bucket=bool(tx.target)))

    def hash_cache(self, tx: TxRecord) -> HashCache:
        """The hashes this transaction's comparisons remember (``cowfs.hashcache``)."""
        from cowfs.hashcache import HashCache

        return HashCache.load(self.home.hash_cache(tx.id), lambda: not durable.is_fuse(tx.root))

    def compare(
        self, tx: TxRecord, stager: Stager | None, hashes: HashCache | None = None,
        bucket: BucketReads | None = None,
    ) -> ChangeSet:
        """The staged layer against the live tree. A failure to read the live
        tree is ``LiveUnreadable`` (the layer is fine); on a bucket target, a
        file the mount cannot read is read from the bucket (``bucket``)."""
        if stager is None:
            return ChangeSet(tx.root, ())
        if not os.path.isdir(tx.root):
            raise RootError(root=tx.root, reason="no longer exists")
        if hashes is None:
            hashes = self.hash_cache(tx)
        if bucket is None and tx.target:
            bucket = bucket_reads(tx)
        try:
            touches = stager.touches()
            if tx.target:
                # On a mount, a live file's hash is remembered by its object's generation (cowfs.hashcache).
                from cowfs.objectstates import ObjectStates

                touches = list(touches)
                hashes.objects = ObjectStates(tx.target, [t.rel for t in touches])
                if bucket is not None and bucket.hashes is None:
                    bucket.hashes = hashes
            changes = compare(tx.root, touches, hashes, None if bucket is None else bucket.entry)
        except (UnsupportedUpper, OSError) as e:
            raise StagingCorrupt(tx=tx.id, detail=str(e)) from e
        hashes.save()
        return changes.without_owners() if tx.target else changes

    def same_bytes(self, tx: TxRecord, stager: Stager | None) -> Callable[[Move], bool] | None:
        """Whether a move's file has the same bytes in the live tree (at its
        old path) and staged (at its new one), read byte for byte: the check
        that lets an exact move past ``when_deleting`` (journal.policy). For a
        rollback waiting for approval, the bytes it would put back."""
        if tx.rolls_back:
            from journal.targets import target_of

            committed = self.get(tx.rolls_back)
            return target_of(self.context, committed).same_bytes_back(self.journal.changes(committed.id))
        if stager is None:
            return None
        return lambda m: livetree.same_bytes(tx.root, m.source, stager.staged_path(m.dest))

    def staged_changes(self, tx: TxRecord) -> ChangeSet:
        """What the open ``tx`` would commit now: its staged layer against the live
        tree, or, for a rollback waiting for approval, what it would put back."""
        if tx.rolls_back:
            from journal.targets import target_of

            committed = self.get(tx.rolls_back)
            return target_of(self.context, committed).peek(committed, self.journal.changes(committed.id)).changes
        return self.compare(tx, self.stager(tx))

    def diff(self, ref: str) -> ChangeSet:
        """An open transaction's staged changes against the live tree; a
        committed one's changes as the journal recorded them."""
        tx = self.get(ref)
        if tx.state == "committed":
            return self.committed_changes(tx)
        self.require_open(tx, "diff")
        with self.locked(tx, exclusive=False) as tx:
            changes = self.staged_changes(tx)
        self.journal.log_event(tx.id, "diff", {"diff_hash": changes.diff_hash, "changes": len(changes.changes)})
        return changes

    def committed_changes(self, tx: TxRecord) -> ChangeSet:
        rows = self.journal.changes(tx.id)
        return ChangeSet(tx.root, tuple(Change(r.path, r.status, r.old, r.new) for r in rows))

    def patches(self, ref: str) -> list[FilePatch]:
        """The diff with unified text patches of every changed text file."""
        from cowfs.patch import MAX_TEXT, patches

        tx = self.get(ref)
        self.require_open(tx, "diff")
        bucket = bucket_reads(tx) if tx.target else None
        with self.locked(tx, exclusive=False) as tx:
            stager = self.stager(tx)
            changes = self.compare(tx, stager, bucket=bucket)
            self.journal.log_event(tx.id, "diff", {"diff_hash": changes.diff_hash, "changes": len(changes.changes), "patch": True})

            def new_bytes(rel: str) -> bytes | None:
                assert stager is not None
                with open(stager.staged_path(rel), "rb") as f:
                    return f.read(MAX_TEXT)

            def old_bytes(rel: str) -> bytes | None:
                try:
                    return livetree.read_bytes(tx.root, rel, MAX_TEXT)
                except LiveUnreadable:
                    if bucket is None:
                        raise
                    return bucket.read(rel, MAX_TEXT)

            return list(patches(changes.changes, old_bytes, new_bytes, changes.moves()))

    def show(self, ref: str) -> TxView:
        tx = self.get(ref)
        changes = verdict = None
        if tx.state == OPEN and os.path.isdir(tx.root):
            from journal.approval import status

            with self.locked(tx, exclusive=False) as tx:
                changes = self.staged_changes(tx)
                same_bytes = self.same_bytes(tx, None if tx.rolls_back else self.stager(tx))
                verdict = status(self.journal, tx, changes, self.rules(tx), same_bytes)
        elif tx.state == "committed":
            changes = self.committed_changes(tx)
        return TxView(tx, self.journal.runs(tx.id), changes, self.journal.approvals(tx.id), verdict)

    def list(self, state: str | None = None) -> list[TxRecord]:
        return self.journal.list_tx(state)

    def approval_states(self) -> dict[str, str]:
        """``pending``, ``approved`` or ``rejected`` for open transactions whose
        diff was requested, approved or rejected (from the journal; no diff
        is computed: see ``journal.approval.decided``)."""
        from journal.approval import decided

        out: dict[str, str] = {}
        for tx in self.journal.in_state(OPEN):
            outcome = decided(self.journal, tx.id).outcome
            if outcome is not None:
                out[tx.id] = outcome
        return out

    def run_counts(self) -> dict[str, int]:
        return self.journal.run_counts()

    def abort(self, ref: str) -> TxRecord:
        """Discard the staged changes, then journal the abort: discarding
        first gives the space back, so an abort works on a full state dir. If
        the journal still cannot be written (or the process dies between the
        two), the transaction stays open with its layer marked discarded
        (cowfs.stagers.DISCARDED): every other command says so, and the next
        abort finishes."""
        tx = self.get(ref)
        self.require_open(tx, "abort")
        with self.locked(tx, exclusive=True, aborting=True) as tx:
            discard_staging(self.home.tx_dir(tx.id))
            self.faults.checkpoint("abort-discarded")
            try:
                self.journal.set_state(tx.id, ABORTED)
            except StateDirError as e:
                raise AbortNotJournaled(tx=tx.id, reason=e.cause if isinstance(e, StateDirFull) else e.message) from e
            self.remove_tx_dir(tx.id)
        aborted = self.journal.get_tx(tx.id)
        assert aborted is not None
        return aborted


@contextmanager
def tx_locked(
    home: Home, tx_id: str, *, exclusive: bool, settle: Callable[[], None] | None = None,
) -> Iterator[None]:
    """The lock of one transaction: its staging dir's ``lock`` file, which
    names the pid of an exclusive holder. ``settle`` (a dead run to record)
    is called holding it exclusively, after which a reader holds it shared;
    a reader that finds other readers leaves the settling to a later holder."""
    tx_dir = home.tx_dir(tx_id)
    os.makedirs(tx_dir, mode=0o700, exist_ok=True)
    try:
        fd = os.open(os.path.join(tx_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in FULL:
            raise
        # No inode for the lock file: no process ever locked this
        # transaction, and none can now; an abort must still work.
        yield
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive or settle else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            if exclusive or settle is None or not _try_flock(fd, fcntl.LOCK_SH):
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise TransactionBusy(tx=tx_id, pid=owner) from None
            settle = None
        if exclusive or settle:
            os.ftruncate(fd, 0)
            try:
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            except OSError as e:  # the pid is for messages only
                if e.errno not in FULL:
                    raise
        if settle is not None:
            settle()
            if not exclusive and not _try_flock(fd, fcntl.LOCK_SH):
                raise TransactionBusy(tx=tx_id, pid="unknown")
        yield
    finally:
        os.close(fd)


def _staging_of(home: Home, ref: str) -> str | None:
    """The one staging dir ``ref`` names (a full id or a prefix of 4+ chars),
    found without the journal; None when there is not exactly one."""
    try:
        names = os.listdir(os.path.join(home.path, "tx"))
    except OSError:
        return None
    if ref in names:
        return ref
    found = [n for n in names if len(ref) >= 4 and n.startswith(ref)]
    return found[0] if len(found) == 1 else None


def new_record(root: str, message: str | None, rolls_back: str | None = None, *, user: str | None = None) -> TxRecord:
    """A new open transaction of ``root``, by the login user (``user``, else
    the password database's name of the uid: journal.audit) on this host."""
    from journal.audit import login_name

    now = now_ns()
    user = login_name(user)
    return TxRecord(
        id=os.urandom(6).hex(), root=root, message=message, state=OPEN, backend=None, user=user,
        host=os.uname().nodename, created_ns=now, updated_ns=now, rolls_back=rolls_back,
    )


def bucket_reads(tx: TxRecord) -> BucketReads:
    """What reads a bucket target's files its mount cannot (connecting only when it must)."""
    from cowfs.bucketreads import BucketReads

    return BucketReads(tx.target or "", tx.root)


def _try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _settings(
    home: str | os.PathLike[str] | None, settings: Settings | None, faults: Faults | None,
    bucket: BucketSettings | None,
) -> Settings:
    """``settings`` at the state dir ``home`` (when given), with ``faults``
    and ``bucket`` (when given); with no settings, ``home`` and every other
    knob at its default."""
    if settings is None:
        if home is None:
            raise TypeError("Workspace.open needs the state dir: home, or settings (journal.settings)")
        settings = Settings.at(home)
    elif home is not None:
        settings = settings._replace(home=os.path.abspath(os.fspath(home)))
    if faults is not None:
        settings = settings._replace(faults=faults)
    if bucket is not None:
        settings = settings._replace(bucket=bucket)
    return settings


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None


def _hint() -> str:
    from cowfs.sandbox import userns_hint

    hint = userns_hint()
    return f" ({hint})" if hint else ""
