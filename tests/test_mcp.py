"""``roscoe mcp``: a real server process spoken to over stdio in JSON-RPC
lines, as an MCP client does. Its tools' results are the CLI's --json
objects, compared with what the CLI itself prints."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.roscoe import Roscoe
from tests.support.system import REPO, missing

TOOLS = {"begin", "run", "plan", "diff", "show", "commit", "wait", "abort"}
PROTOCOL = "2025-11-25"


class McpServer:
    """``roscoe mcp`` as a child process; one JSON-RPC message a line each way."""

    def __init__(self, env: dict[str, str], *globals_: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *globals_, "mcp"], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_line(json.dumps(dict(message, jsonrpc="2.0")).encode())

    def receive(self, timeout: float = 120) -> dict[str, Any]:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"no answer from roscoe mcp in {timeout}s (exit: {self.proc.poll()})") from None

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, **({"params": params} if params is not None else {})})
        answer = self.receive()
        assert answer["id"] == self.next_id, answer
        assert "error" not in answer, answer
        return answer["result"]

    def call(self, tool: str, **arguments: Any) -> tuple[bool, Any]:
        """(isError, the result object) of a tools/call; its text is the same JSON."""
        result = self.request("tools/call", {"name": tool, "arguments": arguments})
        [text] = result["content"]
        assert text["type"] == "text"
        assert json.loads(text["text"]) == result["structuredContent"]
        return result.get("isError", False), result["structuredContent"]

    def close(self) -> tuple[int, bytes]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=60)
        return code, self.proc.stderr.read()


def start(env: dict[str, str], *globals_: str) -> McpServer:
    """A server past the handshake."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        missing("the mcp package", "pip install '.[mcp]'")
    started = McpServer(env, *globals_)
    result = started.request("initialize", {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "test_mcp", "version": "1"},
    })
    assert result["serverInfo"]["name"] == "roscoe"
    assert result["protocolVersion"] == PROTOCOL
    assert "tools" in result["capabilities"]
    started.send({"method": "notifications/initialized"})
    return started


@pytest.fixture
def server(roscoe: Roscoe):  # type: ignore[no-untyped-def]
    started = start(roscoe.env)
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait()


def test_tools_list_names_the_agent_tools_with_their_schemas(server: McpServer) -> None:
    tools = {t["name"]: t for t in server.request("tools/list")["tools"]}
    assert set(tools) == TOOLS
    required = {name: t["inputSchema"]["required"] for name, t in tools.items()}
    assert required == {"begin": [], "run": ["tx", "argv"], "plan": ["plan"], "diff": ["tx"], "show": ["tx"],
                        "commit": ["tx"], "wait": ["tx"], "abort": ["tx"]}
    for tool in tools.values():
        assert tool["inputSchema"]["type"] == "object"
        assert tool["inputSchema"]["additionalProperties"] is False
        assert tool["description"]
    assert tools["run"]["inputSchema"]["properties"]["argv"] == {
        "type": "array", "items": {"type": "string"}, "minItems": 1,
        "description": 'The command and its arguments (no shell: use ["sh", "-c", "..."]).'}
    assert set(tools["run"]["inputSchema"]["properties"]) == {"tx", "argv", "cwd", "network", "timeout"}
    assert set(tools["begin"]["inputSchema"]["properties"]) == {"root", "message", "target"}
    assert set(tools["plan"]["inputSchema"]["properties"]) == {"tx", "root", "plan", "dry_run"}
    assert set(tools["wait"]["inputSchema"]["properties"]) == {"tx", "timeout"}


def test_the_agent_loop_through_the_tools(server: McpServer, roscoe: Roscoe, root: Path) -> None:
    failed, began = server.call("begin", root=str(root), message="via mcp")
    assert not failed
    tx = began["tx"]
    assert (began["state"], began["root"], began["message"]) == ("open", str(root), "via mcp")

    argv = ["sh", "-c", "echo hi; echo x > case1/new.txt"]
    failed, ran = server.call("run", tx=tx, argv=argv)
    assert not failed
    assert set(ran) == {"report", "exit_code", "stdout", "stderr"}
    assert (ran["stdout"], ran["exit_code"]) == ("hi\n", 0)
    assert ran["stderr"].startswith(f"roscoe: tx {tx}\n")
    report = ran["report"]
    assert (report["tx"], report["root"], report["argv"], report["exit_code"], report["timed_out"]) == (
        tx, str(root), argv, 0, False)
    assert report["cwd"] == str(root)
    assert not (root / "case1" / "new.txt").exists()

    failed, diff = server.call("diff", tx=tx)
    assert not failed
    cli = roscoe("tx", "diff", tx, "--json")
    assert cli.returncode == 0
    assert diff == json.loads(cli.stdout)
    assert [(c["path"], c["status"]) for c in diff["changes"]] == [("case1/new.txt", "added")]
    assert report["diff_hash"] == diff["diff_hash"]

    failed, shown = server.call("show", tx=tx[:6])
    assert not failed
    assert shown == json.loads(roscoe("tx", "show", tx, "--json").stdout)

    failed, committed = server.call("commit", tx=tx)
    assert not failed
    assert (committed["tx"], committed["state"], committed["diff_hash"]) == (tx, "committed", diff["diff_hash"])
    assert (root / "case1" / "new.txt").read_text() == "x\n"

    failed, waited = server.call("wait", tx=tx, timeout=0)
    assert not failed
    assert (waited["tx"], waited["outcome"], waited["exit_code"]) == (tx, "committed", 0)

    assert server.close()[0] == 0


