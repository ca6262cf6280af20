"""``roscoe serve`` and the CLI as its client, real processes over a real
unix socket: the agent (the roscoe-test user) gets transactions and nothing
else; what it says about itself counts for nothing, the kernel's word
(SO_PEERCRED) for everything."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.service import Served, config_text, error_of
from tests.support.terminal import wait_for_foreground
from tests.support.trees import make_tree, snapshot
from tests.support.roscoe import UserRoscoe


@pytest.fixture
def agent(served: Served, unprivileged: UserRoscoe) -> UserRoscoe:
    return served.agent(Path(unprivileged.env["PYTHONPATH"]))


def test_the_agent_loop_goes_through_the_service(served: Served, agent: UserRoscoe, tree: Path) -> None:
    before = snapshot(tree)
    tx = agent("tx", "begin", "--root", tree)
    assert tx.returncode == 0, tx.stderr
    tx_id = tx.stdout.decode().strip()
    ran = agent("tx", "run", "--tx", tx_id, "--", "sh", "-c",
                "echo out; echo err >&2; printf 'filed\\n' > case1/new.txt; exit 7", input=b"")
    assert ran.returncode == 7, ran.stderr
    assert ran.stdout == b"out\n"
    assert ran.stderr.decode().splitlines()[:2] == [f"roscoe: tx {tx_id}", "err"]
    assert snapshot(tree) == before  # nothing lands before the commit
    diff = agent("tx", "diff", tx_id, "--json")
    assert diff.returncode == 0, diff.stderr
    assert [(c["path"], c["status"]) for c in json.loads(diff.stdout)["changes"]] == [("case1/new.txt", "added")]
    done = agent("tx", "commit", tx_id, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "committed"
    assert (tree / "case1" / "new.txt").read_bytes() == b"filed\n"


def test_the_audit_trail_names_the_caller_the_kernel_names(served: Served, agent: UserRoscoe, tree: Path) -> None:
    done = agent("tx", "begin", "--root", tree, env={"LOGNAME": "root", "USER": "root"})
    assert done.returncode == 0, done.stderr
    events = json.loads(served.operator()("audit", "--json").stdout)["events"]
    begin = [e for e in events if e["kind"] == "begin"][-1]
    assert (begin["user"], begin["uid"]) == ("roscoe-test", agent.user.pw_uid)
    listed = json.loads(served.operator()("tx", "list", "--json").stdout)
    assert listed[0]["user"] == "roscoe-test"


@pytest.mark.parametrize(("args", "expected"), [
    (("--home", "/tmp/mine", "tx", "list"),
     "roscoe-test (uid {uid}) may not name a config file or a state dir (--home, --config) through the roscoe"
     " service: the service's own are in force"),
    (("--config", "/dev/null", "tx", "list"),
     "roscoe-test (uid {uid}) may not name a config file or a state dir (--home, --config) through the roscoe"
     " service: the service's own are in force"),
    (("tx", "begin", "--root", "/etc"),
     "roscoe-test (uid {uid}) may not tx begin over /etc through the roscoe service: only the roots"
     ' the config names ([roots."ROOT"]) are served to agents'),
    (("gc", "--keep-days", "0"),
     "roscoe-test (uid {uid}) may not gc through the roscoe service (roles: agent; see the config's [roles])"),
    (("verify",),
     "roscoe-test (uid {uid}) may not verify through the roscoe service (roles: agent; see the config's [roles])"),
    (("recover",),
     "roscoe-test (uid {uid}) may not recover through the roscoe service (roles: agent; see the config's [roles])"),
    (("audit",),
     "roscoe-test (uid {uid}) may not audit through the roscoe service (roles: agent; see the config's [roles])"),
])
def test_what_an_agent_may_not_do_is_refused(agent: UserRoscoe, args: tuple[str, ...], expected: str) -> None:
    done = agent(*args, "--json")
    assert done.returncode == 4, done.stderr
    message = expected.format(uid=agent.user.pw_uid)
    assert error_of(done) == message
    assert json.loads(done.stdout) == {"error": {"code": 4, "kind": "refused", "message": message, "paths": []}}


def test_an_agent_cannot_approve_roll_back_or_write_outside_the_root(
    served: Served, agent: UserRoscoe, tree: Path, tmp_path: Path,
) -> None:
    uid = agent.user.pw_uid
    outside = tmp_path / "outside"
    outside.mkdir()
    run = agent("tx", "run", "--root", tree, "--writable", outside, "--", "sh", "-c", f"echo x > {outside}/x")
    assert run.returncode == 125
    assert error_of(run) == (f"roscoe-test (uid {uid}) may not let a run write outside its root (--writable)"
                             " through the roscoe service (operators only)")
    assert list(outside.iterdir()) == []
    tx = served.operator().begin(tree)
    assert agent("tx", "run", "--tx", tx, "--", "sh", "-c", "rm case1/notes.md").returncode == 0
    diff_hash = json.loads(agent("tx", "diff", tx, "--json").stdout)["diff_hash"]
    approve = agent("tx", "approve", tx, "--hash", diff_hash, "--by", "Jane Partner")
    assert approve.returncode == 4
    assert error_of(approve) == (f"roscoe-test (uid {uid}) may not tx approve through the roscoe service"
                                 " (roles: agent; see the config's [roles])")
    assert agent("tx", "commit", tx, "--yes").returncode == 0
    before = snapshot(tree)
    rollback = agent("tx", "rollback", tx, "--yes")
    assert rollback.returncode == 4
    assert snapshot(tree) == before


def test_an_agent_touches_no_transaction_over_a_root_the_config_does_not_serve(
    served: Served, agent: UserRoscoe, tmp_path: Path,
) -> None:
    other = make_tree(tmp_path / "other")
    tx = served.operator().begin(other)
    assert served.operator()("tx", "run", "--tx", tx, "--", "sh", "-c", "echo x > case1/x.txt").returncode == 0
    before = snapshot(other)
    uid = agent.user.pw_uid
    for args in (("tx", "commit", tx, "--yes"), ("tx", "run", "--tx", tx, "--", "true"), ("tx", "diff", tx),
                 ("tx", "abort", tx)):
        done = agent(*args)
        assert done.returncode == (125 if args[1] == "run" else 4), (args, done.stderr)
        command = " ".join(args[:2])
        assert error_of(done) == (f"roscoe-test (uid {uid}) may not {command} over {other} through the"
                                  ' roscoe service: only the roots the config names ([roots."ROOT"]) are served to agents')
    assert snapshot(other) == before
    assert json.loads(served.operator()("tx", "show", tx, "--json").stdout)["state"] == "open"


def test_a_plan_file_is_opened_by_the_client_not_the_service(
    served: Served, agent: UserRoscoe, tree: Path, unprivileged: UserRoscoe,
) -> None:
    plan = Path(unprivileged.env["PYTHONPATH"]).parent / "plan.json"
    plan.write_text(json.dumps({"version": 1, "ops": [{"op": "mkdir", "path": "case1/Filed"}]}))
    os.chown(plan, agent.user.pw_uid, agent.user.pw_gid)
    os.chmod(plan, 0o600)
    done = agent("tx", "plan", "--root", tree, plan)
    assert done.returncode == 0, done.stderr
    secret = Path("/root") / f"roscoe-secret-{os.getpid()}.json"  # readable by the service (root), not by the agent
    secret.write_text(plan.read_text())
    try:
        refused = agent("tx", "plan", "--root", tree, secret)
        assert refused.returncode == 1
        assert "Permission denied" in error_of(refused)
    finally:
        secret.unlink()


def test_a_report_is_written_by_the_client(served: Served, agent: UserRoscoe, tree: Path, unprivileged: UserRoscoe) -> None:
    report = Path(unprivileged.env["PYTHONPATH"]).parent / "report.json"
    done = agent("tx", "run", "--root", tree, "--report", report, "--", "true")
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["exit_code"] == 0
    assert os.stat(report).st_uid == agent.user.pw_uid


def raw_request(socket_path: Path, payload: bytes, fds: list[int] | None = None) -> dict[str, object] | None:
    """Send ``payload`` as it is (with ``fds``); the service's answer frame, None when it closed without one."""
    import array

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(socket_path))
        if fds:
            conn.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    if len(data) < 4:
        return None
    return json.loads(data[4:4 + struct.unpack("!I", data[:4])[0]])


