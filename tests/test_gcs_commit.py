"""Commits to a GCS target through the API, against fake-gcs-server and an
rclone mount of it (the run reads through the mount): exact objects and
metadata, conditional writes, conflicts, crashes, recovery and rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gcs import MTIME, MTIME_NS, SCRIPT, Bucket, begin_and_run
from tests.support.roscoe import Roscoe
from tests.support.system import REPO


def tx_of(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stderr.decode().splitlines()[0].split()[-1]


def test_commit_writes_objects_as_gcsfuse_lays_them_out(groscoe: Roscoe, bucket: Bucket) -> None:
    before = bucket.generations()
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    diff = json.loads(groscoe("tx", "diff", tx, "--json").stdout)
    assert [(c["path"], c["status"]) for c in diff["changes"]] == [
        ("case1/notes.md", "modified"), ("case2/intake.txt", "deleted"), ("case3", "added"),
        ("case3/deep", "added"), ("case3/deep/new.txt", "added"), ("case3/link", "added"),
    ]
    assert bucket.generations() == before  # nothing lands before the commit
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    got = bucket.contents()
    notes_mtime = got["projects/case1/notes.md"][1]["gcsfuse_mtime"]
    assert got == {
        "projects/case1/notes.md": (b"# notes\nmore\n", {"gcsfuse_mtime": notes_mtime, "mtime": notes_mtime}),
        "projects/case1/Pleadings/complaint.txt": (b"COMPLAINT\n", {"gcsfuse_mtime": MTIME, "mtime": MTIME}),
        "projects/case2/empty/": (b"", {}),
        "projects/case3/": (b"", {}),
        "projects/case3/deep/": (b"", {}),
        "projects/case3/deep/new.txt": (b"new\n", {"gcsfuse_mtime": "2023-11-14T22:13:20.25Z",
                                                   "mtime": "2023-11-14T22:13:20.25Z"}),
        "projects/case3/link": (b"", {"gcsfuse_symlink_target": "../case1/notes.md",
                                      "gcsfuse_mtime": got["projects/case3/link"][1]["gcsfuse_mtime"],
                                      "mtime": got["projects/case3/link"][1]["gcsfuse_mtime"]}),
    }
    objects = bucket.server.objects(bucket.name)
    assert objects["projects/case1/notes.md"]["contentType"] == "text/plain"  # kept from the old object
    assert objects["projects/case3/deep/new.txt"]["contentType"] == "text/plain"  # guessed from .txt
    after = bucket.generations()
    assert after["projects/case1/Pleadings/complaint.txt"] == before["projects/case1/Pleadings/complaint.txt"]
    # The mount (rclone reads `mtime`) shows the commit, mtime to the ns.
    bucket.settle("case3/deep/new.txt", b"new\n")
    assert os.stat(bucket.root / "case3/deep/new.txt").st_mtime_ns == 1_700_000_000_250_000_000
    show = json.loads(groscoe("tx", "show", tx, "--json").stdout)
    assert (show["state"], show["target"]) == ("committed", bucket.url)
    kinds = [e["kind"] for e in json.loads(groscoe("audit", "--json").stdout)["events"] if e.get("tx") == tx]
    assert {"gcs-lease-acquire", "gcs-apply", "commit", "gcs-lease-release"} <= set(kinds)
    assert groscoe("recover").returncode == 0
    # verify reads generations through the API: a later write elsewhere is found.
    assert groscoe("verify").returncode == 0
    bucket.put("projects/case1/notes.md", b"someone else\n")
    done = groscoe("verify", "--json")
    assert done.returncode == 3  # drift alone: roscoe's own state is healthy
    assert [(p["kind"], p["tx"], p["path"]) for p in json.loads(done.stdout)["problems"]] == [
        ("live", tx, "case1/notes.md")]


def test_a_bucket_keeps_no_owners_so_the_diff_has_none(groscoe: Roscoe, bucket: Bucket) -> None:
    """uid and gid are null on a bucket target, and a chown alone is no change."""
    tx = begin_and_run(groscoe, bucket, "printf 'more\\n' >> case1/notes.md && chown 65534:65534 case1/notes.md"
                                        " && chown 65534:65534 case2/intake.txt")
    diff = json.loads(groscoe("tx", "diff", tx, "--json").stdout)
    assert [(c["path"], c["status"], c["old"]["uid"], c["old"]["gid"], c["new"]["uid"], c["new"]["gid"])
            for c in diff["changes"]] == [("case1/notes.md", "modified", None, None, None, None)]
    # A plan's dry run predicts the same (its scratch transaction has no target of its own).
    plan = json.dumps({"version": 1, "ops": [{"op": "write", "path": "case2/new.txt", "content": "n"}]})
    done = groscoe("tx", "plan", "--tx", tx, "--dry-run", "--json", "-", input=plan.encode())
    assert done.returncode == 0, done.stderr
    predicted = json.loads(done.stdout)["changes"]
    assert [(c["path"], c["new"]["uid"], c["new"]["gid"]) for c in predicted] == [
        ("case1/notes.md", None, None), ("case2/new.txt", None, None)]
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert json.loads(groscoe("tx", "diff", tx, "--json").stdout)["changes"] == diff["changes"]
    assert bucket.contents()["projects/case1/notes.md"][0] == b"# notes\nmore\n"


def test_object_changed_before_commit_is_a_conflict(groscoe: Roscoe, bucket: Bucket) -> None:
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    bucket.put("projects/case1/notes.md", b"someone else\n")
    before = bucket.contents()
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode().startswith("roscoe: error: commit refused: the live tree changed under transaction")
    assert "case1/notes.md" in done.stderr.decode()
    assert bucket.contents() == before
    assert json.loads(groscoe("tx", "show", tx, "--json").stdout)["state"] == "open"


def test_a_replaced_object_is_found_from_the_bucket_alone(
    groscoe: Roscoe, bucket: Bucket, home: Path, gcs_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The mount's cached view of a replaced object can fail reads (EIO) until
    # it expires: the commit then asks the bucket which objects moved, and
    # refuses with a conflict rather than blame the staging layer.
    from journal.opening import open_workspace
    from journal.targets.bucket import objects_moved

    for name, value in gcs_env.items():
        monkeypatch.setenv(name, value)
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    ws = open_workspace(home)
    try:
        record = ws.get(tx)
        assert objects_moved(ws.journal, record) == []
        bucket.put("projects/case1/notes.md", b"someone else\n")
        assert objects_moved(ws.journal, record) == ["case1/notes.md"]
    finally:
        ws.close()


def test_mtimes_in_object_metadata_read_back_to_the_ns() -> None:
    from cowfs.gcs import parse_rfc3339, rfc3339

    for ns in (MTIME_NS, 1_700_000_000_250_000_000, 1_700_000_000_000_000_000, 1, 1_700_000_000_123_456_789):
        assert parse_rfc3339(rfc3339(ns)) == ns
    assert parse_rfc3339("2023-11-14T23:13:20.5+01:00") == MTIME_NS
    assert parse_rfc3339("2023-11-14T17:13:20.5-05:00") == MTIME_NS
    assert parse_rfc3339("yesterday") is None


def test_object_created_under_an_added_path_is_a_conflict(groscoe: Roscoe, bucket: Bucket) -> None:
    tx = begin_and_run(groscoe, bucket, "printf 'mine\\n' > case1/new.txt")
    bucket.put("projects/case1/new.txt", b"theirs\n")  # the mount may not show it yet; the generation does
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert bucket.contents()["projects/case1/new.txt"][0] == b"theirs\n"


def test_a_local_root_never_imports_gcsfs(root: Path, home: Path) -> None:
    code = (
        "import sys\n"
        "from journal.opening import open_workspace\nfrom journal.protocol import commit\n"
        f"ws = open_workspace({str(home)!r})\n"
        f"tx = ws.begin({str(root)!r})\n"
        "ws.run(tx.id, ['sh', '-c', 'echo x > case1/x.txt'])\n"
        "commit(ws, tx.id)\n"
        "assert not [m for m in sys.modules if m.startswith(('gcsfs', 'cowfs.gcs', 'journal.targets.bucket'))], sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    assert (root / "case1/x.txt").read_bytes() == b"x\n"
