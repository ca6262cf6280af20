"""``roscoe tx plan``: read the plan, call ``journal.planning``, render."""

from __future__ import annotations

import sys

from cli.errors import say
from cli.errors import write_json
from cowfs.errors import UsageError


def read_plan(source: str) -> bytes:
    """The plan's bytes from a file, or from standard input for ``-``."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(detail=f"plan {source}: {e.strerror or e}", path=source) from None


def execute(
    settings, source: str | None, *, tx: str | None = None, root: str | None = None,  # type: ignore[no-untyped-def]
    dry_run: bool = False, json_: bool = False, schema: bool = False, hide: tuple[str, ...] | list[str] = (),
) -> int:
    from cowfs.plan import load, schema_text

    if schema:
        sys.stdout.write(schema_text())
        return 0
    if source is None:
        raise UsageError(detail="tx plan: no PLAN given (a JSON file, or - for standard input)")
    if settings.caller is not None and source != "-":  # (the client opens its file: cli.client)
        raise UsageError(detail=f"plan {source}: through the roscoe service a plan comes on standard input (-)")
    plan = load(read_plan(source))
    from cli.state import service

    with service(settings) as roscoe:
        if tx is None:
            root = roscoe.default_root(root)
        if dry_run:
            return _dry_run(roscoe.dry_run_plan(plan, tx=tx, root=root, hide=hide), json_)
        began: list[str] = []

        def opened(record) -> None:  # type: ignore[no-untyped-def]
            say(f"tx {record.id}")
            if tx is None:
                began.append(record.id)

        try:
            result = roscoe.stage_plan(plan, tx=tx, root=root, message=f"tx plan {source}", on_begin=opened,
                                       hide=hide)
        except BaseException:
            for tx_id in began:
                say(f"tx {tx_id} aborted: it was opened for this plan")
            raise
    if json_:
        write_json(result.to_json())
    elif result.began:
        print(result.tx)
    counts = result.changes.summary  # (a move counted once, as moved)
    staged = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n and k != "bytes_written") or "no changes"
    say(f"tx {result.tx}: plan of {result.ops} ops staged; the transaction now stages {staged}"
        f" ({result.backend}); review: roscoe tx diff {result.tx}")
    return 0


def _dry_run(outcome, json_: bool) -> int:  # type: ignore[no-untyped-def]
    if json_:
        write_json(outcome.changes.to_json(outcome.tx))
    else:
        from cli import render

        render.diff(outcome.tx or "(new)", outcome.changes)
    whose = f"tx {outcome.tx}" if outcome.tx else f"a new transaction over {outcome.root}"
    say(f"dry run: nothing was staged; that is the diff {whose} would have after the plan's {outcome.ops} ops")
    return 0
