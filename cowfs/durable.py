"""Durability and no-follow access to trees: the one module that opens, writes,
renames, removes and fsyncs anything in the live tree or the blob store.

Every path is resolved one component at a time from a directory fd with
``O_NOFOLLOW``, so a symlink planted in the live tree can never redirect a
read or a write. New content is written to a temp name in its directory,
fsynced, then renamed over its target; directories are fsynced after their
entries change (on a local disk a caller may instead sync the whole
filesystem once, with ``sync_filesystem``, when a batch is done).
Directories are never renamed (gcsfuse cannot do it atomically): they are
created and removed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
# A hard link is not possible here: copy instead.
CANNOT_LINK = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES, errno.ENOTSUP)
FUSE_MAGIC = 0x65735546
# 256 KiB: reads of 1 MiB took 3.5x as long for files of 1 MiB (150 against
# 42 ms for 200 of them in the page cache, on this project's VM): each read
# allocates a 1 MiB bytes object, and for files that size glibc hands that
# memory back to the kernel after every file, so every read faults its pages
# in again. From 64 KiB to 512 KiB, and for a 256 MiB file, all the same.
CHUNK = 1 << 18


class NotADirectoryOnPath(OSError):
    """A component of a path is missing or is not a real directory (maybe a symlink)."""


def split(rel: str) -> list[str]:
    return [part for part in rel.split("/") if part]


def open_dir(root: str, rel: str) -> int:
    """An fd of the real directory ``root/rel``, never through a symlink.

    Raises NotADirectoryOnPath when a component is missing or not a directory.
    """
    fd = os.open(root, DIR_FLAGS)
    for part in split(rel):
        if part in (".", ".."):  # never climb out of the root, whatever a caller passes
            os.close(fd)
            raise OSError(errno.EINVAL, f"not a plain path inside the root: {rel!r}", rel)
        try:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            os.close(fd)
            if e.errno in ABSENT:
                raise NotADirectoryOnPath(e.errno, f"not a directory on the way: {rel}", part) from None
            raise
        os.close(fd)
        fd = nxt
    return fd


@contextmanager
def parent_dir(root: str, rel: str) -> Iterator[int | None]:
    """The fd of the real directory holding ``rel``, or None if it has none."""
    parent = "/".join(split(rel)[:-1])
    try:
        fd = open_dir(root, parent)
    except NotADirectoryOnPath:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


class DirFds:
    """Open directory fds of one tree, each reached from its parent with
    O_NOFOLLOW, kept while a batch of operations runs (a commit of 2,000 files
    would otherwise walk from the root 16,000 times)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def get(self, rel_dir: str) -> int:
        fd = self.fds.get(rel_dir)
        if fd is not None:
            return fd
        if not rel_dir:
            fd = os.open(self.root, DIR_FLAGS)
        else:
            up, _, name = rel_dir.rpartition("/")
            if name in ("", ".", ".."):  # never climb out of the root, whatever a caller passes
                raise OSError(errno.EINVAL, f"not a plain path inside the root: {rel_dir!r}", rel_dir)
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=self.get(up))
            except OSError as e:
                if e.errno in ABSENT:
                    raise NotADirectoryOnPath(e.errno, f"not a directory on the way: {rel_dir}", rel_dir) from None
                raise
        self.fds[rel_dir] = fd
        return fd

    def forget(self, rel_dir: str) -> None:
        """Drop a directory (and everything below it) that was just removed."""
        prefix = rel_dir + "/"
        for key in [k for k in self.fds if k == rel_dir or k.startswith(prefix)]:
            os.close(self.fds.pop(key))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def basename(rel: str) -> str:
    """The last component of ``rel`` (``split(rel)[-1]``, without building the list)."""
    return rel.rpartition("/")[2] or split(rel)[-1]


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in ABSENT:
            return None
        raise


_LIBC = None


