"""``roscoe serve``'s HTTP/JSON API, a real service over real sockets: the
agent (the roscoe-test user) on the HTTP unix socket is known from the
kernel as on the main socket; the loopback TCP listener takes only the
bearer token, whose bearer is an agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service import Served, config_text, http, serving
from tests.support.system import REPO, lookup_test_user
from tests.support.trees import make_tree, snapshot

TOKEN = "s3cret-token"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "root")


@pytest.fixture
def served(tmp_path: Path, tree: Path) -> Iterator[Served]:
    token = tmp_path / "http.token"
    token.write_text(f"  {TOKEN}\n")
    os.chmod(token, 0o600)
    config = config_text(tree).replace("[serve]\n", f'[serve]\nhttp_token_file = "{token}"\n')
    with serving(tmp_path, config, ("--http-socket", "{run}/http.sock", "--http", "127.0.0.1:0")) as service:
        yield service


def http_socket(served: Served) -> Path:
    return served.socket.parent / "http.sock"


def tcp(served: Served) -> str:
    [address] = re.findall(r"HTTP on (127\.0\.0\.1:\d+) \(bearer token\)", served.log.read_text())
    return address


def agent_uid() -> int:
    return lookup_test_user().pw_uid


def test_the_agent_loop_over_http(served: Served, tree: Path) -> None:
    sock, uid = http_socket(served), agent_uid()
    before = snapshot(tree)
    begun = http(sock, "POST", "/v1/tx", {"root": str(tree), "message": "over http"}, user=uid)
    assert (begun["status"], begun["headers"]["Roscoe-Exit-Code"]) == (200, "0"), begun
    tx = begun["body"]["tx"]
    assert (begun["body"]["state"], begun["body"]["message"], begun["body"]["user"]) == ("open", "over http",
                                                                                         "roscoe-test")
    ran = http(sock, "POST", f"/v1/tx/{tx}/run", {
        "argv": ["sh", "-c", "echo out $CASE [$ROSCOE_HOME]; echo err >&2; printf 'filed\\n' > case1/new.txt; exit 7"],
        "env": {"CASE": "c1"}, "network": False, "timeout": 60}, user=uid)
    assert (ran["status"], ran["headers"]["Roscoe-Exit-Code"]) == (200, "7"), ran
    assert ran["body"]["exit_code"] == 7
    assert ran["body"]["stdout"] == "out c1 []\n"  # (the body's env; never the service's)
    assert ran["body"]["stderr"].splitlines()[:2] == [f"roscoe: tx {tx}", "err"]
    assert (ran["body"]["report"]["tx"], ran["body"]["report"]["exit_code"]) == (tx, 7)
    assert snapshot(tree) == before
    diff = http(sock, "GET", f"/v1/tx/{tx}/diff", user=uid)
    assert diff["status"] == 200, diff
    assert [(c["path"], c["status"]) for c in diff["body"]["changes"]] == [("case1/new.txt", "added")]
    assert diff["body"]["diff_hash"] == ran["body"]["report"]["diff_hash"]
    shown = http(sock, "GET", f"/v1/tx/{tx}", user=uid)
    assert (shown["status"], shown["body"]["tx"], shown["body"]["state"]) == (200, tx, "open")
    listed = http(sock, "GET", "/v1/tx?state=open", user=uid)
    assert [t["tx"] for t in listed["body"]] == [tx]
    done = http(sock, "POST", f"/v1/tx/{tx}/commit", user=uid)
    assert (done["status"], done["body"]["state"]) == (200, "committed"), done
    assert (tree / "case1" / "new.txt").read_bytes() == b"filed\n"
    again = http(sock, "POST", f"/v1/tx/{tx}/commit", user=uid)
    assert again["status"] == 500, again  # (exit 1, as the CLI's: not an open transaction)
    assert again["headers"]["Roscoe-Exit-Code"] == str(again["body"]["error"]["code"]) == "1"
    events = json.loads(served.operator()("audit", "--tx", tx, "--json").stdout)["events"]
    assert {(e["uid"], e["user"]) for e in events} == {(uid, "roscoe-test")}


def test_a_plan_and_its_dry_run_over_http(served: Served, tree: Path) -> None:
    sock, uid = http_socket(served), agent_uid()
    tx = http(sock, "POST", "/v1/tx", {"root": str(tree)}, user=uid)["body"]["tx"]
    plan = {"version": 1, "ops": [{"op": "write", "path": "planned.txt", "content": "p\n"}]}
    dry = http(sock, "POST", f"/v1/tx/{tx}/plan?dry_run=1", plan, user=uid)
    assert dry["status"] == 200, dry
    assert [(c["path"], c["status"]) for c in dry["body"]["changes"]] == [("planned.txt", "added")]
    assert http(sock, "GET", f"/v1/tx/{tx}/diff", user=uid)["body"]["changes"] == []
    staged = http(sock, "POST", f"/v1/tx/{tx}/plan", plan, user=uid)
    assert (staged["status"], staged["body"]["tx"]) == (200, tx), staged
    assert [c["path"] for c in http(sock, "GET", f"/v1/tx/{tx}/diff", user=uid)["body"]["changes"]] == ["planned.txt"]
    aborted = http(sock, "POST", f"/v1/tx/{tx}/abort", user=uid)
    assert (aborted["status"], aborted["body"]["state"]) == (200, "aborted")


def test_roles_hold_over_http(served: Served, tree: Path) -> None:
    sock, uid = http_socket(served), agent_uid()
    gc = http(sock, "POST", "/v1/gc", {"keep_days": 0}, user=uid)
    assert (gc["status"], gc["headers"]["Roscoe-Exit-Code"]) == (403, "4")
    assert gc["body"] == {"error": {
        "code": 4, "kind": "refused", "paths": [],
        "message": f"roscoe-test (uid {uid}) may not gc through the roscoe service (roles: agent; see the config's"
                   " [roles])"}}
    tx = http(sock, "POST", "/v1/tx", {"root": str(tree)}, user=uid)["body"]["tx"]
    approve = http(sock, "POST", f"/v1/tx/{tx}/approve", {"diff_hash": "0" * 32}, user=uid)
    assert (approve["status"], approve["body"]["error"]["kind"]) == (403, "refused")
    elsewhere = http(sock, "POST", "/v1/tx", {"root": "/etc"}, user=uid)
    assert elsewhere["status"] == 403
    # root on the same socket is an operator
    assert http(sock, "POST", "/v1/gc", {"keep_days": 0})["body"] == {"dropped": [], "removed_blobs": 0,
                                                                       "freed_bytes": 0}
    missing = http(sock, "GET", "/v1/tx/abcd1234", user=uid)
    assert (missing["status"], missing["body"]["error"]["code"]) == (404, 5)


def test_bad_requests_get_a_clear_error_and_the_service_serves_on(served: Served, tree: Path) -> None:
    sock, uid = http_socket(served), agent_uid()
    garbage = http(sock, "POST", "/v1/tx", raw="{not json", user=uid)
    assert (garbage["status"], garbage["headers"]["Roscoe-Exit-Code"]) == (400, "2")
    assert garbage["body"]["error"]["kind"] == "usage"
    assert garbage["body"]["error"]["message"].startswith("the body is not JSON: ")
    wrong = http(sock, "POST", "/v1/gc", {"keep_days": "soon"}, user=uid)
    assert (wrong["status"], wrong["body"]["error"]["message"]) == (400, "POST /v1/gc: body.keep_days: expected a number")
    extra = http(sock, "POST", "/v1/tx", {"root": str(tree), "home": "/tmp"}, user=uid)
    assert (extra["status"], extra["body"]["error"]["message"]) == (400, "POST /v1/tx: body: no such field 'home'")
    nowhere = http(sock, "GET", "/v1/nothing", user=uid)
    assert (nowhere["status"], nowhere["body"]["error"]["code"]) == (404, 2)
    big = http(sock, "POST", "/v1/tx", raw=json.dumps({"message": "x" * (2 << 20)}), user=uid)
    assert (big["status"], big["body"]["error"]["kind"]) == (413, "usage")
    assert http(sock, "GET", "/v1/tx", user=uid)["status"] == 200
    assert served.proc is not None and served.proc.poll() is None


def test_openapi_describes_every_route(served: Served) -> None:
    from cli.http_server import app

    described = http(http_socket(served), "GET", "/openapi.json", user=agent_uid())
    assert described["status"] == 200
    document = described["body"]
    assert document["openapi"] == "3.1.0"
    routes = {(r.method.lower(), r.resource.canonical) for r in app(None, None).router.routes()  # type: ignore[arg-type]
              if r.method != "HEAD"}
    paths = {(method, path) for path, methods in document["paths"].items() for method in methods}
    assert paths == routes
    assert len(routes) == 18


def test_tcp_needs_the_bearer_token_and_its_bearer_is_an_agent(served: Served, tree: Path) -> None:
    where = tcp(served)
    for auth in ("", "Bearer wrong", f"Basic {TOKEN}"):
        refused = http(where, "GET", "/v1/tx", auth=auth)
        assert (refused["status"], refused["headers"]["WWW-Authenticate"]) == (401, "Bearer"), refused
        assert refused["body"]["error"]["kind"] == "refused"
    bearer = f"Bearer {TOKEN}"
    begun = http(where, "POST", "/v1/tx", {"root": str(tree)}, auth=bearer)
    assert (begun["status"], begun["body"]["user"]) == (200, "http"), begun
    assert http(where, "GET", "/openapi.json", auth=bearer)["status"] == 200
    gc = http(where, "POST", "/v1/gc", {"keep_days": 0}, auth=bearer)
    assert (gc["status"], gc["body"]["error"]["message"]) == (
        403, "http (uid -1) may not gc through the roscoe service (roles: agent; see the config's [roles])")


def test_a_non_loopback_http_host_is_refused_at_start(tmp_path: Path) -> None:
    env = dict(os.environ, ROSCOE_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), ROSCOE_SOCKET="")
    for address in ("0.0.0.0:8421", "192.0.2.1:8421", "example.com:80", "127.0.0.1"):
        done = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--socket", str(tmp_path / "s.sock"),
                               "--http", address, "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        error = json.loads(done.stdout)["error"]
        assert (error["kind"], error["message"]) == ("usage", f"--http {address}: expected a loopback HOST:PORT such"
                                                     " as 127.0.0.1:8421 (other hosts are refused: use --http-socket,"
                                                     " or a proxy)")
        assert not (tmp_path / "s.sock").exists()


def test_the_default_http_socket_only_beside_the_default_socket() -> None:
    from cli.serve import http_socket_of

    assert http_socket_of("/run/roscoe/roscoe.sock", "/run/roscoe/http.sock") == "/run/roscoe/http.sock"
    assert http_socket_of("/tmp/x/roscoe.sock", "/run/roscoe/http.sock") is None
    assert http_socket_of("/tmp/x/roscoe.sock", "/tmp/x/http.sock") == "/tmp/x/http.sock"
