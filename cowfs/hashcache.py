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

RACY_NS = 2_000_000_000
SIDES = ("live", "staged")


class HashCache:
    def __init__(self, path: str | None, live_trusted: Callable[[], bool]) -> None:
        self.path = path
        self._live_trusted = live_trusted
        self._trust_live: bool | None = None
        self.known: dict[str, dict[str, list[int | str]]] = {side: {} for side in SIDES}
        self.used: dict[str, dict[str, list[int | str]]] = {side: {} for side in SIDES}
        self.changed = False

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
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return cache

    def digest(self, side: str, rel: str, st: os.stat_result, read: Callable[[], str]) -> str:
        """The hash of the ``side`` file ``rel`` whose lstat is ``st``:
        remembered when it is safe to, else ``read()``."""
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
        the transaction's touched paths)."""
        if self.path is None or not (self.changed or self.used != self.known):
            return
        from cowfs import durable

        data = json.dumps(self.used, separators=(",", ":")).encode()
        try:
            durable.save_new(self.path, iter([data]), mode=0o600, sync=False)
        except OSError:
            pass  # a cache: a full disk here must not fail the diff
