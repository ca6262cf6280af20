"""Who may do what through ``roscoe serve``: the caller, known from the
socket's peer credentials (never from anything it says), and the config's
``[roles]``.

- agents: begin, run, shell, plan, diff, show, list, log, wait, abort,
  commit (held to policy and approval as any commit is), and a rollback's
  dry run;
- approvers: what agents may, and approve and reject;
- operators: everything (rollback, gc, recover, verify, audit, ``--writable``,
  any root). Root is always an operator.

Beyond the command, what a caller names is checked too, since the service
acts as root: nobody names a config or a state dir through it (exit 4);
only an operator names a root that the config has no ``[roots."ROOT"]``
table for, a bucket other than the one configured for the root, or a path
the run may write for real (``--writable``).
"""

from __future__ import annotations

import os
from collections import namedtuple

from journal.config import Config
from journal.errors import Refused

AGENT, APPROVER, OPERATOR = "agent", "approver", "operator"

# The commands each role may run, by the words that name them.
AGENT_COMMANDS = {
    "tx begin", "tx run", "tx shell", "tx plan", "tx diff", "tx show", "tx list", "tx log", "tx wait",
    "tx abort", "tx commit", "tx rollback --dry-run",
}
APPROVER_COMMANDS = AGENT_COMMANDS | {"tx approve", "tx reject"}


class Forbidden(Refused):
    """{who} may not {what} through the roscoe service{why}"""


class Caller(namedtuple("_Caller", "uid gid pid user groups")):
    """A client of the service, as the kernel names it (SO_PEERCRED): its
    uid, gid and pid, its user name and the names of its groups."""

    __slots__ = ()
    uid: int
    gid: int
    pid: int
    user: str
    groups: tuple[str, ...]

    @classmethod
    def of(cls, uid: int, gid: int, pid: int) -> Caller:
        """The caller with these credentials, its names from this machine's
        user and group databases (a uid without a name is its number)."""
        import grp
        import pwd

        try:
            user = pwd.getpwuid(uid).pw_name
            gids = os.getgrouplist(user, gid)
        except KeyError:
            user, gids = str(uid), [gid]
        groups = []
        for g in dict.fromkeys(gids):
            try:
                groups.append(grp.getgrgid(g).gr_name)
            except KeyError:
                groups.append(str(g))
        return cls(uid, gid, pid, user, tuple(groups))

    def named(self, names: tuple[str, ...]) -> bool:
        """Whether ``names`` (users, or ``@group``) include this caller."""
        return any(n == self.user or (n.startswith("@") and n[1:] in self.groups) for n in names)

    def label(self) -> str:
        return f"{self.user} (uid {self.uid})"


def roles_of(caller: Caller, config: Config) -> set[str]:
    """The caller's roles under ``config``: an operator is also an approver
    and an agent; an approver is also an agent. A caller with no uid of its
    own (uid -1: a bearer of ``roscoe serve --http``'s token) is an agent and
    never more, whatever ``[roles]`` names."""
    roles = config.roles
    if caller.uid < 0:
        return {AGENT}  # (no uid of its own: HTTP's bearer token, which proves no person)
    if caller.uid == 0 or caller.named(roles.operators):
        return {AGENT, APPROVER, OPERATOR}
    if caller.named(roles.approvers):
        return {AGENT, APPROVER}
    if caller.named(roles.agents):
        return {AGENT}
    return set()


def authorize(
    caller: Caller | None, config: Config, command: str, *, root: str | None = None, target: str | None = None,
    writable: tuple[str, ...] | list[str] = (),
) -> None:
    """Refuse (``Forbidden``, exit 4) what ``caller`` may not do: ``command``
    (``"tx run"``, ``"gc"``, ...), a new transaction over ``root`` committing
    to ``target``, a run writing ``writable`` for real. A local command (no
    caller) is the operator's."""
    if caller is None:
        return
    roles = roles_of(caller, config)
    if OPERATOR in roles:
        return
    allowed = APPROVER_COMMANDS if APPROVER in roles else AGENT_COMMANDS if AGENT in roles else set()
    if command not in allowed:
        have = ", ".join(sorted(roles)) or "none"
        raise Forbidden(who=caller.label(), what=command, why=f" (roles: {have}; see the config's [roles])")
    if writable:
        raise Forbidden(who=caller.label(), what="let a run write outside its root (--writable)",
                        why=" (operators only)")
    if root is not None:
        if os.path.normpath(root) not in {os.path.normpath(r) for r in config.roots}:
            raise Forbidden(who=caller.label(), what=f"{command} over {root}",
                            why=": only the roots the config names ([roots.\"ROOT\"]) are served to agents")
        if target is not None and target != config.root(root).target:
            raise Forbidden(who=caller.label(), what=f"commit {root} to {target}",
                            why=": a root's bucket is the one its config names")


def refuse_globals(caller: Caller, home: str | None, config: str | None) -> None:
    """Nobody names a config file or a state dir through the service."""
    if home or config:
        raise Forbidden(who=caller.label(), what="name a config file or a state dir (--home, --config)",
                        why=": the service's own are in force")