def test_bad_requests_get_a_clear_answer_and_the_service_keeps_serving(served: Served, tree: Path) -> None:
    garbage = raw_request(served.socket, b"\x00\x00\x00\x05hello")
    assert garbage is not None and garbage["exit"] == 2
    assert str(garbage["error"]["message"]).startswith("bad request to the roscoe service: ")  # type: ignore[index]
    huge = raw_request(served.socket, struct.pack("!I", 64 << 20))
    assert huge == {"exit": 2, "error": {
        "code": 2, "kind": "usage", "paths": [],
        "message": "bad request to the roscoe service: a request of 67108864 bytes, more than the 1048576 allowed"}}
    body = json.dumps({"v": 1, "argv": ["tx", "list"], "env": {}}).encode()
    no_fds = raw_request(served.socket, struct.pack("!I", len(body)) + body)
    assert no_fds is not None and no_fds["error"]["message"] == (  # type: ignore[index]
        "bad request to the roscoe service: stdin, stdout and stderr must come with the request")
    r, w = os.pipe()
    body = json.dumps({"v": 1, "argv": ["frobnicate"], "env": {}}).encode()
    unknown = raw_request(served.socket, struct.pack("!I", len(body)) + body, [r, w, w])
    os.close(w)
    said = os.read(r, 65536).decode()
    os.close(r)
    assert unknown == {"exit": 2}
    assert said.startswith("roscoe: error: No such command 'frobnicate'")
    assert served.operator()("tx", "list").returncode == 0
    assert served.proc is not None and served.proc.poll() is None


