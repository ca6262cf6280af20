"""roscoe's journal: transactions, runs and their staged changes, kept in SQLite.

Public API (no CLI needed)::

    from journal import Workspace
    ws = Workspace.open()                  # $ROSCOE_HOME, or Workspace.open(home=...)
    tx = ws.begin("/mnt/workspace/projects", message="reorganize")
    result = ws.run(tx.id, ["python3", "reorganize.py"])
    changes = ws.diff(tx.id)               # cowfs.ChangeSet
"""

from __future__ import annotations

from journal.store import Journal, RunRecord, TxRecord
from journal.workspace import Workspace, RunResult

__all__ = ["Journal", "RunRecord", "RunResult", "TxRecord", "Workspace"]
