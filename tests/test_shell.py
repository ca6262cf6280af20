"""``roscoe tx shell`` driven through a pseudo-terminal the way a person uses
it: a prompt naming the transaction, commands typed one by one, ^C for the
command in the foreground, ``exit``; then the diff, the commit, the live tree."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.roscoe import Roscoe
from tests.support.terminal import wait_for_foreground

if os.environ.get("CI") == "true":
    import pexpect
else:
    pexpect = pytest.importorskip("pexpect", reason="pip install pexpect (the test extra)")

PROMPT = {"/bin/bash": r"roscoe:([0-9a-f]{12}):[^\r\n]*[#$] ", "/bin/sh": r"roscoe:([0-9a-f]{12})\$ "}


def spawn_shell(roscoe: Roscoe, shell: str, root: Path, *options: str):  # type: ignore[no-untyped-def]
    env = dict(roscoe.env, SHELL=shell, TERM="dumb", HOME=str(root.parent))  # no ~/.bashrc of the host's
    return pexpect.spawn(
        sys.executable, ["-m", "cli.main", "tx", "shell", "--root", str(root), *options],
        env=env, cwd=str(root), timeout=30, encoding="utf-8", dimensions=(24, 200),
    )


@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
def test_a_person_uses_the_shell_then_commits(roscoe: Roscoe, root: Path, shell: str) -> None:
    child = spawn_shell(roscoe, shell, root)
    child.expect(r"roscoe: tx ([0-9a-f]{12})\r\n")
    tx = child.match.group(1)
    child.expect(PROMPT[shell])
    assert child.match.group(1) == tx
    child.sendline("mkdir -p case3/Filed && echo 'filed by hand' > case3/Filed/motion.txt")
    child.expect(PROMPT[shell])
    child.sendline("rm case1/old.tmp; echo \"tx=$ROSCOE_TX\"")
    child.expect(f"tx={tx}\r\n")
    child.expect(PROMPT[shell])
    # ^C stops the command in the foreground, not the shell and not roscoe.
    # It is sent once that command holds the terminal, as a person's would be
    # (a ^C while the line is still unread only flushes the terminal's input,
    # and one while the shell forks can reach the child before it execs).
    child.sendline("sleep 61.5")
    wait_for_foreground(["sleep", "61.5"])
    child.sendintr()
    child.expect(PROMPT[shell])
    child.sendline("echo still-here")
    child.expect("still-here\r\n")
    child.expect(PROMPT[shell])
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert not (root / "case3").exists() and (root / "case1" / "old.tmp").exists()

    got = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    assert [(c["path"], c["status"]) for c in got["changes"]] == [
        ("case1/old.tmp", "deleted"), ("case3", "added"), ("case3/Filed", "added"),
        ("case3/Filed/motion.txt", "added"),
    ]
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert (root / "case3" / "Filed" / "motion.txt").read_text() == "filed by hand\n"
    assert not (root / "case1" / "old.tmp").exists()
    assert roscoe("verify").returncode == 0


def test_the_shell_takes_the_run_options(roscoe: Roscoe, root: Path) -> None:
    child = spawn_shell(roscoe, "/bin/sh", root, "--network", "off", "--clean-env", "--env", "CASE=smith")
    child.expect(PROMPT["/bin/sh"])
    child.sendline("echo case=$CASE user=${USER:-none}; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    child.expect("case=smith user=none\r\nlo\r\n")
    child.expect(PROMPT["/bin/sh"])
    child.sendline("exit 7")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 7


def test_the_shell_refuses_bad_options_before_starting(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "shell", "--root", root, "--memory", "lots", env={"SHELL": "/bin/sh"})
    assert (done.returncode, done.stderr) == (125, b"roscoe: error: --memory lots: expected a size such as 512M or 2G\n")
