"""roscoe's journal: transactions, runs and their staged changes, kept in SQLite.

Also here, over the trees of ``cowfs``: the commit protocol, recovery and
rollback, policy, approval and the config file that sets them, the state-dir
map (``journal.home``), the audit trail, and the journal's errors
(``journal.errors``). journal never imports ``cli``, typer or rich.

Public API (no CLI needed)::

    from journal.opening import open_workspace
    ws = open_workspace(home)              # recovery first; or journal.service.Service(Settings.from_env(os.environ))
    tx = ws.begin("/mnt/workspace/projects", message="reorganize")
    result = ws.run(tx.id, ["python3", "reorganize.py"])
    changes = ws.diff(tx.id)               # cowfs.ChangeSet
"""

from __future__ import annotations

from journal.home import Home
from journal.store import Journal, RunRecord, TxRecord
from journal.workspace import Workspace, RunResult

# The agent API (journal.api: begin, run, stage_plan, diff, commit, abort, ...)
# is re-exported lazily: ``tx run`` imports journal and must stay light.
_API = ("api", "begin", "run", "stage_plan", "dry_run_plan", "validate_plan", "plan_schema",
        "diff", "show", "transactions", "approve", "reject", "wait", "audit", "commit", "abort", "rollback",
        "rollback_dry_run", "log", "verify", "PlanResult", "DryRun", "WaitResult", "LogEntry")


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        api = importlib.import_module("journal.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'journal' has no attribute {name!r}")


__all__ = ["Home", "Journal", "RunRecord", "RunResult", "TxRecord", "Workspace", *_API]
