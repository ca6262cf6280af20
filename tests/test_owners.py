"""Owners: in the diff (JSON, table, --stat, --patch, tx show, diff_hash),
committed exactly and rolled back exactly when roscoe runs as root (CI does);
never given away by an ordinary user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import xxhash

from tests.support.roscoe import Roscoe, UserRoscoe
from tests.support.system import lookup_test_user
from tests.support.transactions import committed, diff_hash, error_line, run, staged, tx_json, write_config
from tests.support.trees import chown_tree, make_tree, snapshot


def test_owners_survive_commit_and_rollback(roscoe: Roscoe, root: Path) -> None:
    assert os.geteuid() == 0, "this test needs root, as CI runs"
    os.chown(root / "case1" / "notes.md", 1234, 2345)
    os.chown(root / "case2", 3456, 4567)
    before = snapshot(root)
    tx = roscoe.begin(root)
    script = "printf 'more\\n' >> case1/notes.md && chmod 0700 case2 && rm case1/old.tmp"
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=root).returncode == 0
    assert roscoe("tx", "commit", tx, "--yes").returncode == 0
    st = os.lstat(root / "case1" / "notes.md")
    assert (st.st_uid, st.st_gid, (root / "case1" / "notes.md").read_text()) == (1234, 2345, "# notes\nmore\n")
    st = os.lstat(root / "case2")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (3456, 4567, 0o700)
    done = roscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before


# -- owner changes in the diff (issue 14) ------------------------------------------------

T0 = 1_700_000_000 * 10**9  # the mtime of every file of the test tree
NOTES, NOTES_MORE = b"# notes\n", b"# notes\nx\n"


def state_json(type_: str, size: int, mode: str, mtime_ns: int, uid: int, gid: int, data: bytes | None,
               target: str | None = None) -> dict[str, object]:
    """An ``old``/``new`` object of ``tx diff --json``, keys in the contract's order."""
    return {"type": type_, "size": size, "mode": mode, "mtime_ns": mtime_ns, "uid": uid, "gid": gid,
            "hash": None if data is None else xxhash.xxh3_128_hexdigest(data), "target": target}


def rows(text: bytes) -> list[list[str]]:
    """The rows of a ``tx diff`` table after its header (the title above may wrap), split on blanks."""
    lines = [line.split() for line in text.decode().splitlines()]
    return lines[lines.index(["path", "old", "new", "hash", "old", "→", "new"]) + 1:]


def h8(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)[:8]


def test_a_chown_with_an_append_is_in_the_json_the_table_and_the_hash(roscoe: Roscoe, root: Path) -> None:
    before = snapshot(root)
    append = f"printf 'x\\n' >> case1/notes.md && touch -d @{T0 // 10**9 + 1} case1/notes.md"
    plain = staged(roscoe, root, append)
    chowned = staged(roscoe, root, f"{append} && chown 65534:65534 case1/notes.md")
    got = tx_json(roscoe, "diff", chowned)
    assert got["changes"] == [{
        "path": "case1/notes.md", "status": "modified",
        "old": state_json("file", 8, "0644", T0, 0, 0, NOTES),
        "new": state_json("file", 10, "0644", T0 + 10**9, 65534, 65534, NOTES_MORE)}]
    assert [list(c["new"]) for c in got["changes"]] == [list(state_json("file", 0, "", 0, 0, 0, None))]
    # Same paths, statuses, bytes and modes: only the owner tells the two apart.
    assert tx_json(roscoe, "diff", plain)["changes"][0]["new"]["uid"] == 0
    assert got["diff_hash"] != diff_hash(roscoe, plain)
    table = rows(roscoe("tx", "diff", chowned).stdout)
    assert table == [
        ["M", "case1/notes.md", "file", "8", "B", "owner", "0:0", "file", "10", "B", "owner", "65534:65534",
         NOTES_HASH[:8], "→", MORE_HASH[:8]],
        ["1", "modified,", "1", "owner", "changed;", "10", "B", "to", "write;", "diff_hash", got["diff_hash"]]]
    assert rows(roscoe("tx", "diff", plain).stdout)[0] == [
        "M", "case1/notes.md", "file", "8", "B", "file", "10", "B", NOTES_HASH[:8], "→", MORE_HASH[:8]]
    assert roscoe("tx", "diff", chowned, "--stat").stdout.decode().splitlines()[0] == (
        " M case1/notes.md | +10 B owner 0:0 → 65534:65534")
    assert roscoe("tx", "diff", chowned, "--patch").stdout.decode().startswith(
        "M case1/notes.md\nowner 0:0 → 65534:65534\n--- a/case1/notes.md\n")
    assert f"diff       1 modified, 1 owner changed; 10 B to write; diff_hash {got['diff_hash']}" in (
        roscoe("tx", "show", chowned).stdout.decode().splitlines())
    assert snapshot(root) == before
    committed(roscoe, chowned)
    st = os.lstat(root / "case1" / "notes.md")
    assert ((root / "case1" / "notes.md").read_bytes(), st.st_uid, st.st_gid) == (NOTES_MORE, 65534, 65534)
    shown = tx_json(roscoe, "diff", chowned)  # as the journal recorded it
    assert (shown["changes"], shown["diff_hash"]) == (got["changes"], got["diff_hash"])


