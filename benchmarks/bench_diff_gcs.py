#!/usr/bin/env python3
"""``roscoe tx diff`` of a bucket target over its mount: bytes read through
the mount and wall time, 10 changes in a 100,000-object prefix against 10 in a
100-object prefix.

fake-gcs-server (memory backend) on 127.0.0.1, an rclone mount of the bucket
(``--dir-cache-time 200ms``, as the tests use) and roscoe's API calls each
through a counting proxy (tests/support/proxy.py; ``--delay`` adds round-trip
time to both). Each prefix is laid out in directories of 100 objects of 64
bytes (loaded by the server at its start), except the 10 that the run rewrites, ``--size`` bytes each, one in
each of 10 directories spread over the prefix. Per prefix:

  run     ``roscoe tx run`` rewriting the 10 objects (its end hashes the old ones)
  diff    ``roscoe tx diff ID --json``, ``--rounds`` times: the hashes of the
          old objects remembered by generation (cowfs.hashcache)
  mount   the same diff with the API out of reach (STORAGE_EMULATOR_HOST at a
          closed port): every old object is read through the mount, as
          before the cache
  commit  ``roscoe tx commit ID --yes``

and prints, for each, the median wall time and the bytes that came down
through the mount and through the API.

    .venv/bin/python benchmarks/bench_diff_gcs.py --size 1048576 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tests.support.gcs import FakeGcs

PER_DIR = 100
CHANGES = 10


def layout(n: int) -> tuple[list[str], list[str]]:
    """(every object's path, the 10 the run rewrites) of an ``n``-object prefix."""
    paths = [f"d{i // PER_DIR:04d}/f{i % PER_DIR:02d}.bin" for i in range(n)]
    dirs = (n + PER_DIR - 1) // PER_DIR
    step = max(1, dirs // CHANGES)
    touched = [f"d{(k * step) % dirs:04d}/f{k:02d}.bin" for k in range(CHANGES)]
    return paths, touched


@contextmanager
def seeded_server(data: str) -> Iterator[FakeGcs]:
    """fake-gcs-server (memory backend) loaded with ``data`` (a directory per bucket)."""
    from tests.support.gcs import FakeGcs

    server = FakeGcs()
    server.proc = subprocess.Popen(
        [server.binary, "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port", str(server.port),
         "-external-url", server.url, "-log-level", "error", "-data", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"{server.url}/storage/v1/b", timeout=5).read()
                break
            except (urllib.error.URLError, OSError):  # (it answers once it has loaded the data)
                assert time.monotonic() < deadline, "fake-gcs-server did not come up"
                time.sleep(0.2)
        yield server
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,100000", help="objects in each prefix (comma-separated)")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes of each rewritten object")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every round trip")
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    args = parser.parse_args()

    from tests.support.gcs import MTIME, free_port, rclone_mount
    from tests.support.proxy import proxied

    work = tempfile.mkdtemp(prefix="roscoe-bench-diff-gcs-")
    report: dict[str, object] = {"size": args.size, "rounds": args.rounds, "delay": args.delay, "cases": {}}
    meta = {"gcsfuse_mtime": MTIME, "mtime": MTIME}
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    sizes = [int(s) for s in args.sizes.split(",")]
    touched_of = {}
    t = time.perf_counter()
    for n in sizes:  # the small objects are loaded by the server at its start (-data): 100,000 uploads take minutes
        paths, touched_of[n] = layout(n)
        for p in paths:
            path = os.path.join(work, "data", bucket, f"p{n}", p)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(p.encode().ljust(64, b"."))
    print(f"laid out {sum(sizes)} objects in {time.perf_counter() - t:.1f} s", flush=True)
    try:
        with seeded_server(os.path.join(work, "data")) as server, \
                proxied(server.port, delay=args.delay) as mount_proxy, \
                proxied(server.port, delay=args.delay) as api_proxy:
            for n in sizes:  # the ones the run rewrites, with the metadata a mount writes
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda p, n=n: server.put(
                        bucket, f"p{n}/{p}", (p.encode() * (args.size // len(p) + 1))[:args.size], meta),
                        touched_of[n]))
            env = dict(os.environ, PYTHONPATH=REPO, ROSCOE_SOCKET="", ROSCOE_GCS_RETRIES="2",
                       STORAGE_EMULATOR_HOST=api_proxy.url)
            env.pop("ROSCOE_ROOT", None)
            closed = dict(env, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}", ROSCOE_GCS_RETRIES="1")

            def roscoe(home: str, *argv: str, cwd: str | None = None, environ: dict[str, str] = env) -> str:
                done = subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=cwd,
                                      env=dict(environ, ROSCOE_HOME=home), capture_output=True, timeout=1800)
                assert done.returncode == 0, done.stderr.decode()
                return done.stdout.decode()

            def measured(action) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
                mount_proxy.reset()
                api_proxy.reset()
                t = time.perf_counter()
                action()
                return time.perf_counter() - t, mount_proxy.down, api_proxy.down

            with rclone_mount(server, bucket, Path(work) / "mnt", endpoint=mount_proxy.url) as mnt:
                for n in sizes:
                    home = os.path.join(work, f"home-{n}")
                    root = str(mnt / f"p{n}")
                    deadline = time.monotonic() + 30
                    while not os.path.isdir(root):
                        assert time.monotonic() < deadline, f"the mount never showed {root}"
                        time.sleep(0.1)
                    tx = roscoe(home, "tx", "begin", "--root", root, "--target", f"gs://{bucket}/p{n}").strip()
                    script = " && ".join(f"printf 'new\\n' > {p}" for p in touched_of[n])
                    rows: dict[str, list[tuple[float, int, int]]] = {"run": [], "diff": [], "mount": [], "commit": []}
                    rows["run"].append(measured(lambda: roscoe(home, "tx", "run", "--tx", tx, "--", "sh", "-c",
                                                               script, cwd=root)))
                    for _ in range(args.rounds):
                        rows["diff"].append(measured(lambda: roscoe(home, "tx", "diff", tx, "--json")))
                        rows["mount"].append(measured(lambda: roscoe(home, "tx", "diff", tx, "--json",
                                                                     environ=closed)))
                    rows["commit"].append(measured(lambda: roscoe(home, "tx", "commit", tx, "--yes")))
                    case: dict[str, object] = {}
                    print(f"p{n}: {CHANGES} objects of {args.size} B rewritten in a {n}-object prefix")
                    for name, got in rows.items():
                        med = statistics.median(g[0] for g in got)
                        mount_down = int(statistics.median(g[1] for g in got))
                        api_down = int(statistics.median(g[2] for g in got))
                        case[name] = {"median_s": round(med, 4), "mount_down": mount_down, "api_down": api_down,
                                      "all_s": [round(g[0], 4) for g in got]}
                        print(f"  {name:7s} {med * 1000:8.0f} ms  mount {mount_down / 1e6:8.2f} MB"
                              f"  api {api_down / 1e6:8.2f} MB")
                    report["cases"][str(n)] = case  # type: ignore[index]
            cases = report["cases"]
            if len(sizes) == 2:
                small, large = (cases[str(s)]["diff"]["median_s"] for s in sizes)  # type: ignore[index]
                report["diff_ratio"] = round(large / small, 2)
                print(f"diff, {sizes[1]} against {sizes[0]} objects: {report['diff_ratio']}x")
    finally:
        subprocess.run(["rm", "-rf", work], check=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
