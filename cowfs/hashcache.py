"""Content hashes remembered by file identity, as git's index does, so that
``tx diff`` and ``tx commit`` do not read again the bytes of every changed
file the run's own diff already hashed.

A hash is reused only when the file's device, inode, size, mtime and ctime
are exactly those it had when it was hashed. Any write, chmod, rename over
or re-creation changes the ctime, which no process can set. Two rules
keep that sound:

- a staged file is trusted as soon as it was hashed: every process that
  could write the staging layer is dead when a run ends, and a later run
  starts many clock ticks afterwards;
- a live file, which anyone may write at any moment, is trusted only if its
  ctime is at least ``RACY_NS`` older than the moment it was hashed (a
  write in the same clock tick as the hashing could leave the ctime as it
  was: git calls such entries racily clean), and never on FUSE, where the
  server decides what ctime and inode numbers mean.

On a mounted bucket (gcsfuse, rclone) neither the inode nor the times say
anything, but an object's generation does: every write of an object is a new
generation, and a generation's bytes never change. With ``objects`` set (a
``cowfs.objectstates.ObjectStates``), a live file's hash is remembered by
(object key, generation) -> (size, hash) instead, so a transaction reads each
old object through the mount once, however many times it is compared. Two
rules keep that sound:

- a hash read through the mount is remembered under a generation only when
  the bytes read have that generation's md5 (and size): a mount whose cache
  lags behind the bucket (gcsfuse's stat cache, rclone's dir cache) may
  serve older bytes, which must never be filed under the newer generation;
- a remembered hash is used only while the bucket still holds that very
  generation and the mount shows its size. An object without an md5 (a
  composite one) is read every time.

The cache is a JSON file in the transaction's staging dir, rewritten (not
synced: losing it costs a re-read, nothing else) with the entries the last
comparison used. A damaged file is ignored.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from cowfs.entry import identity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowfs.objectstates import ObjectStates

RACY_NS = 2_000_000_000
SIDES = ("live", "staged")
OBJECTS = "objects"
# A live file this big, or this many files read in one comparison, is worth
# asking the bucket for generations (importing gcsfs alone costs ~1 s).
WORTH_ASKING_BYTES = 64 << 10
WORTH_ASKING_FILES = 16


class HashCache:
    def __init__(self, path: str | None, live_trusted: Callable[[], bool]) -> None:
        self.path = path
        self._live_trusted = live_trusted
        self._trust_live: bool | None = None
        self.known: dict[str, dict[str, list[int | str]]] = {side: {} for side in (*SIDES, OBJECTS)}
        self.used: dict[str, dict[str, list[int | str]]] = {side: {} for side in (*SIDES, OBJECTS)}
        self.changed = False
        # The bucket behind a mounted root, when there is one (see the module docstring).
        self.objects: ObjectStates | None = None
        self.live_reads = 0

    @classmethod
    def load(cls, path: str, live_trusted: Callable[[], bool]) -> HashCache:
        cache = cls(path, live_trusted)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            for side in SIDES:
                entries = data[side]
                if isinstance(entries, dict):
                    cache.known[side] = entries
            objects = data.get(OBJECTS)
            if isinstance(objects, dict):
                cache.known[OBJECTS] = objects
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return cache

    def digest(self, side: str, rel: str, st: os.stat_result, read: Callable[..., str]) -> str:
        """The hash of the ``side`` file ``rel`` whose lstat is ``st``:
        remembered when it is safe to, else ``read()``."""
        if side == "live" and self.objects is not None:
            found = self._by_generation(rel, st, read)
            if found is not None:
                return found
            self.live_reads += 1
        now = identity(st)
        entry = self.known[side].get(rel)
        if (
            isinstance(entry, list) and len(entry) == 7 and entry[:5] == now
            and isinstance(entry[5], int) and isinstance(entry[6], str)
            and (side == "staged" or (st.st_ctime_ns < entry[5] - RACY_NS and self.trust_live()))
        ):
            self.used[side][rel] = entry
            return entry[6]
        hashed_at = time.time_ns()
        digest = read()
        self.used[side][rel] = [*now, hashed_at, digest]
        self.changed = True
        return digest

    def _by_generation(self, rel: str, st: os.stat_result, read: Callable[..., str]) -> str | None:
        """The hash of the live file ``rel`` of a mounted bucket, by its
        object's generation; None when the bucket cannot say (not asked yet
        for a comparison too small to be worth it, unreachable, no such
        object, no md5)."""
        assert self.objects is not None
        if not self.objects.asked and st.st_size < WORTH_ASKING_BYTES and self.live_reads < WORTH_ASKING_FILES:
            return None
        state = self.objects.state(rel)
        if state is None or state["kind"] != "file" or not state.get("md5"):
            return None
        key, generation = state["key"], state["generation"]
        hit = self.object_digest(key, generation, st.st_size)
        if hit is not None:
            return hit
        import hashlib

        md5 = hashlib.md5()
        digest = read(md5)
        if st.st_size == state["size"] and _b64(md5.digest()) == state["md5"]:
            self.remember_object(key, generation, st.st_size, digest)
        return digest

    def object_digest(self, key: str, generation: int, size: int) -> str | None:
        """The remembered hash of the object ``key`` at ``generation``, whose bytes
        are ``size`` long, or None."""
        entry = self.used[OBJECTS].get(key) or self.known[OBJECTS].get(key)
        if (
            isinstance(entry, list) and len(entry) == 3 and entry[0] == generation and entry[1] == size
            and isinstance(entry[2], str)
        ):
            self.used[OBJECTS][key] = entry
            return entry[2]
        return None

    def remember_object(self, key: str, generation: int, size: int, digest: str) -> None:
        """That the object ``key`` at ``generation`` is ``size`` bytes hashing to
        ``digest`` (the caller read exactly that generation's bytes)."""
        self.used[OBJECTS][key] = [generation, size, digest]
        self.changed = True

    def vouches(self, rel: str, st: os.stat_result, digest: str) -> bool:
        """Whether the live file ``rel``, whose lstat is now ``st``, surely
        still holds bytes that hash to ``digest``: this comparison used a
        hash of exactly that identity, taken more than ``RACY_NS`` after the
        file last changed, on a filesystem whose identities are trusted. The
        commit then need not read the bytes again to check them."""
        entry = self.used["live"].get(rel)
        return (
            isinstance(entry, list) and len(entry) == 7 and entry[:5] == identity(st) and entry[6] == digest
            and isinstance(entry[5], int) and st.st_ctime_ns < entry[5] - RACY_NS and self.trust_live()
        )

    def trust_live(self) -> bool:
        if self._trust_live is None:
            self._trust_live = self._live_trusted()
        return self._trust_live

    def save(self) -> None:
        """Keep what the last comparison used (so the file never grows past
        the transaction's touched paths); the objects' entries too when the
        bucket could not be asked."""
        used = self.used
        if self.objects is None or not self.objects.answered:
            # The bucket was not asked (or did not answer): no entry was tried, none is dropped.
            used = {**used, OBJECTS: {**self.known[OBJECTS], **used[OBJECTS]}}
        if self.path is None or not (self.changed or used != self.known):
            return
        from cowfs import durable

        data = json.dumps(used, separators=(",", ":")).encode()
        try:
            durable.save_new(self.path, iter([data]), mode=0o600, sync=False)
        except OSError:
            pass  # a cache: a full disk here must not fail the diff


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()
