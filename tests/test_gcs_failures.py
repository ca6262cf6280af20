"""A GCS commit that goes wrong: another writer in the middle of it, a network
failure, a crash, another machine committing to the same bucket, and bad
input (no bucket, no API, no credentials). After each, the bucket is all-old
or all-new, never a mix, and the error is one line with the contract's code."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cowfs.entry import Entry
from cowfs.hashing import hash_bytes
from tests.support.gcs import MTIME_NS, SCRIPT, Bucket, FakeGcs, begin_and_run, free_port
from tests.support.roscoe import Roscoe


def contents_with_types(bucket: Bucket) -> dict[str, tuple[bytes, dict[str, str], str]]:
    return {k: (v["data"], dict(v.get("metadata") or {}), str(v["contentType"]))  # type: ignore[arg-type]
            for k, v in bucket.server.objects(bucket.name).items() if not k.startswith(".roscoe/")}


def paused_commit(groscoe: Roscoe, tx: str, step: str, flag: Path, **env: str) -> subprocess.Popen[bytes]:
    """`tx commit TX --yes` in the background, one op a batch, paused at
    ``step`` (ROSCOE_GCS_PAUSE) once ``flag`` exists; it goes on when ``flag``
    is removed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "tx", "commit", tx, "--yes"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=dict(groscoe.env, ROSCOE_GCS_PAUSE=step, ROSCOE_GCS_PAUSE_FILE=str(flag),
                                         ROSCOE_GCS_BATCH="1", **env))
    deadline = time.monotonic() + 30
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def replaced_behind_the_mount(bucket: Bucket, path: str, data: bytes) -> None:
    """Another writer replaces the object of ``path``: the mount still lists
    the old one and cannot read it (EIO), as gcsfuse's stat cache would."""
    bucket.put(f"projects/{path}", data)
    with pytest.raises(OSError) as unreadable:
        (bucket.root / path).read_bytes()
    assert unreadable.value.errno == errno.EIO


def bucket_file(bucket: Bucket, path: str, data: bytes) -> dict[str, object]:
    """The diff's entry of a file the bucket holds (the mount's mode; no owner:
    a bucket keeps none)."""
    assert os.path.lexists(bucket.root / path)
    return Entry("file", len(data), 0o644, MTIME_NS, hash_bytes(data), None, uid=None, gid=None).to_json()


def without_dir_mtimes(diff: dict[str, Any]) -> dict[str, Any]:
    """A diff with its staged directories' mtimes left out: the refused commit
    gave the staged files it had linked into the blob store their own copies
    back, which moves their directories' mtimes (untracked, as everywhere)."""
    for c in diff["changes"]:
        if c["new"] is not None and c["new"]["type"] == "dir":
            c["new"].pop("mtime_ns")
    return diff


def test_another_writer_during_the_commit_is_a_conflict_and_is_not_clobbered(
    groscoe: Roscoe, stale_bucket: Bucket, tmp_path: Path,
) -> None:
    bucket = stale_bucket
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    staged = json.loads(groscoe("tx", "diff", tx, "--json").stdout)
    before = contents_with_types(bucket)
    flag = tmp_path / "paused"
    proc = paused_commit(groscoe, tx, "after-intent", flag)
    # The intent is journaled, no op has run: someone else rewrites a file the commit modifies.
    replaced_behind_the_mount(bucket, "case1/notes.md", b"theirs\n")
    flag.unlink()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert err.decode().startswith("roscoe: error: commit undone: an object was written by someone else during it")
    after = contents_with_types(bucket)
    assert after["projects/case1/notes.md"][0] == b"theirs\n"  # their write stands
    after.pop("projects/case1/notes.md")
    before.pop("projects/case1/notes.md")
    assert after == before  # everything else all-old
    # The staged changes are intact, and the diff is against the bucket as it
    # is now (the mount cannot read their object yet: it is read from the bucket).
    show = groscoe("tx", "show", tx, "--json")
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert (shown["state"], shown["diff"]["diff_hash"]) == ("open", staged["diff_hash"])
    diff = groscoe("tx", "diff", tx, "--json")
    assert diff.returncode == 0, diff.stderr
    notes = next(c for c in staged["changes"] if c["path"] == "case1/notes.md")
    notes["old"] = bucket_file(bucket, "case1/notes.md", b"theirs\n")
    assert without_dir_mtimes(json.loads(diff.stdout)) == without_dir_mtimes(staged)
    patch = groscoe("tx", "diff", tx, "--patch")
    assert patch.returncode == 0, patch.stderr
    assert "--- a/case1/notes.md\n+++ b/case1/notes.md\n@@ -1 +1,2 @@\n-theirs\n+# notes\n+more\n" in patch.stdout.decode()
    # That entry is exactly what the commit reads back from the bucket: once a
    # run has seen their object, the transaction commits over it.
    assert groscoe("tx", "run", "--tx", tx, "--", "true", cwd=bucket.root).returncode == 0
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert contents_with_types(bucket)["projects/case1/notes.md"][0] == b"# notes\nmore\n"


