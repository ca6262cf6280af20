"""Live trees: the small awkward test tree, byte-for-byte snapshots, chown."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def snapshot(root: str | os.PathLike[str]) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, mode, mtime_ns, owner, and bytes or target."""
    out: dict[str, tuple[object, ...]] = {}
    base = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    body: object = f.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            else:
                body = None
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), mtime, st.st_uid, st.st_gid, body)
    return out


def make_tree(root: Path) -> Path:
    """A small case tree with the awkward parts: spaces, a newline, a non-UTF-8
    name, a symlink, an empty dir, nested dirs and modes other than 0644."""
    (root / "case1" / "Pleadings").mkdir(parents=True)
    (root / "case1" / "Pleadings" / "complaint.txt").write_text("COMPLAINT\nline 2\n")
    (root / "case1" / "notes.md").write_text("# notes\n")
    (root / "case1" / "old.tmp").write_bytes(b"\x00\x01binary\xff")
    (root / "case2").mkdir()
    (root / "case2" / "intake form.txt").write_text("intake\n")
    (root / "case2" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "case2" / "script.sh", 0o755)
    (root / "case2" / "empty").mkdir()
    os.symlink("../case1/notes.md", root / "case2" / "notes-link")
    os.mkdir(os.path.join(os.fsencode(root), b"odd \xff dir"))
    with open(os.path.join(os.fsencode(root), b"odd \xff dir", b"line\nbreak.txt"), "wb") as f:
        f.write(b"odd\n")
    # Fixed mtimes, so a test can tell an mtime that moved.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), ns=(1_700_000_000_000_000_000,) * 2, follow_symlinks=False)
    os.utime(root / "case2" / "notes-link", ns=(1_700_000_000_000_000_000,) * 2, follow_symlinks=False)
    return root


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def disk_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of local disk what lies under ``path`` takes (allocated blocks,
    st_blocks); a file removed while it is walked counts nothing."""
    total = 0
    for top, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
