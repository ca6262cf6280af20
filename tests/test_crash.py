"""Crash tests of the commit protocol: kill roscoe at every step of a commit,
of a rollback and of recovery itself, and at random moments of a big commit.

The contract (DESIGN.md, "Commit protocol"): an interrupted commit is undone
by recovery (all-old: the live tree exactly as before it, the transaction
`open` again; an interrupted rollback: the tree as before the rollback, the
rollback transaction `aborted`); a crash after the commit record leaves the
commit in place (all-new). `roscoe recover` exits 6 when it undid something.

The crashes come from ``journal.faults``: ``ROSCOE_FAULT=STEP`` or ``STEP#N``
ends the process there, with ``os._exit(70)`` or (``ROSCOE_FAULT_ACTION=kill``)
a real SIGKILL. How many ``apply`` and ``undo`` steps the change set below
takes is measured once, at collection, by an uninterrupted commit and
rollback, so that every step is enumerated whatever ``cowfs.converge`` does.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import pytest

from cowfs.stagers import remove_tree
from journal.home import Home
from journal.opening import open_workspace
from journal.protocol import commit, rollback
from journal.store import Journal
from journal.verify import verify
from journal.workspace import Workspace
from tests.support.roscoe import Roscoe
from tests.support.system import gone_pid
from tests.support.trees import make_tree, snapshot

# How a faulted process ends, by ROSCOE_FAULT_ACTION.
STYLES = {"exit": ({}, 70), "kill": ({"ROSCOE_FAULT_ACTION": "kill"}, -signal.SIGKILL)}

# One change set over conftest.make_tree's tree with every kind of change:
# added, modified, deleted, type changed (symlink -> file, dir -> file,
# file -> dir), meta changed (file and dir modes), an added directory with a
# file in it, an added symlink, a deleted directory (non-UTF-8 name) with its
# file. Every mtime is fixed, so the same change committed in any copy of the
# tree gives the same bytes, modes and mtimes.
CHANGE = r'''
import os, shutil
T = 1_800_000_000_000_000_000

def put(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, ns=(T, T))

put("case1/new.txt", b"a new file\n")
put("case1/notes.md", b"# notes\nmore notes\n")
os.unlink("case1/old.tmp")
os.chmod("case2/script.sh", 0o700)
os.chmod("case1/Pleadings", 0o750)
os.unlink("case2/notes-link")
put("case2/notes-link", b"no longer a link\n")
os.rmdir("case2/empty")
put("case2/empty", b"no longer a dir\n", 0o600)
os.unlink("case2/intake form.txt")
os.mkdir("case2/intake form.txt")
os.chmod("case2/intake form.txt", 0o755)
put("case2/intake form.txt/page1.txt", b"page 1\n")
os.mkdir("new dir")
os.chmod("new dir", 0o750)
put("new dir/inside.txt", b"inside\n", 0o640)
os.symlink("Pleadings/complaint.txt", "case1/complaint-link")
os.utime("case1/complaint-link", ns=(T, T), follow_symlinks=False)
shutil.rmtree(b"odd \xff dir")
'''

Measured = namedtuple("Measured", "new apply_steps undo_steps")


def stage(home: Path | str, root: Path | str, script: str = CHANGE) -> str:
    """Begin a transaction over ``root`` and run ``script`` in it (in-process,
    for speed: the crashes below all happen in `roscoe` subprocesses)."""
    ws = open_workspace(home)
    try:
        tx = ws.begin(root)
        done = ws.run(tx.id, [sys.executable, "-c", script], cwd=os.fspath(root))
        assert done.exit_code == 0, done
        assert done.changes.changes, "the change staged nothing"
        return tx.id
    finally:
        ws.close()


@functools.cache
def measured() -> Measured:
    """``new`` (the tree after CHANGE is committed) and how many apply steps
    the commit and undo steps its undo take, from one uninterrupted commit and
    its rollback (a rollback converges the same paths to the same old states
    as the undo of a fully applied commit)."""
    base = tempfile.mkdtemp(prefix="roscoe-crash-measure-")
    try:
        root = make_tree(Path(base) / "live")
        old = snapshot(root)
        ws = open_workspace(os.path.join(base, "home"))
        try:
            tx = ws.begin(root)
            assert ws.run(tx.id, [sys.executable, "-c", CHANGE], cwd=os.fspath(root)).exit_code == 0
            applied: list[int] = []
            commit(ws, tx.id, progress=lambda done, total: applied.append(done))
            new = snapshot(root)
            undone: list[int] = []
            rollback(ws, tx.id, progress=lambda done, total: undone.append(done))
            assert snapshot(root) == old
        finally:
            ws.close()
        assert new != old and applied and undone
        return Measured(new, len(applied), len(undone))
    finally:
        remove_tree(base)


def commit_steps() -> list[str]:
    apply = [f"apply#{n}" for n in range(1, measured().apply_steps + 1)]
    return ["before-images", "after-images", "after-intent", *apply, "before-record", "after-record"]


def rollback_steps() -> list[str]:
    apply = [f"apply#{n}" for n in range(1, measured().undo_steps + 1)]
    return ["before-images", "after-images", "after-intent", *apply, "before-record", "after-record"]


def recovery_steps() -> list[str]:
    undo = [f"undo#{n}" for n in range(1, measured().undo_steps + 1)]
    return ["recover-start", *undo, "before-reopen"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "commit_step" in metafunc.fixturenames:
        metafunc.parametrize("commit_step", commit_steps())
    if "rollback_step" in metafunc.fixturenames:
        metafunc.parametrize("rollback_step", rollback_steps())
    if "recovery_step" in metafunc.fixturenames:
        metafunc.parametrize("recovery_step", recovery_steps())


# Steps at which nothing is journaled yet (recover finds nothing: exit 0) and
# the one after the commit point (the commit stands: exit 0, all-new).
BEFORE_INTENT = ("before-images", "after-images")
AFTER_RECORD = "after-record"


def temps(root: Path) -> list[bytes]:
    """Every `.roscoe-*` temp name left anywhere in the tree."""
    found = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith(b".roscoe-")]
    return found


def txs(home: Path) -> dict[str, dict[str, object]]:
    """Every transaction's record, read from the journal without recovering
    anything (every command recovers first, so `tx list` would hide a leftover)."""
    journal = Journal(os.path.join(home, "journal.db"))
    try:
        return {t.id: t.to_json() for t in journal.list_tx()}
    finally:
        journal.close()


def crash(roscoe: Roscoe, style: str, step: str, *args: str) -> None:
    env, code = STYLES[style]
    done = roscoe(*args, env={"ROSCOE_FAULT": step, **env})
    assert done.returncode == code, (step, done.returncode, done.stderr)


def assert_clean(
    roscoe: Roscoe, root: Path, expected: dict[str, tuple[object, ...]], what: str, *, cli: bool = True,
) -> None:
    """The tree is exactly ``expected``, holds no temp files, and verify passes
    (`roscoe verify`, or the library's verify when ``cli`` is false, for speed)."""
    assert temps(root) == []
    assert diff_keys(snapshot(root), expected) == {}, what
    assert shared_blobs(Path(roscoe.home)) == [], "a blob still shares its inode with a live file"
    if cli:
        checked = roscoe("verify", "--json")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert json.loads(checked.stdout)["ok"] is True
        return
    journal = Journal(os.path.join(roscoe.home, "journal.db"))
    try:
        report = verify(Workspace(Home.resolve(roscoe.home), journal))
    finally:
        journal.close()
    assert report.ok, report


def shared_blobs(home: Path) -> list[str]:
    """Blobs with another link, and share markers left behind: both must be gone
    once a command (here, recovery) has finished."""
    blobs = home / "blobs"
    found = [str(p.relative_to(blobs)) for p in blobs.rglob("*") if p.is_file() and p.stat().st_nlink != 1]
    return found + [str(p.relative_to(blobs)) for p in (blobs / ".shared").glob("*")]


def diff_keys(got: dict[str, tuple[object, ...]], want: dict[str, tuple[object, ...]]) -> dict[str, object]:
    """The paths where two snapshots differ (readable failures)."""
    return {
        p: (got.get(p), want.get(p))
        for p in sorted(set(got) | set(want)) if got.get(p) != want.get(p)
    }


# -- 1. a crash at every step of a commit ---------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_crash_at_every_commit_step_recovers_all_old_or_all_new(
    roscoe: Roscoe, root: Path, home: Path, commit_step: str, style: str,
) -> None:
    """`roscoe tx commit` dies at ``commit_step``; `roscoe recover` leaves the
    tree exactly old and the transaction open (exactly new and committed after
    the commit record), and committing it again gives exactly new."""
    old = snapshot(root)
    new = measured().new
    tx = stage(home, root)
    assert snapshot(root) == old

    crash(roscoe, style, commit_step, "tx", "commit", tx, "--yes")
    if commit_step in (*BEFORE_INTENT, "after-intent"):
        assert diff_keys(snapshot(root), old) == {}, "the live tree changed before the first apply step"

    recovered = roscoe("recover")
    undone = commit_step not in (*BEFORE_INTENT, AFTER_RECORD)
    assert recovered.returncode == (6 if undone else 0), recovered.stderr
    if commit_step == AFTER_RECORD:
        assert_clean(roscoe, root, new, "a crash after the commit record must leave the commit in place")
        assert txs(home)[tx]["state"] == "committed"
        return
    assert_clean(roscoe, root, old, f"a crash at {commit_step} must leave the tree exactly as before the commit")
    assert txs(home)[tx]["state"] == "open"
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert_clean(roscoe, root, new, "the commit after recovery must give exactly the new tree", cli=False)
    assert txs(home)[tx]["state"] == "committed"


