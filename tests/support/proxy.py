"""A TCP proxy in front of fake-gcs-server: what a real network adds and
what it takes away, on 127.0.0.1 (this kernel has no netem).

- ``delay``: seconds added to every round trip (half on the way up, half on
  the way down, each chunk forwarded when its time comes, in order: latency,
  not a bandwidth cap);
- counters: the bytes that went up (client to server) and down, so a test or
  a benchmark can say how many object bytes went through the machine;
- ``drop_after(n, *more)``: cut every open connection once ``n`` more bytes
  have gone up (once; then again after each of ``more``), as a dropped link
  would.

It runs its own event loop in a thread; ``url`` is what a client is pointed at.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Proxy:
    def __init__(self, upstream_port: int, *, delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.delay = delay
        self.up = 0
        self.down = 0
        self.port = 0
        self._drop_at: int | None = None
        self._drops_next: list[int] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="roscoe-test-proxy")
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Zero the byte counters."""
        self.up = self.down = 0

    def drop_after(self, n: int, *more: int) -> None:
        """Cut every connection once ``n`` more bytes have gone up (one time),
        then once again after each of ``more`` bytes more."""
        self._drop_at = self.up + n
        self._drops_next = list(more)

    # -- the loop --------------------------------------------------------------------

    def start(self) -> Proxy:
        self._thread.start()
        self._ready.wait(10)
        assert self.port, "the proxy did not start"
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer, "up", writer),
                             self._pipe(up_reader, writer, "down", up_writer), return_exceptions=True)
        self._writers.difference_update((writer, up_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str,
                    other: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if way == "up":
                    self.up += len(data)
                    if self._drop_at is not None and self.up >= self._drop_at:
                        self._drop_at = self.up + self._drops_next.pop(0) if self._drops_next else None
                        for w in list(self._writers):
                            w.transport.abort()
                        break
                else:
                    self.down += len(data)
                queue.put_nowait((time.monotonic() + self.delay / 2, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((0.0, b""))
            try:
                await sender
            except (ConnectionError, OSError):
                pass
            for w in (writer, other):
                try:
                    w.close()
                except (ConnectionError, OSError, RuntimeError):
                    pass


@contextmanager
def proxied(upstream_port: int, *, delay: float = 0.0) -> Iterator[Proxy]:
    proxy = Proxy(upstream_port, delay=delay).start()
    try:
        yield proxy
    finally:
        proxy.stop()
