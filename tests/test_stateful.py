"""Stateful model test of the transaction lifecycle over one small live tree.

A hypothesis state machine begins transactions and runs random op batches in
them (create, modify, delete, mkdir, symlink, chmod), commits, aborts and rolls
back, and edits the live tree directly behind roscoe's back, all through the
library (``Workspace.run``, ``journal.protocol.commit``, ``journal.protocol.rollback``,
``journal.verify``). A model predicts every outcome independently:

- the live tree: ``path -> state``, a state being ``("file", bytes, mode,
  mtime_ns)``, ``("dir", mode)`` or ``("symlink", target, mtime_ns)`` (every
  op sets explicit modes and unique mtimes; directory mtimes are not tracked);
- each open transaction: the live tree when it ran (its base), its view after
  the ops, and what its overlay's upper layer holds (the touched paths, and
  which re-created directories are opaque), by kernel overlayfs's copy-up,
  whiteout and opaque-dir rules;
- the diff of a run: every path whose state differs between base and view;
- a commit (DESIGN.md, step 3): the change set is re-read from the upper layer
  against the live tree as it is now; if any changed path is not one the run's
  diff had, or its live state is not the base the run recorded, exit 3 and
  nothing changes; else the live tree takes the staged states;
- a rollback: exit 3 when any path the transaction wrote no longer holds what
  it wrote; else every such path goes back to its old state;
- verify: ok, except one `live` problem for each path some commit wrote whose
  live state is no longer the newest committed one (direct edits).

After every step the live tree must equal the model exactly and verify must
report exactly the predicted drift.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from journal.errors import CommitFailed, Conflict
from cowfs.stagers import remove_tree
from journal.opening import open_workspace
from journal.protocol import commit, rollback
from journal.rollback import AlreadyRolledBack
from journal.verify import verify
from tests.support.roscoe import Roscoe

# The same code applies an op batch inside a run (``python -c``) and to the
# live tree directly (exec'd here).
APPLY_SRC = r'''
import os, shutil

def apply_ops(ops, root):
    for op in ops:
        kind, path = op[0], os.path.join(root, op[1])
        if kind == "write":
            with open(path, "wb") as f:
                f.write(bytes.fromhex(op[2]))
            os.chmod(path, op[3])
            os.utime(path, ns=(op[4], op[4]))
        elif kind == "delete":
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        elif kind == "mkdir":
            os.mkdir(path)
            os.chmod(path, op[2])
        elif kind == "symlink":
            os.symlink(op[2], path)
            os.utime(path, ns=(op[3], op[3]), follow_symlinks=False)
        elif kind == "chmod":
            os.chmod(path, op[2])
        else:
            raise ValueError(op)
'''
RUN_SRC = APPLY_SRC + "\nimport json, sys\napply_ops(json.loads(sys.argv[1]), '.')\n"
_ns: dict[str, object] = {}
exec(APPLY_SRC, _ns)
apply_ops = _ns["apply_ops"]

TOP = ("a", "b", "c", "d", "e")
SUB = ("x", "y")
UNIVERSE = TOP + tuple(f"{t}/{s}" for t in TOP for s in SUB)
FILE_MODES = (0o600, 0o640, 0o644, 0o755)
DIR_MODES = (0o700, 0o750, 0o755)
TARGETS = ("a", "../a", "d/x", "nowhere")
CONTENTS = (b"", b"one", b"two\n", b"\x00\xff")
T0 = 1_700_000_000_000_000_000
INITIAL = {
    "a": ("file", b"alpha\n", 0o644, T0),
    "b": ("file", b"beta\n", 0o600, T0),
    "d": ("dir", 0o755),
    "d/x": ("file", b"x\n", 0o644, T0),
    "d/y": ("symlink", "../a", T0),
    "e": ("dir", 0o750),
}

State = tuple
Tree = dict


def parent(path: str) -> str:
    return path.rpartition("/")[0]


def ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def below(tree: Tree, path: str) -> list[str]:
    return [p for p in tree if p.startswith(path + "/")]


def diff(old: Tree, new: Tree) -> dict[str, tuple[State | None, State | None]]:
    return {p: (old.get(p), new.get(p)) for p in set(old) | set(new) if old.get(p) != new.get(p)}


def read_tree(root: str) -> Tree:
    """The live tree in the model's terms."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st_ = os.lstat(full)
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", os.readlink(full), st_.st_mtime_ns)
            elif stat.S_ISREG(st_.st_mode):
                with open(full, "rb") as f:
                    out[rel] = ("file", f.read(), stat.S_IMODE(st_.st_mode), st_.st_mtime_ns)
            else:
                out[rel] = ("other", stat.S_IFMT(st_.st_mode))
    return out


