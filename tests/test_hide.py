"""Scoping a run (cowfs.hide, cowfs.sandbox): ``--hide PATH`` and the config's
``[run] hide`` keep a path from the run, the state dir is never visible to a
run wherever it lives, and what a run wrote where it vanishes (its private
/tmp, a hidden path the root does not have) is reported, not lost silently.

Each attack runs as root and, where the sandbox differs, as the unprivileged
test user; each fails with its protection removed (the masks, the guard, the
state dir's mask, the /tmp upper kept in the transaction's dir, the plan
check).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cowfs.stagers import remove_tree
from tests.support.roscoe import Roscoe
from tests.support.system import gone_pid, lookup_test_user
from tests.support.trees import chown_tree, make_tree, snapshot

PY = "/usr/bin/python3"  # the sandbox sees the host's files read-only, so any python works
ENOENT, EBUSY, EROFS = 2, 16, 30


@dataclass
class Caller:
    """Who runs roscoe (root, or the unprivileged test user), a case tree of
    theirs, and a dir of theirs outside it (not under /tmp)."""

    name: str
    roscoe: Roscoe
    root: Path
    outside: Path


@pytest.fixture(params=["root", "user"])
def caller(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Caller]:
    outside = Path(tempfile.mkdtemp(prefix="roscoe-hide-", dir="/var/tmp"))
    os.chmod(outside, 0o755)
    try:
        if request.param == "root":
            root = with_clients(make_tree(tmp_path / "live"))
            yield Caller("root", Roscoe(tmp_path / "home"), root, outside)
        else:
            roscoe = request.getfixturevalue("unprivileged")
            user = lookup_test_user()
            root = with_clients(make_tree(request.getfixturevalue("user_dir") / "live"))
            chown_tree(root, user.pw_uid, user.pw_gid)
            chown_tree(outside, user.pw_uid, user.pw_gid)
            yield Caller("user", roscoe, root, outside)
    finally:
        remove_tree(outside)


def with_clients(root: Path) -> Path:
    """Two clients' folders: acme's is the run's, other's must stay unseen."""
    (root / "clients" / "acme").mkdir(parents=True)
    (root / "clients" / "acme" / "brief.txt").write_text("acme brief\n")
    (root / "clients" / "other" / "sub").mkdir(parents=True)
    (root / "clients" / "other" / "secret.txt").write_text("other's secret\n")
    (root / "clients" / "other" / "sub" / "deep.txt").write_text("deeper secret\n")
    return root


def probe(roscoe: Roscoe, root: Path, code: str, *args: str | os.PathLike[str], options: tuple[str, ...] = ()) -> dict:
    """Run a Python probe in a new transaction (cwd: the root); its stdout as JSON."""
    done = roscoe("tx", "run", "--root", root, *options, "--", PY, "-c", code, *map(os.fspath, args), cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def tx_of(done: subprocess.CompletedProcess[bytes]) -> str:
    first = done.stderr.decode().splitlines()[0]
    assert first.startswith("roscoe: tx "), done.stderr
    return first.removeprefix("roscoe: tx ")


def diff(roscoe: Roscoe, tx: str) -> list[str]:
    done = roscoe("tx", "diff", tx, "--json")
    assert done.returncode == 0, done.stderr
    return [f"{c['status']} {c['path']}" for c in json.loads(done.stdout)["changes"]]


# Every way to look into or change a folder, each giving what it saw or its errno.
ATTACK = """
import json, os, sys
d = sys.argv[1]
out = {}
def attempt(name, f):
    try:
        out[name] = f()
    except OSError as e:
        out[name] = e.errno
def write(path, mode):
    with open(path, mode) as f:
        f.write("x")
    return "written"
def read(path):
    with open(path) as f:
        return f.read()
