"""The root of roscoe's one error hierarchy, and cowfs's own errors.

Every failure a user can see is a ``RoscoeError``. Each subclass's docstring
is its message template (formatted with the keyword arguments it was raised
with; a list is shown comma-joined) and ``exit_code`` is the contract's code.
``kind`` is the contract's error kind (``--json`` prints it), the kind of
``exit_code`` unless the class names one in ``error_kind``; ``paths`` are the
paths the error names, taken from the fields listed in ``path_fields``.

The hierarchy lives in two modules, one per library, so that cowfs never
imports journal: this one holds the base (``RoscoeError``, ``ExitCode``,
``UsageError``) and the errors of trees and staging (sandbox, stagers, the
live tree, plans, the GCS client); ``journal.errors`` holds the journal's
(transactions, the state dir, commit, policy, approval), subclasses of the
classes here. A new error goes in the errors module of the package that
raises it, never in the module that raises it. The CLI has one handler
(``cli.errors.fail``) that prints ``roscoe: error: <message>`` (and, with
``--json``, ``to_json()``) and exits with ``exit_code``.

Exceptions that never reach a user (an internal signal caught a few lines
up, such as ``cowfs.gcs.PreconditionFailed``) stay beside their code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    CONFLICT = 3
    REFUSED = 4
    NO_SUCH_TX = 5
    RECOVERED = 6
    RUN_FAILED = 125
    CANNOT_INVOKE = 126
    NOT_FOUND = 127


# The contract's error kinds (``{"error": {"kind": ...}}``).
KINDS = ("usage", "conflict", "refused", "approval_needed", "rejected", "no_such_tx", "busy", "recovered", "error")
KIND_OF_CODE = {
    ExitCode.USAGE: "usage", ExitCode.CONFLICT: "conflict", ExitCode.REFUSED: "refused",
    ExitCode.NO_SUCH_TX: "no_such_tx", ExitCode.RECOVERED: "recovered",
}


def error_json(code: int, kind: str, message: str, paths: list[str]) -> dict[str, object]:
    """The contract's error object, ``{"error": {...}}``."""
    return {"error": {"code": int(code), "kind": kind, "message": message, "paths": list(paths)}}


class RoscoeError(Exception):
    """{detail}"""

    exit_code: ExitCode = ExitCode.ERROR
    error_kind: str | None = None  # None: the kind of exit_code
    path_fields: tuple[str, ...] = ("path", "paths")

    def __init__(self, **fields: object) -> None:
        self.fields = fields
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = " ".join((type(self).__doc__ or "{detail}").split())
        shown = {k: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in self.fields.items()}
        try:
            return template.format(**shown)
        except (KeyError, IndexError):
            return f"{template} {self.fields}"

    @property
    def kind(self) -> str:
        return self.error_kind or KIND_OF_CODE.get(self.exit_code, "error")

    @property
    def paths(self) -> list[str]:
        """The paths the error names, in order, each once."""
        found: list[str] = []
        for name in self.path_fields:
            value = self.fields.get(name)
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if path is not None and str(path) not in found:
                    found.append(str(path))
        return found

    def to_json(self) -> dict[str, object]:
        return error_json(self.exit_code, self.kind, self.message, self.paths)


class UsageError(RoscoeError):
    """{detail}"""

    exit_code = ExitCode.USAGE


class SandboxError(RoscoeError):
    """cannot run in a sandbox: {detail}"""


class NoBackend(RoscoeError):
    """no staging backend works for root {root}: {detail}"""

    path_fields = ("root",)


class CommandNotFound(RoscoeError):
    """command not found: {cmd}"""

    exit_code = ExitCode.NOT_FOUND


class CommandNotExecutable(RoscoeError):
    """command cannot be invoked: {cmd}: {reason}"""

    exit_code = ExitCode.CANNOT_INVOKE


class StateDirError(RoscoeError):
    """state dir {home}: {reason}"""

    path_fields = ("home",)


class LiveUnreadable(RoscoeError):
    """the live tree {root} cannot be read at {path}: {detail}"""


class UnsafePath(RoscoeError):
    """refusing the path {path!r} under {root}: it is not a plain path inside the root (absolute, or with an empty, '.' or '..' name); nothing was changed there"""


class PlanError(UsageError):
    """plan{where}: {reason}; nothing of the plan was staged"""


class GcsError(RoscoeError):
    """{url}: {reason}"""


class NoSuchBucket(GcsError):
    """{url}: bucket {bucket} does not exist (or these credentials cannot see it)"""


class NoCredentials(GcsError):
    """{url}: no Google credentials found ({reason}); run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or point STORAGE_EMULATOR_HOST at an emulator"""


class GcsUnreachable(GcsError):
    """{url}: cannot reach the GCS API at {endpoint} ({reason}); nothing was left half-written: run `roscoe recover` once it is reachable if a commit was interrupted"""