def fingerprint(state: State | None) -> tuple[object, ...] | None:
    """What the library's Entry says of a model state (hash instead of bytes)."""
    if state is None:
        return None
    if state[0] == "file":
        return ("file", xxhash.xxh3_128_hexdigest(state[1]), state[2], state[3])
    if state[0] == "symlink":
        return ("symlink", state[1], state[2])
    return state


def entry_fingerprint(entry: object) -> tuple[object, ...] | None:
    if entry is None:
        return None
    if entry.type == "file":
        return ("file", entry.hash, entry.mode, entry.mtime_ns)
    if entry.type == "symlink":
        return ("symlink", entry.target, entry.mtime_ns)
    return ("dir", entry.mode)


class Staged:
    """One transaction's run: its base, its view, and its upper layer."""

    def __init__(self, tx: str, base: Tree) -> None:
        self.tx = tx
        self.base = dict(base)
        self.view = dict(base)
        self.touched: set[str] = set()   # paths in the upper layer (whiteouts included)
        self.opaque: set[str] = set()    # re-created directories (opaque in the upper layer)

    def lower_visible(self, path: str) -> bool:
        return path in self.base and not any(a in self.opaque for a in ancestors(path))

    def apply(self, op: list[object]) -> None:
        kind, path = op[0], str(op[1])
        view = self.view
        self.touched.update(ancestors(path))           # copy-up of the parents
        if kind == "write":
            view[path] = ("file", bytes.fromhex(str(op[2])), op[3], op[4])
            self.touched.add(path)
        elif kind == "symlink":
            view[path] = ("symlink", op[2], op[3])
            self.touched.add(path)
        elif kind == "chmod":
            view[path] = (*view[path][:-2], op[2], view[path][-1]) if view[path][0] == "file" else ("dir", op[2])
            self.touched.add(path)                      # copy-up of the path itself
        elif kind == "mkdir":
            if path in self.touched:                    # over a whiteout: opaque
                self.opaque.add(path)
            view[path] = ("dir", op[2])
            self.touched.add(path)
        elif kind == "delete":
            for child in below(view, path):
                del view[child]
                self.touched.discard(child)
                self.opaque.discard(child)
            del view[path]
            self.opaque.discard(path)
            if self.lower_visible(path):
                self.touched.add(path)                  # whiteout
            else:
                self.touched.discard(path)
        else:
            raise ValueError(op)

    def changes(self, live: Tree) -> dict[str, tuple[State | None, State | None]]:
        """The change set the upper layer makes against ``live`` (cowfs.changeset.compare)."""
        touches = {t: self.view.get(t) for t in self.touched}
        for o in self.opaque:
            for child in live:
                if parent(child) == o and child not in self.touched:
                    touches[child] = None
        out: dict[str, tuple[State | None, State | None]] = {}
        for t, new in touches.items():
            old = live.get(t)
            if old == new:
                continue
            out[t] = (old, new)
            if old is not None and old[0] == "dir" and (new is None or new[0] != "dir"):
                for child in below(live, t):
                    out[child] = (live[child], None)
        return out


