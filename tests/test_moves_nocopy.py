"""Moves that copy no bytes during a run (issue 18, item 5; cowfs.stagers.MetacopyOverlay).

A bucket target's run, as root, stages on a kernel overlay mounted with
``metacopy=on,redirect_dir=on``: ``mv`` of a live file leaves an upper file
with no data that names the live file holding its bytes. The diff reads
those bytes from the live tree (cowfs.upper, cowfs.changeset), the commit
keeps and lands them, and a file written after its move is its new bytes.
A local root's runs stay on the backends they had.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import xxhash

from cowfs.changeset import compare, pair_moves
from cowfs.stagers import MetacopyOverlay, candidates
from tests.support.gcs import MTIME, Bucket
from tests.support.roscoe import Roscoe
from tests.support.trees import disk_bytes

MIB = 1 << 20
FILES = {f"scans/s{i}.pdf": bytes([i]) * (3 * MIB) + os.urandom(1024) for i in range(4)}


def h(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@pytest.fixture
def scans(bucket: Bucket) -> Bucket:
    for key, data in FILES.items():
        bucket.put(f"projects/{key}", data)
    for key, data in FILES.items():
        bucket.settle(key, data)
    return bucket


def run(roscoe: Roscoe, bucket: Bucket, script: str, tx: str | None = None) -> str:
    if tx is None:
        tx = roscoe.begin(bucket.root, "--target", bucket.url)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=bucket.root)
    assert done.returncode == 0, done.stderr
    return tx


MOVES = " && ".join(["mkdir filed"] + [f"mv scans/s{i}.pdf filed/case-{i}.pdf" for i in range(3)]
                    + ["mv scans/s3.pdf scans/renamed.pdf"])


def test_moves_in_a_bucket_run_copy_no_bytes_and_commit_exactly(groscoe: Roscoe, scans: Bucket) -> None:
    before = scans.server.objects(scans.name)
    tx = run(groscoe, scans, MOVES)
    show = json.loads(groscoe("tx", "show", tx, "--json").stdout)
    assert show["backend"] == "kernel-metacopy"
    upper = groscoe.home / "tx" / tx / "upper"
    assert disk_bytes(upper) < MIB  # 12 MiB moved, metadata staged
    assert os.getxattr(upper / "filed" / "case-0.pdf", "trusted.overlay.metacopy") == b""
    diff = json.loads(groscoe("tx", "diff", tx, "--json").stdout)
    moved = {(c.get("moved_from"), c["path"], c["new"]["hash"], c["new"]["size"])
             for c in diff["changes"] if c["status"] == "added" and c["new"]["type"] == "file"}
    size = 3 * MIB + 1024
    assert moved == {(f"scans/s{i}.pdf", f"filed/case-{i}.pdf", h(FILES[f"scans/s{i}.pdf"]), size)
                     for i in range(3)} | {("scans/s3.pdf", "scans/renamed.pdf", h(FILES["scans/s3.pdf"]), size)}
    assert {(c["path"], c.get("moved_to")) for c in diff["changes"] if c["status"] == "deleted"} == {
        (f"scans/s{i}.pdf", f"filed/case-{i}.pdf") for i in range(3)} | {("scans/s3.pdf", "scans/renamed.pdf")}
    assert diff["summary"]["moved"] == 4
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    got = scans.server.objects(scans.name)
    dest = {f"projects/filed/case-{i}.pdf": f"projects/scans/s{i}.pdf" for i in range(3)}
    dest["projects/scans/renamed.pdf"] = "projects/scans/s3.pdf"
    for new, old in dest.items():
        assert got[new]["data"] == before[old]["data"]
        assert got[new]["metadata"] == {"gcsfuse_mtime": MTIME, "mtime": MTIME}  # mv keeps the mtime
        assert old not in got
    assert set(got) - set(dest) - {k for k in got if k.startswith(".roscoe/")} == (
        set(before) - set(dest.values()) - {k for k in before if k.startswith(".roscoe/")} | {"projects/filed/"})


def test_a_file_written_after_its_move_commits_its_new_bytes(groscoe: Roscoe, scans: Bucket) -> None:
    """And a file whose mtime alone changed (utimensat, no open for writing:
    its metadata copied up, not its data) keeps its bytes."""
    tx = run(groscoe, scans, "mv scans/s0.pdf scans/moved.pdf && mv scans/s1.pdf scans/kept.pdf"
                             " && touch -h -d @1700000100.25 scans/s2.pdf")
    upper = groscoe.home / "tx" / tx / "upper"
    assert os.getxattr(upper / "scans" / "moved.pdf", "trusted.overlay.metacopy") == b""
    assert os.getxattr(upper / "scans" / "s2.pdf", "trusted.overlay.metacopy") == b""
    assert disk_bytes(upper) < MIB
    run(groscoe, scans, "printf 'appended' >> scans/moved.pdf", tx)
    with pytest.raises(OSError):  # the data was copied up: no longer a metacopy file
        os.getxattr(upper / "scans" / "moved.pdf", "trusted.overlay.metacopy")
    new = FILES["scans/s0.pdf"] + b"appended"
    diff = json.loads(groscoe("tx", "diff", tx, "--json").stdout)
    entries = {c["path"]: c for c in diff["changes"]}
    assert (entries["scans/moved.pdf"]["new"]["hash"], entries["scans/moved.pdf"]["new"]["size"]) == (h(new), len(new))
    assert "moved_from" not in entries["scans/moved.pdf"]
    assert entries["scans/kept.pdf"]["moved_from"] == "scans/s1.pdf"
    assert (entries["scans/s2.pdf"]["status"], entries["scans/s2.pdf"]["new"]["hash"],
            entries["scans/s2.pdf"]["new"]["mtime_ns"]) == ("meta_changed", h(FILES["scans/s2.pdf"]),
                                                           1_700_000_100_250_000_000)
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    got = scans.contents()
    assert got["projects/scans/moved.pdf"][0] == new
    assert got["projects/scans/kept.pdf"][0] == FILES["scans/s1.pdf"]
    assert got["projects/scans/s2.pdf"] == (FILES["scans/s2.pdf"], {"gcsfuse_mtime": "2023-11-14T22:15:00.25Z",
                                                                   "mtime": "2023-11-14T22:15:00.25Z"})
    assert "projects/scans/s0.pdf" not in got and "projects/scans/s1.pdf" not in got


def test_a_moved_directory_shows_its_files_at_the_new_path(groscoe: Roscoe, scans: Bucket) -> None:
    """redirect_dir=on: ``mv scans archive`` copies up one directory."""
    tx = run(groscoe, scans, "mv scans archive")
    assert disk_bytes(groscoe.home / "tx" / tx / "upper") < MIB
    diff = json.loads(groscoe("tx", "diff", tx, "--json").stdout)
    assert {(c["path"], c["status"], c.get("moved_from")) for c in diff["changes"]} == {
        ("scans", "deleted", None), ("archive", "added", None)} | {
        (f"scans/s{i}.pdf", "deleted", None) for i in range(4)} | {
        (f"archive/s{i}.pdf", "added", f"scans/s{i}.pdf") for i in range(4)}
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    got = scans.contents()
    assert {k: v[0] for k, v in got.items() if k.startswith("projects/archive/") and not k.endswith("/")} == {
        f"projects/archive/s{i}.pdf": FILES[f"scans/s{i}.pdf"] for i in range(4)}
    assert not any(k.startswith("projects/scans/") for k in got)


def test_a_local_root_keeps_its_backends(groscoe: Roscoe, tmp_path: Path) -> None:
    assert candidates(bucket=False) == ("kernel", "kernel-bindfs", "copy")
    assert candidates(bucket=True)[0] == "kernel-metacopy"
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.bin").write_bytes(b"a" * MIB)
    tx = groscoe.begin(root)
    done = groscoe("tx", "run", "--tx", tx, "--", "mv", "a.bin", "b.bin", cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(groscoe("tx", "show", tx, "--json").stdout)["backend"] == "kernel"
    done = groscoe("tx", "run", "--tx", tx, "--", "true", cwd=root, env={"ROSCOE_BACKEND": "kernel-metacopy"})
    assert done.returncode == 0, done.stderr  # the transaction keeps the backend it has
    tx2 = groscoe.begin(root)
    done = groscoe("tx", "run", "--tx", tx2, "--", "true", cwd=root, env={"ROSCOE_BACKEND": "kernel-metacopy"})
    assert done.returncode == 125 and b"only for a bucket target" in done.stderr, done.stderr


def test_over_a_lower_that_answers_xattrs_the_overlay_is_mounted_on_it(tmp_path: Path) -> None:
    """The stager on its own, over a local dir (as over gcsfuse, whose
    xattrs answer ENOTSUP): no bindfs, and the same metacopy layer."""
    root, tx_dir = tmp_path / "root", tmp_path / "tx"
    (root / "d").mkdir(parents=True)
    data = os.urandom(2 * MIB)
    (root / "d" / "a.bin").write_bytes(data)
    (root / "d" / "b.bin").write_bytes(b"b")
    for name in ("a", "b"):  # same name and bytes: only the layer tells which went where
        (root / name).mkdir()
        (root / name / "t.bin").write_bytes(b"twin")
    tx_dir.mkdir()
    stager = MetacopyOverlay(str(tx_dir), str(root))
    stager.prepare()
    stager.before_run()
    try:
        assert not os.path.ismount(tx_dir / "lower")
        subprocess.run(["mv", f"{stager.mnt}/d/a.bin", f"{stager.mnt}/moved.bin"], check=True)
        subprocess.run(["mv", f"{stager.mnt}/d", f"{stager.mnt}/e"], check=True)
        os.mkdir(f"{stager.mnt}/c")
        subprocess.run(["mv", f"{stager.mnt}/b/t.bin", f"{stager.mnt}/c/t.bin"], check=True)
        subprocess.run(["mv", f"{stager.mnt}/a/t.bin", f"{stager.mnt}/c/u.bin"], check=True)
    finally:
        stager.after_run()
    assert not os.path.ismount(stager.mnt)
    assert disk_bytes(Path(stager.upper)) < 64 * 1024
    assert stager.staged_path("moved.bin") == str(root / "d" / "a.bin")
    assert stager.staged_path("e") == os.path.join(stager.upper, "e")
    assert stager.staged_path("e/b.bin") == str(root / "d" / "b.bin")  # shown from the lower, not in the upper
    assert (stager.bytes_from("moved.bin"), stager.bytes_from("e"), stager.bytes_from("c/t.bin")) == (
        "d/a.bin", None, "b/t.bin")
    changes = compare(str(root), stager.touches())
    assert [(c.path, c.status, c.new.hash if c.new else None) for c in changes] == [
        ("a/t.bin", "deleted", None), ("b/t.bin", "deleted", None), ("c", "added", None),
        ("c/t.bin", "added", h(b"twin")), ("c/u.bin", "added", h(b"twin")),
        ("d", "deleted", None), ("d/a.bin", "deleted", None), ("d/b.bin", "deleted", None),
        ("e", "added", None), ("e/b.bin", "added", h(b"b")), ("moved.bin", "added", h(data)),
    ]
    assert changes.sources == {"c/t.bin": "b/t.bin", "c/u.bin": "a/t.bin", "e/b.bin": "d/b.bin",
                               "moved.bin": "d/a.bin"}
    assert [m.to_json() for m in changes.moves()] == [
        {"from": "b/t.bin", "to": "c/t.bin"}, {"from": "a/t.bin", "to": "c/u.bin"},
        {"from": "d/b.bin", "to": "e/b.bin"}, {"from": "d/a.bin", "to": "moved.bin"}]
    # By name and hash alone, a/t.bin would have gone to c/t.bin.
    assert pair_moves(changes.changes)[0].to_json() == {"from": "a/t.bin", "to": "c/t.bin"}


def test_a_hidden_path_under_a_renamed_directory_stays_hidden(groscoe: Roscoe, scans: Bucket) -> None:
    """cowfs.hide reads the renamed directory's lower: what shows at
    archive/s0.pdf is scans/s0.pdf's, and ``--hide`` covers it."""
    tx = run(groscoe, scans, "mv scans archive")
    done = groscoe("tx", "run", "--tx", tx, "--hide", "archive/s0.pdf", "--", "sh", "-c",
                   "wc -c < archive/s0.pdf; wc -c < archive/s1.pdf", cwd=scans.root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"0", str(3 * MIB + 1024).encode()]
