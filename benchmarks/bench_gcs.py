#!/usr/bin/env python3
"""Throughput of a roscoe commit to a GCS target against a plain gcsfs bulk
``put`` of the same files, both against fake-gcs-server (memory backend) on
127.0.0.1.

For each round: N files of SIZE bytes are staged by an untimed
``tx run`` (through an rclone mount of the bucket) into a transaction with
``--target gs://BUCKET/rN``; then, in this process (gcsfs already imported,
so neither side pays its ~1 s import):

  put     fs.put(LOCAL_DIR, "BUCKET/putN/", recursive=True)   gcsfs's own
          concurrent bulk upload: no preconditions, no journal, no images
  commit  journal.protocol.commit(ws, ID): lease, generation check, pre- and
          post-images in the blob store, journaled intent, conditional
          uploads (ifGenerationMatch=0) gathered in gcsfs's loop, each
          batch's generations journaled, commit record, lease released

and reports files/s, MB/s and commit/put. ``--cli`` also times
``roscoe tx commit ID --yes`` as a subprocess (import costs included).

    .venv/bin/python benchmarks/bench_gcs.py --files 1000 --size 4096 --runs 3
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
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time `roscoe tx commit` as a subprocess")
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    args = parser.parse_args()

    from pathlib import Path

    from tests.support.gcs import fake_gcs, rclone_mount

    work = tempfile.mkdtemp(prefix="roscoe-bench-gcs-")
    src = os.path.join(work, "src")
    os.makedirs(src)
    for i in range(args.files):
        with open(os.path.join(src, f"f{i:06d}.bin"), "wb") as f:
            f.write(os.urandom(args.size))
    results: dict[str, list[float]] = {"put": [], "commit": [], "cli": []}
    with fake_gcs() as server:
        os.environ["STORAGE_EMULATOR_HOST"] = server.url
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        server.make_bucket(bucket)
        server.put(bucket, "r/", b"")
        import gcsfs

        from journal.protocol import commit
        from journal.opening import open_workspace

        fs = gcsfs.GCSFileSystem(token="anon")
        home = os.path.join(work, "home")
        with rclone_mount(server, bucket, Path(work) / "mnt") as mnt:
            ws = open_workspace(home)
            for n in range(args.runs):
                prefix = f"r/run{n}"
                root = os.path.join(mnt, prefix)
                os.makedirs(root, exist_ok=True)
                deadline = time.monotonic() + 10
                while not os.path.isdir(root) and time.monotonic() < deadline:
                    time.sleep(0.05)
                for mode in (["api"] + (["cli"] if args.cli else [])):
                    tx = ws.begin(root, "bench", f"gs://{bucket}/{prefix}")
                    result = ws.run(tx.id, ["cp", "-r", f"{src}/.", f"{root}/{mode}"], cwd=root)
                    assert result.exit_code == 0 and len(result.changes.changes) == args.files + 1
                    t = time.perf_counter()
                    if mode == "api":
                        commit(ws, tx.id)
                        results["commit"].append(time.perf_counter() - t)
                    else:
                        done = subprocess.run(
                            [sys.executable, "-m", "cli.main", "tx", "commit", tx.id, "--yes"],
                            env=dict(os.environ, ROSCOE_HOME=home, PYTHONPATH=REPO), capture_output=True)
                        assert done.returncode == 0, done.stderr
                        results["cli"].append(time.perf_counter() - t)
                t = time.perf_counter()
                fs.put(src, f"{bucket}/put{n}/", recursive=True)
                results["put"].append(time.perf_counter() - t)
                assert len(fs.find(f"{bucket}/put{n}", refresh=True)) == args.files
            ws.close()
    mb = args.files * args.size / 1e6
    report = {"files": args.files, "size": args.size, "runs": args.runs}
    print(f"{args.files} files of {args.size} B ({mb:.1f} MB), {args.runs} runs, medians:")
    for name in ("put", "commit", "cli"):
        if not results[name]:
            continue
        med = statistics.median(results[name])
        report[name] = {"median_s": round(med, 4), "files_per_s": round(args.files / med, 1),
                        "mb_per_s": round(mb / med, 2), "all_s": [round(x, 4) for x in results[name]]}
        print(f"  {name:7s} {med * 1000:8.0f} ms  {args.files / med:8.0f} files/s  {mb / med:7.2f} MB/s")
    put = statistics.median(results["put"])
    report["commit_over_put"] = round(statistics.median(results["commit"]) / put, 2)
    print(f"  commit / put: {report['commit_over_put']}x")
    if results["cli"]:
        report["cli_over_put"] = round(statistics.median(results["cli"]) / put, 2)
        print(f"  cli commit / put: {report['cli_over_put']}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    subprocess.run(["rm", "-rf", work], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
