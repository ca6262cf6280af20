"""The one place errors become messages and exit codes."""

from __future__ import annotations

import os
import sys

from cowfs.errors import ExitCode, RoscoeError

RUN_OWN_CODES = (ExitCode.CANNOT_INVOKE, ExitCode.NOT_FOUND)


def say(line: str) -> None:
    """One roscoe line on stderr (never stdout, which belongs to data and CMD)."""
    sys.stderr.write(f"roscoe: {line}\n")
    sys.stderr.flush()


def warn(notices: list[str]) -> None:
    """What the library could not do but did not fail for (a notify command that failed)."""
    for notice in notices:
        say(f"warning: {notice}")


def fail(err: BaseException, *, in_run: bool = False, debug: bool = False) -> int:
    """Print ``roscoe: error: ...`` for ``err`` and return the exit code to use.

    Inside ``tx run`` and ``tx shell`` roscoe's own failures are 125, like
    ``docker run``; 126 and 127 keep their meaning.
    """
    if debug or os.environ.get("ROSCOE_DEBUG"):
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    if isinstance(err, RoscoeError):
        say(f"error: {err.message}")
        code = int(err.exit_code)
    elif isinstance(err, KeyboardInterrupt):
        say("error: interrupted")
        code = 130
    elif isinstance(err, OSError):
        where = f" {err.filename!r}" if err.filename else ""
        say(f"error: {err.strerror or err}{where}")
        code = int(ExitCode.ERROR)
    else:
        say(f"error: internal error: {type(err).__name__}: {err} (run with --debug for details)")
        code = int(ExitCode.ERROR)
    if in_run and code not in RUN_OWN_CODES:
        return int(ExitCode.RUN_FAILED)
    return code
