"""The Python API covers what the CLI does (issue 15, item 8): begin, run with
captured output, plan, diff, show, list, approve, reject, wait, commit,
abort, rollback (and its dry run), log, verify; typed results; iterating a
diff yields its changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowfs.changeset import Change, ChangeSet
from journal.errors import Conflict, Refused
from journal import api
from tests.conftest import snapshot
from tests.test_policy import write_config


def test_the_agent_loop_through_the_api(home: Path, root: Path) -> None:
    before = snapshot(root)
    tx = api.begin(root, "tidy", home=home)
    ran = api.run(tx, ["sh", "-c", "echo out; echo err >&2; cat > case1/from-stdin.txt; exit 3"],
                  cwd=str(root), capture=True, input=b"typed\n", home=home)
    assert (ran.exit_code, ran.stdout, ran.stderr) == (3, b"out\n", b"err\n")
    assert (root / "case1" / "from-stdin.txt").exists() is False
    staged = api.stage_plan(tx, {"version": 1, "ops": [
        {"op": "move", "from": "case1/notes.md", "to": "case2/notes.md"}]}, home=home)
    assert staged.tx == tx
    diff = api.diff(tx, home=home)
    assert isinstance(diff, ChangeSet)
    assert all(isinstance(c, Change) for c in diff) and len(diff) == len(diff.changes) == 3
    assert [(c.path, c.status) for c in diff] == [
        ("case1/from-stdin.txt", "added"), ("case1/notes.md", "deleted"), ("case2/notes.md", "added")]
    assert [(m.source, m.dest) for m in diff.moves()] == [("case1/notes.md", "case2/notes.md")]
    assert api.show(tx, home=home).record.state == "open"
    assert [t.id for t in api.transactions(home=home)] == [tx]
    assert api.transactions("committed", home=home) == []
    record = api.commit(tx, home=home)
    assert (record.id, record.state) == (tx, "committed")
    assert (root / "case1" / "from-stdin.txt").read_bytes() == b"typed\n"
    [entry] = api.log(home=home)
    assert (entry.record.id, entry.changes, entry.rolled_back_by) == (tx, 3, None)
    planned = api.rollback_dry_run(tx, home=home)
    assert ([(c.path, c.status) for c in planned.changes], planned.conflicts) == (
        [("case1/from-stdin.txt", "deleted"), ("case1/notes.md", "added"), ("case2/notes.md", "deleted")], [])
    undone = api.rollback(tx, home=home)
    assert (undone.state, undone.rolls_back) == ("committed", tx)
    assert snapshot(root) == before
    assert [(e.record.id, e.rolled_back_by) for e in api.log(home=home)] == [(undone.id, None), (tx, undone.id)]
    report = api.verify(home=home)
    assert (report.ok, report.healthy) == (True, True)
    assert json.loads(json.dumps(api.log(home=home)[1].to_json()))["rolled_back_by"] == undone.id


def test_approval_reject_wait_and_refusals_through_the_api(home: Path, root: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = api.begin(root, home=home)
    api.run(tx, ["rm", "case1/old.tmp"], cwd=str(root), capture=True, home=home)
    diff_hash = api.diff(tx, home=home).diff_hash
    with pytest.raises(Refused) as needed:
        api.commit(tx, home=home)
    assert needed.value.to_json()["error"]["kind"] == "approval_needed"
    assert api.wait(tx, timeout=0, home=home).exit_code == 124
    api.reject(tx, "Sam Senior", "not yet", home=home)
    assert api.wait(tx, timeout=0, home=home).exit_code == 4
    api.run(tx, ["sh", "-c", "echo x > case1/x.txt"], cwd=str(root), capture=True, home=home)
    approval = api.approve(tx, api.diff(tx, home=home).diff_hash, by="Jane Partner", home=home)
    assert approval.diff_hash != diff_hash
    assert api.wait(tx, timeout=0, home=home).exit_code == 0
    api.commit(tx, home=home)
    # The live file the commit wrote is edited by hand: a rollback conflicts.
    (root / "case1" / "x.txt").write_text("by hand\n")
    with pytest.raises(Conflict):
        api.rollback(tx, home=home)
    assert api.rollback_dry_run(tx, home=home).conflicts == ["case1/x.txt"]
    report = api.verify(home=home)
    assert (report.ok, report.healthy, report.drift) == (False, True, 1)
    assert api.verify(integrity=True, home=home).ok is True


def test_abort_through_the_api(home: Path, root: Path) -> None:
    before = snapshot(root)
    tx = api.begin(root, home=home)
    api.run(tx, ["sh", "-c", "echo x > case1/x.txt"], cwd=str(root), capture=True, home=home)
    assert api.abort(tx, home=home).state == "aborted"
    assert snapshot(root) == before
