"""Attacks on the sandbox (cowfs.sandbox, cowfs.seccomp), each as root and as
an ordinary user: a run changes nothing outside its staging layer and reaches
no host service through a unix socket.

Every attack here succeeds, or shows the host, with its protection removed:
the read-only /proc/sys, the masked paths, the socket masks, the uts, ipc and
pid namespaces, the capability set, the seccomp filter. The probes never
crash a process into the host's core_pattern; they only try to write it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cowfs.sandbox import MASKED_PATHS
from cowfs.stagers import remove_tree
from tests.support.roscoe import Roscoe
from tests.support.system import TEST_VENV, lookup_test_user
from tests.support.trees import chown_tree, make_tree, snapshot

PY = "/usr/bin/python3"  # the sandbox sees the host's files read-only, so any python works


@dataclass
class Caller:
    """Who runs roscoe, a case tree of theirs, and a dir of theirs outside it."""

    name: str
    roscoe: Roscoe
    root: Path
    outside: Path
    uid: int
    gid: int

    def popen(self, *args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
        """``roscoe ARGS`` started as this caller, stdout and stderr piped."""
        if self.uid == 0:
            return subprocess.Popen([sys.executable, "-m", "cli.main", *map(os.fspath, args)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.roscoe.env)
        return subprocess.Popen([str(TEST_VENV / "bin" / "python"), "-m", "cli.main", *map(os.fspath, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.roscoe.env,
                                user=self.uid, group=self.gid, extra_groups=[])

    def run(self, code: str, *args: str, network: str = "on") -> dict:
        """Run a Python probe in a new transaction; its stdout as JSON."""
        done = self.roscoe("tx", "run", "--root", self.root, "--network", network, "--", PY, "-c", code, *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(params=["root", "user"])
def caller(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Caller]:
    outside = Path(tempfile.mkdtemp(prefix="roscoe-escape-", dir="/var/tmp"))
    os.chmod(outside, 0o755)
    try:
        if request.param == "root":
            yield Caller("root", Roscoe(tmp_path / "home"), make_tree(tmp_path / "live"), outside, 0, 0)
        else:
            roscoe = request.getfixturevalue("unprivileged")
            user_dir = request.getfixturevalue("user_dir")
            user = lookup_test_user()
            root = make_tree(user_dir / "live")
            chown_tree(root, user.pw_uid, user.pw_gid)
            os.chown(outside, user.pw_uid, user.pw_gid)
            yield Caller("user", roscoe, root, outside, user.pw_uid, user.pw_gid)
    finally:
        remove_tree(outside)


# -- kernel settings -----------------------------------------------------------------

WRITE_SYSCTLS = """
import json, sys
out = {}
for path, value in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        with open(path, "w") as f:
            f.write(value)
        out[path] = "written"
    except OSError as e:
        out[path] = e.errno
print(json.dumps(out))
"""


def test_sysctls_and_core_pattern_cannot_be_written(caller: Caller) -> None:
    # The core_pattern attack: an executable staged in the root, whose host
    # path is in the run's mountinfo, named as the kernel's core handler. Only
    # the write is tried.
    evil = caller.root / "case1" / "handler"
    ratelimit, core = "/proc/sys/kernel/printk_ratelimit", "/proc/sys/kernel/core_pattern"
    before = {p: Path(p).read_text() for p in (ratelimit, core)}
    new_ratelimit = str(int(before[ratelimit]) + 1)
    try:
        got = caller.run(WRITE_SYSCTLS, ratelimit, new_ratelimit, core, f"|{evil} %p")
        assert got == {ratelimit: 30, core: 30}  # EROFS
    finally:
        for path, value in before.items():
            if Path(path).read_text() != value:
                Path(path).write_text(value)
    assert {p: Path(p).read_text() for p in before} == before


MASKED = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            out[path] = os.listdir(path)
        else:
            with open(path, "rb") as f:
                out[path] = f.read(4096).decode(errors="replace")
    except OSError as e:
        out[path] = e.errno
print(json.dumps(out))
"""


def test_masked_kernel_files_read_as_empty(caller: Caller) -> None:
    present = [p for p in MASKED_PATHS if os.path.exists(p)]
    # The test proves something only when the host shows something there.
    assert Path("/proc/timer_list").read_bytes() and os.listdir("/sys/firmware"), "nothing to mask here"
    got = caller.run(MASKED, *present)
    assert got == {p: [] if os.path.isdir(p) else "" for p in present}


# -- namespaces ----------------------------------------------------------------------

UTS = """
import json, os, socket
try:
    socket.sethostname("roscoe-escape")
    result = "renamed"
except OSError as e:
    result = e.errno
print(json.dumps({"sethostname": result, "uts": os.readlink("/proc/self/ns/uts"), "name": socket.gethostname()}))
"""


def test_the_hostname_is_the_runs_own(caller: Caller) -> None:
    name = socket.gethostname()
    got = caller.run(UTS)
    assert got == {"sethostname": 1, "uts": got["uts"], "name": name}  # EPERM
    assert got["uts"] != os.readlink("/proc/self/ns/uts")
    assert socket.gethostname() == name


SYSV_SHM = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
seen = [int(line.split()[0]) for line in open("/proc/sysvipc/shm").read().splitlines()[1:]]
made = libc.shmget(int(sys.argv[2]), 4096, 0o1600)  # IPC_CREAT | 0600
print(json.dumps({"sees_host": int(sys.argv[1]) in seen, "made": made >= 0}))
"""


def shm_keys() -> list[int]:
    return [int(line.split()[0]) for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]]


def test_sysv_ipc_is_the_runs_own(caller: Caller) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    host_key, run_key = 0x524F0000 + os.getpid() % 0xFFFF, 0x52500000 + os.getpid() % 0xFFFF
    shmid = libc.shmget(host_key, 4096, 0o1666)
    assert shmid >= 0
    try:
        got = caller.run(SYSV_SHM, str(host_key), str(run_key))
        assert got == {"sees_host": False, "made": True}
        assert run_key not in shm_keys()
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID
        for key in (run_key,):
            left = libc.shmget(key, 0, 0)
            if left >= 0:
                libc.shmctl(left, 0, None)


PROCESSES = """
import ctypes, json, os, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
out = {"proc": os.path.exists(f"/proc/{pid}")}
try:
    os.kill(pid, 0)
    out["kill"] = "sent"
except OSError as e:
    out["kill"] = e.errno
out["ptrace"] = "attached" if libc.ptrace(16, pid, None, None) == 0 else ctypes.get_errno()  # PTRACE_ATTACH
print(json.dumps(out))
"""


def test_host_processes_cannot_be_seen_signalled_or_traced(caller: Caller) -> None:
    kw = {} if caller.uid == 0 else {"user": caller.uid, "group": caller.gid, "extra_groups": []}
    victim = subprocess.Popen(["sleep", "120"], **kw)  # type: ignore[call-overload]
    try:
        got = caller.run(PROCESSES, str(victim.pid))
        assert got == {"proc": False, "kill": 3, "ptrace": 3}  # ESRCH
        assert victim.poll() is None
        with open(f"/proc/{victim.pid}/status") as f:
            assert re.search(r"^TracerPid:\s+0$", f.read(), re.M)
    finally:
        victim.kill()
        victim.wait()


CAPS = """
import json
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
print(json.dumps({k: int(status[k], 16) for k in ("CapEff", "CapPrm", "CapAmb", "NoNewPrivs")}))
"""


def test_capabilities_are_the_four_a_file_job_needs(caller: Caller) -> None:
    # CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID as root; none otherwise.
    # no_new_privs: no setuid or file-capability binary can raise them (bwrap
    # leaves root's bounding set full).
    files = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) if caller.uid == 0 else 0
    assert caller.run(CAPS) == {"CapEff": files, "CapPrm": files, "CapAmb": files, "NoNewPrivs": 1}


# -- unix sockets --------------------------------------------------------------------

CONNECT = """
import json, socket, sys
out = {}
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        out[path] = "connected"
    except OSError as e:
        out[path] = e.errno
# The run's own unix sockets work: Chromium and multiprocessing need them.
import os, tempfile
mine = os.path.join(tempfile.mkdtemp(), "own.sock")
server = socket.socket(socket.AF_UNIX)
server.bind(mine)
server.listen()
client = socket.socket(socket.AF_UNIX)
client.connect(mine)
server.accept()[0].sendall(b"ok")
out["own"] = client.recv(2).decode()
try:
    socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK: to the hypervisor
    out["vsock"] = "made"
except OSError as e:
    out["vsock"] = e.errno
print(json.dumps(out))
"""


@pytest.fixture
def host_services(caller: Caller) -> Iterator[list[tuple[str, socket.socket]]]:
    """Two host services on unix sockets anyone may connect to: one where
    services live (/run), one in a dir of the caller's on the host's disk."""
    run_dir = Path(tempfile.mkdtemp(prefix="roscoe-escape-", dir="/run"))
    os.chmod(run_dir, 0o755)
    servers = []
    try:
        for path in (str(run_dir / "host.sock"), str(caller.outside / "host.sock")):
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            os.chmod(path, 0o777)
            server.listen()
            server.setblocking(False)
            servers.append((path, server))
        yield servers
    finally:
        for _, server in servers:
            server.close()
        remove_tree(run_dir)


@pytest.mark.parametrize("network", ["off", "on"])
def test_no_host_unix_socket_is_connectable(caller: Caller, host_services: list[tuple[str, socket.socket]],
                                            network: str) -> None:
    paths = [path for path, _ in host_services]
    for path, server in host_services:  # the services answer outside roscoe
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
        server.accept()[0].close()

    got = caller.run(CONNECT, *paths, network=network)
    vsock: object = 97 if network == "off" else got["vsock"]  # EAFNOSUPPORT
    assert got == {paths[0]: 111, paths[1]: 111, "own": "ok", "vsock": vsock}  # ECONNREFUSED
    for _, server in host_services:
        with pytest.raises(BlockingIOError):
            server.accept()


# -- system calls --------------------------------------------------------------------

SYSCALLS = r"""
import ctypes, errno, json, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L, P = ctypes.c_long, ctypes.c_char_p

def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(L(nr), *args)
    if r == 0 and nr == 56:  # a clone that worked: this is the child
        os._exit(0)
    if r > 0 and nr == 56:
        os.waitpid(r, 0)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]

def int80_getpid():
    # mov eax, 20 (getpid in the i386 ABI); int 0x80; ret
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    r = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
    return "ok" if r >= 0 else errno.errorcode[-r]

pid = os.getpid()
desc = b"roscoe-escape-%d" % pid
out = {
    "add_key": call(248, P(b"user"), P(desc), P(b"x"), L(1), L(-4)),  # KEY_SPEC_USER_KEYRING
    "keyctl": call(250, L(0), L(-4), L(0)),  # KEYCTL_GET_KEYRING_ID
    "request_key": call(249, P(b"user"), P(desc), None, L(0)),
    "bpf": call(321, L(5), None, L(0)),
    "perf_event_open": call(298, None, L(0), L(-1), L(-1), L(0)),
    "userfaultfd": call(323, L(0o2000000)),
    "io_uring_setup": call(425, L(1), None),
    "kexec_load": call(246, L(0), L(0), None, L(0)),
    "init_module": call(175, None, L(0), P(b"")),
    "finit_module": call(313, L(-1), P(b""), L(0)),
    "delete_module": call(176, P(b"roscoe_none"), L(0)),
    "mount": call(165, P(b"none"), P(b"/tmp"), P(b"tmpfs"), L(0), None),
    "umount2": call(166, P(b"/proc"), L(2)),
    "pivot_root": call(155, P(b"/"), P(b"/")),
    "fsopen": call(430, P(b"tmpfs"), L(0)),
    "open_tree": call(428, L(-100), P(b"/"), L(0)),
    "move_mount": call(429, L(-1), P(b""), L(-1), P(b""), L(0)),
    "setns": call(308, L(-1), L(0)),
    "name_to_handle_at": call(303, L(-100), P(b"/"), None, None, L(0)),
    "open_by_handle_at": call(304, L(-1), None, L(0)),
    "kcmp": call(312, L(pid), L(pid), L(0), L(0), L(0)),
    "syslog": call(103, L(10), None, L(0)),  # SYSLOG_ACTION_SIZE_BUFFER
    "personality_no_aslr": call(135, L(0x0040000)),
    "personality_query": call(135, L(0xFFFFFFFF)),
    "clone3": call(435, None, L(0)),
    "clone_newuser": call(56, L(0x10000000 | 17), L(0), None, None, L(0)),  # CLONE_NEWUSER | SIGCHLD
    "unshare_newuser": call(272, L(0x10000000)),
    "unshare_newns": call(272, L(0x00020000)),
    "memfd_secret": call(447, L(0)),
    "int80_getpid": int80_getpid(),
}
print(json.dumps(out))
"""

REFUSED = {
    "add_key": "EPERM", "keyctl": "EPERM", "request_key": "EPERM", "bpf": "EPERM", "perf_event_open": "EPERM",
    "userfaultfd": "EPERM", "io_uring_setup": "EPERM", "kexec_load": "EPERM", "init_module": "EPERM",
    "finit_module": "EPERM", "delete_module": "EPERM", "mount": "EPERM", "umount2": "EPERM",
    "pivot_root": "EPERM", "fsopen": "EPERM", "open_tree": "EPERM", "move_mount": "EPERM", "setns": "EPERM",
    "name_to_handle_at": "EPERM", "open_by_handle_at": "EPERM", "kcmp": "EPERM", "syslog": "EPERM",
    "personality_no_aslr": "EPERM", "personality_query": "ok", "clone3": "ENOSYS", "clone_newuser": "EPERM",
    "unshare_newuser": "EPERM", "unshare_newns": "EPERM", "memfd_secret": "EPERM", "int80_getpid": "EPERM",
}


def test_the_seccomp_filter_refuses_what_dockers_does(caller: Caller) -> None:
    if os.uname().machine != "x86_64":
        pytest.fail("the probe's system call numbers and int 0x80 are x86-64's")
    assert caller.run(SYSCALLS) == REFUSED


def test_a_key_added_in_a_run_is_not_in_the_hosts_keyring(caller: Caller) -> None:
    marker = f"roscoe-escape-{os.getpid()}"
    done = caller.roscoe("tx", "run", "--root", caller.root, "--", PY, "-c",
                         "import ctypes, sys\n"
                         "libc = ctypes.CDLL(None, use_errno=True)\n"
                         "r = libc.syscall(ctypes.c_long(248), b'user', sys.argv[1].encode(), b'x', ctypes.c_long(1),"
                         " ctypes.c_long(-4))\n"
                         "print(r, ctypes.get_errno())", marker)
    assert (done.returncode, done.stdout) == (0, b"-1 1\n"), done.stderr
    assert marker not in Path("/proc/keys").read_text()


def test_a_run_cannot_make_a_user_namespace(caller: Caller) -> None:
    before = snapshot(caller.root)
    done = caller.roscoe("tx", "run", "--root", caller.root, "--", "sh", "-c",
                         "for how in -U -Ur -Urm; do unshare $how id -u 2>/dev/null || echo refused; done; id -u")
    assert (done.returncode, done.stdout) == (0, f"refused\nrefused\nrefused\n{caller.uid}\n".encode()), done.stderr
    assert snapshot(caller.root) == before and list(caller.outside.iterdir()) == []


# -- what the caller hands the run ---------------------------------------------------

def test_a_file_on_stdin_or_stdout_cannot_be_reopened_for_writing(caller: Caller) -> None:
    # Reopened through /proc/self/fd, a file descriptor opens its file again on
    # the host's own mount: a stdin of a live file would be rewritten in place.
    live = caller.root / "case1" / "notes.md"
    out = caller.outside / "out.txt"
    out.write_bytes(b"")
    os.chown(out, caller.uid, caller.gid)
    before = snapshot(caller.root)
    script = ("for fd in 0 1; do (echo TAMPER > /proc/self/fd/$fd) 2>/dev/null; done;"
              " cat; echo out; echo err >&2")
    with open(live, "rb") as stdin, open(out, "ab") as stdout:
        done = caller.roscoe("tx", "run", "--root", caller.root, "--", "sh", "-c", script, stdin=stdin, stdout=stdout)
    assert done.returncode == 0, done.stderr
    assert snapshot(caller.root) == before
    # The TAMPER written to fd 1 is output; the one written to fd 0 went into
    # the stdin pipe, before or after the file's bytes, and cat read it back.
    assert out.read_bytes() in (b"TAMPER\n# notes\nTAMPER\nout\n", b"TAMPER\nTAMPER\n# notes\nout\n")
    assert done.stderr.decode().splitlines()[1:-1] == ["err"]


def test_no_other_descriptor_of_the_caller_reaches_the_run(caller: Caller) -> None:
    # A directory fd is an openat() anywhere below it; a file fd a write.
    log = caller.outside / "log.txt"
    log.write_bytes(b"")
    os.chown(log, caller.uid, caller.gid)
    dir_fd = os.open(caller.outside, os.O_RDONLY | os.O_DIRECTORY)
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    probe = ("import json, os, sys\n"
             "out = {}\n"
             "for name, fd in (('dir', int(sys.argv[1])), ('log', int(sys.argv[2]))):\n"
             "    try:\n"
             "        if name == 'dir':\n"
             "            os.close(os.open('escaped', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))\n"
             "        else:\n"
             "            os.write(fd, b'escaped')\n"
             "        out[name] = 'escaped'\n"
             "    except OSError as e:\n"
             "        out[name] = e.errno\n"
             "print(json.dumps(out))\n")
    try:
        done = caller.roscoe("tx", "run", "--root", caller.root, "--", PY, "-c", probe, str(dir_fd), str(log_fd),
                             pass_fds=(dir_fd, log_fd))
    finally:
        os.close(dir_fd)
        os.close(log_fd)
    assert (done.returncode, json.loads(done.stdout)) == (0, {"dir": 9, "log": 9}), done.stderr  # EBADF
    assert sorted(p.name for p in caller.outside.iterdir()) == ["log.txt"] and log.read_bytes() == b""


MOUNTED_LATER = """
import json, os, sys, time
sub, go = sys.argv[1], sys.argv[2]
print("inside", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.02)
try:
    with open(os.path.join(sub, "pwned"), "w") as f:
        f.write("from the run")
    result = "written"
except OSError as e:
    result = e.errno
print(json.dumps({"go": os.path.exists(go), "write": result, "mounted": os.path.ismount(sub)}))
"""


def test_a_mount_the_host_makes_during_a_run_stays_out_of_it(caller: Caller) -> None:
    # bwrap makes the run's mounts slaves: without a private layer in between,
    # a mount the host makes below a shared mount (an automount, say) would
    # show up in the run, writable.
    shared, sub, go = caller.outside / "shared", caller.outside / "shared" / "sub", caller.outside / "go"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "roscoe-shared", shared], check=True)
    try:
        subprocess.run(["mount", "--make-shared", shared], check=True)
        sub.mkdir()
        run = caller.popen("tx", "run", "--root", caller.root, "--", PY, "-c", MOUNTED_LATER, str(sub), str(go))
        try:
            assert run.stdout is not None and run.stdout.readline() == b"inside\n"
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "roscoe-later", sub], check=True)
            go.write_text("go\n")
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert (run.returncode, json.loads(out)) == (0, {"go": True, "write": 30, "mounted": False}), err  # EROFS
        assert os.listdir(sub) == []
    finally:
        subprocess.run(["umount", "-R", shared], check=False)


def test_the_state_dir_is_empty_in_a_run(caller: Caller) -> None:
    done = caller.roscoe("tx", "run", "--root", caller.root, "--", "sh", "-c", 'ls -A "$ROSCOE_HOME"; echo end')
    assert (done.returncode, done.stdout) == (0, b"end\n"), done.stderr
    assert (caller.roscoe.home / "journal.db").exists()


def test_the_runs_init_is_held_by_the_runs_limits(roscoe: Roscoe, root: Path) -> None:
    # bwrap's init (pid 1 of the run) can be traced by the command: outside the
    # run's cgroup, code injected into it would escape --memory and --pids.
    done = roscoe("tx", "run", "--root", root, "--pids", "20", "--memory", "512M", "--", "sh", "-c",
                  "cat /proc/1/cgroup; echo --; cat /proc/self/cgroup")
    assert done.returncode == 0, done.stderr
    init, own = done.stdout.decode().split("--\n")
    assert "roscoe-run-" in own and init == own


def test_a_host_socket_that_goes_away_during_setup_does_not_fail_the_run(
    root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # bwrap cannot cover a path that is no longer there: a socket listed in
    # /proc/net/unix and removed before bwrap mounts over it must not make the
    # run fail. The first listing here names such a socket; the next is real.
    from cowfs import sandbox

    gone = f"/var/tmp/roscoe-gone-{os.getpid()}/host.sock"  # on the host's read-only disk, not /tmp
    assert not os.path.exists(os.path.dirname(gone))
    listings = [["--dev-bind", "/dev/null", gone]]
    real = sandbox.host_sockets
    monkeypatch.setattr(sandbox, "host_sockets", lambda *a: listings.pop() if listings else real(*a))
    outcome = sandbox.run([PY, "-c", "print('ran')"], root=str(root), mount_args=[], cwd=str(root),
                          env=dict(os.environ), probe=False)
    assert (outcome.started, outcome.exit_code) == (True, 0), outcome.error
    assert listings == []
