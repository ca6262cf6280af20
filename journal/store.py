"""The SQLite journal: ``$ROSCOE_HOME/journal.db``, its schema and its rows.

WAL mode with ``synchronous=FULL`` (a committed row survives power loss); the
schema version is ``PRAGMA user_version`` and is migrated forward on open.
Paths are stored as BLOBs of their bytes so names that are not UTF-8 survive.
"""

from __future__ import annotations

import json
import os
try:
    # The C module itself: the sqlite3 package around it adds only the default
    # datetime adapters, which the journal never uses, and importing datetime
    # for them cost about 2 ms of every tx run.
    import _sqlite3 as sqlite3
except ImportError:  # a Python that names its module otherwise: the same API
    import sqlite3  # type: ignore[no-redef]
import time
from collections import namedtuple
from collections.abc import Iterator

from cowfs.entry import Entry
from cowfs.errors import RoscoeError, StateDirError
from cowfs.paths import plain
from journal import audit
from journal.audit import SCHEMA as AUDIT_SCHEMA
from journal.errors import JournalCorrupt, NewerJournal
from journal.home import FULL, Home, exhausted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 6

SCHEMA = [
    # version 1
    """
    CREATE TABLE transactions (
        id TEXT PRIMARY KEY,
        root BLOB NOT NULL,
        message TEXT,
        state TEXT NOT NULL CHECK (state IN ('open', 'committing', 'committed', 'aborted')),
        backend TEXT,
        user TEXT,
        host TEXT,
        created_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL
    );
    CREATE INDEX transactions_created ON transactions (created_ns);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        tx TEXT NOT NULL REFERENCES transactions (id),
        argv TEXT NOT NULL,
        cwd BLOB NOT NULL,
        backend TEXT NOT NULL,
        started_ns INTEGER NOT NULL,
        ended_ns INTEGER,
        exit_code INTEGER,
        diff_hash TEXT,
        changes INTEGER
    );
    CREATE INDEX runs_tx ON runs (tx);
    CREATE TABLE bases (
        tx TEXT NOT NULL REFERENCES transactions (id),
        path BLOB NOT NULL,
        entry TEXT,
        PRIMARY KEY (tx, path)
    );
    """,
    # version 2: the commit protocol. `changes` is the write-ahead intent: every
    # path with its before and after state and the blobs of their bytes.
    """
    ALTER TABLE transactions ADD COLUMN rolls_back TEXT REFERENCES transactions (id);
    ALTER TABLE transactions ADD COLUMN committed_ns INTEGER;
    ALTER TABLE transactions ADD COLUMN diff_hash TEXT;
    ALTER TABLE transactions ADD COLUMN images_dropped INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX transactions_state ON transactions (state);
    CREATE TABLE changes (
        tx TEXT NOT NULL REFERENCES transactions (id),
        seq INTEGER NOT NULL,
        path BLOB NOT NULL,
        status TEXT NOT NULL,
        old TEXT,
        new TEXT,
        old_blob TEXT,
        new_blob TEXT,
        PRIMARY KEY (tx, seq)
    );
    CREATE INDEX changes_path ON changes (path);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time_ns INTEGER NOT NULL,
        tx TEXT,
        kind TEXT NOT NULL,
        detail TEXT
    );
    """,
    # version 3: the hash-chained audit trail (journal.audit; the version 2
    # events move into it) and approvals bound to a diff hash.
    AUDIT_SCHEMA + """
    CREATE TABLE approvals (
        id INTEGER PRIMARY KEY,
        tx TEXT NOT NULL REFERENCES transactions (id),
        kind TEXT NOT NULL CHECK (kind IN ('requested', 'approved')),
        diff_hash TEXT NOT NULL,
        approver TEXT,
        time_ns INTEGER NOT NULL,
        after_run INTEGER NOT NULL,
        notified INTEGER
    );
    CREATE INDEX approvals_tx ON approvals (tx);
    CREATE TRIGGER approvals_append_only_update BEFORE UPDATE ON approvals
    BEGIN SELECT RAISE(ABORT, 'approvals are append-only'); END;
    CREATE TRIGGER approvals_append_only_delete BEFORE DELETE ON approvals
    BEGIN SELECT RAISE(ABORT, 'approvals are append-only'); END;
    """,
    # version 4: GCS targets (journal.gcs_commit). `target` is gs://BUCKET/PREFIX
    # for a root committed through the API; `bases.generations` the object
    # generations seen when the last run ended, {key: generation, 0: absent};
    # `changes.generation` the objects each change rewrites, with their old
    # and new states; `changes.new_generation` {key: generation written, 0:
    # deleted}, journaled as each batch of conditional ops completes.
    """
    ALTER TABLE transactions ADD COLUMN target TEXT;
    ALTER TABLE bases ADD COLUMN generations TEXT;
    ALTER TABLE changes ADD COLUMN generation TEXT;
    ALTER TABLE changes ADD COLUMN new_generation TEXT;
    """,
    # version 5: the config in force when a transaction began (journal.rules),
    # and an audit head that only moves forward, one event at a time, onto
    # the hash of the event it names (journal.audit).
    """
    ALTER TABLE transactions ADD COLUMN rules TEXT;
    """ + audit.HEAD_TRIGGERS,
    # version 6: `tx reject` (journal.approval). A CHECK cannot be altered, so
    # the table is rebuilt, rows kept, with a `reason` for rejections; its
    # append-only triggers and index are made again.
    """
    DROP TRIGGER approvals_append_only_update;
    DROP TRIGGER approvals_append_only_delete;
    DROP INDEX approvals_tx;
    CREATE TABLE approvals_v6 (
        id INTEGER PRIMARY KEY,
        tx TEXT NOT NULL REFERENCES transactions (id),
        kind TEXT NOT NULL CHECK (kind IN ('requested', 'approved', 'rejected')),
        diff_hash TEXT NOT NULL,
        approver TEXT,
        time_ns INTEGER NOT NULL,
        after_run INTEGER NOT NULL,
        notified INTEGER,
        reason TEXT
    );
    INSERT INTO approvals_v6 (id, tx, kind, diff_hash, approver, time_ns, after_run, notified)
        SELECT id, tx, kind, diff_hash, approver, time_ns, after_run, notified FROM approvals ORDER BY id;
    DROP TABLE approvals;
    ALTER TABLE approvals_v6 RENAME TO approvals;
    CREATE INDEX approvals_tx ON approvals (tx);
    CREATE TRIGGER approvals_append_only_update BEFORE UPDATE ON approvals
    BEGIN SELECT RAISE(ABORT, 'approvals are append-only'); END;
    CREATE TRIGGER approvals_append_only_delete BEFORE DELETE ON approvals
    BEGIN SELECT RAISE(ABORT, 'approvals are append-only'); END;
    """,
]


