#!/usr/bin/env python3
"""Wall time of ``roscoe tx plan``: how many ops a second a large plan stages.

A tree of 6,000 small files (60 dirs of 100) is made once. Each timed round
runs, in order, ``roscoe tx plan --root R PLAN`` (a new transaction each time,
aborted untimed afterwards) for:

- ``empty``: a plan with no ops (the floor: CLI start-up, begin, the
  sandboxed applier's start, the savepoint, the diff of nothing);
- ``ops-1000`` and ``ops-10000``: plans of that many ops, mixed as an
  agent's reorganisation would be: 10% mkdir, 30% write, 25% copy, 25% move,
  10% delete, each op on a different path.

Baseline: ``plain-ops-N`` runs the same applier (``python -m cowfs.planrun``)
on a plain ``cp -a`` copy of the tree, with no transaction and no sandbox:
what the filesystem itself costs. It reports the median wall time per case, the ops/s of each plan
(ops / median) and the ops/s above the floor (ops / (median - floor median)).
The whole cost is counted: checking the plan, the run, reading the upper
layer and hashing the diff (``tx plan`` prints its summary).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as lib  # noqa: E402

DIRS, PER_DIR = 60, 100


def make_tree(root: str) -> None:
    for d in range(DIRS):
        os.makedirs(os.path.join(root, f"d{d:02d}"))
        for f in range(PER_DIR):
            with open(os.path.join(root, f"d{d:02d}", f"f{f:03d}.txt"), "w") as out:
                out.write(f"d{d} f{f}\n" * 8)


def make_plan(n: int) -> dict:
    """``n`` ops on distinct paths: every source is a file of the tree, used once."""
    sources = iter(f"d{d:02d}/f{f:03d}.txt" for f in range(PER_DIR) for d in range(DIRS))
    counts = {"mkdir": n // 10, "write": n * 3 // 10, "copy": n // 4, "move": n // 4}
    counts["delete"] = n - sum(counts.values())
    assert counts["copy"] + counts["move"] + counts["delete"] <= DIRS * PER_DIR
    ops: list[dict] = []
    made = [f"new/m{i:05d}" for i in range(counts["mkdir"])]
    ops += [{"op": "mkdir", "path": p} for p in made]
    ops += [{"op": "write", "path": f"{made[i % len(made)]}/w{i:05d}.txt", "content": f"written {i}\n"}
            for i in range(counts["write"])]
    for kind in ("copy", "move", "delete"):
        for i in range(counts[kind]):
            src = next(sources)
            if kind == "delete":
                ops.append({"op": "delete", "path": src})
            else:
                ops.append({"op": kind, "from": src, "to": f"{made[i % len(made)]}/{kind}-{i:05d}.txt"})
    assert len(ops) == n
    return {"version": 1, "ops": ops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each case (default 3)")
    ap.add_argument("--sizes", default="1000,10000", help="plan sizes in ops (default %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--python", default=lib.default_python(), help="the venv's python (default %(default)s)")
    ap.add_argument("--roscoe", default=lib.default_roscoe(), help="the roscoe CLI (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = ap.parse_args()

    compiled = lib.compile_packages(args.python)
    print(lib.describe_compile(compiled))
    work = tempfile.mkdtemp(prefix="roscoe-bench-plan-")
    home = os.path.join(work, "home")
    root = os.path.join(work, "tree")
    env = lib.scratch_env(home)
    env.pop("ROSCOE_CONFIG", None)  # no config file: the defaults (an absent ROSCOE_CONFIG file is an error)
    make_tree(root)
    cases = {"empty": 0, **{f"ops-{n}": n for n in map(int, args.sizes.split(","))}}
    plans = {}
    for name, n in cases.items():
        plans[name] = os.path.join(work, f"{name}.json")
        with open(plans[name], "w") as f:
            json.dump(make_plan(n) if n else {"version": 1, "ops": []}, f)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for round_ in range(args.runs + 1):  # round 0 warms up
            for name in cases:
                ms, proc = lib.timed([args.roscoe, "tx", "plan", "--root", root, plans[name]],
                                     env=env, cwd=work, capture_stdout=True)
                lib.check_ok(f"tx plan {name}", proc)
                tx = proc.stdout.decode().strip()
                lib.check_ok("tx abort", lib.timed([args.roscoe, "tx", "abort", tx], env=env, cwd=work)[1])
                if round_:
                    samples[name].append(ms)
                if n:  # baseline: the same applier on a plain copy, no transaction, no sandbox
                    plain = os.path.join(work, "plain")
                    lib.rmtree(plain, fix_modes=False)
                    lib.check_ok("cp -a", lib.timed(["cp", "-a", root, plain], env=env, cwd=work)[1])
                    ms, proc = lib.timed([args.python, "-m", "cowfs.planrun", "--root", plain, plans[name]],
                                         env=env, cwd=lib.REPO, capture_stdout=True)
                    lib.check_ok(f"planrun {name}", proc)
                    if round_:
                        samples.setdefault(f"plain-{name}", []).append(ms)
        stale = lib.recheck_bytecode(args.python)
    finally:
        if not args.keep:
            lib.rmtree(work)
    stats = {name: lib.summarize(s) for name, s in samples.items()}
    floor = stats["empty"]["median_ms"]
    print(f"{'case':<17} {'ops':>6} {'median ms':>10} {'p90 ms':>8} {'ops/s':>8} {'ops/s above floor':>18}")
    rows = [(name, n) for name, n in cases.items()] + [(f"plain-{name}", n) for name, n in cases.items() if n]
    for name, n in rows:
        med = stats[name]["median_ms"]
        rate = f"{n / med * 1000:,.0f}" if n else "-"
        above = f"{n / (med - floor) * 1000:,.0f}" if n and med > floor else "-"
        stats[name].update(ops=n)
        print(f"{name:<17} {n:>6} {med:>10,.0f} {stats[name]['p90_ms']:>8,.0f} {rate:>8} {above:>18}")
    if args.json:
        lib.write_json(args.json, {"machine": lib.machine(), "bytecode": compiled, "stale_during_run": stale,
                                   "tree_files": DIRS * PER_DIR, "cases": stats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
