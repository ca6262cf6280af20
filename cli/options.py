"""Global options (``roscoe [--home DIR] [--config FILE] [--debug] ...``), parsed
without typer so that ``tx run`` can start fast."""

from __future__ import annotations

import os

from cowfs.errors import UsageError

GLOBAL_WITH_VALUE = ("--home", "--config")
GLOBAL_FLAGS = ("--debug",)


class Globals:
    """The global options, before the subcommand."""

    def __init__(self) -> None:
        self.home: str | None = None
        self.config: str | None = None
        self.debug = False


def split_globals(argv: list[str]) -> tuple[Globals, list[str]]:
    """Take the global options off the front of ``argv``."""
    g = Globals()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in GLOBAL_WITH_VALUE:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(detail=f"option {name} needs a value")
                value = argv[i + 1]
                i += 1
            setattr(g, name[2:], value)
        elif arg in GLOBAL_FLAGS:
            g.debug = True
        else:
            break
        i += 1
    return g, argv[i:]


def apply(g: Globals) -> None:
    """Make the global options visible to the libraries, which read the environment."""
    if g.home:
        os.environ["ROSCOE_HOME"] = os.path.abspath(g.home)
    if g.config:
        if not os.path.isfile(g.config):
            raise UsageError(detail=f"config file {g.config} does not exist", path=g.config)
        os.environ["ROSCOE_CONFIG"] = os.path.abspath(g.config)
