"""The config file (TOML): policy, approval rules and per-root targets.

Every key is checked: a file that is not TOML, a table or key roscoe does not
know, or a value of the wrong type is a usage error (exit 2) naming the file,
the line and the key, so a typo never silently turns a rule off. A missing
default config file means no rules; a missing ``--config`` file is an error.

```toml
[policy]
deny = ["**/.git/**"]
max_changes = 10000
max_bytes = 10_000_000_000
owners = "keep"                # refuse any change of an existing path's owner (default "any")
symlinks = "inside"            # refuse a new or changed symlink pointing outside the root (default "any")
[approval]
when_deleting = true
when_changes_over = 200
when_bytes_over = 100_000_000
when_paths = ["*/Pleadings/**"]
notify = "/usr/local/bin/notify-slack"
notify_timeout = 30            # seconds before a hanging notify is killed
[roots."/mnt/workspace/projects"]
target = "gs://whaley_law_firm/projects"
[run]
hide = ["clients/other", "/home/ops/.ssh"]  # plain paths: relative to the root, or absolute
rootfs = "/srv/roscoe/tools-image"  # the run's / (read-only): an unpacked container image (cowfs.rootfs)
```
"""

from __future__ import annotations

import os
import re
from collections import namedtuple

from journal.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

NOTIFY_TIMEOUT = 30.0


class Policy(namedtuple(
    "_Policy", "deny max_changes max_bytes owners symlinks", defaults=((), None, None, "any", "any"),
)):
    """What can never be committed: paths matching ``deny``, more than
    ``max_changes`` changed paths, more than ``max_bytes`` new bytes; with
    ``owners = "keep"`` a change of an existing path's owner; with
    ``symlinks = "inside"`` a new or changed symlink whose target leaves the root."""

    __slots__ = ()
    deny: tuple[str, ...]
    max_changes: int | None
    max_bytes: int | None
    owners: str
    symlinks: str


class ApprovalRules(namedtuple(
    "_ApprovalRules",
    "when_deleting when_changes_over when_bytes_over when_paths notify notify_timeout",
    defaults=(False, None, None, (), None, NOTIFY_TIMEOUT),
)):
    """When a commit needs ``tx approve`` first, and whom to tell."""

    __slots__ = ()
    when_deleting: bool
    when_changes_over: int | None
    when_bytes_over: int | None
    when_paths: tuple[str, ...]
    notify: tuple[str, ...] | None
    notify_timeout: float

    @property
    def any(self) -> bool:
        return bool(self.when_deleting or self.when_changes_over is not None
                    or self.when_bytes_over is not None or self.when_paths)


class RootConfig(namedtuple("_RootConfig", "target", defaults=(None,))):
    __slots__ = ()
    target: str | None


class RunRules(namedtuple("_RunRules", "hide rootfs", defaults=((), None))):
    """What every run gets: ``hide``, paths it may not see (cowfs.hide), and
    ``rootfs``, the directory its ``/`` is (cowfs.rootfs; None: the host's)."""

    __slots__ = ()
    hide: tuple[str, ...]
    rootfs: str | None


DEFAULT_SOCKET = "/run/roscoe/roscoe.sock"
DEFAULT_HTTP_SOCKET = "/run/roscoe/http.sock"


class ServeRules(namedtuple(
    "_ServeRules", "socket http_socket socket_mode socket_group http_token_file",
    defaults=(DEFAULT_SOCKET, DEFAULT_HTTP_SOCKET, 0o660, None, None),
)):
    """Where ``roscoe serve`` listens and who may connect: the sockets' paths,
    their mode and group (callers are still checked against the roles), and
    the file holding the bearer token of ``--http HOST:PORT``."""

    __slots__ = ()
    socket: str
    http_socket: str
    socket_mode: int
    socket_group: str | None
    http_token_file: str | None


class Roles(namedtuple("_Roles", "agents approvers operators", defaults=((), (), ()))):
    """Who may do what through ``roscoe serve`` (``journal.roles``): users by
    name, or ``@group``. Root is always an operator."""

    __slots__ = ()
    agents: tuple[str, ...]
    approvers: tuple[str, ...]
    operators: tuple[str, ...]


class Config(namedtuple(
    "_Config", "path policy approval roots run serve roles", defaults=(RunRules(), ServeRules(), Roles()),
)):
    """The whole config; ``path`` is None when there was no file."""

    __slots__ = ()
    path: str | None
    policy: Policy
    approval: ApprovalRules
    roots: dict[str, RootConfig]
    run: RunRules
    serve: ServeRules
    roles: Roles

    def root(self, root: str) -> RootConfig:
        return self.roots.get(os.path.normpath(root), RootConfig())


