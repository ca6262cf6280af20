"""Runs whose roscoe died: found by the next command and recorded as interrupted.

A run holds its transaction's lock (``Workspace.locked``) from before its
``runs`` row is written until after the row is ended, and the kernel drops
the lock with the process that held it. So a row with no end whose lock is
free belongs to a roscoe that was killed (SIGKILL, SIGTERM, a closed
terminal, an agent framework's timeout) while it ran a command, a plan or a
shell. The first command that takes the transaction's lock afterwards
settles it here, before it reads anything of the transaction:

1. the run's sandbox is killed if it outlived roscoe (one killed before bwrap
   armed ``--die-with-parent``: cowfs.sandbox.sweep), and a FUSE mount its
   stager left is taken down;
2. a plan's savepoint is put back: a plan stages all of itself or nothing;
3. the run is ended with no exit code (``"interrupted": true`` in ``tx show
   --json``) and an audit event ``run-interrupted``; what it staged stays
   staged, and a first run names the transaction's backend when its layer
   holds anything;
4. the bases the commit's conflict check compares the live tree with: a path
   an earlier run already has a base for keeps it (the live state when that
   run ended, so a live edit since then is still a conflict); a path only the
   dead run touched gets the live state now, as a run ending now would record
   it. The dead run recorded no live state of its own and none from before
   it is known; refusing to record one would only make the caller start a
   run (``tx run -- true``) that records these very bases.
"""

from __future__ import annotations

from collections.abc import Callable

from cowfs.changeset import ChangeSet
from cowfs.errors import RoscoeError
from journal.home import Home
from cowfs.upper import UnsupportedUpper
from journal.store import Journal, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowfs.stagers import Stager

Compare = Callable[[TxRecord, "Stager"], ChangeSet]
Generations = Callable[[TxRecord, ChangeSet], "dict[str, dict[str, int]] | None"]


def settle(home: Home, journal: Journal, tx: TxRecord, compare: Compare, generations: Generations) -> TxRecord:
    """Settle the runs of ``tx`` that have no end, whose roscoe is gone (the
    caller holds the transaction's lock exclusively); ``tx`` read again.
    ``compare`` and ``generations`` are the workspace's: the staged change
    set, and a bucket target's object generations now."""
    from cowfs import sandbox
    from cowfs.savepoint import heal
    from cowfs.stagers import stager_for

    tx_dir = home.tx_dir(tx.id)
    killed = sandbox.sweep(tx_dir)
    run_ids = journal.unended_runs(tx.id)
    fresh = journal.get_tx(tx.id)
    assert fresh is not None
    if not run_ids:
        return fresh
    last = next(r for r in reversed(journal.runs(tx.id)) if r.id == run_ids[-1])
    name = fresh.backend or last.backend
    stager = stager_for(name, tx_dir, fresh.root)
    detail: dict[str, object] = {"killed": len(killed)}
    try:
        stager.after_run()
        detail["plan_undone"] = heal(stager)
    except OSError as e:
        detail["problem"] = f"{tx_dir}: {e.strerror or e}"
    named = fresh.backend is None and _staged_anything(stager)
    changes = bases = gens = None
    if fresh.state == "open" and (fresh.backend or named) and "problem" not in detail:
        try:
            changes = compare(fresh, stager)
            known = journal.bases(tx.id)
            bases = {c.path: known[c.path] if c.path in known else c.old for c in changes.changes}
            if fresh.target and changes.changes:
                gens = _generations(journal, fresh, changes, set(known), generations)
        except RoscoeError as e:
            detail["problem"] = e.message
    elif fresh.state == "open":
        bases = {}  # nothing staged: nothing to check either
    journal.interrupt_runs(
        tx.id, run_ids, name, changes.diff_hash if changes is not None else None,
        len(changes.changes) if changes is not None else None, bases, gens,
        name if named else None, detail,
    )
    settled = journal.get_tx(tx.id)
    assert settled is not None
    return settled


def _staged_anything(stager: Stager) -> bool:
    """Whether a first run's stager holds anything a run staged."""
    try:
        return next(iter(stager.touches()), None) is not None
    except (OSError, UnsupportedUpper):
        return True  # something is there: the diff will say what is wrong with it


def _generations(
    journal: Journal, tx: TxRecord, changes: ChangeSet, known: set[str], generations: Generations,
) -> dict[str, dict[str, int]]:
    """A bucket target's base generations: those recorded for the paths an
    earlier run had bases for, the bucket's now for the others."""
    before = journal.base_generations(tx.id)
    now = generations(tx, changes) or {}
    out = {}
    for c in changes.changes:
        gens = before.get(c.path) if c.path in known else now.get(c.path)
        if gens is not None:
            out[c.path] = gens
    return out
