"""``roscoe gc --keep-days N``: drop images no rollback can need any more.

Transactions committed more than N days ago lose their images (and with them
the possibility of rollback, which then says so); blobs no remaining
transaction names are deleted, and so are the temp files a crashed copy
into the store left. Blobs younger than an hour are kept whatever the
journal says, as a commit in progress may be storing them right now.
"""

from __future__ import annotations

import os
import time

from journal.images import blob_store
from journal.workspace import Workspace

GRACE_NS = 3600 * 10**9


def gc(ws: Workspace, keep_days: float, *, grace_ns: int = GRACE_NS) -> dict[str, object]:
    now = time.time_ns()
    dropped = ws.journal.drop_images(now - int(keep_days * 86400 * 10**9))
    keep = ws.journal.referenced_blobs()
    blobs = blob_store(ws.home.path)
    removed = freed = 0
    for digest in list(blobs.digests()):
        if digest in keep:
            continue
        path = blobs.path(digest)
        st = os.lstat(path)
        if now - st.st_ctime_ns < grace_ns:
            continue
        blobs.remove(digest)
        removed += 1
        freed += st.st_size
    for temp in list(blobs.stale_temps()):
        try:
            st = os.lstat(temp)
            if now - st.st_ctime_ns < grace_ns:
                continue
            os.unlink(temp)
        except FileNotFoundError:
            continue
        freed += st.st_size if st.st_nlink == 1 else 0
    return {"dropped": dropped, "removed_blobs": removed, "freed_bytes": freed}
