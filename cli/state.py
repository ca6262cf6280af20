"""Opening the state dir for a command: the workspace, after recovery, with
what recovery did said on stderr."""

from __future__ import annotations

import json
import sys

from cli.errors import say, warn
from cowfs.errors import RoscoeError


class Declined(RoscoeError):
    """{detail}"""


def write_json(data: object) -> None:
    """The JSON every --json prints: one document, indented, on stdout."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def committed_json(ws, record) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What ``tx commit --json`` and ``tx rollback --json`` print: the
    transaction as ``tx log --json`` lists it."""
    return dict(record.to_json(), changes=ws.journal.change_count(record.id),
                rolled_back_by=ws.journal.rolled_back_by().get(record.id))


def open_workspace(root: str | None = None, *, aborting: str | None = None):  # type: ignore[no-untyped-def]
    """The workspace; a state dir that overlaps ``root`` (the one the command
    names) or $ROSCOE_ROOT is refused before anything is created in it. For
    ``tx abort`` (``aborting``), a full state dir is given room first."""
    import os

    from journal.faults import Faults
    from journal.protocol import recover
    from journal.targets import BucketSettings
    from journal.workspace import Workspace

    roots = tuple(r for r in (root, os.environ.get("ROSCOE_ROOT")) if r)
    hooks = {"faults": Faults.from_env(os.environ), "bucket": BucketSettings.from_env(os.environ)}
    ws = (Workspace.open(roots=roots, **hooks) if aborting is None
          else Workspace.open_to_abort(aborting, roots=roots, **hooks))
    try:
        ws.recovered = recover(ws)
    except BaseException:
        ws.close()
        raise
    for r in ws.recovered:
        say(recovered_line(r))
    return ws


def recovered_line(r) -> str:  # type: ignore[no-untyped-def]
    """What recovery did to one interrupted commit (a journal.protocol.Recovered)."""
    return (f"recovered the interrupted commit of tx {r.tx}: its {r.paths} paths under {r.root}"
            f" are as they were before it; the transaction is {r.state}")


def commit_with_prompt(ws, tx_id: str, *, yes: bool, json_: bool = False):  # type: ignore[no-untyped-def]
    """Commit ``tx_id``: on a terminal show the diff and ask first (unless
    ``yes``; with ``json_`` the diff is not shown, stdout being the JSON's),
    with a progress bar while it applies. Returns the committed transaction;
    raises ``Declined`` when the person declined (it stays open)."""
    import sys

    from journal.protocol import commit

    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if interactive and not yes:
        from cli import render

        changes = ws.diff(tx_id)
        if not json_:
            render.diff(tx_id, changes)
        if not render.confirm(f"Commit these {len(changes.changes)} changes to {changes.root}?"):
            raise Declined(detail=f"tx {tx_id} not committed: declined at the prompt; it stays open")
    if interactive:
        from cli import render

        with render.progress("committing") as advance:
            record = commit(ws, tx_id, progress=advance)
    else:
        record = commit(ws, tx_id)
    rows = ws.journal.change_count(record.id)
    say(f"tx {record.id} committed: {rows} changes to {record.root} (roscoe tx rollback {record.id} undoes it)")
    warn(ws.notices)
    return record


def commit_command(ws, ref: str, *, yes: bool, json_: bool) -> int:  # type: ignore[no-untyped-def]
    """``tx commit ID [--yes] [--json]``."""
    record = commit_with_prompt(ws, ws.get(ref).id, yes=yes, json_=json_)
    if json_:
        write_json(committed_json(ws, record))
    return 0


def rollback_with_prompt(ws, ref: str, *, yes: bool, force: bool, json_: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Roll back ``ref``: on a terminal ask first (unless ``yes``). Prints the
    rollback's id on stdout (with ``json_``, the rollback transaction)."""
    import sys

    from journal.protocol import rollback

    record = ws.get(ref)
    if sys.stdin.isatty() and sys.stderr.isatty() and not yes:
        from cli import render

        if not render.confirm(f"Roll back the {ws.journal.change_count(record.id)} changes of tx {record.id} in {record.root}?"):
            raise Declined(detail=f"tx {record.id} not rolled back: declined at the prompt")
    undone = rollback(ws, record.id, force=force)
    rows = ws.journal.change_count(undone.id)
    if json_:
        write_json(committed_json(ws, undone))
        sys.stdout.flush()
    else:
        print(undone.id, flush=True)
    say(f"tx {record.id} rolled back by tx {undone.id}: {rows} paths put back in {undone.root}")
    warn(ws.notices)
    return 0
