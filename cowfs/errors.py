"""The one error hierarchy of roscoe: every failure a user can see, with its exit code.

Each subclass's docstring is its message template (formatted with the keyword
arguments it was raised with; a list is shown comma-joined) and ``exit_code``
is the contract's code. ``kind`` is the contract's error kind (``--json``
prints it), the kind of ``exit_code`` unless the class names one in
``error_kind``; ``paths`` are the paths the error names, taken from the fields
listed in ``path_fields``. The CLI has one handler that prints
``roscoe: error: <message>`` (and, with ``--json``, ``to_json()``) and exits.
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


class RootError(UsageError):
    """root {root}: {reason}"""

    path_fields = ("root",)


class NoSuchTransaction(RoscoeError):
    """no such transaction: {tx}"""

    exit_code = ExitCode.NO_SUCH_TX


class AmbiguousTransaction(UsageError):
    """transaction id {tx} is ambiguous: it matches {matches}"""


class TransactionState(RoscoeError):
    """transaction {tx} is {state}: {action} needs an open transaction"""


class TransactionBusy(RoscoeError):
    """transaction {tx} is busy: another roscoe process is using it (pid {pid})"""

    error_kind = "busy"


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


class StateDirFull(StateDirError):
    """state dir {home}: its filesystem is out of {what} ({where}); {outcome}"""

    @property
    def cause(self) -> str:
        """What ran out and where, without the outcome."""
        return "state dir {home}: its filesystem is out of {what} ({where})".format(**self.fields)


class StagingDiscarded(RoscoeError):
    """the staged changes of transaction {tx} were discarded by an abort that could not be journaled;
    nothing of it can be run, shown or committed: roscoe tx abort {tx} finishes the abort"""


class AbortNotJournaled(RoscoeError):
    """transaction {tx}: its staged changes are discarded, but the abort could not be journaled: {reason};
    once there is room, roscoe tx abort {tx} finishes it"""


class StagingCorrupt(RoscoeError):
    """the staged changes of transaction {tx} cannot be read: {detail}"""


class LiveUnreadable(RoscoeError):
    """the live tree {root} cannot be read at {path}: {detail}"""


class ConfigError(UsageError):
    """config {path}: {reason}"""


class Conflict(RoscoeError):
    """{what}: the live tree changed under transaction {tx}; nothing was written. Changed: {changed}"""

    exit_code = ExitCode.CONFLICT

    def __init__(self, **fields: object) -> None:
        # ``paths`` (a list) is what --json names; the message shows them and ``since``
        paths = fields.get("paths") or []
        if isinstance(paths, str):
            paths = fields["paths"] = [paths]
        assert isinstance(paths, (list, tuple))
        fields.setdefault("changed", ", ".join(map(str, paths)) + str(fields.get("since", "")))
        super().__init__(**fields)


class Refused(RoscoeError):
    """transaction {tx} cannot be committed: {reason}"""

    exit_code = ExitCode.REFUSED


class CommitFailed(RoscoeError):
    """commit of {tx} failed at {path}: {reason}; {outcome}"""



class UnsafePath(RoscoeError):
    """refusing the path {path!r} under {root}: it is not a plain path inside the root (absolute, or with an empty, '.' or '..' name); nothing was changed there"""
