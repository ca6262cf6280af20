"""The GCS target: a root whose commits go to ``gs://BUCKET/PREFIX`` through
the JSON API (``cowfs.gcsapi``: gcsfs's credentials, endpoint and event loop,
our own requests), while runs keep reading the tree through its mount
(gcsfuse in production, rclone in tests).

How the tree maps to objects, the way gcsfuse lays it out:

- a file ``a/b.txt`` is the object ``PREFIX/a/b.txt``: its bytes, a content
  type, and its mtime in the metadata keys ``gcsfuse_mtime`` (what gcsfuse
  reads) and ``mtime`` (what rclone reads), both RFC 3339 with nanoseconds;
- a symlink is an empty object with the metadata key ``gcsfuse_symlink_target``
  (rclone shows it as an empty file);
- a directory is the placeholder object ``PREFIX/a/`` (what gcsfuse's mkdir
  makes; without one a directory exists only implicitly, through the objects
  below it). An added directory gets a placeholder; a deleted one loses its
  placeholder if it had one, and its children are deleted one by one (the
  diff lists them); a directory's mode change is nothing to a bucket;
- permission bits and owners are not stored: a bucket cannot keep them.

Every write and delete is conditional on the generation the caller saw
(``ifGenerationMatch``, 0: must not exist); a failed precondition is a
``PreconditionFailed``. gcsfs is imported on first use only (it costs ~1 s):
never on the path of a local root. ``STORAGE_EMULATOR_HOST`` points it at an
emulator, where roscoe connects anonymously.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import quote

from cowfs.errors import GcsError, NoCredentials, NoSuchBucket, UsageError
from cowfs.gcsapi import GcsSettings, JsonApi, fault

__all__ = [
    "DEFAULT_TYPE", "MTIME_KEYS", "SYMLINK_KEY", "GcsSettings", "GcsTarget", "PreconditionFailed",
    "connect", "md5_b64", "md5_file", "parse_rfc3339", "parse_url", "rfc3339", "same_object", "state_of",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

URL = re.compile(r"gs://([a-z0-9][-a-z0-9_.]{1,221}[a-z0-9])(?:/(.*))?")
SYMLINK_KEY = "gcsfuse_symlink_target"
MTIME_KEYS = ("gcsfuse_mtime", "mtime")
DEFAULT_TYPE = "application/octet-stream"
LIST_OVER = 8  # keys in one directory from which one listing beats a GET each


class PreconditionFailed(Exception):
    """An object was not at the generation a conditional request named."""

    def __init__(self, key: str, expected: int) -> None:
        super().__init__(f"{key} is no longer at generation {expected}")
        self.key, self.expected = key, expected


def parse_url(url: str) -> tuple[str, str]:
    """``gs://BUCKET[/PREFIX]`` as (bucket, prefix without slashes at either end)."""
    m = URL.fullmatch(url.rstrip("/") if url.count("/") > 2 else url)
    if m is None:
        raise UsageError(detail=f"target {url!r}: expected a URL gs://BUCKET[/PREFIX]")
    return m.group(1), (m.group(2) or "").strip("/")


def rfc3339(ns: int) -> str:
    """An mtime as gcsfuse writes it (Go's RFC3339Nano, UTC, no trailing zeros)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def md5_file(path: str) -> str:
    """md5_b64 of a file's bytes, read a block at a time."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def state_of(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """What roscoe keeps of an object resource: enough to restore it exactly and
    to recognise it again (generation, md5, content type, metadata)."""
    if obj is None:
        return None
    metadata = dict(obj.get("metadata") or {})
    name = obj["name"]
    kind = "dir" if name.endswith("/") else "symlink" if SYMLINK_KEY in metadata else "file"
    return {
        "kind": kind, "generation": int(obj["generation"]), "md5": obj.get("md5Hash"),
        "size": int(obj.get("size", 0)), "content_type": obj.get("contentType") or DEFAULT_TYPE,
        "metadata": metadata,
    }


def same_object(current: dict[str, Any] | None, wanted: dict[str, Any] | None) -> bool:
    """Whether ``current`` (a state_of) already holds ``wanted``'s bytes and metadata."""
    if current is None or wanted is None:
        return current is wanted
    return (current.get("md5"), current.get("content_type"), current.get("metadata") or {}) == (
        wanted.get("md5"), wanted.get("content_type"), wanted.get("metadata") or {})


