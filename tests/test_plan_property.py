"""Property test: a random valid plan, staged by roscoe and committed, leaves
the live tree exactly as the reference semantics (``reference_apply``, plain
shutil calls on a plain copy, no sandbox) leave a copy of it: bytes, types,
modes, owners, symlink targets, and mtimes except those of files written now.

Plans are drawn op by op against a scratch copy the ops are applied to as
they are drawn, so each op is valid where it stands and may use earlier ops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowfs.stagers import remove_tree
from journal import api
from tests.support.plans import reference_apply, without_mtimes
from tests.support.trees import make_tree, snapshot

NAMES = ("a", "b", "c d", "é")


def listing(root: str) -> tuple[list[str], list[str]]:
    """(real directories, every path) under ``root``, relative; "" is the root."""
    dirs, paths = [""], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for name in dirnames + filenames:
            child = f"{rel}/{name}" if rel else name
            paths.append(child)
            if name in dirnames and not os.path.islink(os.path.join(dirpath, name)):
                dirs.append(child)
    return sorted(dirs), sorted(paths)


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def draw_op(data: st.DataObject, scratch: str) -> dict[str, Any]:
    dirs, paths = listing(scratch)
    kind = data.draw(st.sampled_from(["mkdir", "write", "delete", "move", "copy", "rename"]) if paths else st.just("mkdir"))
    if kind == "mkdir":
        parent = data.draw(st.sampled_from(dirs))
        tail = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=2))
        return {"op": "mkdir", "path": join(parent, "/".join(tail))} if not any(
            os.path.lexists(os.path.join(scratch, join(parent, "/".join(tail[:i + 1]))))
            and not os.path.isdir(os.path.join(scratch, join(parent, "/".join(tail[:i + 1]))))
            for i in range(len(tail))) else {"op": "mkdir", "path": join(parent, "fresh")}
    if kind == "write":
        path = join(data.draw(st.sampled_from(dirs)), data.draw(st.sampled_from(NAMES)))
        op: dict[str, Any] = {"op": "write", "path": path, "content": data.draw(st.text(max_size=20))}
        if data.draw(st.booleans()):
            op["mode"] = data.draw(st.sampled_from(["0600", "0755", "644"]))
        if os.path.lexists(os.path.join(scratch, path)):
            op["overwrite"] = True
        return op
    src = data.draw(st.sampled_from(paths))
    if kind == "delete":
        return {"op": "delete", "path": src}
    parent = src.rpartition("/")[0] if kind == "rename" else data.draw(st.sampled_from(dirs))
    dst = join(parent, data.draw(st.sampled_from(NAMES + ("moved",))))
    if dst == src or under(dst, src) or under(src, dst):
        return {"op": "delete", "path": src}
    op = {"op": kind, "from": src, "to": dst}
    if os.path.lexists(os.path.join(scratch, dst)):
        op["overwrite"] = True
    return op


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_random_plan_commits_to_the_reference_tree(data: st.DataObject) -> None:
    work = tempfile.mkdtemp(prefix="roscoe-plan-prop-")
    try:
        live, scratch, expected = (make_tree(Path(work) / n) for n in ("live", "scratch", "expected"))
        ops = []
        for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
            op = draw_op(data, str(scratch))
            reference_apply([op], str(scratch))
            ops.append(op)
        fresh = reference_apply(ops, str(expected))
        home = Path(work) / "home"
        staged = api.stage_plan(None, {"version": 1, "ops": ops}, root=live, home=home)
        assert staged.ops == len(ops)
        if staged.changes.changes:
            api.commit(staged.tx, home=home)
        else:
            api.abort(staged.tx, home=home)
        assert without_mtimes(snapshot(live), fresh) == without_mtimes(snapshot(expected), fresh)
    finally:
        remove_tree(work)
        shutil.rmtree(work, ignore_errors=True)
