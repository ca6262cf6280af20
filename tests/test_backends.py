"""Every staging backend (kernel overlayfs, fuse-overlayfs, copy), as root and
as an ordinary user, passes the same scenario: every kind of change, read back
exactly, with the live tree untouched. And a FUSE lower the kernel refuses
falls back to fuse-overlayfs by itself."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from tests.support.roscoe import Roscoe, UserRoscoe
from tests.support.system import lookup_test_user, rclone_mounted
from tests.support.trees import chown_tree, make_tree, snapshot

SCENARIO = " && ".join([
    "printf 'added\\n' > case1/added.txt",                    # added file
    "printf 'more\\n' >> case1/notes.md",                     # modified file
    "rm case1/old.tmp",                                        # deleted file
    "chmod 0600 case2/intake\\ form.txt",                     # meta_changed (mode)
    "mv case1/Pleadings case1/Filed",                          # dir rename: delete + add
    "rm case2/notes-link && mkdir case2/notes-link",           # symlink -> dir
    "rm -r case2/empty && printf 'x' > case2/empty",           # dir -> file
    "ln -s ../case1/Filed/complaint.txt case2/complaint-link", # added symlink
    "rm -r odd*",                                              # deleted dir with an odd child
    "mkdir -p new/deep/er && printf 'deep\\n' > new/deep/er/f.txt",
])


def h(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


EXPECTED = [
    ("case1/Filed", "added", "dir", None),
    ("case1/Filed/complaint.txt", "added", "file", h(b"COMPLAINT\nline 2\n")),
    ("case1/Pleadings", "deleted", None, None),
    ("case1/Pleadings/complaint.txt", "deleted", None, None),
    ("case1/added.txt", "added", "file", h(b"added\n")),
    ("case1/notes.md", "modified", "file", h(b"# notes\nmore\n")),
    ("case1/old.tmp", "deleted", None, None),
    ("case2/complaint-link", "added", "symlink", h(b"../case1/Filed/complaint.txt")),
    ("case2/empty", "type_changed", "file", h(b"x")),
    ("case2/intake form.txt", "meta_changed", "file", h(b"intake\n")),
    ("case2/notes-link", "type_changed", "dir", None),
    ("new", "added", "dir", None),
    ("new/deep", "added", "dir", None),
    ("new/deep/er", "added", "dir", None),
    ("new/deep/er/f.txt", "added", "file", h(b"deep\n")),
    (os.fsdecode(b"odd \xff dir"), "deleted", None, None),
    (os.fsdecode(b"odd \xff dir/line\nbreak.txt"), "deleted", None, None),
]


def changes_of(roscoe: Roscoe, tx: str) -> list[tuple[object, ...]]:
    got = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    return [
        (c["path"], c["status"], c["new"]["type"] if c["new"] else None, c["new"]["hash"] if c["new"] else None)
        for c in got["changes"]
    ]


def run_scenario(roscoe: Roscoe, root: Path, backend: str) -> str:
    before = snapshot(root)
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", SCENARIO, cwd=root, env={"ROSCOE_BACKEND": backend})
    assert done.returncode == 0, done.stderr
    tx = done.stderr.decode().splitlines()[0].split()[-1]
    assert json.loads(roscoe("tx", "show", tx, "--json").stdout)["backend"] == backend
    assert changes_of(roscoe, tx) == EXPECTED
    # A second run of the same transaction sees the first one's changes.
    done = roscoe("tx", "run", "--tx", tx, "--", "cat", "case1/Filed/complaint.txt", "new/deep/er/f.txt", cwd=root)
    assert (done.returncode, done.stdout) == (0, b"COMPLAINT\nline 2\ndeep\n")
    assert changes_of(roscoe, tx) == EXPECTED
    deleted_dir = [c for c in json.loads(roscoe("tx", "diff", tx, "--json").stdout)["changes"] if c["path"] == "case1/Pleadings"]
    assert deleted_dir[0]["old"]["type"] == "dir"
    assert snapshot(root) == before
    return tx


def test_scenario_as_root(roscoe: Roscoe, root: Path, backend: str, home: Path) -> None:
    tx = run_scenario(roscoe, root, backend)
    assert roscoe("tx", "abort", tx).returncode == 0
    assert not (home / "tx" / tx).exists()


def test_scenario_as_an_ordinary_user(unprivileged: UserRoscoe, user_dir: Path, backend: str) -> None:
    if backend == "fuse" and not os.stat("/dev/fuse").st_mode & 0o006:
        pytest.fail("/dev/fuse is not usable by ordinary users: scripts/test.sh makes it 0666 as Debian's udev does")
    user = lookup_test_user()
    root = make_tree(user_dir / "live")
    chown_tree(root, user.pw_uid, user.pw_gid)
    tx = run_scenario(unprivileged, root, backend)
    done = unprivileged("tx", "run", "--tx", tx, "--", "id", "-u")
    assert (done.returncode, done.stdout) == (0, f"{user.pw_uid}\n".encode())
    assert unprivileged("tx", "abort", tx).returncode == 0


@pytest.fixture
def fuse_lower(tmp_path: Path) -> Iterator[Path]:
    """A FUSE mount (rclone, as gcsfuse-like as it gets here) whose xattr probes
    answer EIO, so the kernel overlay mounts but cannot look anything up."""
    src = make_tree(tmp_path / "bucket")
    with rclone_mounted(str(src), tmp_path / "mnt") as mnt:
        yield mnt


def test_fuse_lower_falls_back_to_kernel_over_bindfs(roscoe: Roscoe, fuse_lower: Path) -> None:
    done = roscoe("tx", "run", "--root", fuse_lower, "--", "sh", "-c", "cat case1/notes.md && printf 'x\\n' >> case1/notes.md", cwd=fuse_lower)
    assert (done.returncode, done.stdout) == (0, b"# notes\n"), done.stderr
    tx = done.stderr.decode().splitlines()[0].split()[-1]
    assert json.loads(roscoe("tx", "show", tx, "--json").stdout)["backend"] == "kernel-bindfs"
    assert changes_of(roscoe, tx) == [("case1/notes.md", "modified", "file", h(b"# notes\nx\n"))]
    assert (fuse_lower / "case1" / "notes.md").read_bytes() == b"# notes\n"


def test_forced_kernel_backend_on_a_refusing_lower_says_why(roscoe: Roscoe, fuse_lower: Path) -> None:
    done = roscoe("tx", "run", "--root", fuse_lower, "--", "true", env={"ROSCOE_BACKEND": "kernel"})
    assert done.returncode == 125
    assert done.stderr.decode().splitlines()[-1].startswith(
        f"roscoe: error: no staging backend works for root {fuse_lower}: kernel: ")


def test_unknown_forced_backend(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--", "true", env={"ROSCOE_BACKEND": "zfs"})
    assert done.returncode == 125
    assert done.stderr.decode().splitlines()[-1] == (
        "roscoe: error: ROSCOE_BACKEND=zfs: expected one of kernel, kernel-bindfs, kernel-metacopy, fuse, copy")


def test_user_namespace_with_mounts_under_tmp_falls_back_to_an_empty_tmp(
    unprivileged: UserRoscoe, user_dir: Path, tmp_path: Path,
) -> None:
    """The kernel will not overlay a /tmp with mounts below it from a user
    namespace; the run then gets an empty private /tmp instead of failing."""
    user = lookup_test_user()
    root = make_tree(user_dir / "live")
    chown_tree(root, user.pw_uid, user.pw_gid)
    submount = Path(tempfile.mkdtemp(prefix="roscoe-submount-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(submount)], check=True)
    try:
        done = unprivileged("tx", "run", "--root", root, "--", "sh", "-c",
                            f"ls /tmp | wc -l; echo x > /tmp/private; ls {root} | wc -l", cwd=root)
        assert (done.returncode, done.stdout) == (0, b"1\n3\n"), done.stderr
        assert not Path("/tmp/private").exists()
    finally:
        subprocess.run(["umount", str(submount)], check=True)
        submount.rmdir()
