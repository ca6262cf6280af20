#!/usr/bin/env python3
"""A roscoe commit to a GCS target against gcsfs's own bulk ``put`` of the same
bytes, both against fake-gcs-server (memory backend) through a TCP proxy that
adds ``--delay`` seconds of round-trip time to every request (this kernel has
no netem; tests/support/proxy.py) and counts the bytes each way.

Scenarios (``--scenarios``, all by default), each timed ``--runs`` times:

  small   10 objects of 4 KiB added
  bulk    1,000 objects of 4 KiB added
  modify  100 existing objects of 8 MiB modified (new bytes in each)
  moves   20 existing objects of 8 MB moved to another directory inside one ``tx run``

For each run the change is staged by an untimed ``tx run`` through an rclone
mount of the bucket (the mount talks to the emulator through a proxy of its
own, without delay, that only counts: what the commit reads through the mount
shows as "mount down"); then, in this process (gcsfs already imported, so
neither side pays its import), with the API pointed at the delaying proxy:

  commit  journal.protocol.commit(ws, ID): lease, generation check, pre-images
          kept in the bucket by server-side rewrite, intent object, conditional
          uploads (moves as server-side rewrites plus conditional deletes),
          manifest (the commit point), lease released
  put     fs.put(LOCAL_DIR, "BUCKET/put/...", recursive=True): gcsfs's own
          concurrent upload of the same bytes, no preconditions, no journal

Reported per scenario: median commit and put ms and their ratio; bytes up and
down through the proxy during the commit of the median run (and read through
the mount: "mount down"); local bytes: the staging (upper dir) on local disk
after the run, allocated blocks; blob bytes: what the commit added to the state
dir's blob store, and how much of that is pre-images (blobs of the old bytes). For ``small`` and ``bulk``, the requests
of the last run's commit and put and the sequential round trips they make
(requests that overlap in time are one round trip).

Each run's put meets the bucket as its commit did (what the other side wrote
is deleted first, untimed): fake-gcs-server's memory backend slows down with
every object it holds.

``--check`` exits 1 when a budget of DESIGN.md is missed: small within 3x of
put, bulk within 0.8x; modify and moves move no object bytes through the
machine for pre-images or moves (bytes down and pre-image blob bytes under one
object; for moves bytes up too).

    .venv/bin/python benchmarks/bench_gcs.py --runs 3 --json /tmp/gcs.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.parse
import uuid
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.support.proxy import Proxy  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
SCENARIOS: dict[str, dict[str, Any]] = {
    "small": {"kind": "add", "files": 10, "size": 4 * KiB},
    "bulk": {"kind": "add", "files": 1000, "size": 4 * KiB},
    "modify": {"kind": "modify", "files": 100, "size": 8 * MiB},
    "moves": {"kind": "moves", "files": 20, "size": 8_000_000},
}
BUDGET = {"small": 3.0, "bulk": 0.8}

REQUEST = re.compile(rb"(GET|POST|PUT|DELETE|PATCH|HEAD) (/\S*) HTTP/1\.[01]\r\n")
NAME = re.compile(rb'"name":\s*"([^"]+)"')


class Tap:
    """A proxy reader that notes each HTTP request line going up and each
    status line coming down, per connection, while ``log`` is on."""

    def __init__(self, reader: Any, proxy: CountingProxy, conn: int, way: str) -> None:
        self.reader, self.proxy, self.conn, self.way = reader, proxy, conn, way

    async def read(self, n: int) -> bytes:
        data = await self.reader.read(n)
        p = self.proxy
        if data and p.logging:
            now = time.monotonic()
            if self.way == "up":
                for m in REQUEST.finditer(data):
                    name = NAME.search(data, m.end())
                    req = {"conn": self.conn, "method": m.group(1).decode(), "path": m.group(2).decode(),
                           "name": name.group(1).decode() if name else None, "sent": now, "answered": None}
                    p.requests.append(req)
                    p.pending.setdefault(self.conn, []).append(req)
            elif data.startswith(b"HTTP/1."):
                waiting = p.pending.get(self.conn) or []
                if waiting:
                    req = waiting.pop(0)
                    req["answered"] = now
                    req["status"] = int(data[9:12])
        return data


class CountingProxy(Proxy):
    """tests/support/proxy.Proxy, which also logs the requests (``logging``)."""

    def __init__(self, upstream_port: int, *, delay: float = 0.0) -> None:
        super().__init__(upstream_port, delay=delay)
        self.logging = False
        self.requests: list[dict[str, Any]] = []
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self._conns = 0

    async def _client(self, reader: Any, writer: Any) -> None:
        self._conns += 1
        writer._bench_conn = self._conns
        await super()._client(reader, writer)

    async def _pipe(self, reader: Any, writer: Any, way: str, other: Any) -> None:
        client = other if way == "up" else writer
        conn = getattr(client, "_bench_conn", 0)
        await super()._pipe(Tap(reader, self, conn, way), writer, way, other)

    def log(self, on: bool) -> None:
        if on:
            self.requests, self.pending = [], {}
        self.logging = on

    @property
    def connections(self) -> int:
        return self._conns


def describe(req: dict[str, Any], bucket: str) -> str:
    """One request in words: what it does, and to which kind of object."""
    method, path = req["method"], urllib.parse.unquote(req["path"])
    path, _, query = path.partition("?")
    params = urllib.parse.parse_qs(query)

    def kind(key: str) -> str:
        if ".roscoe/" not in key:
            return "object"
        rest = key.split(".roscoe/", 1)[1].split("/", 1)[-1]
        if rest == "lease":
            return "lease"
        if rest.startswith("log/"):
            return "manifest"
        if rest.endswith("/intent.json"):
            return "intent"
        if "/pre/" in rest:
            return "image"
        return rest

    base = f"/storage/v1/b/{bucket}"
    if "/rewriteTo/" in path:
        dst = path.split("/rewriteTo/", 1)[1].split("/o/", 1)[1]
        return f"rewrite -> {kind(dst)}"
    if path.startswith(f"/upload/storage/v1/b/{bucket}/o"):
        name = req.get("name") or (params.get("name") or [""])[0]
        return f"upload {kind(name)}"
    if path == base:
        return "bucket check"
    if path == f"{base}/o":
        return f"list {params.get('prefix', [''])[0]!r}"
    if path.startswith(f"{base}/o/"):
        key = path[len(base) + 3:]
        if method == "DELETE":
            return f"delete {kind(key)}"
        return f"{'read' if params.get('alt') == ['media'] else 'stat'} {kind(key)}"
    return f"{method} {path}"


def rounds(requests: list[dict[str, Any]], bucket: str, t0: float) -> list[dict[str, Any]]:
    """The requests grouped into sequential round trips: a request sent after
    every request before it was answered starts a new one. Times are the
    proxy's, from ``t0``: a request as it arrives (before its half of the
    delay), an answer as the server gives it (before the other half)."""
    out: list[dict[str, Any]] = []
    end = -1.0
    for req in sorted(requests, key=lambda r: r["sent"]):
        answered = req["answered"] if req["answered"] is not None else req["sent"]
        if not out or req["sent"] > end:
            out.append({"start_ms": round((req["sent"] - t0) * 1000, 1), "requests": []})
        out[-1]["requests"].append(describe(req, bucket))
        end = max(end, answered)
        out[-1]["end_ms"] = round((end - t0) * 1000, 1)
    for r in out:
        counts: dict[str, int] = {}
        for d in r["requests"]:
            counts[d] = counts.get(d, 0) + 1
        r["what"] = ", ".join(f"{d} x{n}" if n > 1 else d for d, n in counts.items())
        r["n"] = len(r["requests"])
        del r["requests"]
    return out


def blob_files(home: str) -> dict[str, int]:
    """The state dir's blob store: size by digest."""
    found = {}
    root = os.path.join(home, "blobs")
    for top, _, files in os.walk(root):
        for name in files:
            found[os.path.basename(top) + name] = os.lstat(os.path.join(top, name)).st_size
    return found


