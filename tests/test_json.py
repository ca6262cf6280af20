"""``--json`` on every command (DESIGN.md, "The contract"): success prints one
JSON document on stdout, a failure the error object
``{"error": {"code", "kind", "message", "paths"}}`` with the same exit code,
while stderr keeps its one ``roscoe: error:`` line; and ``tx run --commit
--report FILE`` records what became of the commit.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer

import cli.app
from cli.agent import FLAGS, PLAN_FLAGS, PLAN_VALUES
from cli.errors import NO_JSON
from tests.conftest import Roscoe, snapshot

Done = subprocess.CompletedProcess

TX_KEYS = {"tx", "state", "root", "message", "backend", "user", "host", "created_ns", "updated_ns",
           "committed_ns", "rolls_back", "diff_hash", "images_dropped", "target"}


# -- helpers --------------------------------------------------------------------------


def ok(done: Done) -> Any:
    """Exit 0; stdout is one JSON document, returned."""
    assert done.returncode == 0, done.stderr
    assert b"roscoe: error:" not in done.stderr
    return json.loads(done.stdout)


def failed(done: Done, code: int, kind: str, message: str, paths: list[str] | None = None) -> None:
    """Exit ``code``; stdout is exactly the error object; stderr ends in its
    one ``roscoe: error:`` line, with the same message."""
    assert done.returncode == code, done.stderr
    assert json.loads(done.stdout) == {"error": {"code": code, "kind": kind, "message": message, "paths": paths or []}}
    lines = done.stderr.decode().splitlines()
    errors = [line for line in lines if line.startswith("roscoe: error: ")]
    assert errors == [f"roscoe: error: {message}"] and lines[-1] == errors[0], lines


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def staged(roscoe: Roscoe, root: Path, script: str) -> str:
    """A new transaction with ``sh -c script`` run in it, from the root."""
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", script, cwd=root)
    assert done.returncode == 0, done.stderr
    return done.stderr.decode().splitlines()[0].removeprefix("roscoe: tx ")


def listed(roscoe: Roscoe, tx: str) -> dict[str, Any]:
    """``tx``'s entry of ``tx list --json`` without its ``runs`` and ``approval``."""
    [entry] = [t for t in ok(roscoe("tx", "list", "--json")) if t["tx"] == tx]
    del entry["runs"], entry["approval"]
    return entry


def logged(roscoe: Roscoe, tx: str) -> dict[str, Any]:
    [entry] = [t for t in ok(roscoe("tx", "log", "--json")) if t["tx"] == tx]
    return entry


def diff_hash(roscoe: Roscoe, tx: str) -> str:
    return str(ok(roscoe("tx", "diff", tx, "--json"))["diff_hash"])


def conflict_message(tx: str, *paths: str, what: str = "commit refused") -> str:
    return (f"{what}: the live tree changed under transaction {tx}; nothing was written. "
            f"Changed: {', '.join(paths)}")


def approval_message(tx: str, h: str, reasons: str) -> str:
    return (f"transaction {tx} needs an approval before it can be committed ({reasons}); nothing was written. "
            f"A person approves this exact diff with: roscoe tx approve {tx} --hash {h}")


# -- every command takes --json (but run and shell), and every parser agrees ----------------


COMMAND = typer.main.get_command(cli.app.app)


