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
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence

from cowfs import durable, livetree
from cowfs.changeset import path_key
from cowfs.entry import DIR, FILE, SYMLINK, Entry

TEMP_PREFIX = ".roscoe-"


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
    content: Callable[[str, Entry], Iterator[bytes]],
    tag: str,
    owners: bool,
    step: Callable[[], None] = lambda: None,
    known: Mapping[str, Entry | None] | None = None,
) -> int:
    """Make every ``(path, target)`` true in the live tree under ``root``.

    ``content(path, entry)`` yields a target file's bytes; ``tag`` names this
    transaction's temp files; ``step`` is called after every change to the
    tree (fault hooks and progress); ``known`` gives the current state of
    paths just read and hashed, so they are not read again. Returns the
    number of changes made.
    """
    order = sorted(targets, key=lambda t: path_key(t[0]))
    index = {path: i for i, (path, _) in enumerate(order)}
    now: dict[str, Entry | None] = {
        path: known[path] if known is not None and path in known else livetree.entry(root, path)
        for path, _ in order
    }
    touched: set[str] = set()
    done = 0

    def parent(path: str) -> str:
        return path.rpartition("/")[0]

    # 1. remove, children first
    for path, target in reversed(order):
        current = now[path]
        if current is not None and (target is None or current.type != target.type):
            _at(root, path, lambda fd, name: durable.remove(fd, name))
            now[path] = None
            touched.add(parent(path))
            done += 1
            step()
    # 2. create, parents first: directories now, files and symlinks to temp
    # names; then one flush, then the renames that make them appear.
    batch = durable.batches_syncs(root)
    pending: list[tuple[str, str]] = []
    for path, target in order:
        current = now[path]
        if target is None:
            continue
        owner = (target.uid, target.gid) if owners and target.uid is not None else None
        temp = temp_name(tag, index[path])
        if target.type == DIR and current is None:
            _at(root, path, lambda fd, name: durable.make_dir(fd, name))
            touched.add(parent(path))
            done += 1
            step()
            continue
        if target.type == FILE and not (current is not None and current.hash == target.hash):
            chunks = content(path, target)
            _at(root, path, lambda fd, name: durable.write_file(
                fd, None, temp, chunks, mode=target.mode, mtime_ns=target.mtime_ns, owner=owner,
                sync=not batch))
        elif target.type == SYMLINK and not (current is not None and current.target == target.target):
            assert target.target is not None
            link = target.target
            _at(root, path, lambda fd, name: durable.write_symlink(
                fd, None, temp, link, mtime_ns=target.mtime_ns, owner=owner))
        else:
            continue
        pending.append((path, temp))
    if batch and pending:
        durable.sync_filesystem(root)
    for path, temp in pending:
        _at(root, path, lambda fd, name: durable.rename(fd, temp, name))
        touched.add(parent(path))
        done += 1
        step()
    # 3. modes, mtimes, owners, children first
    for path, target in reversed(order):
        if target is None:
            continue
        st = livetree.lstat(root, path)
        if st is None:
            raise durable.NotADirectoryOnPath(2, f"{path!r} vanished while it was being written", path)
        if (
            (target.type == SYMLINK or stat.S_IMODE(st.st_mode) == target.mode)
            and (target.type == DIR or st.st_mtime_ns == target.mtime_ns)
            and (not owners or target.uid is None or (st.st_uid, st.st_gid) == (target.uid, target.gid))
        ):
            continue
        owner = (target.uid, target.gid) if owners and target.uid is not None else None
        mtime = None if target.type == DIR else target.mtime_ns
        mode = None if target.type == SYMLINK else target.mode
        _at(root, path, lambda fd, name: durable.set_meta(fd, name, mode=mode, mtime_ns=mtime, owner=owner))
        done += 1
        step()
    if batch:
        durable.sync_filesystem(root)
        return done
    for directory in sorted(touched | {p for p, t in order if t is not None and t.type == DIR}, key=path_key):
        try:
            durable.fsync_dir(root, directory)
        except durable.NotADirectoryOnPath:
            continue
    return done


def _at(root: str, path: str, action: Callable[[int, str], None]) -> None:
    """Run ``action(dir_fd, name)`` in the real directory that holds ``path``."""
    with durable.parent_dir(root, path) as fd:
        if fd is None:
            raise durable.NotADirectoryOnPath(2, f"parent of {path!r} is missing or not a directory", path)
        try:
            action(fd, durable.basename(path))
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
