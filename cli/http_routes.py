"""The HTTP/JSON API of ``roscoe serve`` (cli.http_server): each endpoint is
a roscoe command line, built here from the path, the query and the JSON
body, and described in ``/openapi.json``. Standard library only.

A response's body is the command's ``--json`` object, or the CLI's error
object (``{"error": {...}}``); its status is 200 whenever the command gave
its result (whatever its exit code: ``tx wait`` that timed out, ``verify``
that found drift, a run whose command failed), else the error's exit code
mapped (``STATUS``); the exit code itself is the ``Roscoe-Exit-Code`` header.
"""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

from cli.mcp_tools import number, output_error  # noqa: F401 (output_error: cli.http_server's)
from cowfs.errors import ExitCode, error_json

STATUS = {ExitCode.USAGE: 400, ExitCode.CONFLICT: 409, ExitCode.REFUSED: 403, ExitCode.NO_SUCH_TX: 404}
EXIT_HEADER = "Roscoe-Exit-Code"
TX_ID = "[0-9A-Za-z][0-9A-Za-z_.-]*"


def status_of(code: int) -> int:
    """The HTTP status of an error object with exit code ``code``."""
    return STATUS.get(code, 500)  # type: ignore[call-overload]


class BadBody(Exception):
    """A request whose body or query the endpoint cannot take (400)."""


class Route(namedtuple("_Route", "method path summary body query build run")):
    """One endpoint: ``build(tx, body, query)`` is its command line and the
    stdin it reads; ``body`` its JSON Schema (None: it takes no body);
    ``query`` its query parameters (name: schema); ``run``: ``tx run``, whose
    answer is the run's (``run_result``)."""

    __slots__ = ()
    method: str
    path: str
    summary: str
    body: dict[str, Any] | None
    query: dict[str, dict[str, Any]]
    build: Any
    run: bool


