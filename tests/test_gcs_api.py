"""cowfs.gcsapi and GcsTarget's object calls, against a real fake-gcs-server
(and, where bytes are counted or a connection is cut, the TCP proxy of
tests/support/proxy.py in front of it). Where the emulator differs from real
GCS (it ignores ifGenerationMatch on rewrites, resumable uploads and deletes),
the tests assert what the emulator does and say so."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs.errors import GcsUnreachable, UsageError
from cowfs.gcs import GcsSettings, GcsTarget, PreconditionFailed
from tests.support.gcs import FakeGcs
from tests.support.proxy import Proxy

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def proxied_server() -> Iterator[tuple[FakeGcs, Proxy]]:
    """A fake-gcs-server behind the proxy, whose resumable session URLs name
    the proxy too, so every byte of an upload goes through it."""
    server = FakeGcs()
    proxy = Proxy(server.port).start()
    server.external_url = proxy.url
    server.start()
    try:
        yield server, proxy
    finally:
        server.stop()
        proxy.stop()


@pytest.fixture
def through(proxied_server: tuple[FakeGcs, Proxy], monkeypatch: pytest.MonkeyPatch) -> tuple[FakeGcs, Proxy, str]:
    """(server, proxy, bucket name): a new bucket, and roscoe pointed at the proxy."""
    server, proxy = proxied_server
    name = f"api-{uuid.uuid4().hex[:12]}"
    server.make_bucket(name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    monkeypatch.delenv("ROSCOE_GCS_FAULT", raising=False)
    proxy.reset()
    return server, proxy, name


@pytest.fixture
def direct(server: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeGcs, str]:
    """(server, bucket name): a new bucket, and roscoe pointed at the server."""
    name = f"api-{uuid.uuid4().hex[:12]}"
    server.make_bucket(name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.delenv("ROSCOE_GCS_FAULT", raising=False)
    return server, name


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def pattern(size: int) -> bytes:
    """``size`` bytes that differ at every offset of a chunk (a misplaced chunk shows)."""
    block = b"".join(i.to_bytes(4, "big") for i in range(MiB // 4))
    return (block * (size // MiB + 1))[:size]


# -- rewrite ---------------------------------------------------------------------------


def test_rewrite_copies_inside_the_bucket(through: tuple[FakeGcs, Proxy, str]) -> None:
    server, proxy, name = through
    data = pattern(4 * MiB)
    put = server.put(name, "tree/a.pdf", data, {"gcsfuse_mtime": "2023-11-14T22:13:20.5Z"}, "application/pdf")
    target = GcsTarget(f"gs://{name}/tree")
    proxy.reset()

    kept = target.run(target.rewrite("tree/a.pdf", int(put["generation"]), ".roscoe/pre/a", if_generation=0))
    renamed = target.run(target.rewrite("tree/a.pdf", int(put["generation"]), "tree/b.pdf", if_generation=0,
                                        content_type="text/plain", metadata={"mtime": "x"}))

    assert proxy.up + proxy.down < 16 * 1024, (proxy.up, proxy.down)  # two small JSON exchanges, no object bytes
    objects = server.objects(name)
    assert objects[".roscoe/pre/a"]["data"] == data and objects["tree/b.pdf"]["data"] == data
    assert kept == {"kind": "file", "generation": int(objects[".roscoe/pre/a"]["generation"]),  # type: ignore[call-overload]
                    "md5": md5(data), "size": 4 * MiB, "content_type": "application/pdf",
                    "metadata": {"gcsfuse_mtime": "2023-11-14T22:13:20.5Z"}}
    assert renamed == {"kind": "file", "generation": int(objects["tree/b.pdf"]["generation"]),  # type: ignore[call-overload]
                       "md5": md5(data), "size": 4 * MiB, "content_type": "text/plain", "metadata": {"mtime": "x"}}


def test_rewrite_of_a_gone_generation_is_refused(direct: tuple[FakeGcs, str]) -> None:
    server, name = direct
    old = int(server.put(name, "a", b"old")["generation"])  # type: ignore[call-overload]
    server.put(name, "a", b"new")
    target = GcsTarget(f"gs://{name}")

    with pytest.raises(PreconditionFailed) as failed:
        target.run(target.rewrite("a", old, "copy", if_generation=0))

    assert (failed.value.key, failed.value.expected) == ("a", old)
    assert sorted(server.objects(name)) == ["a"]


def test_rewrite_over_a_changed_destination_on_the_emulator(direct: tuple[FakeGcs, str]) -> None:
    """fake-gcs-server ignores ifGenerationMatch on a rewrite: the copy
    replaces the destination (real GCS answers 412 and rewrite raises)."""
    server, name = direct
    src = int(server.put(name, "a", b"source")["generation"])  # type: ignore[call-overload]
    server.put(name, "b", b"someone else's")
    target = GcsTarget(f"gs://{name}")

    state = target.run(target.rewrite("a", src, "b", if_generation=0))

    assert server.contents(name)["b"] == (b"source", {})
    assert state["md5"] == md5(b"source")


def test_a_rewrite_whose_first_attempt_landed_is_recognised(direct: tuple[FakeGcs, str]) -> None:
    """What rewrite does after a 412 (real GCS's answer to a retried rewrite
    that had landed): the destination holding the copy is success; anything
    else is PreconditionFailed on the destination."""
    server, name = direct
    src = int(server.put(name, "a", b"source", {"k": "v"}, "text/plain")["generation"])  # type: ignore[call-overload]
    landed = int(server.put(name, "b", b"source", {"k": "v"}, "text/plain")["generation"])  # type: ignore[call-overload]
    server.put(name, "c", b"source", {"k": "other"}, "text/plain")
    target = GcsTarget(f"gs://{name}")

    state = target.run(target._landed_copy("a", src, "b", 0, {}))
    with pytest.raises(PreconditionFailed) as failed:
        target.run(target._landed_copy("a", src, "c", 0, {}))

    assert state["generation"] == landed
    assert (failed.value.key, failed.value.expected) == ("c", 0)


# -- uploads of files --------------------------------------------------------------------


def test_a_large_upload_survives_a_dropped_connection(through: tuple[FakeGcs, Proxy, str], tmp_path: Path) -> None:
    server, proxy, name = through
    size = 40 * MiB
    data = pattern(size)
    path = tmp_path / "scan.pdf"
    path.write_bytes(data)
    settings = GcsSettings(resumable_over=1 * MiB, chunk=4 * MiB, retries=4)
    target = GcsTarget(f"gs://{name}", settings)
    proxy.reset()
    # Cut 2 MiB into the third chunk, and 1 MiB into the one retry aiohttp
    # makes by itself: the failure reaches upload_file's own resume.
    proxy.drop_after(10 * MiB, 1 * MiB)

    tracemalloc.start()
    generation = target.run(target.upload_file("scan.pdf", str(path), if_generation=0,
                                               content_type="application/pdf", metadata={"mtime": "m"}))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert peak < size // 2, peak  # a few 4 MiB chunks in memory (13 MiB seen), never the 40 MiB file
    # Only the cut chunk went again (the 3 MiB cut off), not the whole file;
    # each cut lands up to one 64 KiB read late, and headers add a few KiB.
    assert size + 3 * MiB < proxy.up < size + 3 * MiB + 256 * 1024, proxy.up
    obj = server.objects(name)["scan.pdf"]
    assert obj["data"] == data
    assert (int(obj["generation"]), obj["metadata"], obj["contentType"]) == (  # type: ignore[call-overload]
        generation, {"mtime": "m"}, "application/pdf")


def test_a_resumable_upload_over_a_changed_object_on_the_emulator(
        direct: tuple[FakeGcs, str], tmp_path: Path) -> None:
    """fake-gcs-server ignores ifGenerationMatch on a resumable upload: the
    upload replaces the object (real GCS answers 412: PreconditionFailed)."""
    server, name = direct
    server.put(name, "big", b"someone else's")
    path = tmp_path / "big"
    path.write_bytes(pattern(MiB + 5))
    target = GcsTarget(f"gs://{name}", GcsSettings(resumable_over=MiB, chunk=256 * 1024))

    generation = target.run(target.upload_file("big", str(path), if_generation=0, content_type="x/y", metadata={}))

    assert server.objects(name)["big"]["data"] == pattern(MiB + 5)
    assert int(server.objects(name)["big"]["generation"]) == generation  # type: ignore[call-overload]


def test_a_small_upload_with_a_stale_generation_is_refused(direct: tuple[FakeGcs, str], tmp_path: Path) -> None:
    server, name = direct
    before = server.put(name, "doc.txt", b"theirs", {"mtime": "t"}, "text/plain")
    path = tmp_path / "doc.txt"
    path.write_bytes(b"mine")
    target = GcsTarget(f"gs://{name}")

    with pytest.raises(PreconditionFailed) as failed:
        target.run(target.upload_file("doc.txt", str(path), if_generation=int(before["generation"]) + 1,  # type: ignore[call-overload]
                                      content_type="text/plain", metadata={"mtime": "m"}))

    assert (failed.value.key, failed.value.expected) == ("doc.txt", int(before["generation"]) + 1)  # type: ignore[call-overload]
    after = server.objects(name)["doc.txt"]
    assert (after["data"], after["generation"], after["metadata"]) == (b"theirs", before["generation"], {"mtime": "t"})


def test_a_small_upload_that_already_landed_succeeds(direct: tuple[FakeGcs, str], tmp_path: Path) -> None:
    server, name = direct
    landed = server.put(name, "doc.txt", b"mine", {"mtime": "m"}, "text/plain")
    path = tmp_path / "doc.txt"
    path.write_bytes(b"mine")
    target = GcsTarget(f"gs://{name}")

    generation = target.run(target.upload_file("doc.txt", str(path), if_generation=0, content_type="text/plain",
                                               metadata={"mtime": "m"}))

    assert generation == int(landed["generation"])  # type: ignore[call-overload]


def test_download_file(direct: tuple[FakeGcs, str], tmp_path: Path) -> None:
    server, name = direct
    data = pattern(3 * MiB + 7)
    old = int(server.put(name, "img", data)["generation"])  # type: ignore[call-overload]
    target = GcsTarget(f"gs://{name}")

    target.run(target.download_file("img", old, str(tmp_path / "img")))
    server.put(name, "img", b"newer")
    with pytest.raises(PreconditionFailed) as failed:
        target.run(target.download_file("img", old, str(tmp_path / "gone")))

    assert (tmp_path / "img").read_bytes() == data
    assert (failed.value.key, failed.value.expected) == ("img", old)
    assert not (tmp_path / "gone").exists()


# -- JSON objects and listings -------------------------------------------------------------


def test_json_objects_round_trip(direct: tuple[FakeGcs, str]) -> None:
    server, name = direct
    target = GcsTarget(f"gs://{name}")
    value = {"b": 1, "a": [1, "é", None]}

    absent = target.run(target.read_json(".roscoe/m.json"))
    generation = target.run(target.write_json(".roscoe/m.json", value, if_generation=0, metadata={"tx": "1"}))
    read = target.run(target.read_json(".roscoe/m.json"))
    with pytest.raises(PreconditionFailed):
        target.run(target.write_json(".roscoe/m.json", {"other": 1}, if_generation=0))

    assert absent == (None, 0)
    assert read == (value, generation)
    obj = server.objects(name)[".roscoe/m.json"]
    assert (obj["data"], obj["contentType"], obj["metadata"]) == (
        '{"a":[1,"é",null],"b":1}'.encode(), "application/json", {"tx": "1"})


def test_list_prefix_reads_every_page(direct: tuple[FakeGcs, str]) -> None:
    server, name = direct
    for i in range(7):
        server.put(name, f"m/{i}/x.json", b"{}", {"n": str(i)}, "application/json")
    server.put(name, "m/", b"")
    server.put(name, "mx", b"")
    # The emulator pages as GCS does: two items a page and a token for the rest.
    first = json.loads(urllib.request.urlopen(f"{server.url}/storage/v1/b/{name}/o?prefix=m/&maxResults=2").read())
    assert (len(first["items"]), bool(first.get("nextPageToken"))) == (2, True)
    target = GcsTarget(f"gs://{name}")

    listed = target.run(target.list_prefix("m/", page_size=2))

    assert sorted(listed) == ["m/"] + [f"m/{i}/x.json" for i in range(7)]
    assert listed["m/3/x.json"]["metadata"] == {"n": "3"}
    assert listed["m/"]["kind"] == "dir"
    assert target.run(target.list_prefix("nothing/")) == {}


# -- settings and the fault hook ------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    env = {"ROSCOE_GCS_CONCURRENCY": "3", "ROSCOE_GCS_RETRIES": "2", "ROSCOE_GCS_TIMEOUT": "1.5",
           "ROSCOE_GCS_RESUMABLE_OVER": "1024", "ROSCOE_GCS_CHUNK": str(512 * 1024), "ROSCOE_GCS_FAULT": "write@2"}

    assert GcsSettings.from_env(env) == GcsSettings(3, 2, 1.5, 1024, 512 * 1024, "write@2")
    assert GcsSettings.from_env({}) == GcsSettings(32, 4, 60.0, 8 * MiB, 8 * MiB, "")
    with pytest.raises(UsageError):
        GcsSettings.from_env({"ROSCOE_GCS_CHUNK": "1000"})


def test_the_fault_hook_comes_from_the_settings(direct: tuple[FakeGcs, str], monkeypatch: pytest.MonkeyPatch) -> None:
    server, name = direct
    server.put(name, "a", b"a")
    monkeypatch.setenv("ROSCOE_GCS_FAULT", "request@1")
    unfaulted = GcsTarget(f"gs://{name}", GcsSettings())
    faulted = GcsTarget(f"gs://{name}", GcsSettings(retries=1, fault="request@1"))

    assert unfaulted.run(unfaulted.stat("a"))["md5"] == md5(b"a")
    with pytest.raises(GcsUnreachable, match=re.escape("injected network failure (request@1)")):
        faulted.run(faulted.stat("a"))


def test_nothing_uses_gcsfs_private_request_calls() -> None:
    private = re.compile(r"\b_get_headers\b|\b_location\b|\b_set_session\b")
    found = [f"{p.relative_to(REPO)}:{n}" for pkg in ("cowfs", "journal", "cli")
             for p in sorted((REPO / pkg).rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]

    assert found == []
    assert os.path.exists(REPO / "cowfs" / "gcsapi.py")


def test_credentials_go_only_to_the_api_s_own_host(
    through: tuple[FakeGcs, Proxy, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resumable session URL comes from the server's Location header: roscoe
    sends the bearer token to the endpoint's own host and port only, never to
    wherever a Location points."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    server, proxy, name = through
    target = GcsTarget(f"gs://{name}/projects")
    applied: list[str] = []

    def apply(out: dict[str, str]) -> None:
        applied.append("token")
        out["Authorization"] = "Bearer secret"

    monkeypatch.setattr(target.fs.credentials, "apply", apply)
    try:
        reply = target.run(target.api.send("PUT", f"http://127.0.0.1:{elsewhere.server_address[1]}/upload/x"))
        assert (reply.status, seen, applied) == (200, [None], [])
        reply = target.run(target.api.send("GET", target.api.object_url("projects/none")))
        assert (reply.status, applied) == (404, ["token"])  # (the API's own host gets it)
    finally:
        elsewhere.shutdown()
