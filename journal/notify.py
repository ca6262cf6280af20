"""Telling people what happened to a transaction: the ``[approval] notify``
command, run with one JSON event on its stdin when an approval is requested,
and when a transaction is approved, rejected, committed or rolled back.

Every event has one shape (``payload``): ``{"kind": "roscoe.event",
"version": 1, "event": NAME, "tx", "root", "message", "user", "host",
"diff_hash", "by", "uid", "os_user", "changes"}`` plus the event's own keys.
``by`` is who did it as they named themselves (``--by``, else the login
user), ``uid``/``os_user`` who did it as the operating system knows them.

It runs after the command's locks are released, is bounded (killed with its
whole process group after ``notify_timeout`` seconds) and never fatal:
whatever happens is reported and journaled, and the transaction's data is not
touched either way.
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

    from journal.config import Config
    from journal.store import Journal, TxRecord

EVENTS = ("approval-requested", "approved", "rejected", "committed", "rolled-back")


class Outcome(namedtuple("_Outcome", "ok detail")):
    """Whether the notify command took the request, and what happened, in words."""

    __slots__ = ()
    ok: bool
    detail: str


def payload(event: str, tx: TxRecord, diff_hash: str | None, by: str | None, changes: int | None,
            *, actor: Any = None, **extra: Any) -> dict[str, Any]:
    """The JSON every notify command reads: the common keys, then ``extra``.
    ``uid`` and ``os_user`` are ``actor``'s (journal.audit.Actor: the journal's), else this process's."""
    from journal.audit import os_user

    assert event in EVENTS, event
    uid = os.getuid() if actor is None else actor.uid
    return {
        "kind": "roscoe.event", "version": 1, "event": event,
        "tx": tx.id, "root": tx.root, "message": tx.message, "user": tx.user, "host": tx.host,
        "diff_hash": diff_hash, "by": by, "uid": uid, "os_user": os_user(uid), "changes": changes,
        **extra,
    }


def announce(journal: Journal, config: Config, event: dict[str, Any]) -> str | None:
    """Send ``event`` to the config's notify command, if it has one, and
    journal how that went (a ``notify`` audit event). Returns what to tell the
    person when it could not be sent, else None. (An approval request is
    journaled with its request instead: ``journal.approval.request``.)"""
    command = config.approval.notify
    if command is None:
        return None
    outcome = send(command, event, config.approval.notify_timeout)
    journal.log_event(event["tx"], "notify", {
        "event": event["event"], "notify": list(command), "notified": outcome.ok, "outcome": outcome.detail})
    if outcome.ok:
        return None
    return f"the {event['event']} event of tx {event['tx']} could not be sent: {outcome.detail}"


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