attempt("list", lambda: sorted(os.listdir(d)))
attempt("read", lambda: read(os.path.join(d, "secret.txt")))
attempt("read_deep", lambda: read(os.path.join(d, "sub", "deep.txt")))
attempt("stat_deep", lambda: os.stat(os.path.join(d, "sub", "deep.txt")).st_size)
attempt("create", lambda: write(os.path.join(d, "new.txt"), "w"))
attempt("append", lambda: write(os.path.join(d, "secret.txt"), "a"))
attempt("mkdir", lambda: os.mkdir(os.path.join(d, "made")))
attempt("unlink", lambda: os.unlink(os.path.join(d, "secret.txt")))
attempt("rename", lambda: os.rename(d, d + ".moved"))
attempt("rmdir", lambda: os.rmdir(d))
attempt("control", lambda: read(sys.argv[2]))
print(json.dumps(out))
"""
HIDDEN = {
    "list": [], "read": ENOENT, "read_deep": ENOENT, "stat_deep": ENOENT, "create": EROFS,
    "append": EROFS, "mkdir": EROFS, "unlink": EROFS, "rename": EBUSY, "rmdir": EBUSY,
}


def test_a_hidden_folder_cannot_be_listed_read_or_written(caller: Caller) -> None:
    root = caller.root
    before = snapshot(root)
    done = caller.roscoe("tx", "run", "--root", root, "--hide", "clients/other", "--", PY, "-c", ATTACK,
                         root / "clients" / "other", root / "clients" / "acme" / "brief.txt", cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {**HIDDEN, "control": "acme brief\n"}
    assert diff(caller.roscoe, tx_of(done)) == []
    assert snapshot(root) == before


def test_a_hidden_path_is_named_relative_absolute_or_through_a_symlink(caller: Caller) -> None:
    root = caller.root
    os.symlink("clients/other", root / "other-link")
    code = "import json, os, sys; print(json.dumps([sorted(os.listdir(p)) for p in sys.argv[1:]]))"
    paths = (root / "clients" / "other", root / "other-link")
    assert probe(caller.roscoe, root, code, *paths) == [["secret.txt", "sub"]] * 2  # the control
    for given in ("clients/other", str(root / "clients" / "other"), "other-link", "clients/./other/"):
        assert probe(caller.roscoe, root, code, *paths, options=("--hide", given)) == [[], []], given


def test_a_hidden_path_outside_the_root(caller: Caller) -> None:
    (caller.outside / "keys").mkdir()
    (caller.outside / "keys" / "secret.txt").write_text("key\n")
    (caller.outside / "keys" / "sub").mkdir()
    (caller.outside / "keys" / "sub" / "deep.txt").write_text("deeper\n")
    (caller.outside / "token").write_text("tok\n")
    if caller.name == "user":
        user = lookup_test_user()
        chown_tree(caller.outside, user.pw_uid, user.pw_gid)
    brief = caller.root / "clients" / "acme" / "brief.txt"
    shown = probe(caller.roscoe, caller.root, ATTACK, caller.outside / "keys", brief)
    assert (shown["list"], shown["read"]) == (["secret.txt", "sub"], "key\n")  # the control
    got = probe(caller.roscoe, caller.root, ATTACK, caller.outside / "keys", brief,
                options=("--hide", str(caller.outside / "keys"), "--hide", str(caller.outside / "token")))
    # outside the root all is read-only: EROFS comes before EBUSY
    assert got == {**HIDDEN, "rename": EROFS, "rmdir": EROFS, "control": "acme brief\n"}
    token = "import sys; print(repr(open(sys.argv[1]).read()))"
    done = caller.roscoe("tx", "run", "--root", caller.root, "--hide", caller.outside / "token", "--",
                         PY, "-c", token, caller.outside / "token")
    assert (done.returncode, done.stdout) == (0, b"''\n"), done.stderr


# -- a hidden path the root does not have -----------------------------------------------

MAKE = """
mkdir -p clients/newco/y && echo 1 > clients/newco/x.txt && echo 2 > clients/newco/y/z
echo ok > case1/ok.txt
"""


@pytest.mark.parametrize("backend", ["kernel", "copy", "fuse"])
def test_a_hidden_path_the_root_does_not_have_is_never_staged(roscoe: Roscoe, root: Path, backend: str) -> None:
    with_clients(root)
    before = snapshot(root)
    done = roscoe("tx", "run", "--root", root, "--hide", "clients/newco", "--", "sh", "-c", MAKE,
                  cwd=root, env={"ROSCOE_BACKEND": backend})
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().splitlines()[-1] == (
        f"roscoe: discarded 2 files the run wrote under hidden paths of {root}: clients/newco/x.txt, clients/newco/y/z")
    tx = tx_of(done)
    assert diff(roscoe, tx) == ["added case1/ok.txt"]
    assert snapshot(root) == before
    assert roscoe("tx", "commit", tx, "--yes").returncode == 0
    assert not (root / "clients" / "newco").exists()


def test_a_path_an_earlier_run_deleted_stays_deleted_when_hidden(roscoe: Roscoe, root: Path) -> None:
    # the staged layer holds a whiteout there: the run cannot replace it
    with_clients(root)
    done = roscoe("tx", "run", "--root", root, "--", "rm", "-r", "clients/other", cwd=root)
    tx = tx_of(done)
    deleted = diff(roscoe, tx)
    assert deleted == ["deleted clients/other", "deleted clients/other/secret.txt", "deleted clients/other/sub",
                       "deleted clients/other/sub/deep.txt"]
    again = roscoe("tx", "run", "--tx", tx, "--hide", "clients/other", "--", "sh", "-c",
                   "mkdir clients/other && echo back > clients/other/secret.txt", cwd=root)
    assert again.returncode == 0, again.stderr
    assert again.stderr.decode().splitlines()[-1] == (
        f"roscoe: discarded 1 file the run wrote under hidden paths of {root}: clients/other/secret.txt")
    assert diff(roscoe, tx) == deleted


def test_a_run_cannot_make_the_guard_remove_a_host_file(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    # the run turns a parent of the hidden path into a symlink out of the
    # tree: the guard must not follow it when it clears the hidden path
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x").write_text("host file\n")
    done = roscoe("tx", "run", "--root", root, "--hide", "newco/x", "--", "ln", "-s", victim, "newco", cwd=root)
    assert done.returncode == 0, done.stderr
    assert (victim / "x").read_text() == "host file\n"
    assert diff(roscoe, tx_of(done)) == ["added newco"]


def test_a_killed_run_leaves_nothing_under_a_hidden_path(roscoe: Roscoe, root: Path, home: Path) -> None:
    tx = roscoe.begin(root)
    # a first run picks the backend (a killed first run is issue 15's item 1, not this test's)
    assert roscoe("tx", "run", "--tx", tx, "--", "true").returncode == 0
    run = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "tx", "run", "--tx", tx, "--hide", "clients/newco", "--",
         "sh", "-c", "mkdir -p clients/newco && echo 1 > clients/newco/x.txt && echo ok > case1/ok.txt && sleep 60"],
        cwd=root, env=roscoe.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staged = home / "tx" / tx / "upper" / "case1" / "ok.txt"
    deadline = time.monotonic() + 30
    while not staged.exists():
        assert time.monotonic() < deadline and run.poll() is None, "the run did not start"
        time.sleep(0.05)
    assert (home / "tx" / tx / "upper" / "clients" / "newco" / "x.txt").exists()
    run.send_signal(signal.SIGKILL)
    run.wait()
    time.sleep(0.5)  # the sandbox dies with it (--die-with-parent)
    assert diff(roscoe, tx) == ["added case1/ok.txt", "added clients"]  # clients is not hidden
    assert not (home / "tx" / tx / "upper" / "clients" / "newco").exists()


# -- the config's [run] hide -------------------------------------------------------------

def test_the_configs_run_hide_adds_to_hide(roscoe: Roscoe, root: Path, home: Path) -> None:
    with_clients(root)
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text('[run]\nhide = ["clients/other", "case2/"]\n')
    code = "import json, os, sys; print(json.dumps([sorted(os.listdir(p)) for p in sys.argv[1:]]))"
    dirs = (root / "clients" / "other", root / "case2", root / "case1")
    assert probe(roscoe, root, code, *dirs) == [[], [], ["Pleadings", "notes.md", "old.tmp"]]
    assert probe(roscoe, root, code, *dirs, options=("--hide", "case1")) == [[], [], []]
    events = json.loads(roscoe("audit", "--json").stdout)
    events = events["events"] if isinstance(events, dict) else events
    hides = [e["detail"]["hide"] for e in events if e["kind"] == "run-start"]
    assert hides == [[f"{root}/case2", f"{root}/clients/other"],
                     [f"{root}/case1", f"{root}/case2", f"{root}/clients/other"]]


def test_a_config_run_hide_recorded_at_begin_holds_after_the_file_changes(roscoe: Roscoe, root: Path, home: Path) -> None:
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text('[run]\nhide = ["case1"]\n')
    tx = roscoe.begin(root)
    (home / "config.toml").write_text("")
    done = roscoe("tx", "run", "--tx", tx, "--", "ls", "-A", root / "case1")
    assert (done.returncode, done.stdout) == (0, b""), done.stderr


@pytest.mark.parametrize(("value", "why"), [
    ('["clients/*"]', 'expected a list of plain paths (relative to the root, or absolute; not globs), got a list'),
    ('"case1"', 'expected a list of plain paths (relative to the root, or absolute; not globs), got "case1"'),
    ('[""]', 'expected a list of plain paths (relative to the root, or absolute; not globs), got a list'),
])
def test_a_bad_run_hide_is_a_config_error(roscoe: Roscoe, root: Path, home: Path, value: str, why: str) -> None:
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f"[run]\nhide = {value}\n")
    done = roscoe("tx", "begin", "--root", root)
    assert (done.returncode, done.stderr.decode()) == (
        2, f"roscoe: error: config {home}/config.toml: line 2: [run] hide: {why}\n")


def test_a_config_run_hide_naming_the_root_fails_the_run(roscoe: Roscoe, root: Path, home: Path) -> None:
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f'[run]\nhide = ["{root.parent}"]\n')
    done = roscoe("tx", "run", "--root", root, "--", "true")
    assert done.returncode == 125
    assert done.stderr.decode().splitlines()[-1] == (
        f"roscoe: error: [run] hide {root.parent}: contains the root {root}; hide paths inside it")


# -- the state dir ------------------------------------------------------------------------

LOOK = """
import json, os, sys
out = {}
for p in sys.argv[1:]:
    try:
        out[p] = sorted(os.listdir(p))
    except OSError as e:
        out[p] = e.errno
