"""The one error hierarchy of roscoe: every failure a user can see, with its exit code.

Each subclass's docstring is its message template (formatted with the keyword
arguments it was raised with) and ``exit_code`` is the contract's code. The CLI
has one handler that prints ``roscoe: error: <message>`` and exits with it.
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


class RoscoeError(Exception):
    """{detail}"""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, **fields: object) -> None:
        self.fields = fields
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = " ".join((type(self).__doc__ or "{detail}").split())
        try:
            return template.format(**self.fields)
        except (KeyError, IndexError):
            return f"{template} {self.fields}"


class UsageError(RoscoeError):
    """{detail}"""

    exit_code = ExitCode.USAGE


class RootError(UsageError):
    """root {root}: {reason}"""


class NoSuchTransaction(RoscoeError):
    """no such transaction: {tx}"""

    exit_code = ExitCode.NO_SUCH_TX


class AmbiguousTransaction(UsageError):
    """transaction id {tx} is ambiguous: it matches {matches}"""


class TransactionState(RoscoeError):
    """transaction {tx} is {state}: {action} needs an open transaction"""


class TransactionBusy(RoscoeError):
    """transaction {tx} is busy: another roscoe process is using it (pid {pid})"""


class SandboxError(RoscoeError):
    """cannot run in a sandbox: {detail}"""


class NoBackend(RoscoeError):
    """no staging backend works for root {root}: {detail}"""


class CommandNotFound(RoscoeError):
    """command not found: {cmd}"""

    exit_code = ExitCode.NOT_FOUND


class CommandNotExecutable(RoscoeError):
    """command cannot be invoked: {cmd}: {reason}"""

    exit_code = ExitCode.CANNOT_INVOKE


class StateDirError(RoscoeError):
    """state dir {home}: {reason}"""


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
    """{what}: the live tree changed under transaction {tx}; nothing was written. Changed: {paths}"""

    exit_code = ExitCode.CONFLICT


class Refused(RoscoeError):
    """transaction {tx} cannot be committed: {reason}"""

    exit_code = ExitCode.REFUSED


class CommitFailed(RoscoeError):
    """commit of {tx} failed at {path}: {reason}; {outcome}"""



class UnsafePath(RoscoeError):
    """refusing the path {path!r} under {root}: it is not a plain path inside the root (absolute, or with an empty, '.' or '..' name); nothing was changed there"""
