"""Telling a person that a commit waits for approval: the ``[approval] notify``
command, run with the approval request as JSON on its stdin.

It is bounded (killed with its whole process group after ``notify_timeout``
seconds) and never fatal: whatever happens is reported and journaled, and the
transaction's data is not touched either way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Outcome(namedtuple("_Outcome", "ok detail")):
    """Whether the notify command took the request, and what happened, in words."""

    __slots__ = ()
    ok: bool
    detail: str


def send(command: tuple[str, ...], request: dict[str, Any], timeout: float) -> Outcome:
    """Run ``command`` with ``request`` on stdin; its stdout is discarded, the
    end of its stderr is kept for the report."""
    name = command[0]
    data = json.dumps(request, indent=2, ensure_ascii=True).encode() + b"\n"
    try:
        proc = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True,
        )
    except FileNotFoundError:
        return Outcome(False, f"notify command {name} not found")
    except OSError as e:
        return Outcome(False, f"notify command {name} cannot be run: {e.strerror or e}")
    try:
        _, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return Outcome(False, f"notify command {name} did not finish in {timeout:g} s and was killed")
    tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
    if proc.returncode != 0:
        why = f"exited {proc.returncode}" if proc.returncode > 0 else f"was killed by signal {-proc.returncode}"
        return Outcome(False, f"notify command {name} {why}" + (f": {tail[0][:200]}" if tail else ""))
    return Outcome(True, f"sent to {name}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pass
