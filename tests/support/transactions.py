"""What a test does with a transaction through the CLI, each step checked:
run a script in it, stage one, commit or approve it, read its JSON, and the
exact ``roscoe: error:`` line and messages the CLI gives back."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.support.roscoe import Roscoe
from tests.support.trees import snapshot

Done = subprocess.CompletedProcess  # of bytes

CLERK = "clerk"  # the login user ($LOGNAME) of the ``clerk`` fixture's calls


def write_config(home: Path, text: str) -> Path:
    """The default config file, ``$ROSCOE_HOME/config.toml``."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    return path


def tx_from(stderr: bytes) -> str:
    """The id on the first line of a ``tx run``'s stderr, exactly ``roscoe: tx ID``."""
    first = stderr.decode(errors="replace").splitlines()[0]
    match = re.fullmatch(r"roscoe: tx ([0-9a-f]{12})", first)
    assert match, stderr
    return match.group(1)


def run_tx(roscoe: Roscoe, root: Path, script: str, *options: str, tx: str | None = None) -> tuple[str, Done]:
    """``sh -c SCRIPT`` from the root (its cwd) in ``tx``, or in a new
    transaction over ``root``; returns (id, process), whatever the exit."""
    where = ("--tx", tx) if tx else ("--root", str(root))
    done = roscoe("tx", "run", *where, *options, "--", "sh", "-c", script, cwd=root)
    return tx_from(done.stderr), done


def staged(roscoe: Roscoe, root: Path, script: str, *options: str, tx: str | None = None) -> str:
    """run_tx whose run exits 0; returns the id."""
    tx, done = run_tx(roscoe, root, script, *options, tx=tx)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return tx


def run(roscoe: Roscoe, tx: str, root: Path, script: str, code: int = 0) -> Done:
    """``sh -c SCRIPT`` in the transaction, from the root (its cwd); it exits ``code``."""
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=root)
    assert done.returncode == code, done.stderr
    return done


def tx_json(roscoe: Roscoe, command: str, tx: str) -> dict:
    done = roscoe("tx", command, tx, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def diff_hash(roscoe: Roscoe, tx: str) -> str:
    return str(tx_json(roscoe, "diff", tx)["diff_hash"])


def state(roscoe: Roscoe, tx: str) -> str:
    return str(tx_json(roscoe, "show", tx)["state"])


def error_line(done: Done, code: int) -> str:
    """The exit code is ``code`` and stderr ends in exactly one ``roscoe: error:``
    line, which is returned without its prefix."""
    assert done.returncode == code, done.stderr
    lines = done.stderr.decode().splitlines()
    errors = [line for line in lines if line.startswith("roscoe: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0].removeprefix("roscoe: error: ")


def refused(roscoe: Roscoe, tx: str, root: Path, code: int = 4) -> str:
    """Commit ``tx``: it fails with ``code`` and the live tree is byte-for-byte
    as before; returns the error line. (Callers show that the transaction
    stayed open by fixing and committing it.)"""
    before = snapshot(root)
    message = error_line(roscoe("tx", "commit", tx), code)
    assert snapshot(root) == before
    return message


def committed(roscoe: Roscoe, tx: str) -> Done:
    done = roscoe("tx", "commit", tx)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().startswith(f"roscoe: tx {tx} committed: "), done.stderr
    return done


def policy_refusal(tx: str, *violations: str) -> str:
    return (f"transaction {tx} cannot be committed: refused by policy: "
            + "; ".join(violations) + "; nothing was written")


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
