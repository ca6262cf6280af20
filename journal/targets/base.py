"""The Target interface: what the commit protocol (``journal.protocol``)
needs of the place a change set lands.

The protocol is written once; a target answers for the steps whose work
depends on where the bytes live (a local tree: dir fds, hard links, renames,
syncfs; a bucket: generation-matched API calls and a lease object):

- ``held``: the lock beyond the root's own (a bucket's lease);
- ``conflicts``: a check of the live state beyond the recorded bases;
- ``images``: step 4, the pre-images kept before anything changes;
- ``apply`` and ``undo``: step 6, and putting everything back, state based;
- ``failure``: what a failed apply is, once undone (or not);
- ``seen``, ``rollback_images``: what a rollback finds and keeps;
- ``verify``: whether the live state is still what a commit wrote.

Targets do not know the workspace: they get the journal, the state dir and
the fault hooks (a ``Context``).
"""

from __future__ import annotations

import abc
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from cowfs.changeset import ChangeSet
from cowfs.entry import Entry
from cowfs.errors import RoscoeError
from journal.errors import Conflict
from journal.faults import Faults
from journal.store import ChangeRow, Journal, TxRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.hashcache import HashCache
    from journal.home import Home
    from cowfs.stagers import Stager
    from journal.blobs import BlobStore

Progress = Callable[[int, int], None]
SameBytes = Callable[..., bool]


# What cowfs.gcsapi.GcsSettings.from_env reads.
API_SETTINGS = ("ROSCOE_GCS_CONCURRENCY", "ROSCOE_GCS_RETRIES", "ROSCOE_GCS_TIMEOUT", "ROSCOE_GCS_RESUMABLE_OVER",
                "ROSCOE_GCS_CHUNK", "ROSCOE_GCS_FAULT")


class BucketSettings(namedtuple("_BucketSettings", "lease_seconds lease_wait batch api", defaults=(60.0, 60.0, 256, ()))):
    """How a bucket commit holds its lease (seconds it lasts, seconds to wait
    for another holder), how many object ops it journals per batch, and how
    it talks to the API (``api``: the ROSCOE_GCS_* settings, read into a
    ``cowfs.gcsapi.GcsSettings`` on first use, so that a run of a local root
    never imports the GCS client)."""

    __slots__ = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BucketSettings:
        return cls(float(env.get("ROSCOE_GCS_LEASE_SECONDS") or 60), float(env.get("ROSCOE_GCS_LEASE_WAIT") or 60),
                   int(env.get("ROSCOE_GCS_BATCH") or 256),
                   tuple((k, env[k]) for k in API_SETTINGS if k in env))

    @property
    def gcs(self) -> Any:
        from cowfs.gcsapi import GcsSettings

        return GcsSettings.from_env(dict(self.api))


class Context(namedtuple("_Context", "home journal faults bucket", defaults=(BucketSettings(),))):
    """What a target works with: the state dir (``Home``), its journal, the
    fault hooks of this process, and the settings of bucket commits."""

    __slots__ = ()
    home: Home
    journal: Journal
    faults: Faults
    bucket: BucketSettings

    @property
    def blobs(self) -> BlobStore:
        from journal.images import blob_store

        return blob_store(self.home.path)


class Seen(namedtuple("_Seen", "live moved blocked changes")):
    """What a rollback of a committed transaction finds: the live state of
    each path it wrote (target-specific), the paths that no longer hold what
    it wrote (a conflict without --force), the paths it would have to touch
    that it never wrote (always a conflict), and the change set that puts
    back the old states."""

    __slots__ = ()
    live: Any
    moved: list[str]
    blocked: list[str]
    changes: ChangeSet


class Holding:
    """A lock beyond the root's, held for the length of a commit: nothing to
    keep alive for a local tree."""

    def renew(self) -> None:
        pass


