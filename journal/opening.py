"""What every command does first: open the state dir, and recover what a
crash interrupted there (``journal.protocol.recover``) before anything else
runs. The protocol itself is imported only when a crash left something to
recover: the start-up of ``tx run``, paid on every agent call, stays light.
"""

from __future__ import annotations

from os import PathLike

from journal.workspace import Workspace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from journal.faults import Faults
    from journal.settings import Settings
    from journal.targets.base import BucketSettings


def open_workspace(
    home: str | PathLike[str] | None = None, *, roots: tuple[str | PathLike[str], ...] = (),
    settings: Settings | None = None, faults: Faults | None = None, bucket: BucketSettings | None = None,
    aborting: str | None = None,
) -> Workspace:
    """The state dir ``home`` (else ``settings.home``: ``Workspace.open``; for
    ``tx abort`` of ``aborting``, ``Workspace.open_to_abort``), after
    recovery: what it undid is in ``ws.recovered``."""
    if aborting is None:
        ws = Workspace.open(home, roots=roots, settings=settings, faults=faults, bucket=bucket)
    else:
        ws = Workspace.open_to_abort(aborting, home, roots=roots, settings=settings, faults=faults, bucket=bucket)
    if not ws.leftovers():
        return ws
    from journal.protocol import recover

    try:
        ws.recovered = recover(ws)
    except BaseException:
        ws.close()
        raise
    return ws
