"""cowfs: copy-on-write staging of a directory tree.

Stagers present a transaction's staged layer at the root's own path inside a
bubblewrap sandbox; ``compare`` turns what a run touched into a ``ChangeSet``
with xxh3-128 hashes. Nothing here writes the live tree.
"""

from __future__ import annotations

from cowfs.errors import ExitCode, RoscoeError

# Loaded on first use: `tx commit` and `tx rollback` start on every agent
# call and need neither plans nor the sandbox.
_LAZY = {
    "Change": "cowfs.changeset", "ChangeSet": "cowfs.changeset", "Unsupported": "cowfs.changeset",
    "compare": "cowfs.changeset", "Entry": "cowfs.entry", "Home": "cowfs.home", "Plan": "cowfs.plan",
    "PlanError": "cowfs.plan",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'cowfs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "Change", "ChangeSet", "Entry", "ExitCode", "Home", "Plan", "PlanError", "RoscoeError", "Unsupported",
    "compare",
]
