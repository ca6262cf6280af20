"""The audit trail: an append-only, hash-chained table of everything done.

Every begin, run, diff shown, approval, refusal, commit, abort, rollback and
recovery is one row of ``audit`` with its time, user, uid, host and pid. Each
row's ``hash`` is SHA-256 over its own fields and the previous row's hash, and
``audit_head`` keeps the newest (seq, hash), so ``check`` finds a row that was
edited, deleted, reordered or cut off the end. SQLite triggers refuse UPDATE
and DELETE on ``audit``, and any move of ``audit_head`` but one event forward:
editing either takes a deliberate DROP TRIGGER, which the chain then shows.
Events cut off the end together with a head rewound to match are found where
the journal keeps other traces of them (``Journal.audit_problems``). The chain cannot stop someone who can rewrite the whole
journal and recompute every hash; ship the head hash (``roscoe audit --json``
prints it) off the machine to make that detectable too.

Rows are written inside the same SQLite transaction as the change they record,
so an event exists exactly when its change does.
"""

from __future__ import annotations

import json
import os
import time
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    tx TEXT,
    kind TEXT NOT NULL,
    user TEXT NOT NULL,
    uid INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_tx ON audit (tx);
CREATE INDEX audit_time ON audit (time_ns);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""


# The head moves forward one event at a time, onto the event it names, and is
# never deleted: rewinding it to hide events cut off the end takes a deliberate
# DROP TRIGGER, as editing the trail does.
HEAD_TRIGGERS = """
CREATE TRIGGER audit_head_insert_once BEFORE INSERT ON audit_head
WHEN (SELECT count(*) FROM audit_head) > 0
  OR NEW.hash IS NOT (SELECT hash FROM audit WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END;
CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
WHEN NEW.id IS NOT OLD.id OR NEW.seq IS NOT OLD.seq + 1
  OR NEW.hash IS NOT (SELECT hash FROM audit WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END;
CREATE TRIGGER audit_head_kept BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END;
"""


def _sha256(data: bytes) -> str:
    try:
        from _sha256 import sha256  # the builtin module: hashlib loads OpenSSL (+5 ms a run)
    except ImportError:  # pragma: no cover - CPython without it
        from hashlib import sha256
    return sha256(data).hexdigest()


class Actor(namedtuple("_Actor", "user uid host pid")):
    """Who does what: login name, real uid, host name and process id."""

    __slots__ = ()

    @classmethod
    def current(cls, user: str | None = None, caller: Any = None) -> Actor:
        """This process's user; or, in ``roscoe serve``, the client it serves
        (``caller``: a journal.roles.Caller, from the socket's peer credentials)."""
        if caller is not None:
            return cls(caller.user, caller.uid, os.uname().nodename, caller.pid)
        return cls(login_name(user), os.getuid(), os.uname().nodename, os.getpid())


def login_name(user: str | None = None) -> str:
    """The login user: ``user`` (``Settings.user``: $LOGNAME or $USER), else
    the password database's name for the uid."""
    if user:
        return user
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def os_user(uid: int | None = None) -> str:
    """The password database's name for ``uid`` (default: the real uid; not the environment's)."""
    import pwd

    uid = os.getuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class Event(namedtuple("_Event", "seq time_ns tx kind user uid host pid detail prev hash")):
    """One row of the audit trail; ``detail`` is the JSON text exactly as hashed."""

    __slots__ = ()
    seq: int
    time_ns: int
    tx: str | None
    kind: str
    user: str
    uid: int
    host: str
    pid: int
    detail: str
    prev: str
    hash: str

    def expected_hash(self) -> str:
        return chain_hash(self.seq, self.time_ns, self.tx, self.kind, self.user, self.uid,
                          self.host, self.pid, self.detail, self.prev)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "time_ns": self.time_ns, "time": iso_time(self.time_ns), "tx": self.tx,
            "kind": self.kind, "user": self.user, "uid": self.uid, "host": self.host, "pid": self.pid,
            "detail": json.loads(self.detail), "prev": self.prev, "hash": self.hash,
        }