def test_apply_steps_are_all_enumerated(roscoe: Roscoe, root: Path, home: Path) -> None:
    """apply#(count+1) never fires: the enumeration above reaches the last step."""
    tx = stage(home, root)
    done = roscoe("tx", "commit", tx, "--yes", env={"ROSCOE_FAULT": f"apply#{measured().apply_steps + 1}"})
    assert done.returncode == 0, done.stderr
    assert_clean(roscoe, root, measured().new, "commit", cli=False)


# -- 2. a crash during recovery itself -------------------------------------------


def test_undo_steps_are_all_enumerated(roscoe: Roscoe, root: Path, home: Path) -> None:
    """In the recovery of a fully applied commit, undo#count fires and
    undo#(count+1) does not: the enumeration below reaches the last undo step."""
    old = snapshot(root)
    tx = stage(home, root)
    crash(roscoe, "kill", "before-record", "tx", "commit", tx, "--yes")
    done = roscoe("recover", env={"ROSCOE_FAULT": f"undo#{measured().undo_steps + 1}"})
    assert done.returncode == 6, done.stderr
    assert_clean(roscoe, root, old, "recovery", cli=False)

    crash(roscoe, "kill", "before-record", "tx", "commit", tx, "--yes")
    crash(roscoe, "kill", f"undo#{measured().undo_steps}", "recover")
    assert roscoe("recover").returncode == 6
    assert_clean(roscoe, root, old, "recovery", cli=False)


