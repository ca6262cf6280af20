"""The journal's errors: transactions, the state dir and the journal in it,
staging, config and plans applied, commit, policy and approval.

They belong to the one hierarchy rooted in ``cowfs.errors``: each is a
subclass of ``RoscoeError`` (or of one of its classes there, such as
``UsageError`` or ``StateDirError``), its docstring the message template and
``exit_code`` / ``error_kind`` its place in the contract, so the CLI's single
handler (``cli.errors.fail``) prints and exits with all of them alike. A new
journal error goes here; the class names, messages and kinds are the CLI's
contract (tests check them exactly).
"""

from __future__ import annotations

from cowfs.errors import ExitCode, RoscoeError, StateDirError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cowfs.changeset import ChangeSet


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


class RootError(UsageError):
    """root {root}: {reason}"""

    path_fields = ("root",)


class RootBusy(RoscoeError):
    """root {root} is being committed to by {owner}; try again when it is done"""

    error_kind = "busy"
    path_fields = ("root",)


class StateDirFull(StateDirError):
    """state dir {home}: its filesystem is out of {what} ({where}); {outcome}"""

    @property
    def cause(self) -> str:
        """What ran out and where, without the outcome."""
        return "state dir {home}: its filesystem is out of {what} ({where})".format(**self.fields)


class NewerJournal(RoscoeError):
    """journal {path} has schema version {found}, newer than this roscoe understands ({known}); upgrade roscoe"""


class JournalCorrupt(RoscoeError):
    """journal {path} cannot be read: {reason}"""


class BlobCorrupt(RoscoeError):
    """blob {digest} is {problem} (blob store {store}); its image cannot be trusted"""


class StagingDiscarded(RoscoeError):
    """the staged changes of transaction {tx} were discarded by an abort that could not be journaled;
    nothing of it can be run, shown or committed: roscoe tx abort {tx} finishes the abort"""


class AbortNotJournaled(RoscoeError):
    """transaction {tx}: its staged changes are discarded, but the abort could not be journaled: {reason};
    once there is room, roscoe tx abort {tx} finishes it"""


class StagingCorrupt(RoscoeError):
    """the staged changes of transaction {tx} cannot be read: {detail}"""


class ConfigError(UsageError):
    """config {path}: {reason}"""


class PlanFailed(RoscoeError):
    """the plan could not be applied: {detail}; nothing of the plan was staged"""


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


class PolicyRefused(Refused):
    """transaction {tx} cannot be committed: refused by policy: {violations}; nothing was written"""


class ApprovalNeeded(Refused):
    """transaction {tx} needs an approval before it can be committed ({reasons}); nothing was written.
    A person approves this exact diff with: roscoe tx approve {tx} --hash {diff_hash}{notified}"""

    error_kind = "approval_needed"

    # (its TxRecord, its changes, the reasons, the Config in force), set where
    # it is raised (journal.approval, journal.rollback): the request it becomes
    pending: tuple[Any, ChangeSet, list[str], Any]


class Rejected(Refused):
    """transaction {tx} cannot be {action}: its diff {diff_hash} was rejected by {by}{reason}; {outcome}"""

    error_kind = "rejected"


class StaleApproval(RoscoeError):
    """approval refused: the diff of transaction {tx} now hashes to {current}, not {given}; review it again with `roscoe tx diff {tx}`"""

    exit_code = ExitCode.CONFLICT


# -- the commit protocol's targets, rollback and recovery (journal.protocol)


class OwnerNeedsRoot(Refused):
    """{what}: {paths} would get an owner other than roscoe's own user and groups, which only root can give; nothing was written"""


class LeaseBusy(RoscoeError):
    """{url} is being committed to by {owner} (lease held until {until}); try again when it is done"""

    error_kind = "busy"


class LeaseLost(RoscoeError):
    """{url}: the commit lease was taken over by {owner}; the commit was undone"""


class ImagesDropped(RoscoeError):
    """transaction {tx} is too old to roll back: `roscoe gc` dropped its images"""


class NotCommitted(RoscoeError):
    """transaction {tx} is {state}, not committed: only a committed transaction can be rolled back{hint}"""


class AlreadyRolledBack(RoscoeError):
    """transaction {tx} was already rolled back by {by}; roll back {by} to apply {tx} again"""


class RollbackRefused(Refused):
    """the rollback of transaction {tx} is refused by policy: {violations}; nothing was written"""


class RollbackNeedsApproval(ApprovalNeeded):
    """the rollback of transaction {target} is transaction {tx}, which needs an approval before it can be committed ({reasons}); nothing was written.
    A person approves this exact diff with: roscoe tx approve {tx} --hash {diff_hash}{notified}; then `roscoe tx rollback {target}` (or `roscoe tx commit {tx}`) applies it"""


class RecoveryFailed(RoscoeError):
    """the interrupted commit of {tx} could not be undone yet ({reason}); the journal keeps everything needed: run `roscoe recover` again once that is fixed"""


# -- the service (roscoe serve) and its clients (cli.client)


class ServiceUnreachable(RoscoeError):
    """cannot reach the roscoe service at {path}: {reason} (ROSCOE_SOCKET names another socket; empty: run locally)"""


class ServiceRefused(RoscoeError):
    """{detail}"""

    @classmethod
    def relayed(cls, error: dict[str, Any]) -> ServiceRefused:
        """The error object the service answered with, raised again here."""
        refused = cls(detail=str(error.get("message", "")), paths=list(error.get("paths") or []))
        refused.exit_code = int(error.get("code", 1))  # type: ignore[assignment]
        refused.error_kind = str(error.get("kind") or "error")
        return refused
