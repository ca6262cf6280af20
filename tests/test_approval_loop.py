"""The approval loop (journal.approval, journal.notify): ``tx reject`` and the
notify command's events.

A rejection refuses the transaction's diff for good: a commit exits 4 naming
who rejected it and why, an approval of it is refused, approvals made before
are void; a run that leaves the diff as it was keeps it rejected, one that
changes it lifts the rejection. A rollback waiting for its approval can be
rejected too. The ``notify`` command gets one JSON shape for every event
(approval-requested, approved, rejected, committed, rolled-back), after the
command's locks are released; a hanging one holds nothing up.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.roscoe import Roscoe
from tests.support.transactions import (
    CLERK,
    approval_column,
    audit_events,
    committed,
    diff_hash,
    error_line,
    refused,
    run,
    staged,
    tx_json,
    write_config,
)
from tests.support.trees import snapshot

OS_USER = pwd.getpwuid(os.getuid()).pw_name


def rejected_message(tx: str, digest: str, by: str, reason: str = "", action: str = "committed") -> str:
    why = f": {json.dumps(reason)}" if reason else ""
    undone = "nothing was approved" if action == "approved" else "nothing was written"
    return (f"transaction {tx} cannot be {action}: its diff {digest} was rejected by {by}{why}; {undone};"
            " only a run that changes the diff lifts the rejection")


def reject(roscoe: Roscoe, tx: str, *options: str) -> str:
    done = roscoe("tx", "reject", tx, *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    return done.stderr.decode()




# -- tx reject -----------------------------------------------------------------------------

def test_a_rejected_diff_is_refused_until_a_run_changes_it(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(clerk, root, "rm case1/old.tmp")
    h = diff_hash(clerk, tx)
    assert clerk("tx", "approve", tx, "--hash", h, "--by", "Jane Partner").returncode == 0
    assert reject(clerk, tx, "--by", "Sam Senior", "-m", 'keep "old.tmp"\nfor now') == (
        f"roscoe: tx {tx} rejected by Sam Senior for diff {h}: \"keep \\\"old.tmp\\\"\\nfor now\";"
        " a commit of it exits 4 until its diff changes\n")
    message = rejected_message(tx, h, "Sam Senior", 'keep "old.tmp"\nfor now')
    # The earlier approval is void: the commit is refused, naming who and why, in one line.
    assert refused(clerk, tx, root) == message
    assert approval_column(clerk, tx) == "rejected"
    shown = tx_json(clerk, "show", tx)
    [rejection] = shown["rejections"]
    assert isinstance(rejection.pop("time_ns"), int)
    assert rejection == {"kind": "rejected", "diff_hash": h, "by": "Sam Senior", "after_run": 1,
                         "notified": None, "reason": 'keep "old.tmp"\nfor now'}
    assert isinstance(shown["policy"]["rejected"].pop("time_ns"), int)
    assert shown["policy"] == {
        "refusals": [], "needed": True, "reasons": ["deletes 1 path: case1/old.tmp (when_deleting)"],
        "approved_by": None, "pending": False, "rejected": {"by": "Sam Senior", "reason": 'keep "old.tmp"\nfor now'},
    }
    text = clerk("tx", "show", tx).stdout.decode()
    assert "approval   rejected by Sam Senior for this exact diff: keep \"old.tmp\"" in text
    # Who rejected, as the operating system knows them, not only --by.
    [event] = audit_events(clerk, tx, "reject")
    assert event["detail"] == {"diff_hash": h, "by": "Sam Senior", "reason": 'keep "old.tmp"\nfor now',
                               "after_run": 1, "uid": os.getuid(), "os_user": OS_USER}
    assert (event["user"], event["uid"]) == (CLERK, os.getuid())

    # An approval of the rejected diff is refused too.
    assert error_line(clerk("tx", "approve", tx, "--hash", h), 4) == rejected_message(
        tx, h, "Sam Senior", 'keep "old.tmp"\nfor now', action="approved")
    # A run that leaves the diff as it was does not lift the rejection.
    run(clerk, tx, root, "true")
    assert diff_hash(clerk, tx) == h
    assert refused(clerk, tx, root) == message
    assert approval_column(clerk, tx) == "rejected"
    # One that changes it does: the new diff needs (and takes) an approval of its own.
    run(clerk, tx, root, "echo kept > case1/old.tmp.note")
    new = diff_hash(clerk, tx)
    assert new != h
    assert approval_column(clerk, tx) is None
    assert tx_json(clerk, "show", tx)["policy"]["rejected"] is None
    assert refused(clerk, tx, root).startswith(f"transaction {tx} needs an approval before it can be committed")
    assert clerk("tx", "approve", tx, "--hash", new, "--by", "Sam Senior").returncode == 0
    committed(clerk, tx)
    assert not (root / "case1" / "old.tmp").exists()
    assert (root / "case1" / "old.tmp.note").read_text() == "kept\n"


def test_a_rejection_refuses_a_commit_that_needs_no_approval(clerk: Roscoe, root: Path) -> None:
    tx = staged(clerk, root, "echo new > case1/new.txt")
    h = diff_hash(clerk, tx)
    reject(clerk, tx, "--by", "Jane Partner")
    assert refused(clerk, tx, root) == rejected_message(tx, h, "Jane Partner")
    [refusal] = audit_events(clerk, tx, "refuse")
    assert refusal["detail"] == {"reason": "rejected", "diff_hash": h, "by": "Jane Partner"}
    # Back to what it rejected (the same diff, again): still refused.
    run(clerk, tx, root, "rm case1/new.txt")
    assert diff_hash(clerk, tx) != h
    run(clerk, tx, root, "echo new > case1/new.txt")
    assert diff_hash(clerk, tx) == h
    assert refused(clerk, tx, root) == rejected_message(tx, h, "Jane Partner")
    run(clerk, tx, root, "echo newer > case1/new.txt")
    committed(clerk, tx)
    assert (root / "case1" / "new.txt").read_text() == "newer\n"


def test_reject_json(clerk: Roscoe, root: Path) -> None:
    tx = staged(clerk, root, "echo new > case1/new.txt")
    h = diff_hash(clerk, tx)
    done = clerk("tx", "reject", tx, "--by", "Jane Partner", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert isinstance(out.pop("time_ns"), int)
    assert out == {"tx": tx, "kind": "rejected", "diff_hash": h, "by": "Jane Partner", "after_run": 1,
                   "notified": None, "reason": None}


def test_reject_errors(clerk: Roscoe, root: Path, home: Path) -> None:
    tx = staged(clerk, root, "rm case1/old.tmp")
    assert error_line(clerk("tx", "reject", "ffffffffffff", "--by", "Jane"), 5) == "no such transaction: ffffffffffff"
    assert error_line(clerk("tx", "reject", tx), 2).startswith("Missing option '--by'")
    assert error_line(clerk("tx", "reject", tx, "--by", " "), 2) == "--by: the name of who rejects is empty"
    assert error_line(clerk("tx", "reject", tx, "--by", "Jane\nPartner"), 2) == (
        "--by 'Jane\\nPartner': a name cannot hold control characters")
    assert error_line(clerk("tx", "reject", tx, "--by", "Jane", "-m", "  "), 2) == (
        "-m: the reason is empty (leave -m out to give none)")
    assert tx_json(clerk, "show", tx)["rejections"] == []
    committed(clerk, tx)
    assert error_line(clerk("tx", "reject", tx, "--by", "Jane"), 1) == (
        f"transaction {tx} is committed: reject needs an open transaction")
    other = staged(clerk, root, "rm case1/notes.md")
    assert clerk("tx", "abort", other).returncode == 0
    assert error_line(clerk("tx", "reject", other, "--by", "Jane"), 1) == (
        f"transaction {other} is aborted: reject needs an open transaction")
    assert not (root / "case1" / "old.tmp").exists() and (root / "case1" / "notes.md").exists()


def test_a_rollback_waiting_for_approval_can_be_rejected(clerk: Roscoe, root: Path, home: Path) -> None:
    tx = staged(clerk, root, "echo new > case1/new.txt")
    committed(clerk, tx)
    write_config(home, "[approval]\nwhen_deleting = true\n")
    done = clerk("tx", "rollback", tx, "--yes")
    assert done.returncode == 4, done.stderr
    [rb] = [t["tx"] for t in json.loads(clerk("tx", "list", "--state", "open", "--json").stdout)]
    h = diff_hash(clerk, rb)
    reject(clerk, rb, "--by", "Jane Partner", "-m", "the new file stays")
    after = snapshot(root)
    message = (f"transaction {rb} cannot be committed: its diff {h} was rejected by Jane Partner:"
               f" \"the new file stays\"; nothing was written; a rollback runs nothing: abort it"
               f" (roscoe tx abort {rb}) to roll back again")
    assert error_line(clerk("tx", "rollback", tx, "--yes"), 4) == message
    assert error_line(clerk("tx", "commit", rb), 4) == message
    assert error_line(clerk("tx", "approve", rb, "--hash", h), 4).startswith(f"transaction {rb} cannot be approved")
    assert snapshot(root) == after
    assert approval_column(clerk, rb) == "rejected"
    # Aborted, a new rollback asks for an approval of its own.
    assert clerk("tx", "abort", rb).returncode == 0
    done = clerk("tx", "rollback", tx, "--yes")
    assert done.returncode == 4 and b"needs an approval" in done.stderr, done.stderr
    assert (root / "case1" / "new.txt").exists()


def test_an_old_journal_keeps_its_approvals_and_can_reject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Schema version 6 rebuilds ``approvals`` (a CHECK cannot be altered): rows,
    index and append-only triggers survive."""
    from journal import store
    from journal.store import Journal

    path = str(tmp_path / "journal.db")
    monkeypatch.setattr(store, "SCHEMA", store.SCHEMA[:5])
    monkeypatch.setattr(store, "SCHEMA_VERSION", 5)
    old = Journal(path)
    old.db.execute("INSERT INTO transactions (id, root, state, created_ns, updated_ns) VALUES"
                   " ('aaaaaaaaaaaa', x'2f74', 'open', 1, 1)")
    old.add_request("aaaaaaaaaaaa", "1" * 32, True, {})
    old.add_approval("aaaaaaaaaaaa", "1" * 32, "Jane")
    with pytest.raises(sqlite3.IntegrityError):
        old.db.execute("INSERT INTO approvals (tx, kind, diff_hash, time_ns, after_run)"
                       " VALUES ('aaaaaaaaaaaa', 'rejected', 'x', 1, 0)")
    rows = old.db.execute("SELECT * FROM approvals ORDER BY id").fetchall()
    old.close()
    monkeypatch.undo()

    new = Journal(path)
    assert new.db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 6
    assert [tuple(r) + (None,) for r in rows] == [tuple(r) for r in new.db.execute(
        "SELECT * FROM approvals ORDER BY id")]
    record = new.add_rejection("aaaaaaaaaaaa", "1" * 32, "Sam", "no")
    assert [a.kind for a in new.approvals("aaaaaaaaaaaa")] == ["requested", "approved", "rejected"]
    assert new.approvals("aaaaaaaaaaaa")[-1] == record
    for sql in ("UPDATE approvals SET approver = 'Mallory'", "DELETE FROM approvals"):
        with pytest.raises(sqlite3.IntegrityError, match="approvals are append-only"):
            new.db.execute(sql)
    with pytest.raises(sqlite3.IntegrityError):
        new.db.execute("INSERT INTO approvals (tx, kind, diff_hash, time_ns, after_run)"
                       " VALUES ('aaaaaaaaaaaa', 'vetoed', 'x', 1, 0)")
    plan = new.db.execute("EXPLAIN QUERY PLAN SELECT * FROM approvals WHERE tx = 'x'").fetchall()
    assert "approvals_tx" in str([tuple(r) for r in plan])
    new.close()