def test_plan_and_abort(server: McpServer, root: Path) -> None:
    plan = {"version": 1, "ops": [{"op": "write", "path": "case2/plan.txt", "content": "planned\n"}]}
    failed, dry = server.call("plan", root=str(root), plan=plan, dry_run=True)
    assert not failed
    assert (dry["tx"], [(c["path"], c["status"]) for c in dry["changes"]]) == (None, [("case2/plan.txt", "added")])
    failed, staged = server.call("plan", root=str(root), plan=plan)
    assert not failed
    assert (staged["began"], staged["ops"], staged["diff_hash"]) == (True, 1, dry["diff_hash"])
    failed, aborted = server.call("abort", tx=staged["tx"])
    assert not failed
    assert (aborted["tx"], aborted["state"]) == (staged["tx"], "aborted")
    assert not (root / "case2" / "plan.txt").exists()


def test_a_failure_is_the_cli_error_object(server: McpServer, roscoe: Roscoe, root: Path) -> None:
    failed, error = server.call("diff", tx="abcdef12")
    assert failed
    assert error == {"error": {"code": 5, "kind": "no_such_tx", "message": "no such transaction: abcdef12",
                               "paths": []}}
    cli = roscoe("tx", "diff", "abcdef12", "--json")
    assert (cli.returncode, json.loads(cli.stdout)) == (5, error)
    # run takes no --json: its failure is still the error object of the transaction it names
    assert server.call("run", tx="abcdef12", argv=["true"]) == (True, error)
    # arguments that do not match the tool's schema: a usage error, and nothing runs
    assert server.call("run", tx="abcdef12", argv=[]) == (True, {"error": {
        "code": 2, "kind": "usage", "message": "run: argv: [] should be non-empty", "paths": []}})
    tx = roscoe.begin(root)
    failed, refused = server.call("commit", tx=tx, unknown=1)
    assert (failed, refused["error"]["kind"], refused["error"]["code"]) == (True, "usage", 2)


def test_a_garbage_line_gets_an_error_and_the_server_reads_on(server: McpServer) -> None:
    # The SDK alone drops a line it cannot parse without a word; roscoe mcp
    # answers it as JSON-RPC says (id null) and warns on stderr.
    server.send_line(b"this is not json")
    assert server.receive() == {"jsonrpc": "2.0", "id": None,
                                "error": {"code": -32700, "message": "Parse error: not JSON"}}
    server.send_line(b'{"not": "a message"}')
    assert server.receive() == {"jsonrpc": "2.0", "id": None,
                                "error": {"code": -32600, "message": "Invalid Request: not a JSON-RPC message"}}
    assert {t["name"] for t in server.request("tools/list")["tools"]} == TOOLS
    code, stderr = server.close()
    assert code == 0
    assert stderr.decode().splitlines() == [
        "roscoe: warning: mcp: ignored a line on stdin: Parse error: not JSON",
        "roscoe: warning: mcp: ignored a line on stdin: Invalid Request: not a JSON-RPC message",
    ]


def test_the_global_options_reach_the_tools(roscoe: Roscoe, home: Path, root: Path) -> None:
    env = {k: v for k, v in roscoe.env.items() if k != "ROSCOE_HOME"}
    server = start(env, "--home", str(home))
    try:
        failed, began = server.call("begin", root=str(root))
        assert not failed
        assert server.close()[0] == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    shown = roscoe("tx", "show", began["tx"], "--json")
    assert (shown.returncode, json.loads(shown.stdout)["state"]) == (0, "open")


def test_other_commands_do_not_load_the_mcp_stack(roscoe: Roscoe) -> None:
    code = ("import json, sys\nfrom cli.main import main\n"
            "assert main(['tx', 'list', '--json']) == 0\nassert main(['--help']) == 0\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=REPO, env=roscoe.env)
    modules = {m.split(".")[0] for m in json.loads(done.stdout.splitlines()[-1])}
    assert modules & {"mcp", "mcp_types", "anyio", "pydantic", "jsonschema", "starlette"} == set()