class GcsTarget:
    """One ``gs://BUCKET/PREFIX`` target, talked to through ``cowfs.gcsapi``."""

    def __init__(self, url: str, settings: GcsSettings | None = None) -> None:
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.settings = settings if settings is not None else GcsSettings.from_env(os.environ)
        self._fs: Any = None
        self._api: JsonApi | None = None

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    @property
    def retries(self) -> int:
        return self.settings.retries

    @property
    def timeout(self) -> float:
        return self.settings.timeout

    # -- connection ---------------------------------------------------------------

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = connect(self.url)
        return self._fs

    @property
    def api(self) -> JsonApi:
        if self._api is None:
            self._api = JsonApi(self.fs, self.settings, self.url, self.bucket)
        return self._api

    @property
    def endpoint(self) -> str:
        return self.api.location

    def key(self, rel: str, *, dir: bool = False) -> str:
        name = f"{self.prefix}/{rel}" if self.prefix else rel
        return name + "/" if dir else name

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` in gcsfs's event loop and return its result."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, lambda: coro)

    async def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, data: bytes | None = None,
        headers: dict[str, str] | None = None, ok404: bool = False, kind: str = "request",
    ) -> tuple[int, bytes]:
        """One API call (``path``: a URL, or relative to ``/storage/v1/``) with
        bounded retries of transient failures. Returns (status, body); 412 is
        returned (the caller raises PreconditionFailed), 404 is returned when
        ``ok404``; other errors raise."""
        url = path if path.startswith("http") else f"{self.api.location}/storage/v1/{path}"
        reply = await self.api.request(method, url, params=params, data=data, headers=headers,
                                       ok=(412, 404) if ok404 else (412,), kind=kind)
        return reply.status, reply.body

    def _error(self, status: int, body: bytes) -> GcsError:
        return self.api.error(status, body)

    def check(self) -> None:
        """Fail with a clear error unless the bucket exists and answers."""
        self.run(self._check())

    async def _check(self) -> None:
        status, _ = await self.request("GET", f"b/{quote(self.bucket, safe='')}", ok404=True)
        if status == 404:
            raise NoSuchBucket(url=self.url, bucket=self.bucket)

    # -- objects ------------------------------------------------------------------

    def _object_path(self, key: str) -> str:
        return f"b/{quote(self.bucket, safe='')}/o/{quote(key, safe='')}"

    async def stat(self, key: str) -> dict[str, Any] | None:
        """The object resource of ``key`` as state_of gives it, or None."""
        status, body = await self.request("GET", self._object_path(key), ok404=True)
        if status == 404:
            return None
        return state_of(json.loads(body))

    def stat_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """The state of every key: one listing per directory that holds many of
        them (a key ``d/x/`` listed as a prefix only is looked up alone), one
        GET per key elsewhere."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        groups: dict[str, list[str]] = {}
        for k in keys:
            groups.setdefault(k.rstrip("/").rpartition("/")[0], []).append(k)

        async def all_of() -> dict[str, dict[str, Any] | None]:
            await self._check()
            found: dict[str, dict[str, Any] | None] = {}
            alone = [k for d, ks in groups.items() if len(ks) < LIST_OVER for k in ks]
            listed = await self.gather([lambda d=d: self.list_dir(d) for d, ks in groups.items() if len(ks) >= LIST_OVER])
            for items, prefixes in listed:
                for k in (k for d, ks in groups.items() if len(ks) >= LIST_OVER for k in ks):
                    if k in items:
                        found[k] = items[k]
                    elif k.endswith("/") and k in prefixes:
                        alone.append(k)
                    elif not k.endswith("/") or k not in prefixes:
                        found.setdefault(k, None)
            alone = sorted(set(alone))
            for k, s in zip(alone, await self.gather([lambda k=k: self.stat(k) for k in alone])):
                found[k] = s
            return found

        found = self.run(all_of())
        return {k: found.get(k) for k in keys}

    async def list_dir(self, directory: str) -> tuple[dict[str, dict[str, Any] | None], set[str]]:
        """The objects directly in ``directory`` (by key) and the sub-prefixes below it."""
        prefix = directory + "/" if directory else ""
        items: dict[str, dict[str, Any] | None] = {}
        prefixes: set[str] = set()
        token = None
        while True:
            params = {"prefix": prefix, "delimiter": "/", "maxResults": 1000}
            if token:
                params["pageToken"] = token
            _, body = await self.request("GET", f"b/{quote(self.bucket, safe='')}/o", params=params)
            page = json.loads(body)
            for obj in page.get("items", []):
                items[obj["name"]] = state_of(obj)
            prefixes.update(page.get("prefixes", []))
            token = page.get("nextPageToken")
            if not token:
                return items, prefixes

    def generations(self, keys: Iterable[str]) -> dict[str, int]:
        """The current generation of each key (0: no such object)."""
        return {k: (s["generation"] if s else 0) for k, s in self.stat_many(keys).items()}

    async def read(self, key: str, generation: int) -> bytes:
        """The bytes of ``key`` at exactly ``generation``; PreconditionFailed if it is gone."""
        status, body = await self.request(
            "GET", self._object_path(key), params={"alt": "media", "generation": generation}, ok404=True)
        if status in (404, 412):
            raise PreconditionFailed(key, generation)
        return body

    async def write(
        self, key: str, data: bytes, *, if_generation: int, content_type: str, metadata: dict[str, str],
    ) -> int:
        """Upload ``key`` (multipart, so the emulator honours the precondition too)
        if it is at ``if_generation`` (0: absent); its new generation. A retry
        whose first attempt landed finds its own bytes there and succeeds."""
        resource = json.dumps({"name": key, "contentType": content_type, "metadata": metadata})
        body = (
            b"--==roscoe==\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n" + resource.encode()
            + b"\r\n--==roscoe==\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n" + data
            + b"\r\n--==roscoe==--"
        )
        url = self.api.object_url(upload=True)
        status, reply = await self.request(
            "POST", url, params={"uploadType": "multipart", "ifGenerationMatch": if_generation},
            data=body, headers={"Content-Type": 'multipart/related; boundary="==roscoe=="'},
            kind=self._kind(key),
        )
        if status == 412:
            now = await self.stat(key)
            wanted = {"md5": md5_b64(data), "content_type": content_type, "metadata": metadata}
            if now is not None and same_object(now, wanted):
                return int(now["generation"])
            raise PreconditionFailed(key, if_generation)
        return int(json.loads(reply)["generation"])

    async def delete(self, key: str, *, if_generation: int) -> None:
        """Delete ``key`` if it is at ``if_generation``. (fake-gcs-server ignores
        preconditions on delete; real GCS answers 412.) Already gone is done."""
        status, _ = await self.request(
            "DELETE", self._object_path(key), params={"ifGenerationMatch": if_generation}, ok404=True,
            kind=self._kind(key))
        if status == 412:
            raise PreconditionFailed(key, if_generation)

    async def rewrite(
        self, src_key: str, src_generation: int, dst_key: str, *, if_generation: int,
        content_type: str | None = None, metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Copy ``src_key`` at exactly ``src_generation`` to ``dst_key`` inside
        the bucket (``rewriteTo``, following ``rewriteToken`` until done): no
        object bytes through this machine. With ``content_type`` or ``metadata``
        the destination gets exactly those (a missing one: DEFAULT_TYPE, no
        metadata), else the source's. Returns state_of the new object.

        The source gone from that generation raises PreconditionFailed(src_key,
        src_generation); ``dst_key`` not at ``if_generation`` (0: absent) raises
        PreconditionFailed(dst_key, if_generation), unless it already holds the
        source's bytes and the wanted metadata (a retry whose first attempt
        landed). fake-gcs-server honours ``sourceGeneration`` but ignores
        ``ifGenerationMatch`` on a rewrite (it overwrites); real GCS answers 412."""
        custom = content_type is not None or metadata is not None
        resource = {"contentType": content_type or DEFAULT_TYPE, "metadata": metadata or {}} if custom else {}
        url = f"{self.api.object_url(src_key)}/rewriteTo/b/{quote(self.bucket, safe='')}/o/{quote(dst_key, safe='')}"
        params: dict[str, Any] = {"sourceGeneration": src_generation, "ifGenerationMatch": if_generation}
        while True:
            reply = await self.api.request(
                "POST", url, params=params, data=json.dumps(resource).encode(), ok=(404, 412),
                headers={"Content-Type": "application/json; charset=UTF-8"}, kind=self._kind(dst_key))
            if reply.status == 404:
                raise PreconditionFailed(src_key, src_generation)
            if reply.status == 412:
                return await self._landed_copy(src_key, src_generation, dst_key, if_generation, resource)
            answer = json.loads(reply.body)
            if answer.get("done"):
                return state_of(answer["resource"])  # type: ignore[return-value]
            params["rewriteToken"] = answer["rewriteToken"]

    async def _landed_copy(
        self, src_key: str, src_generation: int, dst_key: str, if_generation: int, resource: dict[str, Any],
    ) -> dict[str, Any]:
        """After a 412 on a rewrite: the destination's state if it already is the copy."""
        reply = await self.api.request("GET", self.api.object_url(src_key), params={"generation": src_generation},
                                       ok=(404,))
        if reply.status == 404:
            raise PreconditionFailed(src_key, src_generation)
        src = state_of(json.loads(reply.body))
        assert src is not None
        wanted = {"md5": src["md5"], "content_type": resource.get("contentType", src["content_type"]),
                  "metadata": resource.get("metadata", src["metadata"])}
        now = await self.stat(dst_key)
        if now is not None and same_object(now, wanted):
            return now
        raise PreconditionFailed(dst_key, if_generation)

    async def upload_file(
        self, key: str, path: str, *, if_generation: int, content_type: str, metadata: dict[str, str],
        md5: str | None = None,
    ) -> int:
        """Upload the file ``path`` as ``key`` if it is at ``if_generation``
        (0: absent); its new generation. Up to ``settings.resumable_over`` bytes
        go in one multipart request; more in a resumable session, chunk by
        chunk (``settings.chunk`` in memory at a time), resumed after a dropped
        connection or a 5xx from what the session holds. ``md5`` (base64, as
        GCS gives it) saves hashing the file when it is known. A retry whose
        first attempt landed succeeds; an object that lands with other bytes
        than the file's raises GcsError. fake-gcs-server ignores
        ``ifGenerationMatch`` on a resumable upload (real GCS answers 412)."""
        size = os.path.getsize(path)
        if size <= self.settings.resumable_over:
            with open(path, "rb") as f:
                data = f.read()
            generation = await self.write(key, data, if_generation=if_generation, content_type=content_type,
                                          metadata=metadata)
            return generation
        resource = {"name": key, "contentType": content_type, "metadata": metadata}
        reply = await self.api.resumable(resource, {"ifGenerationMatch": if_generation}, path, size,
                                         kind=self._kind(key))
        wanted = {"md5": md5 or await asyncio.to_thread(md5_file, path), "content_type": content_type,
                  "metadata": metadata}
        if reply.status == 412:
            now = await self.stat(key)
            if now is not None and same_object(now, wanted):
                return int(now["generation"])
            raise PreconditionFailed(key, if_generation)
        landed = state_of(json.loads(reply.body))
        assert landed is not None
        if landed["md5"] and landed["md5"] != wanted["md5"]:
            raise GcsError(url=self.url, reason=f"{key}: the upload of {path} landed with other bytes "
                                                f"(md5 {landed['md5']}, the file's {wanted['md5']})")
        return int(landed["generation"])

    async def download_file(self, key: str, generation: int, path: str) -> None:
        """Stream the bytes of ``key`` at exactly ``generation`` into the file
        ``path`` (created or truncated); PreconditionFailed if that generation
        is gone. A failed attempt leaves no file at ``path``."""
        import aiohttp

        params = {"alt": "media", "generation": generation}
        delay = 0.2
        for attempt in range(self.settings.retries):
            try:
                await self._download(key, params, path)
                return
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                if os.path.exists(path):
                    os.unlink(path)
                if isinstance(e, FileNotFoundError) and e.filename == key:
                    raise PreconditionFailed(key, generation) from None
                if attempt + 1 == self.settings.retries:
                    raise self.api.unreachable(e) from e
            await asyncio.sleep(delay)
            delay *= 2.5

    async def _download(self, key: str, params: dict[str, Any], path: str) -> None:
        import aiohttp

        fault(self.settings.fault, "request")
        headers: dict[str, str] = {}
        self.fs.credentials.apply(headers)
        session = await self.api.session()
        async with session.get(self.api.object_url(key), params={k: str(v) for k, v in params.items()},
                               headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout),
                               ) as r:
            if r.status in (404, 412):
                raise FileNotFoundError(2, "no such generation", key)
            if r.status >= 300:
                raise self.api.error(r.status, await r.read())
            with open(path, "wb") as f:
                async for block in r.content.iter_chunked(1 << 20):
                    f.write(block)

    async def read_json(self, key: str) -> tuple[Any, int]:
        """The JSON value of ``key`` and its generation; (None, 0) when absent.
        One request: a download names the generation it served."""
        data, generation = await self._read_current(key)
        return (None, 0) if data is None else (json.loads(data), generation)

    async def _read_current(self, key: str) -> tuple[bytes | None, int]:
        """The bytes of ``key`` now and their generation (``X-Goog-Generation``); (None, 0) when absent."""
        reply = await self.api.request("GET", self.api.object_url(key), params={"alt": "media"}, ok=(404,))
        if reply.status == 404:
            return None, 0
        return reply.body, int(reply.headers["X-Goog-Generation"])

    async def write_json(
        self, key: str, obj: Any, *, if_generation: int, metadata: dict[str, str] | None = None,
    ) -> int:
        """Write ``obj`` as canonical JSON (sorted keys, no spaces, UTF-8) to
        ``key`` if it is at ``if_generation`` (0: absent); its new generation."""
        data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        return await self.write(key, data, if_generation=if_generation, content_type="application/json",
                                metadata=metadata or {})

    async def list_prefix(self, prefix: str, *, page_size: int = 1000) -> dict[str, dict[str, Any]]:
        """Every object whose name starts with ``prefix`` (all pages, no
        delimiter), as {name: state_of}."""
        found: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] = {"prefix": prefix, "maxResults": page_size}
        while True:
            reply = await self.api.request("GET", self.api.object_url(), params=params)
            page = json.loads(reply.body)
            for obj in page.get("items", []):
                found[obj["name"]] = state_of(obj)  # type: ignore[assignment]
            if not page.get("nextPageToken"):
                return found
            params["pageToken"] = page["nextPageToken"]

    def _kind(self, key: str) -> str:
        """The fault hook's kind of a change to ``key``: one to roscoe's own
        journal beside the tree (``.roscoe/``: the lease, intents, images,
        manifests) is a plain request, one to the tree a ``write``."""
        return "request" if "/.roscoe/" in "/" + key else "write"

    async def gather(self, jobs: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
        """Run ``jobs`` with at most ``concurrency`` in flight; results in order.
        The first failure is raised after every started job has finished."""
        limit = asyncio.Semaphore(self.concurrency)

        async def one(job: Callable[[], Awaitable[Any]]) -> Any:
            async with limit:
                return await job()

        results = await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def parse_rfc3339(text: str) -> int | None:
    """The ns since the epoch of an RFC 3339 time (None if it is not one): the
    inverse of ``rfc3339``, for any offset."""
    import calendar

    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        return None
    seconds = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    if m.group(3) != "Z":
        sign = 1 if m.group(3)[0] == "+" else -1
        seconds -= sign * (int(m.group(3)[1:3]) * 3600 + int(m.group(3)[4:6]) * 60)
    return seconds * 1_000_000_000 + int((m.group(2) or "0").ljust(9, "0"))


def connect(url: str) -> Any:
    """A GCSFileSystem: anonymous on an emulator, else Google's default
    credentials (refusing to go on without any)."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        import gcsfs
    except ImportError as e:  # pragma: no cover - gcsfs is a dependency
        raise GcsError(url=url, reason=f"gcsfs is not installed ({e})") from e
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
    fs = gcsfs.GCSFileSystem(skip_instance_cache=True)
    if getattr(fs.credentials, "method", None) == "anon":
        raise NoCredentials(url=url, reason="only anonymous access is possible")
    return fs