def _obj(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING = {"type": "string"}
SECONDS = {"type": "number", "minimum": 0}
FLAG = {"type": "boolean", "default": False}
QUERY_FLAG = {"type": "string", "enum": ["0", "1", "true", "false"]}


def _valued(*pairs: tuple[str, object]) -> list[str]:
    """``--option=VALUE`` for each given value (one word: a value may start with -)."""
    return [f"{option}={value}" for option, value in pairs if value is not None]


def _on(query: dict[str, str], name: str) -> bool:
    return query.get(name) in ("1", "true")


def _begin(tx: None, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    return ["tx", "begin", "--json", *_valued(("--root", body.get("root")), ("--message", body.get("message")),
                                              ("--target", body.get("target")))], None


def _run(tx: str, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    argv = ["tx", "run", "--tx", tx, "--network", "on" if body.get("network", True) else "off"]
    if body.get("timeout") is not None:
        argv += ["--timeout", number(body["timeout"])]
    for key, value in (body.get("env") or {}).items():
        if not key or "=" in key:
            raise BadBody(f"env: {key!r} is not a variable name")
        argv.append(f"--env={key}={value}")
    return [*argv, "--", *body["argv"]], None


def _plan(tx: str, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    dry = ["--dry-run"] if _on(query, "dry_run") else []
    return ["tx", "plan", "--tx", tx, "--json", *dry, "-"], json.dumps(body).encode()


def _simple(*words: str, tail: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """A command on a transaction taking no body: ``words ID tail --json``."""
    def build(tx: str, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
        return [*words, tx, *tail, "--json"], None
    return build


def _list(tx: None, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    return ["tx", "list", "--json", *_valued(("--state", query.get("state")))], None


def _approve(tx: str, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    return ["tx", "approve", tx, *_valued(("--hash", body["diff_hash"]), ("--by", body.get("by"))), "--json"], None


def _reject(tx: str, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    return ["tx", "reject", tx, *_valued(("--by", body["by"]), ("--message", body.get("reason"))), "--json"], None


def _wait(tx: str, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    limit = [] if body.get("timeout") is None else ["--timeout", number(body["timeout"])]
    return ["tx", "wait", tx, *limit, "--json"], None


def _rollback(tx: str, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    flags = [f for f, key in (("--force", "force"), ("--dry-run", "dry_run")) if body.get(key)]
    return ["tx", "rollback", tx, "--yes", *flags, "--json"], None


def _fixed(*argv: str):  # type: ignore[no-untyped-def]
    def build(tx: None, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
        return list(argv), None
    return build


def _verify(tx: None, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    return ["verify", "--json", *(["--integrity"] if _on(query, "integrity") else [])], None


def _audit(tx: None, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    return ["audit", "--json", *_valued(("--tx", query.get("tx")), ("--since", query.get("since")))], None


def _gc(tx: None, body: dict[str, Any], query: dict[str, str]) -> tuple[list[str], bytes | None]:
    return ["gc", "--keep-days", number(body["keep_days"]), "--json"], None


EMPTY = _obj({})
ROUTES = (
    Route("POST", "/v1/tx", "Open a transaction over a root (`roscoe tx begin --json`).", _obj({
        "root": dict(STRING, description="The live tree to stage (a root the config names)."),
        "message": dict(STRING, description="What the transaction is for."),
        "target": dict(STRING, description="Commit through the GCS API to gs://BUCKET/PREFIX."),
    }), {}, _begin, False),
    Route("GET", "/v1/tx", "The transactions (`roscoe tx list --json`).", None,
          {"state": {"type": "string", "enum": ["open", "committing", "committed", "aborted"]}}, _list, False),
    Route("GET", "/v1/tx/{tx}", "One transaction (`roscoe tx show ID --json`).", None, {},
          _simple("tx", "show"), False),
    Route("POST", "/v1/tx/{tx}/run", "Run a command in the transaction's overlay (`roscoe tx run`): its "
          "exit_code, stdout, stderr and the run's report.", _obj({
              "argv": {"type": "array", "items": STRING, "minItems": 1,
                       "description": "The command and its arguments (no shell)."},
              "network": {"type": "boolean", "default": True},
              "timeout": SECONDS,
              "env": {"type": "object", "additionalProperties": STRING},
          }, "argv"), {}, _run, True),
    Route("POST", "/v1/tx/{tx}/plan", "Stage a plan (roscoe-plan(5); the body) into the transaction "
          "(`roscoe tx plan --json`); with dry_run, the diff it would have.",
          {"type": "object", "description": "The plan: {\"version\": 1, \"ops\": [...]}."},
          {"dry_run": QUERY_FLAG}, _plan, False),
    Route("GET", "/v1/tx/{tx}/diff", "The hashed diff (`roscoe tx diff ID --json`).", None, {},
          _simple("tx", "diff"), False),
    Route("POST", "/v1/tx/{tx}/approve", "Approve the diff reviewed (`roscoe tx approve --json`; approvers).",
          _obj({"diff_hash": STRING, "by": STRING}, "diff_hash"), {}, _approve, False),
    Route("POST", "/v1/tx/{tx}/reject", "Reject it (`roscoe tx reject --json`; approvers).",
          _obj({"by": STRING, "reason": STRING}, "by"), {}, _reject, False),
    Route("POST", "/v1/tx/{tx}/wait", "Wait until it is approved, rejected, committed or aborted "
          "(`roscoe tx wait --json`).", _obj({"timeout": SECONDS}), {}, _wait, False),
    Route("POST", "/v1/tx/{tx}/commit", "Commit it (`roscoe tx commit --yes --json`).", EMPTY, {},
          _simple("tx", "commit", tail=("--yes",)), False),
    Route("POST", "/v1/tx/{tx}/abort", "Discard it (`roscoe tx abort --json`).", EMPTY, {},
          _simple("tx", "abort"), False),
    Route("POST", "/v1/tx/{tx}/rollback", "Roll back a committed transaction (`roscoe tx rollback --yes --json`; "
          "operators, or anyone with dry_run).", _obj({"force": FLAG, "dry_run": FLAG}), {}, _rollback, False),
    Route("GET", "/v1/log", "The committed transactions (`roscoe tx log --json`).", None, {},
          _fixed("tx", "log", "--json"), False),
    Route("POST", "/v1/recover", "Recover interrupted commits (`roscoe recover --json`; operators).", EMPTY, {},
          _fixed("recover", "--json"), False),
    Route("GET", "/v1/verify", "Check the journal, blobs, audit trail and live trees (`roscoe verify --json`; "
          "operators).", None, {"integrity": QUERY_FLAG}, _verify, False),
    Route("GET", "/v1/audit", "The audit trail (`roscoe audit --json`; operators).", None,
          {"tx": STRING, "since": STRING}, _audit, False),
    Route("POST", "/v1/gc", "Drop images no rollback can need (`roscoe gc --json`; operators).",
          _obj({"keep_days": {"type": "number", "minimum": 0}}, "keep_days"), {}, _gc, False),
)
OPENAPI_PATH = "/openapi.json"


def checked(schema: dict[str, Any] | None, value: Any, where: str = "body") -> None:
    """Raise ``BadBody`` unless ``value`` fits ``schema`` (the few JSON Schema
    words the routes use: type, properties, required, additionalProperties,
    items, minItems, minimum, enum)."""
    if schema is None:
        return
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool}
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise BadBody(f"{where}: expected a number")
        if "minimum" in schema and value < schema["minimum"]:
            raise BadBody(f"{where}: at least {schema['minimum']}")
    elif kind is not None and not isinstance(value, types[kind]):
        raise BadBody(f"{where}: expected {'an' if kind[0] in 'ao' else 'a'} {kind}")
    if "enum" in schema and value not in schema["enum"]:
        raise BadBody(f"{where}: one of {', '.join(map(str, schema['enum']))}")
    if kind == "array":
        if len(value) < schema.get("minItems", 0):
            raise BadBody(f"{where}: at least {schema['minItems']} items")
        for i, item in enumerate(value):
            checked(schema.get("items"), item, f"{where}[{i}]")
    if kind == "object":
        for name in schema.get("required", ()):
            if name not in value:
                raise BadBody(f"{where}: {name} is required")
        properties, extra = schema.get("properties"), schema.get("additionalProperties", True)
        for name, item in value.items():
            if properties is not None and name in properties:
                checked(properties[name], item, f"{where}.{name}")
            elif extra is False:
                raise BadBody(f"{where}: no such field {name!r}")
            elif isinstance(extra, dict):
                checked(extra, item, f"{where}.{name}")


def command_of(route: Route, tx: str | None, body: Any, query: dict[str, str]) -> tuple[list[str], bytes | None]:
    """The command line and stdin of a request to ``route``; ``BadBody`` when it cannot be one."""
    for name, value in query.items():
        if name not in route.query:
            raise BadBody(f"no such query parameter {name!r}")
        checked(route.query[name], value, name)
    if route.body is None:
        if body is not None:
            raise BadBody(f"{route.method} {route.path} takes no body")
        body = {}
    elif body is None:
        body = {}
    checked(route.body, body)
    return route.build(tx, body, query)


def usage(message: str) -> dict[str, Any]:
    return error_json(ExitCode.USAGE, "usage", message, [])


ERROR_SCHEMA = _obj({"error": _obj({
    "code": {"type": "integer"}, "kind": STRING, "message": STRING, "paths": {"type": "array", "items": STRING},
}, "code", "kind", "message", "paths")}, "error")
RUN_RESULT = _obj({"exit_code": {"type": "integer"}, "stdout": STRING, "stderr": STRING,
                   "report": {"type": "object"}}, "exit_code", "stdout", "stderr", "report")


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route (and of itself)."""
    paths: dict[str, Any] = {}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    exit_header = {EXIT_HEADER: {"schema": {"type": "integer"}, "description": "The command's exit code."}}
    for route in ROUTES:
        parameters: list[dict[str, Any]] = []
        if "{tx}" in route.path:
            parameters.append({"name": "tx", "in": "path", "required": True,
                               "schema": {"type": "string", "pattern": f"^{TX_ID}$"},
                               "description": "Transaction id (or a unique prefix of 4+ chars)."})
        parameters += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in route.query.items()]
        result = RUN_RESULT if route.run else {"type": "object", "description": "The command's --json object."}
        operation: dict[str, Any] = {
            "summary": route.summary, "parameters": parameters,
            "responses": {
                "200": {"description": "The command's result", "headers": exit_header,
                        "content": {"application/json": {"schema": result}}},
                **{str(s): dict(error, description=f"exit code {int(c)}") for c, s in STATUS.items()},
                "401": dict(error, description="no or a wrong bearer token (TCP only)"),
                "500": dict(error, description="any other exit code"),
            },
        }
        if route.body is not None:
            operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": route.body}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths[OPENAPI_PATH] = {"get": {"summary": "This description.", "responses": {
        "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "roscoe", "version": "1",
                 "description": "The roscoe service over HTTP: each endpoint runs a roscoe command for the caller "
                                "(peer credentials on the unix socket, the bearer token's agent over TCP)."},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
