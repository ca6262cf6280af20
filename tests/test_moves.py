"""Moves in the diff (cowfs.changeset.pair_moves, the renderings, policy, approval).

A deleted and an added file (or symlink) with the same type, size and hash
are one move: ``moved_to``/``moved_from`` in ``tx diff --json``, one
``R old -> new`` line in the table, ``--stat`` and ``--patch``, ``moved`` in
the summary, ``moves`` in the approval request. Moves are a view: the change
list and ``diff_hash`` are what they are without them. ``when_deleting``
lets an exact move (bytes compared, not hashes) through; a real deletion
still needs an approval.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest
import xxhash

from cowfs.changeset import ADDED, DELETED, Change, pair_moves
from cowfs.entry import Entry
from tests.conftest import Roscoe, snapshot
from tests.test_policy import committed, diff_hash, error_line, policy_refusal, refused, staged, tx_json, write_config

T0 = 1_700_000_000 * 10**9  # the mtime of every file the tests make


def h(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_json(data: bytes, mode: str = "0644", mtime_ns: int = T0) -> dict[str, object]:
    return {"type": "file", "size": len(data), "mode": mode, "mtime_ns": mtime_ns, "uid": 0, "gid": 0,
            "hash": h(data), "target": None}


def dir_json(mtime_ns: int, mode: str = "0755") -> dict[str, object]:
    return {"type": "dir", "size": 0, "mode": mode, "mtime_ns": mtime_ns, "uid": 0, "gid": 0,
            "hash": None, "target": None}


def hash_in(message: str) -> str:
    return message.split("--hash ")[1][:32]


def contract_hash(changes: list[dict]) -> str:
    """``diff_hash`` as the contract defines it, from the JSON entries: their
    paths, statuses and new types, hashes, modes and owners; nothing of a move."""
    digest = xxhash.xxh3_128()
    for c in changes:
        new = c["new"]
        fields = [os.fsencode(c["path"]), c["status"].encode()]
        fields += [(new["type"] if new else "").encode(), ((new["hash"] or "") if new else "").encode(),
                   (new["mode"] if new else "").encode()]
        if new is not None and new["uid"] is not None:
            fields.append(f"{new['uid']}:{new['gid']}".encode())
        digest.update(b"\0".join(fields) + b"\0")
    return digest.hexdigest()


def table(done) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """The rows of a ``tx diff`` table after its header, split on blanks."""
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.decode().splitlines()]
    return lines[lines.index(["path", "old", "new", "hash", "old", "→", "new"]) + 1:]


def make_files(root: Path, files: dict[str, bytes], mode: int = 0o644) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
        os.utime(path, ns=(T0, T0))


DOCS = {f"inbox/doc{i:02d}.txt": f"document {i}\n".encode() for i in range(1, 18)}
FILE_17 = ("mkdir -p filed/2024 filed/2025 && mv inbox/doc0*.txt filed/2024/"
           " && mv inbox/doc1*.txt filed/2025/ && rmdir inbox")


def filed(i: int) -> str:
    return f"filed/{2024 if i < 10 else 2025}/doc{i:02d}.txt"


# -- 17 moves: JSON, table, summary, diff_hash -------------------------------------------

def test_seventeen_moves_are_seventeen_R_lines_and_keep_the_diff_hash(roscoe: Roscoe, root: Path) -> None:
    make_files(root, DOCS)
    before = snapshot(root)
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", FILE_17, cwd=root)
    assert done.returncode == 0, done.stderr
    tx = done.stderr.decode().splitlines()[0].removeprefix("roscoe: tx ")
    assert "; 3 added, 1 deleted, 17 moved staged (kernel); " in done.stderr.decode()
    got = tx_json(roscoe, "diff", tx)
    dirs = {c["path"]: c for c in got["changes"] if (c["new"] or c["old"])["type"] == "dir"}
    expected = [
        {"path": "filed", "status": "added", "old": None, "new": dir_json(dirs["filed"]["new"]["mtime_ns"])},
        {"path": "filed/2024", "status": "added", "old": None, "new": dir_json(dirs["filed/2024"]["new"]["mtime_ns"])},
        *[{"path": filed(i), "status": "added", "old": None, "new": file_json(f"document {i}\n".encode()),
           "moved_from": f"inbox/doc{i:02d}.txt"} for i in range(1, 10)],
        {"path": "filed/2025", "status": "added", "old": None, "new": dir_json(dirs["filed/2025"]["new"]["mtime_ns"])},
        *[{"path": filed(i), "status": "added", "old": None, "new": file_json(f"document {i}\n".encode()),
           "moved_from": f"inbox/doc{i:02d}.txt"} for i in range(10, 18)],
        {"path": "inbox", "status": "deleted", "old": dir_json(os.lstat(root / "inbox").st_mtime_ns), "new": None},
        *[{"path": f"inbox/doc{i:02d}.txt", "status": "deleted", "old": file_json(f"document {i}\n".encode()),
           "new": None, "moved_to": filed(i)} for i in range(1, 18)],
    ]
    assert got["changes"] == expected
    written = sum(len(d) for d in DOCS.values())
    assert got["summary"] == {"added": 3, "modified": 0, "deleted": 1, "type_changed": 0, "meta_changed": 0,
                              "moved": 17, "bytes_written": written} == {**got["summary"], "bytes_written": 195}
    # The hash of the change list as the contract defines it: the pairing is not in it.
    assert got["diff_hash"] == contract_hash(got["changes"])

    rows = table(roscoe("tx", "diff", tx))
    short = {i: h(f"document {i}\n".encode())[:8] for i in range(1, 18)}

    def r(i: int) -> list[str]:
        size = "11" if i < 10 else "12"
        return ["R", f"inbox/doc{i:02d}.txt", "->", filed(i), "file", size, "B", "file", size, "B",
                short[i], "→", short[i]]

    assert rows == [
        ["A", "filed", "dir", "→"], ["A", "filed/2024", "dir", "→"], *map(r, range(1, 10)),
        ["A", "filed/2025", "dir", "→"], *map(r, range(10, 18)), ["D", "inbox", "dir", "→"],
        ["3", "added,", "1", "deleted,", "17", "moved;", "195", "B", "to", "write;", "diff_hash", got["diff_hash"]]]
    shown = roscoe("tx", "show", tx).stdout.decode().splitlines()
    assert f"diff       3 added, 1 deleted, 17 moved; 195 B to write; diff_hash {got['diff_hash']}" in shown
    view = tx_json(roscoe, "show", tx)["diff"]
    assert (view["summary"], view["counts"]) == (got["summary"], {
        "added": 20, "modified": 0, "deleted": 18, "type_changed": 0, "meta_changed": 0})

    assert snapshot(root) == before
    committed(roscoe, tx)
    assert sorted(p for p in snapshot(root) if p.startswith(("filed", "inbox"))) == sorted(
        ["filed", "filed/2024", "filed/2025", *map(filed, range(1, 18))])
    again = tx_json(roscoe, "diff", tx)  # as the journal recorded it
    assert (again["changes"], again["diff_hash"], again["summary"]) == (expected, got["diff_hash"], got["summary"])


# -- which pairs are moves -------------------------------------------------------------

def test_identical_files_pair_one_to_one_by_name_then_path_order(roscoe: Roscoe, root: Path) -> None:
    same = b"the same bytes\n"
    make_files(root, {"a/1.txt": same, "a/2.txt": same, "a/3.txt": same, "a/4.txt": same})
    # 4.txt keeps its name; the others pair in path order: 1 -> m, 2 -> x, 3 -> y.
    tx = staged(roscoe, root, "mkdir b && mv a/3.txt b/y.txt && mv a/1.txt b/x.txt && mv a/2.txt b/m.txt"
                              " && mv a/4.txt b/4.txt")
    got = tx_json(roscoe, "diff", tx)
    assert [(c["path"], c.get("moved_from"), c.get("moved_to")) for c in got["changes"]] == [
        ("a/1.txt", None, "b/m.txt"), ("a/2.txt", None, "b/x.txt"), ("a/3.txt", None, "b/y.txt"),
        ("a/4.txt", None, "b/4.txt"),
        ("b", None, None), ("b/4.txt", "a/4.txt", None), ("b/m.txt", "a/1.txt", None),
        ("b/x.txt", "a/2.txt", None), ("b/y.txt", "a/3.txt", None)]
    assert got["summary"]["moved"] == 4
    assert [row[:4] for row in table(roscoe("tx", "diff", tx))[:5]] == [
        ["A", "b", "dir", "→"], ["R", "a/4.txt", "->", "b/4.txt"], ["R", "a/1.txt", "->", "b/m.txt"],
        ["R", "a/2.txt", "->", "b/x.txt"], ["R", "a/3.txt", "->", "b/y.txt"]]


def entry(data: bytes) -> Entry:
    return Entry("file", len(data), 0o644, T0, h(data), None, 0, 0)


def test_the_pairing_does_not_depend_on_the_order_of_the_changes() -> None:
    same, other = b"same\n", b"other\n"
    changes = [Change(p, DELETED, entry(same), None) for p in ("a/1", "a/2", "a/3", "c/k")]
    changes += [Change(p, ADDED, None, entry(same)) for p in ("b/z", "b/y", "b/x", "d/k")]
    changes += [Change("e/o", DELETED, entry(other), None), Change("f/n", ADDED, None, entry(same))]
    first = [(m.source, m.dest) for m in pair_moves(changes)]
    assert first == [("a/1", "b/x"), ("a/2", "b/y"), ("a/3", "b/z"), ("c/k", "d/k")]  # f/n: a copy, e/o: a deletion
    for seed in range(20):
        random.Random(seed).shuffle(changes)
        assert [(m.source, m.dest) for m in pair_moves(changes)] == first


def test_a_move_with_new_bytes_is_a_deletion_and_an_addition(roscoe: Roscoe, root: Path) -> None:
    make_files(root, {"a/brief.txt": b"brief\n"})
    tx = staged(roscoe, root, "mkdir b && mv a/brief.txt b/brief.txt && echo signed >> b/brief.txt")
    got = tx_json(roscoe, "diff", tx)
    assert [c["path"] for c in got["changes"]] == ["a/brief.txt", "b", "b/brief.txt"]
    assert not any("moved_from" in c or "moved_to" in c for c in got["changes"])
    assert (got["summary"]["added"], got["summary"]["deleted"], got["summary"]["moved"]) == (2, 1, 0)
    assert [row[:2] for row in table(roscoe("tx", "diff", tx))[:3]] == [["D", "a/brief.txt"], ["A", "b"], ["A", "b/brief.txt"]]


def test_a_move_that_changes_the_mode_or_owner_is_a_move_showing_it(roscoe: Roscoe, root: Path) -> None:
    data = b"memo\n"
    make_files(root, {"a/memo.txt": data})
    tx = staged(roscoe, root, "mv a/memo.txt a/memo-2024.txt && chmod 0600 a/memo-2024.txt"
                              " && mv case2/notes-link case1/notes-link"
                              " && mv 'case2/intake form.txt' case2/intake.txt && chown 65534:65534 case2/intake.txt")
    got = tx_json(roscoe, "diff", tx)
    assert got["changes"].pop(3) == {
        "path": "case2/intake form.txt", "status": "deleted", "old": file_json(b"intake\n"), "new": None,
        "moved_to": "case2/intake.txt"}
    assert got["changes"].pop(3) == {"path": "case2/intake.txt", "status": "added", "old": None,
                      "new": {**file_json(b"intake\n"), "uid": 65534, "gid": 65534}, "moved_from": "case2/intake form.txt"}
    link = {"type": "symlink", "size": 17, "mode": "0777", "mtime_ns": T0, "uid": 0, "gid": 0,
            "hash": h(b"../case1/notes.md"), "target": "../case1/notes.md"}
    assert got["changes"] == [
        {"path": "a/memo-2024.txt", "status": "added", "old": None, "new": file_json(data, "0600"),
         "moved_from": "a/memo.txt"},
        {"path": "a/memo.txt", "status": "deleted", "old": file_json(data), "new": None,
         "moved_to": "a/memo-2024.txt"},
        {"path": "case1/notes-link", "status": "added", "old": None, "new": link, "moved_from": "case2/notes-link"},
        {"path": "case2/notes-link", "status": "deleted", "old": link, "new": None, "moved_to": "case1/notes-link"}]
    hd, hl, hi = h(data)[:8], h(b"../case1/notes.md")[:8], h(b"intake\n")[:8]
    assert table(roscoe("tx", "diff", tx)) == [
        ["R", "a/memo.txt", "->", "a/memo-2024.txt", "file", "5", "B", "mode", "0644", "file", "5", "B", "mode", "0600",
         hd, "→", hd],
        ["R", "case2/notes-link", "->", "case1/notes-link", "symlink", "->", "../case1/notes.md", "symlink", "->", "../case1/notes.md", hl, "→", hl],
        ["R", "case2/intake", "form.txt", "->", "case2/intake.txt", "file", "7", "B", "owner", "0:0",
         "file", "7", "B", "owner", "65534:65534", hi, "→", hi],
        ["3", "moved,", "1", "owner", "changed;", "29", "B", "to", "write;", "diff_hash", got["diff_hash"]]]


# -- --stat and --patch ------------------------------------------------------------------

def test_stat_and_patch_show_a_move_once(roscoe: Roscoe, root: Path) -> None:
    make_files(root, {"a/letter.txt": b"Dear client,\n", "a/draft.txt": b"draft\n"})
    tx = staged(roscoe, root, "mkdir b && mv a/letter.txt b/letter.txt && mv a/draft.txt b/final.txt"
                              " && chmod 0640 b/final.txt && echo 'line 3' >> case1/Pleadings/complaint.txt")
    summary = f"1 added, 1 modified, 2 moved; 43 B to write; diff_hash {diff_hash(roscoe, tx)}"
    done = roscoe("tx", "diff", tx, "--stat")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines == [
        " A b                             | dir",
        " R a/draft.txt -> b/final.txt    | 6 B mode 0644 → 0640",
        " R a/letter.txt -> b/letter.txt  | 13 B",
        " M case1/Pleadings/complaint.txt | +24 B",
        summary]
    done = roscoe("tx", "diff", tx, "--patch")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "A b",
        "R a/draft.txt -> b/final.txt",
        f"mode 0644 → 0640, mtime {T0} → {T0}",
        "R a/letter.txt -> b/letter.txt",
        "M case1/Pleadings/complaint.txt",
        "--- a/case1/Pleadings/complaint.txt",
        "+++ b/case1/Pleadings/complaint.txt",
        "@@ -1,2 +1,3 @@",
        " COMPLAINT",
        " line 2",
        "+line 3"]


# -- policy and approval -----------------------------------------------------------------

def test_when_deleting_lets_exact_moves_through_and_rolls_them_back(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    make_files(root, DOCS)
    before = snapshot(root)
    tx = staged(roscoe, root, FILE_17.removesuffix(" && rmdir inbox") + " && mv case2/notes-link notes-link")
    assert tx_json(roscoe, "show", tx)["policy"] == {
        "refusals": [], "needed": False, "reasons": [], "approved_by": None, "pending": False, "rejected": None}
    committed(roscoe, tx)
    assert not (root / "inbox" / "doc01.txt").exists() and (root / "filed/2025/doc17.txt").read_bytes() == b"document 17\n"
    # Its rollback moves them back, exactly too (the live files against the
    # images it puts back); only the directories it removes are deletions.
    message = error_line(roscoe("tx", "rollback", tx, "--yes"), 4)
    assert "(deletes 3 paths: filed, filed/2024, filed/2025 (when_deleting))" in message
    undo = message.split("is transaction ")[1][:12]
    assert roscoe("tx", "approve", undo, "--hash", hash_in(message), "--by", "Jane").returncode == 0
    done = roscoe("tx", "rollback", tx, "--yes")
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before


def test_when_deleting_still_asks_for_a_real_deletion_among_moves(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[approval]\nwhen_deleting = true\n")
    make_files(root, DOCS)
    tx = staged(roscoe, root, FILE_17 + " && rm case1/old.tmp")
    got = tx_json(roscoe, "show", tx)["policy"]
    assert (got["needed"], got["reasons"]) == (True, ["deletes 2 paths: case1/old.tmp, inbox (when_deleting)"])
    message = refused(roscoe, tx, root)
    assert message.startswith(f"transaction {tx} needs an approval before it can be committed"
                              " (deletes 2 paths: case1/old.tmp, inbox (when_deleting)); nothing was written.")


def test_a_pair_whose_hashes_agree_but_bytes_differ_is_a_deletion(
    root: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hash collision (simulated: a hash blind to the difference between
    X and Y) makes a pair look like a move; when_deleting reads the bytes."""
    import cowfs.hashing
    import cowfs.livetree
    from journal import api
    from journal.errors import ApprovalNeeded

    def blind(fd: int) -> str:
        digest = xxhash.xxh3_128()
        for chunk in cowfs.hashing.chunks_of(fd):
            digest.update(chunk.replace(b"X", b"Y"))
        return digest.hexdigest()

    monkeypatch.setattr(cowfs.hashing, "hash_fd", blind)
    monkeypatch.setattr(cowfs.livetree, "hash_fd", blind)
    write_config(home, "[approval]\nwhen_deleting = true\n")
    monkeypatch.setenv("ROSCOE_CONFIG", str(home / "config.toml"))
    make_files(root, {"a/order.txt": b"pay 100 to Y\n"})
    before = snapshot(root)
    tx = api.begin(root, home=home)
    api.run(tx, ["sh", "-c", "mkdir b && rm a/order.txt && printf 'pay 100 to X\\n' > b/order.txt"],
            cwd=str(root), home=home)
    changes = api.diff(tx, home=home)
    assert [(m.source, m.dest) for m in changes.moves()] == [("a/order.txt", "b/order.txt")]
    with pytest.raises(ApprovalNeeded) as needed:
        api.commit(tx, home=home)
    assert "(deletes 1 path: a/order.txt (when_deleting))" in needed.value.message
    assert api.show(tx, home=home).policy.reasons == ["deletes 1 path: a/order.txt (when_deleting)"]
    assert snapshot(root) == before