def blob_bytes(before: dict[str, int], after: dict[str, int], old: set[str]) -> tuple[int, int]:
    """(bytes of the blobs a commit added, of those the blobs of the digests ``old``: pre-images)."""
    added = {d: size for d, size in after.items() if d not in before}
    return sum(added.values()), sum(size for d, size in added.items() if d in old)


def write_files(directory: str, names: list[str], size: int) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in names:
        with open(os.path.join(directory, name), "wb") as f:
            f.write(os.urandom(size))


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_gcs: the mount never showed {what}")
        time.sleep(0.1)


def same_head(path: str, local: str) -> bool:
    try:
        with open(path, "rb") as a, open(local, "rb") as b:
            return a.read(4096) == b.read(4096) and os.fstat(a.fileno()).st_size == os.fstat(b.fileno()).st_size
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to every round trip (0.02)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ",".join(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget is missed")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"no such scenario: {', '.join(unknown)}")

    from pathlib import Path

    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import gcsfs

    from cowfs.hashing import hash_file
    from journal.opening import open_workspace
    from journal.protocol import commit
    from tests.support.gcs import fake_gcs, rclone_mount

    work = tempfile.mkdtemp(prefix="roscoe-bench-gcs-")
    results: dict[str, Any] = {}
    load = [os.getloadavg()[0]]
    with fake_gcs() as server:
        direct = server.url
        os.environ["STORAGE_EMULATOR_HOST"] = direct
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        server.make_bucket(bucket)
        server.put(bucket, "s/", b"")
        api = CountingProxy(server.port, delay=args.delay).start()
        mount_proxy = Proxy(server.port).start()
        fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True, endpoint_url=direct)
        fs_put = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True, endpoint_url=api.url)
        home = os.path.join(work, "home")
        # (gcsfs's session and connections, once: put is timed warm, as a long-running uploader would run)
        fs_put.pipe(f"{bucket}/put/warm", b"warm")
        try:
            with rclone_mount(types.SimpleNamespace(url=mount_proxy.url), bucket, Path(work) / "mnt") as mnt:  # type: ignore[arg-type]
                ws = open_workspace(home)
                for name in chosen:
                    results[name] = scenario(name, SCENARIOS[name], args, ws, fs, fs_put, api, mount_proxy,
                                             str(mnt), bucket, work, home, commit, hash_file, direct)
                ws.close()
        finally:
            api.stop()
            mount_proxy.stop()
            # (connections the mount or gcsfs left open die with the proxies' loops: not worth a word each)
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    subprocess.run(["rm", "-rf", work], check=False)
    load.append(os.getloadavg()[0])
    return report(results, args, load)


