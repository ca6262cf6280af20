"""Fault hooks between the steps of commit, recovery and rollback.

``ROSCOE_FAULT=STEP`` (or ``STEP#N``: the Nth time STEP is reached in the
process) stops the process there as a crash would: ``os._exit(70)`` by
default, a real SIGKILL with ``ROSCOE_FAULT_ACTION=kill``. Tests use it to
crash at every step and check that recovery leaves the live tree all-old or
all-new. The steps are in STEPS; commit and rollback share them.
``ROSCOE_FAULT_ACTION=stop`` stops the process there instead (SIGSTOP), for
a test to interleave two processes exactly and SIGCONT them in turn.
"""

from __future__ import annotations

import os
import signal

FAULT_EXIT = 70

STEPS = (
    "before-images",   # conflict check done, nothing written anywhere
    "after-images",    # pre- and post-images durable in the blob store
    "after-intent",    # the changes journaled, state committing
    "apply",           # after each change to the live tree (use apply#N)
    "before-record",   # the live tree is all new and synced
    "after-record",    # committed; staging not yet removed
    "recover-start",   # recovery found an interrupted commit, nothing undone yet
    "undo",            # after each change put back, by recovery or a failed apply
    "before-reopen",   # everything put back; the transaction not yet reopened
    "lock-busy",       # a root lock was found held by another process (once per lock)
    "abort-discarded", # an abort discarded the staged layer; the abort is not yet journaled
)

_seen: dict[str, int] = {}


def checkpoint(step: str) -> None:
    want = os.environ.get("ROSCOE_FAULT")
    if not want:
        return
    _seen[step] = _seen.get(step, 0) + 1
    name, _, nth = want.partition("#")
    if name != step or (nth and int(nth) != _seen[step]):
        return
    action = os.environ.get("ROSCOE_FAULT_ACTION")
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(FAULT_EXIT)
