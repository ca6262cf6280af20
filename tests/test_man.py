"""The man pages in man/ against the CLI they describe.

Every command and option the typer app registers is documented, every command
has help text, the fast ``tx run`` parser accepts exactly the options typer
declares, and the pages render with no warnings.

Pages: ``roscoe.1`` for the app and its global options, ``roscoe-GROUP.1`` for
each command group, where each command has a ``.SS NAME`` subsection under
``.SH COMMANDS`` whose ``.TP`` items are its options.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

import cli.app
from cli.run import RUN_OPTIONS, RunArgs
from cowfs.changeset import STATUSES
from cowfs.errors import ExitCode
from cowfs.sandbox import TIMED_OUT

REPO = Path(__file__).resolve().parent.parent
MAN = REPO / "man"
ROOT_COMMAND = typer.main.get_command(cli.app.app)


# -- the command tree ----------------------------------------------------------

def walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) for the app, every group and every command, depth first."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += walk(sub, path + (name,))
    return found


ALL = walk(ROOT_COMMAND)
GROUPS = [(p, c) for p, c in ALL if hasattr(c, "commands")]
LEAVES = [(p, c) for p, c in ALL if not hasattr(c, "commands")]


def ids(items: list[tuple[tuple[str, ...], Any]]) -> list[str]:
    return [" ".join(("roscoe",) + p) for p, _ in items]


def option_names(command: Any) -> set[str]:
    return {
        name
        for param in command.params
        if param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
    }


def page_of(group_path: tuple[str, ...]) -> Path:
    """The page of a group: roscoe.1 for the app, roscoe-tx.1 for ``tx``."""
    return MAN / ("-".join(("roscoe",) + group_path) + ".1")


# -- reading roff ----------------------------------------------------------------

SPECIAL = {"-": "-", "(aq": "'", "(lq": '"', "(rq": '"', "(en": "-", "(em": "--",
           "(bu": "*", "(->": "->", "e": "\\", "&": "", "%": "", "(dq": '"'}
ESCAPE = re.compile(r"\\(f(?:\[[^\]]*\]|\(..|.)|\(..|\[[^\]]*\]|.)")
ARG = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')
ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
JOINED = {"B", "I", "SM", "SB", "SH", "SS", "TH"}


def unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc.startswith("f"):
            return ""
        if esc not in SPECIAL:
            raise AssertionError(f"unknown roff escape \\{esc} in {text!r}: add it to SPECIAL")
        return SPECIAL[esc]

    return ESCAPE.sub(one, text)


def plain(line: str) -> str | None:
    """The text a roff source line shows, without fonts; None for requests
    that show no text (.PP, .TP, .br, comments ...)."""
    if not line.startswith((".", "'")):
        return unescape(line)
    if line.startswith(('.\\"', "'\\\"")):
        return None
    macro, _, rest = line[1:].partition(" ")
    if macro not in ALTERNATING | JOINED:
        return None
    args = [quoted.replace('""', '"') if quoted or m.group(2) is None else m.group(2)
            for m in ARG.finditer(rest) for quoted in [m.group(1)]]
    return unescape(("" if macro in ALTERNATING else " ").join(args))


def plain_text(lines: list[str]) -> str:
    return "\n".join(t for t in map(plain, lines) if t is not None)


def read_page(page: Path) -> list[str]:
    assert page.is_file(), f"{page.relative_to(REPO)} is missing"
    return page.read_text(encoding="ascii").splitlines()


def section(lines: list[str], sh: str, ss: str | None = None) -> list[str]:
    """The source lines of ``.SH sh`` (or of its ``.SS ss``), headings excluded."""
    out: list[str] | None = None
    in_sh = False
    for line in lines:
        if line.startswith(".SH"):
            if out is not None:
                break
            in_sh = plain(line) == sh
            if in_sh and ss is None:
                out = []
            continue
        if line.startswith(".SS") and in_sh and ss is not None:
            if out is not None:
                break
            if plain(line) == ss:
                out = []
            continue
        if out is not None:
            out.append(line)
    where = f".SH {sh}" + (f" / .SS {ss}" if ss else "")
    assert out is not None, f"no {where}"
    assert out, f"{where} is empty"
    return out


def subsections(lines: list[str], sh: str) -> list[str]:
    return [t for t in map(plain, (ln for ln in section(lines, sh) if ln.startswith(".SS"))) if t]


def tags(lines: list[str]) -> list[str]:
    """The tags of the ``.TP`` items among ``lines``."""
    found = []
    for i, line in enumerate(lines):
        if line.strip() == ".TP":
            tag = plain(lines[i + 1])
            assert tag is not None, f".TP without a tag before {lines[i + 1]!r}"
            found.append(tag)
    return found


OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def option_tags(lines: list[str]) -> list[str]:
    return [opt for tag in tags(lines) for opt in OPTION.findall(tag)]


def synopsis_entries(lines: list[str]) -> list[str]:
    """The SYNOPSIS as one line of text per command (split at .br and .PP)."""
    entries: list[list[str]] = [[]]
    for line in section(lines, "SYNOPSIS"):
        if line.strip() in (".br", ".PP"):
            entries.append([])
        else:
            entries[-1].append(line)
    return [" ".join(plain_text(e).split()) for e in entries if e]


def leaf_section(path: tuple[str, ...]) -> list[str]:
    return section(read_page(page_of(path[:-1])), "COMMANDS", path[-1])


# -- (a) every command is documented ----------------------------------------------

def test_the_pages_are_one_per_group():
    assert sorted(MAN.glob("*.1")) == sorted(page_of(p) for p, _ in GROUPS)


@pytest.mark.parametrize(("path", "group"), GROUPS, ids=ids(GROUPS))
def test_every_group_has_its_page(path, group):
    lines = read_page(page_of(path))
    name = "-".join(("roscoe",) + path)
    header = plain(next(ln for ln in lines if ln.startswith(".TH")))
    assert header is not None and header.split()[:2] == [name.upper(), "1"]
    assert plain_text(section(lines, "NAME")).startswith(f"{name} - ")
    if path:
        top = read_page(page_of(()))
        assert f"{name}(1)" in plain_text(section(top, "COMMANDS"))
        assert f"{name}(1)" in plain_text(section(top, "SEE ALSO"))
        assert "roscoe(1)" in plain_text(section(lines, "SEE ALSO"))


@pytest.mark.parametrize(("path", "group"), [g for g in GROUPS if g[0]], ids=ids([g for g in GROUPS if g[0]]))
def test_a_group_page_has_one_subsection_per_command(path, group):
    assert subsections(read_page(page_of(path)), "COMMANDS") == list(group.commands)


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_command_is_documented(path, command):
    full = " ".join(("roscoe",) + path)
    lines = read_page(page_of(path[:-1]))
    # Its own subsection starts with its synopsis ...
    text = plain_text(leaf_section(path))
    assert text.startswith(full), text[:200]
    # ... it has a line of the page's SYNOPSIS ...
    entries = [e for e in synopsis_entries(lines) if re.search(rf"\b{' '.join(path)}\b", e)]
    assert len(entries) == 1, synopsis_entries(lines)
    # ... and roscoe.1 lists it among the commands.
    assert full in tags(section(read_page(page_of(())), "COMMANDS"))


def test_the_pages_name_no_command_that_does_not_exist():
    names = {p: set(getattr(c, "commands", {})) for p, c in GROUPS}
    for page in sorted(MAN.glob("*.1")):
        text = plain_text(read_page(page))
        for path, known in names.items():
            if not path:
                continue
            for word in re.findall(rf"\broscoe {' '.join(path)} ([a-z][a-z-]*)", text):
                assert word in known, f"{page.name} names roscoe {' '.join(path)} {word}, which does not exist"


# -- (b) every option is documented -----------------------------------------------

def test_the_global_options_are_documented():
    lines = read_page(page_of(()))
    assert option_names(ROOT_COMMAND) == {"--home", "--config", "--debug"}
    documented = option_tags(section(lines, "GLOBAL OPTIONS"))
    assert sorted(documented) == sorted(option_names(ROOT_COMMAND))
    synopsis = synopsis_entries(lines)[0]
    assert synopsis.startswith("roscoe [--home DIR] [--config FILE] [--debug] ")


@pytest.mark.parametrize(("path", "group"), [g for g in GROUPS if g[0]], ids=ids([g for g in GROUPS if g[0]]))
def test_a_group_page_documents_the_group_options(path, group):
    opts = option_names(group)
    if opts:
        assert sorted(option_tags(section(read_page(page_of(path)), "OPTIONS"))) == sorted(opts)
    else:
        assert ".SH OPTIONS" not in read_page(page_of(path))


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_option_is_documented_with_its_command(path, command):
    # Each option has a .TP item in the command's subsection, and nothing else does.
    assert sorted(option_tags(leaf_section(path))) == sorted(option_names(command))


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_option_is_in_the_synopsis(path, command):
    [entry] = [e for e in synopsis_entries(read_page(page_of(path[:-1])))
               if re.search(rf"\b{' '.join(path)}\b", e)]
    for param in command.params:
        if param.param_type_name == "option":
            names = (*param.opts, *param.secondary_opts)
            assert any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", entry) for n in names), (names, entry)


def test_every_serve_option_is_documented():
    """roscoe serve parses its own options (cli.grammar.SERVE, no typer):
    each is in its synopsis line and in SERVICE."""
    from cli.grammar import SERVE

    lines = read_page(page_of(()))
    [entry] = [e for e in synopsis_entries(lines) if re.search(r"\bserve\b", e)]
    service = plain_text(section(lines, "SERVICE"))
    for opt in SERVE:
        for name in opt.names:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", entry), (name, entry)
            assert name in service, name


def test_the_exit_codes_are_the_contract_codes():
    lines = read_page(page_of(()))
    codes = [int(t) for t in tags(section(lines, "EXIT STATUS"))]
    assert codes == [0, 1, 2, 3, 4, 5, 6, 124, 125, 126, 127]
    assert set(codes) == {int(c) for c in ExitCode} | {TIMED_OUT}


def test_every_diff_status_and_key_is_documented():
    diff = leaf_section(("tx", "diff"))
    documented = set(tags(diff))
    assert set(STATUSES) == {"added", "modified", "deleted", "type_changed", "meta_changed"}
    assert set(STATUSES) <= documented
    assert {"tx", "root", "diff_hash", "changes", "summary", "unsupported"} <= documented
    text = " ".join(plain_text(diff).split())
    for key in ("path", "status", "old", "new", "type", "size", "mode", "mtime_ns", "uid", "gid", "hash", "target",
                "moved_from", "moved_to", *STATUSES, "moved", "bytes_written"):
        assert re.search(rf'"{key}":', text), key
    assert "which count once under moved (not under added or deleted)" in text
    assert "R OLD -> NEW" in text


def test_every_roscoe_environment_variable_is_documented():
    used = set()
    for package in ("cli", "cowfs", "journal"):
        for source in sorted((REPO / package).rglob("*.py")):
            used |= set(re.findall(r"[\"'](ROSCOE_[A-Z_]+)[\"']", source.read_text(encoding="utf-8")))
    documented = set(tags(section(read_page(page_of(())), "ENVIRONMENT")))
    assert {"ROSCOE_HOME", "ROSCOE_ROOT", "ROSCOE_CONFIG", "STORAGE_EMULATOR_HOST",
            "ROSCOE_BACKEND", "ROSCOE_BWRAP", "ROSCOE_DEBUG"} <= documented
    assert used - documented == set()


# -- (c) every command has help text ----------------------------------------------

@pytest.mark.parametrize(("path", "command"), ALL, ids=ids(ALL))
def test_every_command_has_help(path, command):
    assert command.help and command.help.strip()
    first = " ".join(command.help.strip().splitlines()[0].split())
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "cli.main", *path, "--help"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"Usage: {' '.join(('roscoe',) + path)} [OPTIONS]")
    assert first in " ".join(done.stdout.split())


# -- (d) the fast tx run parser and typer agree ----------------------------------

def test_the_fast_run_parser_takes_the_options_typer_declares():
    run = ROOT_COMMAND.commands["tx"].commands["run"]
    assert set(RUN_OPTIONS) == option_names(run)
    for param in run.params:
        if param.param_type_name == "option":
            for name in (*param.opts, *param.secondary_opts):
                assert RUN_OPTIONS[name] == (param.name, not param.is_flag), name
    # RunArgs carries every parameter, with typer's defaults.
    defaults = vars(RunArgs())
    assert set(defaults) == {p.name for p in run.params}
    assert defaults["command"] == []
    for param in run.params:
        if param.param_type_name == "option":
            assert defaults[param.name] == param.default, param.name


# -- (e) the pages render cleanly -----------------------------------------------

@pytest.mark.parametrize("page", ["roscoe.1", "roscoe-tx.1"])
def test_the_page_renders_without_warnings(page):
    source = MAN / page
    if shutil.which("groff"):
        done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(source)],
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, "")
        shown = re.sub(".\x08", "", done.stdout)  # overstruck bold and underline
        assert shown.split()[0] == source.stem.upper() + "(1)"
        assert "\nNAME\n" in shown and "\nSEE ALSO\n" in shown
    elif shutil.which("mandoc"):
        done = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", str(source)],
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    else:
        pytest.fail("neither groff nor mandoc is installed: apt-get install groff-base "
                    "(scripts/test.sh installs it)")