def _least(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _union(values: list[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for value in values for item in value))


def _last(values: list[object], default: object) -> object:
    given = [v for v in values if v != default]
    return given[-1] if given else default


def strictest(configs: list[Config]) -> Config:
    """Every rule of every config in ``configs`` at once: deny globs and
    approval paths united, limits the lowest, flags on if any sets them. Rules
    are only ever added this way, never removed. ``notify`` and its timeout,
    which say how to ask rather than what to allow, come from the last config
    that sets them; roots, and ``[run] rootfs``, from the first that names each
(the recorded config before the one in force now, the state dir's before
a named one). ``owners = "keep"``
    and ``symlinks = "inside"`` are the stricter values of their keys."""
    if len(configs) == 1:
        return configs[0]
    policies = [c.policy for c in configs]
    rules = [c.approval for c in configs]
    roots: dict[str, RootConfig] = {}
    for c in configs:
        for root, table in c.roots.items():
            roots.setdefault(root, table)
    return Config(
        ", ".join(c.path for c in configs if c.path) or None,
        Policy(_union([p.deny for p in policies]), _least([p.max_changes for p in policies]),
               _least([p.max_bytes for p in policies]),
               "keep" if any(p.owners == "keep" for p in policies) else "any",
               "inside" if any(p.symlinks == "inside" for p in policies) else "any"),
        ApprovalRules(
            any(r.when_deleting for r in rules), _least([r.when_changes_over for r in rules]),
            _least([r.when_bytes_over for r in rules]), _union([r.when_paths for r in rules]),
            _last([r.notify for r in rules], None), _last([r.notify_timeout for r in rules], NOTIFY_TIMEOUT),
        ),
        roots,
        RunRules(_union([c.run.hide for c in configs]),
                 next((c.run.rootfs for c in configs if c.run.rootfs is not None), None)),
        ServeRules(*(_last([getattr(c.serve, k) for c in configs], getattr(ServeRules(), k))
                     for k in ServeRules._fields)),
        Roles(*(_union([getattr(c.roles, k) for c in configs]) for k in Roles._fields)),
    )


def _nonnegative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _globs(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v and "\0" not in v for v in value)


def _plain_paths(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and v and "\0" not in v and "*" not in v and "?" not in v for v in value)


def _image_dir(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value and os.path.isabs(value) and os.path.isdir(value)


def _command(value: object) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _one_of(*choices: str) -> tuple[Callable[[object], bool], str]:
    return (lambda v: isinstance(v, str) and v in choices), " or ".join(f'"{c}"' for c in choices)


def _absolute(value: object) -> bool:
    return isinstance(value, str) and os.path.isabs(value) and "\0" not in value


def _mode(value: object) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"0?[0-7]{3}", value))


def _names(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and re.fullmatch(r"@?[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", v) for v in value)


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 3600


KEYS = {
    "policy": {
        "deny": (_globs, "a list of glob strings"),
        "max_changes": (_nonnegative_int, "an integer >= 0"),
        "max_bytes": (_nonnegative_int, "an integer >= 0"),
        "owners": _one_of("any", "keep"),
        "symlinks": _one_of("any", "inside"),
    },
    "approval": {
        "when_deleting": (lambda v: isinstance(v, bool), "true or false"),
        "when_changes_over": (_nonnegative_int, "an integer >= 0"),
        "when_bytes_over": (_nonnegative_int, "an integer >= 0"),
        "when_paths": (_globs, "a list of glob strings"),
        "notify": (_command, "a command line (a string, or a list of strings)"),
        "notify_timeout": (_seconds, "a number of seconds, more than 0 and at most 3600"),
    },
    "run": {
        "hide": (_plain_paths, "a list of plain paths (relative to the root, or absolute; not globs)"),
        "rootfs": (_image_dir, "the absolute path of a directory (an unpacked container image)"),
    },
    "serve": {
        "socket": (_absolute, "an absolute path"),
        "http_socket": (_absolute, "an absolute path"),
        "socket_mode": (_mode, 'an octal mode in a string, such as "0660"'),
        "socket_group": (lambda v: isinstance(v, str) and bool(v), "a group name"),
        "http_token_file": (_absolute, "an absolute path"),
    },
    "roles": {
        "agents": (_names, 'a list of user names or "@group"s'),
        "approvers": (_names, 'a list of user names or "@group"s'),
        "operators": (_names, 'a list of user names or "@group"s'),
    },
    "root": {
        "target": (lambda v: isinstance(v, str) and bool(re.fullmatch(r"gs://[a-z0-9][-a-z0-9_.]{1,221}[a-z0-9](/.*)?", v)),
                   "a URL gs://BUCKET[/PREFIX]"),
    },
}


