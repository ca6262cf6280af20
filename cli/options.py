"""Global options (``roscoe [--home DIR] [--config FILE] [--debug] ...``), parsed
without typer (from ``cli.grammar.GLOBAL``) so that ``tx run`` can start fast."""

from __future__ import annotations

from cli.grammar import GLOBAL, spellings
from cowfs.errors import UsageError

OPTIONS = spellings(GLOBAL)


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
        option = OPTIONS.get(name)
        if option is not None and option.value:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(detail=f"option {name} needs a value")
                value = argv[i + 1]
                i += 1
            setattr(g, option.attr, value)
        elif option is not None and arg == name:
            setattr(g, option.attr, True)
        else:
            break
        i += 1
    return g, argv[i:]


def settings(g: Globals):  # type: ignore[no-untyped-def]
    """The settings of this command (journal.settings): the global options,
    the environment filling in the rest. The one place the CLI reads it."""
    import os

    from journal.settings import Settings

    return Settings.from_env(os.environ, home=g.home, config=g.config, debug=g.debug)
