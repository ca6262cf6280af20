"""``roscoe tx run`` and ``tx shell``: the commands on every agent call.

They import neither typer nor rich: ``main`` parses ``tx run`` with the small
table below so start-up stays near bare Python's. typer still declares the
same options (for ``--help`` and the man page); a test keeps the two in step.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from cowfs.errors import RoscoeError, UsageError

# option -> (attribute, takes a value)
RUN_OPTIONS: dict[str, tuple[str, bool]] = {
    "--tx": ("tx", True),
    "--root": ("root", True),
    "-m": ("message", True),
    "--message": ("message", True),
    "--network": ("network", True),
    "--timeout": ("timeout", True),
    "--report": ("report", True),
    "--commit": ("commit", False),
    "--yes": ("yes", False),
}


class HelpWanted(Exception):
    """``--help`` among the options: typer prints the help."""


class RunArgs:
    """The options and command of ``tx run`` (or ``tx shell``)."""

    def __init__(
        self, tx: str | None = None, root: str | None = None, message: str | None = None,
        network: str = "on", timeout: str | None = None, report: str | None = None,
        command: list[str] | None = None, commit: bool = False, yes: bool = False,
    ) -> None:
        self.tx, self.root, self.message = tx, root, message
        self.network, self.timeout, self.report = network, timeout, report
        self.command = command or []
        self.commit, self.yes = commit, yes


def parse_run_args(argv: list[str]) -> RunArgs:
    """Parse ``[OPTIONS] [--] CMD [ARG...]``: options stop at ``--`` or at CMD."""
    args = RunArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if name in ("--help", "-h"):
            raise HelpWanted
        if name not in RUN_OPTIONS:
            raise UsageError(detail=f"tx run: no such option: {name} (see roscoe tx run --help)")
        attr, takes_value = RUN_OPTIONS[name]
        if not takes_value:
            if eq:
                raise UsageError(detail=f"tx run: option {name} takes no value")
            setattr(args, attr, True)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError(detail=f"tx run: option {name} needs a value")
            value = argv[i + 1]
            i += 1
        setattr(args, attr, value)
        i += 1
    args.command = argv[i:]
    if not args.command:
        raise UsageError(detail="tx run: no command given (roscoe tx run [OPTIONS] -- CMD [ARG...])")
    return args


def parse_timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(detail=f"--timeout {value}: expected a number of seconds") from None
    if not seconds > 0:
        raise UsageError(detail=f"--timeout {value}: must be more than 0")
    return seconds


def parse_network(value: str) -> bool:
    if value not in ("on", "off"):
        raise UsageError(detail=f"--network {value}: expected on or off")
    return value == "on"


def default_root(root: str | None) -> str:
    chosen = root or os.environ.get("ROSCOE_ROOT")
    if not chosen:
        raise UsageError(detail="no root: pass --root DIR or set ROSCOE_ROOT")
    return chosen


def execute(args: RunArgs, *, interactive: bool = False) -> int:
    """Run ``args.command`` in its transaction; returns the exit code to exit with."""
    from cli.errors import say
    from cli.state import open_workspace

    network = parse_network(args.network)
    timeout = parse_timeout(args.timeout)
    ws = open_workspace()
    try:
        if args.tx:
            tx = ws.get(args.tx)
            if args.root and os.path.realpath(args.root) != tx.root:
                raise UsageError(detail=f"--root {args.root} is not the root of tx {tx.id} ({tx.root})")
            ws.require_open(tx, "run")
        else:
            root = ws.check_invocable(default_root(args.root), args.command)
            tx = ws.begin(root, args.message)
        say(f"tx {tx.id}")
        if interactive:
            say(f"shell in the staged overlay of {tx.root}; exit to leave (nothing lands until commit)")
        result = ws.run(tx.id, args.command, network=network, timeout=timeout)
        if args.report:
            write_report(args.report, result.report())
        summarize(tx.id, args, result)
        if args.commit:
            if result.exit_code != 0:
                say(f"tx {tx.id} not committed: the command exited {result.exit_code}; it stays open")
                return result.exit_code
            from cli.errors import fail
            from cli.state import commit_with_prompt

            try:
                commit_with_prompt(ws, tx.id, yes=args.yes)
            except RoscoeError as e:
                return fail(e)  # the commit's own code (1, 3, 4) wins over CMD's 0
            return result.exit_code
    finally:
        ws.close()
    return result.exit_code


def summarize(tx_id: str, args: RunArgs, result) -> None:  # type: ignore[no-untyped-def]
    """roscoe's closing lines of a run, on stderr."""
    from cli.errors import say

    if result.timed_out:
        say(f"tx {tx_id}: timed out after {args.timeout} s; every process of the run was killed")
    counts = result.changes.counts()
    staged = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n) or "no changes"
    cmd = shlex.join(args.command).replace("\n", "\\n")
    cmd = cmd if len(cmd) <= 60 else cmd[:57] + "..."
    say(
        f"tx {tx_id}: {cmd!s} exited {result.exit_code}; {staged} staged"
        f" ({result.backend}); review: roscoe tx diff {tx_id}"
    )
    for u in result.changes.unsupported:
        say(f"warning: {u.path!r} is a {u.type}: it cannot be committed")


def write_report(path: str, report: dict[str, object]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise UsageError(detail=f"--report {path}: {e.strerror}") from e


def shell_command() -> list[str]:
    shell = os.environ.get("SHELL") or "/bin/sh"
    return [shell, "-i"] if sys.stdin.isatty() else [shell]
