"""Approval bound to the exact diff (journal.approval, journal.notify).

Each ``[approval]`` rule makes a commit need ``tx approve``; the refused
commit exits 4 with the command to approve it; an approval is voided by any
later run; ``tx show`` and ``tx list`` show the request; the ``notify``
command gets the request as JSON on stdin, once per diff hash, and its
failures (exit status, missing command, a hang) are reported, never fatal.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Roscoe, snapshot
from tests.test_policy import (
    Done,
    committed,
    diff_hash,
    error_line,
    refused,
    run,
    staged,
    state,
    tx_json,
    write_config,
)

USER = "clerk"  # the login user ($LOGNAME) of every call here


@pytest.fixture
def clerk(home: Path) -> Roscoe:
    return Roscoe(home, {"LOGNAME": USER, "USER": "not-this-one"})


def needs_approval(tx: str, reasons: str, diff_hash: str, notified: str = "") -> str:
    return (f"transaction {tx} needs an approval before it can be committed ({reasons}); nothing was written."
            f" A person approves this exact diff with: roscoe tx approve {tx} --hash {diff_hash}{notified}")


def hash_in(message: str) -> str:
    found = re.search(r"--hash ([0-9a-f]{32})", message)
    assert found, message
    return found.group(1)


def approve(roscoe: Roscoe, tx: str, diff_hash: str, *options: str, code: int = 0) -> Done:
    done = roscoe("tx", "approve", tx, "--hash", diff_hash, *options)
    assert done.returncode == code, done.stderr
    return done


def approval_column(roscoe: Roscoe, tx: str) -> str | None:
    done = roscoe("tx", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {t["tx"]: t["approval"] for t in json.loads(done.stdout)}[tx]


def audit_events(roscoe: Roscoe, tx: str, kind: str) -> list[dict]:
    done = roscoe("audit", "--tx", tx, "--json")
    assert done.returncode == 0, done.stderr
    return [e for e in json.loads(done.stdout)["events"] if e["kind"] == kind]


# -- each rule ---------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "script", "reason"), [
    pytest.param("when_deleting = true", "rm case1/old.tmp && echo n > case1/new.txt",
                 "deletes 1 path: case1/old.tmp (when_deleting)", id="when_deleting"),
    pytest.param("when_deleting = true", "rm case2/notes-link && mkdir case2/notes-link",
                 "deletes 1 path: case2/notes-link (when_deleting)", id="when_deleting-type-changed"),
    pytest.param("when_deleting = true", "rm case1/notes.md case1/old.tmp case2/script.sh 'case2/intake form.txt'"
                 " case2/notes-link case1/Pleadings/complaint.txt",
                 "deletes 6 paths: case1/Pleadings/complaint.txt, case1/notes.md, case1/old.tmp,"
                 " case2/intake form.txt, case2/notes-link, and 1 more (when_deleting)", id="when_deleting-many"),
    pytest.param("when_changes_over = 1", "echo 1 > n1 && echo 2 > n2",
                 "2 changed paths is over when_changes_over = 1", id="when_changes_over"),
    pytest.param("when_bytes_over = 4", "printf 12345 > n1",
                 "5 new bytes is over when_bytes_over = 4", id="when_bytes_over"),
    pytest.param('when_paths = ["*/Pleadings/**"]', "echo more >> case1/Pleadings/complaint.txt && echo x > x",
                 "changes 1 path: case1/Pleadings/complaint.txt matching '*/Pleadings/**' (when_paths)",
                 id="when_paths"),
])
def test_each_rule_needs_an_approval(
    clerk: Roscoe, root: Path, home: Path, config: str, script: str, reason: str,
) -> None:
    write_config(home, f"[approval]\n{config}\n")
    tx = staged(clerk, root, script)
    message = refused(clerk, tx, root)
    h = hash_in(message)
    assert message == needs_approval(tx, reason, h)
    approve(clerk, tx, h, "--by", "Jane Partner")
    committed(clerk, tx)
    [event] = audit_events(clerk, tx, "commit")
    assert event["detail"]["approved_by"] == "Jane Partner"
    assert event["detail"]["diff_hash"] == h


def test_under_the_thresholds_no_approval_is_needed(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[approval]\nwhen_deleting = true\nwhen_changes_over = 2\nwhen_bytes_over = 5\n'
                       'when_paths = ["case2/Pleadings/**"]\n')
    tx = staged(clerk, root, "printf 12345 > case2/n && chmod 0600 case1/Pleadings/complaint.txt")
    committed(clerk, tx)
    [event] = audit_events(clerk, tx, "commit")
    assert event["detail"]["approved_by"] is None


def test_the_whole_approval_as_tx_show_and_tx_list_see_it(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(clerk, root, "rm case1/old.tmp")
    h = diff_hash(clerk, tx)
    assert approval_column(clerk, tx) is None
    assert tx_json(clerk, "show", tx)["policy"] == {
        "refusals": [], "needed": True, "reasons": ["deletes 1 path: case1/old.tmp (when_deleting)"],
        "approved_by": None, "pending": False, "rejected": None,
    }

    assert refused(clerk, tx, root) == needs_approval(tx, "deletes 1 path: case1/old.tmp (when_deleting)", h)
    shown = tx_json(clerk, "show", tx)
    assert shown["approvals"] == []
    [request] = shown["approval_requests"]
    assert isinstance(request.pop("time_ns"), int)
    assert request == {"kind": "requested", "diff_hash": h, "by": None, "after_run": 1, "notified": None}
    assert shown["policy"]["pending"] is True and shown["policy"]["approved_by"] is None
    assert approval_column(clerk, tx) == "pending"

    done = approve(clerk, tx, h)
    assert done.stdout == b""
    assert done.stderr.decode() == f"roscoe: tx {tx} approved by {USER} for diff {h}; any later run voids it\n"
    shown = tx_json(clerk, "show", tx)
    [approval] = shown["approvals"]
    assert isinstance(approval.pop("time_ns"), int)
    assert approval == {"kind": "approved", "diff_hash": h, "by": USER, "after_run": 1, "notified": None}
    assert shown["policy"] == {
        "refusals": [], "needed": True, "reasons": ["deletes 1 path: case1/old.tmp (when_deleting)"],
        "approved_by": USER, "pending": False, "rejected": None,
    }
    assert approval_column(clerk, tx) == "approved"

    committed(clerk, tx)
    assert not (root / "case1" / "old.tmp").exists()
    assert approval_column(clerk, tx) is None
    [event] = audit_events(clerk, tx, "commit")
    assert event["detail"]["approved_by"] == USER and event["user"] == USER


def test_any_later_run_voids_the_approval(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(clerk, root, "rm case1/old.tmp")
    h = diff_hash(clerk, tx)
    approve(clerk, tx, h)
    run(clerk, tx, root, "true")  # changes nothing
    assert diff_hash(clerk, tx) == h
    assert refused(clerk, tx, root) == needs_approval(tx, "deletes 1 path: case1/old.tmp (when_deleting)", h)
    assert approval_column(clerk, tx) == "pending"
    assert tx_json(clerk, "show", tx)["policy"]["approved_by"] is None
    approve(clerk, tx, h)  # the same diff, approved again after the run
    committed(clerk, tx)


def test_a_run_that_changes_the_diff_makes_the_approval_stale(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(clerk, root, "rm case1/old.tmp")
    old = diff_hash(clerk, tx)
    approve(clerk, tx, old)
    run(clerk, tx, root, "rm case1/notes.md")
    message = refused(clerk, tx, root)
    new = hash_in(message)
    assert new != old
    assert message == needs_approval(tx, "deletes 2 paths: case1/notes.md, case1/old.tmp (when_deleting)", new)
    done = clerk("tx", "approve", tx, "--hash", old)
    assert error_line(done, 3) == (
        f"approval refused: the diff of transaction {tx} now hashes to {new}, not {old};"
        f" review it again with `roscoe tx diff {tx}`")
    assert tx_json(clerk, "show", tx)["approvals"][0]["diff_hash"] == old  # only the first approval
    approve(clerk, tx, new)
    committed(clerk, tx)
    assert not (root / "case1" / "notes.md").exists()


def test_approve_errors(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(clerk, root, "rm case1/old.tmp")
    h = diff_hash(clerk, tx)
    assert error_line(clerk("tx", "approve", "ffffffffffff", "--hash", h), 5) == "no such transaction: ffffffffffff"
    for bad in ("abc", h.upper(), h + "0"):
        assert error_line(clerk("tx", "approve", tx, "--hash", bad), 2) == (
            f"--hash {bad!r}: expected the 32 hex digits of a diff_hash (see `roscoe tx diff ID --json`)")
    assert error_line(clerk("tx", "approve", tx, "--hash", h, "--by", " "), 2) == "--by: the approver's name is empty"
    assert clerk("tx", "approve", tx).returncode == 2  # --hash is required
    assert tx_json(clerk, "show", tx)["approvals"] == []

    approve(clerk, tx, h)
    committed(clerk, tx)
    assert error_line(clerk("tx", "approve", tx, "--hash", h), 1) == (
        f"transaction {tx} is committed: approve needs an open transaction")
    other = staged(clerk, root, "rm case1/notes.md")
    assert clerk("tx", "abort", other).returncode == 0
    assert error_line(clerk("tx", "approve", other, "--hash", h), 1) == (
        f"transaction {other} is aborted: approve needs an open transaction")


# -- notify -------------------------------------------------------------------------------

def notify_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """Where the recording notify command leaves each request it reads."""
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def recording_notify(tmp_path: Path, home: Path, inbox: Path) -> Path:
    """A notify command that saves its stdin as INBOX/N.json, N = 1, 2, ..."""
    script = notify_script(tmp_path, 'n=$(($(ls "$1" | wc -l) + 1)); cat > "$1/$n.json"\n')
    write_config(home, f"[approval]\nwhen_deleting = true\nnotify = [{json.dumps(str(script))}, {json.dumps(str(inbox))}]\n")
    return script


def received(inbox: Path) -> list[dict]:
    return [json.loads((inbox / f"{n}.json").read_text()) for n in range(1, len(list(inbox.iterdir())) + 1)]


def test_notify_gets_the_request_once_per_diff_hash(clerk: Roscoe, root: Path, home: Path, tmp_path: Path, inbox: Path) -> None:
    script = recording_notify(tmp_path, home, inbox)
    argv = ["sh", "-c", "rm case1/old.tmp"]
    done = clerk("tx", "run", "--root", root, "-m", "tidy up", "--", *argv, cwd=root)
    assert done.returncode == 0, done.stderr
    tx = done.stderr.decode().splitlines()[0].removeprefix("roscoe: tx ")
    h = diff_hash(clerk, tx)
    reasons = ["deletes 1 path: case1/old.tmp (when_deleting)"]
    assert refused(clerk, tx, root) == needs_approval(tx, reasons[0], h, f" (request sent to {script})")
    assert received(inbox) == [{
        "kind": "roscoe.event", "version": 1, "event": "approval-requested",
        "tx": tx, "root": str(root), "message": "tidy up",
        "user": USER, "host": os.uname().nodename, "diff_hash": h,
        "by": USER, "uid": os.getuid(), "os_user": pwd.getpwuid(os.getuid()).pw_name,
        "summary": {"added": 0, "modified": 0, "deleted": 1, "type_changed": 0, "meta_changed": 0, "moved": 0,
                    "bytes_written": 0}, "changes": 1,
        "reasons": reasons, "commands": [{"argv": argv, "cwd": str(root), "exit_code": 0}],
        "paths": ["case1/old.tmp"], "moves": [], "approve": f"roscoe tx approve {tx} --hash {h}",
    }]
    [request] = tx_json(clerk, "show", tx)["approval_requests"]
    assert (request["diff_hash"], request["notified"]) == (h, True)

    # The same diff again: no second message.
    assert refused(clerk, tx, root) == needs_approval(
        tx, reasons[0], h, f" (a request for this diff was already sent to {script})")
    run(clerk, tx, root, "true")
    refused(clerk, tx, root)
    assert len(received(inbox)) == 1

    # A new diff: a new message, with both runs' command lines.
    run(clerk, tx, root, "rm case1/notes.md")
    new = hash_in(refused(clerk, tx, root))
    second = received(inbox)[1]
    assert second["diff_hash"] == new != h
    assert second["paths"] == ["case1/notes.md", "case1/old.tmp"]
    assert [c["argv"] for c in second["commands"]] == [argv, ["sh", "-c", "true"], ["sh", "-c", "rm case1/notes.md"]]
    approve(clerk, tx, new)
    committed(clerk, tx)
    # Two requests, then the approval and the commit (test_approval_loop.py has their payloads).
    assert [e["event"] for e in received(inbox)] == [
        "approval-requested", "approval-requested", "approved", "committed"]


@pytest.mark.parametrize(("body", "outcome"), [
    pytest.param("cat > /dev/null; echo 'slack is down' >&2; exit 3\n", "notify command {script} exited 3: slack is down",
                 id="fails"),
    pytest.param(None, "notify command {script} not found", id="missing"),
])
def test_a_notify_failure_is_reported_never_fatal(
    clerk: Roscoe, root: Path, home: Path, tmp_path: Path, body: str | None, outcome: str,
) -> None:
    script = notify_script(tmp_path, body) if body else tmp_path / "no-such-notify"
    write_config(home, f'[approval]\nwhen_deleting = true\nnotify = "{script} --channel legal"\n')
    tx = staged(clerk, root, "rm case1/old.tmp")
    h = diff_hash(clerk, tx)
    expected = needs_approval(
        tx, "deletes 1 path: case1/old.tmp (when_deleting)", h,
        f" (the approval request could not be sent: {outcome.format(script=script)}; the transaction is unchanged)")
    assert refused(clerk, tx, root) == expected
    assert refused(clerk, tx, root) == expected  # not sent, so tried again
    [first, second] = tx_json(clerk, "show", tx)["approval_requests"]
    assert first["notified"] is second["notified"] is False
    [event, _] = audit_events(clerk, tx, "approval-requested")
    assert event["detail"]["outcome"] == outcome.format(script=script)
    assert approval_column(clerk, tx) == "pending"
    approve(clerk, tx, h)
    committed(clerk, tx)


def test_a_hanging_notify_is_killed(clerk: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = notify_script(tmp_path, f"echo $$ > {pids}; sleep 600 & echo $! >> {pids}; wait\n")
    write_config(home, f'[approval]\nwhen_deleting = true\nnotify = "{script}"\nnotify_timeout = 1\n')
    tx = staged(clerk, root, "rm case1/old.tmp")
    before = snapshot(root)
    started = time.monotonic()
    done = clerk("tx", "commit", tx, timeout=30)
    took = time.monotonic() - started
    assert took < 6, took
    message = error_line(done, 4)
    assert message.endswith(
        f" (the approval request could not be sent: notify command {script} did not finish in 1 s and was killed;"
        " the transaction is unchanged)")
    assert snapshot(root) == before
    shell, sleeper = map(int, pids.read_text().split())
    for pid in (shell, sleeper):
        assert not running(pid), pid
    assert state(clerk, tx) == "open"


def running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting for its reaper is not)."""
    for _ in range(50):
        try:
            status = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        if status.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        time.sleep(0.1)
    return True


