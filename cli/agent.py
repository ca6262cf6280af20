"""The agent's other hot paths, without typer or rich: ``tx diff ID --json``,
``tx commit ID [--yes] [--json]``, ``tx rollback ID [--yes] [--force] [--json]``
and ``tx plan [--tx ID] [--root DIR] [--hide PATH]... [--dry-run] [--json] PLAN``,
when their arguments have exactly these shapes (flags in any order, each once).

An agent reads the diff and commits on every transaction, and stages plans;
an operator's rollback should be as quick as the commit it undoes. Typer and
rich cost ~200 ms a call. Anything else (help, other options, the
``--opt=value`` spelling) goes to typer. The options are those of
``cli.grammar``'s tables, which typer's are built from.
"""

from __future__ import annotations

from cli import grammar

PLAN_VALUES = tuple(n for o in grammar.PLAN if o.value and not o.repeatable for n in o.names)
PLAN_REPEATABLE = tuple(n for o in grammar.PLAN if o.repeatable for n in o.names)
PLAN_FLAGS = tuple(sorted(grammar.flags(grammar.PLAN, "--schema")))
# tx COMMAND ID [FLAG...]: the flags each fast path takes, and those it needs.
FLAGS = {
    "diff": (grammar.flags(grammar.DIFF, "--patch", "--stat"), {"--json"}),
    "commit": (grammar.flags(grammar.COMMIT), set()),
    "rollback": (grammar.flags(grammar.ROLLBACK, "--dry-run"), set()),
}


def fast_path(argv: list[str], settings) -> int | None:  # type: ignore[no-untyped-def]
    """Run ``argv`` if it is one of the shapes above; None lets typer parse it."""
    if argv[:2] == ["tx", "plan"]:
        return plan(argv[2:], settings)
    if len(argv) < 3 or argv[0] != "tx" or argv[2].startswith("-"):
        return None
    command, ref, options = argv[1], argv[2], argv[3:]
    if command not in FLAGS:
        return None
    takes, needs = FLAGS[command]
    flags = set(options)
    if len(flags) != len(options) or not needs <= flags <= takes:
        return None
    from cli.errors import write_json
    from cli.state import commit_command, rollback_with_prompt, service

    with service(settings) as roscoe:
        if command == "diff":
            tx = roscoe.get(ref)
            write_json(roscoe.diff(tx.id).to_json(tx.id))
            return 0
        if command == "commit":
            return commit_command(roscoe, ref, yes="--yes" in flags, json_="--json" in flags)
        return rollback_with_prompt(roscoe, ref, yes="--yes" in flags, force="--force" in flags,
                                    json_="--json" in flags)


def plan(args: list[str], settings) -> int | None:  # type: ignore[no-untyped-def]
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

    return execute(settings, source, tx=values.get("--tx"), root=values.get("--root"),
                   dry_run="--dry-run" in flags, json_="--json" in flags, hide=hide)
