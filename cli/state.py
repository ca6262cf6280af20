"""Opening the state dir for a command: the workspace, after recovery, with
what recovery did said on stderr."""

from __future__ import annotations

import json
import sys

from cli.errors import say, warn


def write_json(data: object) -> None:
    """The JSON every --json prints: one document, indented, on stdout."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def open_workspace():  # type: ignore[no-untyped-def]
    from journal.workspace import Workspace

    ws = Workspace.open()
    for r in ws.recovered:
        say(
            f"recovered the interrupted commit of tx {r.tx}: its {r.paths} paths under {r.root}"
            f" are as they were before it; the transaction is {r.state}"
        )
    return ws


def commit_with_prompt(ws, tx_id: str, *, yes: bool) -> bool:  # type: ignore[no-untyped-def]
    """Commit ``tx_id``: on a terminal show the diff and ask first (unless
    ``yes``), with a progress bar while it applies. False when the person
    declined (the transaction stays open)."""
    import sys

    from journal.commit import commit

    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if interactive and not yes:
        from cli import render

        changes = ws.diff(tx_id)
        render.diff(tx_id, changes)
        if not render.confirm(f"Commit these {len(changes.changes)} changes to {changes.root}?"):
            say(f"tx {tx_id} not committed; it stays open")
            return False
    if interactive:
        from cli import render

        with render.progress("committing") as advance:
            record = commit(ws, tx_id, progress=advance)
    else:
        record = commit(ws, tx_id)
    rows = ws.journal.change_count(record.id)
    say(f"tx {record.id} committed: {rows} changes to {record.root} (roscoe tx rollback {record.id} undoes it)")
    warn(ws.notices)
    return True


def rollback_with_prompt(ws, ref: str, *, yes: bool, force: bool) -> int:  # type: ignore[no-untyped-def]
    """Roll back ``ref``: on a terminal ask first (unless ``yes``). Prints the
    rollback's id on stdout; 1 when the person declined."""
    import sys

    from journal.rollback import rollback

    record = ws.get(ref)
    if sys.stdin.isatty() and sys.stderr.isatty() and not yes:
        from cli import render

        if not render.confirm(f"Roll back the {ws.journal.change_count(record.id)} changes of tx {record.id} in {record.root}?"):
            say(f"tx {record.id} not rolled back")
            return 1
    undone = rollback(ws, record.id, force=force)
    rows = ws.journal.change_count(undone.id)
    print(undone.id, flush=True)
    say(f"tx {record.id} rolled back by tx {undone.id}: {rows} paths put back in {undone.root}")
    warn(ws.notices)
    return 0
