"""The one place errors become messages and exit codes (and, with ``--json``,
the contract's error object on stdout), with the two ways every command
speaks: ``say`` (a roscoe line on stderr) and ``write_json`` (stdout).

cli's own error (``Declined``) is here; the library's are in
``cowfs.errors`` (the root of the hierarchy) and ``journal.errors``."""

from __future__ import annotations

import json
import os
import sys

from cowfs.errors import ExitCode, RoscoeError, error_json

RUN_OWN_CODES = (ExitCode.CANNOT_INVOKE, ExitCode.NOT_FOUND)
# The commands whose stdout is CMD's own: they take no --json (their JSON is
# ``tx run --report FILE``). Every other command takes it.
NO_JSON = (("tx", "run"), ("tx", "shell"))


class Declined(RoscoeError):
    """{detail}"""


class _Output:
    json = False  # print failures as the error object on stdout too


OUTPUT = _Output()


def json_requested(args: list[str]) -> bool:
    """Whether ``args`` (the command line after the global options) asks for
    JSON: ``--json`` among the command's arguments, before any ``--``. Known
    before typer parses anything, so that its usage errors, and failures
    before the command runs, print the error object too."""
    if tuple(args[:2]) in NO_JSON:
        return False
    head = args[: args.index("--")] if "--" in args else args
    return "--json" in head


def use_json(on: bool) -> None:
    OUTPUT.json = on


def say(line: str) -> None:
    """One roscoe line on stderr (never stdout, which belongs to data and CMD)."""
    sys.stderr.write(f"roscoe: {line}\n")
    sys.stderr.flush()


def write_json(data: object) -> None:
    """The JSON every --json prints: one document, indented, on stdout."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_error_json(error: dict[str, object]) -> None:
    """The error object on stdout, when the command line asked for JSON."""
    if OUTPUT.json:
        write_json(error)
        sys.stdout.flush()


def warn(notices: list[str]) -> None:
    """What the library could not do but did not fail for (a notify command that failed)."""
    for notice in notices:
        say(f"warning: {notice}")


def fail(err: BaseException, *, in_run: bool = False, debug: bool = False) -> int:
    """Print ``roscoe: error: ...`` for ``err`` (and with ``--json`` the error
    object on stdout) and return the exit code to use.

    Inside ``tx run`` and ``tx shell`` roscoe's own failures are 125, like
    ``docker run``; 126 and 127 keep their meaning.
    """
    if debug or os.environ.get("ROSCOE_DEBUG"):
        import traceback

        traceback.print_exception(err, file=sys.stderr)
    error = describe(err)
    detail = error["error"]
    assert isinstance(detail, dict)
    say(f"error: {detail['message']}")
    code = int(detail["code"])
    if in_run:
        return code if code in RUN_OWN_CODES else int(ExitCode.RUN_FAILED)
    print_error_json(error)
    return code


def describe(err: BaseException) -> dict[str, object]:
    """The error object of any exception."""
    if isinstance(err, RoscoeError):
        return err.to_json()
    if isinstance(err, KeyboardInterrupt):
        return error_json(130, "error", str(err) or "interrupted", [])
    if isinstance(err, OSError):
        named = [os.fsdecode(f) if isinstance(f, (str, bytes)) else str(f)
                 for f in (err.filename, err.filename2) if f is not None]
        where = f" {err.filename!r}" if err.filename else ""
        return error_json(ExitCode.ERROR, "error", f"{err.strerror or err}{where}", named)
    return error_json(ExitCode.ERROR, "error",
                      f"internal error: {type(err).__name__}: {err} (run with --debug for details)", [])
