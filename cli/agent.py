"""The agent's other hot paths, without typer or rich: ``tx diff ID --json``,
``tx commit ID [--yes]``, ``tx rollback ID [--yes] [--force]`` and ``tx plan
[--tx ID] [--root DIR] [--hide PATH]... [--dry-run] [--json] PLAN``, when their
arguments have exactly these shapes.

An agent reads the diff and commits on every transaction, and stages plans;
an operator's rollback should be as quick as the commit it undoes. Typer and
rich cost ~200 ms a call. Anything else (help, other options, the
``--opt=value`` spelling) goes to typer.
"""

from __future__ import annotations

PLAN_VALUES = ("--tx", "--root")
PLAN_REPEATABLE = ("--hide",)
PLAN_FLAGS = ("--dry-run", "--json")


def fast_path(argv: list[str]) -> int | None:
    """Run ``argv`` if it is one of the shapes above; None lets typer parse it."""
    if argv[:2] == ["tx", "plan"]:
        return plan(argv[2:])
    if len(argv) < 3 or argv[0] != "tx" or argv[2].startswith("-"):
        return None
    command, ref, options = argv[1], argv[2], argv[3:]
    if command == "diff" and options == ["--json"]:
        return diff_json(ref)
    if command == "commit" and options in ([], ["--yes"]):
        return commit(ref, yes=bool(options))
    if command == "rollback" and set(options) <= {"--yes", "--force"} and len(set(options)) == len(options):
        return rollback(ref, yes="--yes" in options, force="--force" in options)
    return None


def plan(args: list[str]) -> int | None:
    values: dict[str, str] = {}
    hide: list[str] = []
    flags: set[str] = set()
    source = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in PLAN_VALUES and arg not in values and i + 1 < len(args):
            values[arg] = args[i + 1]
            i += 2
            continue
        if arg in PLAN_REPEATABLE and i + 1 < len(args):
            hide.append(args[i + 1])
            i += 2
            continue
        if arg in PLAN_FLAGS and arg not in flags:
            flags.add(arg)
        elif source is None and (arg == "-" or not arg.startswith("-")):
            source = arg
        else:
            return None
        i += 1
    if source is None:
        return None
    from cli.plan import execute

    return execute(source, tx=values.get("--tx"), root=values.get("--root"),
                   dry_run="--dry-run" in flags, json_="--json" in flags, hide=hide)


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


def rollback(ref: str, *, yes: bool, force: bool) -> int:
    from cli.state import open_workspace, rollback_with_prompt

    ws = open_workspace()
    try:
        return rollback_with_prompt(ws, ref, yes=yes, force=force)
    finally:
        ws.close()
