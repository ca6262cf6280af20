"""Recovery: finish what a crash interrupted, before anything else runs.

A transaction left `committing` (its intent journaled, no commit record) by a
process that is gone is undone: every path it touched is put back to its old
state from the journal and the blob store, its temp files are removed, and it
is open again (a rollback that never finished is aborted). The undo is state
based, so a crash during recovery is recovered by running it again. A commit
still in progress (its root lock held by a live process) is left alone.
Then every blob a dead commit hard-linked from a live file is given an inode
of its own.
"""

from __future__ import annotations

from collections import namedtuple

from cowfs.errors import RoscoeError
from journal.faults import checkpoint
from journal.rootlock import held_by_someone, root_lock


class RecoveryFailed(RoscoeError):
    """the interrupted commit of {tx} could not be undone yet ({reason}); the journal keeps everything needed: run `roscoe recover` again once that is fixed"""


class Recovered(namedtuple("_Recovered", "tx root paths state")):
    """One interrupted commit that recovery undid, and the state it is in now."""

    __slots__ = ()


def recover(ws: object) -> list[Recovered]:
    """Undo every interrupted commit; the list of what was undone."""
    from journal.commit import blob_store, release_links, undo
    from journal.workspace import Workspace

    assert isinstance(ws, Workspace)
    found: list[Recovered] = []
    for tx in ws.journal.in_state("committing"):
        if held_by_someone(ws.home.path, tx.root):
            continue
        with root_lock(ws.home.path, tx.root):
            current = ws.journal.get_tx(tx.id)
            if current is None or current.state != "committing":
                continue
            rows = ws.journal.changes(tx.id)
            blobs = blob_store(ws.home.path)
            ws.journal.log_event(tx.id, "recover-start", {"paths": len(rows)})
            checkpoint("recover-start")
            if current.target:
                from journal.gcs_commit import recover_one

                problem = recover_one(ws, current, rows)
            else:
                problem = undo(ws.journal, blobs, current, rows)
            if problem is not None:
                raise RecoveryFailed(tx=tx.id, reason=problem)
            release_links(blobs, ws.stager(current), ws.home.linked_images(tx.id))
            ws.journal.log_event(tx.id, "recover-done", {"paths": len(rows)})
            after = ws.journal.get_tx(tx.id)
            found.append(Recovered(tx.id, tx.root, len(rows), after.state if after else "gone"))
    unshare_left_blobs(ws.home.path)
    return found


def unshare_left_blobs(home: str) -> None:
    """Blobs a commit that died had hard-linked from live files it never
    replaced get an inode of their own (``journal.commit.images_shared``);
    those of a commit still running (its root lock held) are left to it.
    The pins a dead rollback left (``journal.rollback.Pins``) are removed,
    and so is a list a commit died writing (``.TX.PID.tmp``: nothing was
    linked before its list was in place)."""
    import json
    import os

    pins = os.path.join(home, "blobs", ".pins")
    if os.path.isdir(pins) and os.listdir(pins):
        from journal.blobs import BlobStore

        BlobStore(os.path.join(home, "blobs")).drop_stale_pins()
    shared = os.path.join(home, "blobs", ".shared")
    if not os.path.isdir(shared):
        return
    for name in os.listdir(shared):
        pid = name.rsplit(".", 2)[-2] if name.startswith(".") and name.endswith(".tmp") else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            os.unlink(os.path.join(shared, name))
    from journal.commit import blob_store, unshare_listed

    blobs = blob_store(home)
    for marker in blobs.share_markers():
        with open(marker, encoding="utf-8") as f:
            root = json.load(f)["root"]
        if held_by_someone(home, root):
            continue
        with root_lock(home, root):
            if os.path.exists(marker):
                unshare_listed(blobs, marker)
