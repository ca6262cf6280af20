"""A rollback is a commit like any other (issue 14, gap 3): held to the same
policy, and to an approval bound to its own diff_hash; ``--force`` overrides
a conflict, never policy."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.roscoe import Roscoe
from tests.support.transactions import committed, error_line, staged, write_config
from tests.support.trees import snapshot


def needs_approval(roscoe: Roscoe, tx: str, *options: str) -> tuple[str, str, str]:
    """``tx rollback TX`` is refused for want of an approval: the rollback's id,
    the diff_hash to approve, and the whole message."""
    message = error_line(roscoe("tx", "rollback", tx, "--yes", *options), 4)
    found = re.fullmatch(
        rf"the rollback of transaction {tx} is transaction ([0-9a-f]{{12}}), which needs an approval before it can"
        r" be committed \((.*)\); nothing was written\. A person approves this exact diff with: roscoe tx approve"
        r" \1 --hash ([0-9a-f]{32}); then `roscoe tx rollback " + tx + r"` \(or `roscoe tx commit \1`\) applies it",
        message)
    assert found, message
    return found.group(1), found.group(3), found.group(2)


def rolled_back(roscoe: Roscoe, *args: str) -> str:
    done = roscoe("tx", *args, "--yes")
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def test_rolling_back_an_addition_needs_the_approval_a_deletion_does(roscoe: Roscoe, root: Path, home: Path) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    committed(roscoe, tx)
    write_config(home, "[approval]\nwhen_deleting = true\n")
    after = snapshot(root)
    rb, diff_hash, reasons = needs_approval(roscoe, tx)
    assert reasons == "deletes 1 path: case1/new.txt (when_deleting)"
    assert snapshot(root) == after
    diff = json.loads(roscoe("tx", "diff", rb, "--json").stdout)
    assert (diff["diff_hash"], [(c["path"], c["status"]) for c in diff["changes"]]) == (
        diff_hash, [("case1/new.txt", "deleted")])
    show = json.loads(roscoe("tx", "show", rb, "--json").stdout)
    assert (show["state"], show["rolls_back"], show["policy"]["needed"], show["policy"]["pending"]) == (
        "open", tx, True, True)
    listed = {t["tx"]: t for t in json.loads(roscoe("tx", "list", "--json").stdout)}
    assert (listed[rb]["state"], listed[rb]["approval"]) == ("open", "pending")
    # Asking again names the same rollback; a run in it is refused.
    assert needs_approval(roscoe, tx)[:2] == (rb, diff_hash)
    assert error_line(roscoe("tx", "run", "--tx", rb, "--", "true"), 125).startswith(
        f"transaction {rb} is the rollback of {tx}: it runs no commands")
    assert roscoe("tx", "approve", rb, "--hash", diff_hash, "--by", "Jane Partner").returncode == 0
    assert rolled_back(roscoe, "rollback", tx) == rb
    assert not (root / "case1" / "new.txt").exists()
    events = json.loads(roscoe("audit", "--json").stdout)["events"]
    (done,) = [e for e in events if e["tx"] == rb and e["kind"] == "rollback"]
    assert (done["detail"]["approved_by"], done["detail"]["diff_hash"], done["detail"]["rolls_back"]) == (
        "Jane Partner", diff_hash, tx)
    assert json.loads(roscoe("verify", "--json").stdout)["ok"] is True


def test_an_approved_rollback_commits_with_tx_commit(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    committed(roscoe, tx)
    rb, diff_hash, _ = needs_approval(roscoe, tx)
    assert error_line(roscoe("tx", "commit", rb, "--yes"), 4).startswith(f"the rollback of transaction {tx} is transaction {rb}")
    assert roscoe("tx", "approve", rb, "--hash", diff_hash).returncode == 0
    done = roscoe("tx", "commit", rb, "--yes")
    assert done.returncode == 0, done.stderr
    assert not (root / "case1" / "new.txt").exists()
    assert json.loads(roscoe("tx", "show", rb, "--json").stdout)["state"] == "committed"


def test_an_approval_of_another_diff_does_not_let_the_rollback_through(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    tx = staged(roscoe, root, "echo new > case1/new.txt && echo two > case1/two.txt")
    committed(roscoe, tx)
    rb, diff_hash, _ = needs_approval(roscoe, tx)
    assert roscoe("tx", "approve", rb, "--hash", diff_hash).returncode == 0
    # The live tree moves on: one of the two files is already gone by hand.
    (root / "case1" / "two.txt").unlink()
    before = snapshot(root)
    rb2, other, _ = needs_approval(roscoe, tx, "--force")
    assert (rb2, other != diff_hash) == (rb, True)
    assert snapshot(root) == before


def test_force_overrides_a_conflict_never_the_approval(roscoe: Roscoe, root: Path, home: Path) -> None:
    first = staged(roscoe, root, "echo one > case1/new.txt")
    committed(roscoe, first)
    later = staged(roscoe, root, "echo rewritten > case1/new.txt")
    committed(roscoe, later)
    write_config(home, "[approval]\nwhen_deleting = true\n")
    before = snapshot(root)
    assert error_line(roscoe("tx", "rollback", first, "--yes"), 3).startswith(
        f"rollback of {first} refused (--force overrides)")
    rb, diff_hash, reasons = needs_approval(roscoe, first, "--force")
    assert reasons == "deletes 1 path: case1/new.txt (when_deleting)"
    assert snapshot(root) == before
    assert (root / "case1" / "new.txt").read_text() == "rewritten\n"
    assert roscoe("tx", "approve", rb, "--hash", diff_hash).returncode == 0
    assert error_line(roscoe("tx", "rollback", first, "--yes"), 3).startswith(
        f"rollback of {first} refused (--force overrides)")
    assert rolled_back(roscoe, "rollback", first, "--force") == rb
    assert not (root / "case1" / "new.txt").exists()


def test_policy_refuses_a_rollback_forced_or_not(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    tx = staged(roscoe, root, "echo x >> case1/notes.md && echo n > case1/new.txt")
    committed(roscoe, tx)
    write_config(home, '[policy]\ndeny = ["case1/notes.md"]\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    before = snapshot(root)
    refusal = f"the rollback of transaction {tx} is refused by policy: case1/notes.md (deny 'case1/notes.md'); nothing was written"
    assert error_line(roscoe("tx", "rollback", tx, "--yes"), 4) == refusal
    assert error_line(roscoe("tx", "rollback", tx, "--yes", "--force"), 4) == refusal
    assert error_line(roscoe("--config", empty, "tx", "rollback", tx, "--yes"), 4) == refusal
    assert snapshot(root) == before
    assert [t["tx"] for t in json.loads(roscoe("tx", "list", "--json").stdout)] == [tx]
