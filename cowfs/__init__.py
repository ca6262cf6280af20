"""cowfs: trees and staging.

Entries and their xxh3-128 hashes, the live tree read without following
symlinks, the overlay stagers that present a transaction's staged layer at
the root's own path inside a bubblewrap sandbox, plans, reading the upper
layer into a ``ChangeSet`` (``compare``), and the GCS client. Staging and
diffing never write the live tree; ``durable`` and ``converge`` do, for the
commit protocol in ``journal`` that calls them. cowfs never imports
``journal`` (``tests/test_house.py`` keeps it so): commit policy, config,
approval and the state-dir map live there.
"""

from __future__ import annotations

from cowfs.errors import ExitCode, PlanError, RoscoeError

# Loaded on first use: `tx commit` and `tx rollback` start on every agent
# call and need neither plans nor the sandbox.
_LAZY = {
    "Change": "cowfs.changeset", "ChangeSet": "cowfs.changeset", "Unsupported": "cowfs.changeset",
    "compare": "cowfs.changeset", "Entry": "cowfs.entry", "Plan": "cowfs.plan",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'cowfs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "Change", "ChangeSet", "Entry", "ExitCode", "Plan", "PlanError", "RoscoeError", "Unsupported",
    "compare",
]
