"""tx run's limits (cowfs.limits, cowfs.sandbox): memory, processes, time and
disk, each enforced for real, and every out-of-range option refused with 125.

Each case ends with the live tree untouched and ``roscoe verify`` passing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from cowfs.limits import RUN_PREFIX, _mounts, _own
from tests.support.roscoe import Roscoe, UserRoscoe
from tests.support.system import gone_pid
from tests.support.transactions import tx_from
from tests.support.trees import snapshot

PY = "/usr/bin/python3"  # the sandbox sees the host's files read-only, so any python works


def alive(marker: str) -> list[str]:
    """Pids whose command line holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def run_cgroups_left() -> list[str]:
    """roscoe-run-* cgroups anywhere below this process's own cgroups."""
    left = []
    own = _own()
    for mount, mount_root, _, _ in _mounts():
        for path in set(own.values()):
            base = os.path.normpath(os.path.join(mount, os.path.relpath(path, mount_root)))
            for parent in (base, os.path.dirname(base), os.path.join(mount, "roscoe")):
                try:
                    left += [n for n in os.listdir(parent) if n.startswith(f"{RUN_PREFIX}")]
                except OSError:
                    continue
    return left


def verify_ok(roscoe: Roscoe) -> None:
    done = roscoe("verify")
    assert done.returncode == 0, done.stdout + done.stderr


# -- memory ------------------------------------------------------------------------

