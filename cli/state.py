"""The service a command calls (journal.service), with what recovery did
said on stderr, and the prompts of commit and rollback around it."""

from __future__ import annotations

import sys

from cli.errors import Declined, say, warn, write_json


def committed_json(roscoe, record) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What ``tx commit --json`` and ``tx rollback --json`` print: the
    transaction as ``tx log --json`` lists it."""
    return roscoe.entry(record.id).to_json()


def service(settings):  # type: ignore[no-untyped-def]
    """The commands (journal.service) over the settings' state dir; what
    recovery did when it opens is said on stderr."""
    from journal.service import Service

    return Service(settings, on_recovered=lambda r: say(recovered_line(r)))


def recovered_line(r) -> str:  # type: ignore[no-untyped-def]
    """What recovery did to one interrupted commit (a journal.protocol.Recovered)."""
    if r.state == "committed":
        return (f"recovered the interrupted commit of tx {r.tx}: it had reached its commit point on {r.root},"
                " so it was finished; the transaction is committed")
    return (f"recovered the interrupted commit of tx {r.tx}: its {r.paths} paths under {r.root}"
            f" are as they were before it; the transaction is {r.state}")


def commit_with_prompt(roscoe, tx_id: str, *, yes: bool, json_: bool = False):  # type: ignore[no-untyped-def]
    """Commit ``tx_id``: on a terminal show the diff and ask first (unless
    ``yes``; with ``json_`` the diff is not shown, stdout being the JSON's),
    with a progress bar while it applies. Returns the committed transaction;
    raises ``Declined`` when the person declined (it stays open)."""
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if interactive and not yes:
        from cli import render

        changes = roscoe.diff(tx_id)
        if not json_:
            render.diff(tx_id, changes)
        if not render.confirm(f"Commit these {len(changes.changes)} changes to {changes.root}?"):
            raise Declined(detail=f"tx {tx_id} not committed: declined at the prompt; it stays open")
    if interactive:
        from cli import render

        with render.progress("committing") as advance:
            record = roscoe.commit(tx_id, progress=advance)
    else:
        record = roscoe.commit(tx_id)
    rows = roscoe.entry(record.id).changes
    say(f"tx {record.id} committed: {rows} changes to {record.root} (roscoe tx rollback {record.id} undoes it)")
    warn(roscoe.notices)
    return record


def commit_command(roscoe, ref: str, *, yes: bool, json_: bool) -> int:  # type: ignore[no-untyped-def]
    """``tx commit ID [--yes] [--json]``."""
    record = commit_with_prompt(roscoe, roscoe.get(ref).id, yes=yes, json_=json_)
    if json_:
        write_json(committed_json(roscoe, record))
    return 0


def rollback_with_prompt(roscoe, ref: str, *, yes: bool, force: bool, json_: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Roll back ``ref``: on a terminal ask first (unless ``yes``). Prints the
    rollback's id on stdout (with ``json_``, the rollback transaction)."""
    record = roscoe.get(ref)
    if sys.stdin.isatty() and sys.stderr.isatty() and not yes:
        from cli import render

        if not render.confirm(f"Roll back the {roscoe.entry(record.id).changes} changes of tx {record.id} in {record.root}?"):
            raise Declined(detail=f"tx {record.id} not rolled back: declined at the prompt")
    undone = roscoe.rollback(record.id, force=force)
    rows = roscoe.entry(undone.id).changes
    if json_:
        write_json(committed_json(roscoe, undone))
        sys.stdout.flush()
    else:
        print(undone.id, flush=True)
    say(f"tx {record.id} rolled back by tx {undone.id}: {rows} paths put back in {undone.root}")
    warn(roscoe.notices)
    return 0
