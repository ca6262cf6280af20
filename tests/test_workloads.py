"""Real workloads inside a transaction, each diffed and committed and the
live tree compared byte for byte: Playwright driving Debian's chromium, the
reorganize.py agent script over the sample cases, and a venv with pip."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import xxhash

from tests.support.examples import CASES, EXPECTED, REORGANIZE, tree
from tests.support.roscoe import Roscoe
from tests.support.system import missing
from tests.support.transactions import tx_from
from tests.support.trees import snapshot

CHROMIUM = "/usr/bin/chromium"


def need(what: str, present: bool, how: str) -> None:
    """A missing system dependency fails in CI and skips elsewhere."""
    if not present:
        missing(what, f"{how} (scripts/test.sh installs it)")


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def commit(roscoe: Roscoe, tx: str) -> None:
    done = roscoe("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert roscoe("verify").returncode == 0


# -- Playwright and chromium --------------------------------------------------------

PAGE = b"""<!doctype html><html><head><title>Docket 1:24-cv-00042</title>
<style>body{font:16px sans-serif;margin:40px} h1{color:#123}</style></head>
<body><h1>Smith v. Jones</h1><p>Docket entries 1-12</p></body></html>"""

SAVE_PAGE = """
import sys
from playwright.sync_api import sync_playwright

url, folder = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 640, "height": 480})
    page.goto(url)
    print(page.title())
    page.screenshot(path=f"{folder}/docket.png")
    page.pdf(path=f"{folder}/docket.pdf")
    browser.close()
"""


@pytest.fixture
def docket_server(tmp_path: Path) -> Iterator[str]:
    """The docket page on 127.0.0.1, served from outside the sandbox."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(PAGE)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_playwright_saves_a_docket_page_into_a_case_folder(roscoe: Roscoe, root: Path, tmp_path: Path, docket_server: str) -> None:
    need("chromium", os.access(CHROMIUM, os.X_OK), "apt-get install chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        need("playwright", False, "pip install playwright (the test extra)")
    script = tmp_path / "save_page.py"
    script.write_text(SAVE_PAGE)
    before = snapshot(root)
    done = roscoe("tx", "run", "--root", root, "--memory", "2G", "--timeout", "120", "--",
                  sys.executable, script, docket_server, root / "case1", timeout=180)
    assert (done.returncode, done.stdout) == (0, b"Docket 1:24-cv-00042\n"), done.stderr
    tx = tx_from(done.stderr)
    assert snapshot(root) == before

    got = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    changes = {c["path"]: c for c in got["changes"]}
    assert sorted(changes) == ["case1/docket.pdf", "case1/docket.png"]
    assert {c["status"] for c in changes.values()} == {"added"}
    commit(roscoe, tx)
    png = (root / "case1" / "docket.png").read_bytes()
    pdf = (root / "case1" / "docket.pdf").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (640, 480)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert (changes["case1/docket.png"]["new"]["hash"], changes["case1/docket.pdf"]["new"]["hash"]) == (xxh(png), xxh(pdf))
    assert (changes["case1/docket.png"]["new"]["size"], changes["case1/docket.pdf"]["new"]["size"]) == (len(png), len(pdf))
    # Everything else is as it was.
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith("case1/docket.")} == {
        k: v for k, v in before.items()}


RENDER_OFFLINE = """
import sys
from playwright.sync_api import sync_playwright

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page()
    page.goto(sys.argv[1])
    print(page.title())
    page.pdf(path=sys.argv[2])
    browser.close()
"""


