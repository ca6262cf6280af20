"""The audit trail (journal.audit, journal.store, journal.verify): every
begin, run, diff shown, refusal, approval, commit, abort, rollback and
recovery is one hash-chained row with who, where and when; ``roscoe audit``
shows it; ``roscoe verify`` finds every kind of tampering; the version 2
journal's events move into the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sqlite3
import time
from pathlib import Path

import pytest

from journal.audit import GENESIS, chain_hash, iso_time
from journal.store import SCHEMA, SCHEMA_VERSION
from tests.support.roscoe import Roscoe
from tests.support.transactions import (
    CLERK,
    approve,
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

HOST = os.uname().nodename


def audit(roscoe: Roscoe, *options: str) -> dict:
    done = roscoe("audit", *options, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def verify(roscoe: Roscoe) -> dict:
    done = roscoe("verify", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == (0 if report["ok"] else 1 if not report["healthy"] else 3), done.stderr
    return report


def audit_problems(roscoe: Roscoe) -> list[str]:
    report = verify(roscoe)
    assert report["ok"] is False
    assert {p["kind"] for p in report["problems"]} == {"audit"}
    return [p["detail"] for p in report["problems"]]


def kinds(events: list[dict]) -> list[tuple[str | None, str]]:
    return [(e["tx"], e["kind"]) for e in events]


# -- what is recorded ------------------------------------------------------------------------

def test_every_step_is_recorded_with_who_where_and_when(clerk: Roscoe, root: Path, home: Path) -> None:  # noqa: F811
    write_config(home, "[approval]\nwhen_deleting = true\n")
    started = time.time_ns()
    tx = clerk.begin(root, "-m", "tidy")
    run(clerk, tx, root, "rm case1/old.tmp; exit 3", code=3)
    h = diff_hash(clerk, tx)
    refused(clerk, tx, root)
    approve(clerk, tx, h, "--by", "Jane Partner")
    committed(clerk, tx)
    done = clerk("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    undo = done.stdout.decode().strip()
    dropped = staged(clerk, root, "echo x > x")
    assert clerk("tx", "abort", dropped).returncode == 0
    backend = tx_json(clerk, "show", tx)["backend"]

    trail = audit(clerk)
    events = trail["events"]
    assert kinds(events) == [
        (None, "audit-start"), (tx, "begin"), (tx, "run-start"), (tx, "run"), (tx, "diff"), (tx, "refuse"),
        (tx, "approval-requested"), (tx, "approve"), (tx, "commit-start"), (tx, "commit"),
        (undo, "begin"), (undo, "commit-start"), (undo, "rollback"),
        (dropped, "begin"), (dropped, "run-start"), (dropped, "run"), (dropped, "abort"),
    ]
    for seq, e in enumerate(events, start=1):
        assert e["seq"] == seq
        assert (e["user"], e["uid"], e["host"]) == (CLERK, os.getuid(), HOST)
        assert isinstance(e["pid"], int) and e["pid"] > 0 and e["pid"] != os.getpid()
        assert started <= e["time_ns"] <= time.time_ns()
        assert e["time"] == iso_time(e["time_ns"])
        assert e["prev"] == (events[seq - 2]["hash"] if seq > 1 else GENESIS)
        detail = json.dumps(e["detail"], ensure_ascii=True, sort_keys=True)
        assert e["hash"] == chain_hash(seq, e["time_ns"], e["tx"], e["kind"], e["user"], e["uid"], e["host"],
                                       e["pid"], detail, e["prev"])
    assert [e["time_ns"] for e in events] == sorted(e["time_ns"] for e in events)
    assert trail["head"] == {"seq": len(events), "hash": events[-1]["hash"]}
    assert len({e["pid"] for e in events[1:]}) > 5  # one process per command

    by_kind = {(e["tx"], e["kind"]): e["detail"] for e in events}
    config = home / "config.toml"
    assert by_kind[(tx, "begin")] == {"root": str(root), "message": "tidy", "rolls_back": None,
                                      "tx_user": CLERK, "tx_host": HOST, "config": [
                                          {"path": str(config), "sha256": hashlib.sha256(config.read_bytes()).hexdigest()}]}
    argv = ["sh", "-c", "rm case1/old.tmp; exit 3"]
    assert by_kind[(tx, "run-start")] == {"run": 1, "argv": argv, "cwd": str(root), "backend": backend, "hide": []}
    assert by_kind[(tx, "run")] == {"run": 1, "argv": argv, "cwd": str(root), "exit_code": 3,
                                    "backend": backend, "diff_hash": h, "changes": 1}
    assert by_kind[(tx, "diff")] == {"diff_hash": h, "changes": 1}
    reason = "deletes 1 path: case1/old.tmp (when_deleting)"
    assert by_kind[(tx, "refuse")] == {"reason": "approval needed", "diff_hash": h, "reasons": [reason]}
    assert by_kind[(tx, "approval-requested")] == {"diff_hash": h, "reasons": [reason], "notify": None}
    assert by_kind[(tx, "approve")] == {"diff_hash": h, "approver": "Jane Partner", "after_run": 1,
                                        "uid": os.getuid(), "os_user": pwd.getpwuid(os.getuid()).pw_name}
    assert by_kind[(tx, "commit-start")] == {"diff_hash": h, "changes": 1}
    assert by_kind[(tx, "commit")] == {"root": str(root), "diff_hash": h, "changes": 1, "rolls_back": None,
                                       "approved_by": "Jane Partner"}
    assert by_kind[(undo, "begin")]["rolls_back"] == tx
    assert by_kind[(undo, "rollback")]["rolls_back"] == tx
    assert by_kind[(dropped, "abort")] == {}
    assert verify(clerk)["checked"]["audit_events"] == len(events)


def test_policy_refusals_stale_approvals_and_conflicts_are_recorded(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[policy]\ndeny = ["*.exe"]\n')
    tx = staged(roscoe, root, "echo x > a.exe && echo 1 > case1/notes.md")
    refused(roscoe, tx, root)
    assert roscoe("tx", "approve", tx, "--hash", "0" * 32).returncode == 3
    run(roscoe, tx, root, "rm a.exe")
    (root / "case1" / "notes.md").write_text("changed live\n")
    assert roscoe("tx", "commit", tx).returncode == 3
    h = diff_hash(roscoe, tx)
    events = [e for e in audit(roscoe, "--tx", tx)["events"] if e["kind"] in ("refuse", "conflict")]
    assert [e["detail"] for e in events] == [
        {"reason": "policy", "diff_hash": events[0]["detail"]["diff_hash"],
         "violations": [{"path": "a.exe", "rule": "deny '*.exe'"}]},
        {"reason": "stale approval", "given": "0" * 32, "diff_hash": events[0]["detail"]["diff_hash"]},
        {"error": f"commit refused: the live tree changed under transaction {tx}; nothing was written."
                  " Changed: case1/notes.md"},
    ]
    assert events[0]["detail"]["diff_hash"] != h


def test_recovery_is_recorded(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo x > new.txt && rm case1/old.tmp")
    before = snapshot(root)
    assert roscoe("tx", "commit", tx, env={"ROSCOE_FAULT": "after-intent", "ROSCOE_FAULT_ACTION": "kill"}).returncode == -9
    assert roscoe("recover").returncode == 6
    assert snapshot(root) == before
    events = audit(roscoe, "--tx", tx)["events"]
    assert kinds(events)[-4:] == [(tx, "commit-start"), (tx, "recover-start"), (tx, "undo"), (tx, "recover-done")]
    assert [e["detail"] for e in events[-3:]] == [{"paths": 2}, {"state": "open"}, {"paths": 2}]
    assert events[-4]["pid"] != events[-3]["pid"] == events[-1]["pid"]
    assert verify(roscoe)["ok"] is True


# -- roscoe audit -----------------------------------------------------------------------------

def test_audit_filters(roscoe: Roscoe, root: Path) -> None:
    first = staged(roscoe, root, "echo 1 > one")
    second = roscoe.begin(root)
    everything = audit(roscoe)
    assert kinds(everything["events"]) == [
        (None, "audit-start"), (first, "begin"), (first, "run-start"), (first, "run"), (second, "begin")]

    assert audit(roscoe, "--tx", first[:6]) == {
        "head": everything["head"], "events": everything["events"][1:4]}
    assert error_line(roscoe("audit", "--tx", "ffffffff"), 5) == "no such transaction: ffffffff"

    assert audit(roscoe, "--since", "1h") == everything
    assert audit(roscoe, "--since", "1d", "--tx", second)["events"] == everything["events"][4:]
    assert audit(roscoe, "--since", everything["events"][3]["time"])["events"] == everything["events"][3:]
    assert audit(roscoe, "--since", "2200-01-01")["events"] == []
    assert audit(roscoe, "--since", "2000-01-01T00:00:00+02:00") == everything
    for bad in ("yesterday", "5y", "2026-13-45"):
        assert error_line(roscoe("audit", "--since", bad), 2) == (
            f"--since {bad!r}: expected an ISO 8601 time (2026-11-27 or 2026-11-27T09:30:00Z)"
            " or an age like 30m, 12h, 7d")


def test_audit_since_a_far_future_date_is_no_internal_error(roscoe: Roscoe) -> None:
    # Past 2262 the time no longer fits SQLite's 64-bit ns: nothing is that new.
    assert audit(roscoe, "--since", "2999-01-01")["events"] == []


def test_parse_since() -> None:
    from journal.audit import parse_since

    now = 1_800_000_000 * 10**9
    assert parse_since("90s", now) == now - 90 * 10**9
    assert parse_since("30m", now) == now - 1800 * 10**9
    assert parse_since("1.5h", now) == now - 5400 * 10**9
    assert parse_since("7d", now) == now - 7 * 86400 * 10**9
    assert parse_since("2w", now) == now - 14 * 86400 * 10**9
    assert parse_since("2027-01-15") == 1_799_971_200 * 10**9
    assert parse_since("2027-01-15T09:30:00Z") == (1_799_971_200 + 34200) * 10**9
    assert parse_since("2027-01-15T09:30:00.25+01:00") == (1_799_971_200 + 30600) * 10**9 + 250_000_000


def test_audit_text(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root, "-m", "hello")
    done = roscoe("audit")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    head = audit(roscoe)["head"]
    assert lines[0].split() == ["#", "time", "(UTC)", "user@host", "pid", "tx", "event", "detail"]
    assert lines[2].split()[-4:] == [tx, "begin", str(root), "hello"]
    assert lines[-1] == f"head: event 2, sha256 {head['hash']}"


def test_audit_of_an_empty_journal(roscoe: Roscoe) -> None:
    trail = audit(roscoe)
    assert kinds(trail["events"]) == [(None, "audit-start")]
    assert trail["head"] == {"seq": 1, "hash": trail["events"][0]["hash"]}


# -- tampering ----------------------------------------------------------------------------------

@pytest.fixture
def history(roscoe: Roscoe, root: Path) -> str:
    """A committed transaction: events 1 audit-start, 2 begin, 3 run-start,
    4 run, 5 commit-start, 6 commit; verify passes."""
    tx = staged(roscoe, root, "echo x > x.txt")
    committed(roscoe, tx)
    assert [e["kind"] for e in audit(roscoe)["events"]] == [
        "audit-start", "begin", "run-start", "run", "commit-start", "commit"]
    assert verify(roscoe)["ok"] is True
    return tx


def journal(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "journal.db", isolation_level=None)


def tamper(home: Path, *statements: str) -> None:
    """What someone with write access to the journal does: drop the triggers, edit."""
    db = journal(home)
    for trigger in ("audit_append_only_update", "audit_append_only_delete",
                    "audit_head_insert_once", "audit_head_forward", "audit_head_kept"):
        db.execute(f"DROP TRIGGER {trigger}")
    for sql in statements:
        db.executescript(sql)
    db.close()


def rechain(home: Path) -> None:
    """Recompute every hash and the head, as a forger who knows the scheme would."""
    db = journal(home)
    prev = GENESIS
    rows = db.execute("SELECT seq, time_ns, tx, kind, user, uid, host, pid, detail FROM audit ORDER BY seq").fetchall()
    db.execute("DELETE FROM audit")
    for new_seq, row in enumerate(rows, start=1):
        fields = (new_seq, *row[1:])
        digest = chain_hash(*fields, prev)
        db.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)", (*fields, prev, digest))
        prev = digest
    db.execute("UPDATE audit_head SET seq = ?, hash = ?", (len(rows), prev))
    db.close()


def test_the_triggers_refuse_update_and_delete(roscoe: Roscoe, home: Path, history: str) -> None:
    db = journal(home)
    for sql in ("UPDATE audit SET user = 'someone else' WHERE seq = 2", "DELETE FROM audit WHERE seq = 6",
                "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="the audit trail is append-only"):
            db.execute(sql)
    db.close()
    assert verify(roscoe)["ok"] is True


def test_the_head_only_moves_one_event_forward(roscoe: Roscoe, home: Path, history: str) -> None:
    # Rewinding the head to hide events cut off the end (or pointing it at a
    # forged hash) takes dropping a trigger, as editing the trail does.
    before = audit(roscoe)["head"]
    db = journal(home)
    for sql in ("UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit WHERE seq = 5)",
                "UPDATE audit_head SET hash = 'forged'", "DELETE FROM audit_head",
                "INSERT OR REPLACE INTO audit_head VALUES (1, 5, (SELECT hash FROM audit WHERE seq = 5))",
                "UPDATE audit_head SET seq = 7, hash = 'next'"):
        with pytest.raises(sqlite3.DatabaseError, match="the audit head only moves forward"):
            db.execute(sql)
    db.close()
    assert audit(roscoe)["head"] == before
    assert verify(roscoe)["ok"] is True


SWAP = """CREATE TEMP TABLE o AS SELECT * FROM audit;
    UPDATE audit SET (time_ns, tx, kind, user, uid, host, pid, detail, prev, hash) =
    (SELECT time_ns, tx, kind, user, uid, host, pid, detail, prev, hash FROM o WHERE o.seq = 7 - audit.seq)
    WHERE seq IN (3, 4)"""


@pytest.mark.parametrize(("statements", "problems"), [
    pytest.param(["UPDATE audit SET detail = replace(detail, '\"exit_code\": 0', '\"exit_code\": 1') WHERE seq = 4"],
                 ["audit event 4 (run) was edited: its hash does not match its contents"], id="edit-detail"),
    pytest.param(["UPDATE audit SET user = 'mallory' WHERE seq = 6"],
                 ["audit event 6 (commit) was edited: its hash does not match its contents"], id="edit-user"),
    pytest.param(["DELETE FROM audit WHERE seq = 3"], [
        "audit event 3 is missing (deleted)",
        "run 1 of transaction {tx} has no run-start event in the audit trail",
    ], id="delete-middle"),
    pytest.param(["DELETE FROM audit WHERE seq IN (3, 4)"], [
        "audit events 3 to 4 are missing (deleted)",
        "run 1 of transaction {tx} has no run-start event in the audit trail",
        "the end of run 1 of transaction {tx} has no run event in the audit trail",
    ], id="delete-two"),
    pytest.param([SWAP], [
        "audit event 3 does not follow event 2 (reordered, or the event before it was replaced)",
        "audit event 3 (run) was edited: its hash does not match its contents",
        "audit event 4 does not follow event 3 (reordered, or the event before it was replaced)",
        "audit event 4 (run-start) was edited: its hash does not match its contents",
        "audit event 5 does not follow event 4 (reordered, or the event before it was replaced)",
    ], id="reorder"),
    pytest.param(["DELETE FROM audit WHERE seq >= 5"], [
        "the audit trail was truncated: its head is event 6, the last event left is 4",
        "committed transaction {tx} has no commit event in the audit trail",
        "transaction {tx} has no commit-start event in the audit trail",
    ], id="truncate-tail"),
    pytest.param(["DELETE FROM audit WHERE seq >= 5", "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit WHERE seq = 4)"], [
        "committed transaction {tx} has no commit event in the audit trail",
        "transaction {tx} has no commit-start event in the audit trail",
    ], id="truncate-tail-and-head"),
    pytest.param(["DELETE FROM audit WHERE seq >= 4", "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit WHERE seq = 3)"], [
        "committed transaction {tx} has no commit event in the audit trail",
        "the end of run 1 of transaction {tx} has no run event in the audit trail",
        "transaction {tx} has no commit-start event in the audit trail",
    ], id="truncate-run-and-head"),
    pytest.param(["DELETE FROM audit"], [
        "the audit trail was truncated: its head is event 6, the last event left is none",
        "the audit trail has no audit-start event (its first events were deleted)",
        "transaction {tx} has no begin event in the audit trail",
        "committed transaction {tx} has no commit event in the audit trail",
        "run 1 of transaction {tx} has no run-start event in the audit trail",
        "the end of run 1 of transaction {tx} has no run event in the audit trail",
        "transaction {tx} has no commit-start event in the audit trail",
    ], id="truncate-all"),
    pytest.param(["DELETE FROM audit_head"], ["the audit head is missing"], id="delete-head"),
    pytest.param(["UPDATE audit_head SET hash = (SELECT hash FROM audit WHERE seq = 5)"],
                 ["the audit head (event 6, {h5}) does not match the last event (6, {h6})"], id="edit-head"),
])
def test_tampering_is_found_by_verify(
    roscoe: Roscoe, root: Path, home: Path, history: str, statements: list[str], problems: list[str],
) -> None:
    hashes = {f"h{e['seq']}": e["hash"][:12] for e in audit(roscoe)["events"]}
    tamper(home, *statements)
    assert audit_problems(roscoe) == [p.format(tx=history, **hashes) for p in problems]


def test_a_rechained_trail_without_a_begin_event_is_found(roscoe: Roscoe, home: Path, history: str) -> None:
    tamper(home, "DELETE FROM audit WHERE kind = 'begin'")
    rechain(home)
    assert audit_problems(roscoe) == [f"transaction {history} has no begin event in the audit trail"]


def test_a_rechained_trail_without_its_start_is_found(roscoe: Roscoe, home: Path, history: str) -> None:
    tamper(home, "DELETE FROM audit WHERE kind = 'audit-start'")
    rechain(home)
    assert audit_problems(roscoe) == ["the audit trail has no audit-start event (its first events were deleted)"]


def test_a_rechained_reorder_within_a_transaction_is_not_detectable(roscoe: Roscoe, home: Path, history: str) -> None:
    # The documented limit: whoever can rewrite every hash can rewrite the
    # trail; only the head hash kept elsewhere shows it. Here it differs.
    head = audit(roscoe)["head"]
    tamper(home, SWAP)
    rechain(home)
    assert verify(roscoe)["ok"] is True
    assert audit(roscoe)["head"]["hash"] != head["hash"]


def test_verify_text_names_the_audit_problem(roscoe: Roscoe, home: Path, history: str) -> None:
    tamper(home, "DELETE FROM audit WHERE seq = 3")
    done = roscoe("verify")
    assert done.returncode == 1
    assert "audit event 3 is missing (deleted)" in done.stdout.decode() + done.stderr.decode()


# -- migration from schema version 2 ----------------------------------------------------------

def test_a_version_2_journal_moves_its_events_into_the_chain(roscoe: Roscoe, root: Path, home: Path) -> None:
    home.mkdir()
    db = journal(home)
    db.executescript(SCHEMA[0] + SCHEMA[1])
    db.execute("PRAGMA user_version=2")
    old_ns = 1_700_000_000_123_456_789
    db.execute("INSERT INTO transactions (id, root, message, state, user, host, created_ns, updated_ns, committed_ns)"
               " VALUES ('0123456789ab', ?, 'old', 'aborted', 'alice', 'h', ?, ?, NULL)",
               (os.fsencode(root), old_ns - 10, old_ns - 5))
    db.execute("INSERT INTO events (time_ns, tx, kind, detail) VALUES (?, '0123456789ab', 'gc', '{\"n\": 1}')", (old_ns,))
    db.execute("INSERT INTO events (time_ns, tx, kind, detail) VALUES (?, NULL, 'recover', NULL)", (old_ns + 1,))
    db.close()

    tx = roscoe.begin(root)
    events = audit(roscoe)["events"]
    assert [(e["seq"], e["tx"], e["kind"], e["detail"], e["time_ns"]) for e in events[:2]] == [
        (1, "0123456789ab", "gc", {"n": 1}, old_ns), (2, None, "recover", {}, old_ns + 1)]
    assert {(e["user"], e["uid"], e["host"], e["pid"]) for e in events[:2]} == {
        ("unknown (before the audit trail)", -1, "", 0)}
    assert events[2]["kind"] == "audit-start"
    assert events[2]["detail"]["migrated_events"] == 2
    assert kinds(events[3:]) == [(tx, "begin")]
    assert verify(roscoe)["ok"] is True

    db = journal(home)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'").fetchone()[0] == 0
    db.close()


def test_a_forged_approval_row_counts_for_nothing_and_verify_finds_it(roscoe: Roscoe, root: Path, home: Path) -> None:
    # A row written into approvals by hand, with no approve event in the
    # chained trail, does not let the commit through, and verify names it.
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(roscoe, root, "rm case1/old.tmp")
    h = diff_hash(roscoe, tx)
    db = journal(home)
    db.execute("INSERT INTO approvals (tx, kind, diff_hash, approver, time_ns, after_run)"
               " VALUES (?, 'approved', ?, 'Jane Partner', ?, 1)", (tx, h, time.time_ns()))
    db.close()
    before = snapshot(root)
    done = roscoe("tx", "commit", tx)
    assert done.returncode == 4, done.stderr
    assert snapshot(root) == before
    assert [e["kind"] for e in audit(roscoe, "--tx", tx)["events"]].count("approve") == 0
    problems = audit_problems(roscoe)
    assert problems == [f"the approval of transaction {tx} by Jane Partner (diff {h}) has no approve event in the audit trail"], problems
