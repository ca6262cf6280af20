"""Rendering with rich: diff tables, --stat, --patch, show and list. Output only."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.errors import write_json
from cowfs.changeset import Change, ChangeSet, Move
from cowfs.entry import Entry
from cowfs.patch import FilePatch
from journal.service import LogEntry
from journal.store import TxRecord
from journal.workspace import TxView

STYLE = {
    "added": ("A", "green"), "modified": ("M", "yellow"), "deleted": ("D", "red"),
    "type_changed": ("T", "magenta"), "meta_changed": ("m", "cyan"), "moved": ("R", "blue"),
}


class _Out:
    """Prints renderables to stdout; piped output is not folded at 80 columns
    and carries no trailing padding."""

    def __init__(self) -> None:
        tty = sys.stdout.isatty()
        self.tty = tty
        self.console = Console(highlight=False, width=None if tty else 200, soft_wrap=False)

    def print(self, renderable: Any) -> None:
        if self.tty:
            self.console.print(renderable)
            return
        with self.console.capture() as cap:
            self.console.print(renderable)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))


def console() -> _Out:
    return _Out()


def display_path(path: str) -> str:
    """A path made safe to print: undecodable bytes and control characters escaped."""
    out = []
    for ch in path:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{code:02x}"))
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


def json_out(data: Any) -> None:
    write_json(data)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def owner(entry: Any) -> str:
    return f"{entry.uid}:{entry.gid}"


def owner_changed(c: Change | Move) -> bool:
    """Whether a change gives an existing path (or a move, the file it moves)
    another owner (shown wherever the change is)."""
    old, new = (c.deleted.old, c.added.new) if isinstance(c, Move) else (c.old, c.new)
    return old is not None and new is not None and old.owner != new.owner


def ends(c: Change | Move) -> tuple[Any, Any]:
    """The old and new state of a change, or of the file a move moves."""
    return (c.deleted.old, c.added.new) if isinstance(c, Move) else (c.old, c.new)


def moved_label(move: Move) -> str:
    return f"{display_path(move.source)} -> {display_path(move.dest)}"


def rows_of(changes: ChangeSet) -> Iterator[tuple[str, Change | Move]]:
    """(status, change) per row: a move is one row, where its new path sorts."""
    moves = changes.moves()
    by_dest = {m.dest: m for m in moves}
    sources = {m.source for m in moves}
    for c in changes.changes:
        if c.path in sources:
            continue
        move = by_dest.get(c.path)
        yield ("moved", move) if move is not None else (c.status, c)


def summary_line(changes: ChangeSet) -> str:
    summary = changes.summary
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in summary.items() if n and k != "bytes_written"]
    owners = sum(1 for _, c in rows_of(changes) if owner_changed(c))
    if owners:
        parts.append(f"{owners} owner{'s' if owners != 1 else ''} changed")
    text = ", ".join(parts) if parts else "no changes"
    return f"{text}; {human_size(summary['bytes_written'])} to write; diff_hash {changes.diff_hash}"


def entry_desc(entry: Entry | None) -> str:
    """The old/new column of the diff table: type and size, a symlink's target."""
    if entry is None:
        return ""
    if entry.type == "symlink":
        return f"symlink -> {display_path(entry.target or '')}"
    return entry.type if entry.type == "dir" else f"{entry.type} {human_size(entry.size)}"


def diff(tx: str, changes: ChangeSet) -> None:
    out = console()
    if not changes.changes and not changes.unsupported:
        out.print(f"tx {tx}: no changes against {escape(display_path(changes.root))}")
        return
    table = Table(title=f"tx {tx}: {escape(display_path(changes.root))}", title_justify="left", box=None)
    table.add_column("", no_wrap=True)
    table.add_column("path", overflow="fold")
    table.add_column("old", justify="right", overflow="fold")
    table.add_column("new", justify="right", overflow="fold")
    table.add_column("hash old → new", no_wrap=True)
    for status, c in rows_of(changes):
        letter, color = STYLE[status]
        old, new = ends(c)
        label = moved_label(c) if isinstance(c, Move) else display_path(c.path)
        old_desc, new_desc = entry_desc(old), entry_desc(new)
        if status == "meta_changed" and old and new:
            old_desc, new_desc = f"mode {format(old.mode, '04o')}", f"mode {format(new.mode, '04o')}"
            if owner_changed(c) and old.mode == new.mode:
                old_desc = new_desc = ""
        if status == "moved" and old and new and old.mode != new.mode:
            old_desc, new_desc = f"{old_desc} mode {format(old.mode, '04o')}", f"{new_desc} mode {format(new.mode, '04o')}"
        if owner_changed(c):
            old_desc, new_desc = f"{old_desc} owner {owner(old)}".lstrip(), f"{new_desc} owner {owner(new)}".lstrip()
        hashes = f"{(old.hash or '')[:8] if old else ''} → {(new.hash or '')[:8] if new else ''}"
        table.add_row(Text(letter, style=color), Text(label, style=color), old_desc, new_desc, hashes)
    for u in changes.unsupported:
        table.add_row(Text("!", style="bold red"), Text(display_path(u.path), style="bold red"), "", u.type, "cannot be committed")
    out.print(table)
    out.print(summary_line(changes))


