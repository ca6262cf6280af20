#!/usr/bin/env python3
"""``roscoe tx run -- true`` through ``roscoe serve`` against the local run.

The script starts its own ``roscoe serve`` (as the user running it: root
here) over a scratch state dir, config and socket, and stops it (SIGTERM)
at the end, even on failure. The local cases use a second scratch state dir
with the same config and ``ROSCOE_SOCKET=""``.

Part 1, N times each, interleaved round by round:

  serve-new    ROSCOE_SOCKET=S roscoe tx run --root R -- true   (a new tx each time)
  local-new    ROSCOE_SOCKET=  roscoe tx run --root R -- true
  serve-tx     ROSCOE_SOCKET=S roscoe tx run --tx ID -- true    (an existing tx)
  local-tx     ROSCOE_SOCKET=  roscoe tx run --tx ID -- true
  serve-list   ROSCOE_SOCKET=S roscoe tx list --json            (a command with no sandbox;
  local-list   ROSCOE_SOCKET=  roscoe tx list --json             typer's path, not a fast path)
  serve-none   ROSCOE_SOCKET=S roscoe tx diff 000000000000 --json   (the CLI floor: exit 5
  local-none   ROSCOE_SOCKET=  roscoe tx diff 000000000000 --json    after start-up and
                                                                     the journal's open)
  python       VENV/bin/python -c pass                          (interpreter floor)

Part 2, throughput: CLIENTS processes at once (default 8), each looping
CYCLES times (default 10) over one root Q: ``tx begin --root Q``, ``tx run
--tx ID -- sh -c 'echo K > fileN'``, ``tx diff ID --json``, ``tx commit ID
--yes``; cycles/s through the service against the same clients running
locally over one shared state dir. A commit's exit 3 (a conflict) is a
legitimate outcome, counted apart; any other failure stops the script.

Budget (shared/DESIGN.md, "Budgets"): through the service at most 1.2x of
the local run (``tx run -- true`` medians, new and existing transaction).
Standard library only. Everything it creates lives in one temp dir, removed
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as lib  # noqa: E402

BUDGET_OF_LOCAL = 1.2
WARMUP = 3
START_SECONDS = 30.0
NO_SUCH_TX = "000000000000"



def config_text(roots: list[str]) -> str:
    """Roles (root is an operator anyway), a private socket, the roots served."""
    text = '[roles]\nagents = []\napprovers = []\n[serve]\nsocket_mode = "0600"\n'
    return text + "".join(f'[roots."{r}"]\n' for r in roots)


def make_home(home: str, config: str) -> None:
    os.makedirs(home, mode=0o700)
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write(config)


class Service:
    """``roscoe serve --socket PATH`` over ``home``: started, and stopped by SIGTERM."""

    def __init__(self, roscoe: str, home: str, socket: str, log: str) -> None:
        self.argv = [roscoe, "serve", "--socket", socket]
        self.env = lib.scratch_env(home)
        self.env["ROSCOE_SOCKET"] = ""
        self.socket, self.log = socket, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"roscoe serve never listened on {self.socket}:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print("warning: roscoe serve did not stop on SIGTERM; killed", file=sys.stderr)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""


def begin(roscoe: str, root: str, env: dict[str, str], cwd: str, message: str) -> str:
    _, proc = lib.timed([roscoe, "tx", "begin", "--root", root, "-m", message],
                        env=env, cwd=cwd, capture_stdout=True)
    lib.check_ok(f"roscoe tx begin ({message})", proc)
    return proc.stdout.decode().strip()


# --- part 2: one client's loop, run as its own process (``--client``) -------------------------

def client_loop(args: argparse.Namespace) -> int:
    """CYCLES begin-run-diff-commit cycles; one JSON line of outcomes on stdout."""
    env = dict(os.environ)
    n = args.client
    counts = {"committed": 0, "conflicts": 0}
    cycle_ms: list[float] = []
    for k in range(args.cycles):
        started = time.perf_counter_ns()
        proc = subprocess.run([args.roscoe, "tx", "begin", "--root", args.root, "-m", f"client {n} cycle {k}"],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _must(proc, "tx begin")
        tx = proc.stdout.decode().strip()
        steps = [
            ["tx", "run", "--tx", tx, "--", "sh", "-c", f"echo {k} > file{n}"],
            ["tx", "diff", tx, "--json"],
        ]
        for step in steps:
            proc = subprocess.run([args.roscoe, *step], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _must(proc, " ".join(step[:2]))
        proc = subprocess.run([args.roscoe, "tx", "commit", tx, "--yes"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode == 3:
            counts["conflicts"] += 1
        else:
            _must(proc, "tx commit")
            counts["committed"] += 1
        cycle_ms.append((time.perf_counter_ns() - started) / 1e6)
    print(json.dumps({"client": n, **counts, "cycle_ms": cycle_ms}))
    return 0


def _must(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        print(json.dumps({"failed": what, "exit": proc.returncode, "stderr": err[-2000:]}))
        sys.exit(1)


def throughput(clients: int, cycles: int, roscoe: str, root: str, env: dict[str, str], cwd: str) -> dict:
    """``clients`` client processes at once; wall time from the first start to the last exit."""
    me = os.path.abspath(__file__)
    started = time.perf_counter_ns()
    procs = [subprocess.Popen([sys.executable, me, "--client", str(n), "--cycles", str(cycles),
                               "--root", root, "--roscoe", roscoe],
                              env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
             for n in range(clients)]
    outs = [p.communicate()[0] for p in procs]
    seconds = (time.perf_counter_ns() - started) / 1e9
    results = []
    for n, (p, out) in enumerate(zip(procs, outs)):
        line = out.decode(errors="replace").strip().splitlines()[-1:] or ["{}"]
        got = json.loads(line[0])
        if p.returncode != 0 or "failed" in got:
            raise SystemExit(f"client {n} failed: {got}")
        results.append(got)
    done = sum(r["committed"] + r["conflicts"] for r in results)
    all_cycles = [ms for r in results for ms in r["cycle_ms"]]
    return {
        "seconds": round(seconds, 3), "cycles": done,
        "cycles_per_s": round(done / seconds, 3),
        "committed": sum(r["committed"] for r in results),
        "conflicts": sum(r["conflicts"] for r in results),
        "cycle": lib.summarize(all_cycles),
    }


# --- the benchmark ---------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="timed runs of each part-1 case (default 30)")
    ap.add_argument("--clients", type=int, default=8, help="part 2: clients at once (default 8)")
    ap.add_argument("--cycles", type=int, default=10, help="part 2: cycles per client (default 10)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="part 2: rounds of (service, local), order alternating (default 2; 0 skips part 2)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--python", default=lib.default_python(), help="the venv's python (default %(default)s)")
    ap.add_argument("--roscoe", default=lib.default_roscoe(), help="the roscoe CLI (default %(default)s)")
    ap.add_argument("--tmp", default=None, help="where to make the scratch dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (for debugging)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the budget is missed")
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)  # part 2's client processes
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        return client_loop(args)
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    compiled = lib.compile_packages(args.python)
    print(lib.describe_compile(compiled))

    scratch = tempfile.mkdtemp(prefix="roscoe-bench-serve-", dir=args.tmp)
    service: Service | None = None
    try:
        root = os.path.join(scratch, "root")
        shared = os.path.join(scratch, "shared")  # part 2's root
        lib.make_root(root, "bench_serve")
        lib.make_root(shared, "bench_serve")
        config = config_text([root, shared])
        served_home = os.path.join(scratch, "served-home")
        local_home = os.path.join(scratch, "local-home")
        make_home(served_home, config)
        make_home(local_home, config)
        sock = os.path.join(scratch, "run", "roscoe.sock")
        service = Service(args.roscoe, served_home, sock, os.path.join(scratch, "serve.log"))
        service.start()

        # the client's ROSCOE_HOME names nothing: it never reads a state dir
        served_env = lib.scratch_env(os.path.join(scratch, "no-such-home"))
        served_env["ROSCOE_SOCKET"] = sock
        local_env = lib.scratch_env(local_home)
        local_env["ROSCOE_SOCKET"] = ""
        envs = {"serve": served_env, "local": local_env}
        tx_ids = {where: begin(args.roscoe, root, envs[where], scratch, f"bench_serve {where}")
                  for where in envs}

        cases: dict[str, tuple[list[str], dict[str, str]]] = {}
        for where in ("serve", "local"):
            cases[f"{where}-new"] = ([args.roscoe, "tx", "run", "--root", root, "--", "true"], envs[where])
            cases[f"{where}-tx"] = ([args.roscoe, "tx", "run", "--tx", tx_ids[where], "--", "true"], envs[where])
            cases[f"{where}-list"] = ([args.roscoe, "tx", "list", "--json"], envs[where])
            cases[f"{where}-none"] = ([args.roscoe, "tx", "diff", NO_SUCH_TX, "--json"], envs[where])
        cases["python"] = ([args.python, "-c", "pass"], local_env)
        order = ["serve-new", "local-new", "serve-tx", "local-tx", "serve-list", "local-list",
                 "serve-none", "local-none", "python"]
        labels = {
            "serve-new": "tx run --root R -- true, service  (new tx)",
            "local-new": "tx run --root R -- true, local    (new tx)",
            "serve-tx": "tx run --tx ID -- true, service   (existing)",
            "local-tx": "tx run --tx ID -- true, local     (existing)",
            "serve-list": "tx list --json, service",
            "local-list": "tx list --json, local",
            "serve-none": "tx diff NO-SUCH-TX --json, service",
            "local-none": "tx diff NO-SUCH-TX --json, local",
            "python": "python -c pass  (interpreter floor)",
        }
        backends: set[str] = set()

        def once(name: str) -> float:
            argv, env = cases[name]
            ms, p = lib.timed(argv, env=env, cwd=scratch, capture_stdout=name.endswith(("-list", "-none")))
            if name.endswith("-none"):
                if p.returncode != 5 or json.loads(p.stdout)["error"]["kind"] != "no_such_tx":
                    raise SystemExit(f"{name}: expected exit 5 (no_such_tx), got {p.returncode}: {p.stdout!r}")
            else:
                lib.check_ok(name, p)
            if name.endswith(("-new", "-tx")):
                lines = p.stderr.decode(errors="replace").splitlines()
                if not lines or not lines[0].startswith("roscoe: tx "):
                    raise SystemExit(f"{name}: unexpected stderr: {lines!r}")
                if "staged (" in lines[-1]:
                    backends.add(lines[-1].split("staged (", 1)[1].split(")", 1)[0])
            if name.endswith("-list"):
                json.loads(p.stdout)
            return ms

        for _ in range(WARMUP):
            for name in order:
                once(name)
        samples: dict[str, list[float]] = {name: [] for name in order}
        for _ in range(args.runs):
            for name in order:
                samples[name].append(once(name))

        stats = {name: lib.summarize(s) for name, s in samples.items()}
        med = {name: s["median_ms"] for name, s in stats.items()}
        ratios = {f"serve/local {kind}": round(med[f"serve-{kind}"] / med[f"local-{kind}"], 2)
                  for kind in ("new", "tx", "list", "none")}
        over = {f"{where}-{kind} - python": round(med[f"{where}-{kind}"] - med["python"], 1)
                for kind in ("list", "none") for where in ("serve", "local")}

        # part 2
        rounds: list[dict] = []
        for r in range(args.rounds):
            for where in (("serve", "local") if r % 2 == 0 else ("local", "serve")):
                got = throughput(args.clients, args.cycles, args.roscoe, shared, envs[where], scratch)
                got["where"], got["round"] = where, r
                rounds.append(got)
                print(f"  throughput round {r} {where:<5}: {got['cycles']} cycles in {got['seconds']:.1f} s, "
                      f"{got['cycles_per_s']:.2f}/s, {got['conflicts']} conflicts", file=sys.stderr)

        stale = lib.recheck_bytecode(args.python)
        info = lib.machine()
        print(f"{info['date']}  nproc {info['nproc']}  kernel {info['kernel']}  "
              f"euid {info['euid']}  backend {', '.join(sorted(backends)) or '?'}  "
              f"runs {args.runs} (+{WARMUP} warm-up)")
        print(f"{'case':<46} {'median':>8} {'p90':>8} {'min':>8}   (ms)")
        for name in order:
            s = stats[name]
            print(f"{labels[name]:<46} {s['median_ms']:8.1f} {s['p90_ms']:8.1f} {s['min_ms']:8.1f}")
        print("ratios of medians:")
        for key, value in ratios.items():
            print(f"  {key:<22} {value:6.2f}x")
        for key, value in over.items():
            print(f"  {key:<22} {value:6.1f} ms")
        throughput_summary: dict[str, dict] = {}
        if rounds:
            print(f"throughput: {args.clients} clients x {args.cycles} begin-run-diff-commit cycles, one root")
            for where in ("serve", "local"):
                mine = [r for r in rounds if r["where"] == where]
                cycles = sum(r["cycles"] for r in mine)
                seconds = sum(r["seconds"] for r in mine)
                cycle_ms = [ms for r in mine for ms in r["cycle"]["samples_ms"]]
                c = lib.summarize(cycle_ms)
                throughput_summary[where] = {
                    "cycles": cycles, "seconds": round(seconds, 3), "cycles_per_s": round(cycles / seconds, 3),
                    "committed": sum(r["committed"] for r in mine), "conflicts": sum(r["conflicts"] for r in mine),
                    "per_round_cycles_per_s": [r["cycles_per_s"] for r in mine],
                    "cycle_median_ms": c["median_ms"], "cycle_p90_ms": c["p90_ms"],
                }
                t = throughput_summary[where]
                print(f"  {where:<8} {t['cycles_per_s']:6.2f} cycles/s  ({t['cycles']} in {t['seconds']:.1f} s; "
                      f"rounds {', '.join(f'{x:.2f}' for x in t['per_round_cycles_per_s'])}/s; "
                      f"committed {t['committed']}, conflicts {t['conflicts']}; "
                      f"one cycle median {t['cycle_median_ms']:.0f} ms, p90 {t['cycle_p90_ms']:.0f} ms)")
            ratios["throughput serve/local"] = round(
                throughput_summary["serve"]["cycles_per_s"] / throughput_summary["local"]["cycles_per_s"], 2)
            print(f"  serve/local {ratios['throughput serve/local']:.2f}x")

        verdicts = {}
        for kind in ("new", "tx"):
            svc, loc = stats[f"serve-{kind}"]["median_ms"], stats[f"local-{kind}"]["median_ms"]
            limit = BUDGET_OF_LOCAL * loc
            verdicts[kind] = svc <= limit
            print(f"budget: tx run ({kind}) through the service {svc:.1f} ms vs at most {limit:.1f} ms "
                  f"({BUDGET_OF_LOCAL}x of local {loc:.1f} ms): {'PASS' if verdicts[kind] else 'FAIL'} "
                  f"({svc / loc:.2f}x of local)")

        if args.json:
            lib.write_json(args.json, {
                "benchmark": "bench_serve", "machine": info, "runs": args.runs, "warmup": WARMUP,
                "bytecode": compiled, "stale_during_run": stale, "backend": sorted(backends),
                "commands": {name: argv for name, (argv, _) in cases.items()},
                "socket_env": {"serve": sock, "local": ""}, "config": config,
                "results": stats, "ratios": ratios, "over_floor_ms": over,
                "throughput": {"clients": args.clients, "cycles_per_client": args.cycles,
                               "rounds": rounds, "summary": throughput_summary},
                "budget": {"serve_of_local_at_most": BUDGET_OF_LOCAL, "pass": verdicts},
            })
            print(f"wrote {args.json}")
        return 0 if (not args.check or all(verdicts.values())) else 1
    finally:
        if service is not None:
            code = service.stop()
            if code not in (0, None):
                print(f"warning: roscoe serve exited {code}:\n{service.log_text()}", file=sys.stderr)
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            lib.rmtree(scratch)


if __name__ == "__main__":
    sys.exit(main())
