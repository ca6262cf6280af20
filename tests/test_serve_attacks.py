"""``roscoe serve`` under attack and under load, real processes over a real
unix socket: an agent in a container of its own (only the socket and the
CLI in its view), the approver's role, eight clients at once over one root,
the service SIGKILLed in the middle of a commit, and ``roscoe mcp`` as the
agent's front end to the service."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.roscoe import UserRoscoe
from tests.support.service import Contained, Served, config_text, serving, error_of
from tests.support.trees import snapshot


# -- 1. an agent in a container ------------------------------------------------------------

def test_an_agent_in_a_container_gets_transactions_and_nothing_else(
    served: Served, tree: Path, unprivileged: UserRoscoe,
) -> None:
    box = Contained(served.socket, Path(unprivileged.env["PYTHONPATH"]))
    uid = box.user.pw_uid
    # What it sees: itself as roscoe-test, alone in its pid namespace, no network, the socket, no state, no tree.
    seen = box.sh(f"id -u; hostname; echo /proc/[0-9]*; cat /proc/net/dev | tail -n +3 | cut -d: -f1;"
                  f" test -S /run/roscoe/roscoe.sock && echo socket;"
                  f" for p in {served.home} {tree} {tree.parent}; do test -e $p && echo $p; done;"
                  f" echo x > /new 2>/dev/null || echo no-write")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.decode().split() == [str(uid), "container", "/proc/1", "/proc/2", "lo", "socket", "no-write"]

    before = snapshot(tree)
    began = box("tx", "begin", "--root", tree)
    assert began.returncode == 0, began.stderr
    tx = began.stdout.decode().strip()
    ran = box("tx", "run", "--tx", tx, "--", "sh", "-c",
              "echo out; echo err >&2; printf 'filed\\n' > case1/new.txt; rm case1/old.tmp; exit 7", input=b"")
    assert ran.returncode == 7, ran.stderr
    assert ran.stdout == b"out\n"
    assert ran.stderr.decode().splitlines()[:2] == [f"roscoe: tx {tx}", "err"]
    assert snapshot(tree) == before
    diff = box("tx", "diff", tx, "--json")
    assert diff.returncode == 0, diff.stderr
    assert [(c["path"], c["status"]) for c in json.loads(diff.stdout)["changes"]] == [
        ("case1/new.txt", "added"), ("case1/old.tmp", "deleted")]

    # What it may not do, from there.
    refused = {
        "--home": box("--home", served.home, "tx", "list"),
        "--config": box("--config", served.home / "config.toml", "tx", "list"),
        "approve": box("tx", "approve", tx, "--hash", json.loads(diff.stdout)["diff_hash"], "--by", "Me"),
        "audit": box("audit", "--json"),
        "writable": box("tx", "run", "--tx", tx, "--writable", tree.parent, "--", "true"),
        "other root": box("tx", "begin", "--root", "/usr"),
    }
    assert {k: v.returncode for k, v in refused.items()} == {
        "--home": 4, "--config": 4, "approve": 4, "audit": 4, "writable": 125, "other root": 4}
    assert error_of(refused["writable"]) == (
        f"roscoe-test (uid {uid}) may not let a run write outside its root (--writable) through the roscoe"
        " service (operators only)")
    assert error_of(refused["--config"]) == (
        f"roscoe-test (uid {uid}) may not name a config file or a state dir (--home, --config) through the"
        " roscoe service: the service's own are in force")
    assert error_of(refused["approve"]) == (
        f"roscoe-test (uid {uid}) may not tx approve through the roscoe service (roles: agent; see the config's"
        " [roles])")

    committed = box("tx", "commit", tx, "--yes", "--json")
    assert committed.returncode == 0, committed.stderr
    assert json.loads(committed.stdout)["state"] == "committed"
    assert (tree / "case1" / "new.txt").read_bytes() == b"filed\n"
    assert not (tree / "case1" / "old.tmp").exists()
    after = snapshot(tree)
    rollback = box("tx", "rollback", tx, "--yes")
    assert rollback.returncode == 4, rollback.stderr
    assert error_of(rollback) == (
        f"roscoe-test (uid {uid}) may not tx rollback through the roscoe service (roles: agent; see the config's"
        " [roles])")
    assert snapshot(tree) == after
    events = json.loads(served.operator()("audit", "--tx", tx, "--json").stdout)["events"]
    assert {(e["kind"], e["user"], e["uid"]) for e in events} >= {
        ("begin", "roscoe-test", uid), ("commit", "roscoe-test", uid)}


# -- 2. the approver -----------------------------------------------------------------------

APPROVER = "roscoe-approver"


@pytest.fixture(scope="module")
def approver_user() -> Iterator[str]:
    """A second unprivileged user, made here when missing (removed after, then)."""
    import pwd
    import subprocess

    try:
        pwd.getpwnam(APPROVER)
        made = False
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        APPROVER], check=True, capture_output=True)
        made = True
    try:
        yield APPROVER
    finally:
        if made:
            subprocess.run(["userdel", APPROVER], check=True, capture_output=True)


def test_an_approver_approves_through_the_service_and_a_rejection_holds(
    tmp_path: Path, tree: Path, unprivileged: UserRoscoe, approver_user: str,
) -> None:
    import pwd

    config = config_text(tree, approvers=f'"{approver_user}"', extra="[approval]\nwhen_deleting = true\n")
    with serving(tmp_path, config) as served:
        src = Path(unprivileged.env["PYTHONPATH"])
        agent, approver = served.agent(src), served.client_as(approver_user, src)
        agent_uid, approver_uid = agent.user.pw_uid, pwd.getpwnam(approver_user).pw_uid
        operator = served.operator()

        tx = agent.begin(tree)
        assert agent("tx", "run", "--tx", tx, "--", "sh", "-c", "rm case1/old.tmp").returncode == 0
        h = json.loads(agent("tx", "diff", tx, "--json").stdout)["diff_hash"]
        before = snapshot(tree)
        held = agent("tx", "commit", tx, "--yes")
        assert held.returncode == 4, held.stderr
        assert error_of(held) == (
            f"transaction {tx} needs an approval before it can be committed (deletes 1 path: case1/old.tmp"
            f" (when_deleting)); nothing was written. A person approves this exact diff with:"
            f" roscoe tx approve {tx} --hash {h}")
        mine = agent("tx", "approve", tx, "--hash", h, "--by", "Jane Partner")
        assert mine.returncode == 4
        assert error_of(mine) == (f"roscoe-test (uid {agent_uid}) may not tx approve through the roscoe service"
                                  " (roles: agent; see the config's [roles])")
        assert snapshot(tree) == before

        approved = approver("tx", "approve", tx, "--hash", h, "--by", "Jane Partner")
        assert approved.returncode == 0, approved.stderr
        [event] = [e for e in json.loads(operator("audit", "--tx", tx, "--json").stdout)["events"]
                   if e["kind"] == "approve"]
        assert (event["user"], event["uid"]) == (approver_user, approver_uid)
        assert (event["detail"]["approver"], event["detail"]["uid"], event["detail"]["os_user"]) == (
            "Jane Partner", approver_uid, approver_user)
        done = agent("tx", "commit", tx, "--yes", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "committed"
        assert not (tree / "case1" / "old.tmp").exists()

        second = agent.begin(tree)
        assert agent("tx", "run", "--tx", second, "--", "sh", "-c", "rm case1/notes.md").returncode == 0
        h2 = json.loads(agent("tx", "diff", second, "--json").stdout)["diff_hash"]
        rejected = approver("tx", "reject", second, "--by", "Jane Partner", "-m", "keep the notes")
        assert rejected.returncode == 0, rejected.stderr
        before = snapshot(tree)
        for _ in range(2):
            refused = agent("tx", "commit", second, "--yes")
            assert refused.returncode == 4, refused.stderr
            assert error_of(refused) == (
                f"transaction {second} cannot be committed: its diff {h2} was rejected by Jane Partner:"
                f' "keep the notes"; nothing was written; only a run that changes the diff lifts the rejection')
        assert agent("tx", "approve", second, "--hash", h2, "--by", "Jane Partner").returncode == 4
        assert snapshot(tree) == before
        [event] = [e for e in json.loads(operator("audit", "--tx", second, "--json").stdout)["events"]
                   if e["kind"] == "reject"]
        assert (event["user"], event["uid"], event["detail"]["uid"]) == (approver_user, approver_uid, approver_uid)
        assert json.loads(operator("tx", "show", second, "--json").stdout)["state"] == "open"


# -- 3. eight clients at once --------------------------------------------------------------

CLIENTS, EACH = 8, 50


def test_eight_clients_at_once_over_one_root_commit_whole_or_conflict(served: Served, tree: Path) -> None:
    """Eight clients, each a thread running the CLI (as root, through the
    service) 50 times over: begin, a run writing ``shared.txt`` (everyone's)
    and ``client-K.txt`` (its own), commit; a commit refused as a conflict
    (exit 3) is aborted. Every commit lands whole or exits 3; afterwards
    verify is clean, every transaction is committed or aborted with its run
    ended, and the tree holds the last committed writes. (About 1600 CLI
    calls: 83-97 s on a 2-core machine; 3.3 minutes before the service
    preloaded the typer app for its children.)"""
    import threading

    operator = served.operator()
    outcomes: dict[int, list[tuple[int, str, int]]] = {k: [] for k in range(CLIENTS)}
    failures: list[str] = []

    def client(k: int) -> None:
        try:
            for i in range(EACH):
                tx = operator.begin(tree)
                ran = operator("tx", "run", "--tx", tx, "--", "sh", "-c",
                               f"echo {k}-{i} > shared.txt && echo {i} > client-{k}.txt")
                assert ran.returncode == 0, ran.stderr
                done = operator("tx", "commit", tx, "--yes", "--json")
                assert done.returncode in (0, 3), done.stderr
                if done.returncode == 3:
                    assert operator("tx", "abort", tx).returncode == 0
                outcomes[k].append((i, tx, done.returncode))
        except BaseException as e:  # (reported by the main thread)
            failures.append(f"client {k}: {e!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sum(len(o) for o in outcomes.values()) == CLIENTS * EACH

    verified = operator("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = json.loads(operator("tx", "list", "--json").stdout)
    states = {t["tx"]: t["state"] for t in listed}
    expected = {tx: "committed" if code == 0 else "aborted" for o in outcomes.values() for _, tx, code in o}
    assert states == expected
    committed = sorted((t for t in listed if t["state"] == "committed"), key=lambda t: t["committed_ns"])
    assert committed, "no commit landed"
    writer = {tx: (k, i) for k, o in outcomes.items() for i, tx, _ in o}
    k, i = writer[committed[-1]["tx"]]
    assert (tree / "shared.txt").read_text() == f"{k}-{i}\n"
    for k, o in outcomes.items():
        landed = [i for i, _, code in o if code == 0]
        own = tree / f"client-{k}.txt"
        assert (own.read_text() if own.exists() else None) == (f"{landed[-1]}\n" if landed else None)
    from concurrent.futures import ThreadPoolExecutor

    def runs_of(tx: str) -> list[tuple[object, ...]]:
        runs = json.loads(operator("tx", "show", tx, "--json").stdout)["runs"]
        return [(r["exit_code"], r["interrupted"], r["ended_ns"] is not None) for r in runs]

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert {tx: runs for tx, runs in zip(states, pool.map(runs_of, states))} == {
            tx: [(0, False, True)] for tx in states}
    print(f"{len(committed)} committed, {len(states) - len(committed)} conflicts")


# -- 4. the service SIGKILLed in the middle of a commit -------------------------------------

def stopped_child(parent: int, timeout: float = 60) -> int:
    """The pid of a child of ``parent`` that has stopped (SIGSTOP: ROSCOE_FAULT_ACTION=stop)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) == parent and state == "T":
                return int(entry)
        time.sleep(0.05)
    raise AssertionError(f"no child of {parent} stopped in {timeout}s")


