"""The journal lives with the data (issue 18): two state dirs are two VMs
sharing one bucket (one fake-gcs-server, one rclone mount). What one commits,
the other lists, verifies and rolls back exactly from the bucket alone, even
after the first lost its state dir; a commit killed on one is settled by the
other once its lease expires; pre-images are kept server side."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.support.gcs import SCRIPT, Bucket, FakeGcs, begin_and_run
from tests.support.proxy import proxied
from tests.support.roscoe import Roscoe


def contents(bucket: Bucket) -> dict[str, tuple[bytes, dict[str, str], str]]:
    """The tree's objects: bytes, custom metadata, content type (the journal beside it left out)."""
    return {k: (v["data"], dict(v.get("metadata") or {}), str(v["contentType"]))  # type: ignore[arg-type]
            for k, v in bucket.server.objects(bucket.name).items() if not k.startswith(".roscoe/")}


def journal_keys(bucket: Bucket) -> list[str]:
    return sorted(k for k in bucket.server.objects(bucket.name) if k.startswith(".roscoe/"))


def test_another_machine_lists_verifies_and_rolls_back_with_an_empty_state_dir(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    before = contents(bucket)
    tx = begin_and_run(a, bucket, SCRIPT)
    diff = json.loads(a("tx", "diff", tx, "--json").stdout)
    done = a("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    after = contents(bucket)
    assert after != before
    # A's disk is lost.
    shutil.rmtree(tmp_path / "home-a")
    assert journal_keys(bucket) == [
        f".roscoe/projects/log/{tx}.json",
        # the pre-images of the modified notes.md and the deleted intake.txt (changes 0 and 1, sorted by path)
        f".roscoe/projects/tx/{tx}/pre/0.0", f".roscoe/projects/tx/{tx}/pre/1.0"]

    listed = b("tx", "log", "--target", bucket.url, "--json")
    assert listed.returncode == 0, listed.stderr
    log = json.loads(listed.stdout)
    assert [(e["tx"], e["changes"], e["target"]) for e in log] == [(tx, len(diff["changes"]), bucket.url)]
    shown = json.loads(b("tx", "show", tx, "--json").stdout)
    assert (shown["state"], shown["diff_hash"]) == ("committed", diff["diff_hash"])
    checked = b("verify", "--target", bucket.url, "--json")
    assert checked.returncode == 0, checked.stdout
    assert json.loads(checked.stdout)["checked"]["transactions"] == 1

    done = b("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert contents(bucket) == before  # bytes, metadata (mtimes) and content types, exactly
    assert b("verify").returncode == 0
    # The rollback is in the bucket too: a third machine sees both.
    c = Roscoe(tmp_path / "home-c", gcs_env)
    log = json.loads(c("tx", "log", "--target", bucket.url, "--json").stdout)
    assert [e["rolls_back"] for e in log] == [tx, None]
    assert c("verify", "--target", bucket.url).returncode == 0
    # ... and can roll back the rollback: the commit is back.
    assert c("tx", "rollback", log[0]["tx"], "--yes").returncode == 0
    assert contents(bucket) == after


@pytest.mark.parametrize("field, value, says", [
    ("key", "elsewhere/secret.txt", "the object 'elsewhere/secret.txt' is not the path 'case1/notes.md''s"),
    ("image", "projects/case2/intake.txt",
     "the image 'projects/case2/intake.txt' is neither its own nor one of its objects"),
    ("image", ".roscoe/projects/tx/0000/pre/0.0",
     "the image '.roscoe/projects/tx/0000/pre/0.0' is neither its own nor one of its objects"),
])
def test_a_manifest_naming_objects_outside_its_paths_is_refused(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str], field: str, value: str, says: str,
) -> None:
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    tx = begin_and_run(a, bucket, "printf 'x\\n' >> case1/notes.md")
    assert a("tx", "commit", tx, "--yes").returncode == 0
    key = f".roscoe/projects/log/{tx}.json"
    doc = json.loads(bucket.server.objects(bucket.name)[key]["data"])  # type: ignore[arg-type]
    op = doc["changes"][0]["objects"][0]
    if field == "key":
        op["key"] = value
    else:
        op["image"]["key"] = value
    bucket.server.put(bucket.name, key, json.dumps(doc).encode(), {}, "application/json")
    before = contents(bucket)
    done = b("tx", "log", "--target", bucket.url)
    assert done.returncode == 1
    assert says in done.stderr.decode()
    assert b("tx", "rollback", tx, "--yes").returncode == 5  # never imported: no such transaction
    assert contents(bucket) == before


def test_a_commit_killed_on_one_machine_is_undone_by_another_after_its_lease_expires(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    before = contents(bucket)
    tx = begin_and_run(a, bucket, SCRIPT)
    done = a("tx", "commit", tx, "--yes", env={
        "ROSCOE_FAULT": "apply#2", "ROSCOE_FAULT_ACTION": "kill", "ROSCOE_GCS_BATCH": "1",
        "ROSCOE_GCS_LEASE_SECONDS": "3"})
    assert done.returncode == -9, done.stderr
    assert contents(bucket) != before  # half of it landed
    assert f".roscoe/projects/tx/{tx}/intent.json" in journal_keys(bucket)
    shutil.rmtree(tmp_path / "home-a")  # and A is gone for good
    time.sleep(3.2)  # (its lease expires)
    checked = b("verify", "--target", bucket.url, "--json")
    assert checked.returncode == 1, checked.stdout
    assert [(p["kind"], p["tx"]) for p in json.loads(checked.stdout)["problems"]] == [("interrupted", tx)]
    done = b("recover", "--target", bucket.url, env={"ROSCOE_GCS_LEASE_WAIT": "30"})
    assert done.returncode == 6, done.stderr
    assert f"recovered the interrupted commit of tx {tx}" in done.stderr.decode()
    assert contents(bucket) == before
    assert journal_keys(bucket) == []  # intent, images and lease gone: nothing in flight
    assert b("tx", "log", "--target", bucket.url, "--json").stdout.strip() == b"[]"
    # A second recovery has nothing to do.
    assert b("recover", "--target", bucket.url).returncode == 0


def test_a_commit_killed_after_its_manifest_is_finished_not_undone(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    tx = begin_and_run(a, bucket, SCRIPT)
    done = a("tx", "commit", tx, "--yes", env={
        "ROSCOE_FAULT": "before-journal-record", "ROSCOE_FAULT_ACTION": "kill", "ROSCOE_GCS_LEASE_SECONDS": "2"})
    assert done.returncode == -9, done.stderr
    after = contents(bucket)
    # B sees it committed (its manifest is the commit point on the bucket) ...
    assert [e["tx"] for e in json.loads(b("tx", "log", "--target", bucket.url, "--json").stdout)] == [tx]
    # ... and A, back, finishes it instead of undoing it.
    done = a("recover")
    assert done.returncode == 6, done.stderr
    assert "it had reached its commit point" in done.stderr.decode()
    assert json.loads(a("tx", "show", tx, "--json").stdout)["state"] == "committed"
    assert contents(bucket) == after
    assert a("verify").returncode == 0
    assert journal_keys(bucket) == sorted([
        f".roscoe/projects/log/{tx}.json", f".roscoe/projects/tx/{tx}/pre/0.0", f".roscoe/projects/tx/{tx}/pre/1.0"])


def test_pre_images_of_100_modified_objects_move_no_bytes_through_the_machine(
    server: FakeGcs, bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    size = 1024 * 1024  # (the JSON answers of 100 objects come to about 350 KB: an object is bigger)
    for i in range(100):
        bucket.put(f"projects/big/f{i:03d}.bin", bytes([i]) * size)
    bucket.settle("big/f099.bin", bytes([99]) * size)
    a = Roscoe(tmp_path / "home-a", gcs_env)
    tx = begin_and_run(a, bucket, "for f in big/*.bin; do printf 'new' > $f; done")
    with proxied(server.port) as proxy:
        done = a("tx", "commit", tx, "--yes", env={"STORAGE_EMULATOR_HOST": proxy.url})
        assert done.returncode == 0, done.stderr
        down, up = proxy.down, proxy.up
    got = contents(bucket)
    assert all(got[f"projects/big/f{i:03d}.bin"][0] == b"new" for i in range(100))
    images = [k for k in journal_keys(bucket) if "/pre/" in k]
    assert len(images) == 100
    # Not one object's bytes came down (only JSON answers), and what went up is the new bytes and JSON.
    assert down < size, down
    assert up < 100 * size // 4, up
    # The images are the old bytes, kept server side.
    kept = sorted(bucket.server.objects(bucket.name)[k]["data"] for k in images)  # type: ignore[type-var]
    assert kept == sorted(bytes([i]) * size for i in range(100))
    blobs = sum(f.stat().st_size for f in (tmp_path / "home-a" / "blobs").rglob("*") if f.is_file())
    assert blobs < size, blobs  # and none of them in the state dir


def test_moves_land_server_side_and_another_machine_rolls_them_back(
    server: FakeGcs, bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    size = 1024 * 1024
    for i in range(5):
        bucket.put(f"projects/scans/s{i}.pdf", bytes([65 + i]) * size)
    bucket.settle("scans/s4.pdf", bytes([69]) * size)
    before = contents(bucket)
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    tx = begin_and_run(a, bucket, "mkdir -p filed/2024 && for i in 0 1 2 3 4; do mv scans/s$i.pdf filed/2024/; done")
    diff = json.loads(a("tx", "diff", tx, "--json").stdout)
    assert diff["summary"]["moved"] == 5
    with proxied(server.port) as proxy:
        done = a("tx", "commit", tx, "--yes", env={"STORAGE_EMULATOR_HOST": proxy.url})
        assert done.returncode == 0, done.stderr
        down, up = proxy.down, proxy.up
    assert (down < size, up < size) == (True, True), (down, up)  # no object's bytes either way
    got = contents(bucket)
    for i in range(5):
        assert f"projects/scans/s{i}.pdf" not in got
        data, metadata, content_type = got[f"projects/filed/2024/s{i}.pdf"]
        old_data, old_metadata, old_type = before[f"projects/scans/s{i}.pdf"]
        assert (data, content_type) == (old_data, old_type)
        assert metadata["mtime"] == old_metadata["mtime"]
    # A move keeps no image of its own: the moved object is its source's.
    assert [k for k in journal_keys(bucket) if "/pre/" in k] == []
    assert a("verify").returncode == 0
    shutil.rmtree(tmp_path / "home-a")
    assert b("verify", "--target", bucket.url).returncode == 0
    done = b("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    after = contents(bucket)
    assert after == before


def test_a_manifest_that_cannot_be_written_leaves_nothing_half_committed(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a = Roscoe(tmp_path / "home-a", gcs_env)
    before = contents(bucket)
    tx = begin_and_run(a, bucket, SCRIPT)
    # Someone else's object where the manifest goes: its write (ifGenerationMatch=0) fails.
    bucket.server.put(bucket.name, f".roscoe/projects/log/{tx}.json", b"{}", {}, "application/json")
    done = a("tx", "commit", tx, "--yes", "--json")
    assert done.returncode == 3, done.stderr
    error = json.loads(done.stdout)["error"]
    assert (error["kind"], error["paths"]) == ("conflict", [f".roscoe/projects/log/{tx}.json"])
    assert contents(bucket) == before  # every object put back
    assert json.loads(a("tx", "show", tx, "--json").stdout)["state"] == "open"
    assert journal_keys(bucket) == [f".roscoe/projects/log/{tx}.json"]  # intent and images dropped, lease released
    assert a("verify").returncode == 0


def test_a_file_whose_mtime_alone_changed_is_rewritten_in_place_server_side(
    server: FakeGcs, bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    size = 1024 * 1024
    bucket.put("projects/scans/big.pdf", b"%PDF" * (size // 4))
    bucket.settle("scans/big.pdf", b"%PDF" * (size // 4))
    a = Roscoe(tmp_path / "home-a", gcs_env)
    before = contents(bucket)
    tx = begin_and_run(a, bucket, "touch -d @1700000000.75 scans/big.pdf")
    with proxied(server.port) as proxy:
        done = a("tx", "commit", tx, "--yes", env={"STORAGE_EMULATOR_HOST": proxy.url})
        assert done.returncode == 0, done.stderr
        down, up = proxy.down, proxy.up
    assert (down < size, up < size) == (True, True), (down, up)
    data, metadata, content_type = contents(bucket)["projects/scans/big.pdf"]
    assert (data, content_type) == before["projects/scans/big.pdf"][::2]
    assert metadata["mtime"] == metadata["gcsfuse_mtime"] == "2023-11-14T22:13:20.75Z"
    assert a("tx", "rollback", tx, "--yes").returncode == 0
    assert contents(bucket) == before


def test_another_machine_s_rollback_is_held_to_its_policy_and_approval(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    before = contents(bucket)
    tx = begin_and_run(a, bucket, "printf 'new\\n' > case1/new.txt")
    assert a("tx", "commit", tx, "--yes").returncode == 0
    after = contents(bucket)
    shutil.rmtree(tmp_path / "home-a")
    (tmp_path / "home-b").mkdir(mode=0o700)
    (tmp_path / "home-b" / "config.toml").write_text("[approval]\nwhen_deleting = true\n")
    assert b("tx", "log", "--target", bucket.url).returncode == 0
    done = b("tx", "rollback", tx, "--yes", "--json")
    assert done.returncode == 4, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["kind"] == "approval_needed"
    assert contents(bucket) == after  # nothing written before the approval
    rb = error["tx"] if "tx" in error else json.loads(b("tx", "list", "--state", "open", "--json").stdout)[0]["tx"]
    diff_hash = json.loads(b("tx", "diff", rb, "--json").stdout)["diff_hash"]
    assert b("tx", "approve", rb, "--hash", diff_hash, "--by", "Jane Partner").returncode == 0
    done = b("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert contents(bucket) == before


def test_gc_drops_the_images_in_the_bucket_for_every_machine(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    tx = begin_and_run(a, bucket, SCRIPT)
    assert a("tx", "commit", tx, "--yes").returncode == 0
    assert b("tx", "log", "--target", bucket.url).returncode == 0  # B knew it while its images were there
    after = contents(bucket)
    done = a("gc", "--keep-days", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed_bucket_images"] == 2
    assert journal_keys(bucket) == [f".roscoe/projects/log/{tx}.json"]
    c = Roscoe(tmp_path / "home-c", gcs_env)  # (a machine that learns of it after the gc)
    assert c("tx", "log", "--target", bucket.url).returncode == 0
    for machine in (a, b, c):
        done = machine("tx", "rollback", tx, "--yes", "--json")
        assert done.returncode == 1, done.stderr
        assert json.loads(done.stdout)["error"]["message"] == (
            f"transaction {tx} is too old to roll back: `roscoe gc` dropped its images")
    assert contents(bucket) == after
    assert Roscoe(tmp_path / "home-d", gcs_env)("verify", "--target", bucket.url).returncode == 0


def test_a_target_without_a_prefix_is_refused_where_its_journal_would_show(
    bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a = Roscoe(tmp_path / "home-a", gcs_env)
    for url in (f"gs://{bucket.name}", f"gs://{bucket.name}/", f"gs://{bucket.name}/.roscoe/projects"):
        done = a("tx", "begin", "--root", str(bucket.root), "--target", url)
        assert done.returncode == 2, (url, done.stderr)
        assert done.stderr.decode() == (
            "roscoe: error: a bucket target needs a prefix that is not .roscoe (gs://BUCKET/PREFIX): roscoe keeps"
            " its journal beside the prefix, in .roscoe/, where a mount of the prefix does not show it\n")
        assert a("tx", "log", "--target", url).returncode == 2
