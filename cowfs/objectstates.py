"""The objects behind a mounted bucket root's live files, as the bucket says
they are now: what ``cowfs.hashcache`` remembers a live file's hash by (its
object's key and generation) instead of the inode and times a FUSE mount
makes up.

The bucket is asked only once a comparison needs it, and then only about
the paths that comparison touches: all of them at once, a GET per key (many
in flight), never a listing of their directories (one directory of a
100,000-object prefix would be a hundred pages of listing for ten keys). A
live file below a deleted directory, which the comparison did not name, is
found by listing its own directory once: every file in it is about to be
hashed anyway. When the bucket cannot be reached, no state is known and
every live file is read through the mount, as without this module.
"""

from __future__ import annotations

from collections.abc import Iterable

from cowfs.errors import GcsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.gcs import GcsTarget


class ObjectStates:
    """The objects of ``gs://BUCKET/PREFIX`` (``url``) behind the paths
    ``wanted`` (relative to the mounted root) and below them."""

    def __init__(self, url: str, wanted: Iterable[str], target: GcsTarget | None = None) -> None:
        self.url = url
        self.wanted = set(wanted)
        self._target = target
        self.asked = False
        self.unreachable: str | None = None
        self._states: dict[str, dict[str, Any] | None] = {}
        self._listed: set[str] = set()

    @property
    def answered(self) -> bool:
        """Whether the bucket was asked and answered."""
        return self.asked and self.unreachable is None

    @property
    def target(self) -> GcsTarget:
        if self._target is None:
            from cowfs.gcs import GcsTarget

            self._target = GcsTarget(self.url)
        return self._target

    def state(self, rel: str) -> dict[str, Any] | None:
        """The object of the live file ``rel`` as ``cowfs.gcs.state_of`` gives
        it, with its ``key``; None when there is none or the bucket cannot say."""
        if not _encodable(rel):
            return None
        try:
            if not self.asked:
                self.asked = True
                self._ask([p for p in self.wanted if _encodable(p)])
            key = self.target.key(rel)
            if key not in self._states:
                self._list(key.rpartition("/")[0])
        except (GcsError, OSError) as e:
            self.unreachable = getattr(e, "message", None) or str(e)
            return None
        if self.unreachable is not None:
            return None
        found = self._states.get(key)
        return None if found is None else {**found, "key": key}

    def _ask(self, rels: list[str]) -> None:
        target = self.target
        keys = sorted({target.key(p) for p in rels})
        if keys:
            found = target.run(target.gather([lambda k=k: target.stat(k) for k in keys]))
            self._states.update(zip(keys, found))

    def _list(self, directory: str) -> None:
        if self.unreachable is not None or directory in self._listed:
            return
        self._listed.add(directory)
        items, _ = self.target.run(self.target.list_dir(directory))
        self._states.update(items)


def _encodable(rel: str) -> bool:
    """Whether ``rel`` can name an object (a path that is not UTF-8 cannot)."""
    try:
        rel.encode()
    except UnicodeEncodeError:
        return False
    return True
