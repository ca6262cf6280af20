#!/usr/bin/env python3
"""Wall time of ``roscoe tx commit ID --yes`` and of ``roscoe tx rollback ID --yes``
of that commit, against ``cp -a`` of the same files on the same disk.

Shapes (each one a transaction staged by an untimed ``roscoe tx run``):

  a      1 file of 256 MiB added
  b      2,000 files of 16 KiB added across 20 existing dirs (100 a dir)
  c      200 files of 1 MiB modified (overwritten, same size) in a tree of 200
         such files (10 dirs of 20)
  d100   10 small files changed (4 modified, 3 added, 3 deleted) in a tree of
         100 files (bench_diff's tree and change script)
  d100k  the same 10 changes in a tree of 100,000 files

Timed for every shape, once per round, in this order:

  cp       cp -a UPPER DEST         the staged upper layer of the transaction
                                    (exactly the new files, plus their dirs and,
                                    for d, 3 whiteouts) copied to a new dir on
                                    the same disk
  cp+sync  cp -a UPPER DEST; sync -f DEST   the same with durability (one
                                    syncfs), since roscoe fsyncs
  commit   roscoe tx commit ID --yes
  rollback roscoe tx rollback ID --yes      (of that commit; it puts the tree back
                                    for the next round)
  floor    roscoe tx show FLOOR     an open transaction with no runs: the CLI
                                    floor (start-up, imports, journal open)

Before every timed command the script calls sync() (untimed), so each one starts
with no dirty pages of an earlier one and its source files clean in the page
cache. Each round of each shape gets a fresh ROSCOE_HOME (so the blob store never
already holds an image, as it would for a repeated content) and fresh random
content. That state dir is first put in use, untimed: a commit and rollback of
2,000 new files of 16 random bytes in another root leave its blob store with its
fan dirs (``blobs/00`` .. ``blobs/ff``), as any store that kept a few thousand
images has. A store's first images make those dirs, up to 256 mkdirs, which on
this VM's ext4 cost 15-200 ms (new directories go to other block groups, whose
bitmaps are often cold): a cost of the state dir's first use, not of N files.
``--fresh-store`` skips the warm-up and times that first use too. One untimed warm-up round of the small shapes (d100, d100k; else of
the first shape picked) comes first: it warms the interpreter, roscoe's bytecode
and the venv in the page cache. The big shapes need none of their own, since
every round starts from a fresh ROSCOE_HOME and fresh content anyway.

Budget (shared/DESIGN.md, "Budgets"): ``tx commit`` and ``tx rollback`` of N
changed bytes or files within 1.5x of ``cp -a`` + ``sync -f`` of the same files
on the same disk (roscoe is durable; plain ``cp`` is not), plus the CLI's floor
(``tx show`` of an empty transaction), all measured in the same run. With
medians:

    roscoe <= 1.5 * (cp+sync) + floor,  i.e.  (roscoe - floor) / (cp+sync) <= 1.5

checked for the commit and the rollback of every shape picked. The last ratio
is the one printed as the budget's. And: commit cost grows with the change, not
with the tree: d100k/d100 is reported against 2x (the diff budget's factor).

The trees of c and d are made once under ``--work DIR`` and reused by later runs
with the same DIR (d's are bench_diff's, shared with it); a tree's marker is
removed while it is being committed to and put back when every rollback checked
out. Without ``--work`` everything goes into a temp dir removed at the end.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as lib  # noqa: E402
import bench_diff  # noqa: E402  (its trees and its 10-change script)

BUDGET_RATIO = 1.5
WARM_FILES = 2000
TREE_RATIO = 2.0
WARMUP = 1
MiB = 1 << 20
BIG = 256 * MiB
MANY_FILES, MANY_DIRS, MANY_SIZE = 2000, 20, 16 * 1024
MOD_FILES, MOD_DIRS, MOD_SIZE = 200, 10, MiB
MOD_LAYOUT = "v1: mNN/fNN.bin, 10 dirs of 20 files of 1 MiB, random bytes"
SHAPES = {
    "a": "1 file of 256 MiB added",
    "b": "2,000 files of 16 KiB added across 20 dirs",
    "c": "200 files of 1 MiB modified in a tree",
    "d100": "10 small changes in a 100-file tree",
    "d100k": "10 small changes in a 100,000-file tree",
}
CASES = ("cp", "cp+sync", "commit", "rollback")

# Run inside the transaction's overlay (stdin: JSON [[abs path, size], ...]): write
# each file with fresh random bytes, truncating what is there (a modification).
GEN = r"""
import json, os, sys
for path, size in json.load(sys.stdin):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
"""


def remove(path: str) -> None:
    """Remove a scratch dir, overlay work dirs (mode 000) included."""
    lib.rmtree(path)


def write_random(path: str, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(os.urandom(n))
            left -= n


def make_base_root(root: str) -> None:
    """The root that a and b add to: 20 dirs of 2 small files."""
    lib.rmtree(root, fix_modes=False)
    os.makedirs(root)
    for d in range(MANY_DIRS):
        sub = os.path.join(root, f"case{d:02d}")
        os.mkdir(sub)
        for i in range(2):
            with open(os.path.join(sub, f"doc{i}.txt"), "w") as f:
                f.write(f"case {d} document {i}\n")


def mod_rel(i: int) -> str:
    per = MOD_FILES // MOD_DIRS
    return f"m{i // per:02d}/f{i % per:02d}.bin"


def ensure_mod_tree(work: str) -> tuple[str, bool]:
    """c's tree: 200 files of 1 MiB, made now unless a complete one is cached."""
    root = os.path.join(work, "trees", "modify-200x1MiB")
    marker = root + ".done"
    try:
        with open(marker) as f:
            if f.read().strip() == MOD_LAYOUT:
                return root, True
    except FileNotFoundError:
        pass
    lib.rmtree(root, fix_modes=False)
    os.makedirs(root)
    for i in range(MOD_FILES):
        path = os.path.join(root, mod_rel(i))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_random(path, MOD_SIZE)
    with open(marker, "w") as f:
        f.write(MOD_LAYOUT + "\n")
    return root, False


