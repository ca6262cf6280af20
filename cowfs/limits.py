"""Resource limits of one run: memory and process count, through a cgroup made for it.

A run asked to stay under ``--memory`` or ``--pids`` gets its own cgroup, a
child of the caller's own cgroup (so every limit above roscoe still applies):
cgroup v2 where its memory (and pids) controller can be used, else the v1
hierarchies of the same names. The sandbox shim joins it by writing ``0`` to
the ``cgroup.procs`` files it inherits open, before anything of the command
runs; the cgroup is removed when the run returns.

Where no cgroup can be made (an ordinary user without a delegated cgroup, or a
kernel without the controller), ``--memory`` falls back to RLIMIT_AS, the
address space of each process, and says so; ``--pids`` has no fallback.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections import namedtuple

from cowfs.errors import SandboxError, UsageError

MIN_MEMORY = 16 << 20  # below this even bwrap's shim and a shell cannot start
MAX_PIDS = 4_194_304  # the kernel's pid_max ceiling
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
RUN_PREFIX = "roscoe-run-"


# bwrap's monitor and the run's init, in the cgroup with the command (see
# cowfs.sandbox.JOIN): --pids N leaves the command N processes.
SANDBOX_TASKS = 2


class Limits(namedtuple("_Limits", "memory pids")):
    """What a run may use: ``memory`` in bytes, ``pids`` processes; None is no limit."""

    __slots__ = ()
    memory: int | None
    pids: int | None

    def __bool__(self) -> bool:
        return self.memory is not None or self.pids is not None


NO_LIMITS = Limits(None, None)


class Enforced(namedtuple("_Enforced", "memory pids by oom_kills")):
    """How a run's limits were kept: ``by`` is cgroup2, cgroup1, rlimit or None
    (no limit asked); ``oom_kills`` counts processes the kernel killed for memory."""

    __slots__ = ()
    memory: int | None
    pids: int | None
    by: str | None
    oom_kills: int

    def to_json(self) -> dict[str, object]:
        return {"memory": self.memory, "pids": self.pids, "by": self.by, "oom_kills": self.oom_kills}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5G``, ``1048576`` (bytes); units are powers of 1024."""
    m = SIZE.fullmatch(text.strip())
    if m is None:
        raise UsageError(detail=f"--memory {text}: expected a size such as 512M or 2G")
    size = int(float(m.group(1)) * UNITS[m.group(2).upper()])
    if size < MIN_MEMORY:
        raise UsageError(detail=f"--memory {text}: must be at least {MIN_MEMORY >> 20}M")
    return size


def parse_pids(text: str) -> int:
    try:
        pids = int(text)
    except ValueError:
        raise UsageError(detail=f"--pids {text}: expected a whole number of processes") from None
    if not 1 <= pids <= MAX_PIDS:
        raise UsageError(detail=f"--pids {text}: must be between 1 and {MAX_PIDS}")
    return pids


def human(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= UNITS[unit] and size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]}{unit}"
    return f"{size}"


# -- finding the caller's cgroups ------------------------------------------------

def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, mount root, fstype, options) of every cgroup mount."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                fstype = fields[sep + 1]
                if fstype in ("cgroup", "cgroup2"):
                    options = set(fields[sep + 3].split(",")) | set(fields[5].split(","))
                    found.append((_unescape(fields[4]), _unescape(fields[3]), fstype, options))
    except (OSError, ValueError, IndexError):
        return []
    return found


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _own() -> dict[str, str]:
    """The caller's cgroup per hierarchy: ``""`` for v2, else the controller names."""
    own = {}
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                own[controllers] = path
    except (OSError, ValueError):
        pass
    return own


def _dir(mount: str, mount_root: str, path: str) -> str | None:
    """The directory of cgroup ``path`` under a mount of ``mount_root``."""
    rel = os.path.relpath(path, mount_root)
    if rel.startswith(".."):
        return None
    return os.path.normpath(os.path.join(mount, rel))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _count(text: str, key: str) -> int:
    m = re.search(rf"^{key} (\d+)$", text, re.MULTILINE)
    return int(m.group(1)) if m else 0


# -- the run's cgroup ------------------------------------------------------------

