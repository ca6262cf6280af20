"""The README's agent loop runs as written (issue 15): run, diff --json,
commit or wait for approval, rollback --dry-run, rollback, parsing nothing but
roscoe's JSON (with jq). The block is taken from README.md itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.roscoe import Roscoe
from tests.support.system import REPO, missing
from tests.support.transactions import write_config
from tests.support.trees import snapshot


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- agent-loop -->\n```sh\n(.*?)```\n<!-- /agent-loop -->", text, re.S)
    assert found, "README.md has no agent-loop block"
    return found.group(1)


def pending(roscoe: Roscoe) -> str | None:
    listed = json.loads(roscoe("tx", "list", "--json").stdout)
    return next((t["tx"] for t in listed if t.get("approval") == "pending"), None)


def test_the_readme_agent_loop_runs_as_written(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    if shutil.which("jq") is None:
        missing("jq")
    write_config(home, "[approval]\nwhen_deleting = true\n")  # the rm needs a person's approval
    before = snapshot(root)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "roscoe").write_text(f'#!/bin/sh\nexec {sys.executable} -m cli.main "$@"\n')
    (bin_dir / "roscoe").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    script = readme_block().replace("/mnt/workspace/projects", str(root))
    env = dict(roscoe.env, PATH=f"{bin_dir}:{os.environ['PATH']}", WORK=str(work))
    agent = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        asked = []
        for _ in ("the commit", "its rollback"):  # each removes a path: a person approves each
            deadline = time.monotonic() + 60
            while (tx := pending(roscoe)) is None or tx in asked:
                assert agent.poll() is None, agent.communicate()
                assert time.monotonic() < deadline, f"the agent never asked for an approval ({asked})"
                time.sleep(0.2)
            asked.append(tx)
            diff = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
            assert roscoe("tx", "approve", tx, "--hash", diff["diff_hash"], "--by", "Jane Partner").returncode == 0
        out, err = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    rolled = json.loads(roscoe("tx", "log", "--json").stdout)[0]
    assert (rolled["tx"], rolled["rolls_back"]) == (asked[1], asked[0])
    assert out.decode().splitlines() == [
        '{"added":1,"modified":0,"deleted":1,"type_changed":0,"meta_changed":0,"moved":1,"bytes_written":8}',
        "committed 4 changes",
        '[["deleted","case1/Filed"],["deleted","case1/Filed/notes.md"],["added","case1/notes.md"],'
        '["added","case1/old.tmp"]]',
        f"rolled back by {rolled['tx']}",
    ]
    assert snapshot(root) == before
    assert json.loads(roscoe("verify", "--json").stdout)["ok"] is True