def _nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script``, split where SQLite says one is complete
    (a trigger body holds semicolons of its own)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()


def now_ns() -> int:
    return time.time_ns()


def _blob(path: str) -> bytes:
    return os.fsencode(path)


def _text(blob: bytes) -> str:
    return os.fsdecode(blob)


class TxRecord(namedtuple(
    "_TxRecord",
    "id root message state backend user host created_ns updated_ns"
    " rolls_back committed_ns diff_hash images_dropped target rules",
    defaults=(None, None, None, 0, None, None),
)):
    """One row of ``transactions``; ``rules`` the config files in force when
    it began (``journal.rules``, encoded)."""

    __slots__ = ()
    id: str
    root: str
    message: str | None
    state: str
    backend: str | None
    user: str | None
    host: str | None
    created_ns: int
    updated_ns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "tx": self.id, "state": self.state, "root": self.root, "message": self.message,
            "backend": self.backend, "user": self.user, "host": self.host,
            "created_ns": self.created_ns, "updated_ns": self.updated_ns,
            "committed_ns": self.committed_ns, "rolls_back": self.rolls_back,
            "diff_hash": self.diff_hash, "images_dropped": bool(self.images_dropped),
            "target": self.target,
        }


class RunRecord(namedtuple(
    "_RunRecord", "id tx argv cwd backend started_ns ended_ns exit_code diff_hash changes"
)):
    """One row of ``runs``: a command run in a transaction's overlay. A run
    whose roscoe was killed has an end but no exit code: it was found
    interrupted (``journal.interrupted``) at ``ended_ns``."""

    __slots__ = ()
    id: int
    tx: str
    argv: list[str]
    cwd: str
    backend: str
    started_ns: int
    ended_ns: int | None
    exit_code: int | None
    diff_hash: str | None
    changes: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": self.argv, "cwd": self.cwd, "backend": self.backend,
            "started_ns": self.started_ns, "ended_ns": self.ended_ns,
            "exit_code": self.exit_code, "interrupted": self.interrupted,
            "diff_hash": self.diff_hash, "changes": self.changes,
        }

    @property
    def interrupted(self) -> bool:
        return self.ended_ns is not None and self.exit_code is None


class ApprovalRecord(namedtuple(
    "_ApprovalRecord", "id tx kind diff_hash approver time_ns after_run notified reason", defaults=(None,),
)):
    """An approval of one diff hash (``approved``), a request for one
    (``requested``), or its rejection (``rejected``, by ``approver``, with a
    ``reason``). ``after_run`` is the newest run when it was made: a later
    run voids an approval; a rejection holds while the diff hashes the same."""

    __slots__ = ()
    id: int
    tx: str
    kind: str
    diff_hash: str
    approver: str | None
    time_ns: int
    after_run: int
    notified: int | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "diff_hash": self.diff_hash, "by": self.approver,
               "time_ns": self.time_ns, "after_run": self.after_run,
               "notified": None if self.notified is None else bool(self.notified)}
        if self.kind == "rejected":
            out["reason"] = self.reason
        return out


class ChangeRow(namedtuple(
    "_ChangeRow", "seq path status old new old_blob new_blob objects results", defaults=(None, None),
)):
    """One journaled change: a path's state before and after, and the blobs of their
    bytes; on a GCS target, the ``objects`` it rewrites and the generations
    written so far (``results``)."""

    __slots__ = ()
    seq: int
    path: str
    status: str
    old: Entry | None
    new: Entry | None
    old_blob: str | None
    new_blob: str | None
    objects: list[dict[str, Any]] | None
    results: dict[str, int] | None


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _entry(text: str | None) -> Entry | None:
    return Entry.from_json(json.loads(text)) if text else None


def _record(entry: Entry | None) -> str | None:
    return json.dumps(entry.to_json(), ensure_ascii=True) if entry is not None else None


def _tx(row: sqlite3.Row) -> TxRecord:
    return TxRecord(
        row["id"], _text(row["root"]), row["message"], row["state"], row["backend"],
        row["user"], row["host"], row["created_ns"], row["updated_ns"],
        row["rolls_back"], row["committed_ns"], row["diff_hash"], row["images_dropped"], row["target"],
        row["rules"],
    )


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        row["id"], row["tx"], json.loads(row["argv"]), _text(row["cwd"]), row["backend"],
        row["started_ns"], row["ended_ns"], row["exit_code"], row["diff_hash"], row["changes"],
    )