def test_an_object_deleted_behind_the_mount_is_diffed_as_absent(groscoe: Roscoe, stale_bucket: Bucket) -> None:
    bucket = stale_bucket
    tx = begin_and_run(groscoe, bucket, "printf 'more\\n' >> case1/notes.md")
    bucket.server._call("DELETE", f"/storage/v1/b/{bucket.name}/o/projects%2Fcase1%2Fnotes.md")
    with pytest.raises(OSError) as unreadable:
        (bucket.root / "case1/notes.md").read_bytes()
    assert unreadable.value.errno == errno.EIO
    diff = groscoe("tx", "diff", tx, "--json")
    assert diff.returncode == 0, diff.stderr
    assert [(c["path"], c["status"], c["old"]) for c in json.loads(diff.stdout)["changes"]] == [
        ("case1/notes.md", "added", None)]
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert "projects/case1/notes.md" not in bucket.contents()


def test_an_object_that_is_a_symlink_now_is_named_and_its_commit_is_a_conflict(
    groscoe: Roscoe, stale_bucket: Bucket,
) -> None:
    bucket = stale_bucket
    tx = begin_and_run(groscoe, bucket, "printf 'more\\n' >> case1/notes.md")
    bucket.server.put(bucket.name, "projects/case1/notes.md", b"", {"gcsfuse_symlink_target": "elsewhere"})
    with pytest.raises(OSError) as unreadable:
        (bucket.root / "case1/notes.md").read_bytes()
    assert unreadable.value.errno == errno.EIO
    # A diff cannot show what the mount does not (rclone shows such an object as an empty file).
    done = groscoe("tx", "diff", tx, "--json")
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"roscoe: error: the live tree {bucket.root} cannot be read at case1/notes.md: the mount cannot read it,"
        f" and gs://{bucket.name}/projects/case1/notes.md is a symlink now\n")
    # The commit asks the bucket what moved since the run: a conflict.
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode() == (
        f"roscoe: error: commit refused: the live tree changed under transaction {tx}; nothing was written."
        " Changed: case1/notes.md\n")


def test_a_mounted_root_that_cannot_be_read_is_named_as_the_live_tree(
    groscoe: Roscoe, stale_bucket: Bucket,
) -> None:
    # A root on a mount, committed through the mount (no --target): nothing can
    # read the replaced object, and the error names the live path, not the staging.
    bucket = stale_bucket
    tx = groscoe.begin(bucket.root)
    done = groscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "printf 'more\\n' >> case1/notes.md", cwd=bucket.root)
    assert done.returncode == 0, done.stderr
    replaced_behind_the_mount(bucket, "case1/notes.md", b"theirs\n")
    line = f"roscoe: error: the live tree {bucket.root} cannot be read at case1/notes.md: Input/output error\n"
    for args in (("diff", tx), ("diff", tx, "--json"), ("diff", tx, "--patch"), ("show", tx), ("commit", tx, "--yes")):
        done = groscoe("tx", *args)
        assert (done.returncode, done.stderr.decode()) == (1, line), args
    assert bucket.contents()["projects/case1/notes.md"][0] == b"theirs\n"
    assert json.loads(groscoe("tx", "list", "--json").stdout)[0]["state"] == "open"


def test_network_failure_mid_commit_then_recover_leaves_the_bucket_all_old(groscoe: Roscoe, bucket: Bucket) -> None:
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    before = contents_with_types(bucket)
    # The 4th object write fails, and the network stays down: the commit cannot even undo.
    done = groscoe("tx", "commit", tx, "--yes", env={"ROSCOE_GCS_FAULT": "write@4", "ROSCOE_GCS_BATCH": "2"})
    assert done.returncode == 1, done.stderr
    err = done.stderr.decode()
    assert err.startswith(f"roscoe: error: commit of {tx} failed at ") and "run `roscoe recover`" in err, err
    with sqlite3.connect(groscoe.home / "journal.db") as db:
        assert db.execute("SELECT state FROM transactions WHERE id = ?", (tx,)).fetchone() == ("committing",)
    done = groscoe("recover")
    assert done.returncode == 6, done.stderr
    assert contents_with_types(bucket) == before
    assert json.loads(groscoe("tx", "show", tx, "--json").stdout)["state"] == "open"
    # The objects put back are byte for byte the base: the same transaction commits now.
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert contents_with_types(bucket)["projects/case1/notes.md"][0] == b"# notes\nmore\n"


