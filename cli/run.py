"""``roscoe tx run`` and ``tx shell``: the commands on every agent call.

They import neither typer nor rich: ``main`` parses ``tx run`` with the
table of ``cli.grammar`` so start-up stays near bare Python's. typer declares
the same options from the same table (for ``--help`` and the man page).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import sys

from cli.grammar import RUN, spellings
from cowfs.errors import RoscoeError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cowfs.callerfile import CallerFile

# option -> (attribute, takes a value), from the one table (cli.grammar)
RUN_OPTIONS: dict[str, tuple[str, bool]] = {name: (o.attr, o.value) for name, o in spellings(RUN).items()}
REPEATABLE = {o.attr for o in RUN if o.repeatable}
# What --clean-env keeps of roscoe's own environment (ROSCOE_TX and ROSCOE_ROOT
# are always set for the run).
CLEAN_ENV = ("PATH", "HOME", "LANG", "TERM")
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_TIMEOUT = 2_147_483  # poll(2) counts milliseconds in an int: about 24 days
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class HelpWanted(Exception):
    """``--help`` among the options: typer prints the help."""


class RunArgs:
    """The options and command of ``tx run`` (or ``tx shell``)."""

    def __init__(
        self, tx: str | None = None, root: str | None = None, message: str | None = None,
        network: str = "on", timeout: str | None = None, report: str | None = None,
        command: list[str] | None = None, commit: bool = False, yes: bool = False,
        memory: str | None = None, pids: str | None = None, env: list[str] | None = None,
        clean_env: bool = False, writable: list[str] | None = None, hide: list[str] | None = None,
    ) -> None:
        self.tx, self.root, self.message = tx, root, message
        self.network, self.timeout, self.report = network, timeout, report
        self.command = command or []
        self.commit, self.yes = commit, yes
        self.memory, self.pids, self.clean_env = memory, pids, clean_env
        self.env, self.writable, self.hide = env, writable, hide


def parse_run_args(argv: list[str]) -> RunArgs:
    """Parse ``[OPTIONS] [--] CMD [ARG...]``: options stop at ``--`` or at CMD."""
    args = RunArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if name in ("--help", "-h"):
            raise HelpWanted
        if name not in RUN_OPTIONS:
            raise UsageError(detail=f"tx run: no such option: {name} (see roscoe tx run --help)")
        attr, takes_value = RUN_OPTIONS[name]
        if not takes_value:
            if eq:
                raise UsageError(detail=f"tx run: option {name} takes no value")
            setattr(args, attr, True)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError(detail=f"tx run: option {name} needs a value")
            value = argv[i + 1]
            i += 1
        if attr in REPEATABLE:
            setattr(args, attr, [*(getattr(args, attr) or []), value])
        else:
            setattr(args, attr, value)
        i += 1
    args.command = argv[i:]
    if not args.command:
        raise UsageError(detail="tx run: no command given (roscoe tx run [OPTIONS] -- CMD [ARG...])")
    return args


def parse_timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(detail=f"--timeout {value}: expected a number of seconds") from None
    if not seconds > 0:
        raise UsageError(detail=f"--timeout {value}: must be more than 0")
    if not seconds <= MAX_TIMEOUT:
        raise UsageError(detail=f"--timeout {value}: must be at most {MAX_TIMEOUT} (about 24 days)")
    return seconds


def parse_limits(args: RunArgs):  # type: ignore[no-untyped-def]
    """--memory and --pids as a cowfs.limits.Limits."""
    from cowfs.limits import NO_LIMITS, Limits, parse_pids, parse_size

    if args.memory is None and args.pids is None:
        return NO_LIMITS
    return Limits(
        parse_size(args.memory) if args.memory is not None else None,
        parse_pids(args.pids) if args.pids is not None else None,
    )


def run_env(args: RunArgs, base: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """The run's environment: roscoe's own (or, with --clean-env, only
    CLEAN_ENV of it) plus every --env KEY=VAL."""
    if args.clean_env:
        env = {k: base[k] for k in CLEAN_ENV if k in base}
        env.setdefault("PATH", CLEAN_PATH)
    else:
        env = dict(base)
    for pair in args.env or []:
        key, eq, value = pair.partition("=")
        if not eq or not ENV_NAME.fullmatch(key):
            raise UsageError(detail=f"--env {pair}: expected KEY=VALUE with KEY a variable name")
        if key in ("ROSCOE_TX", "ROSCOE_ROOT"):
            raise UsageError(detail=f"--env {pair}: {key} is set by roscoe for every run")
        env[key] = value
    return env


def parse_network(value: str) -> bool:
    if value not in ("on", "off"):
        raise UsageError(detail=f"--network {value}: expected on or off")
    return value == "on"


def execute(args: RunArgs, settings, *, interactive: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Run ``args.command`` in its transaction; returns the exit code to exit with."""
    from cli.errors import say
    from cli.state import service

    network = parse_network(args.network)
    timeout = parse_timeout(args.timeout)
    limits = parse_limits(args)
    env = run_env(args, os.environ if settings.env is None else settings.env)
    with service(settings) as roscoe:
        # bad --writable, --hide and --report values fail before a transaction exists
        tx, root = roscoe.check_run(args.tx, args.root, args.command,
                                    writable=args.writable or (), hide=args.hide or ())
        report = report_place(args.report, root, roscoe.home) if settings.report_fd is None else settings.report_fd
        if tx is None:
            tx = roscoe.begin(root, args.message)
        say(f"tx {tx.id}")
        command, pass_fds = args.command, ()
        if interactive:
            say(f"shell in the staged overlay of {tx.root}; exit to leave (nothing lands until commit)")
            command, pass_fds = prompt_shell(command, tx.id, env)
        result = roscoe.run(
            tx.id, command, env=env, network=network, timeout=timeout, limits=limits,
            writable=args.writable or (), pass_fds=pass_fds, hide=args.hide or (),
        )
        summary = result.report()
        will_commit = args.commit and result.exit_code == 0
        if report is not None:  # (again below, once the commit is decided)
            write_report(report, dict(summary, commit=commit_outcome("pending") if will_commit else (
                commit_outcome("not_attempted") if args.commit else None)), tx.root, roscoe.home)
        summarize(tx.id, args, result)
        if not args.commit:
            return result.exit_code
        if not will_commit:
            say(f"tx {tx.id} not committed: the command exited {result.exit_code}; it stays open")
            return result.exit_code
        from cli.errors import describe

        outcome = commit_outcome("failed")
        try:
            code, outcome = commit_after_run(roscoe, tx.id, yes=args.yes)
        except Exception as e:  # not roscoe's own error: 125, as any in a run
            outcome = commit_outcome("failed", describe(e)["error"])  # type: ignore[arg-type]
            raise
        finally:
            if report is not None:
                write_report(report, dict(summary, commit=outcome), tx.root, roscoe.home)
        return result.exit_code if code is None else code


