"""roscoe-plan(5) applied to a plain directory with plain shutil calls (no
sandbox): the reference a staged plan is compared with."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def reference_apply(ops: list[dict[str, Any]], root: str) -> set[str]:
    """Apply ``ops`` as roscoe-plan(5) says, with plain shutil calls; returns
    the paths whose mtime is "now" (written files, and copies of them)."""
    fresh: set[str] = set()

    def p(rel: str) -> str:
        return os.path.join(root, rel)

    for op in ops:
        kind = op["op"]
        if kind == "mkdir":
            parts = op["path"].split("/")
            for i in range(1, len(parts) + 1):
                if not os.path.isdir(p("/".join(parts[:i]))):
                    os.mkdir(p("/".join(parts[:i])))
                    os.chmod(p("/".join(parts[:i])), 0o755)
        elif kind == "write":
            dst = p(op["path"])
            mode = 0o644
            if os.path.lexists(dst):
                st = os.lstat(dst)
                mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o644
                _remove(dst)
            Path(dst).write_text(op["content"])
            os.chmod(dst, int(op["mode"], 8) if "mode" in op else mode)
            fresh.add(op["path"])
        elif kind == "delete":
            _remove(p(op["path"]))
        else:
            src, dst = p(op["from"]), p(op["to"])
            if os.path.lexists(dst):
                _remove(dst)
            moved = {f for f in fresh if f == op["from"] or f.startswith(op["from"] + "/")}
            renamed = {op["to"] + f[len(op["from"]):] for f in moved}
            fresh -= {f for f in fresh if f == op["to"] or f.startswith(op["to"] + "/")}
            if kind == "copy":
                if os.path.isdir(src) and not os.path.islink(src):
                    shutil.copytree(src, dst, symlinks=True)
                else:
                    shutil.copy2(src, dst, follow_symlinks=False)
            else:
                os.rename(src, dst)
                fresh -= moved
            fresh |= renamed
    return fresh


def without_mtimes(snap: dict[str, tuple[object, ...]], paths: set[str]) -> dict[str, tuple[object, ...]]:
    """``snap`` with the mtime of ``paths`` (written just now) left out."""
    return {rel: (v[:2] + (None,) + v[3:]) if rel in paths else v for rel, v in snap.items()}
