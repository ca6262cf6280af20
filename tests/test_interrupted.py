"""A roscoe killed mid-command (journal.interrupted): the next command finds
the transaction consistent.

Real processes throughout: `roscoe tx run` (or `tx shell`, `tx plan`) is
started with Popen, its command writes a file and sleeps, and the roscoe
process itself (the Popen's pid: `python -m cli.main` does not exec) gets a
SIGKILL or a SIGTERM. Then the run is recorded as interrupted (`tx show
--json`, the audit trail), its staged writes are in `tx diff --json`, no
process of the run is left (found by a marker in argv, through /proc), and
`tx commit` commits exactly that diff. Killed commits and rollbacks are
test_crash.py's (fault hooks at every step, and SIGKILL at random moments).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.roscoe import Roscoe
from tests.support.trees import snapshot


def marker_pids(marker: str) -> list[int]:
    """Processes with ``marker`` as one of their arguments."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                zombie = f.read().rpartition(b")")[2].split()[0] == b"Z"
        except OSError:
            continue
        if marker.encode() in args and not zombie:
            found.append(int(name))
    return found


def wait_for(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(marker: str, timeout: float = 5.0) -> list[int]:
    """The marker's processes still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := marker_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def kill_all(marker: str) -> None:
    """Clean up after a failed test: the marker's processes and its daemon's."""
    for pid in marker_pids(marker) + marker_pids(marker + "-daemon"):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(roscoe: Roscoe, *args: str | os.PathLike[str], **popen: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *map(os.fspath, args)], env=roscoe.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen,  # type: ignore[call-overload]
    )


def killed(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)  # not its stderr: a sandbox that outlived it may hold that open
    if proc.stderr is not None:
        proc.stderr.close()


def show(roscoe: Roscoe, tx: str) -> dict:  # type: ignore[type-arg]
    done = roscoe("tx", "show", tx, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def diff(roscoe: Roscoe, tx: str) -> list[tuple[str, str]]:
    done = roscoe("tx", "diff", tx, "--json")
    assert done.returncode == 0, done.stderr
    return [(c["path"], c["status"]) for c in json.loads(done.stdout)["changes"]]


def audit_kinds(roscoe: Roscoe, tx: str) -> list[str]:
    done = roscoe("audit", "--tx", tx, "--json")
    assert done.returncode == 0, done.stderr
    return [e["kind"] for e in json.loads(done.stdout)["events"]]


def commit_and_verify(roscoe: Roscoe, tx: str, root: Path, expect: dict[str, bytes]) -> None:
    """`tx commit` lands exactly ``expect`` (path -> bytes) on ``root``, and `verify` passes."""
    before = snapshot(root)
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    after = snapshot(root)
    assert set(after) - set(before) <= set(expect)
    assert {k for k in after if after[k] != before.get(k)} == set(expect)
    assert {k: after[k][5] for k in expect} == expect
    checked = roscoe("verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr


# The command of a killed run: writes `a`, leaves a daemon that ignores SIGHUP
# and SIGTERM in a session of its own, and sleeps; MARK is its $0.
DAEMONIZED = (
    "echo x > a; (setsid sh -c 'trap \"\" HUP TERM; sleep 300; :' \"$0-daemon\" &); "
    "sleep 60; :"
)
# The same without the daemon: a child that sleeps (MARK-daemon all the same).
FOREGROUND = "echo x > a; sh -c 'sleep 60; :' \"$0-daemon\"; :"


def run_and_kill(
        roscoe: Roscoe, tx: str, root: Path, marker: str, sig: int = signal.SIGKILL, daemon: bool = True,
        options: tuple[str, ...] = ()) -> None:
    """`tx run --tx TX` of a command that writes `a` and sleeps, killed with ``sig`` once it sleeps."""
    script = DAEMONIZED if daemon else FOREGROUND
    proc = start(roscoe, "tx", "run", "--tx", tx, *options, "--", "sh", "-c", script, marker, cwd=root)
    try:
        wait_for(lambda: marker_pids(marker + "-daemon") or proc.poll() is not None, "the run to start")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        killed(proc, sig)
    except BaseException:
        killed(proc)
        kill_all(marker)
        raise


@pytest.mark.parametrize("sig,options", [
    (signal.SIGKILL, ()), (signal.SIGTERM, ()), (signal.SIGKILL, ("--memory", "256M", "--pids", "100")),
], ids=["KILL", "TERM", "KILL-in-a-cgroup"])
def test_a_killed_first_run_is_recorded_interrupted_and_its_writes_commit(
        roscoe: Roscoe, root: Path, sig: int, options: tuple[str, ...]) -> None:
    """The transaction's first run killed: before, its diff was empty and a
    commit committed 0 changes (the backend was never recorded). Its daemon
    (setsid, ignoring SIGHUP and SIGTERM) dies with it, in a cgroup too."""
    tx = roscoe.begin(root)
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    try:
        run_and_kill(roscoe, tx, root, marker, sig, options=options)
        view = show(roscoe, tx)
        assert gone(marker) == []
        assert gone(marker + "-daemon") == []
    finally:
        kill_all(marker)
    [run] = view["runs"]
    assert (run["exit_code"], run["interrupted"]) == (None, True)
    assert run["ended_ns"] is not None and run["ended_ns"] >= run["started_ns"]
    assert view["backend"] == run["backend"]
    assert view["diff"]["counts"]["added"] == 1
    assert audit_kinds(roscoe, tx).count("run-interrupted") == 1
    assert diff(roscoe, tx) == [("a", "added")]
    commit_and_verify(roscoe, tx, root, {"a": b"x\n"})


def test_tx_run_without_tx_killed(roscoe: Roscoe, root: Path) -> None:
    """`tx run` that began its own transaction: the id is on its first stderr line."""
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    proc = start(roscoe, "tx", "run", "--root", root, "--", "sh", "-c", FOREGROUND, marker, cwd=root)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().decode()
        assert first.startswith("roscoe: tx "), first
        tx = first.split()[-1]
        wait_for(lambda: marker_pids(marker + "-daemon") or proc.poll() is not None, "the run to start")
        killed(proc)
        assert diff(roscoe, tx) == [("a", "added")]
        assert gone(marker) == gone(marker + "-daemon") == []
    finally:
        killed(proc)
        kill_all(marker)
    [run] = show(roscoe, tx)["runs"]
    assert run["interrupted"] is True
    commit_and_verify(roscoe, tx, root, {"a": b"x\n"})


def test_after_a_finished_run_no_false_conflict(roscoe: Roscoe, root: Path) -> None:
    """An earlier run had ended: the killed run's paths get bases too, so the
    commit is not refused with a false "the live tree changed"."""
    tx = roscoe.begin(root)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo y > b; echo more >> case1/notes.md", cwd=root)
    assert done.returncode == 0, done.stderr
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    try:
        run_and_kill(roscoe, tx, root, marker)
        assert diff(roscoe, tx) == [("a", "added"), ("b", "added"), ("case1/notes.md", "modified")]
        assert gone(marker + "-daemon") == []
    finally:
        kill_all(marker)
    runs = show(roscoe, tx)["runs"]
    assert [(r["exit_code"], r["interrupted"]) for r in runs] == [(0, False), (None, True)]
    commit_and_verify(roscoe, tx, root, {"a": b"x\n", "b": b"y\n", "case1/notes.md": b"# notes\nmore\n"})


def test_a_killed_run_keeps_the_bases_an_earlier_run_recorded(roscoe: Roscoe, root: Path) -> None:
    """A path an earlier run changed keeps the base recorded when that run
    ended: a live edit made since then is still a conflict after a killed
    run, not absorbed as the new base."""
    tx = roscoe.begin(root)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo more >> case1/notes.md", cwd=root)
    assert done.returncode == 0, done.stderr
    (root / "case1" / "notes.md").write_text("edited by hand meanwhile\n")
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    try:
        run_and_kill(roscoe, tx, root, marker, daemon=False)
    finally:
        kill_all(marker)
    assert diff(roscoe, tx) == [("a", "added"), ("case1/notes.md", "modified")]
    before = snapshot(root)
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert b"case1/notes.md" in done.stderr
    assert snapshot(root) == before


def test_a_sandbox_that_outlived_roscoe_is_killed_by_the_next_command(
        roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    """bwrap arms --die-with-parent itself, after it starts: a roscoe killed
    before that leaves the sandbox running, its command still writing. Here
    a wrapper between roscoe and bwrap makes that happen every time; the
    next command must kill the sandbox before it reads the staged layer."""
    from cowfs.sandbox import bwrap_path

    wrapper = tmp_path / "bwrap-wrapper"
    wrapper.write_text(f'#!/bin/sh\n"{bwrap_path()}" "$@"\n')
    wrapper.chmod(0o755)
    roscoe.env["ROSCOE_BWRAP"] = str(wrapper)
    tx = roscoe.begin(root)
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    try:
        run_and_kill(roscoe, tx, root, marker)
        time.sleep(0.3)
        assert marker_pids(marker + "-daemon") != []  # the sandbox outlived roscoe
        assert diff(roscoe, tx) == [("a", "added")]
        assert gone(marker) == []
        assert gone(marker + "-daemon") == []
    finally:
        kill_all(marker)
    commit_and_verify(roscoe, tx, root, {"a": b"x\n"})


def test_a_killed_shell(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    roscoe.env["SHELL"] = "/bin/sh"
    proc = start(roscoe, "tx", "shell", "--tx", tx, stdin=subprocess.PIPE, cwd=root)
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"echo x > a\nsh -c 'sleep 60; :' {marker}\n".encode())
        proc.stdin.flush()
        wait_for(lambda: marker_pids(marker) or proc.poll() is not None, "the shell to start")
        killed(proc)
        assert diff(roscoe, tx) == [("a", "added")]
        assert gone(marker) == []
    finally:
        killed(proc)
        kill_all(marker)
    [run] = show(roscoe, tx)["runs"]
    assert run["interrupted"] is True
    commit_and_verify(roscoe, tx, root, {"a": b"x\n"})


def test_a_killed_plan_stages_nothing_of_the_plan(roscoe: Roscoe, root: Path) -> None:
    """A plan is all or nothing: killed while its ops run, the transaction
    keeps what it staged before the plan and nothing of the plan."""
    tx = roscoe.begin(root)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo y > b", cwd=root)
    assert done.returncode == 0, done.stderr
    ops = [{"op": "write", "path": f"p{i:04}.txt", "content": "x" * 1000} for i in range(3000)]
    plan = root.parent / "plan.json"
    plan.write_text(json.dumps({"version": 1, "ops": ops}))
    upper = roscoe.home / "tx" / tx / "upper"
    proc = start(roscoe, "tx", "plan", "--tx", tx, plan)
    try:
        wait_for(lambda: len(os.listdir(upper)) > 50 or proc.poll() is not None, "the plan to write")
        assert proc.poll() is None, "the plan finished before it could be killed"
        killed(proc)
    finally:
        killed(proc)
    # The next run writes on the layer as it was before the plan, and keeps what it writes.
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo z > c", cwd=root)
    assert done.returncode == 0, done.stderr
    assert diff(roscoe, tx) == [("b", "added"), ("c", "added")]
    runs = show(roscoe, tx)["runs"]
    assert [(r["exit_code"], r["interrupted"]) for r in runs] == [(0, False), (None, True), (0, False)]
    commit_and_verify(roscoe, tx, root, {"b": b"y\n", "c": b"z\n"})


def test_show_renders_an_interrupted_run(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    try:
        run_and_kill(roscoe, tx, root, marker, daemon=False)
    finally:
        kill_all(marker)
    done = roscoe("tx", "show", tx, env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.decode().splitlines() if marker in x)
    assert "interrupted" in line


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.floats(min_value=0.0, max_value=1.5), first=st.booleans())
def test_killed_at_random_moments(roscoe: Roscoe, root: Path, delay: float, first: bool) -> None:
    """SIGKILL `tx run` at any moment, start-up and teardown included: the
    next command finds every run ended, a diff that is exactly nothing or
    exactly the command's file, no process of the run, and a commit of
    exactly that diff."""
    import shutil

    live = root.parent / f"live-{os.urandom(3).hex()}"
    shutil.copytree(root, live, symlinks=True)
    tx = roscoe.begin(live)
    staged_before: list[tuple[str, str]] = []
    expect: dict[str, bytes] = {}
    if not first:
        done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo y > b", cwd=live)
        assert done.returncode == 0, done.stderr
        staged_before, expect = [("b", "added")], {"b": b"y\n"}
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    proc = start(roscoe, "tx", "run", "--tx", tx, "--", "sh", "-c", "echo x > a; sleep 0.4; :", marker, cwd=live)
    try:
        time.sleep(delay)
        killed(proc)
        changes = diff(roscoe, tx)
        assert gone(marker) == []
    finally:
        kill_all(marker)
    assert changes in (staged_before, sorted(staged_before + [("a", "added")]))
    runs = show(roscoe, tx)["runs"]
    assert all(r["ended_ns"] is not None for r in runs)
    if len(runs) > len(staged_before):
        last = runs[-1]
        assert last["interrupted"] == (last["exit_code"] is None)
        assert last["exit_code"] in (None, 0)
    if ("a", "added") in changes:
        expect = dict(expect, a=b"x\n")
    if expect:
        commit_and_verify(roscoe, tx, live, expect)
    else:
        done = roscoe("tx", "abort", tx)
        assert done.returncode == 0, done.stderr


def test_a_killed_run_on_the_fallback_backend(roscoe: Roscoe, tmp_path: Path) -> None:
    """On a FUSE lower the kernel overlay fails its probe and the run moves on
    to kernel-bindfs: killed there, its layer is still found (the run's row
    names the backend it moved to), and the bindfs mount it left is taken
    down."""
    from tests.support.system import rclone_mounted
    from tests.support.trees import make_tree

    src = make_tree(tmp_path / "bucket")
    with rclone_mounted(str(src), tmp_path / "mnt") as mnt:
        marker = f"roscoe-kill-{os.urandom(4).hex()}"
        proc = start(roscoe, "tx", "run", "--root", mnt, "--", "sh", "-c", FOREGROUND, marker, cwd=mnt)
        try:
            assert proc.stderr is not None
            tx = proc.stderr.readline().decode().split()[-1]
            wait_for(lambda: marker_pids(marker + "-daemon") or proc.poll() is not None, "the run to start")
            lower = roscoe.home / "tx" / tx / "lower"
            assert os.path.ismount(lower)
            killed(proc)
            assert diff(roscoe, tx) == [("a", "added")]
            assert not os.path.ismount(lower)
            assert gone(marker) == []
        finally:
            killed(proc)
            kill_all(marker)
        view = show(roscoe, tx)
        assert (view["backend"], view["runs"][0]["backend"], view["runs"][0]["interrupted"]) == (
            "kernel-bindfs", "kernel-bindfs", True)
        commit_and_verify(roscoe, tx, mnt, {"a": b"x\n"})


def test_a_killed_run_as_an_ordinary_user(unprivileged, user_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """As an ordinary user the sandbox is in a user namespace of its own; a
    killed run is settled the same way."""
    from tests.support.system import TEST_VENV, lookup_test_user
    from tests.support.trees import chown_tree, make_tree

    user = lookup_test_user()
    root = make_tree(user_dir / "live")
    chown_tree(root, user.pw_uid, user.pw_gid)
    tx = unprivileged.begin(root)
    marker = f"roscoe-kill-{os.urandom(4).hex()}"
    proc = subprocess.Popen(
        [str(TEST_VENV / "bin" / "python"), "-m", "cli.main", "tx", "run", "--tx", tx, "--",
         "sh", "-c", DAEMONIZED, marker],
        env=unprivileged.env, cwd=root, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: marker_pids(marker + "-daemon") or proc.poll() is not None, "the run to start")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        killed(proc)
        done = unprivileged("tx", "diff", tx, "--json")
        assert done.returncode == 0, done.stderr
        assert [(c["path"], c["status"]) for c in json.loads(done.stdout)["changes"]] == [("a", "added")]
        assert gone(marker) == []
    finally:
        killed(proc)
        kill_all(marker)
    done = unprivileged("tx", "show", tx, "--json")
    [run] = json.loads(done.stdout)["runs"]
    assert (run["exit_code"], run["interrupted"]) == (None, True)
    done = unprivileged("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert (root / "a").read_bytes() == b"x\n"