def _libc():  # type: ignore[no-untyped-def]
    """The C library, through ctypes (loaded once, on first use)."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
        if hasattr(_LIBC, "sync_file_range"):
            _LIBC.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        if hasattr(_LIBC, "renameat2"):
            _LIBC.renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return _LIBC


SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk now, without
    waiting (sync_file_range(2) with SYNC_FILE_RANGE_WRITE): the disk then
    works while the next file is copied. Only a hint: the later syncfs is what
    makes them durable, and a failure here is left for it to report."""
    start = getattr(_libc(), "sync_file_range", None)
    if start is not None:
        start(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def is_fuse(path: str) -> bool:
    """True on a FUSE filesystem, where syncfs may not reach the server."""
    import ctypes

    buf = ctypes.create_string_buffer(128)
    if _libc().statfs(os.fsencode(path), buf) != 0:
        return True
    return int.from_bytes(buf.raw[:8], "little") == FUSE_MAGIC


def batches_syncs(path: str) -> bool:
    """Whether writes under ``path`` may skip their own fsync and be made durable
    together by one ``syncfs``: yes on local filesystems, no on FUSE (gcsfuse
    uploads on fsync or close; syncfs may never reach the server)."""
    return not is_fuse(path)


def sync_filesystem(path: str) -> None:
    """syncfs(2): every dirty page and inode of the filesystem holding ``path``
    is on disk when this returns (Linux waits, and reports write errors)."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


class Staged(str):
    """A content source: the path of a staged file that is never used again
    once committed, so it may be hard-linked in place instead of copied."""


def write_file(
    dir_fd: int, name: str | None, temp: str, source: Iterator[bytes] | str, *, mode: int, mtime_ns: int,
    owner: tuple[int, int] | None = None, sync: bool = True,
) -> None:
    """Write ``source`` (chunks, the path of a trusted file to copy in the
    kernel, or a ``Staged`` file to link when it can be) to ``temp`` in
    ``dir_fd``, set its mode, owner and mtime, fsync it (unless the caller
    syncs the filesystem itself), then rename it over ``name`` (unless None:
    the caller renames later). The target is old or new, never half."""
    linked = _link_staged(source, dir_fd, temp) if isinstance(source, Staged) else None
    if linked is not None and not sync and _has_meta(linked, mode, mtime_ns, owner):
        pass  # the staged inode already is the target: nothing to set, nothing to sync
    else:
        _write_temp(dir_fd, temp, source, linked is not None, mode=mode, mtime_ns=mtime_ns, owner=owner, sync=sync)
    if name is not None:
        rename(dir_fd, temp, name)


def link_staged_as(
    dir_fd: int, name: str, source: Staged, *, mode: int, mtime_ns: int, owner: tuple[int, int] | None = None,
) -> bool:
    """Hard-link the staged file ``source`` straight as the new entry ``name``
    (which must not exist: FileExistsError otherwise), when it already has
    the mode, mtime and owner the target wants: one link(2), atomic by itself,
    so no temp name and no rename. False, with nothing done, when it cannot
    be (see ``_link_staged``, or other metadata): the caller writes a temp."""
    return _link_staged(source, dir_fd, name, only_if=(mode, mtime_ns, owner)) is not None


def _has_meta(st: os.stat_result, mode: int, mtime_ns: int, owner: tuple[int, int] | None) -> bool:
    return stat.S_IMODE(st.st_mode) == mode and st.st_mtime_ns == mtime_ns and (
        owner is None or (st.st_uid, st.st_gid) == owner)


def _write_temp(
    dir_fd: int, temp: str, source: Iterator[bytes] | str, linked: bool, *, mode: int, mtime_ns: int,
    owner: tuple[int, int] | None, sync: bool,
) -> None:
    """``write_file``'s temp file: written (unless ``linked`` already), its
    meta set, fsynced if asked; removed again if any of that fails."""
    fd = os.open(temp, FILE_READ, dir_fd=dir_fd) if linked else os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        if linked:
            pass  # the staged bytes themselves
        elif isinstance(source, str):
            _copy_file(source, fd)
        else:
            for chunk in source:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        if not linked and not sync:
            start_writeback(fd)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, temp)
        raise
    os.close(fd)


def _link_staged(
    src: str, dir_fd: int, temp: str, only_if: tuple[int, int, tuple[int, int] | None] | None = None,
) -> os.stat_result | None:
    """Hard-link the staged regular file ``src`` as ``temp``; its lstat, or
    None when it cannot be linked here (another filesystem, a file with other
    links, an attribute that cannot be removed; or, with ``only_if``, a mode,
    mtime or owner other than those), and the caller copies.

    Its extended attributes are removed first, so the live tree gets what a
    copy would get: not the overlay's own (``user.overlay.origin``), nor any
    the run set (file capabilities, ACLs), which the diff never showed."""
    try:
        st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (only_if is not None and not _has_meta(st, *only_if)):
            return None
        for attr in os.listxattr(src, follow_symlinks=False):
            os.removexattr(src, attr, follow_symlinks=False)
        os.link(src, temp, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        if e.errno in CANNOT_LINK:
            return None
        raise
    return st


def write_symlink(
    dir_fd: int, name: str | None, temp: str, target: str, *, mtime_ns: int,
    owner: tuple[int, int] | None = None,
) -> None:
    os.symlink(target, temp, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.chown(temp, *owner, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(temp, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except BaseException:
        _unlink_quietly(dir_fd, temp)
        raise
    if name is not None:
        rename(dir_fd, temp, name)


def rename(dir_fd: int, src: str, dst: str) -> None:
    """Rename within one directory; refuses to move a directory."""
    st = os.lstat(src, dir_fd=dir_fd)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "roscoe never renames a directory", src)
    os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def make_dir(dir_fd: int, name: str, mode: int = 0o700) -> None:
    os.mkdir(name, mode, dir_fd=dir_fd)


def remove(dir_fd: int, name: str) -> None:
    """Unlink a file or symlink, or remove an empty directory."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:  # (Linux: unlink(2) of a directory)
        os.rmdir(name, dir_fd=dir_fd)


def set_meta(
    dir_fd: int, name: str, *, mode: int | None, mtime_ns: int | None, owner: tuple[int, int] | None = None,
) -> None:
    """Set mode, owner and mtime of a file or directory (or owner and mtime of a
    symlink) without following a symlink."""
    st = os.lstat(name, dir_fd=dir_fd)
    if stat.S_ISLNK(st.st_mode):
        if owner is not None:
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
        if mtime_ns is not None:
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        return
    flags = (DIR_FLAGS if stat.S_ISDIR(st.st_mode) else FILE_READ) | os.O_NONBLOCK
    fd = os.open(name, flags & ~os.O_DIRECTORY if not stat.S_ISDIR(st.st_mode) else flags, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        if mode is not None:
            os.fchmod(fd, mode)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def chunks_of(fd: int) -> Iterator[bytes]:
    """The rest of ``fd``'s bytes, in chunks. (A fresh bytes object for each
    read: reading into one reused buffer of 1 MiB measured 4x slower on this
    project's VM, 170 ms against 40 ms for 256 MiB in the page cache.)"""
    while chunk := os.read(fd, CHUNK):
        yield chunk


READ_AHEAD_FILES = 32
READ_AHEAD_BYTES = 8 << 20


class ReadAhead:
    """Keeps the disk busy ahead of a loop that reads ``paths`` whole, in
    order (``reached(path)`` before each read): the first 8 MiB of each of
    the next 32 files are asked for at once (posix_fadvise WILLNEED), so a
    cold file is in the page cache, or on its way, when its turn comes.
    Reading 200 cold files of 1 MiB this way took 195-220 ms against 370-480
    one after another, on this project's VM. Only a hint: a file that cannot
    be opened is skipped here and fails where it is read."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.index = {path: i for i, path in enumerate(paths)}
        self.advised = 0

    def reached(self, path: str) -> None:
        i = self.index.get(path)
        if i is None:
            return
        end = min(len(self.paths), i + READ_AHEAD_FILES)
        while self.advised < end:
            try:
                fd = os.open(self.paths[self.advised], FILE_READ)
            except OSError:
                pass
            else:
                try:
                    os.posix_fadvise(fd, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            self.advised += 1

    def __iter__(self) -> Iterator[str]:
        for path in self.paths:
            self.reached(path)
            yield path


def read_chunks(dir_fd: int, name: str) -> Iterator[bytes]:
    """The bytes of a regular file, in chunks, never through a symlink."""
    fd = os.open(name, FILE_READ, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", name)
        yield from chunks_of(fd)
    finally:
        os.close(fd)


def _copy_file(path: str, out: int) -> None:
    """Copy a file's bytes in the kernel (copy_file_range, else sendfile)."""
    src = os.open(path, FILE_READ)
    try:
        size = os.fstat(src).st_size
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(src, out, size - copied)
                if n == 0:
                    break
                copied += n
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            while copied < size:
                n = os.sendfile(out, src, copied, size - copied)
                if n == 0:
                    break
                copied += n
    finally:
        os.close(src)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=None if dir_fd < 0 else dir_fd)
    except OSError:
        pass


def save_new(path: str, source: Iterator[bytes], *, mode: int = 0o444, sync: bool = True) -> None:
    """Write a new file at ``path`` (temp in the same dir, fsync, rename, fsync
    the dir; with ``sync=False`` the caller syncs the filesystem instead): the
    blob store's way to add a blob."""
    directory, name = os.path.split(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(directory, DIR_FLAGS)
    try:
        temp = f".{name}.{os.getpid()}.tmp"
        write_file(fd, name, temp, source, mode=mode, mtime_ns=0, sync=sync)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def link_new(src: str, path: str, *, sync: bool = True) -> bool:
    """Hard-link ``src`` as ``path`` (same filesystem), fsyncing the file and
    the directory unless the caller syncs the filesystem itself. False when
    linking is not possible here (then copy instead)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        os.link(src, path, follow_symlinks=False)
    except FileExistsError:
        return True
    except OSError as e:
        if e.errno in CANNOT_LINK:
            return False
        raise
    if sync:
        _fsync_path(path, FILE_READ)
        _fsync_path(directory, DIR_FLAGS)
    return True


def link_aside(dir_fd: int, name: str, temp: str) -> os.stat_result | None:
    """Hard-link the regular file ``name`` of ``dir_fd`` (never through a
    symlink) as ``temp`` and return the lstat of that inode, now pinned: its
    bytes can be read through ``temp`` whatever happens to ``name`` since.
    None, with nothing left behind, when that is not possible here (another
    filesystem, not a regular file, or a file with other links, which could
    change the bytes through them)."""
    try:
        try:
            os.link(name, temp, src_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:  # left by a dead process of the same pid
            os.unlink(temp)
            os.link(name, temp, src_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        if e.errno in CANNOT_LINK:
            return None
        raise
    try:
        st = os.lstat(temp)
    except BaseException:
        _unlink_quietly(-1, temp)
        raise
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 2:
        _unlink_quietly(-1, temp)
        return None
    return st


def settle_link(temp: str, path: str, *, sync: bool = True) -> None:
    """Rename the linked ``temp`` to the new name ``path`` in the same
    filesystem, fsyncing the file first and the directory after unless the
    caller syncs the filesystem itself."""
    try:
        if sync:
            _fsync_path(temp, FILE_READ)
        os.rename(temp, path)
    except BaseException:
        _unlink_quietly(-1, temp)
        raise
    if sync:
        _fsync_path(os.path.dirname(path), DIR_FLAGS)


RENAME_NOREPLACE = 1
AT_FDCWD = -100
_NOREPLACE_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP)
_noreplace = True  # (False once renameat2 said it cannot here)


def rename_new(src: str, dst: str) -> bool:
    """Rename ``src`` to the new name ``dst`` in the same filesystem, never
    over an existing ``dst``: renameat2(2) with RENAME_NOREPLACE, one system
    call where a check and a rename take two and leave a gap between them.
    False, with nothing done, when ``dst`` exists. Where renameat2 is not to
    be had (an old C library or kernel, a filesystem without the flag), the
    check and the rename, as two steps."""
    global _noreplace
    if _noreplace:
        import ctypes

        call = getattr(_libc(), "renameat2", None)
        if call is not None:
            if call(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
                return True
            err = ctypes.get_errno()
            if err == errno.EEXIST:
                return False
            if err not in _NOREPLACE_UNSUPPORTED:
                raise OSError(err, os.strerror(err), src, None, dst)
        _noreplace = False
    if os.path.lexists(dst):
        return False
    os.rename(src, dst)
    return True


def discard(path: str) -> None:
    """Remove a temp file of ours if it is there."""
    _unlink_quietly(-1, path)


def _fsync_path(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
