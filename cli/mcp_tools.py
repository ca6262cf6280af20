"""The tools of ``roscoe mcp`` (cli.mcp): their descriptions and input
schemas, and their work, each the roscoe command of the same name run as a
child process (this Python, ``-m cli.main``, the same environment), so a
tool does exactly what the command does and talks to the roscoe service
whenever the CLI would. A tool's result is the command's ``--json`` object;
a failure, the CLI's error object (``{"error": {...}}``). Standard library
only: anyio (the mcp package's) is imported when a tool runs."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from cowfs.errors import ExitCode, error_json

TX = {"type": "string", "description": "Transaction id (or a unique prefix of 4+ chars)."}
TIMEOUT = {"type": "number", "minimum": 0}


def _schema(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


ONLY_TX = _schema({"tx": TX}, "tx")
# name: (description, input schema, annotations: read only, destructive, idempotent)
TOOLS: dict[str, tuple[str, dict[str, Any], tuple[bool, bool, bool]]] = {
    "begin": (
        "Open a transaction over a root (a live directory tree); nothing is staged until its first run. "
        "Returns the transaction as `roscoe tx begin --json` prints it (its id is `tx`).",
        _schema({
            "root": {"type": "string", "description": "The live tree to stage (default: $ROSCOE_ROOT)."},
            "message": {"type": "string", "description": "What the transaction is for."},
            "target": {"type": "string", "description": "Commit through the GCS API to gs://BUCKET/PREFIX."},
        }),
        (False, False, False),
    ),
    "run": (
        "Run a command inside the transaction's staged copy-on-write overlay: it sees the live tree and its "
        "earlier staged changes, and what it writes is staged, not committed. Returns {report, exit_code, "
        "stdout, stderr}: the report `roscoe tx run --report FILE` writes (tx, argv, exit_code, timed_out, "
        "diff_hash, summary, ...), the command's exit status, and its standard output and error (stderr "
        "also holds roscoe's own `roscoe:` lines).",
        _schema({
            "tx": TX,
            "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                     "description": "The command and its arguments (no shell: use [\"sh\", \"-c\", \"...\"])."},
            "cwd": {"type": "string",
                    "description": "Working directory, absolute or relative to the root (default: the root)."},
            "network": {"type": "boolean", "default": True,
                        "description": "Give the run the host's network (true) or only a private loopback."},
            "timeout": dict(TIMEOUT, description="Kill every process of the run after this many seconds "
                                                 "(exit_code 124)."),
        }, "tx", "argv"),
        (False, False, False),
    ),
    "plan": (
        "Stage a plan of file operations (mkdir, move, copy, rename, delete, write; see roscoe-plan(5)) into "
        "a transaction, or into a new one over `root` without `tx`; checked whole before any op runs. Returns "
        "`roscoe tx plan --json`'s object (tx, root, ops, began, backend, diff_hash, ...), or with dry_run the "
        "diff the transaction would have, staging nothing.",
        _schema({
            "tx": TX,
            "root": {"type": "string", "description": "The root of a new transaction (without tx)."},
            "plan": {"type": "object", "description": "The plan: {\"version\": 1, \"ops\": [...]}."},
            "dry_run": {"type": "boolean", "default": False, "description": "Stage nothing; return the diff."},
        }, "plan"),
        (False, False, False),
    ),
    "diff": (
        "The hashed diff of the transaction against the live tree, as `roscoe tx diff ID --json` prints it "
        "(tx, root, diff_hash, changes, summary, unsupported).",
        ONLY_TX,
        (True, False, True),
    ),
    "show": (
        "State, root, backend, runs, diff summary, policy verdict and approvals of the transaction, as "
        "`roscoe tx show ID --json` prints them.",
        ONLY_TX,
        (True, False, True),
    ),
    "commit": (
        "Commit the transaction's staged changes to the live tree, atomically. Returns the committed "
        "transaction (`roscoe tx commit ID --yes --json`); a refusal (conflict, policy, approval needed, "
        "rejected) is an error whose kind says which, with nothing written.",
        ONLY_TX,
        (False, True, False),
    ),
    "wait": (
        "Block until the transaction is approved, rejected, committed or aborted, or `timeout` seconds pass. "
        "Returns `roscoe tx wait ID --json`'s object: outcome (approved, rejected, committed, aborted, "
        "timeout), state, diff_hash, by, reason, exit_code, waited_ms.",
        _schema({"tx": TX, "timeout": dict(TIMEOUT, description="Give up after this many seconds.")}, "tx"),
        (True, False, True),
    ),
    "abort": (
        "Discard the transaction's staged changes; the live tree is not touched. Returns the aborted "
        "transaction (`roscoe tx abort ID --json`).",
        ONLY_TX,
        (False, True, True),
    ),
}


def roscoe_command(settings) -> list[str]:  # type: ignore[no-untyped-def]
    """The roscoe CLI, with the global options this server was given that the
    environment does not already say (so a client of the service names no
    state dir or config it was not given)."""
    from journal.settings import Settings

    command = [sys.executable, "-m", "cli.main"]
    implied = Settings.from_env(os.environ)
    if settings.home != implied.home:
        command += ["--home", settings.home]
    for config in settings.configs:
        if config not in implied.configs:
            command += ["--config", config]
    if settings.debug and not implied.debug:
        command.append("--debug")
    return command


def number(value: float) -> str:
    """A number of seconds as the CLI reads it (no exponent, no trailing .0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def command_line(name: str, args: dict[str, Any]) -> tuple[list[str], bytes | None]:
    """The roscoe arguments of tool ``name`` (all but run), and its stdin."""
    if name == "begin":
        argv = ["tx", "begin", "--json"]
        for key, option in (("root", "--root"), ("message", "--message"), ("target", "--target")):
            if args.get(key) is not None:
                argv += [option, args[key]]
        return argv, None
    if name == "plan":
        argv = ["tx", "plan", "--json"]
        for key, option in (("tx", "--tx"), ("root", "--root")):
            if args.get(key) is not None:
                argv += [option, args[key]]
        if args.get("dry_run"):
            argv.append("--dry-run")
        return argv + ["-"], json.dumps(args["plan"]).encode()
    tail = {"commit": ["--yes"], "wait": [] if args.get("timeout") is None else ["--timeout", number(args["timeout"])]}
    return ["tx", name, args["tx"], *tail.get(name, []), "--json"], None


def usage_error(message: str) -> dict[str, Any]:
    return error_json(ExitCode.USAGE, "usage", message, [])


def output_error(code: int, stderr: bytes) -> dict[str, Any]:
    """The error object of a command that printed none (tx run takes no
    --json): its exit status and its last ``roscoe: error:`` line."""
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.startswith("roscoe: error: ")]
    message = lines[-1].removeprefix("roscoe: error: ") if lines else f"roscoe exited {code} with no result"
    return error_json(code or ExitCode.ERROR, "error", message, [])


class Tools:
    """The tools' work: each call runs the CLI and reads its JSON."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.roots: dict[str, str] = {}  # tx id -> root: where a run starts (a root never changes)

    async def cli(self, argv: list[str], stdin: bytes | None = None, cwd: str | None = None):  # type: ignore[no-untyped-def]
        import subprocess

        import anyio

        return await anyio.run_process(
            [*self.command, *argv], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
            check=False, cwd=cwd, env=dict(os.environ),
        )

    async def json_of(self, argv: list[str], stdin: bytes | None = None) -> dict[str, Any]:
        """The command's --json object (or its error object)."""
        done = await self.cli(argv, stdin)
        try:
            result = json.loads(done.stdout)
        except ValueError:
            return output_error(done.returncode, done.stderr)
        if not isinstance(result, dict):
            return output_error(done.returncode, done.stderr)
        return result

    async def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "run":
            return await self.run(args)
        result = await self.json_of(*command_line(name, args))
        if name == "begin" and "tx" in result and "root" in result:
            self.roots[result["tx"]] = result["root"]
        return result

    async def root_of(self, tx: str) -> dict[str, Any] | str:
        """The transaction's root, or the error object of ``tx show``."""
        if tx in self.roots:
            return self.roots[tx]
        shown = await self.json_of(["tx", "show", tx, "--json"])
        if "error" in shown:
            return shown
        self.roots[tx] = self.roots[shown["tx"]] = shown["root"]
        return shown["root"]

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        root = await self.root_of(args["tx"])
        if isinstance(root, dict):
            return root
        cwd = os.path.join(root, args.get("cwd") or "")
        if not os.path.isdir(cwd):  # a root on the service's side: it finds its own way
            cwd = None
        with tempfile.TemporaryDirectory(prefix="roscoe-mcp-") as scratch:
            report = os.path.join(scratch, "report.json")
            argv = ["tx", "run", "--tx", args["tx"], "--report", report,
                    "--network", "on" if args.get("network", True) else "off"]
            if args.get("timeout") is not None:
                argv += ["--timeout", number(args["timeout"])]
            done = await self.cli([*argv, "--", *args["argv"]], cwd=cwd)
            try:
                with open(report, "rb") as f:
                    written = json.load(f)
            except (OSError, ValueError):
                shown = await self.json_of(["tx", "show", args["tx"], "--json"])
                return shown if "error" in shown else output_error(done.returncode, done.stderr)
        return {"report": written, "exit_code": done.returncode,
                "stdout": done.stdout.decode(errors="replace"), "stderr": done.stderr.decode(errors="replace")}