def test_crash_during_recovery_is_recovered_again(
    roscoe: Roscoe, root: Path, home: Path, recovery_step: str,
) -> None:
    """The commit dies with the tree all new (before-record); its recovery dies
    at ``recovery_step``; a plain `roscoe recover` then finishes the undo."""
    old = snapshot(root)
    tx = stage(home, root)
    crash(roscoe, "kill", "before-record", "tx", "commit", tx, "--yes")
    crash(roscoe, "kill", recovery_step, "recover")
    # (No other command in between: every command recovers first.)
    recovered = roscoe("recover")
    assert recovered.returncode == 6, recovered.stderr
    assert_clean(roscoe, root, old, f"recovery after a crash at {recovery_step} must finish the undo")
    assert txs(home)[tx]["state"] == "open"

    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert_clean(roscoe, root, measured().new, "the commit after recovery", cli=False)


FEW_RECOVERY_STEPS = ["recover-start", "undo#1", "before-reopen"]


@pytest.mark.parametrize("step", FEW_RECOVERY_STEPS)
@pytest.mark.parametrize("style", STYLES)
def test_crash_during_recovery_of_a_half_applied_commit(
    roscoe: Roscoe, root: Path, home: Path, step: str, style: str,
) -> None:
    old = snapshot(root)
    tx = stage(home, root)
    crash(roscoe, style, f"apply#{measured().apply_steps // 2}", "tx", "commit", tx, "--yes")
    crash(roscoe, style, step, "recover")
    recovered = roscoe("recover")
    assert recovered.returncode == 6, recovered.stderr
    assert_clean(roscoe, root, old, f"recovery after a crash at {step} must finish the undo")
    assert txs(home)[tx]["state"] == "open"