NOTES_HASH = xxhash.xxh3_128_hexdigest(NOTES)
MORE_HASH = xxhash.xxh3_128_hexdigest(NOTES_MORE)


def test_a_chown_alone_is_meta_changed_committed_and_rolled_back_exactly(roscoe: Roscoe, root: Path) -> None:
    before = snapshot(root)
    tx = staged(roscoe, root, "chown 65534:65534 'case2/intake form.txt' && chown 1234:2345 case2/empty"
                              " && chown -h 4321:4321 case2/notes-link")
    intake, empty = root / "case2" / "intake form.txt", root / "case2" / "empty"
    empty_mtime = os.lstat(empty).st_mtime_ns
    got = tx_json(roscoe, "diff", tx)
    assert got["changes"] == [
        {"path": "case2/empty", "status": "meta_changed",
         "old": state_json("dir", 0, "0755", empty_mtime, 0, 0, None),
         "new": state_json("dir", 0, "0755", got["changes"][0]["new"]["mtime_ns"], 1234, 2345, None)},
        {"path": "case2/intake form.txt", "status": "meta_changed",
         "old": state_json("file", 7, "0644", T0, 0, 0, b"intake\n"),
         "new": state_json("file", 7, "0644", T0, 65534, 65534, b"intake\n")},
        {"path": "case2/notes-link", "status": "meta_changed",
         "old": state_json("symlink", 17, "0777", T0, 0, 0, b"../case1/notes.md", "../case1/notes.md"),
         "new": state_json("symlink", 17, "0777", T0, 4321, 4321, b"../case1/notes.md", "../case1/notes.md")}]
    assert rows(roscoe("tx", "diff", tx).stdout)[:3] == [
        ["m", "case2/empty", "owner", "0:0", "owner", "1234:2345", "→"],
        ["m", "case2/intake", "form.txt", "owner", "0:0", "owner", "65534:65534", h8(b"intake\n"), "→", h8(b"intake\n")],
        ["m", "case2/notes-link", "owner", "0:0", "owner", "4321:4321", h8(b"../case1/notes.md"), "→",
         h8(b"../case1/notes.md")]]
    assert snapshot(root) == before
    committed(roscoe, tx)
    after = dict(before)
    for path, owner in (("case2/empty", (1234, 2345)), ("case2/intake form.txt", (65534, 65534)),
                        ("case2/notes-link", (4321, 4321))):
        kind, mode, mtime, _, _, body = before[path]
        after[path] = (kind, mode, mtime, *owner, body)
    assert snapshot(root) == after
    assert (os.lstat(intake).st_uid, os.lstat(empty).st_gid) == (65534, 2345)
    assert roscoe("verify").returncode == 0
    # verify compares owners too: a chown behind roscoe's back is found.
    os.chown(intake, 0, 0)
    done = roscoe("verify", "--json")
    assert done.returncode == 3  # drift alone
    assert [(p["kind"], p["path"]) for p in json.loads(done.stdout)["problems"]] == [("live", "case2/intake form.txt")]
    os.chown(intake, 65534, 65534)
    done = roscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before


