"""Owners come back exactly when roscoe runs as root (CI does)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import Roscoe, snapshot


def test_owners_survive_commit_and_rollback(roscoe: Roscoe, root: Path) -> None:
    assert os.geteuid() == 0, "this test needs root, as CI runs"
    os.chown(root / "case1" / "notes.md", 1234, 2345)
    os.chown(root / "case2", 3456, 4567)
    before = snapshot(root)
    tx = roscoe.begin(root)
    script = "printf 'more\\n' >> case1/notes.md && chmod 0700 case2 && rm case1/old.tmp"
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=root).returncode == 0
    assert roscoe("tx", "commit", tx, "--yes").returncode == 0
    st = os.lstat(root / "case1" / "notes.md")
    assert (st.st_uid, st.st_gid, (root / "case1" / "notes.md").read_text()) == (1234, 2345, "# notes\nmore\n")
    st = os.lstat(root / "case2")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (3456, 4567, 0o700)
    done = roscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before