class Target(abc.ABC):
    """Where the change sets of one root land."""

    def __init__(self, ctx: Context, root: str, url: str | None = None) -> None:
        self.ctx, self.root, self.url = ctx, root, url

    def logged(self, conflict: Conflict) -> Conflict:
        """Journal a conflict in the audit trail, and hand it back to be raised."""
        self.ctx.journal.log_event(conflict.fields.get("tx"), "conflict", {"error": conflict.message})  # type: ignore[arg-type]
        return conflict

    # -- a run ends ---------------------------------------------------------------

    def base_generations(self, paths: list[str]) -> dict[str, dict[str, int]] | None:
        """What a bucket commit is conditional on, recorded when a run ends; None for a local tree."""
        return None

    def same_bytes_back(self, rows: list[ChangeRow]) -> SameBytes | None:
        """For ``when_deleting``: whether a move a rollback of ``rows`` makes puts
        back exactly the bytes it removes; None where that cannot be read."""
        return None

    # -- commit -------------------------------------------------------------------

    @contextmanager
    def held(self, tx: TxRecord) -> Iterator[Holding]:
        """Step 1, after the root's lock: whatever else one committer at a time needs."""
        yield Holding()

    def conflicts(self, tx: TxRecord, changes: ChangeSet) -> list[str]:
        """Step 3, beyond the bases: paths whose live state moved since the run."""
        return []

    def unreadable_conflicts(self, tx: TxRecord) -> list[str]:
        """Paths known to have moved when the live tree could not be read."""
        return []

    @abc.abstractmethod
    def images(
        self, tx: TxRecord, stager: Stager | None, changes: ChangeSet, hashes: HashCache,
    ) -> AbstractContextManager[list[ChangeRow]]:
        """Step 4: the journal rows of ``changes``, with every image an undo
        needs durable in the blob store; around the rest of the commit."""

    @abc.abstractmethod
    def apply(
        self, tx: TxRecord, rows: list[ChangeRow], holding: Holding, *, known: dict[str, Any] | None,
        stager: Stager | None, progress: Progress | None,
    ) -> None:
        """Step 6: make every path of ``rows`` its new state (new bytes from
        ``stager``, or from the blob store when there is none)."""

    def record(self, tx: TxRecord, diff_hash: str) -> None:
        """Step 7 on the target, just before the journal's commit record: the
        commit point where other machines can see it (a bucket's manifest)."""

    def landed(self, tx: TxRecord) -> bool:
        """Whether an interrupted commit of ``tx`` reached its commit point on
        the target (then recovery finishes it instead of undoing it)."""
        return False

    failures: tuple[type[BaseException], ...] = (OSError, RoscoeError)

    @abc.abstractmethod
    def failure(self, tx: TxRecord, error: BaseException, problem: str | None) -> RoscoeError:
        """What a failed apply is, once ``undo`` put things back (``problem``
        None) or could not (why)."""

    @abc.abstractmethod
    def undo(self, tx: TxRecord, rows: list[ChangeRow]) -> str | None:
        """Put every path of ``rows`` back to its old state, state based (so it
        can run again after a crash). None when done, else why not yet."""

    # -- rollback -----------------------------------------------------------------

    @abc.abstractmethod
    def seen(self, committed: TxRecord, written: list[ChangeRow]) -> AbstractContextManager[Seen]:
        """What a rollback of ``committed`` finds, under the root's lock."""

    def peek(self, committed: TxRecord, written: list[ChangeRow]) -> Seen:
        """``seen``, without locks and without keeping anything: for a preview."""
        with self.seen(committed, written) as seen:
            return seen

    @abc.abstractmethod
    def rollback_images(
        self, tx: TxRecord, written: list[ChangeRow], seen: Seen,
    ) -> AbstractContextManager[tuple[list[ChangeRow], str]]:
        """Step 4 of a rollback: its rows (new states: the old ones ``written``
        kept) with the images of what it replaces, and their diff_hash."""

    # -- verify -------------------------------------------------------------------

    @abc.abstractmethod
    def verify(self, tx: TxRecord, wrote: dict[str, Entry | None]) -> list[tuple[str | None, str]]:
        """Whether each path is still what ``tx`` wrote: (path, problem) pairs."""
