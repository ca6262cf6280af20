#!/usr/bin/env python3
"""Wall time of ``roscoe tx diff ID --json``: does it follow the changes or the tree?

For trees of 100, 10,000 and 100,000 small files (dirs of 100 files each), one
``roscoe tx run`` of a shell script makes 10 changes (4 modified, 3 added,
3 deleted, spread over the tree); then ``tx diff ID --json`` is timed N times.
A last case makes 1,000 changes (400/300/300) in the 10,000-file tree, to show
the cost grows with the changed paths. Timed alongside: ``python -c pass`` (the
venv's; the interpreter floor) and ``roscoe tx diff NO-SUCH-TX --json`` (exit 5;
the CLI floor: start-up, imports, journal open, no diff), so the part of each
diff that is real work shows as "above CLI floor". Every timed round runs each case once, so
drift hits them alike; each case gets one untimed warm-up diff first, so the
numbers are warm page cache.

Budget (shared/DESIGN.md, "Budgets"): 10 changes in a 100,000-file tree within
2x of 10 changes in a 100-file tree.

The trees are made once under ``--work DIR`` and reused by later runs with the
same DIR (a ``files-N.done`` marker beside each tree says it is complete);
without ``--work`` they go into a temp dir that is removed at the end. The
scratch ROSCOE_HOME is always removed. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as lib  # noqa: E402

BUDGET_RATIO = 2.0
PER_DIR = 100
LAYOUT = "v1: dNNNN/fNN.txt, 100 files a dir, content 'dD fF\\n'"
NO_SUCH_TX = "000000000000"
MANY_TREE, MANY = 10_000, (400, 300, 300)
FEW = (4, 3, 3)  # modified, added, deleted


def tree_path(work: str, n: int) -> str:
    return os.path.join(work, "trees", f"files-{n}")


def file_rel(i: int) -> str:
    return f"d{i // PER_DIR:04d}/f{i % PER_DIR:02d}.txt"


def ensure_tree(work: str, n: int) -> tuple[str, bool]:
    """The tree of ``n`` files, made now unless a complete one is cached."""
    root = tree_path(work, n)
    marker = root + ".done"
    try:
        with open(marker) as f:
            if f.read().strip() == LAYOUT:
                return root, True
    except FileNotFoundError:
        pass
    lib.rmtree(root, fix_modes=False)
    os.makedirs(root)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for d in range((n + PER_DIR - 1) // PER_DIR):
        dpath = os.path.join(root, f"d{d:04d}")
        os.mkdir(dpath)
        dfd = os.open(dpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for j in range(min(PER_DIR, n - d * PER_DIR)):
                fd = os.open(f"f{j:02d}.txt", flags, 0o644, dir_fd=dfd)
                os.write(fd, f"d{d} f{j}\n".encode())
                os.close(fd)
        finally:
            os.close(dfd)
    with open(marker, "w") as f:
        f.write(LAYOUT + "\n")
    return root, False


def change_script(root: str, n: int, counts: tuple[int, int, int], seed: int) -> str:
    """A shell script making ``counts`` = (modified, added, deleted) changes,
    spread evenly over the tree, modified and deleted interleaved at random."""
    n_mod, n_add, n_del = counts
    m = n_mod + n_del
    if m > n:
        raise SystemExit(f"{m} modified+deleted files asked of a {n}-file tree")
    picks = [(j * n) // m for j in range(m)]
    kinds = ["mod"] * n_mod + ["del"] * n_del
    random.Random(seed).shuffle(kinds)
    lines = ["set -e"]
    for i, kind in zip(picks, kinds):
        path = shlex.quote(os.path.join(root, file_rel(i)))
        lines.append(f"echo changed >> {path}" if kind == "mod" else f"rm {path}")
    n_dirs = (n + PER_DIR - 1) // PER_DIR
    for j in range(n_add):
        d = (j * n_dirs) // n_add
        path = shlex.quote(os.path.join(root, f"d{d:04d}", f"new{j:04d}.txt"))
        lines.append(f"echo added {j} > {path}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="timed diffs of each case (default 10)")
    ap.add_argument("--work", metavar="DIR", help="cache the trees here (default: a temp dir, removed)")
    ap.add_argument("--sizes", default="100,10000,100000",
                    help="tree sizes in files, comma-separated (default %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--python", default=lib.default_python(), help="the venv's python (default %(default)s)")
    ap.add_argument("--roscoe", default=lib.default_roscoe(), help="the roscoe CLI (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch ROSCOE_HOME and temp work dir")
    ap.add_argument("--check", action="store_true", help="exit 1 when the budget is missed")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes {args.sizes}: expected numbers")
    if not sizes or sizes[0] < sum(FEW):
        ap.error(f"--sizes: every tree needs at least {sum(FEW)} files")

    compiled = lib.compile_packages(args.python)
    print(lib.describe_compile(compiled))

    t0 = time.perf_counter()
    temp_work = args.work is None
    work = tempfile.mkdtemp(prefix="roscoe-bench-diff-") if temp_work else os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    home = tempfile.mkdtemp(prefix="home-", dir=work)  # beside the trees, never inside one
    env = lib.scratch_env(home)
    try:
        trees: dict[int, str] = {}
        for n in sorted(set(sizes) | {MANY_TREE}):
            started = time.perf_counter()
            trees[n], cached = ensure_tree(work, n)
            how = "cached" if cached else f"made in {time.perf_counter() - started:.1f} s"
            print(f"tree of {n:,} files: {trees[n]} ({how})")

        # case name -> (tree size, (modified, added, deleted))
        plan = {f"{n}-files/10-changes": (n, FEW) for n in sizes}
        plan[f"{MANY_TREE}-files/{sum(MANY)}-changes"] = (MANY_TREE, MANY)
        txs: dict[str, str] = {}
        run_ms: dict[str, float] = {}
        backends: set[str] = set()
        for seed, (name, (n, counts)) in enumerate(plan.items()):
            script = change_script(trees[n], n, counts, seed)
            ms, proc = lib.timed([args.roscoe, "tx", "run", "--root", trees[n], "-m", f"bench_diff {name}",
                                  "--", "sh", "-s"], env=env, cwd=work, stdin=script.encode())
            lib.check_ok(f"tx run ({name})", proc)
            lines = proc.stderr.decode(errors="replace").splitlines()
            if not lines or not lines[0].startswith("roscoe: tx "):
                raise SystemExit(f"tx run ({name}): unexpected stderr: {lines!r}")
            txs[name] = lines[0].split()[-1]
            run_ms[name] = round(ms, 3)
            if "staged (" in lines[-1]:
                backends.add(lines[-1].split("staged (", 1)[1].split(")", 1)[0])

        t_setup = time.perf_counter() - t0

        def diff_once(name: str) -> float:
            ms, proc = lib.timed([args.roscoe, "tx", "diff", txs[name], "--json"],
                                 env=env, cwd=work, capture_stdout=True)
            lib.check_ok(f"tx diff ({name})", proc)
            return ms

        def python_floor() -> float:
            ms, proc = lib.timed([args.python, "-c", "pass"], env=env, cwd=work)
            lib.check_ok("python -c pass", proc)
            return ms

        def cli_floor() -> float:
            ms, proc = lib.timed([args.roscoe, "tx", "diff", NO_SUCH_TX, "--json"],
                                 env=env, cwd=work, capture_stdout=True)
            if proc.returncode != 5:
                raise SystemExit(f"tx diff {NO_SUCH_TX}: expected exit 5 (no such transaction), "
                                 f"got {proc.returncode}\n{proc.stderr.decode(errors='replace')}")
            return ms

        floors = {"python -c pass": python_floor, "tx diff NO-SUCH-TX": cli_floor}

        # warm-up, and a check that each diff is what the script did
        for name, (n, (n_mod, n_add, n_del)) in plan.items():
            _, proc = lib.timed([args.roscoe, "tx", "diff", txs[name], "--json"],
                                env=env, cwd=work, capture_stdout=True)
            lib.check_ok(f"tx diff ({name})", proc)
            diff = json.loads(proc.stdout)
            got = diff["summary"]
            want = {"modified": n_mod, "added": n_add, "deleted": n_del}
            if any(got.get(k) != v for k, v in want.items()) or len(diff["changes"]) != sum(want.values()):
                raise SystemExit(f"tx diff ({name}): expected {want}, got {got} "
                                 f"with {len(diff['changes'])} changes")
        for floor in floors.values():
            floor()

        samples: dict[str, list[float]] = {name: [] for name in (*plan, *floors)}
        for _ in range(args.runs):
            for name in plan:
                samples[name].append(diff_once(name))
            for name, floor in floors.items():
                samples[name].append(floor())

        stale = lib.recheck_bytecode(args.python)
        stats = {name: lib.summarize(s) for name, s in samples.items()}
        small, large = f"{sizes[0]}-files/10-changes", f"{sizes[-1]}-files/10-changes"
        ratio = stats[large]["median_ms"] / stats[small]["median_ms"]
        ten_in_many_tree = f"{MANY_TREE}-files/10-changes"
        many = f"{MANY_TREE}-files/{sum(MANY)}-changes"
        follow = (stats[many]["median_ms"] / stats[ten_in_many_tree]["median_ms"]
                  if ten_in_many_tree in stats else None)

        info = lib.machine()
        print(f"{info['date']}  nproc {info['nproc']}  kernel {info['kernel']}  euid {info['euid']}  "
              f"backend {', '.join(sorted(backends)) or '?'}  runs {args.runs} (+1 warm-up)")
        cli = stats["tx diff NO-SUCH-TX"]["median_ms"]
        print(f"{'roscoe tx diff ID --json':<34} {'median':>8} {'p90':>8} {'min':>8} {'>floor':>8}   (ms)"
              f"  [tx run that made the changes]")
        notes = {"python -c pass": "(interpreter floor)", "tx diff NO-SUCH-TX": "(CLI floor, exit 5)"}
        for name, s in stats.items():
            above = f"{s['median_ms'] - cli:8.1f}" if name in plan else f"{'':8}"
            made = f"[{run_ms[name]:.0f} ms]" if name in run_ms else notes[name]
            print(f"{name:<34} {s['median_ms']:8.1f} {s['p90_ms']:8.1f} {s['min_ms']:8.1f} {above}   {made}")
        above_small = stats[small]["median_ms"] - cli
        above_large = stats[large]["median_ms"] - cli
        for n in sizes[1:]:
            r = stats[f"{n}-files/10-changes"]["median_ms"] / stats[small]["median_ms"]
            print(f"ratio {n:,}/{sizes[0]:,} files (10 changes): {r:.2f}x")
        if follow is not None:
            print(f"ratio {sum(MANY):,}/10 changes ({MANY_TREE:,}-file tree): {follow:.2f}x")
        print(f"above the CLI floor: {sizes[-1]:,} files {above_large:.1f} ms, {sizes[0]:,} files "
              f"{above_small:.1f} ms (differences of medians; noisy when both are small)")
        ok = ratio <= BUDGET_RATIO
        print(f"budget: 10 changes in {sizes[-1]:,} files vs in {sizes[0]:,} files: {ratio:.2f}x "
              f"vs within {BUDGET_RATIO:.0f}x: {'PASS' if ok else 'FAIL'}")

        if args.json:
            lib.write_json(args.json, {
                "benchmark": "bench_diff", "machine": info, "runs": args.runs,
                "bytecode": compiled, "stale_during_run": stale, "backend": sorted(backends),
                "layout": LAYOUT, "cases": {name: {"files": n, "modified": c[0], "added": c[1],
                                                   "deleted": c[2], "tx_run_ms": run_ms[name]}
                                            for name, (n, c) in plan.items()},
                "results": stats,
                "cli_floor_median_ms": cli,
                "above_cli_floor_ms": {name: round(stats[name]["median_ms"] - cli, 3) for name in plan},
                "ratios": {"largest/smallest": round(ratio, 3),
                           f"{sum(MANY)}/10 changes": round(follow, 3) if follow else None},
                "budget": {"ratio_at_most": BUDGET_RATIO, "pass": ok},
            })
            print(f"wrote {args.json}")
        return 0 if (not args.check or ok) else 1
    finally:
        t1 = time.perf_counter()
        if args.keep:
            print(f"kept {home}" + (f" and {work}" if temp_work else ""), file=sys.stderr)
        else:
            lib.rmtree(home)
            if temp_work:
                lib.rmtree(work, fix_modes=False)  # only trees are left: plain files and dirs
        t2 = time.perf_counter()
        setup = f"setup (trees, tx runs) {t_setup:.1f} s, " if "t_setup" in locals() else ""
        print(f"wall: {setup}total {t2 - t0:.1f} s, of which cleanup {t2 - t1:.1f} s"
              + ("" if args.work else "; pass --work DIR to keep the trees for the next run"),
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
