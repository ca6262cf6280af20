"""The agent's other hot paths, without typer or rich: ``tx diff ID --json``,
``tx commit ID [--yes] [--json]``, ``tx rollback ID [--yes] [--force] [--json]``
and ``tx plan [--tx ID] [--root DIR] [--hide PATH]... [--dry-run] [--json] PLAN``,
when their arguments have exactly these shapes (flags in any order, each once).

An agent reads the diff and commits on every transaction, and stages plans;
an operator's rollback should be as quick as the commit it undoes. Typer and
rich cost ~200 ms a call. Anything else (help, other options, the
``--opt=value`` spelling) goes to typer.
"""

from __future__ import annotations

PLAN_VALUES = ("--tx", "--root")
PLAN_REPEATABLE = ("--hide",)
PLAN_FLAGS = ("--dry-run", "--json")
# tx COMMAND ID [FLAG...]: the flags each fast path takes, and those it needs
# (tests/test_json.py checks them against typer's options).
FLAGS = {
    "diff": ({"--json"}, {"--json"}),
    "commit": ({"--yes", "--json"}, set()),
    "rollback": ({"--yes", "--force", "--json"}, set()),
}


def fast_path(argv: list[str]) -> int | None:
    """Run ``argv`` if it is one of the shapes above; None lets typer parse it."""
    if argv[:2] == ["tx", "plan"]:
        return plan(argv[2:])
    if len(argv) < 3 or argv[0] != "tx" or argv[2].startswith("-"):
        return None
    command, ref, options = argv[1], argv[2], argv[3:]
    if command not in FLAGS:
        return None
    takes, needs = FLAGS[command]
    flags = set(options)
    if len(flags) != len(options) or not needs <= flags <= takes:
        return None
    if command == "diff":
        return diff_json(ref)
    if command == "commit":
        return commit(ref, yes="--yes" in flags, json_="--json" in flags)
    return rollback(ref, yes="--yes" in flags, force="--force" in flags, json_="--json" in flags)


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
    from cli.errors import write_json
    from cli.state import open_workspace

    ws = open_workspace()
    try:
        tx = ws.get(ref)
        write_json(ws.diff(tx.id).to_json(tx.id))
    finally:
        ws.close()
    return 0


def commit(ref: str, *, yes: bool, json_: bool) -> int:
    from cli.state import commit_command, open_workspace

    ws = open_workspace()
    try:
        return commit_command(ws, ref, yes=yes, json_=json_)
    finally:
        ws.close()


def rollback(ref: str, *, yes: bool, force: bool, json_: bool) -> int:
    from cli.state import open_workspace, rollback_with_prompt

    ws = open_workspace()
    try:
        return rollback_with_prompt(ws, ref, yes=yes, force=force, json_=json_)
    finally:
        ws.close()