class RunCgroup:
    """The cgroup (one dir for v2; one per controller for v1) of one run."""

    def __init__(self, version: str, dirs: dict[str, str]) -> None:
        self.version = version
        self.dirs = dirs  # controller ("" for v2) -> directory
        self.procs_fds: list[int] = []

    @classmethod
    def create(cls, limits: Limits) -> RunCgroup | None:
        """A new cgroup holding ``limits``, or None when none can be made here."""
        wanted = {"memory"} if limits.memory is not None else set()
        if limits.pids is not None:
            wanted.add("pids")
        name = f"{RUN_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        for make in (cls._v2_parent, cls._v1_parents):
            parents = make(wanted)
            if parents is None:
                continue
            version, where = parents
            made = cls(version, {})
            if version == "cgroup1":  # (a killed run may have left one in a hierarchy this run does not use)
                for parent in (make({"memory", "pids"}) or (None, {}))[1].values():
                    _sweep(parent)
            try:
                for controller, parent in where.items():
                    _sweep(parent)
                    path = os.path.join(parent, name)
                    os.mkdir(path, 0o755)
                    made.dirs[controller] = path
                made._set(limits)
                made.procs_fds = [
                    os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
                    for d in made.dirs.values()
                ]
            except OSError as e:
                made.remove()
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not made.dirs:
                    continue  # not ours to write: try the next kind, then the fallback
                raise SandboxError(detail=f"cannot set up the run's {version}: {e.strerror} ({e.filename})") from e
            return made
        return None

    @staticmethod
    def _v2_parent(wanted: set[str]) -> tuple[str, dict[str, str]] | None:
        """cgroup v2: a sibling of the caller's cgroup (v2 keeps processes
        out of a cgroup whose controllers are handed down), or a child of
        the root cgroup when the caller sits there."""
        path = _own().get("")
        if path is None:
            return None
        for mount, mount_root, fstype, _ in _mounts():
            if fstype != "cgroup2":
                continue
            own = _dir(mount, mount_root, path)
            if own is None:
                continue
            if path == "/" or own == mount:
                parent = os.path.join(mount, "roscoe")
                if not wanted <= set(_read(os.path.join(mount, "cgroup.controllers")).split()):
                    return None
                try:
                    os.makedirs(parent, exist_ok=True)
                    for d in (mount, parent):
                        enabled = set(_read(os.path.join(d, "cgroup.subtree_control")).split())
                        if not wanted <= enabled:
                            _write(os.path.join(d, "cgroup.subtree_control"), " ".join(f"+{c}" for c in sorted(wanted)))
                except OSError:
                    return None
            else:
                parent = os.path.dirname(own)
                if not wanted <= set(_read(os.path.join(own, "cgroup.controllers")).split()):
                    return None
            return "cgroup2", {"": parent}
        return None

    @staticmethod
    def _v1_parents(wanted: set[str]) -> tuple[str, dict[str, str]] | None:
        """cgroup v1: a child of the caller's cgroup in each controller's hierarchy."""
        own = _own()
        where = {}
        for controller in sorted(wanted):
            for mount, mount_root, fstype, options in _mounts():
                if fstype != "cgroup" or controller not in options:
                    continue
                path = next((p for names, p in own.items() if controller in names.split(",")), None)
                parent = _dir(mount, mount_root, path) if path is not None else None
                if parent is not None and os.path.isdir(parent):
                    where[controller] = parent
                    break
            else:
                return None
        return "cgroup1", where

    def _set(self, limits: Limits) -> None:
        if self.version == "cgroup2":
            d = self.dirs[""]
            if limits.memory is not None:
                _write(os.path.join(d, "memory.max"), str(limits.memory))
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), "0")
            if limits.pids is not None:
                _write(os.path.join(d, "pids.max"), str(limits.pids + SANDBOX_TASKS))
            return
        if limits.memory is not None:
            d = self.dirs["memory"]
            _write(os.path.join(d, "memory.limit_in_bytes"), str(limits.memory))
            memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # swap accounting on: memory plus swap stays under the limit
                _write(memsw, str(limits.memory))
        if limits.pids is not None:
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(limits.pids + SANDBOX_TASKS))

    def oom_kills(self) -> int:
        if self.version == "cgroup2":
            return _count(_read(os.path.join(self.dirs[""], "memory.events")), "oom_kill")
        if "memory" in self.dirs:
            return _count(_read(os.path.join(self.dirs["memory"], "memory.oom_control")), "oom_kill")
        return 0

    def close_fds(self) -> None:
        for fd in self.procs_fds:
            os.close(fd)
        self.procs_fds = []

    def remove(self) -> None:
        """Remove the cgroup; the run's pid namespace is gone, but its last
        processes may take a moment to leave."""
        self.close_fds()
        for d in self.dirs.values():
            _remove(d)
        self.dirs = {}


def _remove(path: str, wait: float = 10.0) -> None:
    deadline = time.monotonic() + wait
    killed = False
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return  # left for the next run's sweep
        if not killed and os.path.exists(os.path.join(path, "cgroup.kill")):
            killed = True
            try:
                _write(os.path.join(path, "cgroup.kill"), "1")
            except OSError:
                pass
        time.sleep(0.005)


def _sweep(parent: str) -> None:
    """Remove run cgroups that a roscoe which died left behind."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(RUN_PREFIX)]
    except OSError:
        return
    for name in names:
        pid, _, made = name[len(RUN_PREFIX):].partition("-")
        if pid.isdigit() and made.isdigit() and not _alive(int(pid), int(made)):
            _remove(os.path.join(parent, name), wait=0)


def _alive(pid: int, made_ns: int) -> bool:
    """Whether the roscoe that made a run cgroup (its pid, and the monotonic
    clock then) still lives: the pid exists and its process started before
    the cgroup was made (a pid reused since, by a later process, does not
    keep a dead roscoe's cgroup)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return False
    started_ns = int(fields[19]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks since boot
    return started_ns <= made_ns + 1_000_000_000  # (a second of slack: the tick is coarse)
