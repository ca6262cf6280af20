"""One test per exit code of the contract (DESIGN.md, "Exit codes"), through
the CLI: where roscoe itself fails, stderr ends in exactly one
``roscoe: error: ...`` line and stdout is empty (with --json, the error
object: tests/test_json.py); the live tree is untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.roscoe import Roscoe
from tests.support.transactions import error_line, policy_refusal, refused, staged
from tests.support.trees import snapshot


def fails(roscoe: Roscoe, code: int, *args: str | Path, root: Path | None = None) -> str:
    """Run roscoe: it exits ``code`` with one error line and no stdout; the root,
    if given, is byte-for-byte unchanged. Returns the error line."""
    before = snapshot(root) if root is not None else None
    done = roscoe(*args, cwd=root)
    message = error_line(done, code)
    if "--json" in args:
        assert json.loads(done.stdout)["error"]["message"] == message
    else:
        assert done.stdout == b""
    if root is not None:
        assert snapshot(root) == before
    return message


def test_0_success(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "begin", "--root", root)
    assert (done.returncode, done.stderr) == (0, b"")
    assert re.fullmatch(rb"[0-9a-f]{12}\n", done.stdout)


def test_1_error(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    assert roscoe("tx", "abort", tx).returncode == 0
    assert fails(roscoe, 1, "tx", "commit", tx, root=root) == f"transaction {tx} is aborted: commit needs an open transaction"


def test_2_usage(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    assert fails(roscoe, 2, "tx", "list", "--bogus") == "No such option: --bogus (see roscoe tx list --help)"
    assert fails(roscoe, 2, "--config", tmp_path / "none.toml", "tx", "list") == (
        f"config file {tmp_path / 'none.toml'} does not exist")
    tx = roscoe.begin(root)
    assert fails(roscoe, 2, "tx", "approve", tx, "--hash", "xyz", root=root) == (
        "--hash 'xyz': expected the 32 hex digits of a diff_hash (see `roscoe tx diff ID --json`)")


def test_3_conflict(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo staged > case1/notes.md")
    (root / "case1" / "notes.md").write_text("changed live\n")
    assert fails(roscoe, 3, "tx", "commit", tx, root=root) == (
        f"commit refused: the live tree changed under transaction {tx}; nothing was written. Changed: case1/notes.md")
    assert (root / "case1" / "notes.md").read_text() == "changed live\n"


def test_4_refused(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "chmod 4755 case2/script.sh")
    assert refused(roscoe, tx, root) == policy_refusal(
        tx, "case2/script.sh (setuid bit is never committed (mode 4755))")


def test_5_no_such_transaction(roscoe: Roscoe, root: Path) -> None:
    roscoe.begin(root)
    for command in (("tx", "show", "ffffffffffff"), ("tx", "commit", "ffffffffffff"), ("tx", "diff", "ffffffffffff", "--json"),
                    ("tx", "approve", "ffffffffffff", "--hash", "0" * 32), ("audit", "--tx", "ffffffffffff")):
        assert fails(roscoe, 5, *command) == "no such transaction: ffffffffffff"


def test_6_recovered(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt && rm case1/old.tmp")
    before = snapshot(root)
    assert roscoe("tx", "commit", tx, env={"ROSCOE_FAULT": "after-intent"}).returncode == 70
    done = roscoe("recover")
    assert done.returncode == 6
    assert done.stderr.decode() == (
        f"roscoe: recovered the interrupted commit of tx {tx}: its 2 paths under {root} are as they were"
        " before it; the transaction is open\n")
    assert snapshot(root) == before
    assert roscoe("recover").returncode == 0


def test_124_timed_out(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--timeout", "1", "--", "sleep", "30", cwd=root)
    assert done.returncode == 124
    lines = done.stderr.decode().splitlines()
    tx = lines[0].removeprefix("roscoe: tx ")
    assert lines[1] == f"roscoe: tx {tx}: timed out after 1 s; every process of the run was killed"
    assert not any(line.startswith("roscoe: error:") for line in lines)


def test_125_roscoe_failed_in_a_run(roscoe: Roscoe, root: Path) -> None:
    assert fails(roscoe, 125, "tx", "run", "--tx", "ffffffffffff", "--", "true", root=root) == (
        "no such transaction: ffffffffffff")
    assert fails(roscoe, 125, "tx", "run", "--root", root / "absent", "--", "true").startswith(f"root {root / 'absent'}: ")


def test_126_cannot_invoke(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program\n")
    assert fails(roscoe, 126, "tx", "run", "--root", root, "--", plain, root=root) == (
        f"command cannot be invoked: {plain}: permission denied")
    assert fails(roscoe, 126, "tx", "run", "--root", root, "--", tmp_path, root=root) == (
        f"command cannot be invoked: {tmp_path}: is a directory")


def test_127_not_found(roscoe: Roscoe, root: Path) -> None:
    assert fails(roscoe, 127, "tx", "run", "--root", root, "--", "no-such-command-here", root=root) == (
        "command not found: no-such-command-here")
