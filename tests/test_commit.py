"""Commit, rollback, conflicts and bad input, driven through the real CLI.

Every outcome is exact: the live tree is compared byte for byte (type, mode,
mtime, owner, content) with snapshot(), against a plain copy (`cp -a`) to
which the same shell command was applied.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from tests.support import transactions
from tests.support.roscoe import Roscoe
from tests.support.system import REPO
from tests.support.trees import snapshot

T0 = 1_700_000_000_000_000_000  # the mtime make_tree gives every file
STAMP = "touch -h -d @1800000000"  # what every run stamps on what it writes
P = "case1/P x"  # the path of the table: nested, with a space


# --- helpers -----------------------------------------------------------------


def with_p(script: str) -> str:
    """``script`` after ``set -e`` and with ``$P`` set: what every script here runs."""
    return f"set -e; P={shquote(P)}; {script}"


def script_argv(script: str, where: Path) -> list[str]:
    """``sh -c SCRIPT`` in a plain copy of the root at ``where``."""
    return ["sh", "-c", f'set -e; cd "$1"; {with_p(script)}', "sh", str(where)]


def shquote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def run_tx(roscoe: Roscoe, root: Path, script: str, *extra: str, tx: str | None = None) -> tuple[str, subprocess.CompletedProcess[bytes]]:
    """transactions.run_tx of ``script`` with ``set -e`` and ``$P``."""
    return transactions.run_tx(roscoe, root, with_p(script), *extra, tx=tx)


def staged(roscoe: Roscoe, root: Path, script: str, tx: str | None = None) -> str:
    """transactions.staged of ``script`` with ``set -e`` and ``$P``."""
    return transactions.staged(roscoe, root, with_p(script), tx=tx)


def applied(root: Path, dest: Path, *scripts: str) -> dict[str, tuple[object, ...]]:
    """Snapshot of a plain copy of ``root`` at ``dest`` after ``scripts``."""
    subprocess.run(["cp", "-a", str(root), str(dest)], check=True)
    for script in scripts:
        subprocess.run(script_argv(script, dest), check=True, cwd=dest)
    return snapshot(dest)


def ok(done: subprocess.CompletedProcess[bytes], code: int = 0) -> subprocess.CompletedProcess[bytes]:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr.decode(errors="replace"))
    return done


def verified(roscoe: Roscoe) -> None:
    done = roscoe("verify", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0, report
    assert report["ok"] is True and report["problems"] == []


def state(roscoe: Roscoe, tx: str) -> dict[str, object]:
    return json.loads(ok(roscoe("tx", "show", tx, "--json")).stdout)


def commit(roscoe: Roscoe, tx: str) -> subprocess.CompletedProcess[bytes]:
    return roscoe("tx", "commit", tx, "--yes")


def rollback(roscoe: Roscoe, tx: str, *extra: str) -> str:
    """Roll back ``tx``; must succeed; returns the rollback's id (its only stdout)."""
    done = ok(roscoe("tx", "rollback", tx, "--yes", *extra))
    match = re.fullmatch(rb"([0-9a-f]{12})\n", done.stdout)
    assert match, done.stdout
    return match.group(1).decode()


def one_error_line(stderr: bytes) -> str:
    """stderr is exactly one ``roscoe: error: ...`` line (no traceback)."""
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("roscoe: error: "), text
    return lines[0]


def put(path: Path, data: bytes, mode: int = 0o644, mtime_ns: int = T0) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def link(target: str, path: Path, mtime_ns: int = T0) -> None:
    os.symlink(target, path)
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


# --- 1. the table: what the run made x what the live tree has -----------------


def live_file(p: Path) -> None:
    put(p, b"live file\n", 0o640)


def live_dir(p: Path) -> None:
    (p / "sub").mkdir(parents=True)
    put(p / "a.txt", b"live a\n", 0o600)
    put(p / "sub" / "b.txt", b"live b\n")
    link("../a.txt", p / "sub" / "link")
    os.chmod(p / "sub", 0o700)
    os.chmod(p, 0o750)


def live_symlink(p: Path) -> None:
    link("../case2", p)  # to a directory of the tree: writing through it would land in case2


def live_absent(p: Path) -> None:
    pass


