"""Relations between absolute paths, as strings (nothing is looked up)."""

from __future__ import annotations


def under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or inside it."""
    return path == root or path.startswith(root.rstrip("/") + "/")
