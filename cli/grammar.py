"""The options of the global flags and of the commands with a fast path
(``tx run``, ``tx shell``, ``tx plan``, ``tx diff``, ``tx commit``,
``tx rollback``): names, whether each takes a value, metavar and help, once.

The typer-free parsers (``cli.options``, ``cli.run``, ``cli.agent``) read
these tables; ``cli.app`` builds its typer options from them and checks, as
it declares each command, that the command's parameters are the table's.
(No typer here: ``tx run`` imports this module.)
"""

from __future__ import annotations

from collections import namedtuple


class Opt(namedtuple("_Opt", "names attr value metavar help repeatable", defaults=(None, "", False))):
    """One option: its spellings (``names``), the parameter it sets
    (``attr``), whether it takes a value (else it is a flag), its metavar
    and help, and whether it may be given more than once."""

    __slots__ = ()
    names: tuple[str, ...]
    attr: str
    value: bool
    metavar: str | None
    help: str
    repeatable: bool


def value(names: str, attr: str, metavar: str, help: str, *, repeatable: bool = False) -> Opt:
    return Opt(tuple(names.split()), attr, True, metavar, help, repeatable)


def flag(names: str, attr: str, help: str) -> Opt:
    return Opt(tuple(names.split()), attr, False, None, help)


def spellings(table: tuple[Opt, ...]) -> dict[str, Opt]:
    """Each spelling of the table's options, to its option."""
    return {name: o for o in table for name in o.names}


def flags(table: tuple[Opt, ...], *leave_out: str) -> set[str]:
    """The spellings of the table's flags, but for ``leave_out``."""
    return {n for o in table if not o.value for n in o.names if n not in leave_out}


GLOBAL = (
    value("--home", "home", "DIR",
          "State dir: journal, staging, blobs (default $ROSCOE_HOME, else $XDG_STATE_HOME/roscoe)."),
    value("--config", "config", "FILE", "Config file (default $ROSCOE_CONFIG, else $ROSCOE_HOME/config.toml)."),
    flag("--debug", "debug", "Show tracebacks of internal errors."),
)

SERVE = (
    value("--socket", "socket", "PATH",
          "The unix socket to listen on (default: the config's [serve] socket, else /run/roscoe/roscoe.sock)."),
    value("--http-socket", "http_socket", "PATH",
          "Also answer HTTP/JSON on this unix socket (default: the config's [serve] http_socket; its default,"
          " /run/roscoe/http.sock, only when the main socket is in /run/roscoe)."),
    value("--http", "http", "HOST:PORT",
          "Also answer HTTP/JSON on this loopback TCP address; every request needs the bearer token of the"
          " config's [serve] http_token_file."),
    flag("--json", "json_", "When it stops, print what it served as one JSON object."),
)

TX = value("--tx", "tx", "ID", "Use this open transaction instead of a new one.")
ROOT = value("--root", "root", "DIR", "The live tree to stage (default $ROSCOE_ROOT).")
HIDE = value(
    "--hide", "hide", "PATH", "Hide PATH (relative to the root, or absolute outside it) from the run: it sees an"
    " empty read-only dir or file there (repeatable; adds to the config's [run] hide).", repeatable=True)
JSON = flag("--json", "json_", "Print JSON instead of a table.")
JSON_RESULT = flag("--json", "json_", "Print the result as one JSON object.")
YES = flag("--yes", "yes", "Do not ask first on a terminal.")

# tx shell's options are tx run's sandbox options
SANDBOX = (
    TX, ROOT,
    value("--network", "network", "on|off", "Give the run the host's network (on) or only a private loopback (off)."),
    value("--timeout", "timeout", "SECONDS", "Kill every process of the run after this long (exit 124)."),
    value("--memory", "memory", "SIZE", "Memory limit of the whole run, e.g. 512M or 2G (a cgroup; else RLIMIT_AS"
          " per process, with a warning)."),
    value("--pids", "pids", "N", "At most N processes at once in the run (needs a cgroup)."),
    value("--env", "env", "KEY=VAL", "Set a variable in the run's environment (repeatable).", repeatable=True),
    flag("--clean-env", "clean_env", "Pass only PATH, HOME, LANG and TERM of roscoe's environment (plus --env)."),
    value("--writable", "writable", "PATH", "Let the run write PATH, outside the root, for real (repeatable).",
          repeatable=True),
    HIDE,
)
SHELL = SANDBOX
RUN = (
    *SANDBOX,
    value("-m --message", "message", "MSG", "Message of the new transaction."),
    value("--report", "report", "FILE", "Write the run's JSON report to FILE."),
    flag("--commit", "commit", "Commit afterwards when CMD exited 0 (asks first on a terminal)."),
    flag("--yes", "yes", "With --commit: do not ask."),
)
PLAN = (
    TX, ROOT,
    flag("--dry-run", "dry_run", "Print the diff the transaction would have after the plan; stage nothing."),
    flag("--json", "json_", "Print JSON: the dry run's diff, or what was staged."),
    flag("--schema", "schema", "Print the plan's JSON Schema and exit."),
    HIDE,
)
DIFF = (
    JSON,
    flag("--patch", "patch", "Unified diffs of changed text files."),
    flag("--stat", "stat", "One line per path and a summary."),
)
COMMIT = (YES, JSON_RESULT)
ROLLBACK = (
    YES,
    flag("--force", "force", "Roll back even paths changed since the commit."),
    flag("--dry-run", "dry_run", "Print the diff the rollback would apply; stage and write nothing."),
    JSON_RESULT,
)
