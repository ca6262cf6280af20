"""``roscoe serve`` under attack and under load, real processes over a real
unix socket: an agent in a container of its own (only the socket and the
CLI in its view), the approver's role, eight clients at once over one root,
the service SIGKILLed in the middle of a commit, and ``roscoe mcp`` as the
agent's front end to the service."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.roscoe import UserRoscoe
from tests.support.service import Contained, Served, config_text
from tests.support.trees import make_tree, snapshot


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "root")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    run = Path(tempfile.mkdtemp(prefix="roscoe-run-", dir="/tmp"))  # (reachable by the agent, as /run/roscoe is)
    os.chmod(run, 0o755)
    try:
        yield run
    finally:
        shutil.rmtree(run, ignore_errors=True)


def service(tmp_path: Path, run_dir: Path, config: str) -> Served:
    return Served(tmp_path / "home", run_dir / "roscoe.sock", config, tmp_path / "serve.log")


@pytest.fixture
def served(tmp_path: Path, run_dir: Path, tree: Path) -> Iterator[Served]:
    running = service(tmp_path, run_dir, config_text(tree)).start()
    try:
        yield running
    finally:
        running.stop()


def error_of(done) -> str:  # type: ignore[no-untyped-def]
    lines = done.stderr.decode().splitlines()
    assert lines and lines[-1].startswith("roscoe: error: "), done.stderr
    return lines[-1].removeprefix("roscoe: error: ")


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
    tmp_path: Path, run_dir: Path, tree: Path, unprivileged: UserRoscoe, approver_user: str,
) -> None:
    import pwd

    config = config_text(tree, approvers=f'"{approver_user}"', extra="[approval]\nwhen_deleting = true\n")
    served = service(tmp_path, run_dir, config).start()
    try:
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
    finally:
        served.stop()