def test_crash_after_some_ops_is_recovered_all_old(groscoe: Roscoe, bucket: Bucket) -> None:
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    before = contents_with_types(bucket)
    # Killed after the second batch of ops landed, before their generations were journaled.
    done = groscoe("tx", "commit", tx, "--yes",
                   env={"ROSCOE_FAULT": "apply#2", "ROSCOE_FAULT_ACTION": "kill", "ROSCOE_GCS_BATCH": "1"})
    assert done.returncode == -9, done.stderr
    assert contents_with_types(bucket) != before
    done = groscoe("recover")
    assert done.returncode == 6, done.stderr
    assert contents_with_types(bucket) == before
    assert groscoe("verify").returncode == 0


def test_two_machines_commit_overlapping_transactions_exactly_one_wins(
    server: FakeGcs, bucket: Bucket, tmp_path: Path, gcs_env: dict[str, str],
) -> None:
    a, b = Roscoe(tmp_path / "home-a", gcs_env), Roscoe(tmp_path / "home-b", gcs_env)
    tx_a = begin_and_run(a, bucket, "printf 'A\\n' >> case1/notes.md && printf 'a\\n' > case1/a.txt")
    tx_b = begin_and_run(b, bucket, "printf 'B\\n' >> case1/notes.md && printf 'b\\n' > case1/b.txt")
    env = {"ROSCOE_GCS_BATCH": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "tx", "commit", tx, "--yes"],
                              env=dict(r.env, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r, tx in ((a, tx_a), (b, tx_b))]
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=90)
        codes.append((p.returncode, err.decode()))
    assert sorted(c for c, _ in codes) == [0, 3], codes
    winner = "a" if codes[0][0] == 0 else "b"
    loser = "b" if winner == "a" else "a"
    got = bucket.contents()
    assert got["projects/case1/notes.md"][0] == b"# notes\n" + winner.upper().encode() + b"\n"
    assert f"projects/case1/{winner}.txt" in got and f"projects/case1/{loser}.txt" not in got
    # The lease is released, the loser's intent and images are gone; the winner left its manifest
    # and the pre-image of the object it replaced, beside the prefix.
    tx_won = tx_a if winner == "a" else tx_b
    assert sorted(k for k in server.objects(bucket.name) if k.startswith(".roscoe/")) == [
        f".roscoe/projects/log/{tx_won}.json", f".roscoe/projects/tx/{tx_won}/pre/1.0"]  # (case1/notes.md, the second change)


