"""cowfs: copy-on-write staging of a directory tree.

Stagers present a transaction's staged layer at the root's own path inside a
bubblewrap sandbox; ``compare`` turns what a run touched into a ``ChangeSet``
with xxh3-128 hashes. Nothing here writes the live tree.
"""

from __future__ import annotations

from cowfs.changeset import Change, ChangeSet, Unsupported, compare
from cowfs.entry import Entry
from cowfs.errors import ExitCode, RoscoeError
from cowfs.home import Home
from cowfs.plan import Plan, PlanError

__all__ = [
    "Change", "ChangeSet", "Entry", "ExitCode", "Home", "Plan", "PlanError", "RoscoeError", "Unsupported",
    "compare",
]