def test_recovery_crashing_at_every_first_undo_step_still_finishes(roscoe: Roscoe, root: Path, home: Path) -> None:
    """Recovery killed after its first undo step, again and again: each run
    makes progress, and the last one finishes (exit 6) with the tree all-old."""
    old = snapshot(root)
    tx = stage(home, root)
    crash(roscoe, "kill", "before-record", "tx", "commit", tx, "--yes")
    for attempt in range(measured().undo_steps + 2):
        done = roscoe("recover", env={"ROSCOE_FAULT": "undo#1", "ROSCOE_FAULT_ACTION": "kill"})
        if done.returncode != -signal.SIGKILL:
            break
    else:
        pytest.fail("recovery killed after each first undo step never finished")
    assert done.returncode == 6, done.stderr
    assert attempt >= 1
    assert_clean(roscoe, root, old, "repeated crashes during recovery")
    assert txs(home)[tx]["state"] == "open"


# -- 3. a crash at every step of a rollback ------------------------------------


def test_crash_at_every_rollback_step_recovers(
    roscoe: Roscoe, root: Path, home: Path, rollback_step: str,
) -> None:
    """`roscoe tx rollback` dies at ``rollback_step``; after `roscoe recover`
    the tree is exactly as before the rollback and the rollback transaction is
    aborted (after its commit record: rolled back, committed), and a new
    rollback succeeds."""
    old = snapshot(root)
    new = measured().new
    tx = stage(home, root)
    ws = open_workspace(home)
    try:
        commit(ws, tx)
    finally:
        ws.close()
    assert snapshot(root) == new

    crash(roscoe, "kill", rollback_step, "tx", "rollback", tx, "--yes")
    if rollback_step in (*BEFORE_INTENT, "after-intent"):
        assert diff_keys(snapshot(root), new) == {}, "the live tree changed before the first apply step"

    recovered = roscoe("recover")
    undone = rollback_step not in (*BEFORE_INTENT, AFTER_RECORD)
    assert recovered.returncode == (6 if undone else 0), recovered.stderr
    listed = txs(home)
    assert listed[tx]["state"] == "committed"
    rollbacks = [t for t in listed.values() if t["rolls_back"] == tx]
    if rollback_step in BEFORE_INTENT:
        # The rollback is journaled with its intent: before that it left no trace.
        assert rollbacks == []
        assert_clean(roscoe, root, new, f"a crash at rollback {rollback_step} changes nothing")
        done = roscoe("tx", "rollback", tx, "--yes")
        assert done.returncode == 0, done.stderr
        assert_clean(roscoe, root, old, "the rollback after the crash must give exactly the old tree", cli=False)
        return
    assert len(rollbacks) == 1, rollbacks
    rb = str(rollbacks[0]["tx"])

    if rollback_step == AFTER_RECORD:
        assert_clean(roscoe, root, old, "a crash after the rollback's commit record must leave it in place")
        assert rollbacks[0]["state"] == "committed"
        # The rollback is a transaction of its own: rolling it back gives `new` again.
        done = roscoe("tx", "rollback", rb, "--yes")
        assert done.returncode == 0, done.stderr
        assert_clean(roscoe, root, new, "rollback of the rollback", cli=False)
        return

    assert_clean(roscoe, root, new, f"a crash at rollback {rollback_step} must leave the tree as before the rollback")
    interrupted = rollbacks[0]["state"]

    done = roscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert_clean(roscoe, root, old, "the rollback after recovery must give exactly the old tree", cli=False)
    assert interrupted == "aborted", f"the interrupted rollback {rb} was left {interrupted}, not aborted"


@pytest.mark.parametrize("step", FEW_RECOVERY_STEPS)
def test_crash_during_recovery_of_an_interrupted_rollback(
    roscoe: Roscoe, root: Path, home: Path, step: str,
) -> None:
    new = measured().new
    tx = stage(home, root)
    ws = open_workspace(home)
    try:
        commit(ws, tx)
    finally:
        ws.close()
    crash(roscoe, "kill", "before-record", "tx", "rollback", tx, "--yes")
    crash(roscoe, "kill", step, "recover")
    recovered = roscoe("recover")
    assert recovered.returncode == 6, recovered.stderr
    assert_clean(roscoe, root, new, f"recovery after a crash at {step} must finish undoing the rollback")
    assert [t["state"] for t in txs(home).values() if t["rolls_back"] == tx] == ["aborted"]