# -- notify: one payload shape, every event ------------------------------------------------

def recording_notify(tmp_path: Path, home: Path, inbox: Path, timeout: int = 30) -> Path:
    """A notify command that saves its stdin as INBOX/N.json, and lists in
    INBOX/held any lock of the state dir it cannot take (the command's locks
    must be released before notify runs)."""
    script = tmp_path / "notify.sh"
    script.write_text(
        "#!/bin/sh\n"
        'inbox="$1"; home="$2"\n'
        'n=$(($(ls "$inbox" | grep -c json) + 1))\n'
        'cat > "$inbox/$n.json"\n'
        'for f in "$home"/tx/*/lock "$home"/locks/*.lock; do\n'
        '  [ -e "$f" ] || continue\n'
        '  flock -n -x "$f" true || echo "$n $f" >> "$inbox/held"\n'
        "done\n")
    script.chmod(0o755)
    write_config(home, "[approval]\nwhen_deleting = true\n"
                       f"notify = [{json.dumps(str(script))}, {json.dumps(str(inbox))}, {json.dumps(str(home))}]\n"
                       f"notify_timeout = {timeout}\n")
    return script


def received(inbox: Path) -> list[dict]:
    assert not (inbox / "held").exists(), (inbox / "held").read_text()
    return [json.loads((inbox / f"{n}.json").read_text()) for n in range(1, len(list(inbox.glob("*.json"))) + 1)]


