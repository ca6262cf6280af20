"""Fault hooks between the steps of commit, recovery and rollback.

A ``Faults`` object travels with the workspace (``Workspace.faults``) to
every step of the protocol, which calls ``faults.checkpoint(STEP)`` between
its steps. The default one does nothing. Tests hand in their own: in
process, a subclass whose ``checkpoint`` acts (changes the live tree, say);
through the CLI, the environment it is built from at the boundary
(``Faults.from_env``):

- ``ROSCOE_FAULT=STEP`` (or ``STEP#N``: the Nth time STEP is reached in the
  process) stops the process there as a crash would: ``os._exit(70)`` by
  default, a real SIGKILL with ``ROSCOE_FAULT_ACTION=kill``, or SIGSTOP with
  ``ROSCOE_FAULT_ACTION=stop`` (for a test to interleave two processes
  exactly and SIGCONT them in turn). Tests crash at every step and check
  that recovery leaves the live tree all-old or all-new. The steps are in
  STEPS; commit and rollback share them.
- ``ROSCOE_GCS_PAUSE=STEP`` with ``ROSCOE_GCS_PAUSE_FILE=FLAG``: at STEP a
  bucket commit creates FLAG and waits (30 s at most) until it is removed,
  so a test can act as another writer in the middle of a commit (or cut the
  network). It pauses once per step and process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping

FAULT_EXIT = 70

STEPS = (
    "before-images",   # conflict check done, nothing written anywhere
    "after-images",    # pre- and post-images durable in the blob store
    "after-intent",    # the changes journaled, state committing
    "apply",           # after each change to the live tree (use apply#N)
    "before-record",   # the live tree is all new and synced
    "before-journal-record",  # the target's own commit point passed (a bucket's manifest); not yet journaled here
    "after-record",    # committed; staging not yet removed
    "recover-start",   # recovery found an interrupted commit, nothing undone yet
    "undo",            # after each change put back, by recovery or a failed apply
    "before-reopen",   # everything put back; the transaction not yet reopened
    "lock-busy",       # a root lock was found held by another process (once per lock)
    "abort-discarded", # an abort discarded the staged layer; the abort is not yet journaled
)


class Faults:
    """Where the process stops, pauses or acts between protocol steps."""

    def __init__(
        self, step: str | None = None, *, action: str | None = None, pause: str | None = None,
        pause_file: str | None = None,
    ) -> None:
        name, _, nth = (step or "").partition("#")
        self.step, self.nth, self.action = name or None, int(nth) if nth else None, action
        self.pause_step, self.pause_file = pause, pause_file
        self._seen: dict[str, int] = {}
        self._paused: set[str] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Faults:
        return cls(env.get("ROSCOE_FAULT") or None, action=env.get("ROSCOE_FAULT_ACTION"),
                   pause=env.get("ROSCOE_GCS_PAUSE") or None, pause_file=env.get("ROSCOE_GCS_PAUSE_FILE"))

    def checkpoint(self, step: str) -> None:
        """The protocol reached ``step``."""
        if self.step is None:
            return
        self._seen[step] = self._seen.get(step, 0) + 1
        if self.step != step or (self.nth is not None and self.nth != self._seen[step]):
            return
        if self.action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(FAULT_EXIT)

    def pause(self, step: str) -> None:
        """Wait at ``step`` while the pause file exists (see the module's doc)."""
        if self.pause_step != step or step in self._paused or not self.pause_file:
            return
        self._paused.add(step)
        with open(self.pause_file, "w"):
            pass
        deadline = time.monotonic() + 30
        while os.path.exists(self.pause_file) and time.monotonic() < deadline:
            time.sleep(0.05)


NONE = Faults()
