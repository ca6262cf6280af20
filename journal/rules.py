"""The rules a transaction is held to: the config in force when it began.

At ``tx begin`` the config files in force are recorded with the transaction:
their path, the SHA-256 of their bytes and the bytes themselves in the
journal, the path and hash in the audit trail's begin event. A commit (and
``tx show``, ``tx approve``) is held to the strictest of those recorded
rules and the ones in force now (``journal.config.strictest``): a config named
later (``--config``, ``ROSCOE_CONFIG``) may add rules, never remove them,
and editing the config file after a transaction began does not loosen it.

The config in force is the state dir's ``config.toml`` when it exists, plus
the file ``--config``/``ROSCOE_CONFIG`` names: naming a config adds its rules
to the state dir's, it does not replace them.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from journal.config import Config


class Source(namedtuple("_Source", "path sha256 text")):
    """One config file: its path, and the SHA-256 and text of its bytes (both
    None when there was no file, which means no rules)."""

    __slots__ = ()
    path: str
    sha256: str | None
    text: str | None

    def to_event(self) -> dict[str, str | None]:
        return {"path": self.path, "sha256": self.sha256}


def in_force(home: str, configs: tuple[str, ...] | list[str] = ()) -> list[Source]:
    """The config files in force now: the state dir's, then those named
    (``Settings.configs``: --config, else $ROSCOE_CONFIG)."""
    from journal.errors import ConfigError

    from journal.home import Home

    own = Home(home).config
    found = [_read(own, required=False)]
    for named in configs:
        if os.path.abspath(named) != own:
            found.append(_read(os.path.abspath(named), required=True))
    for source in found:
        if source.sha256 is not None and source.text is None:
            raise ConfigError(path=source.path, reason="not UTF-8 text")
    return found


def _read(path: str, *, required: bool) -> Source:
    from journal.config import read

    raw = read(path, required=required)
    if raw is None:
        return Source(path, None, None)
    from journal.audit import _sha256

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return Source(path, _sha256(raw), text)


def encode(sources: list[Source]) -> str:
    """The journal's form of the recorded sources."""
    return json.dumps([list(s) for s in sources], ensure_ascii=True)


def decode(text: str | None) -> list[Source] | None:
    return None if text is None else [Source(*s) for s in json.loads(text)]


def parse(sources: list[Source]) -> list[Config]:
    from journal.config import parse as parse_config

    return [parse_config(s.text.encode(), s.path) for s in sources if s.text is not None]


def strictest(recorded: list[Source] | None, now: list[Source]) -> Config:
    """The rules of ``recorded`` (a transaction's, None for one begun before
    they were recorded) and of ``now``, all at once."""
    from journal.config import ApprovalRules, Config, Policy, strictest as merge

    configs = parse(recorded or []) + parse(now)
    if not configs:
        return Config(None, Policy(), ApprovalRules(), {})
    return merge(configs)
