"""The agent's other hot paths, without typer or rich: ``tx diff ID --json``
and ``tx commit ID [--yes]``, when their arguments have exactly these shapes.

An agent reads the diff and commits on every transaction; typer and rich
cost ~200 ms a call. Anything else (help, other options) goes to typer.
"""

from __future__ import annotations


def fast_path(argv: list[str]) -> int | None:
    """Run ``argv`` if it is one of the shapes above; None lets typer parse it."""
    if len(argv) < 3 or argv[0] != "tx" or argv[2].startswith("-"):
        return None
    command, ref, options = argv[1], argv[2], argv[3:]
    if command == "diff" and options == ["--json"]:
        return diff_json(ref)
    if command == "commit" and options in ([], ["--yes"]):
        return commit(ref, yes=bool(options))
    return None


def diff_json(ref: str) -> int:
    from cli.state import open_workspace, write_json

    ws = open_workspace()
    try:
        tx = ws.get(ref)
        write_json(ws.diff(tx.id).to_json(tx.id))
    finally:
        ws.close()
    return 0


def commit(ref: str, *, yes: bool) -> int:
    from cli.state import commit_with_prompt, open_workspace

    ws = open_workspace()
    try:
        return 0 if commit_with_prompt(ws, ws.get(ref).id, yes=yes) else 1
    finally:
        ws.close()