def test_deny_and_when_paths_match_the_old_path_of_a_move(roscoe: Roscoe, root: Path, home: Path) -> None:
    make_files(root, {"sealed/exhibit.pdf": b"%PDF sealed\n"})
    write_config(home, '[policy]\ndeny = ["sealed/**"]\n')
    tx = staged(roscoe, root, "mv sealed/exhibit.pdf case1/exhibit.pdf")
    assert tx_json(roscoe, "diff", tx)["summary"]["moved"] == 1
    assert refused(roscoe, tx, root) == policy_refusal(tx, "sealed/exhibit.pdf (deny 'sealed/**')")
    write_config(home, '[approval]\nwhen_paths = ["sealed/**"]\n')
    tx = staged(roscoe, root, "mv sealed/exhibit.pdf case1/exhibit.pdf")
    assert tx_json(roscoe, "show", tx)["policy"]["reasons"] == [
        "changes 1 path: sealed/exhibit.pdf matching 'sealed/**' (when_paths)"]


def test_the_approval_request_lists_moves_as_moves(roscoe: Roscoe, root: Path, home: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "requests"
    inbox.mkdir()
    script = tmp_path / "notify"
    script.write_text(f"#!/bin/sh\ncat > {inbox}/request.json\n")
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR)
    write_config(home, f'[approval]\nwhen_paths = ["filed/**"]\nnotify = "{script}"\n')
    make_files(root, DOCS)
    tx = staged(roscoe, root, FILE_17 + " && echo more >> case1/notes.md")
    h = diff_hash(roscoe, tx)
    message = error_line(roscoe("tx", "commit", tx), 4)
    assert message.endswith(f" (request sent to {script})")
    got = json.loads((inbox / "request.json").read_text())
    assert got["summary"] == {"added": 3, "modified": 1, "deleted": 1, "type_changed": 0, "meta_changed": 0,
                              "moved": 17, "bytes_written": 195 + len(b"# notes\nmore\n")}
    assert (got["diff_hash"], got["changes"]) == (h, 39)
    assert got["paths"] == ["case1/notes.md", "filed", "filed/2024", "filed/2025", "inbox"]
    assert got["moves"] == [{"from": f"inbox/doc{i:02d}.txt", "to": filed(i)} for i in range(1, 18)]
