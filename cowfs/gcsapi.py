"""The one place roscoe speaks the GCS JSON API itself: the requests gcsfs
cannot make (anything with ``ifGenerationMatch`` or ``sourceGeneration``,
``rewriteTo``, resumable upload sessions, object GETs and listings that must
cost one round trip and keep every field), with their settings, retries and
test fault hook.

gcsfs supplies what it does well through its public interface: the
credentials (``fs.credentials.apply``: Google's default credentials, or none
on an emulator), the endpoint (``fs.base``: ``STORAGE_EMULATOR_HOST`` as gcsfs
reads it, else Google's), the event loop (``fs.loop``) and the closing of an
HTTP session (``GCSFileSystem.close_session``). The HTTP session itself is
ours: gcsfs's is created by a private call. Why not gcsfs's object calls,
measured with gcsfs 2026.10.1 against fake-gcs-server: ``_info`` costs three
requests (present or absent), ``_find`` lists twice when nothing matches and
fills gcsfs's listing cache (stale generations are conflicts missed), and
every one of them retries on its own schedule outside the budget and the fault
hook below.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Mapping
from typing import NamedTuple

from cowfs.errors import GcsError, GcsUnreachable, NoCredentials, NoSuchBucket, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MiB = 1 << 20
QUANTUM = 256 * 1024  # a resumable session takes chunks in multiples of this
TRANSIENT = (429, 500, 502, 503, 504)


class GcsSettings(NamedTuple):
    """How roscoe talks to GCS. ``fault`` is the test hook ``KIND@N`` (see
    ``fault``); ``chunk`` is a resumable upload's chunk, a multiple of 256 KiB;
    files over ``resumable_over`` bytes go up in a resumable session."""

    concurrency: int = 32
    retries: int = 4  # attempts per call (per chunk in a resumable upload)
    timeout: float = 60.0
    resumable_over: int = 8 * MiB
    chunk: int = 8 * MiB
    fault: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GcsSettings:
        """The settings named by ``ROSCOE_GCS_*`` in ``env``; defaults elsewhere."""
        d = cls()
        try:
            s = cls(
                concurrency=max(1, int(env.get("ROSCOE_GCS_CONCURRENCY", d.concurrency))),
                retries=max(1, int(env.get("ROSCOE_GCS_RETRIES", d.retries))),
                timeout=float(env.get("ROSCOE_GCS_TIMEOUT", d.timeout)),
                resumable_over=max(0, int(env.get("ROSCOE_GCS_RESUMABLE_OVER", d.resumable_over))),
                chunk=int(env.get("ROSCOE_GCS_CHUNK", d.chunk)),
                fault=env.get("ROSCOE_GCS_FAULT", d.fault),
            )
        except ValueError as e:
            raise UsageError(detail=f"ROSCOE_GCS_*: {e}") from e
        if s.chunk <= 0 or s.chunk % QUANTUM:
            raise UsageError(detail=f"ROSCOE_GCS_CHUNK={s.chunk}: must be a positive multiple of {QUANTUM}")
        return s


_COUNTS: dict[str, int] = {}


def fault(spec: str, kind: str) -> None:
    """Test hook: the spec ``KIND@N`` makes the Nth API call of that kind in
    the process (``write``: an upload, copy or delete of a tree object;
    ``request``: any other call) and every call of any kind after it fail as an unreachable network would."""
    name, _, nth = spec.partition("@")
    if not nth:
        return
    count = _COUNTS.get(spec, 0)
    if count < int(nth) and name == kind:
        count = _COUNTS[spec] = count + 1
    if count >= int(nth):
        raise ConnectionError(f"injected network failure ({spec})")


class Reply(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes


class JsonApi:
    """Raw requests to one bucket's API endpoint, with gcsfs's credentials."""

    def __init__(self, fs: Any, settings: GcsSettings, url: str, bucket: str) -> None:
        self.fs, self.settings, self.url, self.bucket = fs, settings, url, bucket
        self._session: Any = None

    @property
    def location(self) -> str:
        """``http[s]://host`` of the API, as gcsfs resolves it."""
        return str(self.fs.base).removesuffix("/").removesuffix("/storage/v1")

    def object_url(self, key: str = "", *, upload: bool = False) -> str:
        from urllib.parse import quote

        root = f"{self.location}/{'upload/' if upload else ''}storage/v1/b/{quote(self.bucket, safe='')}/o"
        return f"{root}/{quote(key, safe='')}" if key else root

    async def session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession()
            weakref.finalize(self, type(self.fs).close_session, self.fs.loop, self._session)
        return self._session

    async def send(
        self, method: str, url: str, *, params: Mapping[str, Any] | None = None, data: Any = None,
        headers: Mapping[str, str] | None = None, kind: str = "request",
    ) -> Reply:
        """One attempt, no retries; network failures raise (aiohttp's or OSError)."""
        import aiohttp

        fault(self.settings.fault, kind)
        from urllib.parse import urlsplit

        out = dict(headers or {})
        if urlsplit(url).netloc == urlsplit(self.location).netloc:  # (never to a session URL elsewhere)
            self.fs.credentials.apply(out)
        session = await self.session()
        async with session.request(
            method, url, params={k: str(v) for k, v in (params or {}).items()}, data=data, headers=out,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout), allow_redirects=False,
        ) as r:
            return Reply(r.status, r.headers, await r.read())

    async def request(
        self, method: str, url: str, *, params: Mapping[str, Any] | None = None, data: Any = None,
        headers: Mapping[str, str] | None = None, ok: tuple[int, ...] = (), kind: str = "request",
    ) -> Reply:
        """``send`` with bounded retries of network failures and transient
        statuses. A status under 300 or in ``ok`` is returned; others raise."""
        delay = 0.2
        for attempt in range(self.settings.retries):
            last = attempt + 1 == self.settings.retries
            try:
                reply = await self.send(method, url, params=params, data=data, headers=headers, kind=kind)
            except Exception as e:
                if not _network(e):
                    raise
                if last:
                    raise self.unreachable(e) from e
            else:
                if reply.status < 300 or reply.status in ok:
                    return reply
                if last or reply.status not in TRANSIENT:
                    raise self.error(reply.status, reply.body)
            await asyncio.sleep(delay)
            delay *= 2.5
        raise AssertionError("unreachable")

    def unreachable(self, e: BaseException) -> GcsUnreachable:
        return GcsUnreachable(url=self.url, endpoint=self.location, reason=str(e) or type(e).__name__)

    def error(self, status: int, body: bytes) -> GcsError:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace")[:200]
        if status in (401, 403):
            return NoCredentials(url=self.url, reason=f"HTTP {status}: {message}")
        if status == 404:
            return NoSuchBucket(url=self.url, bucket=self.bucket)
        return GcsError(url=self.url, reason=f"HTTP {status}: {message}")

    # -- resumable sessions --------------------------------------------------------

    @property
    def emulated(self) -> bool:
        """Whether the endpoint is an emulator's (``STORAGE_EMULATOR_HOST``)."""
        from urllib.parse import urlsplit

        return not (urlsplit(self.location).hostname or "").endswith(".googleapis.com")

    async def resumable(
        self, resource: dict[str, Any], params: Mapping[str, Any], path: str, size: int, *, kind: str,
    ) -> Reply:
        """Upload the ``size`` bytes of the file ``path`` in a resumable session
        started with ``resource`` and ``params`` (preconditions included), one
        chunk of ``settings.chunk`` in memory at a time. A dropped connection or
        a 5xx on a chunk resumes from what the session holds, up to ``retries``
        attempts per chunk. Returns the final reply: 200/201 with the object,
        or 412 when a precondition failed (at the start or at the end)."""
        init = await self.request(
            "POST", self.object_url(upload=True), params={"uploadType": "resumable", **params},
            data=json.dumps(resource).encode(), ok=(412,), kind=kind,
            headers={"Content-Type": "application/json; charset=UTF-8", "X-Upload-Content-Length": str(size),
                     "X-Upload-Content-Type": resource.get("contentType", "application/octet-stream")})
        if init.status == 412:
            return init
        session_url = init.headers.get("Location")
        if not session_url:
            raise GcsError(url=self.url, reason=f"resumable upload of {resource['name']}: no session URL")
        offset, tries = 0, 0
        with open(path, "rb") as f:
            while True:
                f.seek(offset)
                data = f.read(min(self.settings.chunk, size - offset))
                end = offset + len(data)
                total = str(size) if end == size else "*"
                crange = f"bytes {offset}-{end - 1}/{total}" if data else f"bytes */{size}"
                try:
                    reply: Reply | None = await self.send(
                        "PUT", session_url, data=data, kind=kind,
                        headers={"Content-Range": crange, "Content-Type": resource.get("contentType", "")})
                except Exception as e:
                    if not _network(e):
                        raise
                    reply, failure = None, e
                else:
                    failure = None
                if reply is not None and reply.status in (200, 201, 412):
                    return reply
                if reply is not None and reply.status == 308 and _committed(reply.headers) > offset:
                    offset, tries = _committed(reply.headers), 0
                    continue
                if reply is not None and reply.status not in (308, *TRANSIENT):
                    raise self.error(reply.status, reply.body)
                tries += 1  # a failure, or a 308 that took none of the chunk
                if tries >= self.settings.retries:
                    raise (self.unreachable(failure) if failure else self.error(reply.status, reply.body))  # type: ignore[union-attr]
                await asyncio.sleep(0.2 * 2.5 ** (tries - 1))
                if not self.emulated:
                    # Google may have kept part of the lost chunk: ask the session.
                    status = await self.request("PUT", session_url, headers={"Content-Range": f"bytes */{size}"},
                                                ok=(308, 412), kind=kind)
                    if status.status != 308:
                        return status
                    offset = _committed(status.headers)
                # On an emulator the chunk is sent again from the last offset the
                # session confirmed: fake-gcs-server keeps only whole chunks and
                # finalizes the object on a status query (fsouza/fake-gcs-server#1149).


def _committed(headers: Mapping[str, str]) -> int:
    """The bytes a session holds, from a 308's ``Range: bytes=0-N`` (none: 0)."""
    r = headers.get("Range", "")
    return int(r.rpartition("-")[2]) + 1 if r else 0


def _network(e: BaseException) -> bool:
    """Whether ``e`` is a network failure (worth another attempt)."""
    import aiohttp

    return isinstance(e, (aiohttp.ClientError, OSError, asyncio.TimeoutError))