def leaves(command: Any = COMMAND, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    subs = getattr(command, "commands", None)
    if subs is None:
        return [(path, command)]
    return [leaf for name, sub in subs.items() for leaf in leaves(sub, path + (name,))]


def options(command: Any) -> set[str]:
    return {n for p in command.params if p.param_type_name == "option" for n in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize(("path", "command"), leaves(), ids=[" ".join(p) for p, _ in leaves()])
def test_every_command_but_run_and_shell_takes_json(path: tuple[str, ...], command: Any) -> None:
    assert ("--json" in options(command)) == (path not in NO_JSON)


def test_the_fast_paths_take_json_where_typer_does() -> None:
    tx = COMMAND.commands["tx"].commands
    for name, (takes, needs) in FLAGS.items():
        assert needs <= takes <= options(tx[name]), name
        assert ("--json" in takes) == ("--json" in options(tx[name])), name
    assert set(PLAN_FLAGS) | set(PLAN_VALUES) <= options(tx["plan"])
    assert "--json" in PLAN_FLAGS


def test_every_error_class_has_a_contract_kind() -> None:
    import cli.errors  # noqa: F401 - each module below defines errors of its own
    import journal.errors  # noqa: F401
    from cowfs import errors

    def all_subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *all_subclasses(sub))]

    def kind(cls: type) -> str:
        return cls.error_kind or errors.KIND_OF_CODE.get(cls.exit_code, "error")  # type: ignore[attr-defined]

    found = {c.__name__: kind(c) for c in all_subclasses(errors.RoscoeError)}
    assert set(found.values()) <= set(errors.KINDS)
    expected = {
        "UsageError": "usage", "ConfigError": "usage", "RootError": "usage", "PlanError": "usage",
        "AmbiguousTransaction": "usage", "Conflict": "conflict", "StaleApproval": "conflict",
        "Refused": "refused", "PolicyRefused": "refused", "RollbackRefused": "refused",
        "ApprovalNeeded": "approval_needed", "RollbackNeedsApproval": "approval_needed",
        "NoSuchTransaction": "no_such_tx", "TransactionBusy": "busy", "RootBusy": "busy", "LeaseBusy": "busy",
        "TransactionState": "error", "CommitFailed": "error", "JournalCorrupt": "error", "Declined": "error",
    }
    assert {name: found[name] for name in expected} == expected


# -- each command: its success object and its error object -------------------------------


def test_begin(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    got = ok(roscoe("tx", "begin", "--root", root, "-m", "letters", "--json"))
    assert set(got) == TX_KEYS
    assert {k: got[k] for k in ("state", "root", "message", "backend", "committed_ns", "rolls_back",
                                "diff_hash", "images_dropped", "target")} == {
        "state": "open", "root": str(root), "message": "letters", "backend": None, "committed_ns": None,
        "rolls_back": None, "diff_hash": None, "images_dropped": False, "target": None}
    assert got == listed(roscoe, got["tx"])

    nope = tmp_path / "nope"
    failed(roscoe("tx", "begin", "--root", nope, "--json"), 2, "usage", f"root {nope}: does not exist", [str(nope)])


def test_plan(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "ops": [{"op": "write", "path": "case1/new.txt", "content": "new\n"}]}))
    got = ok(roscoe("tx", "plan", "--root", root, "--json", plan))
    assert got == {
        "tx": got["tx"], "root": str(root), "ops": 1, "began": True, "backend": got["backend"],
        "diff_hash": diff_hash(roscoe, got["tx"]),
        "summary": {"added": 1, "modified": 0, "deleted": 0, "type_changed": 0, "meta_changed": 0,
                    "moved": 0, "bytes_written": 4},
        "counts": got["counts"],
    }

    before = snapshot(root)
    plan.write_text(json.dumps({"version": 1, "ops": [{"op": "move", "from": "case1/nope.txt", "to": "case2/x.txt"}]}))
    failed(roscoe("tx", "plan", "--tx", got["tx"], "--json", plan), 2, "usage",
           "plan ops[0] (move): case1/nope.txt does not exist; nothing of the plan was staged",
           ["case1/nope.txt", "case2/x.txt"])
    missing = tmp_path / "missing.json"
    failed(roscoe("tx", "plan", "--root", root, "--json", missing), 2, "usage",
           f"plan {missing}: No such file or directory", [str(missing)])
    assert snapshot(root) == before


