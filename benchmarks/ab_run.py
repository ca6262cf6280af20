#!/usr/bin/env python3
"""``tx run -- true`` of two source trees of roscoe, interleaved round by round.

    git worktree add /var/tmp/old COMMIT
    benchmarks/ab_run.py /var/tmp/old .            # old first, new second
    benchmarks/ab_run.py --rounds 50 OLD NEW

Each tree runs as ``python -m cli.main`` with PYTHONPATH at the tree (so both
use this venv's dependencies), in a state dir of its own, over one small tree:
a new transaction each time, and a run in an existing one. Bytecode of both
trees is compiled first. Prints medians and mins in ms and NEW/OLD ratios.
Standard library only; everything lives in one temp dir, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as lib  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="a source tree of roscoe (cowfs/, journal/, cli/)")
    ap.add_argument("new", help="another one")
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds (default 40), after 3 warm-up rounds")
    ap.add_argument("--python", default=lib.default_python(), help="the venv's python (default %(default)s)")
    args = ap.parse_args()
    trees = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    scratch = tempfile.mkdtemp(prefix="roscoe-ab-run-")
    try:
        root = os.path.join(scratch, "root")
        for d in range(3):
            os.makedirs(os.path.join(root, f"case{d}"))
            for i in range(10):
                with open(os.path.join(root, f"case{d}", f"doc{i:02d}.txt"), "w") as f:
                    f.write(f"case {d} document {i}\n")
        envs, txs = {}, {}
        for name, tree in trees.items():
            subprocess.run([args.python, "-m", "compileall", "-q", "cowfs", "journal", "cli"], cwd=tree, check=True)
            env = dict(lib.scratch_env(os.path.join(scratch, f"home-{name}")), PYTHONPATH=tree)
            envs[name] = env
            begun = subprocess.run([args.python, "-m", "cli.main", "tx", "begin", "--root", root], env=env,
                                   capture_output=True, check=True)
            txs[name] = begun.stdout.decode().strip()
        cases = [(name, kind) for name in trees for kind in ("new-tx", "existing-tx")]

        def once(name: str, kind: str) -> float:
            where = ["--root", root] if kind == "new-tx" else ["--tx", txs[name]]
            ms, proc = lib.timed([args.python, "-m", "cli.main", "tx", "run", *where, "--", "true"],
                                 env=envs[name], cwd=scratch)
            lib.check_ok(f"{name} {kind}", proc)
            return ms

        for _ in range(3):
            for case in cases:
                once(*case)
        samples: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        for _ in range(args.rounds):
            for case in cases:
                samples[case].append(once(*case))
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(f"{started}  rounds {args.rounds} (+3 warm-up)  old {trees['old']}  new {trees['new']}")
        for (name, kind), values in samples.items():
            print(f"{name:4} {kind:12} median {statistics.median(values):7.1f}  min {min(values):7.1f}  (ms)")
        for kind in ("new-tx", "existing-tx"):
            ratio = statistics.median(samples[("new", kind)]) / statistics.median(samples[("old", kind)])
            print(f"new/old {kind:12} {ratio:.3f}x")
        return 0
    finally:
        lib.rmtree(scratch)


if __name__ == "__main__":
    sys.exit(main())
