"""What roscoe runs with: the state dir, the config files named besides its
own, and the knobs the environment turns.

``Settings.from_env`` is the one place that reads the environment; the CLI
(``cli.main``) and the Python API (``journal.api``) call it where they are
entered, and everything below them takes the object it returns.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from journal.faults import Faults
    from journal.targets.base import BucketSettings


class Settings(namedtuple(
    "_Settings", "home configs debug backend bwrap root user faults bucket caller report_fd env",
    defaults=((), False, None, None, None, None, None, None, None, None, None),
)):
    """``home``: the state dir (absolute). ``configs``: config files named
    besides the state dir's own (``--config``, else ``$ROSCOE_CONFIG``).
    ``debug``: tracebacks of internal errors. ``backend``: the stager every
    new transaction must use (``$ROSCOE_BACKEND``; None: the first that works).
    ``bwrap``: the bwrap binary (``$ROSCOE_BWRAP``; None: the bundled one).
    ``root``: the root a command uses when it names none (``$ROSCOE_ROOT``).
    ``user``: the login name (``$LOGNAME``/``$USER``; None: the password
    database's). ``faults``: the fault hooks of this process
    (journal.faults; None: none). ``bucket``: how bucket commits hold their
    lease and batch their ops (journal.targets.BucketSettings; None: the defaults).
    ``caller``: the client a command runs for, in ``roscoe serve``
    (journal.roles.Caller: its uid from the socket's peer credentials; None:
    a local command, whose caller is the operator). ``report_fd``: where
    ``tx run --report`` writes for a client of the service (an fd of a
    regular file the client passed; None: the path given). ``env``: the
    environment a run's command starts from (a client's; None: roscoe's own).

    (The environment a run's command gets is not a setting: the caller
    passes it with the run, else the command inherits roscoe's.)"""

    __slots__ = ()
    home: str
    configs: tuple[str, ...]
    debug: bool
    backend: str | None
    bwrap: str | None
    root: str | None
    user: str | None
    faults: Faults | None
    bucket: BucketSettings | None

    @classmethod
    def at(cls, home: str | os.PathLike[str]) -> Settings:
        """The state dir ``home``, every other knob at its default."""
        return cls(os.path.abspath(os.fspath(home)))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, home: str | os.PathLike[str] | None = None,
        config: str | None = None, debug: bool = False,
    ) -> Settings:
        """The settings of a command given ``home`` (``--home``), ``config``
        (``--config``, which must exist) and ``debug`` (``--debug``), the
        environment ``environ`` filling in the rest."""
        if config:
            if not os.path.isfile(config):
                from cowfs.errors import UsageError

                raise UsageError(detail=f"config file {config} does not exist", path=config)
            configs: tuple[str, ...] = (os.path.abspath(config),)
        else:
            named = environ.get("ROSCOE_CONFIG")
            configs = (named,) if named else ()
        from journal.faults import Faults
        from journal.targets.base import BucketSettings

        given = os.fspath(home) if home is not None else ""
        return cls(
            home=os.path.abspath(given or default_home(environ)),
            configs=configs,
            debug=debug or bool(environ.get("ROSCOE_DEBUG")),
            backend=environ.get("ROSCOE_BACKEND") or None,
            bwrap=environ.get("ROSCOE_BWRAP") or None,
            root=environ.get("ROSCOE_ROOT") or None,
            user=environ.get("LOGNAME") or environ.get("USER") or None,
            faults=Faults.from_env(environ),
            bucket=BucketSettings.from_env(environ),
        )


def default_home(environ: Mapping[str, str]) -> str:
    """$ROSCOE_HOME, else $XDG_STATE_HOME/roscoe, else ~/.local/state/roscoe."""
    named = environ.get("ROSCOE_HOME")
    if named:
        return named
    state = environ.get("XDG_STATE_HOME")
    if state:
        return os.path.join(state, "roscoe")
    return os.path.join(environ.get("HOME") or _home_dir(), ".local", "state", "roscoe")


def _home_dir() -> str:
    """The password database's home dir of the real uid (what ``~`` is without $HOME)."""
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir
