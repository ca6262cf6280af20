"""What a run cannot reach (cowfs.sandbox): nothing outside the root is
writable through any path, the run cannot mount or unmount, /tmp and /dev/shm
are its own, --network off has only loopback; and what it can on purpose:
--writable paths and the --env / --clean-env environment."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs.stagers import remove_tree
from tests.support.roscoe import Roscoe
from tests.support.transactions import tx_from
from tests.support.trees import snapshot


@pytest.fixture
def outside() -> Iterator[Path]:
    """A dir on the host's own disk, outside the root and outside /tmp (which
    a run sees through a private layer of its own)."""
    path = Path(tempfile.mkdtemp(prefix="roscoe-outside-", dir="/var/tmp"))
    try:
        yield path
    finally:
        remove_tree(path)


def test_symlinks_in_the_tree_do_not_lead_out(root: Path, outside: Path) -> None:
    (outside / "keep.txt").write_text("keep\n")
    home = outside / "state"
    roscoe = Roscoe(home)
    tx = roscoe.begin(root)  # the state dir exists from here on
    os.symlink(outside, root / "to-outside")
    os.symlink(home, root / "to-state")
    os.symlink("/", root / "to-slash")
    attempts = [
        "echo x > to-outside/new.txt", "echo x >> to-outside/keep.txt", "rm to-outside/keep.txt",
        "echo x > to-state/journal.db", f"touch to-state/tx/{tx}/upper/forged",
        "touch to-slash/etc/roscoe-escape", f"touch to-slash{outside}/viaslash",
    ]

    def outside_files() -> dict[str, tuple[object, ...]]:
        return {k: v for k, v in snapshot(outside).items() if not k.startswith("state")}

    before_live, before_out = snapshot(root), outside_files()
    script = "; ".join(f"if {a} 2>/dev/null; then echo WROTE; else echo refused; fi" for a in attempts)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=root)
    assert (done.returncode, done.stdout) == (0, b"refused\n" * len(attempts)), done.stderr
    assert snapshot(root) == before_live and outside_files() == before_out
    assert not (home / "tx" / tx / "upper" / "forged").exists()
    assert (home / "journal.db").read_bytes().startswith(b"SQLite format 3\0")
    assert roscoe("verify").returncode == 0
    assert not os.path.exists("/etc/roscoe-escape")


def test_proc_self_root_is_the_same_read_only_view(roscoe: Roscoe, root: Path, outside: Path) -> None:
    script = (
        f"touch /proc/self/root{outside}/a 2>/dev/null || echo refused;"
        f" touch /proc/1/root{outside}/b 2>/dev/null || echo refused;"
        f" echo staged > /proc/self/root{root}/via-proc.txt && echo staged"
    )
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, b"refused\nrefused\nstaged\n"), done.stderr
    assert list(outside.iterdir()) == [] and not (root / "via-proc.txt").exists()
    got = json.loads(roscoe("tx", "diff", tx_from(done.stderr), "--json").stdout)
    assert [c["path"] for c in got["changes"]] == ["via-proc.txt"]


def test_a_run_cannot_mount_unmount_or_remount(roscoe: Roscoe, root: Path, outside: Path) -> None:
    before = snapshot(root)
    attempts = [
        f"mount -t tmpfs none {outside}", f"mount --bind {outside} {root}/case1", f"umount {root}",
        f"umount -l {root}", "mount -o remount,rw /", f"mount -o remount,rw,bind {outside}",
        f"mknod {root}/disk b 8 0", f"unshare -Urm sh -c 'mount -o remount,rw / && touch {outside}/x'",
    ]
    script = "; ".join(f"if {a} 2>/dev/null; then echo DONE; else echo refused; fi" for a in attempts)
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", script + f"; touch {outside}/after 2>/dev/null || echo ro")
    assert (done.returncode, done.stdout) == (0, b"refused\n" * len(attempts) + b"ro\n"), done.stderr
    assert snapshot(root) == before and list(outside.iterdir()) == []


def test_tmp_and_dev_shm_are_private(roscoe: Roscoe, root: Path) -> None:
    name = f"roscoe-private-{os.getpid()}"
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c",
                  f"echo a > /tmp/{name} && echo b > /dev/shm/{name} && cat /tmp/{name} /dev/shm/{name}")
    assert (done.returncode, done.stdout) == (0, b"a\nb\n"), done.stderr
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/dev/shm/{name}")


def test_network_off_cannot_reach_the_host(roscoe: Roscoe, root: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].sendall(b"hello\n"), daemon=True).start()
    try:
        probe = ["python3", "-c",
                 f"import socket\ntry:\n print(socket.create_connection(('127.0.0.1', {port}), 2).recv(6))\n"
                 "except OSError as e:\n print('refused', e.errno)"]
        done = roscoe("tx", "run", "--root", root, "--network", "off", "--", *probe)
        assert (done.returncode, done.stdout) == (0, b"refused 111\n"), done.stderr
        done = roscoe("tx", "run", "--root", root, "--network", "on", "--", *probe)
        assert (done.returncode, done.stdout) == (0, b"b'hello\\n'\n"), done.stderr
    finally:
        server.close()


def test_writable_paths_are_written_for_real(roscoe: Roscoe, root: Path, tmp_path: Path, outside: Path) -> None:
    cache = outside / "cache"
    cache.mkdir()
    other = outside / "other"
    other.mkdir()
    tmp_cache = tmp_path / "tmp-cache"  # under /tmp: bound over the run's private /tmp
    tmp_cache.mkdir()
    done = roscoe("tx", "run", "--root", root, "--writable", cache, "--writable", tmp_cache, "--", "sh", "-c",
                  f"echo cached > {cache}/c.txt && echo t > {tmp_cache}/t.txt && echo ok;"
                  f" touch {other}/x 2>/dev/null || echo other-ro")
    assert (done.returncode, done.stdout) == (0, b"ok\nother-ro\n"), done.stderr
    assert (cache / "c.txt").read_text() == "cached\n" and list(other.iterdir()) == []
    assert (tmp_cache / "t.txt").read_text() == "t\n"
    got = json.loads(roscoe("tx", "diff", tx_from(done.stderr), "--json").stdout)
    assert got["changes"] == []


def test_env_and_clean_env(roscoe: Roscoe, root: Path) -> None:
    show = ["python3", "-c", "import os, json; print(json.dumps(dict(sorted(os.environ.items()))))"]
    base = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "SECRET_TOKEN": "s3cr3t"}
    done = roscoe("tx", "run", "--root", root, "--clean-env", "--env", "A=1=2", "--env", "EMPTY=", "--", *show,
                  env=base, cwd=root)
    assert done.returncode == 0, done.stderr
    tx = tx_from(done.stderr)
    # PWD is set by the shell that starts the command.
    assert json.loads(done.stdout) == {
        "A": "1=2", "EMPTY": "", "HOME": "/root", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "PWD": str(root),
        "ROSCOE_ROOT": str(root), "ROSCOE_TX": tx, "TERM": "dumb",
    }
    done = roscoe("tx", "run", "--root", root, "--env", "A=x", "--", *show, env=base)
    got = json.loads(done.stdout)
    assert (got["A"], got["SECRET_TOKEN"], got["ROSCOE_HOME"]) == ("x", "s3cr3t", str(roscoe.home))


TIOCSTI_PROBE = (
    "import fcntl, termios\n"
    "try:\n"
    "    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n"
    "    print('pushed')\n"
    "except OSError as e:\n"
    "    print('refused', e.errno)\n"
)


def on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run ``argv`` in a new session whose controlling terminal is a fresh pty
    on its stdin, as a run started from a person's shell is; its stdout."""
    import fcntl
    import pty
    import subprocess
    import termios

    master, slave = pty.openpty()
    try:
        done = subprocess.run(
            argv, stdin=slave, capture_output=True, env=env, cwd=cwd, timeout=60,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def test_a_run_cannot_type_into_the_terminal_it_shares(roscoe: Roscoe, root: Path) -> None:
    # A run keeps roscoe's session so that ^C reaches it; on a kernel that
    # still allows TIOCSTI, that would let it queue a command in the person's
    # shell. The same probe, outside roscoe and in a bare bwrap sandbox with
    # every capability dropped, pushes the byte: the filter is what stops it.
    import sys

    from cowfs.sandbox import bwrap_path

    with open("/proc/sys/dev/tty/legacy_tiocsti") as f:
        assert f.read().strip() == "1", "this kernel refuses TIOCSTI anyway: the test would prove nothing"
    env = dict(roscoe.env)
    probe = [sys.executable, "-c", TIOCSTI_PROBE]
    assert on_a_terminal(probe, env, root) == "pushed\n"
    bare = [bwrap_path(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
            "--cap-drop", "ALL", "--", *probe]
    assert on_a_terminal(bare, env, root) == "pushed\n"
    run = [sys.executable, "-m", "cli.main", "tx", "run", "--root", str(root), "--", *probe]
    assert on_a_terminal(run, env, root) == "refused 1\n"
