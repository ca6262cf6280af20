"""The ``roscoe`` entry point: global options, the typer-free paths an agent
calls most (``tx run``, ``tx diff ID --json``, ``tx commit ID``), then typer."""

from __future__ import annotations

import sys

from cli.errors import fail, json_requested, use_json
from cli.options import Globals, settings, split_globals
from cowfs.errors import RoscoeError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    g = Globals()
    in_run = argv[:2] == ["tx", "run"] or argv[:2] == ["tx", "shell"]
    use_json(json_requested(argv))
    try:
        g, rest = split_globals(argv)
        in_run = rest[:2] in (["tx", "run"], ["tx", "shell"])
        use_json(json_requested(rest))
        given = settings(g)
        if rest[:2] == ["tx", "run"]:
            from cli.run import HelpWanted, execute, parse_run_args

            try:
                return execute(parse_run_args(rest[2:]), given)
            except HelpWanted:
                pass
        from cli.agent import fast_path

        code = fast_path(rest, given)
        if code is not None:
            return code
        from cli.app import invoke

        return invoke(rest, given)
    except (RoscoeError, OSError, KeyboardInterrupt, Exception) as e:
        return fail(e, in_run=in_run, debug=g.debug)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