def test_the_service_killed_mid_commit_and_restarted_leaves_the_tree_all_old(served: Served, tree: Path) -> None:
    import subprocess
    import sys

    served.stop()
    served.start({"ROSCOE_FAULT": "apply#2", "ROSCOE_FAULT_ACTION": "stop"})  # (the service's own environment)
    operator = served.operator()
    tx = operator.begin(tree)
    script = ("rm case1/old.tmp && echo new > case1/new.txt && echo more >> case1/notes.md"
              " && mkdir case3 && echo x > case3/x.txt")
    assert operator("tx", "run", "--tx", tx, "--", "sh", "-c", script).returncode == 0
    before = snapshot(tree)
    commit = subprocess.Popen([sys.executable, "-m", "cli.main", "tx", "commit", tx, "--yes"], env=operator.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert served.proc is not None
    stopped_child(served.proc.pid)
    assert snapshot(tree) != before  # stopped in the middle of applying
    served.kill()
    out, err = commit.communicate(timeout=30)
    assert commit.returncode == 1, err
    assert err.decode().splitlines()[-1] == (
        f"roscoe: error: cannot reach the roscoe service at {served.socket}: it closed the connection without"
        " an answer (ROSCOE_SOCKET names another socket; empty: run locally)")

    served.start()  # recovery runs first
    assert snapshot(tree) == before
    verified = operator("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(operator("tx", "show", tx, "--json").stdout)["state"] == "open"
    done = operator("tx", "commit", tx, "--yes")  # and it commits whole, now
    assert done.returncode == 0, done.stderr
    assert not (tree / "case1" / "old.tmp").exists()
    assert (tree / "case3" / "x.txt").read_text() == "x\n"


# -- 5. roscoe mcp through the service ------------------------------------------------------

class McpClient:
    """``roscoe mcp`` as a child process, spoken to in JSON-RPC lines."""

    def __init__(self, argv: list[str], env: dict[str, str], user: int, group: int) -> None:
        import queue
        import subprocess
        import threading

        self.proc = subprocess.Popen(argv, env=env, cwd="/tmp", user=user, group=group, extra_groups=[],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.next_id = 0

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.put(line)

        threading.Thread(target=read, daemon=True).start()

    def send(self, message: dict[str, object]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(dict(message, jsonrpc="2.0")).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, object]) -> dict:  # type: ignore[type-arg]
        import queue

        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params})
        try:
            answer = json.loads(self.lines.get(timeout=120))
        except queue.Empty:
            raise AssertionError(f"no answer from roscoe mcp (exit: {self.proc.poll()})") from None
        assert answer["id"] == self.next_id and "error" not in answer, answer
        return answer["result"]

    def call(self, tool: str, **arguments: object) -> dict:  # type: ignore[type-arg]
        result = self.request("tools/call", {"name": tool, "arguments": arguments})
        assert not result.get("isError"), result
        return result["structuredContent"]

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=60)


def test_roscoe_mcp_as_the_agent_goes_through_the_service(
    served: Served, tree: Path, unprivileged: UserRoscoe,
) -> None:
    """The MCP server as roscoe-test, its tools' CLI a client of the service.
    (scripts/test.sh installs the mcp extra into roscoe-test's venv.)"""
    import subprocess

    from tests.support.system import TEST_VENV, missing

    agent = served.agent(Path(unprivileged.env["PYTHONPATH"]))
    python = str(TEST_VENV / "bin" / "python")
    env = dict(agent.env)
    probe = subprocess.run([python, "-c", "import mcp.server.lowlevel"], env=env, capture_output=True,
                           user=agent.user.pw_uid, group=agent.user.pw_gid, extra_groups=[])
    if probe.returncode != 0:
        missing(f"the mcp package in {TEST_VENV}", probe.stderr.decode())
    server = McpClient([python, "-m", "cli.main", "mcp"], env, agent.user.pw_uid, agent.user.pw_gid)
    try:
        init = server.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                             "clientInfo": {"name": "test_serve_attacks", "version": "1"}})
        assert init["serverInfo"]["name"] == "roscoe"
        server.send({"method": "notifications/initialized"})
        began = server.call("begin", root=str(tree))
        tx = began["tx"]
        assert (began["state"], began["root"], began["user"]) == ("open", str(tree), "roscoe-test")
        ran = server.call("run", tx=tx, argv=["sh", "-c", "echo hi; id -u; echo x > case1/new.txt"])
        assert (ran["stdout"], ran["exit_code"]) == ("hi\n0\n", 0)  # (the run's sandbox: root inside it)
        diff = server.call("diff", tx=tx)
        assert [(c["path"], c["status"]) for c in diff["changes"]] == [("case1/new.txt", "added")]
        assert not (tree / "case1" / "new.txt").exists()
    finally:
        assert server.close() == 0
    events = json.loads(served.operator()("audit", "--tx", tx, "--json").stdout)["events"]
    assert {(e["kind"], e["user"], e["uid"]) for e in events} == {
        (kind, "roscoe-test", agent.user.pw_uid) for kind in {e["kind"] for e in events}}
    assert {e["kind"] for e in events} >= {"begin", "run"}