def feasible(live: Tree, targets: dict[str, State | None]) -> bool:
    """Whether cowfs.converge can bring ``targets`` about in ``live`` without
    touching any other path: a directory it removes must be left empty, a path
    it creates must have a directory to go in."""
    cur = dict(live)
    order = sorted(targets, key=os.fsencode)
    for path in reversed(order):
        now, want = cur.get(path), targets[path]
        if now is not None and (want is None or now[0] != want[0]):
            if now[0] == "dir" and below(cur, path):
                return False
            del cur[path]
    for path in order:
        want = targets[path]
        if want is None:
            continue
        up = parent(path)
        if up and (up not in cur or cur[up][0] != "dir"):
            return False
        cur[path] = want
    return True


def apply_changes(live: Tree, changes: dict[str, tuple[State | None, State | None]]) -> None:
    for path, (_, new) in changes.items():
        if new is None:
            live.pop(path, None)
        else:
            live[path] = new


class TransactionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = tempfile.mkdtemp(prefix="roscoe-stateful-")
        self.root = os.path.join(self.base, "live")
        os.mkdir(self.root)
        self.live: Tree = dict(INITIAL)
        for path in sorted(INITIAL, key=os.fsencode):
            state = INITIAL[path]
            if state[0] == "dir":
                apply_ops([["mkdir", path, state[1]]], self.root)
            elif state[0] == "file":
                apply_ops([["write", path, state[1].hex(), state[2], state[3]]], self.root)
            else:
                apply_ops([["symlink", path, state[1], state[2]]], self.root)
        self.ws = open_workspace(os.path.join(self.base, "home"))
        self.clock = T0
        self.open: list[Staged] = []
        # committed transactions (rollbacks included): tx -> {path: (old, new)}
        self.committed: dict[str, dict[str, tuple[State | None, State | None]]] = {}
        self.written: dict[str, State | None] = {}    # newest committed state of every path
        self.rolled_back: dict[str, str] = {}         # tx -> its newest committed rollback
        self.log: list[str] = []

    def teardown(self) -> None:
        self.ws.close()
        remove_tree(self.base)

    def tick(self) -> int:
        self.clock += 1_000_000_007
        return self.clock

    # -- op batches ------------------------------------------------------------

    def draw_op(self, data: st.DataObject, tree: Tree) -> list[object]:
        absent = [p for p in UNIVERSE if p not in tree and (not parent(p) or tree.get(parent(p), ("",))[0] == "dir")]
        files = [p for p in tree if tree[p][0] == "file"]
        chmoddable = [p for p in tree if tree[p][0] in ("file", "dir")]
        kinds = []
        if absent:
            kinds += ["create", "mkdir", "symlink"]
        if files:
            kinds.append("modify")
        if tree:
            kinds.append("delete")
        if chmoddable:
            kinds.append("chmod")
        kind = data.draw(st.sampled_from(kinds), label="op")
        if kind in ("create", "modify"):
            path = data.draw(st.sampled_from(sorted(absent if kind == "create" else files)), label="path")
            content = data.draw(st.sampled_from(CONTENTS), label="content")
            mode = data.draw(st.sampled_from(FILE_MODES), label="mode")
            return ["write", path, content.hex(), mode, self.tick()]
        if kind == "mkdir":
            return ["mkdir", data.draw(st.sampled_from(sorted(absent)), label="path"),
                    data.draw(st.sampled_from(DIR_MODES), label="mode")]
        if kind == "symlink":
            return ["symlink", data.draw(st.sampled_from(sorted(absent)), label="path"),
                    data.draw(st.sampled_from(TARGETS), label="target"), self.tick()]
        if kind == "delete":
            return ["delete", data.draw(st.sampled_from(sorted(tree)), label="path")]
        path = data.draw(st.sampled_from(sorted(chmoddable)), label="path")
        modes = DIR_MODES if tree[path][0] == "dir" else FILE_MODES
        return ["chmod", path, data.draw(st.sampled_from(modes), label="mode")]

    def draw_batch(self, data: st.DataObject, tree: Tree, most: int) -> list[list[object]]:
        scratch = Staged("", tree)
        ops = []
        for _ in range(data.draw(st.integers(1, most), label="ops")):
            op = self.draw_op(data, scratch.view)
            scratch.apply(op)
            ops.append(op)
        return ops

    # -- rules -------------------------------------------------------------------

    @initialize(data=st.data())
    def first_transaction(self, data: st.DataObject) -> None:
        """Every example starts with one staged transaction, so that commits,
        conflicts and rollbacks come early in the few steps there are."""
        self.begin_and_run(data)

    @precondition(lambda self: len(self.open) < 3)
    @rule(data=st.data())
    def begin_and_run(self, data: st.DataObject) -> None:
        ops = self.draw_batch(data, self.live, 4)
        tx = self.ws.begin(self.root).id
        staged = Staged(tx, self.live)
        for op in ops:
            staged.apply(op)
        self.log.append(f"run {tx}: {ops}")
        done = self.ws.run(tx, [sys.executable, "-c", RUN_SRC, json.dumps(ops)], cwd=self.root)
        assert done.exit_code == 0, (ops, done)
        want = {p: (fingerprint(o), fingerprint(n)) for p, (o, n) in diff(staged.base, staged.view).items()}
        got = {c.path: (entry_fingerprint(c.old), entry_fingerprint(c.new)) for c in done.changes.changes}
        assert got == want, f"the run's diff is not the model's: ops {ops}"
        self.open.append(staged)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def commit_open(self, data: st.DataObject) -> None:
        staged = self.open[data.draw(st.integers(0, len(self.open) - 1), label="tx")]
        recorded = diff(staged.base, staged.view)
        changes = staged.changes(self.live)
        moved = sorted(p for p, (old, _) in changes.items() if p not in recorded or recorded[p][0] != old)
        self.log.append(f"commit {staged.tx}: expect {'conflict ' + str(moved) if moved else 'ok'}")
        event("commit: conflict" if moved else "commit: applied")
        if moved:
            with pytest.raises(Conflict):
                commit(self.ws, staged.tx)
            assert self.ws.get(staged.tx).state == "open"
            return
        assert feasible(self.live, {p: new for p, (_, new) in changes.items()}), "model: a clean commit must apply"
        record = commit(self.ws, staged.tx)
        assert record.state == "committed"
        self.check_journaled(record.id, changes)
        self.open.remove(staged)
        apply_changes(self.live, changes)
        self.record(staged.tx, changes)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def abort_open(self, data: st.DataObject) -> None:
        staged = self.open.pop(data.draw(st.integers(0, len(self.open) - 1), label="tx"))
        self.log.append(f"abort {staged.tx}")
        assert self.ws.abort(staged.tx).state == "aborted"

    @precondition(lambda self: bool(self.committed))
    @rule(data=st.data())
    def rollback_committed(self, data: st.DataObject) -> None:
        tx = data.draw(st.sampled_from(list(self.committed)), label="committed tx")
        wrote = self.committed[tx]
        before = {r.id for r in self.ws.journal.list_tx()}
        standing = self.rolled_back.get(tx)
        if standing is not None and standing not in self.rolled_back:
            # Its newest rollback stands (was not itself rolled back): refused as such.
            self.log.append(f"rollback {tx}: expect already rolled back by {standing}")
            event("rollback: already rolled back")
            with pytest.raises(AlreadyRolledBack, match=f"already rolled back by {standing}"):
                rollback(self.ws, tx)
            assert {r.id for r in self.ws.journal.list_tx()} == before
            return
        moved = sorted(p for p, (_, new) in wrote.items() if self.live.get(p) != new)
        self.log.append(f"rollback {tx}: expect {'conflict ' + str(moved) if moved else 'ok'}")
        if moved:
            event("rollback: conflict")
            with pytest.raises(Conflict):
                rollback(self.ws, tx)
            assert {r.id for r in self.ws.journal.list_tx()} == before, "a refused rollback must leave no transaction"
            return
        changes = {p: (self.live.get(p), old) for p, (old, _) in wrote.items() if self.live.get(p) != old}
        if not feasible(self.live, {p: new for p, (_, new) in changes.items()}):
            # Undoing it would have to remove or recreate a path it never wrote
            # (a directory that gained an entry, a parent that is gone): it must
            # fail with the live tree untouched. (The exit code the contract
            # wants there, 3, is pinned by test_rollback_refuses_* below.)
            self.log.append("  (cannot be applied without touching other paths)")
            event("rollback: cannot be applied exactly")
            with pytest.raises((Conflict, CommitFailed)):
                rollback(self.ws, tx)
            for record in self.ws.journal.list_tx():
                if record.rolls_back == tx and record.id not in before:
                    assert record.state == "aborted", record
            return
        event("rollback: applied")
        record = rollback(self.ws, tx)
        assert record.state == "committed" and record.rolls_back == tx
        self.rolled_back[tx] = record.id
        self.check_journaled(record.id, changes)
        apply_changes(self.live, changes)
        self.record(record.id, changes)

    @rule(data=st.data())
    def edit_live(self, data: st.DataObject) -> None:
        ops = self.draw_batch(data, self.live, 2)
        self.log.append(f"live edit: {ops}")
        apply_ops(ops, self.root)
        scratch = Staged("", self.live)
        for op in ops:
            scratch.apply(op)
        self.live = scratch.view

    def check_journaled(self, tx: str, changes: dict[str, tuple[State | None, State | None]]) -> None:
        """The journal holds exactly the predicted change set, old and new states."""
        rows = {r.path: (entry_fingerprint(r.old), entry_fingerprint(r.new)) for r in self.ws.journal.changes(tx)}
        assert rows == {p: (fingerprint(o), fingerprint(n)) for p, (o, n) in changes.items()}, self.log

    def record(self, tx: str, changes: dict[str, tuple[State | None, State | None]]) -> None:
        self.committed[tx] = changes
        for path, (_, new) in changes.items():
            self.written[path] = new

    # -- invariants --------------------------------------------------------------

    @invariant()
    def live_tree_is_the_model(self) -> None:
        got = read_tree(self.root)
        assert got == self.live, (
            f"live tree differs from the model at {sorted(diff(self.live, got))}; steps: {self.log}")

    @invariant()
    def verify_reports_exactly_the_drift(self) -> None:
        drift = sorted(p for p, state in self.written.items() if self.live.get(p) != state)
        if drift:
            event("verify: drift")
        report = verify(self.ws)
        got = sorted((p.kind, p.path) for p in report.problems)
        assert got == [("live", p) for p in drift], (got, drift, self.log)


TransactionMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_transactions_against_a_model = TransactionMachine.TestCase


# -- what the model leaves to these: rollbacks that cannot be done exactly ------


def stage_and_commit(roscoe: Roscoe, root: Path, script: str) -> str:
    tx = roscoe.begin(root)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=root)
    assert done.returncode == 0, done.stderr
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    return tx


def snap(root: Path) -> Tree:
    return read_tree(os.fspath(root))


def test_rollback_refuses_when_a_dir_it_would_remove_gained_an_entry(roscoe: Roscoe, tmp_path: Path) -> None:
    """tx X adds dir d with d/x; someone then adds d/g directly. Rolling X back
    cannot remove d without deleting d/g, which X never wrote: the live tree
    changed under it, a conflict (exit 3), nothing written."""
    root = tmp_path / "live"
    root.mkdir()
    tx = stage_and_commit(roscoe, root, "mkdir d && echo x > d/x")
    (root / "d" / "g").write_text("not roscoe's\n")
    before = snap(root)
    done = roscoe("tx", "rollback", tx, "--yes")
    assert snap(root) == before
    assert done.returncode == 3, done.stderr


def test_rollback_refuses_when_the_parent_of_a_path_it_would_restore_is_gone(
    roscoe: Roscoe, tmp_path: Path,
) -> None:
    """tx X deletes k/x; someone then removes the dir k directly. Rolling X
    back cannot restore k/x without inventing k: a conflict (exit 3)."""
    root = tmp_path / "live"
    (root / "k").mkdir(parents=True)
    (root / "k" / "x").write_text("x\n")
    tx = stage_and_commit(roscoe, root, "rm k/x")
    os.rmdir(root / "k")
    before = snap(root)
    done = roscoe("tx", "rollback", tx, "--yes")
    assert snap(root) == before
    assert done.returncode == 3, done.stderr