def chain_hash(*fields: object) -> str:
    return _sha256(json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode())


def iso_time(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000 // 1000:06d}Z"


def append(db: sqlite3.Connection, actor: Actor, tx: str | None, kind: str,
           detail: dict[str, Any] | None = None, *, time_ns: int | None = None) -> Event:
    """Append one event; the caller holds a write transaction (BEGIN IMMEDIATE)."""
    head = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    when = time.time_ns() if time_ns is None else time_ns
    text = json.dumps(detail or {}, ensure_ascii=True, sort_keys=True)
    digest = chain_hash(seq, when, tx, kind, actor.user, actor.uid, actor.host, actor.pid, text, prev)
    db.execute(
        "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (seq, when, tx, kind, actor.user, actor.uid, actor.host, actor.pid, text, prev, digest),
    )
    if head:
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
    else:
        db.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)", (seq, digest))
    return Event(seq, when, tx, kind, actor.user, actor.uid, actor.host, actor.pid, text, prev, digest)


def events(db: sqlite3.Connection, tx: str | None = None, since_ns: int | None = None) -> list[Event]:
    sql, args = "SELECT * FROM audit", []
    where = []
    if tx is not None:
        where.append("tx = ?")
        args.append(tx)
    if since_ns is not None:
        where.append("time_ns >= ?")
        args.append(since_ns)
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [Event(*row) for row in db.execute(sql + " ORDER BY seq", args)]


def head(db: sqlite3.Connection) -> tuple[int, str] | None:
    row = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    return (row[0], row[1]) if row else None


def check(db: sqlite3.Connection) -> list[tuple[int | None, str]]:
    """Every break in the chain as (seq, what is wrong); empty when intact."""
    problems: list[tuple[int | None, str]] = []
    expected_seq, prev = 1, GENESIS
    by_seq = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    for row in by_seq:
        event = Event(*row)
        if event.seq != expected_seq:
            gone = (f"event {expected_seq} is" if event.seq == expected_seq + 1
                    else f"events {expected_seq} to {event.seq - 1} are")
            problems.append((event.seq, f"audit {gone} missing (deleted)"))
        elif event.prev != prev:
            problems.append((event.seq, f"audit event {event.seq} does not follow event {event.seq - 1}"
                                        " (reordered, or the event before it was replaced)"))
        if event.hash != event.expected_hash():
            problems.append((event.seq, f"audit event {event.seq} ({event.kind}) was edited:"
                                        " its hash does not match its contents"))
        expected_seq, prev = event.seq + 1, event.hash
    top = head(db)
    last = (by_seq[-1][0], by_seq[-1][10]) if by_seq else None
    if top != last:
        if top is None:
            problems.append((None, "the audit head is missing"))
        elif last is None or top[0] > last[0]:
            problems.append((top[0], f"the audit trail was truncated: its head is event {top[0]},"
                                     f" the last event left is {last[0] if last else 'none'}"))
        else:
            problems.append((top[0], f"the audit head (event {top[0]}, {top[1][:12]}) does not match"
                                     f" the last event ({last[0]}, {last[1][:12]})"))
    return problems


def parse_since(text: str, now_ns: int | None = None) -> int:
    """``--since``: an ISO 8601 date or time (UTC unless it names an offset),
    or an age such as ``90s``, ``30m``, ``12h``, ``7d``. Returns ns since the epoch."""
    import datetime
    import re

    from cowfs.errors import UsageError

    now = time.time_ns() if now_ns is None else now_ns
    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if age:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[age.group(2)]
        return _clamp(now - int(float(age.group(1)) * unit * 1_000_000_000))
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(detail=f"--since {text!r}: expected an ISO 8601 time (2026-11-27 or"
                                " 2026-11-27T09:30:00Z) or an age like 30m, 12h, 7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return _clamp(int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000)


def _clamp(ns: int) -> int:
    """Into SQLite's 64-bit INTEGER: a time past 2262 is later than every event."""
    return max(-(1 << 63), min(ns, (1 << 63) - 1))
