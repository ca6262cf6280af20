"""Relations between paths, as strings (nothing is looked up)."""

from __future__ import annotations


def under(path: str, root: str) -> bool:
    """Whether the absolute ``path`` is ``root`` or inside it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def plain(rel: str) -> bool:
    """Whether ``rel`` is a plain root-relative path: ``/``-separated names,
    none of them empty, ``.`` or ``..``, no NUL. Only such a path can be
    trusted to stay inside the root when it is read back from the journal."""
    if not rel or "\0" in rel or rel.startswith("/"):
        return False
    return all(name not in ("", ".", "..") for name in rel.split("/"))