def sig(path: str) -> tuple[int, int, int] | None:
    """(type and mode, size, mtime_ns) of ``path``, or None when absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_mode, st.st_size, st.st_mtime_ns)


def upper_entries(upper: str) -> dict[str, tuple[int, int, int] | None]:
    """Every non-directory entry of an upper layer: rel path -> its signature, or
    None for a whiteout (a deletion)."""
    found: dict[str, tuple[int, int, int] | None] = {}
    for dirpath, _dirnames, filenames in os.walk(upper):
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, upper)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                found[rel] = None
            else:
                found[rel] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


class Shape:
    def __init__(self, name: str, root: str, expect: tuple[int, int]) -> None:
        self.name = name
        self.root = root
        self.expect = expect  # (files written, whiteouts) in the upper layer
        self.new_bytes = 0
        self.files = 0

    def stage_argv(self, python: str, rnd: int) -> tuple[list[str], bytes]:
        if self.name == "a":
            spec = [[os.path.join(self.root, "case00", f"scan-{rnd:03d}.bin"), BIG]]
        elif self.name == "b":
            per = MANY_FILES // MANY_DIRS
            spec = [[os.path.join(self.root, f"case{i // per:02d}", f"new{rnd:03d}-{i % per:03d}.bin"),
                     MANY_SIZE] for i in range(MANY_FILES)]
        elif self.name == "c":
            spec = [[os.path.join(self.root, mod_rel(i)), MOD_SIZE] for i in range(MOD_FILES)]
        else:
            n = 100 if self.name == "d100" else 100_000
            script = bench_diff.change_script(self.root, n, bench_diff.FEW, seed=rnd)
            return ["sh", "-s"], script.encode()
        return [python, "-c", GEN], json.dumps(spec).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed rounds of every shape (default 3)")
    ap.add_argument("--work", metavar="DIR", help="keep the trees here (default: a temp dir, removed)")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help="comma-separated subset of %(default)s")
    ap.add_argument("--profile", metavar="DIR",
                    help="after the timed rounds, one more commit and rollback of every shape "
                         "under cProfile (python -m cProfile -o DIR/SHAPE-commit.prof -m cli.main ...), "
                         "summarized by where the time goes")
    ap.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                    help="untimed pause between the commit and its rollback (default 0). An operator's"
                         " rollback comes long after the commit; from 2.2 s on, the files the commit"
                         " wrote are past the hash cache's racy window (cowfs/hashcache.py), and the"
                         " rollback checks their images by identity instead of reading them")
    ap.add_argument("--fresh-store", action="store_true",
                    help="time every round in a state dir used for nothing else before: its blob store makes"
                         " its fan dirs (up to 256 mkdirs) in the timed commands. By default an untimed commit"
                         " and rollback of 2,000 new small files in another root make them first, as in any"
                         " state dir in use")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--python", default=lib.default_python(), help="the venv's python (default %(default)s)")
    ap.add_argument("--roscoe", default=lib.default_roscoe(), help="the roscoe CLI (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir (trees, last homes)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a budget is missed (every shape: commit and rollback each at most "
                         "1.5x of cp -a + sync -f plus the CLI floor, medians; and d100k/d100 within 2x)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not shapes or any(s not in SHAPES for s in shapes):
        ap.error(f"--shapes: pick from {', '.join(SHAPES)}")
    shapes = [s for s in SHAPES if s in shapes]

    compiled = lib.compile_packages(args.python)
    print(lib.describe_compile(compiled))

    t0 = time.perf_counter()
    temp_work = args.work is None
    work = tempfile.mkdtemp(prefix="roscoe-bench-commit-") if temp_work else os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="commit-", dir=work)  # homes, cp targets, small roots
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    markers: dict[str, str] = {}  # cached tree -> its marker's text, put back at the end
    dirty: set[str] = set()  # roots with a commit not (yet) rolled back and checked
    t_setup = None
    try:
        roots: dict[str, Shape] = {}
        for name in shapes:
            started = time.perf_counter()
            if name in ("a", "b"):
                root = os.path.join(scratch, f"root-{name}")
                make_base_root(root)
                how = "made"
            elif name == "c":
                root, cached = ensure_mod_tree(work)
                how = "cached" if cached else f"made in {time.perf_counter() - started:.1f} s"
            else:
                n = 100 if name == "d100" else 100_000
                root, cached = bench_diff.ensure_tree(work, n)
                how = "cached" if cached else f"made in {time.perf_counter() - started:.1f} s"
            roots[name] = Shape(name, root, {"a": (1, 0), "b": (MANY_FILES, 0), "c": (MOD_FILES, 0)}.get(
                name, (bench_diff.FEW[0] + bench_diff.FEW[1], bench_diff.FEW[2])))
            print(f"shape {name}: {SHAPES[name]}: root {root} ({how})")
        devs = {os.stat(p).st_dev for p in (scratch, *(s.root for s in roots.values()))}
        if len(devs) != 1:
            print("warning: the roots and the scratch dir (ROSCOE_HOME, cp targets) are not on one "
                  "filesystem; cp and commit are then not on the same disk", file=sys.stderr)
        # the cached trees get commits: drop their markers until every rollback checked out
        for s in roots.values():
            marker = s.root + ".done"
            if s.name in ("c", "d100", "d100k") and os.path.exists(marker):
                with open(marker) as f:
                    markers[marker] = f.read()
                os.unlink(marker)
        t_setup = time.perf_counter() - t0

        samples: dict[str, dict[str, list[float]]] = {s: {c: [] for c in CASES} for s in shapes}
        floor: list[float] = []
        stage_ms: dict[str, list[float]] = {s: [] for s in shapes}
        backends: set[str] = set()
        profiles: dict[str, dict] = {}

        def run_ok(what: str, argv: list[str], env: dict[str, str], **kw) -> tuple[float, subprocess.CompletedProcess]:
            ms, proc = lib.timed(argv, env=env, cwd=kw.pop("cwd", scratch), **kw)
            lib.check_ok(what, proc)
            return ms, proc

        fans: list[int] = []  # fan dirs in each warmed blob store

        def warm_store(home: str, env: dict[str, str]) -> int:
            """Make the fresh ``home`` a state dir in use: an untimed commit and
            rollback of WARM_FILES new files of 16 random bytes, in a root of
            their own, leave a blob store with (nearly) all its fan dirs, as any
            store that kept a few thousand images has. The number of fan dirs."""
            wroot = os.path.join(scratch, "warm-root")
            lib.rmtree(wroot, fix_modes=False)
            os.makedirs(wroot)
            _, p = run_ok("tx begin (warm-up)", [args.roscoe, "tx", "begin", "--root", wroot, "-m",
                                                 "bench_commit store warm-up"], env, capture_stdout=True)
            wtx = p.stdout.decode().strip()
            spec = [[os.path.join(wroot, f"w{i:04d}"), 16] for i in range(WARM_FILES)]
            run_ok("tx run (warm-up)", [args.roscoe, "tx", "run", "--tx", wtx, "--", args.python, "-c", GEN],
                   env, cwd=wroot, stdin=json.dumps(spec).encode())
            run_ok("tx commit (warm-up)", [args.roscoe, "tx", "commit", wtx, "--yes"], env)
            run_ok("tx rollback (warm-up)", [args.roscoe, "tx", "rollback", wtx, "--yes"], env)
            lib.rmtree(wroot, fix_modes=False)
            store = os.path.join(home, "blobs")
            return sum(len(n) == 2 and os.path.isdir(os.path.join(store, n)) for n in os.listdir(store))

        def one_round(shape: Shape, rnd: int, timed: bool, profile: bool = False) -> None:
            name = shape.name
            home = os.path.join(scratch, f"home-{name}-{rnd}")
            dest = os.path.join(scratch, f"cp-{name}")
            remove(home)
            lib.rmtree(dest, fix_modes=False)
            os.makedirs(home)
            env = lib.scratch_env(home)
            try:
                if not args.fresh_store:
                    fans.append(warm_store(home, env))
                _, p = run_ok("tx begin", [args.roscoe, "tx", "begin", "--root", shape.root, "-m",
                                           f"bench_commit {name}"], env, capture_stdout=True)
                tx = p.stdout.decode().strip()
                _, p = run_ok("tx begin (floor)", [args.roscoe, "tx", "begin", "--root", shape.root, "-m",
                                                   "bench_commit floor"], env, capture_stdout=True)
                floor_tx = p.stdout.decode().strip()
                argv, stdin = shape.stage_argv(args.python, rnd)
                ms, p = run_ok(f"tx run ({name})", [args.roscoe, "tx", "run", "--tx", tx, "--", *argv],
                               env, cwd=shape.root, stdin=stdin)
                lines = p.stderr.decode(errors="replace").splitlines()
                if lines and "staged (" in lines[-1]:
                    backends.add(lines[-1].split("staged (", 1)[1].split(")", 1)[0])
                upper = os.path.join(home, "tx", tx, "upper")
                if not os.path.isdir(upper):
                    raise SystemExit(f"{name}: no upper layer at {upper}: bench_commit needs an "
                                     f"overlay backend (got {sorted(backends)})")
                staged = upper_entries(upper)
                got = (sum(v is not None for v in staged.values()), sum(v is None for v in staged.values()))
                if got != shape.expect:
                    raise SystemExit(f"{name}: the run staged {got} (files, whiteouts), "
                                     f"expected {shape.expect}")
                shape.files = got[0]
                shape.new_bytes = sum(v[1] for v in staged.values() if v is not None)
                before = {rel: sig(os.path.join(shape.root, rel)) for rel in staged}

                def cp_once(durable: bool) -> float:
                    lib.rmtree(dest, fix_modes=False)
                    os.sync()
                    started = time.perf_counter_ns()
                    p = subprocess.run(["cp", "-a", upper, dest], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    lib.check_ok("cp -a", p)
                    if durable:
                        p = subprocess.run(["sync", "-f", dest], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                        lib.check_ok("sync -f", p)
                    return (time.perf_counter_ns() - started) / 1e6

                t_cp = cp_once(False)
                t_cps = cp_once(True)
                lib.rmtree(dest, fix_modes=False)

                def cli(verb: str, *rest: str) -> tuple[float, subprocess.CompletedProcess]:
                    argv = [args.roscoe, "tx", verb, *rest]
                    if profile:
                        out = os.path.join(os.path.abspath(args.profile), f"{name}-{verb}.prof")
                        argv = [args.python, "-m", "cProfile", "-o", out, "-m", "cli.main", "tx", verb, *rest]
                        penv = dict(env, PYTHONPATH=lib.REPO)
                        os.sync()
                        ms, p = run_ok(f"tx {verb} ({name}, profiled)", argv, penv, capture_stdout=True)
                        profiles[f"{name}-{verb}"] = {"wall_ms": round(ms, 3), "file": out,
                                                       **profile_summary(out)}
                        return ms, p
                    os.sync()
                    return run_ok(f"tx {verb} ({name})", argv, env, capture_stdout=True)

                dirty.add(shape.root)
                t_commit, _ = cli("commit", tx, "--yes")
                for rel, want in staged.items():
                    now = sig(os.path.join(shape.root, rel))
                    if (now is None) != (want is None) or (now and want and now[1:] != want[1:]):
                        raise SystemExit(f"{name}: after the commit, {rel} is {now}, expected {want}")
                time.sleep(args.settle)
                t_rollback, p = cli("rollback", tx, "--yes")
                after = {rel: sig(os.path.join(shape.root, rel)) for rel in staged}
                if after != before:
                    bad = [rel for rel in staged if after[rel] != before[rel]]
                    raise SystemExit(f"{name}: after the rollback, {len(bad)} paths differ from before "
                                     f"the commit, e.g. {bad[0]}: {after[bad[0]]} vs {before[bad[0]]}")
                dirty.discard(shape.root)
                t_floor, _ = run_ok("tx show (floor)", [args.roscoe, "tx", "show", floor_tx], env)
                if timed:
                    stage_ms[name].append(round(ms, 3))
                    for case, t in zip(CASES, (t_cp, t_cps, t_commit, t_rollback)):
                        samples[name][case].append(t)
                    floor.append(t_floor)
            finally:
                if not args.keep:
                    remove(home)
                lib.rmtree(dest, fix_modes=False)

        warm = [name for name in shapes if name.startswith("d")] or shapes[:1]
        for rnd in range(WARMUP):
            for name in warm:
                one_round(roots[name], rnd, timed=False)
        round_s: dict[str, list[float]] = {s: [] for s in shapes}
        for rnd in range(WARMUP, WARMUP + args.runs):
            for name in shapes:
                started = time.perf_counter()
                one_round(roots[name], rnd, timed=True)
                round_s[name].append(round(time.perf_counter() - started, 2))
        if args.profile:
            for name in shapes:
                one_round(roots[name], WARMUP + args.runs, timed=False, profile=True)

        stale = lib.recheck_bytecode(args.python)
        stats = {name: {case: lib.summarize(samples[name][case]) for case in CASES} for name in shapes}
        floor_stats = lib.summarize(floor)
        info = lib.machine()
        print(f"{info['date']}  nproc {info['nproc']}  kernel {info['kernel']}  euid {info['euid']}  "
              f"backend {', '.join(sorted(backends)) or '?'}  runs {args.runs} "
              f"(+{WARMUP} warm-up of {', '.join(warm)})  settle {args.settle:g} s  store "
              + ("fresh (first use in the timed commands)" if args.fresh_store else
                 f"in use (fan dirs made by an untimed commit and rollback: {min(fans)}-{max(fans)} of 256)"))
        print(f"{'shape / case':<34} {'median':>9} {'p90':>9} {'min':>9}   (ms)")
        for name in shapes:
            s = roots[name]
            print(f"{name}: {SHAPES[name]} ({s.files:,} files, {s.new_bytes / MiB:,.1f} MiB new)")
            for case in CASES:
                st = stats[name][case]
                print(f"  {case:<32} {st['median_ms']:9.1f} {st['p90_ms']:9.1f} {st['min_ms']:9.1f}")
        print(f"{'CLI floor: tx show (empty tx)':<34} {floor_stats['median_ms']:9.1f} "
              f"{floor_stats['p90_ms']:9.1f} {floor_stats['min_ms']:9.1f}")
        print("untimed staging run (tx run, median ms) and whole round (median s): " + ", ".join(
            f"{name} {sorted(stage_ms[name])[len(stage_ms[name]) // 2]:.0f} ms / "
            f"{sorted(round_s[name])[len(round_s[name]) // 2]:.1f} s" for name in shapes))

        ratios: dict[str, dict[str, float]] = {}
        margins: dict[str, dict[str, float]] = {}
        verdicts: dict[str, bool] = {}
        fl = floor_stats["median_ms"]
        print(f"budget: commit and rollback at most {BUDGET_RATIO}x of cp -a + sync -f, plus the CLI floor "
              f"({fl:.1f} ms), medians of this run; the budget's ratio is (roscoe - floor) / (cp+sync), "
              f"at most {BUDGET_RATIO}")
        print(f"{'shape':<7} {'commit/(cp+sync)':>17} {'(commit-floor)/(cp+sync)':>25} {'rollback/(cp+sync)':>19} "
              f"{'(rollback-floor)/(cp+sync)':>27}  verdict")
        for name in shapes:
            m = {case: stats[name][case]["median_ms"] for case in CASES}
            r = {
                "commit/(cp+sync)": m["commit"] / m["cp+sync"], "rollback/(cp+sync)": m["rollback"] / m["cp+sync"],
                "(commit-floor)/(cp+sync)": (m["commit"] - fl) / m["cp+sync"],
                "(rollback-floor)/(cp+sync)": (m["rollback"] - fl) / m["cp+sync"],
                "commit/cp": m["commit"] / m["cp"], "rollback/cp": m["rollback"] / m["cp"],
            }
            ratios[name] = {k: round(v, 3) for k, v in r.items()}
            # ms under (+) or over (-) the budget: 1.5 * (cp+sync) + floor - roscoe
            margins[name] = {case: round(BUDGET_RATIO * m["cp+sync"] + fl - m[case], 1)
                             for case in ("commit", "rollback")}
            ok = all(v >= 0 for v in margins[name].values())
            verdicts[name] = ok
            note = ", ".join(f"{case} {abs(v):,.0f} ms {'under' if v >= 0 else 'over'}"
                             for case, v in margins[name].items())
            note = ("PASS (" if ok else "FAIL (") + note + ")"
            if name.startswith("d"):
                note += "; start-up bound"
            print(f"{name:<7} {r['commit/(cp+sync)']:16.2f}x {r['(commit-floor)/(cp+sync)']:24.2f}x "
                  f"{r['rollback/(cp+sync)']:18.2f}x {r['(rollback-floor)/(cp+sync)']:26.2f}x  {note}")
        tree = None
        if "d100" in shapes and "d100k" in shapes:
            small, large = stats["d100"], stats["d100k"]
            tree = {case: round(large[case]["median_ms"] / small[case]["median_ms"], 3)
                    for case in ("commit", "rollback")}
            tree_ok = all(v <= TREE_RATIO for v in tree.values())
            verdicts["d100k/d100"] = tree_ok
            print(f"10 changes, 100,000-file tree / 100-file tree: commit {tree['commit']:.2f}x, rollback "
                  f"{tree['rollback']:.2f}x vs within {TREE_RATIO:.0f}x: {'PASS' if tree_ok else 'FAIL'}")
        if profiles:
            print(f"profiles in {args.profile} (ms; own time by kind, then cumulative time of roscoe's steps):")
        for key, prof in profiles.items():
            print(f"  {key}: {prof['wall_ms']:.0f} wall under cProfile, {prof['total_s'] * 1000:.0f} profiled: "
                  + ", ".join(f"{k} {v * 1000:.0f}" for k, v in prof["by_kind_s"].items()))
            print("    " + ", ".join(f"{k} {v * 1000:.0f}" for k, v in prof["functions_cum_s"].items()))

        if args.json:
            lib.write_json(args.json, {
                "benchmark": "bench_commit", "machine": info, "runs": args.runs, "settle_s": args.settle,
                "store": {"fresh": args.fresh_store, "warm_up_files": 0 if args.fresh_store else WARM_FILES,
                          "fan_dirs": fans},
                "warmup": {"rounds": WARMUP, "shapes": warm},
                "bytecode": compiled, "stale_during_run": stale, "backend": sorted(backends),
                "shapes": {name: {"what": SHAPES[name], "root": roots[name].root, "files": roots[name].files,
                                  "new_bytes": roots[name].new_bytes, "tx_run_ms": stage_ms[name],
                                  "round_s": round_s[name]}
                           for name in shapes},
                "commands": {"cp": "cp -a UPPER DEST", "cp+sync": "cp -a UPPER DEST; sync -f DEST",
                             "commit": f"{args.roscoe} tx commit ID --yes",
                             "rollback": f"{args.roscoe} tx rollback ID --yes",
                             "floor": f"{args.roscoe} tx show FLOOR_ID"},
                "results": stats, "cli_floor": floor_stats, "ratios": ratios, "tree_ratio": tree,
                "profiles": profiles,
                "budget": {"rule": "median(roscoe) <= 1.5 * median(cp+sync) + median(floor), i.e. "
                                   "(roscoe - floor) / (cp+sync) <= 1.5, for commit and rollback",
                           "ratio_above_floor_to_cp_sync_at_most": BUDGET_RATIO,
                           "tree_ratio_at_most": TREE_RATIO, "margin_ms": margins, "pass": verdicts},
            })
            print(f"wrote {args.json}")
        return 0 if (not args.check or all(verdicts.values())) else 1
    finally:
        t1 = time.perf_counter()
        for marker, text in markers.items():
            if marker[:-len(".done")] in dirty:
                print(f"warning: {marker[:-len('.done')]} may still hold a commit that was not rolled "
                      f"back; its marker stays removed, so the next run makes it again", file=sys.stderr)
            elif os.path.isdir(marker[:-len(".done")]):
                with open(marker, "w") as f:
                    f.write(text)
        if args.keep:
            print(f"kept {scratch}" + (f" and {work}" if temp_work else ""), file=sys.stderr)
        else:
            remove(scratch)
            if temp_work:
                lib.rmtree(work, fix_modes=False)
        t2 = time.perf_counter()
        setup = f"setup (trees) {t_setup:.1f} s, " if t_setup is not None else ""
        print(f"wall: {setup}total {t2 - t0:.1f} s, of which cleanup {t2 - t1:.1f} s"
              + ("" if args.work else "; pass --work DIR to keep the trees for the next run"),
              file=sys.stderr)


# Where a profiled command's time went: builtins by kind (their own time), the
# rest is Python (start-up, imports, roscoe's logic). A ctypes call (syncfs) is
# not a builtin to cProfile: its time is the own time of the Python function
# that makes it, listed in PY_KINDS.
KINDS = (
    ("fsync/syncfs", ("posix.fsync", "posix.fdatasync", "posix.sync")),
    ("sqlite", ("sqlite3",)),
    ("hash (xxh3)", ("xxhash",)),
    ("read", ("posix.read", "readinto")),
    ("write", ("posix.write",)),
    ("open", ("posix.open",)),
    ("rename/link/unlink/mkdir", ("posix.rename", "posix.link", "posix.unlink", "posix.mkdir", "posix.rmdir")),
    ("other syscalls", ("posix.", "built-in method io.open", "_io.")),
)
PY_KINDS = {("cowfs/durable.py", "sync_filesystem"): "fsync/syncfs"}
FUNCTIONS = (
    ("journal/protocol.py", "commit"), ("journal/protocol.py", "rollback"),
    ("journal/workspace.py", "compare"), ("journal/protocol.py", "check_bases"),
    ("journal/images.py", "capture_old"), ("journal/blobs.py", "put_link"),
    ("journal/blobs.py", "put_stream"), ("journal/protocol.py", "land"),
    ("journal/blobs.py", "sync"), ("journal/store.py", "record_intent"), ("cowfs/converge.py", "converge"),
    ("journal/store.py", "mark_committed"), ("cowfs/stagers.py", "discard"),
    ("journal/workspace.py", "remove_tx_dir"),
)


def profile_summary(path: str) -> dict:
    st = pstats.Stats(path)
    kinds = {k: 0.0 for k, _ in KINDS}
    kinds["python (start-up, imports, logic)"] = 0.0
    funcs: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        py_kind = next((k for (suffix, name), k in PY_KINDS.items()
                        if func == name and filename.endswith(suffix)), None)
        if py_kind is not None:
            kinds[py_kind] += tt
        else:
            for kind, needles in KINDS:
                if filename == "~" and any(n in func for n in needles):
                    kinds[kind] += tt
                    break
            else:
                kinds["python (start-up, imports, logic)"] += tt
        for suffix, name in FUNCTIONS:
            if func == name and filename.endswith(suffix):
                funcs[f"{suffix.split('/')[-1][:-3]}.{name}"] = ct
    return {
        "total_s": round(st.total_tt, 4),  # type: ignore[attr-defined]
        "by_kind_s": {k: round(v, 4) for k, v in kinds.items()},
        "functions_cum_s": {k: round(v, 4) for k, v in funcs.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
