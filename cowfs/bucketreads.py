"""The live files of a mounted bucket root that its mount cannot read, read
from the bucket instead.

A mount's cached view of an object replaced behind it fails reads (rclone:
EIO; gcsfuse: ESTALE) until its cache expires, which can be minutes later;
the object itself answers through the API at once. ``BucketReads.entry`` is
what ``livetree.entry`` takes for such a file: the object as the mount will
show it once its cache expires (its size and bytes, its mtime from the
metadata the mount reads, else the object's update time), with the mode and
owner the mount gives every file (a bucket keeps none). ``cowfs.gcs`` (and
gcsfs) are imported only when a read has failed: a diff the mount can read
costs nothing more. With ``hashes`` (the comparison's ``cowfs.hashcache``),
an object whose generation's hash is remembered is not read again, and one
read is remembered by its generation.
"""

from __future__ import annotations

import os
import stat

from cowfs.entry import FILE, Entry
from cowfs.errors import LiveUnreadable
from cowfs.hashing import hash_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.gcs import GcsTarget
    from cowfs.hashcache import HashCache


class BucketReads:
    """The bucket behind the root ``root`` mounted from ``url``; bytes read are
    kept, for the diff's text patches."""

    def __init__(self, url: str, root: str, hashes: HashCache | None = None) -> None:
        self.url, self.root = url, root
        self.hashes = hashes
        self._target: GcsTarget | None = None
        self.data: dict[str, bytes] = {}

    @property
    def target(self) -> GcsTarget:
        if self._target is None:
            from cowfs.gcs import GcsTarget

            self._target = GcsTarget(self.url)
        return self._target

    def entry(self, rel: str, st: os.stat_result) -> Entry | None:
        """``rel`` (whose lstat through the mount is ``st``) as the bucket holds
        it: a file, or None when nothing is there any more; ``LiveUnreadable``
        when it is something else now."""
        from cowfs.gcs import MTIME_KEYS, parse_rfc3339

        found = self._object(rel, remembered=True)
        if found is None:
            return None
        resource, size, digest = found
        metadata = resource.get("metadata") or {}
        mtime = next((parse_rfc3339(metadata[k]) for k in MTIME_KEYS if k in metadata), None)
        if mtime is None:
            mtime = parse_rfc3339(str(resource.get("updated", ""))) or st.st_mtime_ns
        return Entry(FILE, size, stat.S_IMODE(st.st_mode), mtime, digest, None, uid=st.st_uid, gid=st.st_gid)

    def read(self, rel: str, limit: int) -> bytes | None:
        """Up to ``limit`` bytes of the file ``rel`` in the bucket (None: no such file)."""
        if rel not in self.data and self._object(rel) is None:
            return None
        return self.data[rel][:limit]

    def _object(self, rel: str, *, remembered: bool = False) -> tuple[dict[str, Any], int, str] | None:
        """The resource, size and hash of ``rel``'s object, read at one
        generation (its bytes kept in ``data``); with ``remembered``, a hash
        ``hashes`` knows for that generation is taken instead of reading."""
        import json

        from cowfs.errors import GcsError
        from cowfs.gcs import SYMLINK_KEY, PreconditionFailed

        target = self.target
        key = target.key(rel)
        where = f"gs://{target.bucket}/{key}"

        def fail(detail: str) -> LiveUnreadable:
            return LiveUnreadable(root=self.root, path=rel, detail=f"the mount cannot read it, {detail}")

        try:
            for _ in range(5):  # (rewritten again between the stat and the read: look again)
                status, body = target.run(target.request("GET", target._object_path(key), ok404=True))
                if status == 404:
                    items, prefixes = target.run(target.list_dir(key))
                    if items or prefixes:
                        raise fail(f"and {where} is a directory now")
                    return None
                resource = json.loads(body)
                if SYMLINK_KEY in (resource.get("metadata") or {}):
                    raise fail(f"and {where} is a symlink now")
                generation = int(resource["generation"])
                if remembered and self.hashes is not None:
                    size = int(resource.get("size", 0))
                    digest = self.hashes.object_digest(key, generation, size)
                    if digest is not None:
                        return resource, size, digest
                try:
                    data = target.run(target.read(key, generation))
                except PreconditionFailed:
                    continue
                self.data[rel] = data
                digest = hash_bytes(data)
                if self.hashes is not None:
                    self.hashes.remember_object(key, generation, len(data), digest)
                return resource, len(data), digest
        except GcsError as e:
            raise fail(f"nor can the bucket be read: {e.message}") from e
        raise fail(f"and {where} kept changing while it was read")