def read(path: str, *, required: bool) -> bytes | None:
    """The bytes of the config file ``path``; None when it does not exist and
    is not ``required`` (no file: no rules)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(path=path, reason="does not exist") from None
        return None
    except OSError as e:
        raise ConfigError(path=path, reason=e.strerror or str(e)) from None


def load(path: str, *, required: bool = False) -> Config:
    """Read and check the config at ``path``."""
    raw = read(path, required=required)
    return Config(None, Policy(), ApprovalRules(), {}) if raw is None else parse(raw, path)


def parse(raw: bytes, path: str) -> Config:
    import tomllib

    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(path=path, reason=f"not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib names no line for an error at the end of the file
        where = str(e).replace("(at end of document)", f"(at end of document, line {max(1, len(text.splitlines()))})")
        raise ConfigError(path=path, reason=f"not valid TOML: {where}") from None
    where = _Locator(text)

    def bad(table: str, key: str | None, why: str) -> ConfigError:
        line = where.line(table, key)
        name = f"[{table}] {key}" if key else f"[{table}]"
        return ConfigError(path=path, reason=f"line {line}: {name}: {why}" if line else f"{name}: {why}")

    def section(table: str, kind: str, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise bad(table, None, "expected a table")
        for key, item in value.items():
            if key not in KEYS[kind]:
                known = ", ".join(KEYS[kind])
                raise bad(table, key, f"unknown key (known keys: {known})")
            check, expected = KEYS[kind][key]
            if not check(item):
                raise bad(table, key, f"expected {expected}, got {_show(item)}")
        return value

    for name in data:
        if name not in ("policy", "approval", "roots", "run", "serve", "roles"):
            raise bad(name, None, "unknown table (known tables: policy, approval, roots, run, serve, roles)")
    policy = section("policy", "policy", data.get("policy", {}))
    approval = section("approval", "approval", data.get("approval", {}))
    run = section("run", "run", data.get("run", {}))
    serve = section("serve", "serve", data.get("serve", {}))
    roles = section("roles", "roles", data.get("roles", {}))
    roots: dict[str, RootConfig] = {}
    root_tables = data.get("roots", {})
    if not isinstance(root_tables, dict):
        raise bad("roots", None, "expected tables [roots.\"/abs/root\"]")
    for root, table in root_tables.items():
        label = f'roots."{root}"'
        if not os.path.isabs(root):
            raise bad(label, None, "a root must be an absolute path")
        roots[os.path.normpath(root)] = RootConfig(**section(label, "root", table))
    notify = approval.get("notify")
    if isinstance(notify, str):
        import shlex

        try:
            notify = shlex.split(notify)
        except ValueError as e:
            raise bad("approval", "notify", f"cannot split the command line: {e}") from None
    return Config(
        path,
        Policy(tuple(policy.get("deny", ())), policy.get("max_changes"), policy.get("max_bytes"),
               policy.get("owners", "any"), policy.get("symlinks", "any")),
        ApprovalRules(
            approval.get("when_deleting", False), approval.get("when_changes_over"),
            approval.get("when_bytes_over"), tuple(approval.get("when_paths", ())),
            tuple(notify) if notify else None, float(approval.get("notify_timeout", NOTIFY_TIMEOUT)),
        ),
        roots,
        RunRules(tuple(run.get("hide", ())), os.path.normpath(run["rootfs"]) if "rootfs" in run else None),
        ServeRules(**{k: int(v, 8) if k == "socket_mode" else v for k, v in serve.items()}),
        Roles(**{k: tuple(v) for k, v in roles.items()}),
    )


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"' if len(value) < 40 else f'"{value[:37]}..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return repr(value)


class _Locator:
    """Finds the line of ``[table] key`` in TOML text, for error messages (tomllib
    reports lines only for syntax errors)."""

    HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _NAME = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)"""
    KEY = re.compile(rf"^\s*({_NAME}(?:\s*\.\s*{_NAME})*)\s*=")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line(self, table: str, key: str | None) -> int | None:
        want = self._norm(table)
        current = ""
        for number, line in enumerate(self.lines, start=1):
            header = self.HEADER.match(line)
            if header:
                current = self._norm(header.group(1))
                if key is None and (current == want or current.startswith(want + ".")):
                    return number
                continue
            found = self.KEY.match(line)
            if found is None:
                continue
            name = self._norm(found.group(1))
            if key is None and (current == "" and (name == want or name.startswith(want + "."))):
                return number
            if key is not None and (current == want and name == key or current == "" and name == f"{want}.{key}"):
                return number
        return None

    @staticmethod
    def _norm(name: str) -> str:
        parts = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([^.\s]+)', name)
        return ".".join(a or b or c for a, b, c in parts)