def test_playwright_renders_a_case_file_with_the_network_off(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    # Chromium will not start without a unix socket of its own (its process
    # singleton): --network off keeps those, and masks the host's instead.
    need("chromium", os.access(CHROMIUM, os.X_OK), "apt-get install chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        need("playwright", False, "pip install playwright (the test extra)")
    (root / "case1" / "docket.html").write_bytes(PAGE)
    script = tmp_path / "render.py"
    script.write_text(RENDER_OFFLINE)
    before = snapshot(root)
    done = roscoe("tx", "run", "--root", root, "--network", "off", "--memory", "2G", "--timeout", "120", "--",
                  sys.executable, script, (root / "case1" / "docket.html").as_uri(), root / "case1" / "docket.pdf",
                  timeout=180)
    assert (done.returncode, done.stdout) == (0, b"Docket 1:24-cv-00042\n"), done.stderr
    assert snapshot(root) == before
    got = json.loads(roscoe("tx", "diff", tx_from(done.stderr), "--json").stdout)
    assert [(c["path"], c["status"]) for c in got["changes"]] == [("case1/docket.pdf", "added")]


# -- the agent's reorganize script ---------------------------------------------------

def test_reorganize_runs_in_a_transaction_and_commits_exactly(roscoe: Roscoe, tmp_path: Path) -> None:
    live = tmp_path / "projects"
    shutil.copytree(CASES, live)
    reference = tmp_path / "reference"
    shutil.copytree(CASES, reference)
    subprocess.run([sys.executable, str(REORGANIZE), str(reference)], check=True, capture_output=True)
    before = tree(live)

    done = roscoe("tx", "run", "--root", live, "--network", "off", "--clean-env", "--", "python3", REORGANIZE, cwd=live)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines()[-1] == (
        "reorganize: 4 cases; 2 duplicates deleted, 6 scans moved, 11 files renamed, "
        "4 indexes written, 1 left for review")
    tx = tx_from(done.stderr)
    assert tree(live) == before  # nothing lands before the commit

    got = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    files = [c for c in got["changes"] if (c["new"] or c["old"])["type"] == "file"]
    added = {c["path"] for c in files if c["status"] == "added"}
    deleted = {c["path"] for c in files if c["status"] == "deleted"}
    assert added == set(EXPECTED) - set(before)
    assert deleted == set(before) - set(EXPECTED)
    commit(roscoe, tx)
    assert tree(live) == tree(reference)
    for path, source in EXPECTED.items():
        if source is not None:
            assert tree(live)[path] == before[source], path


# -- a venv and pip ------------------------------------------------------------------

def build_wheel(folder: Path) -> Path:
    """A tiny pure-Python wheel, written by hand: docketlib 1.0 with one module."""
    wheel = folder / "docketlib-1.0-py3-none-any.whl"
    module = b'def caption(a, b):\n    return f"{a} v. {b}"\n'
    meta = b"Metadata-Version: 2.1\nName: docketlib\nVersion: 1.0\n"
    wheel_meta = b"Wheel-Version: 1.0\nGenerator: roscoe-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = {"docketlib.py": module, "docketlib-1.0.dist-info/METADATA": meta,
             "docketlib-1.0.dist-info/WHEEL": wheel_meta}
    import base64
    import hashlib

    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + "docketlib-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("docketlib-1.0.dist-info/RECORD", record)
    return wheel


def test_a_venv_with_a_local_wheel_is_built_inside_the_root(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    need("python3 -m venv", subprocess.run(["python3", "-c", "import ensurepip"]).returncode == 0,
         "apt-get install python3-venv")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels)
    venv = root / "case1" / ".venv"
    script = (
        f"python3 -m venv {venv} && {venv}/bin/pip install -q --no-index --find-links {wheels} docketlib"
        f" && {venv}/bin/python -c 'import docketlib; print(docketlib.caption(\"Smith\", \"Jones\"))'"
    )
    done = roscoe("tx", "run", "--root", root, "--network", "off", "--env", "PIP_DISABLE_PIP_VERSION_CHECK=1",
                  "--", "sh", "-c", script, timeout=300)
    assert (done.returncode, done.stdout) == (0, b"Smith v. Jones\n"), done.stderr
    tx = tx_from(done.stderr)
    assert not venv.exists()
    got = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    paths = [c["path"] for c in got["changes"]]
    assert all(p.startswith("case1/.venv") for p in paths) and {c["status"] for c in got["changes"]} == {"added"}
    assert "case1/.venv/pyvenv.cfg" in paths and "case1/.venv/bin/python" in paths
    site = next(p for p in paths if p.endswith("/site-packages/docketlib.py"))
    commit(roscoe, tx)
    # The committed venv works from the live tree, outside any sandbox.
    ran = subprocess.run([venv / "bin" / "python", "-c", "import docketlib; print(docketlib.__file__)"],
                         capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == str(root / site)
    assert len(snapshot(venv)) == len(paths) - 1