def scenario(name: str, spec: dict[str, Any], args: argparse.Namespace, ws: Any, fs: Any, fs_put: Any,
             api: CountingProxy, mount_proxy: Proxy, mnt: str, bucket: str, work: str, home: str,
             commit: Any, hash_file: Any, direct: str) -> dict[str, Any]:
    from tests.support.trees import disk_bytes

    kind, files, size = spec["kind"], spec["files"], spec["size"]
    names = [f"f{i:04d}.bin" for i in range(files)]
    local = os.path.join(work, name)
    out: dict[str, Any] = {"files": files, "size": size, "commit_s": [], "put_s": [], "runs": []}
    print(f"{name}: {files} x {size} B ({kind})", file=sys.stderr, flush=True)
    sets: list[str] = []
    if kind == "add":
        write_files(os.path.join(local, "0"), names, size)
        sets = [os.path.join(local, "0")]
    elif kind == "modify":  # (two sets of bytes, taking turns: each run's bytes differ from what is there)
        for s in ("a", "b"):
            write_files(os.path.join(local, s), names, size)
        sets = [os.path.join(local, "a"), os.path.join(local, "b")]
    else:
        write_files(os.path.join(local, "a"), names, size)
        sets = [os.path.join(local, "a")]
    prefix = f"s/{name}"
    root = os.path.join(mnt, prefix)
    if kind == "modify":
        fs.put(sets[1] + "/", f"{bucket}/{prefix}/big/", recursive=True)
        wait_for(lambda: same_head(os.path.join(root, "big", names[-1]), os.path.join(sets[1], names[-1])),
                 f"{prefix}/big seeded")
    elif kind == "moves":
        fs.put(sets[0] + "/", f"{bucket}/{prefix}/a/", recursive=True)
        wait_for(lambda: same_head(os.path.join(root, "a", names[-1]), os.path.join(sets[0], names[-1])),
                 f"{prefix}/a seeded")
    for n in range(args.runs):
        if kind == "add":
            root = os.path.join(mnt, f"{prefix}{n}")
            os.makedirs(root, exist_ok=True)
            wait_for(lambda: os.path.isdir(root), root)
            url = f"gs://{bucket}/{prefix}{n}"
            script, src = f"cp -r {sets[0]}/. new/", sets[0]
            script = "mkdir new && " + script
            old_digests: set[str] = set()
        elif kind == "modify":
            url = f"gs://{bucket}/{prefix}"
            src, before = sets[n % 2], sets[(n + 1) % 2]
            script = f"cp {src}/* big/"
            old_digests = {hash_file(os.path.join(before, f)) for f in names}
        else:
            url = f"gs://{bucket}/{prefix}"
            here, there = ("a", "b") if n % 2 == 0 else ("b", "a")
            script, src = f"mkdir -p {there} && mv {here}/* {there}/", sets[0]
            old_digests = {hash_file(os.path.join(src, f)) for f in names}
        tx = ws.begin(root, f"bench {name} {n}", url)
        result = ws.run(tx.id, ["sh", "-c", script], cwd=root)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        stager = ws.stager(ws.get(tx.id))
        local_bytes = disk_bytes(stager.upper) if stager is not None else 0
        traced = kind == "add" and n == args.runs - 1
        # the baseline: gcsfs's own put of the same bytes, before the commit in odd runs and after it
        # in even ones (the emulator slows down as it holds more objects: neither side always goes last)
        def baseline() -> dict[str, Any]:
            got: dict[str, Any] = {}
            api.reset()
            api.log(traced)
            t0 = time.monotonic()
            t = time.perf_counter()
            try:
                fs_put.put(src + "/", f"{bucket}/put/{name}{n}/", recursive=True)
            finally:
                got["put_s"] = round(time.perf_counter() - t, 4)
                api.log(False)
            got["put_up"] = api.up
            if traced:
                got["put_requests"] = len(api.requests)
                got["put_rounds"] = rounds(api.requests, bucket, t0)
            assert len(fs.find(f"{bucket}/put/{name}{n}", refresh=True)) == files
            # (the emulator slows down with every object it holds: each side meets the same bucket)
            fs.rm(f"{bucket}/put/{name}{n}", recursive=True)
            return got

        before_commit = baseline() if n % 2 else {}
        blobs_before = blob_files(home)
        mount_proxy.reset()
        api.reset()
        api.log(traced)
        os.environ["STORAGE_EMULATOR_HOST"] = api.url
        t0 = time.monotonic()
        t = time.perf_counter()
        try:
            commit(ws, tx.id)
        finally:
            elapsed = time.perf_counter() - t
            os.environ["STORAGE_EMULATOR_HOST"] = direct
            api.log(False)
        up, down, mount_down = api.up, api.down, mount_proxy.down
        blobs, pre = blob_bytes(blobs_before, blob_files(home), old_digests)
        run = {"commit_s": round(elapsed, 4), "up": up, "down": down, "mount_down": mount_down,
               "local": local_bytes, "blobs": blobs, "pre_image_blobs": pre, **before_commit}
        if traced:
            run["requests"] = len(api.requests)
            run["rounds"] = rounds(api.requests, bucket, t0)
        # it landed
        if kind == "add":
            found = fs.find(f"{bucket}/{prefix}{n}/new", refresh=True)
            assert len([k for k in found if not k.endswith("/")]) == files, found
            fs.rm(f"{bucket}/{prefix}{n}", recursive=True)  # (as the put's, below)
        elif kind == "modify":
            assert fs.cat(f"{bucket}/{prefix}/big/{names[0]}") == open(os.path.join(src, names[0]), "rb").read()
            wait_for(lambda: same_head(os.path.join(root, "big", names[-1]), os.path.join(src, names[-1])),
                     f"{prefix}/big after run {n}")
        else:
            found = [k for k in fs.find(f"{bucket}/{prefix}/{there}", refresh=True) if not k.endswith("/")]
            left = [k for k in fs.find(f"{bucket}/{prefix}/{here}", refresh=True) if not k.endswith("/")]
            assert (len(found), left) == (files, []), (found, left)
            wait_for(lambda: same_head(os.path.join(root, there, names[-1]), os.path.join(src, names[-1]))
                     and not os.path.exists(os.path.join(root, here, names[-1])), f"{prefix}/{there} after run {n}")
        if n % 2 == 0:
            run.update(baseline())
        run["ratio"] = round(run["commit_s"] / run["put_s"], 3)
        out["commit_s"].append(run["commit_s"])
        out["put_s"].append(run["put_s"])
        out["runs"].append(run)
        print(f"  run {n}: commit {elapsed * 1000:.0f} ms, put {run['put_s'] * 1000:.0f} ms,"
              f" up {up} B, down {down} B", file=sys.stderr, flush=True)
    subprocess.run(["rm", "-rf", local], check=False)
    return out


