"""The ``roscoe`` entry point: global options, the typer-free paths an agent
calls most (``tx run``, ``tx diff ID --json``, ``tx commit ID``), then typer.

When a roscoe service is there (``ROSCOE_SOCKET``, else the default socket
exists), every command but ``serve`` and ``mcp`` goes to it instead
(``cli.client``): same commands, output and exit codes, decided by the
service."""

from __future__ import annotations

import os
import sys

from cli.errors import fail, json_requested, use_json
from cli.options import Globals, settings, split_globals
from cowfs.errors import RoscoeError

LOCAL_ONLY = ("serve", "mcp")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    g = Globals()
    in_run = argv[:2] == ["tx", "run"] or argv[:2] == ["tx", "shell"]
    use_json(json_requested(argv))
    try:
        g, rest = split_globals(argv)
        in_run = rest[:2] in (["tx", "run"], ["tx", "shell"])
        use_json(json_requested(rest))
        if rest[:1] and rest[0] not in LOCAL_ONLY:
            from cli.client import socket_path

            path = socket_path(os.environ)
            if path is not None:
                from cli.client import forward

                return forward(argv, path, in_run=in_run)
        if rest[:1] == ["serve"]:
            from cli.serve import main as serve

            return serve(rest[1:], settings(g), dispatch)
        return dispatch(rest, settings(g))
    except (RoscoeError, OSError, KeyboardInterrupt, Exception) as e:
        return fail(e, in_run=in_run, debug=g.debug)


def dispatch(rest: list[str], given) -> int:  # type: ignore[no-untyped-def]
    """Run the command ``rest`` (global options taken off) with the settings
    ``given``: here for a local command, in ``roscoe serve`` for a client's."""
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


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