class Journal:
    """One connection to the journal; every write is one SQLite transaction."""

    def __init__(self, path: str, user: str | None = None, caller: Any = None) -> None:
        self.path = path
        self.home = os.path.dirname(path)
        self.actor = audit.Actor.current(user, caller)
        try:
            os.makedirs(self.home, mode=0o700, exist_ok=True)
            if not os.path.exists(path):
                # 0600 whatever the umask; SQLite gives its -wal and -shm the same mode.
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                except FileExistsError:
                    pass
                else:
                    os.fchmod(fd, 0o600)
                    os.close(fd)
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.db.row_factory = sqlite3.Row
            # Check the version before anything writes (WAL mode rewrites the header).
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self.db.close()
                raise NewerJournal(path=self.path, found=version, known=SCHEMA_VERSION)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate(version)
        except sqlite3.DatabaseError as e:
            raise self.translate(e) from e
        except OSError as e:
            if e.errno in FULL:
                raise Home(self.home).full(e.errno, "nothing was changed") from e
            raise StateDirError(home=self.home, reason=e.strerror or str(e)) from e

    def translate(self, e: sqlite3.Error) -> RoscoeError:
        text = str(e)
        # A full disk shows as SQLITE_FULL or, in WAL mode, as SQLITE_IOERR
        # (bytes or inodes: the -wal or -shm file could not be made).
        if "full" in text or (("I/O error" in text or "unable to open" in text)
                              and (_nearly_full(self.home) or exhausted(self.home)[0] == "inodes")):
            return Home(self.home).full(None, "nothing was changed")
        if "readonly" in text or "unable to open" in text:
            return StateDirError(home=self.home, reason=text)
        return JournalCorrupt(path=self.path, reason=text)

    def _migrate(self, version: int) -> None:
        if version == SCHEMA_VERSION:
            return
        with self.write():
            for number, script in enumerate(SCHEMA[version:], start=version + 1):
                for statement in _statements(script):
                    self.db.execute(statement)
                if number == 3:
                    self._start_audit()
                self.db.execute(f"PRAGMA user_version={number}")

    def _start_audit(self) -> None:
        """Move the version 2 events into the chain, then mark where the trail
        starts: transactions created before it have no begin event."""
        old = self.db.execute("SELECT time_ns, tx, kind, detail FROM events ORDER BY id").fetchall()
        for time_ns, tx, kind, detail in old:
            before = audit.Actor("unknown (before the audit trail)", -1, "", 0)
            audit.append(self.db, before, tx, kind, json.loads(detail or "{}"), time_ns=time_ns)
        self.db.execute("DROP TABLE events")
        now = now_ns()
        audit.append(self.db, self.actor, None, "audit-start", {"since_ns": now, "migrated_events": len(old)}, time_ns=now)

    def write(self) -> _WriteTx:
        return _WriteTx(self)

    def close(self) -> None:
        self.db.close()

    # -- transactions ---------------------------------------------------------

    def insert_tx(self, tx: TxRecord) -> None:
        with self.write():
            self._insert_tx(tx)

    def _insert_tx(self, tx: TxRecord) -> None:
        begun = {"root": tx.root, "message": tx.message, "rolls_back": tx.rolls_back,
                 "tx_user": tx.user, "tx_host": tx.host}
        if tx.target:
            begun["target"] = tx.target
        if tx.rules is not None:
            from journal.rules import decode

            begun["config"] = [s.to_event() for s in decode(tx.rules) or []]
        self.event(tx.id, "begin", begun)
        self.db.execute(
            "INSERT INTO transactions (id, root, message, state, backend, user, host, created_ns,"
            " updated_ns, rolls_back, target, rules) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (tx.id, _blob(tx.root), tx.message, tx.state, tx.backend, tx.user, tx.host,
             tx.created_ns, tx.updated_ns, tx.rolls_back, tx.target, tx.rules),
        )

    def get_tx(self, tx_id: str) -> TxRecord | None:
        row = self.db.execute("SELECT * FROM transactions WHERE id = ?", (tx_id,)).fetchone()
        return _tx(row) if row else None

    def match_tx(self, prefix: str) -> list[str]:
        # GLOB, not LIKE: ids are hex, and an id prefix must not act as a pattern.
        if not prefix or any(ch in prefix for ch in "*?["):
            return []
        rows = self.db.execute(
            "SELECT id FROM transactions WHERE id GLOB ? ORDER BY id LIMIT 10", (prefix + "*",)
        )
        return [r[0] for r in rows]

    def list_tx(self, state: str | None = None) -> list[TxRecord]:
        sql = "SELECT * FROM transactions"
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state = ?"
            args = (state,)
        rows = self.db.execute(sql + " ORDER BY created_ns DESC, id DESC", args)
        return [_tx(r) for r in rows]

    def set_state(self, tx_id: str, state: str) -> None:
        with self.write():
            self.event(tx_id, "abort" if state == "aborted" else f"state-{state}")
            self.db.execute(
                "UPDATE transactions SET state = ?, updated_ns = ? WHERE id = ?",
                (state, now_ns(), tx_id),
            )

    def set_backend(self, tx_id: str, backend: str) -> None:
        with self.write():
            self.db.execute(
                "UPDATE transactions SET backend = ?, updated_ns = ? WHERE id = ?",
                (backend, now_ns(), tx_id),
            )

    # -- the commit protocol ----------------------------------------------------

    def record_intent(
        self, tx_id: str, rows: list[ChangeRow], diff_hash: str, *, new: TxRecord | None = None,
    ) -> None:
        """Journal every change with its images and enter ``committing``: durable
        (synchronous=FULL) before the first byte of the live tree changes.
        ``new`` is a transaction (a rollback) that exists from this moment on."""
        with self.write():
            if new is not None:
                self._insert_tx(new)
            self.db.execute("DELETE FROM changes WHERE tx = ?", (tx_id,))
            self.db.executemany(
                "INSERT INTO changes (tx, seq, path, status, old, new, old_blob, new_blob, generation,"
                " new_generation) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(tx_id, r.seq, _blob(r.path), r.status, _record(r.old), _record(r.new), r.old_blob, r.new_blob,
                  None if r.objects is None else json.dumps(r.objects, ensure_ascii=True),
                  None if r.results is None else json.dumps(r.results, ensure_ascii=True))
                 for r in rows],
            )
            self.db.execute(
                "UPDATE transactions SET state = 'committing', diff_hash = ?, updated_ns = ? WHERE id = ?",
                (diff_hash, now_ns(), tx_id),
            )
            self.event(tx_id, "commit-start", {"diff_hash": diff_hash, "changes": len(rows)})

    def record_generations(
        self, tx_id: str, results: dict[int, dict[str, int]], kind: str, detail: dict[str, Any],
    ) -> None:
        """Journal the generations a batch of conditional GCS ops left (by change
        seq, {key: generation, 0: deleted}), with an audit event ``kind``."""
        with self.write():
            for seq, done in results.items():
                row = self.db.execute(
                    "SELECT new_generation FROM changes WHERE tx = ? AND seq = ?", (tx_id, seq)).fetchone()
                merged = dict(_json(row[0]) or {}) if row else {}
                merged.update(done)
                self.db.execute(
                    "UPDATE changes SET new_generation = ? WHERE tx = ? AND seq = ?",
                    (json.dumps(merged, ensure_ascii=True), tx_id, seq))
            self.event(tx_id, kind, detail)

    def mark_committed(self, tx_id: str) -> None:
        """The commit point: one row update, synced."""
        with self.write():
            now = now_ns()
            self.db.execute(
                "UPDATE transactions SET state = 'committed', committed_ns = ?, updated_ns = ? WHERE id = ?",
                (now, now, tx_id),
            )
            rolls_back, diff_hash, root = self.db.execute(
                "SELECT rolls_back, diff_hash, root FROM transactions WHERE id = ?", (tx_id,)).fetchone()
            changes = self.db.execute("SELECT count(*) FROM changes WHERE tx = ?", (tx_id,)).fetchone()[0]
            approved = self.db.execute(
                "SELECT approver FROM approvals WHERE tx = ? AND kind = 'approved' AND diff_hash = ?"
                " AND after_run >= (SELECT coalesce(max(id), 0) FROM runs WHERE tx = ?)"
                " ORDER BY id DESC LIMIT 1", (tx_id, diff_hash, tx_id)).fetchone()
            self.event(tx_id, "rollback" if rolls_back else "commit", {
                "root": _text(root), "diff_hash": diff_hash, "changes": changes, "rolls_back": rolls_back,
                "approved_by": approved[0] if approved else None})

    def import_committed(self, tx: TxRecord, rows: list[ChangeRow], source: dict[str, Any]) -> None:
        """Journal a transaction another machine committed (read from its
        manifest, ``source`` saying where and its hash), as committed here,
        with begin and commit events that name where it came from."""
        with self.write():
            if self.db.execute("SELECT 1 FROM transactions WHERE id = ?", (tx.id,)).fetchone():
                return  # (another process imported it first)
            self._insert_tx(tx._replace(state="open"))
            self.db.executemany(
                "INSERT INTO changes (tx, seq, path, status, old, new, old_blob, new_blob, generation,"
                " new_generation) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(tx.id, r.seq, _blob(r.path), r.status, _record(r.old), _record(r.new), None, None,
                  None if r.objects is None else json.dumps(r.objects, ensure_ascii=True),
                  None if r.results is None else json.dumps(r.results, ensure_ascii=True))
                 for r in rows])
            self.db.execute(
                "UPDATE transactions SET state = 'committed', diff_hash = ?, committed_ns = ?, updated_ns = ?,"
                " images_dropped = ? WHERE id = ?", (tx.diff_hash, tx.committed_ns, now_ns(), tx.images_dropped, tx.id))
            self.event(tx.id, "rollback" if tx.rolls_back else "commit", {
                "root": tx.root, "diff_hash": tx.diff_hash, "changes": len(rows), "rolls_back": tx.rolls_back,
                "imported_from": source})

    def reopen(self, tx_id: str, state: str = "open") -> None:
        """Back from ``committing`` after the live tree was put back as it was."""
        with self.write():
            self.db.execute("DELETE FROM changes WHERE tx = ?", (tx_id,))
            self.db.execute(
                "UPDATE transactions SET state = ?, diff_hash = NULL, updated_ns = ? WHERE id = ?",
                (state, now_ns(), tx_id),
            )
            self.event(tx_id, "undo", {"state": state})

    def change_count(self, tx_id: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM changes WHERE tx = ?", (tx_id,)).fetchone()[0])

    def _rel(self, blob: bytes, tx_id: str) -> str:
        """A root-relative path read back from the journal, refused unless it is
        plain (cowfs.paths.plain): an edited row must never reach outside the root."""
        rel = _text(blob)
        if not plain(rel):
            raise JournalCorrupt(path=self.path, reason=(
                f"transaction {tx_id} names the path {rel!r}, which is not a plain path inside its root;"
                " it was never written by roscoe (the journal was edited) and is not used"))
        return rel

    def changes(self, tx_id: str) -> list[ChangeRow]:
        # (Columns by position: a rollback reads 2,000 rows; by name costs 9 lookups a row.)
        rows = self.db.execute(
            "SELECT seq, path, status, old, new, old_blob, new_blob, generation, new_generation"
            " FROM changes WHERE tx = ? ORDER BY seq", (tx_id,))
        return [
            ChangeRow(seq, self._rel(path, tx_id), status, _entry(old), _entry(new), old_blob, new_blob,
                      _json(generation), _json(new_generation))
            for seq, path, status, old, new, old_blob, new_blob, generation, new_generation in rows
        ]

    def rolled_back_by(self) -> dict[str, str]:
        """For every committed transaction whose newest committed rollback stands
        (was not itself rolled back): that rollback's id."""
        rows = self.db.execute(
            "SELECT rolls_back, id FROM transactions WHERE state = 'committed' AND rolls_back IS NOT NULL"
            " ORDER BY committed_ns")
        newest = {target: rb for target, rb in rows}
        return {target: rb for target, rb in newest.items() if rb not in newest}

    def open_rollback(self, tx_id: str) -> TxRecord | None:
        """The newest open rollback of ``tx_id`` (one waiting for its approval)."""
        row = self.db.execute(
            "SELECT * FROM transactions WHERE rolls_back = ? AND state = 'open' ORDER BY created_ns DESC LIMIT 1",
            (tx_id,)).fetchone()
        return _tx(row) if row else None

    def in_state(self, state: str) -> list[TxRecord]:
        rows = self.db.execute("SELECT * FROM transactions WHERE state = ? ORDER BY created_ns", (state,))
        return [_tx(r) for r in rows]

    def committed(self) -> list[TxRecord]:
        """Committed transactions, newest commit first."""
        rows = self.db.execute(
            "SELECT * FROM transactions WHERE state = 'committed' ORDER BY committed_ns DESC, id DESC"
        )
        return [_tx(r) for r in rows]

    def later_commits_touching(self, tx: TxRecord, paths: list[str]) -> list[str]:
        """Committed transactions of the same root after ``tx`` that changed any of ``paths``."""
        if not paths:
            return []
        found: list[str] = []
        for later in self.committed():
            if later.root != tx.root or (later.committed_ns or 0) <= (tx.committed_ns or 0):
                continue
            hit = self.db.execute(
                f"SELECT 1 FROM changes WHERE tx = ? AND path IN ({','.join('?' * len(paths))}) LIMIT 1",
                (later.id, *map(_blob, paths)),
            ).fetchone()
            if hit:
                found.append(later.id)
        return sorted(found)

    def latest_states(self) -> dict[tuple[str, str], tuple[str, Entry | None]]:
        """For every (root, path) any committed transaction changed: the newest
        committed state and the transaction that wrote it. Paths that are not
        plain are left out (``changes`` of their transaction refuses them)."""
        rows = self.db.execute(
            "SELECT t.root, c.path, c.new, t.id FROM changes c JOIN transactions t ON t.id = c.tx"
            " WHERE t.state = 'committed' ORDER BY t.committed_ns, c.seq"
        )
        return {(_text(r[0]), _text(r[1])): (r[3], _entry(r[2])) for r in rows if plain(_text(r[1]))}

    def referenced_blobs(self, keep_dropped: bool = False) -> set[str]:
        sql = (
            "SELECT c.old_blob, c.new_blob FROM changes c JOIN transactions t ON t.id = c.tx"
            + ("" if keep_dropped else " WHERE t.images_dropped = 0")
        )
        out: set[str] = set()
        for old, new in self.db.execute(sql):
            out.update(d for d in (old, new) if d)
        return out

    def drop_images(self, before_ns: int) -> list[str]:
        """Mark committed transactions older than ``before_ns`` as past rollback."""
        with self.write():
            ids = [r[0] for r in self.db.execute(
                "SELECT id FROM transactions WHERE state = 'committed' AND images_dropped = 0"
                " AND committed_ns < ?", (before_ns,))]
            self.db.executemany("UPDATE transactions SET images_dropped = 1 WHERE id = ?", [(i,) for i in ids])
            if ids:
                self.event(None, "gc", {"images_dropped": ids})
        return ids

    # -- the audit trail (journal.audit) ------------------------------------------

    def event(self, tx_id: str | None, kind: str, detail: dict[str, Any] | None = None) -> None:
        """Append an audit event inside the caller's write transaction."""
        audit.append(self.db, self.actor, tx_id, kind, detail)

    def log_event(self, tx_id: str | None, kind: str, detail: dict[str, Any] | None = None) -> None:
        """Append an audit event on its own."""
        with self.write():
            self.event(tx_id, kind, detail)

    def audit_events(self, tx_id: str | None = None, since_ns: int | None = None) -> list[audit.Event]:
        return audit.events(self.db, tx_id, since_ns)

    def commit_hashes(self) -> dict[str, str]:
        """The diff_hash each commit (or rollback) event of the trail recorded, by transaction."""
        rows = self.db.execute("SELECT tx, detail FROM audit WHERE kind IN ('commit', 'rollback') AND tx IS NOT NULL")
        return {tx: json.loads(detail).get("diff_hash") for tx, detail in rows}

    def begin_configs(self) -> dict[str, list[dict[str, str | None]] | None]:
        """The config files each begin event of the trail names, by transaction."""
        rows = self.db.execute("SELECT tx, detail FROM audit WHERE kind = 'begin' AND tx IS NOT NULL")
        return {tx: json.loads(detail).get("config") for tx, detail in rows}

    def audit_head(self) -> tuple[int, str] | None:
        return audit.head(self.db)

    def audit_problems(self) -> list[tuple[str | None, str]]:
        """Breaks in the chain, and transactions whose begin or commit event is gone."""
        found: list[tuple[str | None, str]] = [(None, what) for _, what in audit.check(self.db)]
        start = self.db.execute("SELECT detail FROM audit WHERE kind = 'audit-start' ORDER BY seq LIMIT 1").fetchone()
        since = json.loads(start[0]).get("since_ns", 0) if start else 0
        if start is None:
            found.append((None, "the audit trail has no audit-start event (its first events were deleted)"))
        kinds: dict[str, set[str]] = {}
        for tx, kind in self.db.execute("SELECT tx, kind FROM audit WHERE tx IS NOT NULL"):
            kinds.setdefault(tx, set()).add(kind)
        for tx in self.db.execute("SELECT id, state, rolls_back FROM transactions WHERE created_ns >= ?", (since,)):
            have = kinds.get(tx[0], set())
            if "begin" not in have:
                found.append((tx[0], f"transaction {tx[0]} has no begin event in the audit trail"))
            if tx[1] == "committed" and not have & {"commit", "rollback"}:
                found.append((tx[0], f"committed transaction {tx[0]} has no commit event in the audit trail"))
        found.extend(self._untraced_rows(since, kinds))
        approved = {(tx, d.get("diff_hash"), d.get("approver")) for tx, d in (
            (tx, json.loads(detail)) for tx, detail in self.db.execute(
                "SELECT tx, detail FROM audit WHERE kind = 'approve'"))}
        for tx_id, diff_hash, approver in self.db.execute(
                "SELECT a.tx, a.diff_hash, a.approver FROM approvals a JOIN transactions t ON t.id = a.tx"
                " WHERE a.kind = 'approved' AND t.created_ns >= ?", (since,)):
            if (tx_id, diff_hash, approver) not in approved:
                found.append((tx_id, f"the approval of transaction {tx_id} by {approver} (diff {diff_hash})"
                                     " has no approve event in the audit trail"))
        rejected = {(tx, d.get("diff_hash"), d.get("by")) for tx, d in (
            (tx, json.loads(detail)) for tx, detail in self.db.execute(
                "SELECT tx, detail FROM audit WHERE kind = 'reject'"))}
        for tx_id, diff_hash, by in self.db.execute(
                "SELECT a.tx, a.diff_hash, a.approver FROM approvals a JOIN transactions t ON t.id = a.tx"
                " WHERE a.kind = 'rejected' AND t.created_ns >= ?", (since,)):
            if (tx_id, diff_hash, by) not in rejected:
                found.append((tx_id, f"the rejection of transaction {tx_id} by {by} (diff {diff_hash})"
                                     " has no reject event in the audit trail"))
        return found

    def _untraced_rows(self, since: int, kinds: dict[str, set[str]]) -> list[tuple[str | None, str]]:
        """Rows of the journal whose audit events are gone: the trace a trail cut
        off at its end leaves even when its head was rewound to match. A cut
        that took only events which left no row (diffs shown, refusals,
        conflicts) cannot be seen here: only a head kept off the machine shows it."""
        found: list[tuple[str | None, str]] = []
        runs_seen: dict[str, set[int]] = {"run-start": set(), "run": set()}
        for kind, detail in self.db.execute(
                "SELECT kind, detail FROM audit WHERE kind IN ('run-start', 'run', 'run-interrupted')"):
            runs_seen["run" if kind == "run-interrupted" else kind].add(json.loads(detail).get("run"))
        for run_id, tx_id, ended in self.db.execute(
                "SELECT id, tx, ended_ns FROM runs WHERE started_ns >= ? ORDER BY id", (since,)):
            if run_id not in runs_seen["run-start"]:
                found.append((tx_id, f"run {run_id} of transaction {tx_id} has no run-start event in the audit trail"))
            if ended is not None and run_id not in runs_seen["run"]:
                found.append((tx_id, f"the end of run {run_id} of transaction {tx_id} has no run event in the audit trail"))
        for tx_id, state in self.db.execute("SELECT id, state FROM transactions WHERE created_ns >= ?", (since,)):
            have = kinds.get(tx_id, set())
            if state == "aborted" and not have & {"abort", "undo"}:
                found.append((tx_id, f"aborted transaction {tx_id} has no abort event in the audit trail"))
            if state in ("committing", "committed") and "commit-start" not in have:
                found.append((tx_id, f"transaction {tx_id} has no commit-start event in the audit trail"))
        requested = {tx for (tx,) in self.db.execute("SELECT tx FROM audit WHERE kind = 'approval-requested'")}
        for (tx_id,) in self.db.execute(
                "SELECT DISTINCT tx FROM approvals WHERE kind = 'requested' AND time_ns >= ?", (since,)):
            if tx_id not in requested:
                found.append((tx_id, f"the approval request of transaction {tx_id} has no event in the audit trail"))
        return found

    # -- approvals ----------------------------------------------------------------

    def last_run(self, tx_id: str) -> int:
        row = self.db.execute("SELECT max(id) FROM runs WHERE tx = ?", (tx_id,)).fetchone()
        return int(row[0] or 0)

    def last_diff_hash(self, tx_id: str) -> str | None:
        """The diff hash the newest run that recorded one left."""
        row = self.db.execute("SELECT diff_hash FROM runs WHERE tx = ? AND diff_hash IS NOT NULL"
                              " ORDER BY id DESC LIMIT 1", (tx_id,)).fetchone()
        return row[0] if row else None

    def add_approval(self, tx_id: str, diff_hash: str, approver: str) -> ApprovalRecord:
        with self.write():
            after_run = self.last_run(tx_id)
            now = now_ns()
            cur = self.db.execute(
                "INSERT INTO approvals (tx, kind, diff_hash, approver, time_ns, after_run)"
                " VALUES (?, 'approved', ?, ?, ?, ?)", (tx_id, diff_hash, approver, now, after_run))
            # Who approved, as the operating system knows them: --by is only a name given.
            self.event(tx_id, "approve", {"diff_hash": diff_hash, "approver": approver, "after_run": after_run,
                                          "uid": self.actor.uid, "os_user": audit.os_user(self.actor.uid)})
        return ApprovalRecord(int(cur.lastrowid or 0), tx_id, "approved", diff_hash, approver, now, after_run, None)

    def add_rejection(self, tx_id: str, diff_hash: str, by: str, reason: str | None) -> ApprovalRecord:
        with self.write():
            after_run = self.last_run(tx_id)
            now = now_ns()
            cur = self.db.execute(
                "INSERT INTO approvals (tx, kind, diff_hash, approver, time_ns, after_run, reason)"
                " VALUES (?, 'rejected', ?, ?, ?, ?, ?)", (tx_id, diff_hash, by, now, after_run, reason))
            self.event(tx_id, "reject", {"diff_hash": diff_hash, "by": by, "reason": reason, "after_run": after_run,
                                         "uid": self.actor.uid, "os_user": audit.os_user(self.actor.uid)})
        return ApprovalRecord(int(cur.lastrowid or 0), tx_id, "rejected", diff_hash, by, now, after_run, None, reason)

    def add_request(self, tx_id: str, diff_hash: str, notified: bool | None, detail: dict[str, Any]) -> None:
        with self.write():
            self.db.execute(
                "INSERT INTO approvals (tx, kind, diff_hash, time_ns, after_run, notified)"
                " VALUES (?, 'requested', ?, ?, ?, ?)",
                (tx_id, diff_hash, now_ns(), self.last_run(tx_id), None if notified is None else int(notified)))
            self.event(tx_id, "approval-requested", dict(detail, diff_hash=diff_hash))

    def approve_events(self, tx_id: str) -> set[tuple[str, str]]:
        """(diff hash, approver) of every approve event of ``tx_id`` in the audit trail."""
        rows = self.db.execute("SELECT detail FROM audit WHERE tx = ? AND kind = 'approve'", (tx_id,))
        return {(d.get("diff_hash"), d.get("approver")) for d in (json.loads(r[0]) for r in rows)}

    def approvals(self, tx_id: str) -> list[ApprovalRecord]:
        rows = self.db.execute("SELECT * FROM approvals WHERE tx = ? ORDER BY id", (tx_id,))
        return [ApprovalRecord(r["id"], r["tx"], r["kind"], r["diff_hash"], r["approver"], r["time_ns"],
                               r["after_run"], r["notified"], r["reason"]) for r in rows]

    def integrity(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- runs -----------------------------------------------------------------

    def start_run(self, tx_id: str, argv: list[str], cwd: str, backend: str, hide: list[str] | None = None) -> int:
        """``hide``: the paths the run cannot see (cowfs.hide), for the audit trail."""
        with self.write():
            cur = self.db.execute(
                "INSERT INTO runs (tx, argv, cwd, backend, started_ns) VALUES (?,?,?,?,?)",
                (tx_id, json.dumps(argv), _blob(cwd), backend, now_ns()),
            )
            run_id = int(cur.lastrowid or 0)
            self.event(tx_id, "run-start", {
                "run": run_id, "argv": argv, "cwd": cwd, "backend": backend, "hide": hide or []})
            return run_id

    def end_run(
        self, run_id: int, exit_code: int, diff_hash: str | None, changes: int | None,
        bases: dict[str, Entry | None] | None, backend: str,
        generations: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """``generations``: per base path, the GCS object generations seen (a GCS target)."""
        with self.write():
            self.db.execute(
                "UPDATE runs SET ended_ns = ?, exit_code = ?, diff_hash = ?, changes = ?, backend = ?"
                " WHERE id = ?",
                (now_ns(), exit_code, diff_hash, changes, backend, run_id),
            )
            tx_id, argv, cwd = self.db.execute("SELECT tx, argv, cwd FROM runs WHERE id = ?", (run_id,)).fetchone()
            self.event(tx_id, "run", {
                "run": run_id, "argv": json.loads(argv), "cwd": _text(cwd), "exit_code": exit_code,
                "backend": backend, "diff_hash": diff_hash, "changes": changes})
            if bases is not None:
                self._set_bases(tx_id, bases, generations)

    def _set_bases(
        self, tx_id: str, bases: dict[str, Entry | None], generations: dict[str, dict[str, int]] | None,
    ) -> None:
        self.db.execute("DELETE FROM bases WHERE tx = ?", (tx_id,))
        gens = generations or {}
        self.db.executemany(
            "INSERT INTO bases (tx, path, entry, generations) VALUES (?,?,?,?)",
            [
                (tx_id, _blob(path), json.dumps(e.to_json()) if e else None,
                 json.dumps(gens[path]) if path in gens else None)
                for path, e in bases.items()
            ],
        )

    def unended_runs(self, tx_id: str) -> list[int]:
        """Runs of ``tx_id`` with no end: running now, or their roscoe died."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM runs WHERE tx = ? AND ended_ns IS NULL ORDER BY id", (tx_id,))]

    def set_run_backend(self, run_id: int, backend: str) -> None:
        """The stager a run moved on to when the one it started with could not run it."""
        with self.write():
            self.db.execute("UPDATE runs SET backend = ? WHERE id = ?", (backend, run_id))

    def interrupt_runs(
        self, tx_id: str, run_ids: list[int], backend: str, diff_hash: str | None, changes: int | None,
        bases: dict[str, Entry | None] | None, generations: dict[str, dict[str, int]] | None,
        tx_backend: str | None, detail: dict[str, Any],
    ) -> None:
        """End runs whose roscoe died, with no exit code, and an audit event
        ``run-interrupted`` each; the last gets the diff staged now, and
        ``bases`` (when given) become the transaction's."""
        with self.write():
            now = now_ns()
            for run_id in run_ids:
                last = run_id == run_ids[-1]
                cur = self.db.execute(
                    "UPDATE runs SET ended_ns = ?, diff_hash = ?, changes = ?, backend = ?"
                    " WHERE id = ? AND tx = ? AND ended_ns IS NULL",
                    (now, diff_hash if last else None, changes if last else None, backend, run_id, tx_id))
                if not cur.rowcount:
                    continue
                argv, cwd = self.db.execute("SELECT argv, cwd FROM runs WHERE id = ?", (run_id,)).fetchone()
                self.event(tx_id, "run-interrupted", dict(
                    detail, run=run_id, argv=json.loads(argv), cwd=_text(cwd), exit_code=None, backend=backend,
                    diff_hash=diff_hash if last else None, changes=changes if last else None))
            if tx_backend is not None:
                self.db.execute("UPDATE transactions SET backend = ?, updated_ns = ? WHERE id = ?",
                                (tx_backend, now, tx_id))
            if bases is not None:
                self._set_bases(tx_id, bases, generations)

    def runs(self, tx_id: str) -> list[RunRecord]:
        rows = self.db.execute("SELECT * FROM runs WHERE tx = ? ORDER BY id", (tx_id,))
        return [_run(r) for r in rows]

    def run_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT tx, count(*) FROM runs GROUP BY tx")
        return {r[0]: r[1] for r in rows}

    def rebase_generations(self, tx_id: str, restored: dict[str, int]) -> None:
        """After an undo put objects back byte for byte, their new generations
        (``restored``: {key: generation}) are the base a later commit checks."""
        rows = self.db.execute("SELECT path, generations FROM bases WHERE tx = ?", (tx_id,)).fetchall()
        for path, text in rows:
            gens = _json(text)
            if gens and any(k in restored for k in gens):
                gens.update({k: restored[k] for k in gens if k in restored})
                self.db.execute("UPDATE bases SET generations = ? WHERE tx = ? AND path = ?",
                                (json.dumps(gens), tx_id, path))

    def rebase_results(self, tx_id: str, restored: dict[str, int]) -> None:
        """After an undone rollback put back byte for byte the objects the
        committed ``tx_id`` wrote, their new generations (``restored``) are
        what it wrote as far as verify and a later rollback are concerned."""
        rows = self.db.execute("SELECT seq, new_generation FROM changes WHERE tx = ?", (tx_id,)).fetchall()
        for seq, text in rows:
            gens = _json(text)
            if gens and any(k in restored and restored[k] != gens[k] for k in gens):
                gens.update({k: restored[k] for k in gens if k in restored})
                self.db.execute("UPDATE changes SET new_generation = ? WHERE tx = ? AND seq = ?",
                                (json.dumps(gens, ensure_ascii=True), tx_id, seq))

    def base_generations(self, tx_id: str) -> dict[str, dict[str, int] | None]:
        """Per base path, the GCS object generations recorded when the last run ended."""
        rows = self.db.execute("SELECT path, generations FROM bases WHERE tx = ?", (tx_id,))
        return {self._rel(r[0], tx_id): _json(r[1]) for r in rows}

    def bases(self, tx_id: str) -> dict[str, Entry | None]:
        rows = self.db.execute("SELECT path, entry FROM bases WHERE tx = ?", (tx_id,))
        return {
            self._rel(r[0], tx_id): Entry.from_json(json.loads(r[1])) if r[1] else None for r in rows
        }


class _WriteTx:
    """``with journal.write():`` one BEGIN IMMEDIATE ... COMMIT, rolled back on error."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def __enter__(self) -> None:
        try:
            self.journal.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self.journal.translate(e) from e

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        db = self.journal.db
        if exc_type is None:
            try:
                db.execute("COMMIT")
                return
            except sqlite3.Error as e:
                self._rollback()
                raise self.journal.translate(e) from e
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise self.journal.translate(exc) from exc

    def _rollback(self) -> None:
        # SQLite rolls back by itself on some errors (a full disk among them);
        # a second ROLLBACK would fail and hide the real error.
        if self.journal.db.in_transaction:
            try:
                self.journal.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
