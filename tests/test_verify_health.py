"""`roscoe verify` as a health check (issue 15, item 7): a live file edited by
hand since its commit is drift (exit 3), not corruption (exit 1);
``--integrity`` checks roscoe's own state without reading the live tree."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.roscoe import Roscoe
from tests.support.transactions import committed, staged


def verify(roscoe: Roscoe, *options: str) -> tuple[int, dict]:
    done = roscoe("verify", "--json", *options)
    return done.returncode, json.loads(done.stdout)


def test_drift_is_exit_3_damage_is_exit_1_and_integrity_skips_the_live_tree(
    roscoe: Roscoe, root: Path, home: Path,
) -> None:
    tx = staged(roscoe, root, "echo new > case1/new.txt")
    committed(roscoe, tx)
    assert verify(roscoe) == (0, {"ok": True, "healthy": True, "drift": 0, "checked": {
        "blobs": 0, "paths": 1, "transactions": 1, "audit_events": 6}, "problems": []})
    (root / "case1" / "new.txt").write_text("edited by hand\n")
    code, report = verify(roscoe)
    assert (code, report["ok"], report["healthy"], report["drift"]) == (3, False, True, 1)
    assert [(p["kind"], p["tx"], p["path"]) for p in report["problems"]] == [("live", tx, "case1/new.txt")]
    assert roscoe("verify").returncode == 3
    code, report = verify(roscoe, "--integrity")
    assert (code, report["ok"], report["checked"]["paths"]) == (0, True, 0)
    # Damage to roscoe's own state is exit 1, with or without drift, and
    # --integrity finds it too.
    import sqlite3

    db = sqlite3.connect(home / "journal.db", isolation_level=None)
    db.execute("UPDATE changes SET status = 'modified' WHERE tx = ?", (tx,))
    db.close()
    for options in ((), ("--integrity",)):
        code, report = verify(roscoe, *options)
        assert (code, report["healthy"]) == (1, False), report
        assert "journal" in {p["kind"] for p in report["problems"]}
