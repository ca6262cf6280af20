"""The contract of every `roscoe tx` command, driven through the real CLI:
exact stdout, stderr and exit codes, real overlays, the live tree untouched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import xxhash

from tests.support.roscoe import Roscoe
from tests.support.transactions import tx_from
from tests.support.trees import snapshot

T0 = 1_700_000_000_000_000_000  # the mtime make_tree gives every file
T1 = 1_800_000_000  # seconds: the mtime runs below give what they write


def h(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def entry(type_: str, size: int, mode: str, mtime_ns: int, hash_: str | None, target: str | None = None,
          uid: int = 0, gid: int = 0) -> dict[str, object]:
    """A state in ``tx diff --json`` (owned by root, as the tests' trees and runs are)."""
    return {"type": type_, "size": size, "mode": mode, "mtime_ns": mtime_ns, "uid": uid, "gid": gid,
            "hash": hash_, "target": target}


def test_begin_prints_only_the_id(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "begin", "--root", root, "-m", "reorganize")
    assert done.returncode == 0
    assert re.fullmatch(rb"[0-9a-f]{12}\n", done.stdout)
    assert done.stderr == b""
    listed = json.loads(roscoe("tx", "list", "--json").stdout)
    assert [(t["tx"], t["state"], t["root"], t["message"], t["runs"]) for t in listed] == [
        (done.stdout.decode().strip(), "open", str(root), "reorganize", 0)
    ]


def test_run_passes_stdio_through_and_returns_the_exit_status(roscoe: Roscoe, root: Path) -> None:
    before = snapshot(root)
    done = roscoe(
        "tx", "run", "--root", root, "--", "sh", "-c", 'cat; printf "out\\n"; printf "err\\n" >&2; exit 7',
        input=b"stdin bytes \xff\n",
    )
    assert done.returncode == 7
    assert done.stdout == b"stdin bytes \xff\nout\n"
    lines = done.stderr.decode().splitlines()
    tx = tx_from(done.stderr)
    assert lines[1] == "err"
    assert lines[2] == (
        f"roscoe: tx {tx}: sh -c 'cat; printf \"out\\n\"; printf \"err\\n\" >&2; exit 7' exited 7;"
        f" no changes staged (kernel); review: roscoe tx diff {tx}"
    )
    assert len(lines) == 3
    assert snapshot(root) == before


def test_diff_json_is_exactly_the_contract(roscoe: Roscoe, root: Path) -> None:
    before = snapshot(root)
    script = (
        f"printf 'new text\\n' > case1/new.txt && touch -d @{T1} case1/new.txt && "
        f"printf 'more\\n' >> case1/notes.md && touch -d @{T1} case1/notes.md && "
        "rm case1/old.tmp && chmod 0700 case2/script.sh && rm -r case2/empty"
    )
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", script, cwd=root)
    assert done.returncode == 0, done.stderr
    tx = tx_from(done.stderr)
    diff = roscoe("tx", "diff", tx, "--json")
    assert diff.returncode == 0 and diff.stderr == b""
    got = json.loads(diff.stdout)
    changes = [
        {"path": "case1/new.txt", "status": "added", "old": None,
         "new": entry("file", 9, "0644", T1 * 10**9, h(b"new text\n"))},
        {"path": "case1/notes.md", "status": "modified",
         "old": entry("file", 8, "0644", T0, h(b"# notes\n")),
         "new": entry("file", 13, "0644", T1 * 10**9, h(b"# notes\nmore\n"))},
        {"path": "case1/old.tmp", "status": "deleted",
         "old": entry("file", 9, "0644", T0, h(b"\x00\x01binary\xff")), "new": None},
        {"path": "case2/empty", "status": "deleted",
         "old": entry("dir", 0, "0755", os.lstat(root / "case2" / "empty").st_mtime_ns, None), "new": None},
        {"path": "case2/script.sh", "status": "meta_changed",
         "old": entry("file", 18, "0755", T0, h(b"#!/bin/sh\necho hi\n")),
         "new": entry("file", 18, "0700", T0, h(b"#!/bin/sh\necho hi\n"))},
    ]
    assert got["changes"] == changes
    assert got["summary"] == {"added": 1, "modified": 1, "deleted": 2, "type_changed": 0, "meta_changed": 1,
                              "moved": 0, "bytes_written": 22}
    assert set(got) == {"tx", "root", "diff_hash", "changes", "summary"}
    assert (got["tx"], got["root"]) == (tx, str(root))
    assert re.fullmatch(r"[0-9a-f]{32}", got["diff_hash"])
    assert snapshot(root) == before


def test_diff_hash_changes_with_the_change_list_only(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo a > f", cwd=root).returncode == 0
    first = json.loads(roscoe("tx", "diff", tx, "--json").stdout)["diff_hash"]
    assert json.loads(roscoe("tx", "diff", tx, "--json").stdout)["diff_hash"] == first
    assert roscoe("tx", "run", "--tx", tx, "--", "true").returncode == 0
    assert json.loads(roscoe("tx", "diff", tx, "--json").stdout)["diff_hash"] == first
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo b > f", cwd=root).returncode == 0
    second = json.loads(roscoe("tx", "diff", tx, "--json").stdout)["diff_hash"]
    assert second != first
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "chmod 600 f", cwd=root).returncode == 0
    assert json.loads(roscoe("tx", "diff", tx, "--json").stdout)["diff_hash"] not in (first, second)


def test_odd_names_survive_in_json_and_tables(roscoe: Roscoe, root: Path) -> None:
    odd = os.fsdecode(b"odd \xff dir/line\nbreak.txt")
    tx = roscoe.begin(root)
    done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", 'for f in odd*/line*; do echo more >> "$f"; done', cwd=root)
    assert done.returncode == 0, done.stderr
    got = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    assert [c["path"] for c in got["changes"]] == [odd]
    assert b'"odd \\udcff dir/line\\nbreak.txt"' in roscoe("tx", "diff", tx, "--json").stdout
    table = roscoe("tx", "diff", tx).stdout.decode()
    assert "odd \\xff dir/line\\nbreak.txt" in table


def test_successive_runs_see_each_other(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo one > staged.txt", cwd=root).returncode == 0
    done = roscoe("tx", "run", "--tx", tx, "--", "cat", str(root / "staged.txt"))
    assert (done.returncode, done.stdout) == (0, b"one\n")
    assert not (root / "staged.txt").exists()


def test_command_not_found_is_127_and_opens_nothing(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--", "no-such-command-xyz")
    assert done.returncode == 127
    assert done.stderr == b"roscoe: error: command not found: no-such-command-xyz\n"
    assert json.loads(roscoe("tx", "list", "--json").stdout) == []


def test_command_not_executable_is_126(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--", "/etc/passwd")
    assert done.returncode == 126
    assert done.stderr == b"roscoe: error: command cannot be invoked: /etc/passwd: permission denied\n"
    # Inside the root only the sandbox can tell: its shim answers 126 too.
    done = roscoe("tx", "run", "--root", root, "--", "./case1/notes.md", cwd=root)
    assert done.returncode == 126
    done = roscoe("tx", "run", "--root", root, "--", "./case1/missing", cwd=root)
    assert done.returncode == 127


def test_unknown_transaction_is_5(roscoe: Roscoe) -> None:
    for args in (("diff", "nope"), ("show", "nope"), ("abort", "nope"), ("diff", "nope", "--json")):
        done = roscoe("tx", *args)
        error = {"error": {"code": 5, "kind": "no_such_tx", "message": "no such transaction: nope", "paths": []}}
        assert (done.returncode, done.stdout, done.stderr) == (
            5, (json.dumps(error, indent=2) + "\n").encode() if "--json" in args else b"",
            b"roscoe: error: no such transaction: nope\n")


def test_run_failures_of_roscoe_itself_are_125(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    done = roscoe("tx", "run", "--tx", "nope", "--", "true")
    assert (done.returncode, done.stderr) == (125, b"roscoe: error: no such transaction: nope\n")
    done = roscoe("tx", "run", "--root", tmp_path / "missing", "--", "true")
    assert (done.returncode, done.stderr) == (125, f"roscoe: error: root {tmp_path / 'missing'}: does not exist\n".encode())
    done = roscoe("tx", "run", "--bogus", "--", "true")
    assert done.returncode == 125
    assert done.stderr == b"roscoe: error: tx run: no such option: --bogus (see roscoe tx run --help)\n"
    done = roscoe("tx", "run", "--root", root)
    assert done.returncode == 125


def test_bad_roots_are_usage_errors(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    done = roscoe("tx", "begin", "--root", tmp_path / "missing")
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr == f"roscoe: error: root {tmp_path / 'missing'}: does not exist\n".encode()
    done = roscoe("tx", "begin", "--root", root / "case1" / "notes.md")
    assert done.stderr == f"roscoe: error: root {root / 'case1' / 'notes.md'}: is not a directory\n".encode()
    assert done.returncode == 2
    done = roscoe("tx", "begin")
    assert (done.returncode, done.stderr) == (2, b"roscoe: error: no root: pass --root DIR or set ROSCOE_ROOT\n")
    done = roscoe("tx", "begin", env={"ROSCOE_ROOT": str(root)})
    assert done.returncode == 0


def test_unknown_command_and_missing_argument_are_usage_errors(roscoe: Roscoe) -> None:
    done = roscoe("tx", "bogus")
    assert (done.returncode, done.stderr) == (2, b"roscoe: error: No such command 'bogus'. (see roscoe tx --help)\n")
    done = roscoe("tx", "diff")
    assert (done.returncode, done.stderr) == (2, b"roscoe: error: Missing argument 'ID'. (see roscoe tx diff --help)\n")
    done = roscoe("--config", "/nonexistent.toml", "tx", "list")
    assert (done.returncode, done.stderr) == (2, b"roscoe: error: config file /nonexistent.toml does not exist\n")


def test_show_json(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root, "-m", "tidy")
    roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo x > a.txt; exit 3", cwd=root)
    got = json.loads(roscoe("tx", "show", tx, "--json").stdout)
    assert (got["tx"], got["state"], got["root"], got["message"], got["backend"]) == (tx, "open", str(root), "tidy", "kernel")
    assert [(r["argv"], r["exit_code"], r["backend"], r["changes"]) for r in got["runs"]] == [
        (["sh", "-c", "echo x > a.txt; exit 3"], 3, "kernel", 1)
    ]
    assert got["diff"]["summary"] == {"added": 1, "modified": 0, "deleted": 0, "type_changed": 0, "meta_changed": 0, "moved": 0, "bytes_written": 2}
    assert got["diff"]["diff_hash"] == json.loads(roscoe("tx", "diff", tx, "--json").stdout)["diff_hash"]
    assert got["approvals"] == []
    table = roscoe("tx", "show", tx).stdout.decode()
    assert f"tx         {tx}" in table and "backend    kernel" in table


def test_list_is_newest_first_and_filters_by_state(roscoe: Roscoe, root: Path) -> None:
    first = roscoe.begin(root)
    second = roscoe.begin(root)
    assert [t["tx"] for t in json.loads(roscoe("tx", "list", "--json").stdout)] == [second, first]
    assert roscoe("tx", "abort", first).returncode == 0
    assert [t["tx"] for t in json.loads(roscoe("tx", "list", "--state", "aborted", "--json").stdout)] == [first]
    assert [t["tx"] for t in json.loads(roscoe("tx", "list", "--state", "open", "--json").stdout)] == [second]
    done = roscoe("tx", "list", "--state", "weird")
    assert done.returncode == 2


def test_abort_discards_staging_and_closes_the_transaction(roscoe: Roscoe, root: Path, home: Path) -> None:
    before = snapshot(root)
    tx = roscoe.begin(root)
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "mkdir -p x/y && echo z > x/y/z", cwd=root).returncode == 0
    done = roscoe("tx", "abort", tx)
    assert (done.returncode, done.stdout) == (0, b"")
    assert done.stderr == f"roscoe: tx {tx} aborted; its staged changes are discarded and the live tree was not touched\n".encode()
    assert not (home / "tx" / tx / "upper").exists()
    done = roscoe("tx", "diff", tx)
    assert (done.returncode, done.stderr) == (1, f"roscoe: error: transaction {tx} is aborted: diff needs an open transaction\n".encode())
    done = roscoe("tx", "run", "--tx", tx, "--", "true")
    assert done.returncode == 125
    assert snapshot(root) == before


def test_prefix_of_an_id_names_the_transaction(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    assert json.loads(roscoe("tx", "show", tx[:6], "--json").stdout)["tx"] == tx
    assert roscoe("tx", "show", tx[:3]).returncode == 5


def test_stat_and_patch(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    script = "printf 'COMPLAINT\\nline two\\n' > case1/Pleadings/complaint.txt; printf '\\000bin' > b.bin; rm case2/notes-link"
    assert roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", script, cwd=root).returncode == 0
    stat_out = roscoe("tx", "diff", tx, "--stat").stdout.decode().splitlines()
    assert stat_out[:3] == [
        " A b.bin                         | +4 B",
        " M case1/Pleadings/complaint.txt | +19 B",
        " D case2/notes-link              | -17 B",
    ]
    assert stat_out[3].startswith("1 added, 1 modified, 1 deleted; 23 B to write; diff_hash ")
    patch = roscoe("tx", "diff", tx, "--patch").stdout.decode()
    assert "--- a/case1/Pleadings/complaint.txt\n+++ b/case1/Pleadings/complaint.txt\n@@ -1,2 +1,2 @@\n COMPLAINT\n-line 2\n+line two\n" in patch
    assert "A b.bin\nBinary files differ (none → " in patch


def test_pid_namespace_leaves_no_process_behind(roscoe: Roscoe, root: Path) -> None:
    marker = f"roscoe-test-{os.getpid()}-{time.monotonic_ns()}"
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", f"exec -a {marker} sleep 300 & echo started")
    assert (done.returncode, done.stdout) == (0, b"started\n")
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    alive.append(pid)
        except OSError:
            continue
    assert alive == []


def test_outside_the_root_is_read_only_and_tmp_is_private(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "script.sh").write_text("echo from-host-tmp\n")
    script = (
        f"sh {outside}/script.sh; echo private > {outside}/x; cat {outside}/x;"
        " echo private > /tmp/roscoe-private; cat /tmp/roscoe-private;"
        f" ls {root} >/dev/null && echo root-visible"
    )
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, b"from-host-tmp\nprivate\nprivate\nroot-visible\n"), done.stderr
    # /tmp is the host's, seen through a layer that dies with the run
    assert sorted(p.name for p in outside.iterdir()) == ["script.sh"]
    assert not Path("/tmp/roscoe-private").exists()
    done = roscoe("tx", "run", "--root", root, "--", "sh", "-c", "touch /etc/roscoe-test-x")
    assert done.returncode == 1
    assert b"Read-only file system" in done.stderr
    assert not Path("/etc/roscoe-test-x").exists()


def test_network_off_leaves_only_loopback(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--network", "off", "--", "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert (done.returncode, done.stdout) == (0, b"lo\n")
    done = roscoe("tx", "run", "--root", root, "--network", "sideways", "--", "true")
    assert (done.returncode, done.stderr) == (125, b"roscoe: error: --network sideways: expected on or off\n")


def test_timeout_kills_the_run(roscoe: Roscoe, root: Path) -> None:
    started = time.monotonic()
    done = roscoe("tx", "run", "--root", root, "--timeout", "0.5", "--", "sh", "-c", "sleep 60; echo never")
    assert time.monotonic() - started < 30
    assert (done.returncode, done.stdout) == (124, b"")
    tx = tx_from(done.stderr)
    assert f"roscoe: tx {tx}: timed out after 0.5 s; every process of the run was killed" in done.stderr.decode()


def test_report_file(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = roscoe("tx", "run", "--root", root, "--report", report, "--", "sh", "-c", "echo x > r.txt; exit 2", cwd=root)
    assert done.returncode == 2
    got = json.loads(report.read_text())
    tx = tx_from(done.stderr)
    assert (got["tx"], got["root"], got["argv"], got["exit_code"], got["backend"], got["timed_out"]) == (
        tx, str(root), ["sh", "-c", "echo x > r.txt; exit 2"], 2, "kernel", False)
    assert got["summary"] == {"added": 1, "modified": 0, "deleted": 0, "type_changed": 0, "meta_changed": 0, "moved": 0, "bytes_written": 2}
    assert got["diff_hash"] == json.loads(roscoe("tx", "diff", tx, "--json").stdout)["diff_hash"]


def test_shell_reads_commands_from_stdin(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "shell", "--root", root, input=f"cd {root}\necho hi > shell.txt\nexit 3\n".encode(),
                  env={"SHELL": "/bin/sh"})
    assert done.returncode == 3
    tx = tx_from(done.stderr)
    assert [c["path"] for c in json.loads(roscoe("tx", "diff", tx, "--json").stdout)["changes"]] == ["shell.txt"]
    assert not (root / "shell.txt").exists()


def test_unsupported_files_are_reported_not_changes(roscoe: Roscoe, root: Path) -> None:
    done = roscoe("tx", "run", "--root", root, "--", "mkfifo", "pipe", cwd=root)
    assert done.returncode == 0
    tx = tx_from(done.stderr)
    assert "roscoe: warning: 'pipe' is a fifo: it cannot be committed" in done.stderr.decode()
    got = json.loads(roscoe("tx", "diff", tx, "--json").stdout)
    assert (got["changes"], got["unsupported"]) == ([], [{"path": "pipe", "type": "fifo"}])


def test_global_home_option(tmp_path: Path, root: Path) -> None:
    other = tmp_path / "elsewhere"
    roscoe = Roscoe(tmp_path / "unused")
    done = roscoe("--home", other, "tx", "begin", "--root", root)
    assert done.returncode == 0
    assert (other / "journal.db").exists()
    assert not (tmp_path / "unused").exists()


def test_full_state_dir_is_a_clear_error(tmp_path: Path, root: Path) -> None:
    home = tmp_path / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(home)], check=True)
    try:
        roscoe = Roscoe(home)
        tx = roscoe.begin(root)
        before = snapshot(root)
        with open(home / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        message = (f"roscoe: error: state dir {home}: its filesystem is out of space (tmpfs at {home}:"
                   " 0 bytes of 1.0 MiB free); nothing was changed\n").encode()
        done = roscoe("tx", "begin", "--root", root)
        assert (done.returncode, done.stdout, done.stderr) == (1, b"", message)
        done = roscoe("tx", "run", "--tx", tx, "--", "sh", "-c", "echo data > big.txt", cwd=root)
        assert (done.returncode, done.stdout, done.stderr) == (125, b"", message)
        assert snapshot(root) == before
        os.unlink(home / "filler")
        assert json.loads(roscoe("tx", "list", "--json").stdout)[0]["tx"] == tx
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


def test_a_transaction_runs_one_command_at_a_time(roscoe: Roscoe, root: Path) -> None:
    tx = roscoe.begin(root)
    first = subprocess.Popen(
        [*roscoe_argv(), "tx", "run", "--tx", tx, "--", "sh", "-c", "echo started; sleep 30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=roscoe.env,
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == b"started\n"
        done = roscoe("tx", "run", "--tx", tx, "--", "true")
        assert done.returncode == 125
        assert done.stderr == (
            f"roscoe: tx {tx}\nroscoe: error: transaction {tx} is busy: another roscoe process"
            f" is using it (pid {first.pid})\n"
        ).encode()
        done = roscoe("tx", "diff", tx)
        assert done.returncode == 1
    finally:
        first.kill()
        first.wait()


def roscoe_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "cli.main"]


def test_interrupt_goes_to_the_command_and_roscoe_reports_its_status(roscoe: Roscoe, root: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [*roscoe_argv(), "tx", "run", "--root", root, "--", "sh", "-c",
         "trap 'echo caught; exit 42' INT; echo ready; while :; do sleep 0.1; done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=roscoe.env, start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    os.killpg(proc.pid, signal.SIGINT)  # what ^C does: the whole foreground group
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (42, b"caught\n")
    assert err.decode().splitlines()[-1].endswith("exited 42; no changes staged (kernel); review: roscoe tx diff " + tx_from(err))


def test_no_sandbox_at_all_is_a_clear_error(roscoe: Roscoe, root: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    before = snapshot(root)
    done = roscoe("tx", "run", "--root", root, "--", "true", env={"ROSCOE_BWRAP": str(fake)})
    assert done.returncode == 125
    last = done.stderr.decode().splitlines()[-1]
    assert last == (
        f"roscoe: error: no staging backend works for root {root}: "
        "kernel: bwrap: No permissions to create new namespace; "
        "kernel-bindfs: bwrap: No permissions to create new namespace; "
        "copy: bwrap: No permissions to create new namespace"
    )
    assert snapshot(root) == before
