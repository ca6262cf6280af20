"""Apply a plan inside a run: ``python -m cowfs.planrun [--root DIR] [--result-fd N] [--hidden REL]... PLAN``.

roscoe runs this as the command of a sandboxed run (``journal.planning``), so
the ops change the transaction's overlay exactly as any command would. It
checks the whole plan first (``cowfs.plan.check``, against the view inside the
overlay), then applies the ops in order. It never modifies an existing file
in place (new content is written to a temp name and renamed), so a savepoint
of the staged layer taken before the run can put everything back when an op
fails (``cowfs.savepoint``).

A directory that cannot be renamed (EXDEV: overlays without ``redirect_dir``)
is copied with its modes, mtimes and owners, then removed.

The outcome goes to ``--result-fd`` as one JSON object: ``{"ok": true, "ops":
N}`` or ``{"ok": false, "index": I, "op": NAME, "reason": TEXT}``; exit 0, 2
for a plan that cannot run, 1 for an internal error.
``ROSCOE_FAULT=plan-op#N`` fails the Nth op with EIO before it runs (with
``ROSCOE_FAULT_ACTION=kill`` the process kills itself instead), for tests.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import sys

from cowfs.errors import PlanError
from cowfs.plan import Plan, Step, check, load

FILE_MODE, DIR_MODE = 0o644, 0o755
IS_ROOT = os.geteuid() == 0


class OpFailed(Exception):
    """An op that failed while applied: (index, op name, reason)."""


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _keep_meta(path: str, st: os.stat_result) -> None:
    """Owner (as root), permission bits and times of ``st`` on ``path`` (cp -p)."""
    is_link = stat.S_ISLNK(st.st_mode)
    if IS_ROOT:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not is_link:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_any(src: str, dst: str) -> None:
    """Copy a file, symlink or directory tree as ``cp -a`` does."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst, 0o700)
        with os.scandir(src) as it:
            names = [d.name for d in it]
        for name in names:
            copy_any(os.path.join(src, name), os.path.join(dst, name))
    else:
        raise OSError(errno.EPERM, "only files, directories and symlinks can be copied", src)
    _keep_meta(dst, st)


class Applier:
    """Applies checked steps under ``root`` (the overlay, inside the run)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.temps = 0

    def full(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def apply(self, step: Step) -> None:
        getattr(self, "op_" + step.op.op)(step)

    def op_mkdir(self, step: Step) -> None:
        for rel in step.make:
            os.mkdir(self.full(rel), DIR_MODE)
            os.chmod(self.full(rel), DIR_MODE)

    def op_delete(self, step: Step) -> None:
        _remove(self.full(step.src))

    def op_write(self, step: Step) -> None:
        dst = self.full(step.dst)
        mode = step.op.mode
        old = os.lstat(dst) if step.replace else None
        if mode is None:
            mode = stat.S_IMODE(old.st_mode) if old is not None and stat.S_ISREG(old.st_mode) else FILE_MODE
        if old is not None and stat.S_ISDIR(old.st_mode):
            shutil.rmtree(dst)
        self.temps += 1
        tmp = os.path.join(os.path.dirname(dst), f".roscoe-plan-{os.getpid()}-{self.temps}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(step.op.content.encode("utf-8"))
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(tmp, dst)

    def op_move(self, step: Step) -> None:
        src, dst = self.full(step.src), self.full(step.dst)
        if step.replace:
            _remove(dst)
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            copy_any(src, dst)  # a lower directory on an overlay without redirect_dir
            _remove(src)

    op_rename = op_move

    def op_copy(self, step: Step) -> None:
        dst = self.full(step.dst)
        if step.replace:
            _remove(dst)
        copy_any(self.full(step.src), dst)


def _fault(count: int) -> None:
    want = os.environ.get("ROSCOE_FAULT", "")
    name, _, nth = want.partition("#")
    if name != "plan-op" or int(nth or "1") != count:
        return
    if os.environ.get("ROSCOE_FAULT_ACTION") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.EIO, "injected fault (ROSCOE_FAULT)")


def stage(plan: Plan, root: str, hidden: tuple[str, ...] = ()) -> int:
    """Check the whole plan (no op may name a ``hidden`` path), then apply
    it; the number of ops applied."""
    steps = check(plan, root, hidden)
    applier = Applier(root)
    for count, step in enumerate(steps, 1):
        try:
            _fault(count)
            applier.apply(step)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise OpFailed(step.op.index, step.op.op, f"failed: {e.strerror or e}{where}") from e
    return len(steps)


def _report(fd: int | None, result: dict[str, object]) -> None:
    data = json.dumps(result, ensure_ascii=True).encode()
    if fd is None:
        sys.stdout.write(data.decode() + "\n")
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    root = os.environ.get("ROSCOE_ROOT", "")
    fd: int | None = None
    hidden: list[str] = []
    while args and args[0].startswith("--"):
        key, value = args[0], args[1]
        del args[:2]
        if key == "--root":
            root = value
        elif key == "--result-fd":
            fd = int(value)
        elif key == "--hidden":
            hidden.append(value)
    if len(args) != 1 or not root:
        sys.stderr.write("usage: python -m cowfs.planrun [--root DIR] [--result-fd N] [--hidden REL]... PLAN\n")
        return 2
    try:
        with open(args[0], "rb") as f:
            plan = load(f.read())
        applied = stage(plan, root, tuple(hidden))
    except PlanError as e:
        _report(fd, {"ok": False, "index": e.fields.get("index"), "op": e.fields.get("op"),
                     "reason": e.fields["reason"]})
        return 2
    except OpFailed as e:
        index, op, reason = e.args
        _report(fd, {"ok": False, "index": index, "op": op, "reason": reason})
        return 2
    except Exception as e:  # noqa: BLE001 - reported, never a traceback
        _report(fd, {"ok": False, "index": None, "op": None, "reason": f"internal error: {type(e).__name__}: {e}"})
        return 1
    _report(fd, {"ok": True, "ops": applied})
    return 0


if __name__ == "__main__":
    sys.exit(main())