LIVE: dict[str, Callable[[Path], None]] = {
    "file": live_file, "dir": live_dir, "symlink": live_symlink, "absent": live_absent,
}

RUN = {
    # a file (written in place when it already is a plain file: a copy-up)
    "file": f'{{ [ -f "$P" ] && [ ! -L "$P" ]; }} || rm -rf "$P"; printf "run file\\n" > "$P"; '
            f'chmod 0600 "$P"; {STAMP} "$P"',
    # a directory with a child file (kept, not replaced, when it already is a directory)
    "dir": f'{{ [ -d "$P" ] && [ ! -L "$P" ]; }} || {{ rm -rf "$P"; mkdir "$P"; }}; chmod 0751 "$P"; '
           f'printf "child\\n" > "$P/child.txt"; chmod 0644 "$P/child.txt"; {STAMP} "$P/child.txt"',
    "symlink": f'rm -rf "$P"; ln -s "new target/../x" "$P"; {STAMP} "$P"',
    "absent": 'rm -rf "$P"',
    # an opaque directory: the old one removed, a new one with a different child in its place
    "opaque": f'rm -rf "$P"; mkdir "$P"; chmod 0755 "$P"; '
              f'printf "other\\n" > "$P/other.txt"; chmod 0640 "$P/other.txt"; {STAMP} "$P/other.txt"',
}
# The same, with a new subdirectory named like one of the old directory's: the
# old sub/ and its children are gone with the old P, whatever the new sub/ holds.
RUN["opaque-with-same-named-subdir"] = (
    f'rm -rf "$P"; mkdir "$P" "$P/sub"; chmod 0755 "$P"; chmod 0711 "$P/sub"; '
    f'printf "other\\n" > "$P/sub/other.txt"; chmod 0640 "$P/sub/other.txt"; {STAMP} "$P/sub/other.txt"'
)

CELLS = [pytest.param(made, live, id=f"run-{made}-over-live-{live}") for made in RUN for live in LIVE
         if made != "opaque-with-same-named-subdir" or live == "dir"]


@pytest.mark.parametrize(("made", "live"), CELLS)
def test_commit_rollback_and_rollback_of_rollback(roscoe: Roscoe, root: Path, tmp_path: Path, made: str, live: str) -> None:
    LIVE[live](root / P)
    before = snapshot(root)
    tx = staged(roscoe, root, RUN[made])
    assert snapshot(root) == before  # a run never touches the live tree
    expected = applied(root, tmp_path / "plain", RUN[made])

    if made == "absent" and live == "absent":  # deleting what is not there: nothing to do
        diff = json.loads(ok(roscoe("tx", "diff", tx, "--json")).stdout)
        assert diff["changes"] == []
        ok(commit(roscoe, tx))
        assert snapshot(root) == before == expected
        verified(roscoe)
        return

    ok(commit(roscoe, tx))
    assert snapshot(root) == expected
    verified(roscoe)

    back = rollback(roscoe, tx)
    assert snapshot(root) == before
    verified(roscoe)

    again = rollback(roscoe, back)
    assert snapshot(root) == expected
    verified(roscoe)
    log = json.loads(ok(roscoe("tx", "log", "--json")).stdout)
    assert [(e["tx"], e["state"], e["rolls_back"]) for e in log] == [
        (again, "committed", back), (back, "committed", tx), (tx, "committed", None)]


# --- 1b. new bytes are linked, not copied -------------------------------------

TAGGED = (f'printf "edited\\n" > case1/notes.md; {STAMP} case1/notes.md; '
          "python3 -c 'import os; open(\"big.bin\", \"wb\").write(bytes(range(256)) * 1200); "
          "os.setxattr(\"big.bin\", \"user.note\", b\"from the run\")'; "
          f"{STAMP} big.bin")


