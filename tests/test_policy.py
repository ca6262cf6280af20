"""Policy (journal.policy, journal.config): what a commit may never do.

Each rule through the real CLI: deny globs, max_changes, max_bytes, setuid
and setgid bits, special files. A refused commit exits 4, names every
offending path and rule in one ``roscoe: error:`` line, writes nothing, and
leaves the transaction open to be fixed by another run and committed. Then
the glob semantics as a unit, and the config file's strict checking (exit 2
naming the file, the line and the key).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from journal.policy import glob_match
from tests.support.roscoe import Roscoe
from tests.support.transactions import (
    committed,
    error_line,
    policy_refusal,
    refused,
    run,
    staged,
    state,
    tx_json,
    write_config,
)
from tests.support.trees import snapshot

# -- each rule through the CLI ---------------------------------------------------------

GIT = ["**/.git/**"]


@pytest.mark.parametrize(("deny", "script", "violations", "fix"), [
    pytest.param(GIT, "mkdir .git && echo x > .git/config",
                 [".git (deny '**/.git/**')", ".git/config (deny '**/.git/**')"], "rm -r .git", id="git-top-level"),
    pytest.param(GIT, "mkdir -p case1/sub/.git && echo x > case1/sub/.git/HEAD && echo ok > case1/ok.txt",
                 ["case1/sub/.git (deny '**/.git/**')", "case1/sub/.git/HEAD (deny '**/.git/**')"],
                 "rm -r case1/sub/.git", id="git-nested"),
    pytest.param(["*.exe"], "echo a > top.exe && echo b > case2/empty/deep.exe && echo c > case2/fine.txt",
                 ["case2/empty/deep.exe (deny '*.exe')", "top.exe (deny '*.exe')"],
                 "rm top.exe case2/empty/deep.exe", id="no-slash-any-depth"),
    pytest.param(["case1/Pleadings/**"], "echo changed > case1/Pleadings/complaint.txt",
                 ["case1/Pleadings/complaint.txt (deny 'case1/Pleadings/**')"],
                 "printf 'COMPLAINT\\nline 2\\n' > case1/Pleadings/complaint.txt && touch -d @1700000000 case1/Pleadings/complaint.txt",
                 id="under-a-dir"),
    pytest.param(["case2/empty/**"], "chmod 0700 case2/empty",
                 ["case2/empty (deny 'case2/empty/**')"], "chmod 0755 case2/empty", id="trailing-star-star-is-the-dir"),
    pytest.param(["case1/old.tmp"], "rm case1/old.tmp && echo n > case1/new.txt",
                 ["case1/old.tmp (deny 'case1/old.tmp')"], None, id="a-deletion"),
])
def test_deny_refuses_every_matching_path_until_fixed(
    roscoe: Roscoe, root: Path, home: Path, deny: list[str], script: str, violations: list[str], fix: str | None,
) -> None:
    write_config(home, f"[policy]\ndeny = {json.dumps(deny)}\n")
    tx = staged(roscoe, root, script)
    assert refused(roscoe, tx, root) == policy_refusal(tx, *violations)
    if fix is None:
        # A deletion cannot be undone by a run (the live file is only in the
        # lower layer). Lifting the rule does not loosen a transaction begun
        # under it: only one begun afterwards commits.
        write_config(home, "")
        assert refused(roscoe, tx, root) == policy_refusal(tx, *violations)
        assert roscoe("tx", "abort", tx).returncode == 0
        tx = staged(roscoe, root, script)
    else:
        run(roscoe, tx, root, fix)
    committed(roscoe, tx)


def test_no_deny_match_commits(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[policy]\ndeny = ["**/.git/**", "*.exe", "case1/Pleadings/**"]\n')
    tx = staged(roscoe, root, "echo x > case1/git.txt && mkdir case2/.gitx && echo e > case2/exe")
    committed(roscoe, tx)
    assert (root / "case2" / ".gitx").is_dir()


@pytest.mark.parametrize(("config", "script", "violation", "fix", "left"), [
    pytest.param("max_changes = 2", "echo 1 > n1 && echo 2 > n2 && echo 3 > n3",
                 "3 changed paths is over max_changes = 2", "rm n3", {"n1": b"1\n", "n2": b"2\n"}, id="max_changes"),
    pytest.param("max_bytes = 10", "printf 0123456789A > n1 && printf 12345 > n2",
                 "16 new bytes is over max_bytes = 10", "rm n1", {"n2": b"12345"}, id="max_bytes"),
])
def test_a_limit_refuses_until_fixed(
    roscoe: Roscoe, root: Path, home: Path, config: str, script: str, violation: str, fix: str, left: dict,
) -> None:
    write_config(home, f"[policy]\n{config}\n")
    tx = staged(roscoe, root, script)
    assert refused(roscoe, tx, root) == policy_refusal(tx, violation)
    run(roscoe, tx, root, fix)
    committed(roscoe, tx)
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.name.startswith("n")} == left


def test_limits_at_the_limit_commit(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, "[policy]\nmax_changes = 2\nmax_bytes = 10\n")
    committed(roscoe, staged(roscoe, root, "printf 01234 > a && printf 56789 > b"))


def test_owners_keep_refuses_an_owner_change_until_fixed(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[policy]\nowners = "keep"\n')
    tx = staged(roscoe, root, "printf 'x\\n' >> case1/notes.md && chown 65534:0 case1/notes.md"
                              " && chown -h 0:65534 case2/notes-link && echo n > case1/new.txt")
    assert refused(roscoe, tx, root) == policy_refusal(
        tx, 'case1/notes.md (owners = "keep": owner 0:0 -> 65534:0)',
        'case2/notes-link (owners = "keep": owner 0:0 -> 0:65534)')
    run(roscoe, tx, root, "chown 0:0 case1/notes.md && chown -h 0:0 case2/notes-link")
    committed(roscoe, tx)
    assert (root / "case1" / "notes.md").read_text() == "# notes\nx\n"


@pytest.mark.parametrize("config", ["", '[policy]\nowners = "any"\n'])
def test_an_owner_change_commits_unless_owners_keep(roscoe: Roscoe, root: Path, home: Path, config: str) -> None:
    write_config(home, config)
    committed(roscoe, staged(roscoe, root, "chown 65534:65534 case1/notes.md"))
    st = (root / "case1" / "notes.md").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


OUTSIDE_LINKS = {  # path: (target, whether it stays inside the root)
    "case1/abs": ("/etc/passwd", False),
    "case1/rel": ("../../outside", False),
    "case1/up2": ("../..", False),
    "case1/sneaky": ("../case2/../../x", False),
    "case1/up": ("..", True),
    "case1/ok": ("../case2/script.sh", True),
    "case1/dangling": ("nowhere/at/all", True),
    "case1/down/deep": ("../../case2", True),
}


def test_symlinks_inside_refuses_links_out_of_the_root_until_fixed(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[policy]\nsymlinks = "inside"\n')
    links = dict(OUTSIDE_LINKS, **{"case1/abs-in": (f"{root}/case2", True), "case2/notes-link": ("/etc", False)})
    script = "mkdir case1/down && rm case2/notes-link && " + " && ".join(
        f"ln -s '{target}' {path}" for path, (target, _) in links.items())
    tx = staged(roscoe, root, script)
    outside = sorted(p for p, (_, inside) in links.items() if not inside)
    assert refused(roscoe, tx, root) == policy_refusal(
        tx, *(f"{p} (symlinks = \"inside\": target {links[p][0]!r} is outside the root)" for p in outside))
    run(roscoe, tx, root, "rm " + " ".join(p for p in outside if p != "case2/notes-link")
        + " && ln -sfn ../case1/notes.md case2/notes-link && touch -h -d @1700000000 case2/notes-link")
    committed(roscoe, tx)
    assert {p: os.readlink(root / p) for p, (_, inside) in links.items() if inside} == {
        p: t for p, (t, inside) in links.items() if inside}


def test_a_symlink_out_of_the_root_commits_unless_symlinks_inside(roscoe: Roscoe, root: Path, home: Path) -> None:
    # An old link pointing out is no new link: touching it is no refusal.
    os.symlink("/etc", root / "case2" / "old-out")
    write_config(home, '[policy]\nsymlinks = "any"\n')
    committed(roscoe, staged(roscoe, root, "ln -s /etc/passwd case1/abs && ln -s ../.. case1/up2"))
    assert (os.readlink(root / "case1" / "abs"), os.readlink(root / "case1" / "up2")) == ("/etc/passwd", "../..")
    write_config(home, '[policy]\nsymlinks = "inside"\n')
    tx = staged(roscoe, root, "touch -h -d @1800000000 case2/old-out")
    assert [c["status"] for c in tx_json(roscoe, "diff", tx)["changes"]] == ["meta_changed"]
    committed(roscoe, tx)


@pytest.mark.parametrize(("mode", "bits"), [("4755", "setuid"), ("2755", "setgid")])
def test_setuid_and_setgid_bits_are_always_refused(roscoe: Roscoe, root: Path, mode: str, bits: str) -> None:
    tx = staged(roscoe, root, f"chmod {mode} case2/script.sh")
    assert refused(roscoe, tx, root) == policy_refusal(
        tx, f"case2/script.sh ({bits} bit is never committed (mode {mode[0]}{mode[1:]}))")
    run(roscoe, tx, root, "chmod 0700 case2/script.sh")
    committed(roscoe, tx)
    assert (root / "case2" / "script.sh").stat().st_mode & 0o7777 == 0o700


def test_a_fifo_is_always_refused(roscoe: Roscoe, root: Path) -> None:
    tx = staged(roscoe, root, "mkfifo case1/pipe && echo x > case1/x.txt")
    assert refused(roscoe, tx, root) == policy_refusal(tx, "case1/pipe (special file (fifo) can never be committed)")
    run(roscoe, tx, root, "rm case1/pipe")
    committed(roscoe, tx)
    assert not (root / "case1" / "pipe").exists()
    assert (root / "case1" / "x.txt").read_text() == "x\n"


def test_every_rule_at_once_is_named(roscoe: Roscoe, root: Path, home: Path) -> None:
    write_config(home, '[policy]\ndeny = ["*.exe"]\nmax_changes = 1\nmax_bytes = 1\n')
    tx = staged(roscoe, root, "printf abc > a.exe && mkfifo p && chmod 4755 case2/script.sh")
    assert refused(roscoe, tx, root) == policy_refusal(
        tx, "p (special file (fifo) can never be committed)", "a.exe (deny '*.exe')",
        "case2/script.sh (setuid bit is never committed (mode 4755))",
        "2 changed paths is over max_changes = 1", "3 new bytes is over max_bytes = 1")
    assert tx_json(roscoe, "show", tx)["policy"] == {
        "refusals": [
            {"path": "p", "rule": "special file (fifo) can never be committed"},
            {"path": "a.exe", "rule": "deny '*.exe'"},
            {"path": "case2/script.sh", "rule": "setuid bit is never committed (mode 4755)"},
            {"path": None, "rule": "2 changed paths is over max_changes = 1"},
            {"path": None, "rule": "3 new bytes is over max_bytes = 1"},
        ],
        "needed": False, "reasons": [], "approved_by": None, "pending": False, "rejected": None,
    }


# -- glob semantics ---------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("**/.git/**", ".git", True),
    ("**/.git/**", ".git/config", True),
    ("**/.git/**", "a/b/.git/objects/x", True),
    ("**/.git/**", "a/.gitignore", False),
    ("**/.git/**", "a/x.git/y", False),
    ("*.exe", "a.exe", True),
    ("*.exe", "deep/er/a.exe", True),
    ("*.exe", "a.exe/inside", False),
    ("*.exe", "a.exec", False),
    ("*/Pleadings/**", "case1/Pleadings", True),
    ("*/Pleadings/**", "case1/Pleadings/complaint.txt", True),
    ("*/Pleadings/**", "case1/Pleadings/2024/a.txt", True),
    ("*/Pleadings/**", "Pleadings/a.txt", False),
    ("*/Pleadings/**", "a/b/Pleadings/x", False),
    ("*/Pleadings/**", "case1/PleadingsX/a", False),
    ("case?/x", "case1/x", True),
    ("case?/x", "case12/x", False),
    ("case?/x", "case/x", False),
    ("a?b", "a/b", False),
    ("a/*", "a/b", True),
    ("a/*", "a/b/c", False),
    ("a/**/c", "a/c", True),
    ("a/**/c", "a/x/y/c", True),
    ("a/**", "a", True),
    ("a/**", "ab", False),
    ("a**", "ab/c", True),
    ("case[12]/x", "case2/x", True),
    ("case[12]/x", "case3/x", False),
    ("case[!12]/x", "case3/x", True),
    ("case[!12]/x", "case1/x", False),
    ("a[/]b", "a/b", False),
    ("[", "[", True),
    ("a.b", "axb", False),
    ("(x)+", "(x)+", True),
    ("dir/", "dir", True),
    ("notes.md", "case1/notes.md", True),
    ("notes.md", "case1/notes.mdx", False),
    ("odd \udcff dir/**", "odd \udcff dir/line\nbreak.txt", True),
])
def test_glob_match(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


# -- the config file -------------------------------------------------------------------

def config_error(path: Path, text: str | bytes) -> str:
    """The message of journal.config.load on a file holding ``text`` (a usage error, exit 2)."""
    from journal.config import load
    from cowfs.errors import ExitCode
    from journal.errors import ConfigError

    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    with pytest.raises(ConfigError) as caught:
        load(str(path), required=True)
    assert caught.value.exit_code == ExitCode.USAGE
    return caught.value.message


BAD_CONFIGS = [
    ('[policy]\ndeny = ["a"]\nmax_changes = = 3\n', "not valid TOML: Invalid value (at line 3, column 15)"),
    ('[policy]\n[policy]\n', "not valid TOML: Cannot declare ('policy',) twice (at line 2, column 8)"),
    ("[polcy]\ndeny = []\n", "line 1: [polcy]: unknown table (known tables: policy, approval, roots, run, serve, roles)"),
    ('\n[policy]\ndeny = ["a"]\nmax_chnges = 3\n',
     "line 4: [policy] max_chnges: unknown key (known keys: deny, max_changes, max_bytes, owners, symlinks)"),
    ('[policy]\nmax_changes = "ten"\n', 'line 2: [policy] max_changes: expected an integer >= 0, got "ten"'),
    ("[policy]\nmax_bytes = -1\n", "line 2: [policy] max_bytes: expected an integer >= 0, got -1"),
    ("[policy]\nmax_bytes = 1.5\n", "line 2: [policy] max_bytes: expected an integer >= 0, got 1.5"),
    ('[policy]\ndeny = "x"\n', 'line 2: [policy] deny: expected a list of glob strings, got "x"'),
    ("[policy]\ndeny = [1]\n", "line 2: [policy] deny: expected a list of glob strings, got a list"),
    ("\n\n[approval]\nwhen_deleting = 1\n", "line 4: [approval] when_deleting: expected true or false, got 1"),
    ("[approval]\nwhen_changes_over = true\n",
     "line 2: [approval] when_changes_over: expected an integer >= 0, got true"),
    ('[approval]\nwhen_paths = "*/Pleadings/**"\n',
     'line 2: [approval] when_paths: expected a list of glob strings, got "*/Pleadings/**"'),
    ("[approval]\nnotify = []\n",
     "line 2: [approval] notify: expected a command line (a string, or a list of strings), got an empty list"),
    ('[approval]\nnotify = "a \'b"\n',
     "line 2: [approval] notify: cannot split the command line: No closing quotation"),
    ("[approval]\nnotify_timeout = 0\n",
     "line 2: [approval] notify_timeout: expected a number of seconds, more than 0 and at most 3600, got 0"),
    ('[approval]\nnotify = "x"\nnotfy_timeout = 3\n',
     ("line 3: [approval] notfy_timeout: unknown key (known keys: when_deleting, when_changes_over,"
     " when_bytes_over, when_paths, notify, notify_timeout)")),
    ('[roots."/mnt/x"]\ntarget = "s3://bucket/prefix"\n',
     'line 2: [roots."/mnt/x"] target: expected a URL gs://BUCKET[/PREFIX], got "s3://bucket/prefix"'),
    ('[roots."/mnt/x"]\ntarget = "gs://whaley_law_firm/projects"\nbucket = "b"\n',
     'line 3: [roots."/mnt/x"] bucket: unknown key (known keys: target)'),
    ('[roots."relative"]\ntarget = "gs://bucket"\n', 'line 1: [roots."relative"]: a root must be an absolute path'),
    ("policy = 3\n", "line 1: [policy]: expected a table"),
    (b'[policy]\ndeny = ["\xff"]\n', "not UTF-8 text (byte 18)"),
    ('[policy]\nowners = "same"\n', 'line 2: [policy] owners: expected "any" or "keep", got "same"'),
    ("[policy]\nsymlinks = true\n", 'line 2: [policy] symlinks: expected "any" or "inside", got true'),
]


@pytest.mark.parametrize(("text", "reason"), BAD_CONFIGS)
def test_a_bad_config_names_file_line_and_key(tmp_path: Path, text: str | bytes, reason: str) -> None:
    path = tmp_path / "bad.toml"
    assert config_error(path, text) == f"config {path}: {reason}"


def test_a_bad_config_refuses_the_commit_with_exit_2(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    tx = staged(roscoe, root, "echo x > case1/x.txt")
    before = snapshot(root)
    path = tmp_path / "bad.toml"
    for text, reason in [BAD_CONFIGS[i] for i in (0, 2, 3, 4, 9, 7, 16)]:
        path.write_text(text)
        assert error_line(roscoe("--config", path, "tx", "commit", tx), 2) == f"config {path}: {reason}"
    assert snapshot(root) == before
    assert state(roscoe, tx) == "open"


def test_a_toml_error_at_the_end_names_the_line(tmp_path: Path) -> None:
    # tomllib says "(at end of document)" for an array left open: the line
    # (here the last, 3) must still be named.
    path = tmp_path / "bad.toml"
    message = config_error(path, '[policy]\nmax_changes = 3\ndeny = ["a",\n')
    assert message.startswith(f"config {path}: not valid TOML: ")
    assert "line 3" in message, message


def test_a_dotted_key_error_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    assert config_error(path, "# rules\npolicy.max_bytes = -1\n") == (
        f"config {path}: line 2: [policy] max_bytes: expected an integer >= 0, got -1")


def test_a_missing_config_file_is_exit_2(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert error_line(roscoe("--config", missing, "tx", "list"), 2) == f"config file {missing} does not exist"
    done = roscoe("tx", "commit", roscoe.begin(root), env={"ROSCOE_CONFIG": str(missing)})
    assert error_line(done, 2) == f"config {missing}: does not exist"


def test_a_missing_default_config_means_no_rules(roscoe: Roscoe, root: Path, home: Path) -> None:
    tx = staged(roscoe, root, "chmod 4755 case2/script.sh && chmod 0755 case2/script.sh && rm case1/old.tmp")
    assert not (home / "config.toml").exists()
    committed(roscoe, tx)
    assert not (root / "case1" / "old.tmp").exists()


def test_every_key_of_the_contract_parses(tmp_path: Path) -> None:
    from journal.config import load

    path = tmp_path / "full.toml"
    path.write_text(
        '[policy]\ndeny = ["**/.git/**"]\nmax_changes = 10000\nmax_bytes = 10_000_000_000\n'
        '[approval]\nwhen_deleting = false\nwhen_changes_over = 200\nwhen_bytes_over = 100_000_000\n'
        'when_paths = ["*/Pleadings/**"]\nnotify = "/usr/local/bin/notify-slack --channel legal"\nnotify_timeout = 2.5\n'
        '[roots."/mnt/workspace/projects/"]\ntarget = "gs://whaley_law_firm/projects"\n'
    )
    config = load(str(path), required=True)
    assert config.policy == (("**/.git/**",), 10000, 10_000_000_000, "any", "any")
    path.write_text('[policy]\nowners = "keep"\nsymlinks = "inside"\n')
    assert load(str(path)).policy == ((), None, None, "keep", "inside")
    path.write_text('[policy]\nowners = "any"\nsymlinks = "any"\n')
    assert load(str(path)).policy == ((), None, None, "any", "any")
    assert config.approval == (False, 200, 100_000_000, ("*/Pleadings/**",),
                               ("/usr/local/bin/notify-slack", "--channel", "legal"), 2.5)
    assert config.root("/mnt/workspace/projects").target == "gs://whaley_law_firm/projects"
    assert config.root("/elsewhere").target is None
    assert load(str(tmp_path / "absent.toml")).approval.notify_timeout == 30.0
    path.write_text('[approval]\nnotify = ["/bin/notify", "--to", "a b"]\n')
    assert load(str(path)).approval.notify == ("/bin/notify", "--to", "a b")
