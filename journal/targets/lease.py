"""The lease of a bucket target: one object beside the prefix
(``Layout.lease``) that makes the commits of one prefix from many machines
take turns, GCS's generation preconditions being the lock.

It is created with ``ifGenerationMatch=0`` and names its holder, its
transaction and an expiry; it is renewed while a long commit runs; a lease
past its expiry (its holder is gone), or held by the very transaction being
recovered, is taken over by a generation-matched rewrite, after whatever
its holder left in flight is settled (``settle``: ``Bucket.settle_intent``). It is not
released while an intent of this commit is still in flight: it expires,
and whoever takes it settles the intent.
"""

from __future__ import annotations

import os
import time

from cowfs.gcs import GcsError, PreconditionFailed
from journal.errors import CommitFailed, LeaseBusy, LeaseLost
from journal.store import TxRecord
from journal.targets.base import Holding

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from cowfs.gcs import GcsTarget
    from journal.store import Journal
    from journal.targets.base import BucketSettings


class Lease(Holding):
    """The root's lease object in the bucket (``Layout.lease``), held by one
    commit at a time. Taking over from a holder that is gone (its lease
    expired, or it was this transaction's own crashed commit) first settles
    what that holder left in flight (``settle_intent``)."""

    def __init__(
        self, target: GcsTarget, key: str, journal: Journal, settings: BucketSettings, tx: TxRecord | None,
        settle: Callable[[str], str | None],
    ) -> None:
        self.target, self.key, self.journal, self.tx, self.settle = target, key, journal, tx, settle
        # A rollback's own record exists only from its intent on: audit under the one it undoes.
        # (No transaction: `roscoe recover --target`, which only settles what another left.)
        self.audit_tx = None if tx is None else tx.rolls_back if tx.state == "committing" and tx.rolls_back else tx.id
        self.ttl, self.wait = settings.lease_seconds, settings.lease_wait
        self.generation = 0
        self.taken_at = 0.0
        self.clean = True  # nothing of this commit left in flight in the bucket: the lease may go
        self.with_release: list[Any] = []  # requests to make in the same round as the release

    def holder(self) -> dict[str, Any]:
        return {"owner": f"{os.uname().nodename}.{os.getpid()}", "tx": self.tx.id if self.tx else None,
                "root": self.tx.root if self.tx else None,
                "url": self.target.url, "expires_ns": time.time_ns() + int(self.ttl * 1e9)}

    def _write(self, if_generation: int) -> int:
        return int(self.target.run(self.target.write_json(
            self.key, self.holder(), if_generation=if_generation, metadata={"roscoe_lease": "1"})))

    def read(self) -> tuple[dict[str, Any], int]:
        held, generation = self.target.run(self.target.read_json(self.key))
        return (held if isinstance(held, dict) else {}), generation

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        takeover = None
        while True:
            try:
                self.generation = self._write(0)
                break
            except PreconditionFailed:
                pass
            held, generation = self.read()
            if generation == 0:
                continue
            expired = int(held.get("expires_ns") or 0) < time.time_ns()
            # Our own crashed commit (recovery), or a holder past its expiry: take over.
            if (self.tx is not None and held.get("tx") == self.tx.id) or expired:
                try:
                    self.generation = self._write(generation)
                    takeover = held
                    break
                except PreconditionFailed:
                    continue
            if time.monotonic() >= deadline:
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(held.get("expires_ns") or 0) / 1e9))
                raise LeaseBusy(url=self.target.url, owner=held.get("owner", "another roscoe"), until=until)
            time.sleep(0.2)
        self.taken_at = time.monotonic()
        self.journal.log_event(self.audit_tx, "gcs-lease-acquire", {
            "target": self.target.url, "lease": self.key, "generation": self.generation, "took_over": takeover})
        gone = (takeover or {}).get("tx")
        self.settled = None
        if isinstance(gone, str) and (self.tx is None or gone != self.tx.id):
            problem = self.settle(gone)
            self.settled = gone
            if problem is not None:
                self.clean = False
                raise CommitFailed(tx=self.tx.id if self.tx else gone, path=self.target.url, reason=(
                    f"the commit of {gone} that held the lease was interrupted and cannot be settled yet"
                    f" ({problem})"), outcome="nothing of this transaction was written: run `roscoe recover`")

    def renew(self) -> None:
        """Extend the lease when a third of it is gone; lost to another holder: LeaseLost."""
        if time.monotonic() - self.taken_at < self.ttl / 3:
            return
        try:
            self.generation = self._write(self.generation)
        except PreconditionFailed:
            held, _ = self.read()
            raise LeaseLost(url=self.target.url, owner=held.get("owner", "another roscoe")) from None
        self.taken_at = time.monotonic()

    def release(self) -> None:
        if not self.clean:
            return  # an intent is still in flight: the lease expires, and whoever takes it settles the intent
        target = self.target
        try:  # (with whatever else can go in the same round: a superseded intent)
            target.run(target.gather([lambda: target.delete(self.key, if_generation=self.generation)]
                                     + self.with_release))
        except (GcsError, PreconditionFailed, OSError):
            return  # it expires on its own (and whoever takes it over drops the intent)
        self.journal.log_event(self.audit_tx, "gcs-lease-release", {"target": self.target.url, "generation": self.generation})