def test_diff_through_both_parsers(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    fast = ok(roscoe("tx", "diff", tx, "--json"))
    assert ok(roscoe("tx", "diff", "--json", tx)) == fast  # typer's parser: same object
    assert (fast["tx"], fast["root"], [(c["path"], c["status"]) for c in fast["changes"]]) == (
        tx, str(root), [("case1/new.txt", "added")])

    for args in (("tx", "diff", "ffffffffffff", "--json"), ("tx", "diff", "--json", "ffffffffffff")):
        failed(roscoe(*args), 5, "no_such_tx", "no such transaction: ffffffffffff")


def test_show(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    got = ok(roscoe("tx", "show", tx, "--json"))
    assert TX_KEYS <= set(got) and (got["tx"], got["state"]) == (tx, "open")
    failed(roscoe("tx", "show", "ffff", "--json"), 5, "no_such_tx", "no such transaction: ffff")


def test_list(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    got = ok(roscoe("tx", "list", "--json"))
    assert [(t["tx"], t["state"], t["runs"], t["approval"]) for t in got] == [(tx, "open", 0, None)]
    failed(roscoe("tx", "list", "--state", "closed", "--json"), 2, "usage",
           "--state closed: expected one of open, committing, committed, aborted")


def test_approve(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    h = diff_hash(roscoe, tx)
    wrong = "0" * 32
    failed(roscoe("tx", "approve", tx, "--hash", wrong, "--json"), 3, "conflict",
           f"approval refused: the diff of transaction {tx} now hashes to {h}, not {wrong}; "
           f"review it again with `roscoe tx diff {tx}`")
    failed(roscoe("tx", "approve", tx, "--hash", "xyz", "--json"), 2, "usage",
           "--hash 'xyz': expected the 32 hex digits of a diff_hash (see `roscoe tx diff ID --json`)")

    done = roscoe("tx", "approve", tx, "--hash", h, "--by", "alice", "--json")
    got = ok(done)
    [run] = ok(roscoe("tx", "show", tx, "--json"))["runs"]
    assert got == {"tx": tx, "kind": "approved", "diff_hash": h, "by": "alice", "time_ns": got["time_ns"],
                   "after_run": got["after_run"], "notified": None}
    assert isinstance(got["time_ns"], int) and isinstance(got["after_run"], int) and run["exit_code"] == 0
    assert done.stderr.decode() == f"roscoe: tx {tx} approved by alice for diff {h}; any later run voids it\n"


def test_commit_through_both_parsers(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo staged > case1/notes.md && echo staged > case1/Pleadings/complaint.txt")
    (root / "case1" / "notes.md").write_text("changed live\n")
    (root / "case1" / "Pleadings" / "complaint.txt").write_text("changed live\n")
    changed = ["case1/Pleadings/complaint.txt", "case1/notes.md"]  # a list, not one comma-joined string
    for args in (("tx", "commit", tx, "--json"), ("tx", "commit", tx, "--yes", "--json"),
                 ("tx", "commit", "--json", tx)):
        failed(roscoe(*args), 3, "conflict", conflict_message(tx, *changed), changed)
    assert (root / "case1" / "notes.md").read_text() == "changed live\n"
    failed(roscoe("tx", "commit", "ffffffffffff", "--json"), 5, "no_such_tx", "no such transaction: ffffffffffff")

    tx = staged(roscoe, root, "echo new > case1/new.txt")
    got = ok(roscoe("tx", "commit", tx, "--json"))
    assert set(got) == TX_KEYS | {"changes", "rolled_back_by"}
    assert (got["tx"], got["state"], got["changes"], got["diff_hash"]) == (tx, "committed", 1, got["diff_hash"])
    assert got == logged(roscoe, tx)
    failed(roscoe("tx", "commit", tx, "--json"), 1, "error",
           f"transaction {tx} is committed: commit needs an open transaction")


def test_commit_refused_by_policy_names_the_paths(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[policy]\ndeny = ["**/.git/**"]\n')
    tx = staged(roscoe, root, "mkdir .git && echo x > .git/config")
    failed(roscoe("tx", "commit", tx, "--json"), 4, "refused",
           f"transaction {tx} cannot be committed: refused by policy: .git (deny '**/.git/**'); "
           ".git/config (deny '**/.git/**'); nothing was written", [".git", ".git/config"])


def test_commit_that_needs_an_approval(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(roscoe, root, "rm case1/old.tmp")
    h = diff_hash(roscoe, tx)
    failed(roscoe("tx", "commit", tx, "--json"), 4, "approval_needed",
           approval_message(tx, h, "deletes 1 path: case1/old.tmp (when_deleting)"))


def test_abort(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    got = ok(roscoe("tx", "abort", tx, "--json"))
    assert set(got) == TX_KEYS and (got["tx"], got["state"]) == (tx, "aborted")
    assert got == listed(roscoe, tx)
    failed(roscoe("tx", "abort", tx, "--json"), 1, "error",
           f"transaction {tx} is aborted: abort needs an open transaction")


def test_rollback_through_both_parsers(roscoe: Roscoe, root: Path) -> None:
    before = snapshot(root)
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    assert roscoe("tx", "commit", tx).returncode == 0
    (root / "case1" / "new.txt").write_text("edited by hand\n")
    message = conflict_message(tx, "case1/new.txt", what=f"rollback of {tx} refused (--force overrides)")
    for args in (("tx", "rollback", tx, "--yes", "--json"), ("tx", "rollback", "--json", tx)):
        failed(roscoe(*args), 3, "conflict", message, ["case1/new.txt"])

    got = ok(roscoe("tx", "rollback", tx, "--force", "--json"))
    assert set(got) == TX_KEYS | {"changes", "rolled_back_by"}
    assert (got["rolls_back"], got["state"], got["message"], got["changes"]) == (
        tx, "committed", f"rollback of {tx}", 1)
    assert got == logged(roscoe, got["tx"])
    assert snapshot(root) == before


def test_log(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    assert roscoe("tx", "commit", tx).returncode == 0
    assert [(t["tx"], t["changes"]) for t in ok(roscoe("tx", "log", "--json"))] == [(tx, 1)]
    afile = tmp_path / "a-file"
    afile.write_text("")
    failed(roscoe("--home", afile, "tx", "log", "--json"), 1, "error",
           f"state dir {afile}: Not a directory", [str(afile)])


def test_recover(roscoe: Roscoe, root: Path) -> None:
    assert ok(roscoe("recover", "--json")) == {"staging_removed": []}
    tx = staged(roscoe, root, "echo new > case1/new.txt && rm case1/old.tmp")
    before = snapshot(root)
    assert roscoe("tx", "commit", tx, env={"ROSCOE_FAULT": "after-intent"}).returncode == 70
    done = roscoe("recover", "--json")
    line = (f"recovered the interrupted commit of tx {tx}: its 2 paths under {root} are as they were"
            " before it; the transaction is open")
    assert done.returncode == 6
    assert json.loads(done.stdout) == {"error": {"code": 6, "kind": "recovered", "message": line, "paths": [str(root)]}}
    assert done.stderr.decode() == f"roscoe: {line}\n"  # as without --json: it changes stdout only
    assert snapshot(root) == before


def test_verify(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    assert roscoe("tx", "commit", tx).returncode == 0
    got = ok(roscoe("verify", "--json"))
    assert (got["ok"], got["problems"]) == (True, [])
    # problems found are the report (drift alone: exit 3), not an error object
    (root / "case1" / "new.txt").write_text("edited by hand\n")
    done = roscoe("verify", "--json")
    assert done.returncode == 3
    assert [(p["kind"], p["tx"], p["path"]) for p in json.loads(done.stdout)["problems"]] == [("live", tx, "case1/new.txt")]
    afile = tmp_path / "a-file"
    afile.write_text("")
    failed(roscoe("--home", afile, "verify", "--json"), 1, "error", f"state dir {afile}: Not a directory", [str(afile)])


def test_audit(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    got = ok(roscoe("audit", "--tx", tx, "--json"))
    assert set(got) == {"head", "events"} and [e["kind"] for e in got["events"]] == ["begin"]
    failed(roscoe("audit", "--since", "yesterday", "--json"), 2, "usage",
           "--since 'yesterday': expected an ISO 8601 time (2026-11-27 or 2026-11-27T09:30:00Z)"
           " or an age like 30m, 12h, 7d")
    failed(roscoe("audit", "--tx", "ffffffffffff", "--json"), 5, "no_such_tx", "no such transaction: ffffffffffff")


def test_gc(roscoe: Roscoe) -> None:
    assert ok(roscoe("gc", "--keep-days", "30", "--json")) == {"dropped": [], "removed_blobs": 0, "freed_bytes": 0}
    failed(roscoe("gc", "--keep-days", "-1", "--json"), 2, "usage", "--keep-days must be 0 or more")


# -- usage errors typer raises, and failures before the command runs ---------------------------


@pytest.mark.parametrize(("args", "message"), [
    (("tx", "list", "--bogus", "--json"), "No such option: --bogus (see roscoe tx list --help)"),
    (("tx", "show", "--json"), "Missing argument 'ID'. (see roscoe tx show --help)"),
    (("tx", "commit", "--json"), "Missing argument 'ID'. (see roscoe tx commit --help)"),
    (("gc", "--keep-days", "many", "--json"),
     "Invalid value for '--keep-days': 'many' is not a valid float. (see roscoe gc --help)"),
    (("gc", "--json"), "Missing option '--keep-days'. (see roscoe gc --help)"),
    (("tx", "nope", "--json"), "No such command 'nope'. (see roscoe tx --help)"),
    (("tx", "approve", "abcd", "--json", "--hash"), "Option '--hash' requires an argument."),
], ids=["unknown-option", "missing-argument", "missing-argument-fast-path", "bad-value", "missing-option",
        "unknown-command", "option-without-value"])
def test_usage_errors_from_typer(roscoe: Roscoe, args: tuple[str, ...], message: str) -> None:
    failed(roscoe(*args), 2, "usage", message)


def test_without_json_stdout_stays_empty(roscoe: Roscoe) -> None:
    done = roscoe("tx", "list", "--bogus")
    assert (done.returncode, done.stdout) == (2, b"")


def test_errors_before_the_command_runs(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    failed(roscoe("--config", none, "tx", "list", "--json"), 2, "usage",
           f"config file {none} does not exist", [str(none)])
    write_config(home, "[policy\n")
    config = home / "config.toml"
    done = roscoe("tx", "begin", "--root", root, "--json")
    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert (error["kind"], error["paths"]) == ("usage", [str(config)])
    assert error["message"].startswith(f"config {config}: not valid TOML")


def test_run_and_shell_never_print_json(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--json", "--", "true")
    assert (done.returncode, done.stdout) == (125, b"")
    assert done.stderr.decode() == "roscoe: error: tx run: no such option: --json (see roscoe tx run --help)\n"
    # a --json among CMD's arguments is CMD's
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", "echo \"$1\"; exit 3", "sh", "--json")
    assert (done.returncode, done.stdout) == (3, b"--json\n")


# -- tx run --commit --report: the commit's outcome ----------------------------------------


def run_report(roscoe: Roscoe, root: Path, report: Path, script: str) -> tuple[Done, dict[str, Any]]:
    done = roscoe("tx", "run", "--root", root, "--commit", "--report", report, "--", "sh", "-c", script, cwd=root)
    got = json.loads(report.read_text())
    assert got["tx"] == done.stderr.decode().splitlines()[0].removeprefix("roscoe: tx ")
    return done, got


def test_report_without_commit_says_null(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = roscoe("tx", "run", "--root", root, "--report", report, "--", "true")
    assert done.returncode == 0
    assert json.loads(report.read_text())["commit"] is None


def test_report_committed(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    done, got = run_report(roscoe, root, tmp_path / "r.json", "echo new > case1/new.txt")
    assert done.returncode == 0, done.stderr
    assert got["commit"] == {"outcome": "committed", "error": None, "tx": logged(roscoe, got["tx"])}
    assert got["commit"]["tx"]["state"] == "committed"


def test_report_tells_cmd_exit_4_from_approval_needed(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    before = snapshot(root)
    # CMD itself exits 4: nothing was tried
    done, got = run_report(roscoe, root, tmp_path / "a.json", "rm case1/old.tmp; exit 4")
    assert done.returncode == 4
    assert got["exit_code"] == 4
    assert got["commit"] == {"outcome": "not_attempted", "error": None, "tx": None}
    assert done.stderr.decode().splitlines()[-1] == (
        f"roscoe: tx {got['tx']} not committed: the command exited 4; it stays open")
    # CMD exits 0 and the commit needs an approval: also 4, told apart by the report
    done, got = run_report(roscoe, root, tmp_path / "b.json", "rm case1/old.tmp")
    assert done.returncode == 4
    tx = got["tx"]
    message = approval_message(tx, got["diff_hash"], "deletes 1 path: case1/old.tmp (when_deleting)")
    assert got["exit_code"] == 0
    assert got["commit"] == {"outcome": "approval_needed", "error": {
        "code": 4, "kind": "approval_needed", "message": message, "paths": []}, "tx": None}
    assert done.stderr.decode().splitlines()[-1] == f"roscoe: error: {message}"
    assert done.stdout == b""
    assert snapshot(root) == before


def test_report_refused_by_policy(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    write_config(home, '[policy]\ndeny = ["**/.git/**"]\n')
    done, got = run_report(roscoe, root, tmp_path / "r.json", "mkdir .git && echo x > .git/config")
    assert done.returncode == 4
    message = (f"transaction {got['tx']} cannot be committed: refused by policy: .git (deny '**/.git/**'); "
               ".git/config (deny '**/.git/**'); nothing was written")
    assert got["commit"] == {"outcome": "refused", "error": {
        "code": 4, "kind": "refused", "message": message, "paths": [".git", ".git/config"]}, "tx": None}


FILL_STDERR = """
import fcntl, os
flags = fcntl.fcntl(2, fcntl.F_GETFL)
fcntl.fcntl(2, fcntl.F_SETFL, flags | os.O_NONBLOCK)
try:
    while True:
        os.write(2, b"x")
except BlockingIOError:
    pass
fcntl.fcntl(2, fcntl.F_SETFL, flags)
"""


def test_report_conflict(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    """The live tree changes between the end of the run and its commit: CMD
    fills roscoe's stderr pipe, so roscoe blocks on its closing line (the run
    has ended and its bases are recorded) until the test has changed the live
    file and reads the pipe."""
    report = tmp_path / "r.json"
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: one page
    script = f"echo staged > case1/notes.md && {sys.executable} -c '{FILL_STDERR}'"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "tx", "run", "--root", str(root), "--commit", "--report", str(report),
         "--", "sh", "-c", script],
        cwd=root, env=roscoe.env, stdout=subprocess.PIPE, stderr=write_end)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"/proc/{proc.pid}/wchan").read_text().endswith("pipe_write"):
            assert proc.poll() is None and time.monotonic() < deadline, "roscoe never blocked on its stderr"
            time.sleep(0.02)
        (root / "case1" / "notes.md").write_text("changed live\n")
        with os.fdopen(read_end, "rb") as pipe:
            stderr = pipe.read()
        assert proc.wait(timeout=60) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    got = json.loads(report.read_text())
    message = conflict_message(got["tx"], "case1/notes.md")
    assert got["commit"] == {"outcome": "conflict", "error": {
        "code": 3, "kind": "conflict", "message": message, "paths": ["case1/notes.md"]}, "tx": None}
    assert stderr.decode().splitlines()[-1] == f"roscoe: error: {message}"
    assert (root / "case1" / "notes.md").read_text() == "changed live\n"


def test_a_rejected_diff_is_kind_rejected(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    h = diff_hash(roscoe, tx)
    assert roscoe("tx", "reject", tx, "--by", "Sam Senior", "-m", "no").returncode == 0
    before = snapshot(root)
    failed(roscoe("tx", "commit", tx, "--json"), 4, "rejected", (
        f'transaction {tx} cannot be committed: its diff {h} was rejected by Sam Senior: "no"; nothing was'
        " written; only a run that changes the diff lifts the rejection"))
    assert snapshot(root) == before