def human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def report(results: dict[str, Any], args: argparse.Namespace, load: list[float]) -> int:
    missed: list[str] = []
    print(f"\nGCS commit against gcsfs put, {args.delay * 1000:.0f} ms added round trip, medians of {args.runs} runs"
          " (ratio: the median of each run's commit/put)")
    header = (f"{'scenario':9s} {'commit ms':>10s} {'put ms':>8s} {'ratio':>6s} {'budget':>7s} {'bytes up':>10s}"
              f" {'down':>10s} {'mount down':>11s} {'local':>10s} {'blobs':>10s} {'pre-images':>10s}")
    print(header)
    for name, r in results.items():
        commit_s, put_s = statistics.median(r["commit_s"]), statistics.median(r["put_s"])
        ratio = statistics.median(x["ratio"] for x in r["runs"])  # (each run's commit against its own put)
        # bytes: of the run whose commit time is the median (the last of them on a tie)
        run = sorted(r["runs"], key=lambda x: x["commit_s"])[len(r["runs"]) // 2]
        r.update({"commit_ms": round(commit_s * 1000, 1), "put_ms": round(put_s * 1000, 1),
                  "ratio": round(ratio, 2), "up": run["up"], "down": run["down"], "mount_down": run["mount_down"],
                  "local": run["local"], "blobs": run["blobs"], "pre_image_blobs": run["pre_image_blobs"]})
        object_size = r["size"]
        worst_down = max(x["down"] for x in r["runs"])
        worst_up = max(x["up"] for x in r["runs"])
        worst_pre = max(x["pre_image_blobs"] for x in r["runs"])
        if name in BUDGET:
            budget = f"{BUDGET[name]}x"
            ok = ratio <= BUDGET[name]
        elif name == "modify":
            budget = "no pre"
            ok = worst_down < object_size and worst_pre < object_size
        else:
            budget = "no copy"
            ok = worst_down < object_size and worst_up < object_size and worst_pre < object_size
        r["budget_met"] = ok
        if not ok:
            missed.append(name)
        print(f"{name:9s} {commit_s * 1000:10.0f} {put_s * 1000:8.0f} {ratio:6.2f} {budget:>7s} {human(run['up']):>10s}"
              f" {human(run['down']):>10s} {human(run['mount_down']):>11s} {human(run['local']):>10s}"
              f" {human(run['blobs']):>10s} {human(run['pre_image_blobs']):>10s}{'' if ok else '  MISSED'}")
    for name, r in results.items():
        for run in r["runs"]:
            if "rounds" not in run:
                continue
            print(f"\n{name}: one commit ({run['commit_s'] * 1000:.0f} ms) made {run['requests']} requests in"
                  f" {len(run['rounds'])} sequential round trips:")
            for i, rt in enumerate(run["rounds"], 1):
                print(f"  {i:2d}. {rt['start_ms']:6.1f} -{rt['end_ms']:6.1f} ms  {rt['what']}")
            print(f"{name}: put ({run['put_s'] * 1000:.0f} ms) made {run['put_requests']} requests in"
                  f" {len(run['put_rounds'])} sequential round trips:")
            for i, rt in enumerate(run["put_rounds"], 1):
                print(f"  {i:2d}. {rt['start_ms']:6.1f} -{rt['end_ms']:6.1f} ms  {rt['what']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"delay_s": args.delay, "runs": args.runs, "load_before_after": load, "cpus": os.cpu_count(),
                       "scenarios": results}, f, indent=2)
    print(f"\n1-minute load average {load[0]:.2f} before, {load[1]:.2f} after ({os.cpu_count()} CPUs)")
    if missed:
        print(f"\nbudget missed: {', '.join(missed)}")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
