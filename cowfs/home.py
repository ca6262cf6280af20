"""Where roscoe keeps its state: one ``Home`` object names every path under it.

Tests point it at ``tmp_path``; nothing else builds state paths by hand.
(Plain strings, not pathlib: this sits on the start-up path of every run.)
"""

from __future__ import annotations

import os
from collections import namedtuple

from cowfs.errors import StateDirError


def default_home() -> str:
    env = os.environ.get("ROSCOE_HOME")
    if env:
        return env
    state = os.environ.get("XDG_STATE_HOME")
    if state:
        return os.path.join(state, "roscoe")
    return os.path.join(os.path.expanduser("~"), ".local", "state", "roscoe")


class Home(namedtuple("_Home", "path")):
    """The state directory: journal, staging dirs of transactions, blobs."""

    __slots__ = ()
    path: str

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None = None) -> Home:
        return cls(os.path.abspath(path if path is not None else default_home()))

    @property
    def journal(self) -> str:
        return os.path.join(self.path, "journal.db")

    @property
    def config(self) -> str:
        return os.environ.get("ROSCOE_CONFIG") or os.path.join(self.path, "config.toml")

    def tx_dir(self, tx: str) -> str:
        return os.path.join(self.path, "tx", tx)

    def hash_cache(self, tx: str) -> str:
        """The content hashes of the transaction's files, by identity (``cowfs.hashcache``)."""
        return os.path.join(self.tx_dir(tx), "hashes.json")

    def linked_images(self, tx: str) -> str:
        """Where a commit lists the staged files it is about to hard-link into
        the blob store, before it links them, so a crash cannot forget them."""
        return os.path.join(self.tx_dir(tx), "linked-images.json")

    def ensure(self) -> None:
        try:
            os.makedirs(os.path.join(self.path, "tx"), mode=0o700, exist_ok=True)
        except OSError as e:
            raise StateDirError(home=self.path, reason=e.strerror or str(e)) from e