# -- 4. SIGKILL at random moments of a big commit ------------------------------

BIG_DIRS, BIG_FILES = 20, 25          # 500 files before
NEW_DIRS, NEW_FILES = 25, 100         # 2,500 added in 25 new dirs, the 500 modified
BIG_CHANGE = f'''
import os
T = 1_800_000_000_000_000_000
for d in range({BIG_DIRS}):
    for f in range({BIG_FILES}):
        p = f"d{{d:02}}/f{{f:03}}.txt"
        with open(p, "a") as out:
            out.write("modified\\n")
        os.utime(p, ns=(T, T))
for d in range({NEW_DIRS}):
    os.mkdir(f"n{{d:02}}")
    for f in range({NEW_FILES}):
        p = f"n{{d:02}}/g{{f:03}}.txt"
        with open(p, "w") as out:
            out.write(f"added {{d}} {{f}}\\n")
        os.utime(p, ns=(T, T))
'''


def big_tree(root: Path) -> None:
    for d in range(BIG_DIRS):
        (root / f"d{d:02}").mkdir(parents=True)
        for f in range(BIG_FILES):
            path = root / f"d{d:02}" / f"f{f:03}.txt"
            path.write_text(f"old {d} {f}\n")
            os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)


def scratch_base(tmp_path: Path) -> Path:
    """A tmpfs scratch dir when there is one: a SIGKILL is a process crash, not
    a power cut, so the page cache survives it and tmpfs shows the same
    interleavings as a disk, five times faster here."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 512 << 20:
            return Path(tempfile.mkdtemp(prefix="roscoe-crash-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="roscoe-crash-", dir=tmp_path))


ATTEMPTS = 8


@pytest.mark.parametrize("verb", ["commit", "rollback"])
def test_sigkill_at_random_moments_of_a_big_commit_or_rollback(tmp_path: Path, verb: str) -> None:
    """SIGKILL a commit of 3,025 changes (2,500 files added in 25 new dirs, 500
    modified), or the rollback of that commit, at random moments: one delay
    drawn in each eighth of an uninterrupted command's duration and one in
    each quarter of its apply phase (seeded).
    After `roscoe recover` the tree is entirely as before the command (the
    next attempt runs it again) or entirely as after it (the next attempt
    starts afresh), no blob shares an inode with a live file, no pin is
    left, and `verify` passes."""
    base = scratch_base(tmp_path)
    try:
        template = base / "template"
        big_tree(template)
        old = snapshot(template)

        def fresh(name: str) -> tuple[Path, Path, str]:
            home, live = base / f"home-{name}", base / f"live-{name}"
            shutil.copytree(template, live, symlinks=True)
            tx = stage(home, live, BIG_CHANGE)
            if verb == "rollback":
                ws = open_workspace(home)
                try:
                    commit(ws, tx)
                finally:
                    ws.close()
            return home, live, tx

        # Uninterrupted commands: what they leave, how long one takes and
        # when it journals its intent (the faster of two: the first pays for
        # a colder cache).
        timings = []
        for ref in ("ref1", "ref2"):
            home, live, tx = fresh(ref)
            before = snapshot(live)
            started, started_ns = time.monotonic(), time.time_ns()
            done = Roscoe(home)("tx", verb, tx, "--yes")
            duration = time.monotonic() - started
            assert done.returncode == 0, done.stderr
            after = snapshot(live)
            journal = Journal(os.path.join(home, "journal.db"))
            try:
                intents = [e.time_ns for e in journal.audit_events(since_ns=started_ns) if e.kind == "commit-start"]
            finally:
                journal.close()
            assert len(intents) == 1, intents
            timings.append((duration, (intents[0] - started_ns) / 1e9))
            remove_tree(os.fspath(live))
            remove_tree(os.fspath(home))
        duration, intent = min(timings)
        new = before if verb == "rollback" else after
        assert len(new) == len(old) + NEW_DIRS * (NEW_FILES + 1)
        assert (before, after) == ((old, new) if verb == "commit" else (new, old))

        def landed(home: Path, tx: str) -> bool:
            """Whether the journal says the command took effect."""
            listed = txs(home)
            if verb == "commit":
                assert listed[tx]["state"] in ("open", "committed"), listed[tx]
                return listed[tx]["state"] == "committed"
            assert listed[tx]["state"] == "committed"
            undone = [t["state"] for t in listed.values() if t["rolls_back"] == tx]
            assert set(undone) <= {"aborted", "committed"} and undone.count("committed") <= 1, undone
            return "committed" in undone

        # One delay in each eighth of the command, and one in each quarter of
        # its apply phase (from the journaled intent on), which is short.
        rng = random.Random(0x5EED)
        delays = [(i + rng.random()) / ATTEMPTS * duration for i in range(ATTEMPTS)]
        delays += [intent + (i + rng.random()) / 4 * (duration - intent) for i in range(4)]
        rng.shuffle(delays)
        outcomes = []
        home, live, tx = fresh("0")
        for attempt, delay in enumerate(delays):
            roscoe = Roscoe(home)
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "tx", verb, tx, "--yes"],
                env=roscoe.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=120)

            recovered = roscoe("recover")
            assert recovered.returncode in (0, 6), recovered.stderr
            got = snapshot(live)
            assert temps(live) == []
            outcome = "before" if got == before else "after" if got == after else None
            assert outcome is not None, (
                f"attempt {attempt}: killed after {delay:.3f}s of {duration:.3f}s: the tree is neither all"
                f" before nor all after the {verb} ({len(diff_keys(got, before))} paths differ from before,"
                f" {len(diff_keys(got, after))} from after)")
            assert landed(home, tx) == (outcome == "after"), (attempt, outcome)
            assert shared_blobs(home) == [], attempt
            assert not any((home / "blobs" / ".pins").glob("*")), attempt
            checked = roscoe("verify")
            assert checked.returncode == 0, checked.stdout + checked.stderr
            outcomes.append((round(delay, 3), proc.returncode, recovered.returncode, outcome))
            if outcome == "after" and attempt + 1 < len(delays):
                remove_tree(os.fspath(live))
                remove_tree(os.fspath(home))
                home, live, tx = fresh(str(attempt + 1))
        print(f"{verb} {duration:.3f}s; delay, exit, recover exit, outcome:", outcomes)
    finally:
        remove_tree(os.fspath(base))


# -- found along the way ---------------------------------------------------------


def test_crash_after_images_leaves_no_blob_shared_with_staging(roscoe: Roscoe, root: Path, home: Path) -> None:
    """A commit that dies at after-images leaves its transaction open, with the
    staged files hard-linked into the blob store. Another commit of the same
    bytes then names that blob; a later run of the first transaction that
    appends to its staged file writes through the link into the blob, and the
    other commit's image is damaged (verify fails, its rollback can't be undone)."""
    script = "open('case1/shared.txt', 'w').write('same bytes\\n')"
    first = stage(home, root, script)
    crash(roscoe, "kill", "after-images", "tx", "commit", first, "--yes")
    assert roscoe("recover").returncode == 0
    assert txs(home)[first]["state"] == "open"

    second = stage(home, root, "open('case2/copy.txt', 'w').write('same bytes\\n')")
    done = roscoe("tx", "commit", second, "--yes")
    assert done.returncode == 0, done.stderr

    ws = open_workspace(home)
    try:
        ran = ws.run(first, ["sh", "-c", "echo more >> case1/shared.txt"], cwd=os.fspath(root))
        assert ran.exit_code == 0
    finally:
        ws.close()
    checked = roscoe("verify", "--json")
    assert checked.returncode == 0, checked.stdout


def test_recovery_removes_the_share_list_a_killed_commit_was_writing(roscoe: Roscoe, root: Path, home: Path) -> None:
    """A SIGKILL between the temp file of a commit's share list and its rename
    (durable.save_new) leaves ``.shared/.TX.PID.tmp``: nothing was linked yet,
    so recovery removes it; one of a live process is left to it."""
    tx = roscoe.begin(root)
    assert roscoe("tx", "run", "--tx", tx, "--", "true", cwd=root).returncode == 0
    shared = home / "blobs" / ".shared"
    shared.mkdir(parents=True, exist_ok=True)
    dead = shared / f".{tx}.{gone_pid()}.tmp"
    alive = shared / f".{tx}.{os.getpid()}.tmp"
    for temp in (dead, alive):
        temp.write_text('{"root": "/nowhere", "digests": []}')
    assert roscoe("recover").returncode == 0
    assert sorted(p.name for p in shared.iterdir()) == [alive.name]
