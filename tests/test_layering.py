"""The libraries stand alone: cowfs and journal never load the CLI stack, and
the `tx run` path loads neither typer, rich nor the modules that cost start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.system import REPO

HEAVY = ("typer", "rich", "click", "gcsfs", "aiohttp", "sqlite_utils", "dataclasses", "typing", "pathlib", "subprocess")


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    program = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_libraries_do_not_import_the_cli_stack() -> None:
    modules = loaded_after("import cowfs, journal, cowfs.stagers, cowfs.sandbox, journal.workspace")
    assert {"typer", "rich", "click", "cli"} & modules == set()


def test_only_the_http_server_imports_aiohttp() -> None:
    """roscoe serve's HTTP side (cli.http_server) runs in a process of its
    own: the service's other modules and the typer app never load aiohttp."""
    modules = loaded_after("import cli.main, cli.app, cli.serve, cli.launcher, cli.http_routes, cli.client")
    assert {m.split(".")[0] for m in modules} & {"aiohttp", "yarl", "multidict"} == set()


def test_tx_run_path_stays_light(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    code = (
        "import os, sys\n"
        "from cli.main import main\n"
        f"code = main(['tx', 'run', '--root', {str(root)!r}, '--', 'true'])\n"
        "assert code == 0, code\n"
    )
    modules = loaded_after(code, {"ROSCOE_HOME": str(tmp_path / "home")})
    assert {m.split(".")[0] for m in modules} & set(HEAVY) == set()


def test_diff_json_commit_and_rollback_stay_light(tmp_path: Path) -> None:
    """An agent reads `tx diff ID --json` and runs `tx commit ID` on every
    transaction, and a rollback should be as quick: none loads typer or rich."""
    root = tmp_path / "root"
    root.mkdir()
    code = (
        "from cli.main import main\n"
        "from journal.workspace import Workspace\n"
        f"ws = Workspace.open({str(tmp_path / 'home')!r})\n"
        f"tx = ws.begin({str(root)!r}).id\n"
        "ws.run(tx, ['sh', '-c', 'echo x > x'], cwd=" + repr(str(root)) + ")\n"
        "ws.close()\n"
        "assert main(['tx', 'diff', tx, '--json']) == 0\n"
        "assert main(['tx', 'commit', tx, '--yes']) == 0\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['tx', 'rollback', tx, '--yes']) == 0\n"
        "    assert main(['tx', 'rollback', out.getvalue().strip(), '--force', '--yes']) == 0\n"
    )
    modules = loaded_after(code, {"ROSCOE_HOME": str(tmp_path / "home")})
    assert {m.split(".")[0] for m in modules} & {"typer", "rich", "click"} == set()


def test_commit_and_rollback_load_neither_the_sandbox_nor_plans(tmp_path: Path) -> None:
    """`tx commit ID` and `tx rollback ID` run no command and read no plan:
    their start-up, paid on every agent call, skips those modules."""
    root = tmp_path / "root"
    root.mkdir()
    env = {"ROSCOE_HOME": str(tmp_path / "home")}
    staged = (
        "from journal.workspace import Workspace\n"
        f"ws = Workspace.open({str(tmp_path / 'home')!r})\n"
        f"tx = ws.begin({str(root)!r}).id\n"
        "ws.run(tx, ['sh', '-c', 'echo x > x'])\n"
        "ws.close()\n"
        "print(tx)\n"
    )
    done = subprocess.run([sys.executable, "-c", staged], capture_output=True, text=True, check=True,
                          cwd=root, env=dict(os.environ, PYTHONPATH=str(REPO), **env))
    tx = done.stdout.split()[-1]
    never = {"cowfs.sandbox", "cowfs.seccomp", "cowfs.limits", "cowfs.plan", "cowfs.planrun", "threading"}
    committed = loaded_after(f"from cli.main import main\nassert main(['tx', 'commit', {tx!r}, '--yes']) == 0", env)
    assert committed & never == set()
    rolled_back = loaded_after(
        "import contextlib, io\nfrom cli.main import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['tx', 'rollback', {tx!r}, '--yes']) == 0", env)
    assert rolled_back & never == set()
    assert not (root / "x").exists()


def test_tx_plan_stays_light(tmp_path: Path) -> None:
    """Agents stage plans on every transaction: `tx plan [--dry-run] --json PLAN`
    and plain `tx plan --root R PLAN` load neither typer nor rich."""
    root = tmp_path / "root"
    root.mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "ops": [{"op": "write", "path": "a.txt", "content": "a\n"}]}))
    code = (
        "import contextlib, io\n"
        "from cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['tx', 'plan', '--root', {str(root)!r}, '--dry-run', '--json', {str(plan)!r}]) == 0\n"
        f"    assert main(['tx', 'plan', '--json', '--root', {str(root)!r}, {str(plan)!r}]) == 0\n"
        f"    assert main(['tx', 'plan', '--root', {str(root)!r}, {str(plan)!r}]) == 0\n"
    )
    modules = loaded_after(code, {"ROSCOE_HOME": str(tmp_path / "home")})
    assert {m.split(".")[0] for m in modules} & {"typer", "rich", "click"} == set()