# What the report's "commit" says: roscoe tried it (committed, or refused: the
# error's kind), or did not (CMD failed; declined at the prompt).
COMMIT_OUTCOMES = ("committed", "approval_needed", "refused", "rejected", "conflict", "busy",
                   "failed", "not_attempted", "declined")


def commit_outcome(outcome: str, error: dict[str, object] | None = None,
                   tx: dict[str, object] | None = None) -> dict[str, object]:
    return {"outcome": outcome, "error": error, "tx": tx}


def commit_after_run(roscoe, tx_id: str, *, yes: bool) -> tuple[int | None, dict[str, object]]:  # type: ignore[no-untyped-def]
    """``tx run --commit``: commit ``tx_id``; the exit code that then wins
    over CMD's (None: CMD's stays) and the report's "commit" object."""
    from cli.errors import Declined, describe, fail, say
    from cli.state import commit_with_prompt, committed_json

    try:
        record = commit_with_prompt(roscoe, tx_id, yes=yes)
    except Declined as e:
        say(e.message)
        return None, commit_outcome("declined", describe(e)["error"])  # type: ignore[arg-type]
    except RoscoeError as e:
        error = describe(e)["error"]
        assert isinstance(error, dict)
        kind = error["kind"]
        outcome = kind if kind in COMMIT_OUTCOMES else "failed"
        return fail(e), commit_outcome(str(outcome), error)  # the commit's own code (1, 3, 4) wins over CMD's 0
    return None, commit_outcome("committed", tx=committed_json(roscoe, record))


