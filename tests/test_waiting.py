"""``tx wait`` (journal.waiting): a real ``roscoe tx wait`` process blocks
until another process approves (exit 0), rejects (4), commits (0) or aborts
(1) the transaction, and exits 124 when its ``--timeout`` passes first;
``--json`` prints how it ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Roscoe
from tests.test_policy import diff_hash, error_line, staged, write_config

USER = "clerk"


@pytest.fixture
def clerk(home: Path) -> Roscoe:
    return Roscoe(home, {"LOGNAME": USER})


class Waiting:
    """``roscoe tx wait ...`` started in the background."""

    def __init__(self, roscoe: Roscoe, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "tx", "wait", *args], env=dict(roscoe.env, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)  # (started, and polling)
        assert self.proc.poll() is None, self.proc.communicate()

    def result(self, since: float) -> tuple[int, dict, str, float]:
        """Exit code, the JSON it printed, its stderr, and how long after ``since`` it exited."""
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        took = time.monotonic() - since
        return self.proc.returncode, json.loads(out) if out else {}, err.decode(), took


def ended(out: dict) -> dict:
    assert isinstance(out.pop("waited_ms"), int)
    return out


def test_wait_returns_when_another_process_approves(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(clerk, root, "rm case1/old.tmp")
    h = diff_hash(clerk, tx)
    assert clerk("tx", "commit", tx).returncode == 4
    waiting = Waiting(clerk, tx, "--timeout", "60", "--json")
    assert clerk("tx", "approve", tx, "--hash", h, "--by", "Jane Partner").returncode == 0
    code, out, err, took = waiting.result(time.monotonic())
    assert code == 0, err
    assert took < 2.5, took
    assert ended(out) == {"tx": tx, "outcome": "approved", "state": "open", "diff_hash": h, "by": "Jane Partner",
                          "reason": None, "exit_code": 0}
    assert err == f"roscoe: tx {tx} approved by Jane Partner for diff {h}\n"
    # Already approved: at once.
    started = time.monotonic()
    assert clerk("tx", "wait", tx).returncode == 0
    assert time.monotonic() - started < 5
    assert clerk("tx", "commit", tx).returncode == 0


def test_wait_exits_4_when_another_process_rejects(clerk: Roscoe, root: Path) -> None:
    tx = staged(clerk, root, "echo new > case1/new.txt")
    h = diff_hash(clerk, tx)
    waiting = Waiting(clerk, tx, "--json")
    assert clerk("tx", "reject", tx, "--by", "Sam Senior", "-m", "not this file").returncode == 0
    code, out, err, took = waiting.result(time.monotonic())
    assert code == 4, err
    assert took < 2.5, took
    assert ended(out) == {"tx": tx, "outcome": "rejected", "state": "open", "diff_hash": h, "by": "Sam Senior",
                          "reason": "not this file", "exit_code": 4}
    assert err == f'roscoe: error: tx {tx} rejected by Sam Senior for diff {h}: "not this file"\n'


def test_wait_returns_when_another_process_commits(clerk: Roscoe, root: Path) -> None:
    tx = staged(clerk, root, "echo new > case1/new.txt")
    h = diff_hash(clerk, tx)
    waiting = Waiting(clerk, tx, "--json")
    assert clerk("tx", "commit", tx).returncode == 0
    code, out, err, took = waiting.result(time.monotonic())
    assert (code, took < 2.5) == (0, True), (err, took)
    assert ended(out) == {"tx": tx, "outcome": "committed", "state": "committed", "diff_hash": h, "by": None,
                          "reason": None, "exit_code": 0}
    assert err == f"roscoe: tx {tx} committed\n"


def test_wait_exits_1_when_another_process_aborts(clerk: Roscoe, root: Path) -> None:
    tx = staged(clerk, root, "echo new > case1/new.txt")
    waiting = Waiting(clerk, tx)
    assert clerk("tx", "abort", tx).returncode == 0
    code, out, err, took = waiting.result(time.monotonic())
    assert (code, took < 2.5, out) == (1, True, {}), (err, took)
    assert err == f"roscoe: error: tx {tx} aborted\n"


def test_wait_times_out_with_124(clerk: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(clerk, root, "rm case1/old.tmp")
    h = diff_hash(clerk, tx)
    assert clerk("tx", "commit", tx).returncode == 4
    started = time.monotonic()
    done = clerk("tx", "wait", tx, "--timeout", "1.5", "--json")
    took = time.monotonic() - started
    assert done.returncode == 124, done.stderr
    assert 1.5 <= took < 5, took
    assert ended(json.loads(done.stdout)) == {
        "tx": tx, "outcome": "timeout", "state": "open", "diff_hash": h, "by": None, "reason": None, "exit_code": 124}
    assert done.stderr.decode() == (
        f"roscoe: error: tx {tx} still open after 1.5 s: nothing approved, rejected, committed or aborted it"
        " (waiting changed nothing)\n")
    # --timeout 0 looks once.
    done = clerk("tx", "wait", tx, "--timeout", "0")
    assert (done.returncode, done.stdout) == (124, b""), done.stderr


@pytest.mark.parametrize("bad", ["abc", "-1", "inf", "nan", ""])
def test_wait_bad_timeout(clerk: Roscoe, root: Path, bad: str) -> None:
    tx = staged(clerk, root, "echo new > case1/new.txt")
    assert error_line(clerk("tx", "wait", tx, "--timeout", bad), 2) == (
        f"--timeout {bad}: expected a number of seconds, 0 or more")


def test_wait_no_such_transaction(clerk: Roscoe) -> None:
    assert error_line(clerk("tx", "wait", "ffffffffffff", "--timeout", "1"), 5) == "no such transaction: ffffffffffff"


def test_the_python_api_rejects_and_waits(root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from journal import api
    from journal.errors import Rejected
    from journal.waiting import WaitResult

    monkeypatch.setenv("LOGNAME", USER)
    monkeypatch.delenv("ROSCOE_CONFIG", raising=False)
    tx = api.begin(root, home=home)
    api.run(tx, ["sh", "-c", "echo new > case1/new.txt"], cwd=str(root), home=home)
    digest = api.diff(tx, home=home).diff_hash
    started = time.monotonic()
    timed_out = api.wait(tx, timeout=0.3, home=home)
    assert time.monotonic() - started >= 0.3
    assert (timed_out.outcome, timed_out.exit_code, timed_out.diff_hash) == ("timeout", 124, digest)
    record = api.reject(tx, "Sam Senior", "no", home=home)
    assert (record.kind, record.diff_hash, record.approver, record.reason) == ("rejected", digest, "Sam Senior", "no")
    result = api.wait(tx, timeout=30, home=home)
    assert isinstance(result, WaitResult)
    assert result._replace(waited_ns=0) == WaitResult(tx, "rejected", "open", digest, "Sam Senior", "no", 0)
    assert result.exit_code == 4
    with pytest.raises(Rejected) as refused:
        api.commit(tx, home=home)
    assert refused.value.exit_code == 4
    assert not (root / "case1" / "new.txt").exists()
    assert os.path.exists(root / "case1" / "notes.md")