def test_the_python_api_approves_and_reads_the_audit_trail(
    root: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from journal import api
    from journal.errors import ApprovalNeeded, StaleApproval

    write_config(home, "[approval]\nwhen_deleting = true\n")
    monkeypatch.setenv("ROSCOE_CONFIG", str(home / "config.toml"))
    monkeypatch.setenv("LOGNAME", USER)
    tx = api.begin(root, home=home)
    api.run(tx, ["rm", "case1/old.tmp"], cwd=str(root), home=home)
    digest = api.diff(tx, home=home).diff_hash
    with pytest.raises(ApprovalNeeded) as needed:
        api.commit(tx, home=home)
    assert needed.value.exit_code == 4
    with pytest.raises(StaleApproval) as stale:
        api.approve(tx, "0" * 32, home=home)
    assert stale.value.exit_code == 3
    record = api.approve(tx, digest, by="Jane Partner", home=home)
    assert (record.tx, record.kind, record.diff_hash, record.approver) == (tx, "approved", digest, "Jane Partner")
    assert api.commit(tx, home=home).state == "committed"
    events = api.audit(tx, home=home)
    assert [e.kind for e in events] == [
        "begin", "run-start", "run", "diff", "refuse", "approval-requested", "refuse", "approve",
        "commit-start", "commit"]
    assert json.loads(events[-1].detail)["approved_by"] == "Jane Partner"
    assert {e.user for e in events} == {USER}
