"""``roscoe gc --keep-days N``: drop images no rollback can need any more.

Transactions committed more than N days ago lose their images (and with them
the possibility of rollback, which then says so), in the blob store or, for
a bucket target, in the bucket (where the manifest then says so, for every
machine); blobs no remaining
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
    in_buckets, unreachable = _drop_bucket_images(ws, dropped)
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
    result: dict[str, object] = {"dropped": dropped, "removed_blobs": removed, "freed_bytes": freed}
    if in_buckets or unreachable:
        result["removed_bucket_images"] = in_buckets
        result["bucket_errors"] = unreachable
    return result


def _drop_bucket_images(ws: Workspace, dropped: list[str]) -> tuple[int, list[str]]:
    """The pre-images of dropped bucket transactions live in their bucket:
    deleted there, and their manifests say so. A bucket that cannot be
    reached keeps them (this machine still refuses the rollback)."""
    from cowfs.errors import RoscoeError
    from journal.targets import target_of

    removed, errors = 0, []
    for tx_id in dropped:
        tx = ws.journal.get_tx(tx_id)
        if tx is None or not tx.target:
            continue
        try:
            removed += target_of(ws.context, tx).drop_images(tx_id)  # type: ignore[attr-defined]
        except (RoscoeError, OSError) as e:
            errors.append(f"{tx_id}: {getattr(e, 'message', None) or e}")
    return removed, errors
