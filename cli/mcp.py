"""``roscoe mcp``: a Model Context Protocol server on stdio, built on the
official ``mcp`` package, which only this module imports, and only when the
command runs. Its tools (cli.mcp_tools) are the agent's loop: begin, run,
plan, diff, show, commit, wait and abort, each the roscoe command of that
name; a result is the command's ``--json`` object as text and as structured
content, a failure the CLI's error object with ``isError``."""

from __future__ import annotations

import json

from cli.errors import say
from cli.mcp_tools import TOOLS, Tools, roscoe_command, usage_error


def serve(settings) -> int:  # type: ignore[no-untyped-def]
    """Serve the tools on stdin and stdout until the client closes stdin."""
    import anyio
    import jsonschema
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server

    tools = Tools(roscoe_command(settings))
    listed = [
        types.Tool(name=name, description=description, input_schema=schema,
                   annotations=types.ToolAnnotations(read_only_hint=ro, destructive_hint=destructive,
                                                     idempotent_hint=idempotent, open_world_hint=name == "run"))
        for name, (description, schema, (ro, destructive, idempotent)) in TOOLS.items()
    ]

    async def list_tools(ctx, params) -> types.ListToolsResult:  # type: ignore[no-untyped-def]
        return types.ListToolsResult(tools=listed)

    async def call_tool(ctx, params) -> types.CallToolResult:  # type: ignore[no-untyped-def]
        args = params.arguments or {}
        if params.name not in TOOLS:
            result = usage_error(f"no tool {params.name!r}: the tools are {', '.join(TOOLS)}")
        else:
            try:
                jsonschema.validate(args, TOOLS[params.name][1])
            except jsonschema.ValidationError as e:
                where = "/".join(map(str, e.absolute_path))
                result = usage_error(f"{params.name}: {where + ': ' if where else ''}{e.message}")
            else:
                result = await tools.call(params.name, args)
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(result, indent=2, ensure_ascii=False))],
            structured_content=result, is_error="error" in result,
        )

    server = Server("roscoe", version=_version(), on_list_tools=list_tools, on_call_tool=call_tool,
                    instructions="Transactions over a live directory tree: begin, run commands or stage a plan "
                                 "in its copy-on-write overlay, review the diff, then commit or abort.")

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(AnswersGarbage(read_stream, write_stream), write_stream,
                             server.create_initialization_options())

    anyio.run(main)
    return 0


class AnswersGarbage:
    """The transport's read stream, but a line that is not a JSON-RPC message
    gets the JSON-RPC error response (id null: -32700 when it is not JSON,
    -32600 when it is JSON but no message) and a warning on stderr, where the
    SDK would drop it without a word; the server reads on."""

    def __init__(self, inner, write) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.write = inner, write

    @property
    def last_context(self):  # type: ignore[no-untyped-def]
        return getattr(self.inner, "last_context", None)

    async def receive(self):  # type: ignore[no-untyped-def]
        import mcp_types as types
        from mcp.shared.message import SessionMessage

        while True:
            item = await self.inner.receive()
            if not isinstance(item, Exception):
                return item
            kinds = {e.get("type") for e in getattr(item, "errors", lambda: [])()}
            code, what = ((types.PARSE_ERROR, "Parse error: not JSON") if "json_invalid" in kinds
                          else (types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC message"))
            say(f"warning: mcp: ignored a line on stdin: {what}")
            await self.write.send(SessionMessage(types.JSONRPCError(
                jsonrpc="2.0", id=None, error=types.ErrorData(code=code, message=what))))

    def __aiter__(self):  # type: ignore[no-untyped-def]
        return self

    async def __anext__(self):  # type: ignore[no-untyped-def]
        import anyio

        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self):  # type: ignore[no-untyped-def]
        return self

    async def __aexit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        await self.aclose()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("roscoe")
    except PackageNotFoundError:
        return "0"