def test_a_client_killed_mid_run_leaves_an_interrupted_run_and_a_serving_service(
    served: Served, tree: Path,
) -> None:
    operator = served.operator()
    tx = operator.begin(tree)
    marker = f"sleep {60 + os.getpid() % 1000}"  # (the run's own process, to find)
    client = subprocess.Popen(
        [*operator_argv(), "tx", "run", "--tx", tx, "--", "sh", "-c",
         f"echo partial > case1/partial.txt && exec {marker}"],
        env=operator.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-fx", marker], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.05)
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while True:  # the run's sandbox goes with the service's child
        alive = subprocess.run(["pgrep", "-fx", marker], capture_output=True)
        if alive.returncode == 1:
            break
        assert time.monotonic() < deadline, alive.stdout
        time.sleep(0.1)
    shown = json.loads(operator("tx", "show", tx, "--json").stdout)
    assert shown["runs"][-1]["interrupted"] is True
    assert [c["path"] for c in json.loads(operator("tx", "diff", tx, "--json").stdout)["changes"]] == [
        "case1/partial.txt"]
    assert served.proc is not None and served.proc.poll() is None


def operator_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "cli.main"]


def test_a_client_without_its_service_says_so(tmp_path: Path, home: Path) -> None:
    from tests.support.roscoe import Roscoe

    gone = tmp_path / "gone.sock"
    client = Roscoe(home, {"ROSCOE_SOCKET": str(gone)})
    listed = client("tx", "list", "--json")
    message = (f"cannot reach the roscoe service at {gone}: No such file or directory"
               " (ROSCOE_SOCKET names another socket; empty: run locally)")
    assert listed.returncode == 1
    assert error_of(listed) == message
    assert json.loads(listed.stdout) == {"error": {"code": 1, "kind": "error", "message": message, "paths": [str(gone)]}}
    ran = client("tx", "run", "--root", tmp_path, "--", "true")
    assert ran.returncode == 125 and error_of(ran) == message
    assert not home.exists()  # nothing was done here


def test_a_shell_through_the_service_works_at_a_terminal(served: Served, tree: Path) -> None:
    import sys

    pexpect = pytest.importorskip("pexpect") if os.environ.get("CI") != "true" else __import__("pexpect")
    operator = served.operator()
    child = pexpect.spawn(
        sys.executable, ["-m", "cli.main", "tx", "shell", "--root", str(tree)],
        env=dict(operator.env, SHELL="/bin/sh", TERM="dumb"), cwd=str(tree), timeout=30, encoding="utf-8")
    child.expect(r"roscoe: tx ([0-9a-f]{12})\r\n")
    tx = child.match.group(1)
    child.expect(r"roscoe:[0-9a-f]{12}\$ ")
    child.sendline("test -t 0 && test -t 1 && echo on-a-terminal; echo typed > case1/typed.txt")
    child.expect("on-a-terminal\r\n")
    child.expect(r"roscoe:[0-9a-f]{12}\$ ")
    # ^C stops the command in the foreground, not the shell, the client or the run
    child.sendline("sleep 61.5")
    wait_for_foreground(["sleep", "61.5"])
    child.sendintr()
    child.expect(r"roscoe:[0-9a-f]{12}\$ ")
    child.sendline("echo still-here")
    child.expect("still-here\r\n")
    child.expect(r"roscoe:[0-9a-f]{12}\$ ")
    child.sendline("exit 5")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5
    diff = json.loads(operator("tx", "diff", tx, "--json").stdout)
    assert [c["path"] for c in diff["changes"]] == ["case1/typed.txt"]


def test_the_service_takes_the_sockets_systemd_hands_it(tmp_path: Path, tree: Path) -> None:
    # socket activation (dist/systemd/roscoe.socket): the listening socket is
    # made before the service runs and passed as fd 3, named by LISTEN_FDNAMES
    import sys

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(config_text(tree))
    path = tmp_path / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen(8)

    env = dict(os.environ, ROSCOE_HOME=str(home), ROSCOE_SOCKET="", LISTEN_FDS="1", LISTEN_FDNAMES="roscoe",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    service = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid());"
         " os.execv(sys.executable, [sys.executable, '-m', 'cli.main', 'serve', '--json'])", str(listening.fileno())],
        env=env, pass_fds=(listening.fileno(),), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listening.close()
    try:
        from tests.support.roscoe import Roscoe

        client = Roscoe(home, {"ROSCOE_SOCKET": str(path)})
        deadline = time.monotonic() + 20
        while (listed := client("tx", "list", "--json")).returncode != 0:
            assert time.monotonic() < deadline and service.poll() is None, (listed.stderr, service.stderr.read() if service.poll() is not None else "")
            time.sleep(0.1)
        assert json.loads(listed.stdout) == []
    finally:
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=20)
    assert service.returncode == 0, err
    assert json.loads(out) == {"home": str(home), "socket": str(path), "connections": 1}, err
    assert path.exists()  # systemd's socket: the service leaves it in place
