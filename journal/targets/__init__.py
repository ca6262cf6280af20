"""The places a change set lands, behind one interface (``base.Target``):
a local tree (``local``) and a GCS bucket (``bucket``). ``target_of`` is the
one place that picks between them; the bucket's module (and gcsfs) is only
imported for a transaction that has a bucket URL."""

from __future__ import annotations

from journal.store import TxRecord
from journal.targets.base import BucketSettings, Context, Seen, Target

__all__ = ["BucketSettings", "Context", "Seen", "Target", "target_of", "checked_url"]


def target_of(ctx: Context, tx: TxRecord) -> Target:
    """Where ``tx`` lands: its bucket when it names one, else its root."""
    if tx.target:
        from journal.targets.bucket import Bucket

        return Bucket(ctx, tx.root, tx.target)
    from journal.targets.local import LocalTree

    return LocalTree(ctx, tx.root)


def checked_url(url: str) -> str:
    """A bucket URL in canonical form, once its bucket answers (``tx begin --target``)."""
    from journal.targets.bucket import check_target

    return check_target(url)
