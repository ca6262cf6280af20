"""Reading upper layers in every form the backends write, built by hand here
so each form is tested even where this kernel would not produce it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import xxhash

from cowfs import livetree
from cowfs.changeset import compare
from cowfs.upper import UnsupportedUpper, touches


def layers(tmp_path: Path) -> tuple[Path, Path]:
    live, upper = tmp_path / "live", tmp_path / "upper"
    (live / "d" / "sub").mkdir(parents=True)
    (live / "d" / "a.txt").write_text("a")
    (live / "d" / "sub" / "b.txt").write_text("b")
    (live / "f.txt").write_text("f")
    upper.mkdir()
    return live, upper


def diff(live: Path, upper: Path, *, wh_files: bool = False) -> list[tuple[str, str]]:
    cs = compare(str(live), touches(str(upper), str(live), wh_files=wh_files))
    return [(c.path, c.status) for c in cs.changes]


def whiteout_device(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def test_char_device_whiteout_deletes_a_file_and_a_whole_dir(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    whiteout_device(upper / "f.txt")
    whiteout_device(upper / "d")
    assert diff(live, upper) == [
        ("d", "deleted"), ("d/a.txt", "deleted"), ("d/sub", "deleted"), ("d/sub/b.txt", "deleted"), ("f.txt", "deleted"),
    ]


@pytest.mark.parametrize("name", ["trusted.overlay.whiteout", "user.overlay.whiteout"])
def test_xattr_whiteout(tmp_path: Path, name: str) -> None:
    live, upper = layers(tmp_path)
    (upper / "f.txt").write_bytes(b"")
    os.setxattr(upper / "f.txt", name, b"")
    assert diff(live, upper) == [("f.txt", "deleted")]


def test_wh_files_only_for_fuse_overlayfs(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    (upper / ".wh.f.txt").write_bytes(b"")
    assert diff(live, upper, wh_files=True) == [("f.txt", "deleted")]
    # Under the kernel a file may really be called ".wh.f.txt".
    assert diff(live, upper, wh_files=False) == [(".wh.f.txt", "added")]


@pytest.mark.parametrize("marker", [
    ("xattr", "trusted.overlay.opaque"), ("xattr", "user.overlay.opaque"),
    ("xattr", "user.fuseoverlayfs.opaque"), ("file", ".wh..wh..opq"),
])
def test_opaque_dir_hides_every_live_child(tmp_path: Path, marker: tuple[str, str]) -> None:
    live, upper = layers(tmp_path)
    (upper / "d").mkdir()
    (upper / "d" / "new.txt").write_text("n")
    kind, name = marker
    if kind == "xattr":
        os.setxattr(upper / "d", name, b"y")
    else:
        (upper / "d" / name).write_bytes(b"")
    assert diff(live, upper, wh_files=True) == [
        ("d/a.txt", "deleted"), ("d/new.txt", "added"), ("d/sub", "deleted"), ("d/sub/b.txt", "deleted"),
    ]


def test_opaque_value_x_only_marks_xattr_whiteouts_inside(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    (upper / "d").mkdir()
    os.setxattr(upper / "d", "user.overlay.opaque", b"x")
    (upper / "d" / "new.txt").write_text("n")
    assert diff(live, upper) == [("d/new.txt", "added")]


def test_a_redirected_dir_shows_its_lower_at_its_new_path(tmp_path: Path) -> None:
    """redirect_dir=on: ``mv d moved`` is an upper dir naming its lower; what
    is under d shows under moved, and d is a whiteout."""
    live, upper = layers(tmp_path)
    (upper / "moved").mkdir()
    os.setxattr(upper / "moved", "user.overlay.redirect", b"/d")
    whiteout_device(upper / "d")
    assert diff(live, upper) == [
        ("d", "deleted"), ("d/a.txt", "deleted"), ("d/sub", "deleted"), ("d/sub/b.txt", "deleted"),
        ("moved", "added"), ("moved/a.txt", "added"), ("moved/sub", "added"), ("moved/sub/b.txt", "added"),
    ]


def test_a_relative_redirect_needs_a_lower_dir_to_be_relative_to(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    (upper / "new").mkdir()
    os.setxattr(upper / "new", "user.overlay.opaque", b"y")
    (upper / "new" / "moved").mkdir()
    os.setxattr(upper / "new" / "moved", "user.overlay.redirect", b"d")
    with pytest.raises(UnsupportedUpper):
        diff(live, upper)


def test_copy_ups_that_changed_nothing_are_not_listed(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    (upper / "d").mkdir()
    os.chmod(upper / "d", os.stat(live / "d").st_mode)
    (upper / "d" / "a.txt").write_text("a")
    st = os.stat(live / "d" / "a.txt")
    os.utime(upper / "d" / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert diff(live, upper) == []
    os.utime(upper / "d" / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert diff(live, upper) == [("d/a.txt", "meta_changed")]
    (upper / "d" / "a.txt").write_text("A")
    os.utime(upper / "d" / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert diff(live, upper) == [("d/a.txt", "modified")]


def test_a_dir_mode_change_is_listed_its_mtime_is_not(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    (upper / "d").mkdir(mode=0o755)
    os.chmod(upper / "d", 0o755)
    os.utime(upper / "d", ns=(1, 1))
    assert diff(live, upper) == []
    os.chmod(upper / "d", 0o700)
    assert diff(live, upper) == [("d", "meta_changed")]


def test_live_symlinks_are_never_followed(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    os.symlink(outside, live / "esc")
    # The run replaced the symlink by a real dir holding "secret": the old
    # content must not be read through the live symlink.
    (upper / "esc").mkdir()
    (upper / "esc" / "secret").write_text("new")
    cs = compare(str(live), touches(str(upper), str(live), wh_files=False))
    assert [(c.path, c.status, c.old) for c in cs.changes][1] == ("esc/secret", "added", None)
    assert cs.changes[0].status == "type_changed" and cs.changes[0].old.type == "symlink"
    assert livetree.entry(str(live), "esc/secret") is None
    assert livetree.read_bytes(str(live), "esc/secret", 100) is None


def test_hashes_are_streamed_xxh3_128(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    big = os.urandom(3 << 20) + b"tail"
    (upper / "big.bin").write_bytes(big)
    cs = compare(str(live), touches(str(upper), str(live), wh_files=False))
    assert cs.changes[0].new.hash == xxhash.xxh3_128_hexdigest(big)
    assert cs.changes[0].new.size == len(big)


def test_special_files_are_unsupported(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    os.mkfifo(upper / "fifo")
    os.mknod(upper / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    cs = compare(str(live), touches(str(upper), str(live), wh_files=False))
    assert cs.changes == ()
    assert [(u.path, u.type) for u in cs.unsupported] == [("dev", "char-device"), ("fifo", "fifo")]


def test_a_dir_inside_an_opaque_dir_hides_its_live_namesake_too(tmp_path: Path) -> None:
    live, upper = layers(tmp_path)
    (upper / "d" / "sub").mkdir(parents=True)
    os.setxattr(upper / "d", "user.overlay.opaque", b"y")
    (upper / "d" / "sub" / "other.txt").write_text("o")
    assert diff(live, upper) == [("d/a.txt", "deleted"), ("d/sub/b.txt", "deleted"), ("d/sub/other.txt", "added")]