def test_a_stale_lease_is_taken_over_only_after_it_expires(groscoe: Roscoe, bucket: Bucket) -> None:
    tx = begin_and_run(groscoe, bucket, "printf 'x\\n' > case1/x.txt")
    lease_key = ".roscoe/projects/lease"
    # (10 s: time for the first commit to start and give up under a loaded CI machine)
    holder = {"owner": "other-vm.42", "tx": "0000", "expires_ns": time.time_ns() + 10_000_000_000}
    bucket.server.put(bucket.name, lease_key, json.dumps(holder).encode(), {"roscoe_lease": "1"}, "application/json")
    done = groscoe("tx", "commit", tx, "--yes", env={"ROSCOE_GCS_LEASE_WAIT": "0.5"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode().startswith(f"roscoe: error: {bucket.url} is being committed to by other-vm.42")
    started = time.monotonic()
    done = groscoe("tx", "commit", tx, "--yes")  # waits for the expiry, then takes it over
    assert done.returncode == 0, done.stderr
    assert bucket.contents()["projects/case1/x.txt"][0] == b"x\n"
    assert time.monotonic() - started < 40


def test_rollback_restores_objects_and_metadata_exactly(groscoe: Roscoe, bucket: Bucket) -> None:
    before = contents_with_types(bucket)
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    assert groscoe("tx", "commit", tx, "--yes").returncode == 0
    after = contents_with_types(bucket)
    bucket.put("projects/case3/deep/new.txt", b"edited later\n")
    done = groscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert "case3/deep/new.txt" in done.stderr.decode()
    done = groscoe("tx", "rollback", tx, "--yes", "--force")
    assert done.returncode == 0, done.stderr
    assert contents_with_types(bucket) == before
    rb = done.stdout.decode().split()[-1]
    # The rollback is a transaction too: rolling it back brings the commit back (with the later edit).
    done = groscoe("tx", "rollback", rb, "--yes")
    assert done.returncode == 0, done.stderr
    again = contents_with_types(bucket)
    assert again["projects/case3/deep/new.txt"][0] == b"edited later\n"
    again.pop("projects/case3/deep/new.txt")
    after.pop("projects/case3/deep/new.txt")
    assert again == after


def test_no_such_bucket(groscoe: Roscoe, bucket: Bucket) -> None:
    done = groscoe("tx", "begin", "--root", bucket.root, "--target", "gs://no-such-bucket-here/x")
    assert done.returncode == 1
    assert done.stderr.decode() == (
        "roscoe: error: gs://no-such-bucket-here/x: bucket no-such-bucket-here does not exist"
        " (or these credentials cannot see it)\n")


def test_unreachable_api(groscoe: Roscoe, bucket: Bucket) -> None:
    port = free_port()
    done = groscoe("tx", "begin", "--root", bucket.root, "--target", bucket.url,
                   env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"})
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.startswith(f"roscoe: error: {bucket.url}: cannot reach the GCS API at http://127.0.0.1:{port} ("), err
    assert len(err.splitlines()) == 1


def test_no_credentials(roscoe: Roscoe, bucket: Bucket, tmp_path: Path) -> None:
    env = {k: v for k, v in roscoe.env.items() if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), GCE_METADATA_HOST="127.0.0.1:1",
               GCE_METADATA_IP="127.0.0.1:1", NO_GCE_CHECK="true")
    done = subprocess.run([sys.executable, "-m", "cli.main", "tx", "begin", "--root", str(bucket.root),
                           "--target", bucket.url], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode().startswith(f"roscoe: error: {bucket.url}: no Google credentials found (")


def test_bad_target_url_is_a_usage_error(groscoe: Roscoe, bucket: Bucket) -> None:
    done = groscoe("tx", "begin", "--root", bucket.root, "--target", "s3://x/y")
    assert done.returncode == 2
    assert done.stderr.decode() == "roscoe: error: target 's3://x/y': expected a URL gs://BUCKET[/PREFIX]\n"


def test_tx_run_commit_honours_the_config_target(groscoe: Roscoe, bucket: Bucket, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[roots."{bucket.root}"]\ntarget = "{bucket.url}"\n')
    done = groscoe("tx", "run", "--root", bucket.root, "--commit", "--yes", "--", "sh", "-c",
                   "printf 'via config\\n' > case2/cfg.txt", cwd=bucket.root)
    assert done.returncode == 0, done.stderr
    tx = done.stderr.decode().splitlines()[0].split()[-1]
    assert json.loads(groscoe("tx", "show", tx, "--json").stdout)["target"] == bucket.url
    assert bucket.contents()["projects/case2/cfg.txt"][0] == b"via config\n"


def test_the_api_going_silent_mid_commit_then_recover_leaves_the_bucket_all_old(
    groscoe: Roscoe, bucket: Bucket, server: FakeGcs, tmp_path: Path,
) -> None:
    # A real network failure, not an injected one: after the first batch of
    # writes landed, the emulator is stopped (SIGSTOP: connections hang, as
    # when the network to GCS dies). Killing it would lose its memory backend,
    # bucket and all, leaving nothing to check; stopping keeps the bucket.
    tx = begin_and_run(groscoe, bucket, SCRIPT)
    before = contents_with_types(bucket)
    flag = tmp_path / "paused"
    assert server.proc is not None
    proc = paused_commit(groscoe, tx, "after-batch", flag, ROSCOE_GCS_TIMEOUT="2", ROSCOE_GCS_RETRIES="1")
    try:
        assert contents_with_types(bucket) != before  # a batch landed
        server.proc.send_signal(signal.SIGSTOP)
        flag.unlink()
        out, err = proc.communicate(timeout=120)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert proc.returncode == 1, err
    line = err.decode()
    assert line.startswith(f"roscoe: error: commit of {tx} failed at ") and "run `roscoe recover`" in line, line
    assert len(line.splitlines()) == 1, line
    done = groscoe("recover")
    assert done.returncode == 6, done.stderr
    assert contents_with_types(bucket) == before
    assert groscoe("verify").returncode == 0


def test_a_run_that_cannot_read_the_bucket_says_so_and_the_commit_refuses(groscoe: Roscoe, bucket: Bucket) -> None:
    tx = groscoe.begin(bucket.root, "--target", bucket.url)
    dead = f"http://127.0.0.1:{free_port()}"
    done = groscoe("tx", "run", "--tx", tx, "--", "sh", "-c", SCRIPT, cwd=bucket.root,
                   env={"STORAGE_EMULATOR_HOST": dead, "ROSCOE_GCS_RETRIES": "1"})
    assert done.returncode == 0, done.stderr
    assert (f"roscoe: warning: {bucket.url}: the bucket could not be read when the run ended, so the object"
            " generations a commit is conditional on were not recorded; the commit will refuse (exit 3)"
            " until a later run records them\n") in done.stderr.decode()
    before = contents_with_types(bucket)
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 3, done.stderr
    assert contents_with_types(bucket) == before
    # A run that can read the bucket records the generations; then it commits.
    assert groscoe("tx", "run", "--tx", tx, "--", "true", cwd=bucket.root).returncode == 0
    done = groscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
