"""The HTTP/JSON side of ``roscoe serve`` (aiohttp), in its own process,
forked by the service at start: it answers on the sockets the service bound
(``--http-socket``, whose callers are known from the kernel, SO_PEERCRED,
as on the main socket; ``--http HOST:PORT``, loopback only, whose every
request must carry the bearer token), and has each request's command run
by the launcher (cli.launcher), never by itself. The endpoints, their
command lines and ``/openapi.json``: cli.http_routes. Only ``roscoe serve``
imports this module (aiohttp is nobody else's cost).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import struct
from typing import Any

from aiohttp import web

from cli import http_routes as api
from cli.launcher import MAX_REQUEST

MAX_BODY = 1 << 20


def serve(channel: socket.socket, sockets: list[socket.socket], token: str | None) -> None:
    """Answer on ``sockets`` until killed; commands go to the launcher on ``channel``."""
    asyncio.run(_serve(channel, sockets, token))


async def _serve(channel: socket.socket, sockets: list[socket.socket], token: str | None) -> None:
    runner = web.AppRunner(app(channel, token), handler_cancellation=True, access_log=None)
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    await asyncio.Event().wait()


def answer(body: Any, code: int, status: int | None = None) -> web.Response:
    """A JSON response: the command's exit code in its header, the status
    200 unless ``body`` is an error object (then its code's)."""
    if status is None:
        status = api.status_of(code) if isinstance(body, dict) and "error" in body else 200
    return web.Response(text=json.dumps(body, indent=2) + "\n", status=status, content_type="application/json",
                        headers={api.EXIT_HEADER: str(code)})


def app(channel: socket.socket, token: str | None) -> web.Application:
    @web.middleware
    async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
        caller = _caller(request, token)
        if caller is None:
            body = api.error_json(4, "refused", "this listener needs Authorization: Bearer TOKEN (the config's"
                                                " [serve] http_token_file)", [])
            response = answer(body, 4, 401)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        request["caller"] = caller
        try:
            return await handler(request)
        except web.HTTPException as e:  # no such route or method, a body too large
            return answer(api.usage(f"{request.method} {request.path}: {e.reason}"), 2, e.status)

    application = web.Application(middlewares=[errors_as_json], client_max_size=MAX_BODY)
    for route in api.ROUTES:
        application.router.add_route(route.method, route.path.replace("{tx}", "{tx:" + api.TX_ID + "}"),
                                     _handler(route, channel))
    described = api.openapi()

    async def openapi(request: web.Request) -> web.Response:
        return answer(described, 0)

    application.router.add_get(api.OPENAPI_PATH, openapi)
    return application


def _caller(request: web.Request, token: str | None) -> dict[str, Any] | None:
    """Who asks: ``{"peer": [pid, uid, gid]}`` on a unix socket (from the
    kernel), ``{"bearer": True}`` over TCP with the right token; None: a TCP
    request without it."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return {"peer": list(struct.unpack("3i", creds))}
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return {"bearer": True}
    return None


def _handler(route: api.Route, channel: socket.socket):  # type: ignore[no-untyped-def]
    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError as e:
            return answer(api.usage(f"the body is not JSON: {e}"), 2)
        try:
            argv, stdin = api.command_of(route, request.match_info.get("tx"), body, dict(request.query))
        except api.BadBody as e:
            return answer(api.usage(f"{route.method} {route.path}: {e}"), 2)
        code, out, err, error, report = await execute(channel, request["caller"], argv, stdin, route.run)
        if route.run:
            if report:
                return answer({"exit_code": code, "stdout": out.decode(errors="replace"),
                               "stderr": err.decode(errors="replace"), "report": json.loads(report)}, code)
            return answer({"error": error} if error else api.output_error(code, err), code)
        try:
            result = json.loads(out)  # (an object, or a list: tx list's, tx log's)
        except ValueError:
            result = {"error": error} if error else api.output_error(code, err)
        return answer(result, code)

    return handle


async def execute(channel: socket.socket, caller: dict[str, Any], argv: list[str], stdin: bytes | None,
                  run: bool) -> tuple[int, bytes, bytes, dict[str, Any] | None, bytes]:
    """Have the launcher run ``argv`` for ``caller``: its exit code, stdout,
    stderr, error object (None: it raised none) and report (``tx run``'s)."""
    loop = asyncio.get_running_loop()
    request = json.dumps({"argv": argv, **caller}).encode()
    if len(request) > MAX_REQUEST:
        return 2, b"", b"", api.usage(f"a command line of {len(request)} bytes, more than {MAX_REQUEST}")["error"], b""
    import array

    theirs: list[int] = []  # the child's: closed here once sent
    ours: list[int] = []  # closed here at the end, unless a reader took them
    mine, other = socket.socketpair()
    try:
        if stdin:  # (a file, not a pipe: nothing to feed while the command runs)
            theirs.append(os.memfd_create("roscoe-stdin"))
            os.write(theirs[0], stdin)
            os.lseek(theirs[0], 0, os.SEEK_SET)
        else:
            theirs.append(os.open(os.devnull, os.O_RDONLY))
        for _ in range(2):
            r, w = os.pipe()
            ours.append(r)
            theirs.append(w)
        report = os.memfd_create("roscoe-report") if run else os.open(os.devnull, os.O_RDWR)
        theirs.append(report)
        channel.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     array.array("i", [*theirs, other.fileno()]))])
        other.close()
        for fd in theirs[:3]:
            os.close(fd)
        theirs[:3] = []
        out_r, err_r = ours
        ours.clear()
        out, err, reply = await asyncio.gather(_read_all(loop, out_r), _read_all(loop, err_r), _answer(mine))
        data = os.pread(report, 1 << 24, 0) if run else b""
    finally:
        other.close()
        mine.close()
        for fd in theirs + ours:
            os.close(fd)
    if reply is None:
        return 1, out, err, api.output_error(1, b"roscoe: error: the command's process ended without an answer")[
            "error"], b""
    return int(reply["exit"]), out, err, reply.get("error"), data


async def _read_all(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    reader = asyncio.StreamReader(limit=MAX_BODY)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    try:
        return await reader.read()
    finally:
        transport.close()


async def _answer(conn: socket.socket) -> dict[str, Any] | None:
    """The launcher child's answer frame; None when it closed first."""
    conn.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=conn)
    try:
        head = await reader.readexactly(4)
        (size,) = struct.unpack("!I", head)
        return json.loads(await reader.readexactly(size))  # type: ignore[no-any-return]
    except (asyncio.IncompleteReadError, ValueError):
        return None
    finally:
        writer.close()