def stat(changes: ChangeSet) -> None:
    out = console()
    rows = [(status, c, moved_label(c) if isinstance(c, Move) else display_path(c.path))
            for status, c in rows_of(changes)]
    width = max((len(label) for _, _, label in rows), default=0)
    for status, c, label in rows:
        letter, color = STYLE[status]
        old, new = ends(c)
        size = new.size if new else (old.size if old else 0)
        sign = "-" if status == "deleted" else "" if status == "moved" else "+"
        detail = f"{sign}{human_size(size)}" if (new or old).type != "dir" else "dir"
        line = Text(f" {letter} ", style=color)
        line.append(label.ljust(width))
        line.append(f" | {detail}")
        if status == "moved" and old.mode != new.mode:
            line.append(f" mode {format(old.mode, '04o')} → {format(new.mode, '04o')}")
        if owner_changed(c):
            line.append(f" owner {owner(old)} → {owner(new)}")
        out.print(line)
    for u in changes.unsupported:
        out.print(Text(f" ! {display_path(u.path)} | {u.type}: cannot be committed", style="bold red"))
    out.print(summary_line(changes))


def patches(tx: str, root: str, items: list[FilePatch]) -> None:
    out = console()
    if not items:
        out.print(f"tx {tx}: no changes against {escape(display_path(root))}")
        return
    for p in items:
        c: Change | Move = p.move if p.move is not None else p.change
        status = "moved" if p.move is not None else p.change.status
        letter, color = STYLE[status]
        old, new = ends(c)
        label = moved_label(c) if isinstance(c, Move) else display_path(c.path)
        out.print(Text(f"{letter} {label}", style=f"bold {color}"))
        if p.binary:
            out.print(f"Binary files differ ({(old.hash or '')[:8] if old else 'none'} → {(new.hash or '')[:8] if new else 'none'})")
        elif status in ("meta_changed", "moved") and old and new and (old.mode, old.mtime_ns) != (new.mode, new.mtime_ns):
            out.print(f"mode {format(old.mode, '04o')} → {format(new.mode, '04o')}, mtime {old.mtime_ns} → {new.mtime_ns}")
        if owner_changed(c):
            out.print(f"owner {owner(old)} → {owner(new)}")
        for line in p.lines:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else None
            out.print(Text(line.rstrip("\n"), style=style or ""))


def show(view: TxView) -> None:
    out = console()
    r = view.record
    rows = [
        ("tx", r.id), ("state", r.state), ("root", display_path(r.root)),
        ("backend", r.backend or "(chosen at the first run)"), ("message", r.message or ""),
        ("by", f"{r.user}@{r.host}"), ("created", when(r.created_ns)),
    ]
    if view.changes is not None:
        rows.append(("diff", summary_line(view.changes)))
        rows.append(("diff hash", view.changes.diff_hash))
    verdict = view.policy
    if verdict is not None:
        for v in verdict.refusals:
            rows.append(("refused", str(v)))
        if verdict.rejected is not None:
            why = f": {verdict.rejected.reason}" if verdict.rejected.reason else ""
            rows.append(("approval", f"rejected by {verdict.rejected.approver} for this exact diff{why}"))
        elif verdict.approved_by:
            rows.append(("approval", f"approved by {verdict.approved_by} for this exact diff"))
        elif verdict.needed:
            state = "pending (requested)" if verdict.pending else "needed"
            rows.append(("approval", f"{state}: " + "; ".join(verdict.reasons)))
            if view.changes is not None:
                rows.append(("approve with", f"roscoe tx approve {r.id} --hash {view.changes.diff_hash}"))
        else:
            rows.append(("approval", "not needed"))
    for a in view.approvals:
        who = f" by {a.approver}" if a.approver else ""
        why = f": {a.reason}" if a.kind == "rejected" and a.reason else ""
        rows.append((a.kind, f"{when(a.time_ns)}{who} for diff {a.diff_hash}{why}"))
    grid = Table.grid(padding=(0, 2))
    for key, value in rows:
        grid.add_row(Text(key, style="bold"), Text(value))
    out.print(grid)
    if view.runs:
        table = Table(title="runs", title_justify="left", box=None)
        for col in ("#", "command", "exit", "started", "seconds", "backend"):
            table.add_column(col, overflow="fold")
        for i, run in enumerate(view.runs, 1):
            seconds = f"{(run.ended_ns - run.started_ns) / 1e9:.2f}" if run.ended_ns else "running"
            if run.interrupted:  # ended_ns is when the next command found its roscoe dead
                seconds = "-"
            table.add_row(
                str(i), display_path(shlex.join(run.argv)),
                "interrupted" if run.interrupted else "-" if run.exit_code is None else str(run.exit_code),
                when(run.started_ns), seconds, run.backend,
            )
        out.print(table)