def summarize(tx_id: str, args: RunArgs, result) -> None:  # type: ignore[no-untyped-def]
    """roscoe's closing lines of a run, on stderr."""
    from cli.errors import say

    if result.timed_out:
        say(f"tx {tx_id}: timed out after {args.timeout} s; every process of the run was killed")
    for warning in result.warnings:
        say(f"warning: {warning}")
    enforced = result.limits
    if enforced is not None and enforced.memory is not None:
        from cowfs.limits import human

        if enforced.by == "rlimit":
            say(f"warning: --memory {args.memory}: no memory cgroup can be made here; each process of the"
                f" run was held to {human(enforced.memory)} of address space instead (RLIMIT_AS)")
        if enforced.oom_kills:
            say(f"tx {tx_id}: out of memory: the kernel killed {enforced.oom_kills} process(es) of the run"
                f" for going over --memory {args.memory}")
    counts = result.changes.summary  # (a move counted once, as moved)
    staged = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n and k != "bytes_written") or "no changes"
    cmd = shlex.join(args.command).replace("\n", "\\n")
    cmd = cmd if len(cmd) <= 60 else cmd[:57] + "..."
    say(
        f"tx {tx_id}: {cmd!s} exited {result.exit_code}; {staged} staged"
        f" ({result.backend}); review: roscoe tx diff {tx_id}"
    )
    for u in result.changes.unsupported:
        say(f"warning: {u.path!r} is a {u.type}: it cannot be committed")
    for line in discarded_lines(result.root, result.discarded):
        say(line)


def discarded_lines(root: str, discarded: tuple[str, ...] | list[str]) -> list[str]:
    """One line for the files a run wrote in its private /tmp, one for those it
    wrote under hidden paths of the root: both gone with the run."""
    inside = root.rstrip("/") + "/"
    tmp = [os.path.relpath(p, "/tmp") for p in discarded if not p.startswith(inside)]
    hidden = [os.path.relpath(p, root) for p in discarded if p.startswith(inside)]
    lines = []
    if tmp:
        lines.append(f"discarded {_files(len(tmp))} the run wrote outside {_shown(root)}"
                     f" (under /tmp: {_names(tmp)}); use --writable PATH to keep them")
    if hidden:
        lines.append(f"discarded {_files(len(hidden))} the run wrote under hidden paths of {_shown(root)}:"
                     f" {_names(hidden)}")
    return lines


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n} files"


def _shown(path: str) -> str:
    """A path on one line of text: newlines and bytes that are not UTF-8 escaped."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n")


def _names(paths: list[str], most: int = 3) -> str:
    shown = ", ".join(_shown(p) for p in paths[:most])
    return shown + (", ..." if len(paths) > most else "")


def report_place(path: str | None, root: str, home: str) -> CallerFile | None:
    """Where --report goes (cowfs.callerfile): checked before the run, never
    in the root or the state dir, never through a symlink."""
    if path is None:
        return None
    from cowfs import callerfile

    return callerfile.place(path, "--report", {"the root": root, "the state dir": home})


def write_report(where: CallerFile | int, report: dict[str, object], root: str, home: str) -> None:
    """The report into ``where``: a checked place (cowfs.callerfile), or, for
    a client of ``roscoe serve``, the fd of the scratch file it passed (the
    client writes its --report FILE from it: cli.client)."""
    data = (json.dumps(report, indent=2) + "\n").encode()
    if isinstance(where, int):
        os.pwrite(where, data, 0)
        os.ftruncate(where, len(data))
        return
    from cowfs import callerfile

    callerfile.write(where, data, "--report", {"the root": root, "the state dir": home})


def shell_command(env: dict[str, str] | None = None) -> list[str]:
    """$SHELL of ``env`` (the command's environment; None: roscoe's own), interactive on a terminal."""
    shell = (os.environ if env is None else env).get("SHELL") or "/bin/sh"
    return [shell, "-i"] if sys.stdin.isatty() else [shell]


def prompt_shell(command: list[str], tx_id: str, env: dict[str, str]) -> tuple[list[str], tuple[int, ...]]:
    """The shell with a prompt that names the transaction, and the fds it needs.

    sh and most shells take PS1 from the environment; bash's ~/.bashrc sets
    its own, so bash gets an rc file (in memory, passed to the run as an fd)
    that reads ~/.bashrc first and then sets the prompt.
    """
    env["PS1"] = f"roscoe:{tx_id}$ "
    name = os.path.basename(command[0])
    if name in ("sh", "dash") and "-i" in command:
        # no job control: on exit dash would hand the terminal back to roscoe's
        # process group, which the run's pid namespace cannot name, and exit 2
        return [*command, "+m"], ()
    if name != "bash" or "-i" not in command:
        return command, ()
    rc = (
        '[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc; [ -f ~/.bashrc ] && . ~/.bashrc\n'
        f"PS1='roscoe:{tx_id}:\\w\\$ '\n"
    )
    mem = os.memfd_create("roscoe-bashrc", os.MFD_CLOEXEC)
    os.write(mem, rc.encode())
    fd = fcntl.fcntl(mem, fcntl.F_DUPFD, 10)  # inherited by bwrap and the shell, clear of fds 2-6
    os.close(mem)
    return [command[0], "--rcfile", f"/proc/self/fd/{fd}", *command[1:]], (fd,)