def test_a_committed_file_is_the_staged_inode_without_its_attributes(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    expected = applied(root, tmp_path / "plain", TAGGED)
    tx = staged(roscoe, root, TAGGED)
    upper = home / "tx" / tx / "upper"
    # The copied-up file carries the overlay's own attribute; the new one, the run's.
    assert [a for a in os.listxattr(upper / "case1" / "notes.md") if "overlay" in a] != []
    assert os.listxattr(upper / "big.bin") == ["user.note"]
    inodes = {p: os.stat(upper / p).st_ino for p in ("case1/notes.md", "big.bin")}
    ok(commit(roscoe, tx))
    assert snapshot(root) == expected
    for p, ino in inodes.items():
        st = os.stat(root / p)
        assert (st.st_ino, st.st_nlink) == (ino, 1), p  # the same inode; the staging layer is gone
        assert os.listxattr(root / p) == [], p  # what a copy would have: none of them
    verified(roscoe)
    back = rollback(roscoe, tx)
    rollback(roscoe, back)
    assert snapshot(root) == expected
    verified(roscoe)


def blob_inodes(home: Path) -> dict[str, tuple[int, int]]:
    """Every blob: its digest, inode and link count."""
    return {p.parent.name + p.name: (p.stat().st_ino, p.stat().st_nlink)
            for p in (home / "blobs").glob("??/*") if not p.name.startswith(".")}


def test_a_replaced_live_file_becomes_its_own_image(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    # notes.md gets new bytes and old.tmp is deleted: their inodes become the
    # blobs. intake form.txt only changes mode: its inode stays live, so its
    # image is a copy.
    script = f'{EDIT_NOTES}; chmod 0600 "case2/intake form.txt"'
    expected = applied(root, tmp_path / "plain", script)
    before = snapshot(root)
    old = {p: (os.stat(root / p).st_ino, xxhash.xxh3_128_hexdigest((root / p).read_bytes()))
           for p in ("case1/notes.md", "case1/old.tmp", "case2/intake form.txt")}
    tx = staged(roscoe, root, script)
    ok(commit(roscoe, tx))
    assert snapshot(root) == expected
    blobs = blob_inodes(home)
    assert blobs[old["case1/notes.md"][1]] == (old["case1/notes.md"][0], 1)
    assert blobs[old["case1/old.tmp"][1]] == (old["case1/old.tmp"][0], 1)
    intake = old["case2/intake form.txt"]
    assert blobs[intake[1]][0] != intake[0] and blobs[intake[1]][1] == 1
    assert not (home / "blobs" / ".shared").exists() or list((home / "blobs" / ".shared").iterdir()) == []
    verified(roscoe)
    # The rollback links the committed inodes the same way, and puts back the old bytes.
    new_inode = os.stat(root / "case1/notes.md").st_ino
    rollback(roscoe, tx)
    assert snapshot(root) == before
    assert blob_inodes(home)[xxhash.xxh3_128_hexdigest(b"edited\n")] == (new_inode, 1)
    verified(roscoe)


def test_files_a_run_hard_linked_are_committed_as_two_files(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    script = f'printf "one\\n" > a.txt; ln a.txt b.txt; {STAMP} a.txt'
    expected = applied(root, tmp_path / "plain", script)
    tx = staged(roscoe, root, script)
    ok(commit(roscoe, tx))
    assert snapshot(root) == expected
    a, b = os.stat(root / "a.txt"), os.stat(root / "b.txt")
    assert a.st_ino != b.st_ino and (a.st_nlink, b.st_nlink) == (1, 1)
    verified(roscoe)
    (root / "a.txt").write_text("changed later\n")
    assert (root / "b.txt").read_bytes() == b"one\n"


def test_a_commit_copies_when_the_state_dir_is_on_another_filesystem(root: Path, tmp_path: Path) -> None:
    home = tmp_path / "tmpfs-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(home)], check=True)
    try:
        roscoe = Roscoe(home)
        expected = applied(root, tmp_path / "plain", TAGGED)
        before = snapshot(root)
        tx = staged(roscoe, root, TAGGED)
        ok(commit(roscoe, tx))
        assert snapshot(root) == expected
        assert os.listxattr(root / "big.bin") == []
        verified(roscoe)
        rollback(roscoe, tx)
        assert snapshot(root) == before
        verified(roscoe)
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


# --- 2. tx run --commit --yes ----------------------------------------------------

EDIT_NOTES = f'printf "edited\\n" > case1/notes.md; {STAMP} case1/notes.md; rm case1/old.tmp'


def test_run_commit_commits_when_the_command_exits_0(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    expected = applied(root, tmp_path / "plain", EDIT_NOTES)
    tx, done = run_tx(roscoe, root, EDIT_NOTES, "--commit", "--yes")
    ok(done)
    assert f"roscoe: tx {tx} committed: 2 changes".encode() in done.stderr
    assert snapshot(root) == expected
    assert state(roscoe, tx)["state"] == "committed"
    verified(roscoe)


def test_run_commit_on_a_begun_tx(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    expected = applied(root, tmp_path / "plain", EDIT_NOTES)
    tx = roscoe.begin(root)
    got, done = run_tx(roscoe, root, EDIT_NOTES, "--commit", "--yes", tx=tx)
    assert got == tx
    ok(done)
    assert snapshot(root) == expected
    assert state(roscoe, tx)["state"] == "committed"


def test_run_commit_leaves_the_tx_open_when_the_command_fails(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    before = snapshot(root)
    tx, done = run_tx(roscoe, root, EDIT_NOTES + "; exit 7", "--commit", "--yes")
    assert done.returncode == 7, done.stderr
    assert f"roscoe: tx {tx} not committed: the command exited 7; it stays open".encode() in done.stderr
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"
    assert json.loads(ok(roscoe("tx", "log", "--json")).stdout) == []
    # still committable by hand afterwards
    expected = applied(root, tmp_path / "plain", EDIT_NOTES)
    ok(commit(roscoe, tx))
    assert snapshot(root) == expected


# --- 3. conflicts ------------------------------------------------------------------

TARGET = "case1/notes.md"
WRITE_TARGET = f'printf "from the run\\n" > {TARGET}; {STAMP} {TARGET}'


def sneaky_same_size_same_mtime(p: Path) -> None:
    st = os.lstat(p)
    p.write_bytes(b"# NOTES\n")  # same length as "# notes\n"
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


LIVE_EDITS: dict[str, Callable[[Path], None]] = {
    "content": lambda p: put(p, b"edited live, meanwhile\n"),
    "same-size-and-mtime": sneaky_same_size_same_mtime,
    "mode": lambda p: os.chmod(p, 0o600),
    "mtime": lambda p: os.utime(p, ns=(T0 + 1, T0 + 1)),
    "deleted": lambda p: p.unlink(),
    "now-a-dir": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("edit", list(LIVE_EDITS))
def test_commit_refuses_when_the_live_path_changed_after_the_run(roscoe: Roscoe, root: Path, edit: str) -> None:
    tx = staged(roscoe, root, WRITE_TARGET + '; printf "added\\n" > case2/new.txt')
    LIVE_EDITS[edit](root / TARGET)
    before = snapshot(root)
    done = commit(roscoe, tx)
    assert done.returncode == 3, done.stderr
    line = one_error_line(done.stderr)
    assert TARGET in line and "case2/new.txt" not in line
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"


def test_commit_refuses_a_path_added_live_that_the_run_also_added(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, f'printf "run\\n" > case2/new.txt; {STAMP} case2/new.txt')
    put(root / "case2" / "new.txt", b"live\n")
    before = snapshot(root)
    done = commit(roscoe, tx)
    assert done.returncode == 3, done.stderr
    assert "case2/new.txt" in one_error_line(done.stderr)
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"


def test_commit_refuses_when_the_live_parent_was_removed(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, f'printf "new\\n" > case1/Pleadings/new.txt; {STAMP} case1/Pleadings/new.txt')
    shutil.rmtree(root / "case1" / "Pleadings")
    before = snapshot(root)
    done = commit(roscoe, tx)
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"
    assert done.returncode == 3, done.stderr
    assert "case1/Pleadings" in one_error_line(done.stderr)


def test_commit_refuses_to_delete_a_dir_that_gained_a_child_live(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "rm -r case2")
    put(root / "case2" / "late.txt", b"filed after the run\n")
    before = snapshot(root)
    done = commit(roscoe, tx)
    assert done.returncode == 3, done.stderr
    assert "case2/late.txt" in one_error_line(done.stderr)
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"


def test_a_live_edit_elsewhere_is_no_conflict(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    tx = staged(roscoe, root, WRITE_TARGET)
    put(root / "case2" / "intake form.txt", b"edited live elsewhere\n")
    expected = applied(root, tmp_path / "plain", WRITE_TARGET)
    ok(commit(roscoe, tx))
    assert snapshot(root) == expected


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    put(d / "secret.txt", b"outside the root\n", 0o600)
    put(d / "complaint.txt", b"outside complaint\n", 0o600)
    return d


def test_commit_never_writes_through_a_live_symlink_to_a_file_outside(roscoe: Roscoe, root: Path, outside: Path) -> None:
    tx = staged(roscoe, root, WRITE_TARGET)
    outside_before = snapshot(outside)
    (root / TARGET).unlink()
    link(str(outside / "secret.txt"), root / TARGET)
    before = snapshot(root)
    done = commit(roscoe, tx)
    assert done.returncode == 3, done.stderr
    assert TARGET in one_error_line(done.stderr)
    assert snapshot(outside) == outside_before
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"


def test_commit_never_writes_through_a_live_parent_symlinked_outside(roscoe: Roscoe, root: Path, outside: Path, tmp_path: Path) -> None:
    path = "case1/Pleadings/complaint.txt"
    tx = staged(roscoe, root, f'printf "amended\\n" > {shquote(path)}; {STAMP} {shquote(path)}')
    outside_before = snapshot(outside)
    os.rename(root / "case1" / "Pleadings", tmp_path / "moved-away")
    link(str(outside), root / "case1" / "Pleadings")
    before = snapshot(root)
    done = commit(roscoe, tx)
    assert done.returncode == 3, done.stderr
    assert path in one_error_line(done.stderr)
    assert snapshot(outside) == outside_before
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"


def commit_at_once(roscoe: Roscoe, *txs: str) -> list[subprocess.CompletedProcess[bytes]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli.main", "tx", "commit", tx, "--yes"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=roscoe.env, cwd=REPO,
        )
        for tx in txs
    ]
    out = []
    for p, tx in zip(procs, txs):
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess([tx], p.returncode, stdout, stderr))
    return out


def test_two_commits_at_once_of_different_paths_both_land(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    one = WRITE_TARGET + "; rm case1/old.tmp"
    two = f'printf "two\\n" > "case2/intake form.txt"; {STAMP} "case2/intake form.txt"; mkdir case2/new; ' \
          f'printf "n\\n" > case2/new/n.txt; {STAMP} case2/new/n.txt'
    expected = applied(root, tmp_path / "plain", one, two)
    a, b = staged(roscoe, root, one), staged(roscoe, root, two)
    results = commit_at_once(roscoe, a, b)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert snapshot(root) == expected
    assert {state(roscoe, a)["state"], state(roscoe, b)["state"]} == {"committed"}
    verified(roscoe)


def test_two_commits_at_once_of_the_same_path_one_wins(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    one = f'printf "one\\n" > {TARGET}; {STAMP} {TARGET}'
    two = f'printf "two two\\n" > {TARGET}; {STAMP} {TARGET}; printf "x\\n" > case2/x.txt; {STAMP} case2/x.txt'
    a, b = staged(roscoe, root, one), staged(roscoe, root, two)
    base = tmp_path / "base"
    subprocess.run(["cp", "-a", str(root), str(base)], check=True)
    results = commit_at_once(roscoe, a, b)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 3], [(r.returncode, r.stderr) for r in results]
    winner, loser = (a, b) if results[0].returncode == 0 else (b, a)
    lost = results[1] if winner == a else results[0]
    assert TARGET in one_error_line(lost.stderr)
    assert snapshot(root) == applied(base, tmp_path / "plain", one if winner == a else two)
    assert state(roscoe, winner)["state"] == "committed"
    assert state(roscoe, loser)["state"] == "open"
    verified(roscoe)


# --- 4. rollback refusals --------------------------------------------------------

MANY = (
    f'printf "edited\\n" > case1/notes.md; {STAMP} case1/notes.md; rm case1/old.tmp; '
    f'printf "new\\n" > case1/new.txt; chmod 0600 case1/new.txt; {STAMP} case1/new.txt; '
    f'rm -r case2/empty; mkdir case2/made; printf "m\\n" > case2/made/m.txt; {STAMP} case2/made/m.txt; '
    f'rm case2/notes-link; ln -s elsewhere case2/notes-link; {STAMP} case2/notes-link; chmod 0700 case2/script.sh'
)

LATER = {
    "modifies": f'printf "later\\n" > case1/notes.md; {STAMP} case1/notes.md',
    "deletes-an-added-file": "rm case1/new.txt",
    "adds-a-deleted-file": f'printf "back, other\\n" > case1/old.tmp; {STAMP} case1/old.tmp',
    "modifies-in-an-added-dir": f'printf "m2\\n" > case2/made/m.txt; {STAMP} case2/made/m.txt',
    "links-over-an-added-file": "rm case1/new.txt; ln -s notes.md case1/new.txt",
    "puts-a-dir-at-an-added-file": "rm case1/new.txt; mkdir case1/new.txt",
}
LATER_PATH = {
    "modifies": "case1/notes.md", "deletes-an-added-file": "case1/new.txt",
    "adds-a-deleted-file": "case1/old.tmp", "modifies-in-an-added-dir": "case2/made/m.txt",
    "links-over-an-added-file": "case1/new.txt", "puts-a-dir-at-an-added-file": "case1/new.txt",
}


@pytest.mark.parametrize("later", list(LATER))
def test_rollback_refuses_paths_changed_since_unless_forced(roscoe: Roscoe, root: Path, later: str) -> None:
    before = snapshot(root)
    t = staged(roscoe, root, MANY)
    ok(commit(roscoe, t))
    t2 = staged(roscoe, root, LATER[later])
    ok(commit(roscoe, t2))
    after_t2 = snapshot(root)

    done = roscoe("tx", "rollback", t, "--yes")
    assert done.returncode == 3, done.stderr
    assert done.stdout == b""
    line = one_error_line(done.stderr)
    assert LATER_PATH[later] in line and t2 in line
    assert snapshot(root) == after_t2

    forced = rollback(roscoe, t, "--force")
    assert snapshot(root) == before
    assert state(roscoe, forced)["rolls_back"] == t
    verified(roscoe)


def test_forced_rollback_never_drops_a_file_it_did_not_write(roscoe: Roscoe, root: Path) -> None:
    """T added case2/made/; T2 put another file in it. Rolling T back by force
    cannot remove case2/made without deleting T2's file: it either keeps it
    or fails as a whole, naming case2/made, with the tree as it was."""
    t = staged(roscoe, root, MANY)
    ok(commit(roscoe, t))
    ok(commit(roscoe, staged(roscoe, root, f'printf "more\\n" > case2/made/more.txt; {STAMP} case2/made/more.txt')))
    after = snapshot(root)
    done = roscoe("tx", "rollback", t, "--yes", "--force")
    assert done.returncode == 3, done.stderr  # --force overrides drift, never foreign files
    line = one_error_line(done.stderr)
    assert "it would have to touch paths it never wrote" in line and "case2/made" in line, line
    assert snapshot(root) == after
    verified(roscoe)


# --- 5. bad input ------------------------------------------------------------------


def blob_file(home: Path, data: bytes) -> Path:
    digest = xxhash.xxh3_128_hexdigest(data)
    return home / "blobs" / digest[:2] / digest[2:]


def damage(path: Path) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(b"other bytes entirely\n")


def remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("harm", [damage, remove], ids=["corrupt-blob", "missing-blob"])
def test_rollback_needing_a_bad_blob_fails_and_leaves_the_tree(roscoe: Roscoe, root: Path, home: Path, harm: Callable[[Path], None]) -> None:
    old = (root / "case1" / "notes.md").read_bytes()
    t = staged(roscoe, root, MANY)
    ok(commit(roscoe, t))
    committed = snapshot(root)
    blob = blob_file(home, old)
    assert blob.is_file()
    harm(blob)
    digest = blob.parent.name + blob.name

    done = roscoe("verify")
    assert done.returncode == 1, done.stdout
    assert digest in done.stdout.decode()
    report = json.loads(roscoe("verify", "--json").stdout)
    assert report["ok"] is False
    assert [p["kind"] for p in report["problems"]] == ["blob"]
    assert digest in report["problems"][0]["detail"]

    done = roscoe("tx", "rollback", t, "--yes")
    assert done.returncode == 1, done.stderr
    assert done.stdout == b""
    assert digest in one_error_line(done.stderr)
    assert snapshot(root) == committed
    log = json.loads(ok(roscoe("tx", "log", "--json")).stdout)
    assert [r["tx"] for r in log] == [t]
    assert not any(p.name.startswith(".roscoe-") for p in root.rglob("*"))


@pytest.mark.parametrize("harm", [None, damage], ids=["whole", "corrupt-blob"])
def test_a_rollback_of_many_bytes_checks_its_images_in_helper_threads(
        roscoe: Roscoe, root: Path, home: Path, harm: Callable[[Path], None] | None) -> None:
    """Over 16 MiB of images to copy back, helper threads check them ahead of
    the copy (cowfs.hashahead): the same bytes land, and a damaged image is
    the same error, with the tree as it was."""
    big = os.urandom(24 << 20)
    (root / "case1" / "exhibit.bin").write_bytes(big)
    os.utime(root / "case1" / "exhibit.bin", ns=(1_700_000_000_000_000_000,) * 2)
    before = snapshot(root)
    t = staged(roscoe, root, f"head -c 100 /dev/zero | dd of=case1/exhibit.bin conv=notrunc status=none; "
                             f"{STAMP} case1/exhibit.bin; {MANY}")
    ok(commit(roscoe, t))
    committed = snapshot(root)
    if harm is None:
        rollback(roscoe, t)
        assert snapshot(root) == before
        verified(roscoe)
        return
    notes = b"# notes\n"
    blob = blob_file(home, notes)
    assert blob.is_file() and blob_file(home, big).is_file()
    harm(blob)
    done = roscoe("tx", "rollback", t, "--yes")
    assert (done.returncode, done.stdout) == (1, b"")
    line = one_error_line(done.stderr)
    found = xxhash.xxh3_128_hexdigest(b"other bytes entirely\n")
    assert f"blob {xxhash.xxh3_128_hexdigest(notes)} is damaged (its bytes hash to {found})" in line, line
    assert snapshot(root) == committed
    assert not any(p.name.startswith(".roscoe-") for p in root.rglob("*"))


def test_a_write_through_a_descriptor_kept_open_over_the_commit_damages_only_the_image(roscoe: Roscoe, root: Path, home: Path) -> None:
    # The README's caveat of linked images: a writer that kept the old file
    # open writes into its image. The damage is named, never restored.
    old = (root / "case1" / "notes.md").read_bytes()
    t = staged(roscoe, root, MANY)
    with open(root / "case1" / "notes.md", "ab") as kept:
        ok(commit(roscoe, t))
        kept.write(b"written late\n")
    committed = snapshot(root)
    digest = xxhash.xxh3_128_hexdigest(old)
    report = json.loads(roscoe("verify", "--json").stdout)
    assert [(p["kind"], digest in p["detail"]) for p in report["problems"]] == [("blob", True)]
    done = roscoe("tx", "rollback", t, "--yes")
    assert (done.returncode, done.stdout) == (1, b"")
    assert digest in one_error_line(done.stderr)
    assert snapshot(root) == committed


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Paths to `chattr +i`; made mutable again afterwards, whatever happened."""
    if shutil.which("chattr") is None:
        pytest.fail("chattr (e2fsprogs) is missing")
    paths: list[Path] = []
    yield paths
    for p in paths:
        subprocess.run(["chattr", "-i", str(p)], check=False)


OBSTACLES = {
    # the commit must replace this file
    "immutable-file": ("case2/intake form.txt", ("case2/intake form.txt",)),
    # the commit must create a file in this directory (sorted last: applied last)
    "immutable-dir": ("zz late", ("zz late/new.txt", "zz late")),
}


@pytest.mark.parametrize("obstacle", list(OBSTACLES))
def test_a_commit_that_fails_midway_puts_the_tree_back(roscoe: Roscoe, root: Path, tmp_path: Path, immutable: list[Path], obstacle: str) -> None:
    # Sorted, case1/... is applied before case2/...: the failure comes after
    # earlier paths were already written, which must be undone.
    (root / "zz late").mkdir()
    put(root / "zz late" / "kept.txt", b"kept\n")
    script = MANY + (f'; printf "late\\n" > "case2/intake form.txt"; {STAMP} "case2/intake form.txt"'
                     f'; printf "new\\n" > "zz late/new.txt"; {STAMP} "zz late/new.txt"')
    before = snapshot(root)
    expected = applied(root, tmp_path / "plain", script)
    tx = staged(roscoe, root, script)
    blocked, failing = OBSTACLES[obstacle]
    target = root / blocked
    subprocess.run(["chattr", "+i", str(target)], check=True)
    immutable.append(target)

    done = commit(roscoe, tx)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert re.fullmatch(
        rf"roscoe: error: commit of {tx} failed at .+; the live tree was put back as it was", line), line
    assert snapshot(root) == before
    assert state(roscoe, tx)["state"] == "open"
    assert json.loads(ok(roscoe("tx", "log", "--json")).stdout) == []
    verified(roscoe)

    subprocess.run(["chattr", "-i", str(target)], check=True)
    ok(commit(roscoe, tx))
    assert snapshot(root) == expected
    assert state(roscoe, tx)["state"] == "committed"
    verified(roscoe)
    rollback(roscoe, tx)
    assert snapshot(root) == before
    verified(roscoe)

    # The message names the live path that failed (relative to the root), not
    # a temp file's name or a bare basename.
    where = line.split(" failed at ", 1)[1].split("; the live tree", 1)[0]
    assert any(re.match(rf"'?{re.escape(f)}'?: ", where) for f in failing), line


def test_commit_to_a_vanished_root_fails_with_one_line(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, WRITE_TARGET)
    shutil.rmtree(root)
    done = commit(roscoe, tx)
    assert done.returncode not in (0, 6), done.stderr
    one_error_line(done.stderr)
    assert not root.exists()
    listed = json.loads(ok(roscoe("tx", "list", "--json")).stdout)
    assert [(t["tx"], t["state"]) for t in listed] == [(tx, "open")]


def test_recover_finds_nothing_after_clean_commits(roscoe: Roscoe, root: Path) -> None:
    t = staged(roscoe, root, WRITE_TARGET)
    ok(commit(roscoe, t))
    ok(roscoe("recover"))


# --- 6. the log --------------------------------------------------------------------


def test_log_lists_commits_and_rollbacks_newest_first(roscoe: Roscoe, root: Path) -> None:
    t1 = staged(roscoe, root, WRITE_TARGET)
    ok(commit(roscoe, t1))
    t2 = staged(roscoe, root, f'printf "2\\n" > case2/two.txt; {STAMP} case2/two.txt')
    ok(commit(roscoe, t2))
    staged(roscoe, root, "rm case1/old.tmp")  # open: not in the log
    aborted = staged(roscoe, root, "rm case1/old.tmp")
    ok(roscoe("tx", "abort", aborted))
    r1 = rollback(roscoe, t1)
    r2 = rollback(roscoe, r1)

    log = json.loads(ok(roscoe("tx", "log", "--json")).stdout)
    assert [(e["tx"], e["state"], e["rolls_back"], e["root"]) for e in log] == [
        (r2, "committed", r1, str(root)),
        (r1, "committed", t1, str(root)),
        (t2, "committed", None, str(root)),
        (t1, "committed", None, str(root)),
    ]
    assert [e["changes"] for e in log] == [1, 1, 1, 1]
    stamps = [e["committed_ns"] for e in log]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 4


def test_a_file_that_appears_where_the_commit_adds_one_is_kept(root: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Created by someone else after the conflict check, just before the apply:
    # the commit links its new file straight into place, which refuses an
    # existing name, so it fails and puts back what it did; the other file stays.
    from journal.errors import CommitFailed
    from journal.faults import Faults
    from journal.opening import open_workspace
    from journal.protocol import commit

    ws = open_workspace(home)
    tx = ws.begin(root).id
    assert ws.run(tx, ["sh", "-c", "printf 'a\\n' > case1/aa.txt; printf 'ours\\n' > case1/new.txt"],
                  cwd=os.fspath(root)).exit_code == 0
    before = snapshot(root)

    class Appear(Faults):
        def checkpoint(self, step: str) -> None:
            if step == "after-intent":
                put(root / "case1" / "new.txt", b"theirs\n")
                before.update(snapshot(root))

    ws.faults = Appear()
    with pytest.raises(CommitFailed) as failed:
        commit(ws, tx)
    assert failed.value.message == (
        f"commit of {tx} failed at case1/new.txt: File exists; the live tree was put back as it was")
    assert snapshot(root) == before and (root / "case1" / "new.txt").read_bytes() == b"theirs\n"
    assert ws.get(tx).state == "open"
    ws.close()