def waited(result: Any, timeout: str | None) -> None:
    """How ``tx wait`` ended, one roscoe line on stderr (an error line unless it exits 0)."""
    from cli.errors import say

    tx = result.tx
    if result.outcome == "approved":
        say(f"tx {tx} approved by {result.by} for diff {result.diff_hash}")
    elif result.outcome == "committed":
        say(f"tx {tx} committed")
    elif result.outcome == "rejected":
        why = f": {json.dumps(result.reason, ensure_ascii=False)}" if result.reason else ""
        say(f"error: tx {tx} rejected by {result.by} for diff {result.diff_hash}{why}")
    elif result.outcome == "aborted":
        say(f"error: tx {tx} aborted")
    else:
        say(f"error: tx {tx} still {result.state} after {timeout} s: nothing approved, rejected, committed or"
            " aborted it (waiting changed nothing)")


def tx_list(records: list[TxRecord], runs: dict[str, int], approvals: dict[str, str]) -> None:
    out = console()
    if not records:
        out.print("no transactions")
        return
    table = Table(box=None)
    for col in ("tx", "state", "approval", "created", "runs", "root", "message"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(r.id, r.state, approvals.get(r.id, ""), when(r.created_ns), str(runs.get(r.id, 0)),
                      display_path(r.root), r.message or "")
    out.print(table)


def audit(events: list[Any], head: tuple[int, str] | None) -> None:
    out = console()
    if not events:
        out.print("no audit events")
        return
    table = Table(box=None)
    for col in ("#", "time (UTC)", "user@host", "pid", "tx", "event", "detail"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(str(e.seq), e.to_json()["time"][:19].replace("T", " "), f"{e.user}@{e.host}", str(e.pid),
                      e.tx or "", e.kind, audit_detail(e.kind, e.to_json()["detail"]))
    out.print(table)
    if head is not None:
        out.print(f"head: event {head[0]}, sha256 {head[1]}")


def audit_detail(kind: str, d: dict[str, Any]) -> str:
    """One readable line of an event's detail."""
    if kind in ("run", "run-start", "run-interrupted"):
        text = shlex.join(d.get("argv", []))
        if kind == "run-interrupted":
            text += f"  -> interrupted (its roscoe died), {d.get('changes')} changes"
        elif "exit_code" in d:
            text += f"  -> exit {d['exit_code']}, {d.get('changes')} changes"
        return display_path(text)
    if kind == "approve":
        return f"{d.get('approver')} approved diff {d.get('diff_hash')}"
    if kind == "reject":
        why = f": {d['reason']}" if d.get("reason") else ""
        return display_path(f"{d.get('by')} rejected diff {d.get('diff_hash')}{why}")
    if kind in ("commit", "rollback"):
        who = f", approved by {d['approved_by']}" if d.get("approved_by") else ""
        undo = f", undoing {d['rolls_back']}" if d.get("rolls_back") else ""
        return f"{d.get('changes')} changes, diff {d.get('diff_hash')}{who}{undo}"
    if kind == "refuse":
        rules = d.get("violations") or d.get("reasons") or []
        shown = "; ".join(" ".join(filter(None, (r.get("path"), r["rule"]))) if isinstance(r, dict) else str(r) for r in rules)
        return f"{d.get('reason')}: {shown}".rstrip(": ")
    if kind == "begin":
        return display_path(d.get("root") or "") + (f"  {d['message']}" if d.get("message") else "")
    return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None)


def confirm(question: str) -> bool:
    from rich.prompt import Confirm

    return Confirm.ask(question, default=False, console=Console(stderr=True))


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields ``advance(done, total)``."""
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def rollback_dry_run(planned: Any) -> None:
    """``tx rollback ID --dry-run``: the diff, then what would stop it."""
    target = planned.target.id
    title = f"rollback of {target}" + (f" (tx {planned.pending.id}, waiting for approval)" if planned.pending else "")
    diff(title, planned.changes)
    out = console()
    if planned.conflicts:
        out.print(Text(f"without --force it is refused: the live tree no longer holds what {target} wrote at "
                       + ", ".join(display_path(p) for p in planned.conflicts), style="yellow"))
    out.print("dry run: nothing was staged or written")


def log(entries: list[LogEntry]) -> None:
    out = console()
    if not entries:
        out.print("no committed transactions")
        return
    table = Table(box=None)
    for col in ("tx", "committed", "by", "changes", "root", "message"):
        table.add_column(col, overflow="fold")
    for r, changes, undone in entries:
        note = r.message or ""
        if r.images_dropped:
            note += " (images dropped: no rollback)"
        if undone:
            note += f" (rolled back by {undone})"
        table.add_row(r.id, when(r.committed_ns), f"{r.user}@{r.host}", str(changes), display_path(r.root), note)
    out.print(table)


def verify(report: Any) -> None:
    out = console()
    checked = report.checked
    summary = f"checked {checked['transactions']} committed transactions, {checked['blobs']} blobs, {checked['paths']} live paths, {checked['audit_events']} audit events"
    if report.ok:
        out.print(f"ok: {summary}")
        return
    for p in report.problems:
        where = " ".join(x for x in (f"tx {p.tx}" if p.tx else "", display_path(p.path) if p.path else "") if x)
        out.print(Text(f"{p.kind}: {where + ': ' if where else ''}{p.detail}", style="red"))
    out.print(f"{len(report.problems)} problems; {summary}")