def common(event: str, tx: str, root: Path, digest: str, by: str, changes: int, message: str | None = None) -> dict:
    return {"kind": "roscoe.event", "version": 1, "event": event, "tx": tx, "root": str(root), "message": message,
            "user": CLERK, "host": os.uname().nodename, "diff_hash": digest, "by": by, "uid": os.getuid(),
            "os_user": OS_USER, "changes": changes}


def test_notify_gets_every_event_in_one_shape(clerk: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    recording_notify(tmp_path, home, inbox)
    tx = staged(clerk, root, "rm case1/old.tmp", "-m", "tidy up")
    h = diff_hash(clerk, tx)
    refused(clerk, tx, root)
    deleted = {"added": 0, "modified": 0, "deleted": 1, "type_changed": 0, "meta_changed": 0, "moved": 0,
               "bytes_written": 0}
    assert received(inbox) == [dict(
        common("approval-requested", tx, root, h, CLERK, 1, "tidy up"), summary=deleted,
        reasons=["deletes 1 path: case1/old.tmp (when_deleting)"],
        commands=[{"argv": ["sh", "-c", "rm case1/old.tmp"], "cwd": str(root), "exit_code": 0}],
        paths=["case1/old.tmp"], moves=[], approve=f"roscoe tx approve {tx} --hash {h}")]

    reject(clerk, tx, "--by", "Sam Senior", "-m", "not yet")
    assert received(inbox)[1] == dict(common("rejected", tx, root, h, "Sam Senior", 1, "tidy up"),
                                      summary=deleted, reason="not yet")
    run(clerk, tx, root, "echo note > case1/note.txt")
    new = diff_hash(clerk, tx)
    assert clerk("tx", "approve", tx, "--hash", new, "--by", "Jane Partner").returncode == 0
    [approved] = received(inbox)[2:]
    assert approved == dict(common("approved", tx, root, new, "Jane Partner", 2, "tidy up"),
                            summary={"added": 1, "modified": 0, "deleted": 1, "type_changed": 0, "meta_changed": 0,
                                     "moved": 0, "bytes_written": 5})
    committed(clerk, tx)
    [done] = received(inbox)[3:]
    assert done == dict(common("committed", tx, root, new, CLERK, 2, "tidy up"),
                        approved_by="Jane Partner", rolls_back=None)

    rollback = clerk("tx", "rollback", tx, "--yes")  # deletes note.txt: needs an approval too
    assert rollback.returncode == 4, rollback.stderr
    [rb] = [t["tx"] for t in json.loads(clerk("tx", "list", "--state", "open", "--json").stdout)]
    rh = diff_hash(clerk, rb)
    [asked] = received(inbox)[4:]
    assert asked["event"] == "approval-requested" and (asked["tx"], asked["diff_hash"]) == (rb, rh)
    assert clerk("tx", "approve", rb, "--hash", rh, "--by", "Jane Partner").returncode == 0
    assert clerk("tx", "rollback", tx, "--yes").returncode == 0
    [approved, rolled] = received(inbox)[5:]
    assert approved["event"] == "approved"
    assert rolled == dict(common("rolled-back", rb, root, rh, CLERK, 2, f"rollback of {tx}"),
                          approved_by="Jane Partner", rolls_back=tx)
    assert (root / "case1" / "old.tmp").exists() and not (root / "case1" / "note.txt").exists()
    # Each event sent is in the audit trail with how it went.
    sent = [e["detail"] for e in audit_events(clerk, tx, "notify") + audit_events(clerk, rb, "notify")]
    assert [(d["event"], d["notified"]) for d in sent] == [
        ("rejected", True), ("approved", True), ("committed", True), ("approved", True), ("rolled-back", True)]


def test_a_hanging_notify_holds_nothing_up(clerk: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = tmp_path / "notify.sh"
    script.write_text(f"#!/bin/sh\necho $$ >> {pids}; sleep 600\n")
    script.chmod(0o755)
    write_config(home, f'[approval]\nnotify = "{script}"\nnotify_timeout = 1\n')
    tx = staged(clerk, root, "echo new > case1/new.txt")
    started = time.monotonic()
    done = clerk("tx", "commit", tx, timeout=30)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 6, took
    assert (root / "case1" / "new.txt").read_text() == "new\n"
    assert done.stderr.decode().splitlines()[-1] == (
        f"roscoe: warning: the committed event of tx {tx} could not be sent:"
        f" notify command {script} did not finish in 1 s and was killed")
    other = staged(clerk, root, "echo other > case1/other.txt")
    started = time.monotonic()
    done = clerk("tx", "reject", other, "--by", "Jane", timeout=30)
    assert done.returncode == 0 and time.monotonic() - started < 6, done.stderr
    assert error_line(clerk("tx", "commit", other), 4).startswith(f"transaction {other} cannot be committed")
    [event] = audit_events(clerk, tx, "notify")
    assert event["detail"] == {"event": "committed", "notify": [str(script)], "notified": False,
                               "outcome": f"notify command {script} did not finish in 1 s and was killed"}
