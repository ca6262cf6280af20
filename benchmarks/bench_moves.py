#!/usr/bin/env python3
"""What a reorganization costs: N moves of SIZE-byte objects in one ``tx run``
over an rclone mount of a fake-gcs-server bucket, then its commit.

Two TCP proxies (tests/support/proxy.py) in front of one fake-gcs-server
count the bytes through the machine: rclone's mount talks to the server
through one, roscoe's commit (STORAGE_EMULATOR_HOST) through the other. The
objects are uploaded straight to the server, uncounted. Then, as the CLI
runs them (subprocesses, roscoe's code from ``--code``, default this
checkout):

  run     roscoe tx run --tx ID -- sh -c 'mkdir dst && mv src/f*.bin dst/'
          bytes down through the mount (the command's copy-ups, if any, and
          the end-of-run diff, which hashes the objects moved away), and the
          local disk the staged layer uses (st_blocks of tx/ID/upper)
  diff    roscoe tx diff ID --json: the bytes a diff alone reads through the
          mount, so run - diff is about what the command itself read
  commit  roscoe tx commit ID --yes: bytes up and down through the API
          proxy and down through the mount, and the state dir's blob store
          afterwards

    .venv/bin/python benchmarks/bench_moves.py                 # 20 moves of 8 MB
    .venv/bin/python benchmarks/bench_moves.py --code /work/main --json before.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size", type=int, default=8_000_000)
    parser.add_argument("--code", default=REPO, help="the roscoe checkout to run (default: this one)")
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    args = parser.parse_args()

    from pathlib import Path

    from tests.support.gcs import fake_gcs, rclone_mount
    from tests.support.proxy import proxied
    from tests.support.trees import disk_bytes

    code = os.path.abspath(args.code)
    work = tempfile.mkdtemp(prefix="roscoe-bench-moves-")
    home = os.path.join(work, "home")
    report: dict[str, object] = {"files": args.files, "size": args.size, "code": code,
                                 "commit_of_code": _head(code)}
    try:
        with fake_gcs() as server, proxied(server.port) as via_mount, proxied(server.port) as via_api:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            server.make_bucket(bucket)
            server.put(bucket, "r/", b"")
            for i in range(args.files):
                server.put(bucket, f"r/src/f{i:03d}.bin", os.urandom(args.size),
                           {"gcsfuse_mtime": "2023-11-14T22:13:20Z", "mtime": "2023-11-14T22:13:20Z"})
            env = {k: v for k, v in os.environ.items() if not k.startswith("ROSCOE_")}
            env.update(ROSCOE_HOME=home, ROSCOE_SOCKET="", PYTHONPATH=code, STORAGE_EMULATOR_HOST=via_api.url,
                       GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")

            def roscoe(*argv: str, cwd: str | None = None) -> tuple[subprocess.CompletedProcess[bytes], float]:
                t = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "cli.main", *argv], env=env, cwd=cwd,
                                      capture_output=True, timeout=1800)
                took = time.perf_counter() - t
                if done.returncode != 0:
                    sys.exit(f"roscoe {' '.join(argv)}: exit {done.returncode}\n{done.stderr.decode()}")
                return done, took

            mounted = types.SimpleNamespace(url=via_mount.url)
            with rclone_mount(mounted, bucket, Path(work) / "mnt") as mnt:  # type: ignore[arg-type]
                root = os.path.join(mnt, "r")
                deadline = time.monotonic() + 20
                while len(os.listdir(os.path.join(root, "src"))) < args.files:
                    assert time.monotonic() < deadline, "the mount never listed the objects"
                    time.sleep(0.1)
                tx = roscoe("tx", "begin", "--root", root, "--target", f"gs://{bucket}/r")[0].stdout.decode().strip()
                via_mount.reset()
                _, took = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "mkdir dst && mv src/f*.bin dst/",
                                 cwd=root)
                upper = os.path.join(home, "tx", tx, "upper")
                report["run"] = {"seconds": round(took, 3), "mount_down": via_mount.down, "mount_up": via_mount.up,
                                 "staged_disk": disk_bytes(upper)}
                report["backend"] = json.loads(roscoe("tx", "show", tx, "--json")[0].stdout)["backend"]
                via_mount.reset()
                done, took = roscoe("tx", "diff", tx, "--json")
                diff = json.loads(done.stdout)
                report["diff"] = {"seconds": round(took, 3), "mount_down": via_mount.down,
                                  "moved": diff["summary"]["moved"]}
                via_mount.reset()
                via_api.reset()
                _, took = roscoe("tx", "commit", tx, "--yes")
                report["commit"] = {"seconds": round(took, 3), "api_up": via_api.up, "api_down": via_api.down,
                                    "mount_down": via_mount.down,
                                    "blobs_disk": disk_bytes(os.path.join(home, "blobs"))}
            got = {k for k in server.objects(bucket, "r/dst/") if not k.endswith("/")}
            assert len(got) == args.files, f"{len(got)} objects landed, not {args.files}"
            assert not server.objects(bucket, "r/src/")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    moved = args.files * args.size
    print(f"{args.files} moves of {args.size:,} B ({moved / 1e6:.0f} MB) in one tx run, backend"
          f" {report['backend']}, code {code} ({report['commit_of_code']})")
    run, diff, commit = report["run"], report["diff"], report["commit"]  # type: ignore[misc]
    rows = [
        ("run: staged on local disk (upper)", run["staged_disk"]),
        ("run: down through the mount", run["mount_down"]),
        ("  of which a diff alone reads", diff["mount_down"]),
        ("commit: up through the API", commit["api_up"]),
        ("commit: down through the API", commit["api_down"]),
        ("commit: down through the mount", commit["mount_down"]),
        ("commit: blob store on local disk", commit["blobs_disk"]),
    ]
    for label, n in rows:
        print(f"  {label:36s} {n / 1e6:10.1f} MB")
    print(f"  {'moves in the diff':36s} {diff['moved']:10d}")
    print(f"  seconds: run {run['seconds']}, diff {diff['seconds']}, commit {commit['seconds']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _head(code: str) -> str:
    done = subprocess.run(["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
