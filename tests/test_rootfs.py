"""``[run] rootfs`` (cowfs.rootfs): a run over an unpacked container image.

The image is built here: a static busybox (Debian's busybox-static) with its
applets linked in /bin, an /etc/os-release marker, and the mount points
``docker export`` has. Real bwrap, as root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.roscoe import Roscoe
from tests.support.system import missing
from tests.support.transactions import committed, error_line, run_tx, staged, write_config
from tests.support.trees import snapshot

MARKER = "ID=roscoe-test-image\n"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An unpacked image: busybox in /bin, /etc/os-release, /dev /proc /sys /tmp."""
    busybox = shutil.which("busybox")
    if busybox is None:
        missing("busybox (Debian's busybox-static)")
    with open(busybox, "rb") as f:
        head = f.read(1 << 20)
    if b"ld-linux" in head:
        missing("a static busybox (Debian's busybox-static, not busybox)")
    rootfs = tmp_path / "image"
    for d in ("bin", "etc", "dev", "proc", "sys", "tmp"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    # links to /bin/busybox as the image sees it, not to where it is on the host
    subprocess.run(["chroot", rootfs, "/bin/busybox", "--install", "-s", "/bin"], check=True)
    (rootfs / "etc" / "os-release").write_text(MARKER)
    return rootfs


@pytest.fixture
def over_image(roscoe: Roscoe, home: Path, image: Path) -> Path:
    write_config(home, f'[run]\nrootfs = "{image}"\n')
    return image


def test_a_run_sees_the_image_as_its_root_and_stages_its_writes(roscoe, root, over_image):
    before = snapshot(root)
    script = ("cat /etc/os-release; readlink /bin/sh; echo new > case1/added.txt; rm case1/old.tmp; "
              "echo x > /etc/written 2>/dev/null || echo etc-read-only")
    tx, done = run_tx(roscoe, root, script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"{MARKER}/bin/busybox\netc-read-only\n"
    assert not (over_image / "etc" / "written").exists()
    assert snapshot(root) == before  # nothing lands before the commit
    diff = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    assert [(c["path"], c["status"]) for c in diff["changes"]] == [
        ("case1/added.txt", "added"), ("case1/old.tmp", "deleted"),
    ]
    committed(roscoe, tx)
    assert (root / "case1" / "added.txt").read_text() == "new\n"
    assert not (root / "case1" / "old.tmp").exists()


def test_the_host_outside_the_image_is_not_in_the_run(roscoe, root, home, over_image):
    with tempfile.TemporaryDirectory(dir="/var/tmp") as host_dir:
        Path(host_dir, "secret").write_text("host secret\n")
        script = (f"for p in {host_dir}/secret /usr/bin/python3 /etc/passwd {home} /tmp/$(basename {host_dir}); "
                  "do [ -e $p ] && echo seen $p; done; ls -A /tmp | grep -v pytest-of; true")
        tx, done = run_tx(roscoe, root, script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""


def test_a_state_dir_inside_the_image_is_hidden_there(image, root, tmp_path):
    home = image / "var" / "lib" / "roscoe"
    roscoe = Roscoe(home)
    write_config(home, f'[run]\nrootfs = "{image}"\n')
    tx, done = run_tx(roscoe, root, "ls -A /var/lib/roscoe; echo listed; cat /var/lib/roscoe/config.toml")
    assert done.returncode == 1, done.stderr
    assert done.stdout == b"listed\n"


def test_network_off_still_holds(roscoe, root, over_image):
    with listening() as (port, received):
        tx, done = run_tx(roscoe, root, f"echo hello | nc -w 2 127.0.0.1 {port}", "--network", "off")
        assert done.returncode != 0, done.stderr
        tx, done = run_tx(roscoe, root, f"echo hello | nc -w 2 127.0.0.1 {port}")
        assert done.returncode == 0, done.stderr
    assert received == [b"hello\n"]  # the second run's only: the image's nc works


def test_a_root_outside_tmp_needs_its_mount_point_in_the_image(roscoe, over_image):
    with tempfile.TemporaryDirectory(dir="/var/tmp") as live:
        Path(live, "a.txt").write_text("a\n")
        done = roscoe("tx", "run", "--root", live, "--", "sh", "-c", "echo b > b.txt", cwd=live)
        assert error_line(done, 125) == (
            f"[run] rootfs {over_image}: has no directory {live} to mount on (a symlink will not do); "
            f"create {over_image}{live}"
        )
        assert done.stderr.decode().count("\n") == 1  # refused before a transaction was begun
        assert sorted(os.listdir(live)) == ["a.txt"]
        (over_image / live.lstrip("/")).mkdir(parents=True)
        tx = staged(roscoe, Path(live), "cat a.txt; pwd; echo b > b.txt")
        committed(roscoe, tx)
        assert Path(live, "b.txt").read_text() == "b\n"


def test_an_image_without_a_shell_is_refused(roscoe, root, home, tmp_path):
    empty = tmp_path / "empty-image"
    empty.mkdir()
    write_config(home, f'[run]\nrootfs = "{empty}"\n')
    done = roscoe("tx", "run", "--root", root, "--", "true")
    assert error_line(done, 125) == f"[run] rootfs {empty}: has no /bin/sh (the sandbox starts the command with it)"


def test_a_command_the_image_lacks_is_not_found(roscoe, root, over_image):
    assert shutil.which("python3") is not None  # on the host, not in the image
    done = roscoe("tx", "run", "--root", root, "--", "python3", "-c", "pass", cwd=root)
    assert error_line(done, 127) == "command not found: python3"


def test_a_plan_runs_over_the_host(roscoe, root, over_image, tmp_path):
    # planrun is roscoe's own code and needs the host's python: the image has none
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "ops": [{"op": "write", "path": "case1/README.txt", "content": "hi\n"}]}))
    done = roscoe("tx", "plan", "--root", root, "--json", plan)
    assert done.returncode == 0, done.stderr
    tx = json.loads(done.stdout)["tx"]
    committed(roscoe, tx)
    assert (root / "case1" / "README.txt").read_text() == "hi\n"


@pytest.mark.parametrize(("value", "shown"), [
    ('"images/tools"', '"images/tools"'),
    ('"/nonexistent/image"', '"/nonexistent/image"'),
    ("42", "42"),
    ('["/srv/image"]', "a list"),
])
def test_bad_rootfs_values_are_usage_errors(roscoe, root, home, value, shown):
    config = write_config(home, f"[run]\nrootfs = {value}\n")
    done = roscoe("tx", "begin", "--root", root)
    assert error_line(done, 2) == (
        f"config {config}: line 2: [run] rootfs: expected the absolute path of a directory "
        f"(an unpacked container image), got {shown}"
    )


@contextmanager
def listening() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that keeps what each connection sent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                received.append(data)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        stop.set()
        thread.join()
        server.close()