def test_a_run_over_its_memory_is_killed_and_says_so(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    before = snapshot(root)
    report = tmp_path / "report.json"
    grab = "x = bytearray(400 << 20); open('never.txt', 'w').write('x')"
    done = roscoe("tx", "run", "--root", root, "--memory", "64M", "--report", report, "--", PY, "-c", grab, cwd=root)
    assert (done.returncode, done.stdout) == (137, b"")
    tx = tx_from(done.stderr)
    lines = done.stderr.decode().splitlines()
    assert lines[1] == (f"roscoe: tx {tx}: out of memory: the kernel killed 1 process(es) of the run"
                        " for going over --memory 64M")
    got = json.loads(report.read_text())
    assert got["exit_code"] == 137
    assert got["limits"]["memory"] == 64 << 20 and got["limits"]["pids"] is None
    assert got["limits"]["by"] in ("cgroup1", "cgroup2") and got["limits"]["oom_kills"] == 1
    assert snapshot(root) == before
    assert run_cgroups_left() == []
    verify_ok(roscoe)


def test_a_run_within_its_memory_runs_normally(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = roscoe("tx", "run", "--root", root, "--memory", "256M", "--pids", "64", "--report", report, "--",
                  PY, "-c", "x = bytearray(64 << 20); print(len(x) >> 20)")
    assert (done.returncode, done.stdout) == (0, b"64\n"), done.stderr
    assert json.loads(report.read_text())["limits"]["oom_kills"] == 0
    assert run_cgroups_left() == []


def test_unprivileged_memory_falls_back_to_rlimit_as_and_says_so(unprivileged: UserRoscoe, user_dir: Path) -> None:
    root = user_dir / "live"
    root.mkdir()
    done = unprivileged("tx", "run", "--root", root, "--memory", "64M", "--", PY, "-c",
                        "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20); bytearray(400 << 20)")
    assert (done.returncode, done.stdout) == (1, b"64\n"), done.stderr
    err = done.stderr.decode()
    assert "MemoryError" in err
    assert ("roscoe: warning: --memory 64M: no memory cgroup can be made here; each process of the run"
            " was held to 64M of address space instead (RLIMIT_AS)") in err.splitlines()
    done = unprivileged("tx", "run", "--root", root, "--pids", "10", "--", "true")
    assert done.returncode == 125
    assert done.stderr.decode().splitlines()[-1] == (
        "roscoe: error: cannot run in a sandbox: --pids 10 needs a pids cgroup, and none can be made here"
        " (run as root, or from a cgroup v2 subtree delegated to you)")


# -- processes -----------------------------------------------------------------------

def test_a_thousand_processes_hit_the_pids_limit(roscoe: Roscoe, root: Path) -> None:
    marker = f"roscoe-forks-{os.getpid()}-{time.monotonic_ns()}"
    before = snapshot(root)
    started = time.monotonic()
    done = roscoe("tx", "run", "--root", root, "--pids", "50", "--timeout", "60", "--", "sh", "-c",
                  f"i=0; while [ $i -lt 1000 ]; do bash -c 'exec -a {marker} sleep 300' & i=$((i+1)); done; wait")
    assert time.monotonic() - started < 30
    assert done.returncode == 2, done.stderr  # dash: "Cannot fork", exit 2
    assert b"Cannot fork" in done.stderr
    assert alive(marker) == []
    assert snapshot(root) == before
    assert run_cgroups_left() == []
    verify_ok(roscoe)


def test_a_fork_bomb_is_killed_by_the_timeout_and_leaves_nothing(roscoe: Roscoe, root: Path) -> None:
    marker = f"roscoe-bomb-{os.getpid()}-{time.monotonic_ns()}"
    before = snapshot(root)
    bomb = f"b() {{ exec -a {marker} sleep 300 & b & b; }}; b"
    started = time.monotonic()
    done = roscoe("tx", "run", "--root", root, "--pids", "200", "--timeout", "3", "--", "bash", "-c", bomb)
    assert time.monotonic() - started < 30
    assert done.returncode == 124, done.stderr
    tx = tx_from(done.stderr)
    assert f"roscoe: tx {tx}: timed out after 3 s; every process of the run was killed" in done.stderr.decode()
    assert alive(marker) == []
    assert snapshot(root) == before
    verify_ok(roscoe)


def sleeper(tmp_path: Path, marker: str) -> str:
    """A command that sleeps for 5 minutes under the name ``marker``."""
    script = tmp_path / "sleeper.sh"
    script.write_text(f"exec -a {marker} sleep 300\n")
    return f"bash {script}"


def wait_for_sleepers(n: int) -> str:
    """Shell that waits (up to 20 s) until ``n`` sleepers run, then prints how many run.

    A fixed pause was not enough: on a loaded CI machine a double-forked sleeper
    had not yet exec'd sleep after half a second.
    """
    return (f"i=0; while [ $i -lt 200 ] && [ \"$(pgrep -cx sleep)\" != {n} ]; do sleep 0.1; i=$((i+1)); done;"
            " pgrep -cx sleep")


@pytest.mark.parametrize("how", ["background", "setsid", "double-fork", "nohup"])
def test_no_process_outlives_the_run(roscoe: Roscoe, root: Path, tmp_path: Path, how: str) -> None:
    marker = f"roscoe-left-{how}-{os.getpid()}-{time.monotonic_ns()}"
    sleep = sleeper(tmp_path, marker)
    script = {
        "background": f"{sleep} &",
        "setsid": f"setsid {sleep} </dev/null >/dev/null 2>&1 &",
        "double-fork": f"sh -c '({sleep} &) &'",
        "nohup": f"nohup {sleep} >/dev/null 2>&1 &",
    }[how]
    # The run counts its own sleeper (pgrep sees the run's pid namespace) and leaves.
    done = roscoe("tx", "run", "--root", root, "--", "bash", "-c", f"{script}\n{wait_for_sleepers(1)}")
    assert (done.returncode, done.stdout) == (0, b"1\n"), done.stderr
    assert alive(marker) == []


def test_the_timeout_kills_detached_descendants_too(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    marker = f"roscoe-detached-{os.getpid()}-{time.monotonic_ns()}"
    sleep = sleeper(tmp_path, marker)
    script = f"setsid {sleep} & sh -c '({sleep} &)'; {wait_for_sleepers(2)}; sleep 300"
    done = roscoe("tx", "run", "--root", root, "--timeout", "2", "--", "bash", "-c", script)
    assert (done.returncode, done.stdout) == (124, b"2\n")
    assert alive(marker) == []


# -- disk ----------------------------------------------------------------------------

def test_a_run_that_fills_the_staging_disk(tmp_path: Path, root: Path) -> None:
    home = tmp_path / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(home)], check=True)
    try:
        roscoe = Roscoe(home)
        before = snapshot(root)
        done = roscoe("tx", "run", "--root", root, "--", "sh", "-c",
                      "head -c 64M /dev/zero > big.bin; echo dd=$?; echo small > small.txt", cwd=root)
        tx = tx_from(done.stderr)
        # The command sees ENOSPC and goes on; roscoe stages what fitted.
        assert done.stdout == b"dd=1\n", done.stderr
        assert b"No space left on device" in done.stderr
        assert snapshot(root) == before
        verify_ok(roscoe)
        # Aborting gives the space back (it discards the staged layer first).
        done = roscoe("tx", "abort", tx)
        assert done.returncode == 0, done.stderr
        assert os.listdir(home / "tx") == []
        # Space is back: the next run stages and commits normally.
        done = roscoe("tx", "run", "--root", root, "--commit", "--yes", "--", "sh", "-c", "echo ok > after.txt", cwd=root)
        assert done.returncode == 0, done.stderr
        assert (root / "after.txt").read_text() == "ok\n"
        verify_ok(roscoe)
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


# -- options out of range ----------------------------------------------------------

BAD = [
    (["--timeout", "0"], "--timeout 0: must be more than 0"),
    (["--timeout", "-5"], "--timeout -5: must be more than 0"),
    (["--timeout", "soon"], "--timeout soon: expected a number of seconds"),
    (["--timeout", "nan"], "--timeout nan: must be more than 0"),
    (["--timeout", "inf"], "--timeout inf: must be at most 2147483 (about 24 days)"),
    (["--memory", "abc"], "--memory abc: expected a size such as 512M or 2G"),
    (["--memory", "-1G"], "--memory -1G: expected a size such as 512M or 2G"),
    (["--memory", "1"], "--memory 1: must be at least 16M"),
    (["--memory", "0"], "--memory 0: must be at least 16M"),
    (["--memory", "15M"], "--memory 15M: must be at least 16M"),
    (["--pids", "0"], "--pids 0: must be between 1 and 4194304"),
    (["--pids", "many"], "--pids many: expected a whole number of processes"),
    (["--network", "maybe"], "--network maybe: expected on or off"),
    (["--env", "NOVALUE"], "--env NOVALUE: expected KEY=VALUE with KEY a variable name"),
    (["--env", "1X=2"], "--env 1X=2: expected KEY=VALUE with KEY a variable name"),
    (["--env", "ROSCOE_TX=x"], "--env ROSCOE_TX=x: ROSCOE_TX is set by roscoe for every run"),
    (["--memory"], "tx run: option --memory needs a value"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_options_out_of_range_are_refused(roscoe: Roscoe, root: Path, options: list[str], message: str) -> None:
    tail = [] if options == ["--memory"] else ["--", "touch", "x"]
    done = roscoe("tx", "run", "--root", root, *options, *tail, cwd=root)
    assert (done.returncode, done.stdout, done.stderr) == (125, b"", f"roscoe: error: {message}\n".encode())
    assert json.loads(roscoe("tx", "list", "--json").stdout) == []


def test_writable_paths_that_overlap_the_root_or_state_dir_are_refused(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    (tmp_path / "link-to-root").symlink_to(root)
    home.mkdir(exist_ok=True)
    cases = [
        (root / "case1", f"--writable {root / 'case1'}: overlaps the root {root}"),
        (tmp_path, f"--writable {tmp_path}: overlaps the root {root}"),
        (tmp_path / "link-to-root", f"--writable {tmp_path / 'link-to-root'}: overlaps the root {root}"),
        (home, f"--writable {home}: overlaps the state dir {home}"),
        ("/", f"--writable /: overlaps the root {root}"),
        (tmp_path / "missing", f"--writable {tmp_path / 'missing'}: does not exist"),
        ("/proc/sys", "--writable /proc/sys: /proc/sys is on a kernel filesystem"),
    ]
    for path, message in cases:
        done = roscoe("tx", "run", "--root", root, "--writable", path, "--", "true")
        assert (done.returncode, done.stderr) == (125, f"roscoe: error: {message}\n".encode()), path
    assert json.loads(roscoe("tx", "list", "--json").stdout) == []


def test_a_first_run_with_one_process_allowed_runs(roscoe: Roscoe, root: Path) -> None:
    # The probe of a new transaction's root forks nothing, and bwrap's own two
    # processes are not counted: --pids 1 is enough for a command that forks none.
    done = roscoe("tx", "run", "--root", root, "--pids", "1", "--", "true")
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().splitlines()[-1].endswith("no changes staged (kernel); review: roscoe tx diff "
                                                         + tx_from(done.stderr))


def test_the_sweep_removes_run_cgroups_of_dead_roscoes_even_when_their_pid_was_reused(tmp_path: Path) -> None:
    # (Plain directories stand in for cgroups: the sweep only lists and rmdirs.)
    from cowfs.limits import _sweep

    mine = tmp_path / f"{RUN_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
    reused = tmp_path / f"{RUN_PREFIX}{os.getpid()}-0"  # made by an earlier holder of this pid, at boot
    dead = tmp_path / f"{RUN_PREFIX}{gone_pid()}-5"
    other = tmp_path / "someone-else"
    for d in (mine, reused, dead, other):
        d.mkdir()
    _sweep(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