print(json.dumps(out))
"""


@pytest.mark.parametrize("placement", ["beside the root", "under /tmp", "under HOME", "through a symlink"])
def test_the_state_dir_is_never_visible_to_a_run(tmp_path: Path, placement: str) -> None:
    root = make_tree(tmp_path / "live")
    scratch = Path(tempfile.mkdtemp(prefix="roscoe-state-", dir="/tmp" if placement == "under /tmp" else "/var/tmp"))
    try:
        if placement == "beside the root":
            home = tmp_path / "state"
        elif placement == "under /tmp":
            home = scratch / "state"
        elif placement == "under HOME":
            home = scratch / "alice" / ".local" / "state" / "roscoe"
        else:
            real = scratch / "real-state"
            real.mkdir()
            home = scratch / "state-link"
            os.symlink(real, home)
        roscoe = Roscoe(home)
        if placement == "under HOME":  # the default state dir: ~/.local/state/roscoe
            roscoe.env.pop("ROSCOE_HOME")
            roscoe.env.pop("XDG_STATE_HOME", None)
            roscoe.env["HOME"] = str(scratch / "alice")
        roscoe.begin(root)  # the state dir and its journal exist from here on
        assert (home / "journal.db").exists()
        looked = [str(home), os.path.realpath(home), str(home / "tx")]
        done = roscoe("tx", "run", "--root", root, "--", PY, "-c", LOOK, *looked, cwd=root)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {str(home): [], os.path.realpath(home): [], str(home / "tx"): ENOENT}
    finally:
        remove_tree(scratch)


# -- writes that vanish with the run ------------------------------------------------------

def shm_dirs() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("roscoe-run-")}


def test_files_a_run_wrote_in_its_tmp_are_reported_as_discarded(caller: Caller) -> None:
    # a killed run's leftover dir on /dev/shm (see cowfs.sandbox.RunTmp) is swept
    dead = Path(f"/dev/shm/roscoe-run-{gone_pid()}-0badc0de")
    (dead / "upper").mkdir(parents=True)
    (dead / "upper" / "left.txt").write_text("left\n")
    if caller.name == "user":
        user = lookup_test_user()
        chown_tree(dead, user.pw_uid, user.pw_gid)
    before = shm_dirs() - {dead.name}
    name = f"roscoe-discard-{os.getpid()}-{caller.name}"
    many = f"mkdir /tmp/{name} && for f in d c b a; do echo $f > /tmp/{name}/$f.txt; done && mkdir /tmp/{name}/empty"
    report = caller.outside / "report.json"
    done = caller.roscoe("tx", "run", "--root", caller.root, "--report", report, "--", "sh", "-c", many)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().splitlines()[-1] == (
        f"roscoe: discarded 4 files the run wrote outside {caller.root} (under /tmp: {name}/a.txt, {name}/b.txt,"
        f" {name}/c.txt, ...); use --writable PATH to keep them")
    assert json.loads(report.read_text())["discarded"] == [f"/tmp/{name}/{f}.txt" for f in "abcd"]
    assert not os.path.exists(f"/tmp/{name}")
    tx = tx_of(done)
    assert not (caller.roscoe.home / "tx" / tx / "run-tmp").exists()
    assert shm_dirs() == before

    one = caller.roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", f"echo 1 > /tmp/{name}")
    assert one.stderr.decode().splitlines()[-1] == (
        f"roscoe: discarded 1 file the run wrote outside {caller.root} (under /tmp: {name}); use --writable PATH"
        " to keep them")
    quiet = caller.roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", f"ls /tmp > /dev/null; rm -f /tmp/{name}")
    assert [line for line in quiet.stderr.decode().splitlines() if "discarded" in line] == []


# -- the audit trail and the report ----------------------------------------------------------

def test_the_run_start_event_and_the_report_list_the_hidden_paths(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    report = tmp_path / "report.json"
    done = roscoe("tx", "run", "--root", root, "--hide", outside, "--hide", "case2", "--hide", "case2/empty",
                  "--hide", "no/such", "--report", report, "--", "true", cwd=root)
    assert done.returncode == 0, done.stderr
    hidden = sorted([str(outside), f"{root}/case2", f"{root}/no/such"])
    events = json.loads(roscoe("audit", "--json").stdout)
    events = events["events"] if isinstance(events, dict) else events
    start = [e["detail"] for e in events if e["kind"] == "run-start"]
    assert start == [{"run": 1, "argv": ["true"], "cwd": str(root), "backend": "kernel", "hide": hidden}]
    assert json.loads(report.read_text())["hide"] == hidden


# -- tx plan ------------------------------------------------------------------------------

def plan_file(tmp_path: Path, *ops: dict) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"version": 1, "ops": list(ops)}))
    return path


@pytest.mark.parametrize(("ops", "index", "op", "reason"), [
    ([{"op": "copy", "from": "case1/notes.md", "to": "case2/n.md"}], 0, "copy",
     "case1/notes.md is hidden from this run (case1)"),
    ([{"op": "mkdir", "path": "x"}, {"op": "write", "path": "case1/new.txt", "content": "x"}], 1, "write",
     "case1/new.txt is hidden from this run (case1)"),
    ([{"op": "copy", "from": "link/notes.md", "to": "n.md"}], 0, "copy",
     "link/notes.md is hidden from this run (case1)"),
    ([{"op": "delete", "path": "case3"}], 0, "delete", "case3 holds case3/inner, which is hidden from this run"),
    ([{"op": "mkdir", "path": "new/dir"}], 0, "mkdir", "new/dir is hidden from this run (new)"),
])
@pytest.mark.parametrize("spelling", ["fast", "typer", "tx"])
def test_a_plan_op_naming_a_hidden_path_fails(
    roscoe: Roscoe, root: Path, tmp_path: Path, ops: list, index: int, op: str, reason: str, spelling: str,
) -> None:
    os.symlink("case1", root / "link")
    (root / "case3" / "inner").mkdir(parents=True)
    hides = ("--hide", "case1", "--hide", "case3/inner", "--hide", "new")
    if spelling == "typer":
        hides = tuple(f"--hide={h}" for h in hides[1::2])
    plan = plan_file(tmp_path, *ops)
    tx = roscoe.begin(root) if spelling == "tx" else None
    before = snapshot(root)
    where = ("--tx", tx) if tx else ("--root", root)
    done = roscoe("tx", "plan", *where, *hides, plan)
    assert (done.returncode, done.stdout) == (2, b""), done.stderr
    assert done.stderr.decode().splitlines()[-1] == (
        f"roscoe: error: plan ops[{index}] ({op}): {reason}; nothing of the plan was staged")
    assert snapshot(root) == before
    listed = json.loads(roscoe("tx", "list", "--json").stdout)
    assert [t["tx"] for t in listed if t["state"] == "open"] == ([tx] if tx else [])
    if tx:
        assert diff(roscoe, tx) == []


def test_a_plan_reaching_a_hidden_path_through_a_symlink_fails_inside_the_run(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    # with --tx the plan is checked inside the run, against the view it sees
    tx = roscoe.begin(root)
    assert roscoe("tx", "run", "--tx", tx, "--", "ln", "-s", "case1", root / "link").returncode == 0
    plan = plan_file(tmp_path, {"op": "copy", "from": "link/notes.md", "to": "n.md"})
    done = roscoe("tx", "plan", "--tx", tx, "--hide", "case1", plan)
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().splitlines()[-1] == (
        "roscoe: error: plan ops[0] (copy): link/notes.md is hidden from this run (case1); nothing of the plan was"
        " staged")
    assert diff(roscoe, tx) == ["added link"]


def test_a_plan_dry_run_hides_too(roscoe: Roscoe, root: Path, tmp_path: Path, home: Path) -> None:
    plan = plan_file(tmp_path, {"op": "copy", "from": "case1/notes.md", "to": "n.md"})
    done = roscoe("tx", "plan", "--root", root, "--dry-run", "--hide", "case1", plan)
    assert done.returncode == 2
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text('[run]\nhide = ["case1"]\n')
    done = roscoe("tx", "plan", "--root", root, "--dry-run", plan)
    assert done.returncode == 2
    assert done.stderr.decode().splitlines()[-1] == (
        "roscoe: error: plan ops[0] (copy): case1/notes.md is hidden from this run (case1); nothing of the plan"
        " was staged")


# -- bad values ---------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "why"), [
    ("/", "contains the root {root}; hide paths inside it"),
    (".", "is the root {root}; hide paths inside it"),
    ("../x", "leaves the root {root}"),
    ("/proc/sys", "/proc/sys is on a kernel filesystem"),
    ("case*", "a plain path is expected, not a glob"),
    ("", "expected a path"),
])
def test_a_bad_hide_is_refused_before_a_transaction_opens(roscoe: Roscoe, root: Path, tmp_path: Path, given: str, why: str) -> None:
    shown = f"--hide {given}" if given else "--hide ''"
    done = roscoe("tx", "run", "--root", root, "--hide", given, "--", "true")
    assert (done.returncode, done.stderr.decode()) == (125, f"roscoe: error: {shown}: {why.format(root=root)}\n")
    plan = plan_file(tmp_path, {"op": "mkdir", "path": "x"})
    done = roscoe("tx", "plan", "--root", root, "--hide", given, plan)
    assert (done.returncode, done.stderr.decode()) == (2, f"roscoe: error: {shown}: {why.format(root=root)}\n")
    assert json.loads(roscoe("tx", "list", "--json").stdout) == []


def test_a_writable_path_inside_a_hidden_one_is_refused(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "out"
    (outside / "cache").mkdir(parents=True)
    done = roscoe("tx", "run", "--root", root, "--hide", outside, "--writable", outside / "cache", "--", "true")
    assert (done.returncode, done.stderr.decode()) == (
        125, f"roscoe: error: --writable {outside / 'cache'}: is inside the hidden path {outside}\n")


def test_a_hide_outside_the_root_that_does_not_exist_is_a_warning(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--hide", "/var/tmp/roscoe-no-such-dir", "--", "true")
    assert done.returncode == 0
    assert "roscoe: warning: --hide /var/tmp/roscoe-no-such-dir: does not exist; nothing to hide there" in (
        done.stderr.decode().splitlines())


def test_every_parser_takes_hide() -> None:
    from cli.run import parse_run_args

    assert parse_run_args(["--hide", "a", "--hide=b", "--", "true"]).hide == ["a", "b"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for command in (["tx", "shell"], ["tx", "plan"]):
        done = subprocess.run([sys.executable, "-m", "cli.main", *command, "--help"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert "--hide PATH" in done.stdout, command
