"""Bring paths of the live tree to a target state, idempotently.

Commit (target: the new states), recovery of an interrupted commit (target:
the old states) and rollback (a transaction whose new states are another's
old ones) are all one operation: for every path, look at what is there and
make it what the target says, in three passes that keep the tree walkable:

1. remove what must go (children before parents): entries with no target,
   and entries whose type differs from the target's;
2. create what is missing (parents before children): directories (mode 0700
   until pass 3), files and symlinks written to a temp name and renamed over;
3. set modes, mtimes and owners (children before parents, so a read-only
   directory is made read-only last).

Running it again after a crash anywhere finishes the job; nothing is done
twice. Every write goes through ``cowfs.durable``.

Durability: no file appears under its name before its bytes are durable.
On FUSE every file is fsynced before its rename and every touched directory
after. On a local disk one syncfs before the renames and one at the end
stand for all the fsyncs. A staged file linked into place (no temp name
when the path is new) must already be durable: the commit's sync of its
images covers it. So after a crash or a power cut every path is old, or
new and whole, and ``journal.recovery`` can tell a file this transaction
made from one someone else put there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence

from cowfs import durable, livetree
from cowfs.changeset import path_key
from cowfs.entry import DIR, FILE, SYMLINK, Entry
from cowfs.errors import UnsafePath
from cowfs.paths import plain

TEMP_PREFIX = ".roscoe-"

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing stays off the start-up path of `tx run`)
    from typing import TypeVar

    T = TypeVar("T")


def temp_name(tag: str, index: int) -> str:
    return f"{TEMP_PREFIX}{tag}-{index}"


def matches(current: Entry | None, target: Entry | None, *, owners: bool) -> bool:
    """Whether ``current`` already is ``target`` (a directory's mtime aside)."""
    if current is None or target is None:
        return current is target
    if current.type != target.type:
        return False
    if owners and target.uid is not None and (current.uid, current.gid) != (target.uid, target.gid):
        return False
    if target.type == DIR:
        return current.mode == target.mode
    if target.type == SYMLINK:
        return current.target == target.target and current.mtime_ns == target.mtime_ns
    return (current.hash, current.mode, current.mtime_ns) == (target.hash, target.mode, target.mtime_ns)


def converge(
    root: str,
    targets: Sequence[tuple[str, Entry | None]],
    *,
    content: Callable[[str, Entry], Iterator[bytes] | str],
    tag: str,
    owners: bool,
    step: Callable[[], None] = lambda: None,
    known: Mapping[str, Entry | None] | None = None,
    spare: Callable[[str, Entry], bool] | None = None,
) -> int:
    """Make every ``(path, target)`` true in the live tree under ``root``.

    ``content(path, entry)`` yields a target file's bytes (or names a file
    whose bytes are already verified, copied in the kernel); ``tag`` names this
    transaction's temp files; ``step`` is called after every change to the
    tree (fault hooks and progress); ``known`` gives the current state of
    paths just read and hashed, so they are not read again; an entry where
    the target is absent that ``spare(path, entry)`` says someone else made
    is left where it is. Returns the number of changes made.
    """
    for path, _ in targets:
        if not plain(path):
            raise UnsafePath(path=path, root=root)
    run = _Convergence(root, targets, content, tag, owners, step, known, spare)
    try:
        run.remove()
        run.create()
        run.set_meta()
        run.flush()
    finally:
        run.dirs.close()
    return run.done


class _Convergence:
    """The state of one ``converge``: targets in path order, what is there now,
    the directories touched, open directory fds."""

    def __init__(  # type: ignore[no-untyped-def]
        self, root: str, targets, content, tag: str, owners: bool, step, known, spare,
    ) -> None:
        self.root, self.content, self.tag, self.owners, self.step = root, content, tag, owners, step
        self.spare = spare
        self.order = sorted(targets, key=lambda t: path_key(t[0]))
        self.index = {path: i for i, (path, _) in enumerate(self.order)}
        self.now: dict[str, Entry | None] = {
            path: known[path] if known is not None and path in known else livetree.entry(root, path)
            for path, _ in self.order
        }
        self.touched: set[str] = set()
        self.written: set[str] = set()  # files and symlinks made with their mode, owner and mtime
        self.dirs = durable.DirFds(root)
        self.batch = durable.batches_syncs(root)
        self.done = 0

    def changed(self, path: str) -> None:
        self.touched.add(parent(path))
        self.done += 1
        self.step()

    def owner(self, target: Entry) -> tuple[int, int] | None:
        return (target.uid, target.gid) if self.owners and target.uid is not None else None

    def remove(self) -> None:
        """Pass 1, children first: what has no target, or a target of another type."""
        for path, target in reversed(self.order):
            current = self.now[path]
            if current is not None and target is None and self.spare is not None and self.spare(path, current):
                continue
            if current is not None and (target is None or current.type != target.type):
                _at(self.dirs, path, durable.remove)
                if current.type == DIR:
                    self.dirs.forget(path)
                self.now[path] = None
                self.changed(path)

    def create(self) -> None:
        """Pass 2, parents first: directories now; files and symlinks to temp
        names (or a new staged file linked straight into place), then one
        flush, then the renames that make them appear."""
        pending: list[tuple[str, str]] = []
        for path, target in self.order:
            current = self.now[path]
            if target is None:
                continue
            temp = temp_name(self.tag, self.index[path])
            owner = self.owner(target)
            if target.type == DIR and current is None:
                _at(self.dirs, path, durable.make_dir)
                self.changed(path)
                continue
            if target.type == FILE and not (current is not None and current.hash == target.hash):
                source = self.content(path, target)
                if current is None and self.batch and isinstance(source, durable.Staged) and _at(
                        self.dirs, path, lambda fd, name: durable.link_staged_as(
                            fd, name, source, mode=target.mode, mtime_ns=target.mtime_ns, owner=owner)):
                    self.written.add(path)
                    self.changed(path)
                    continue
                _at(self.dirs, path, lambda fd, name: durable.write_file(
                    fd, None, temp, source, mode=target.mode, mtime_ns=target.mtime_ns, owner=owner,
                    sync=not self.batch))
            elif target.type == SYMLINK and not (current is not None and current.target == target.target):
                link = target.target or ""
                _at(self.dirs, path, lambda fd, name: durable.write_symlink(
                    fd, None, temp, link, mtime_ns=target.mtime_ns, owner=owner))
            else:
                continue
            pending.append((path, temp))
        if self.batch and pending:
            durable.sync_filesystem(self.root)
        for path, temp in pending:
            _at(self.dirs, path, lambda fd, name: durable.rename(fd, temp, name))
            self.written.add(path)
            self.changed(path)

    def set_meta(self) -> None:
        """Pass 3, children first (a read-only directory is made so last):
        modes, file and symlink mtimes, owners, where pass 2 did not set them."""
        for path, target in reversed(self.order):
            if target is None or path in self.written:
                continue
            try:
                st = durable.lstat_at(self.dirs.get(parent(path)), durable.basename(path))
            except durable.NotADirectoryOnPath:
                st = None
            if st is None:
                raise durable.NotADirectoryOnPath(2, f"{path!r} vanished while it was being written", path)
            owner = self.owner(target)
            if (
                (target.type == SYMLINK or stat.S_IMODE(st.st_mode) == target.mode)
                and (target.type == DIR or st.st_mtime_ns == target.mtime_ns)
                and (owner is None or (st.st_uid, st.st_gid) == owner)
            ):
                continue
            mtime = None if target.type == DIR else target.mtime_ns
            mode = None if target.type == SYMLINK else target.mode
            _at(self.dirs, path, lambda fd, name: durable.set_meta(fd, name, mode=mode, mtime_ns=mtime, owner=owner))
            self.done += 1
            self.step()

    def flush(self) -> None:
        """Make the directory changes durable: one syncfs, or an fsync per directory on FUSE."""
        if self.batch:
            durable.sync_filesystem(self.root)
            return
        made = {p for p, t in self.order if t is not None and t.type == DIR}
        for directory in sorted(self.touched | made, key=path_key):
            try:
                os.fsync(self.dirs.get(directory))
            except durable.NotADirectoryOnPath:
                continue


def obstacles(
    root: str, targets: Sequence[tuple[str, Entry | None]], dirs: durable.DirFds | None = None,
) -> list[str]:
    """Paths ``converge`` could not make true without touching paths outside
    ``targets``: a directory to remove that holds entries the targets do not
    name, or a path to create whose parent is neither a directory now nor one
    the targets make. (``dirs``: open directory fds of ``root`` to use.)"""
    wanted = dict(targets)
    blocked = []
    parents: dict[str, os.stat_result | None] = {}
    for path, target in sorted(targets, key=lambda t: path_key(t[0])):
        st = livetree.lstat(root, path, dirs)
        if st is not None and stat.S_ISDIR(st.st_mode) and (target is None or target.type != DIR):
            names = livetree.children(root, path)
            if any(f"{path}/{name}" not in wanted for name in names):
                blocked.append(path)
                continue
        up = parent(path)
        if target is not None and up:
            made = wanted.get(up)
            if up not in parents:
                parents[up] = livetree.lstat(root, up, dirs)
            there = parents[up]
            if not (made is not None and made.type == DIR) and not (there is not None and stat.S_ISDIR(there.st_mode)):
                blocked.append(path)
    return blocked


def parent(path: str) -> str:
    return path.rpartition("/")[0]


def _at(dirs: durable.DirFds, path: str, action: Callable[[int, str], T]) -> T:
    """Run ``action(dir_fd, name)`` in the real directory that holds ``path``;
    its result."""
    try:
        fd = dirs.get(parent(path))
    except durable.NotADirectoryOnPath:
        raise durable.NotADirectoryOnPath(2, f"parent of {path!r} is missing or not a directory", path) from None
    try:
        return action(fd, durable.basename(path))
    except durable.NotADirectoryOnPath:
        raise
    except OSError as e:
        # Errors name the path in the tree, not a temp file or a bare name.
        raise type(e)(e.errno, e.strerror, path) from e


def remove_temps(root: str, paths: Sequence[str], tag: str) -> int:
    """Delete temp files a crash left in the directories of ``paths``."""
    removed = 0
    prefix = f"{TEMP_PREFIX}{tag}-"
    for directory in sorted({p.rpartition("/")[0] for p in paths}, key=path_key):
        try:
            fd = durable.open_dir(root, directory)
        except durable.NotADirectoryOnPath:
            continue
        try:
            for name in os.listdir(fd):
                if name.startswith(prefix):
                    os.unlink(name, dir_fd=fd)
                    removed += 1
            if removed:
                os.fsync(fd)
        finally:
            os.close(fd)
    return removed