def test_an_approval_of_the_diff_before_a_chown_is_refused_after_it(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[approval]\nwhen_paths = ["case1/**"]\n')
    tx = staged(roscoe, root, "printf 'x\\n' >> case1/notes.md")
    seen = diff_hash(roscoe, tx)
    run(roscoe, tx, root, "chown 65534:65534 case1/notes.md")
    now = diff_hash(roscoe, tx)
    assert now != seen
    before = snapshot(root)
    assert error_line(roscoe("tx", "approve", tx, "--hash", seen, "--by", "Jane"), 3) == (
        f"approval refused: the diff of transaction {tx} now hashes to {now}, not {seen};"
        f" review it again with `roscoe tx diff {tx}`")
    assert error_line(roscoe("tx", "commit", tx), 4).startswith(f"transaction {tx} needs an approval")
    assert snapshot(root) == before
    assert roscoe("tx", "approve", tx, "--hash", now, "--by", "Jane").returncode == 0
    committed(roscoe, tx)
    assert os.lstat(root / "case1" / "notes.md").st_uid == 65534


def test_a_chown_of_the_live_file_since_the_run_is_a_conflict(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "printf 'x\\n' >> case1/notes.md")
    os.chown(root / "case1" / "notes.md", 65534, 65534)
    before = snapshot(root)
    assert error_line(roscoe("tx", "commit", tx), 3) == (
        f"commit refused: the live tree changed under transaction {tx}; nothing was written. Changed: case1/notes.md")
    assert snapshot(root) == before


def test_an_ordinary_user_commits_its_own_files_and_never_gives_away_an_owner(
    unprivileged: UserRoscoe, user_dir: Path, home: Path,
) -> None:
    """Without root, roscoe can give a path only its own uid and groups. A
    file the user may rewrite but does not own is shown and committed as
    becoming the user's (it does: a new inode is renamed over it); a rollback
    would have to give it back to root, so it is refused, and root's works."""
    user = lookup_test_user()
    me = (user.pw_uid, user.pw_gid)
    root = make_tree(user_dir / "live")
    chown_tree(root, *me)
    shared = root / "case1" / "shared.txt"
    shared.write_bytes(b"shared\n")
    os.chmod(shared, 0o666)
    os.utime(shared, ns=(T0, T0))
    before = snapshot(root)
    done = unprivileged("tx", "run", "--root", root, "--", "sh", "-c",
                        f"printf 'x\\n' >> case1/notes.md && printf 'y\\n' >> case1/shared.txt"
                        f" && touch -d @{T0 // 10**9} case1/notes.md case1/shared.txt",
                        cwd=root, env={"ROSCOE_BACKEND": "copy"})
    assert done.returncode == 0, done.stderr
    tx = done.stderr.decode().splitlines()[0].split()[-1]
    got = json.loads(unprivileged("tx", "diff", tx, "--json").stdout)
    assert got["changes"] == [
        {"path": "case1/notes.md", "status": "modified",
         "old": state_json("file", 8, "0644", T0, *me, NOTES),
         "new": state_json("file", 10, "0644", T0, *me, NOTES_MORE)},
        {"path": "case1/shared.txt", "status": "modified",
         "old": state_json("file", 7, "0666", T0, 0, 0, b"shared\n"),
         "new": state_json("file", 9, "0666", T0, *me, b"shared\ny\n")}]
    done = unprivileged("tx", "commit", tx, "--yes")
    assert done.returncode == 0, done.stderr
    after = dict(before)
    after["case1/notes.md"] = before["case1/notes.md"][:5] + (NOTES_MORE,)
    after["case1/shared.txt"] = before["case1/shared.txt"][:3] + (*me, b"shared\ny\n")
    assert snapshot(root) == after
    done = unprivileged("tx", "rollback", tx, "--yes")
    assert error_line(done, 4) == (
        f"rollback of {tx} refused: case1/shared.txt (0:0) would get an owner other than roscoe's own user"
        " and groups, which only root can give; nothing was written")
    assert snapshot(root) == after
    done = Roscoe(unprivileged.home)("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before


def test_a_chown_since_the_commit_holds_the_rollback_back_unless_forced(roscoe: Roscoe, root: Path) -> None:
    before = snapshot(root)
    tx = staged(roscoe, root, "printf 'x\\n' >> case1/notes.md")
    committed(roscoe, tx)
    os.chown(root / "case1" / "notes.md", 65534, 65534)
    after = snapshot(root)
    assert error_line(roscoe("tx", "rollback", tx, "--yes"), 3) == (
        f"rollback of {tx} refused (--force overrides): the live tree changed under transaction {tx};"
        " nothing was written. Changed: case1/notes.md")
    assert snapshot(root) == after
    assert roscoe("tx", "rollback", tx, "--yes", "--force").returncode == 0
    assert snapshot(root) == before
