"""The typer app: every command parses its options, calls one library method,
and hands the result to ``cli.render``. No logic lives here."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cli import render
from cli.errors import fail, say, warn
from cli.run import RunArgs, execute, shell_command
from cowfs.errors import ExitCode, RoscoeError, UsageError

STATES = ("open", "committing", "committed", "aborted")

app = typer.Typer(
    name="roscoe", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Transactional copy-on-write changes to a directory tree: stage a run, "
    "review its hashed diff, then commit it atomically or throw it away.",
)
tx_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None,
    help="Transactions: begin, run, shell, diff, show, list, approve, reject, wait, commit, rollback, log, abort.",
)
app.add_typer(tx_app, name="tx")


def workspace(root: str | None = None):  # type: ignore[no-untyped-def]
    from cli.state import open_workspace

    return open_workspace(root)


@app.callback()
def main_options(
    home: Annotated[Optional[str], typer.Option("--home", metavar="DIR",
        help="State dir: journal, staging, blobs (default $ROSCOE_HOME, else $XDG_STATE_HOME/roscoe).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", metavar="FILE",
        help="Config file (default $ROSCOE_CONFIG, else $ROSCOE_HOME/config.toml).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Global options go before the subcommand (they were applied by cli.main)."""


TxId = Annotated[str, typer.Argument(metavar="ID", help="Transaction id (or a unique prefix of 4+ chars).")]
TxOpt = Annotated[Optional[str], typer.Option("--tx", metavar="ID", help="Use this open transaction instead of a new one.")]
RootOpt = Annotated[Optional[str], typer.Option("--root", metavar="DIR", help="The live tree to stage (default $ROSCOE_ROOT).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Every command but tx run and tx shell takes --json (cli.errors.NO_JSON): its
# result as one JSON object on stdout; a failure prints the error object
# (cli.errors.fail does that for every command, from the command line).
JsonResultOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


@tx_app.command("begin")
def tx_begin(
    root: RootOpt = None,
    message: Annotated[Optional[str], typer.Option("-m", "--message", metavar="MSG", help="What the transaction is for.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", metavar="URL", help="Commit through the GCS API to gs://BUCKET/PREFIX (the root is its mount); default: the config's [roots] target.")] = None,
    json_: JsonResultOpt = False,
) -> int:
    """Open a transaction over the root; print only its id (with --json, the transaction)."""
    from cli.run import default_root

    ws = workspace(root)
    try:
        tx = ws.begin(default_root(root), message, target)
    finally:
        ws.close()
    if json_:
        render.json_out(tx.to_json())
    else:
        print(tx.id)
    return 0


RUN_CONTEXT = {"allow_interspersed_args": False, "ignore_unknown_options": True}


NetworkOpt = Annotated[str, typer.Option("--network", metavar="on|off", help="Give the run the host's network (on) or only a private loopback (off).")]
TimeoutOpt = Annotated[Optional[str], typer.Option("--timeout", metavar="SECONDS", help="Kill every process of the run after this long (exit 124).")]
MemoryOpt = Annotated[Optional[str], typer.Option("--memory", metavar="SIZE", help="Memory limit of the whole run, e.g. 512M or 2G (a cgroup; else RLIMIT_AS per process, with a warning).")]
PidsOpt = Annotated[Optional[str], typer.Option("--pids", metavar="N", help="At most N processes at once in the run (needs a cgroup).")]
EnvOpt = Annotated[Optional[list[str]], typer.Option("--env", metavar="KEY=VAL", help="Set a variable in the run's environment (repeatable).")]
CleanEnvOpt = Annotated[bool, typer.Option("--clean-env", help="Pass only PATH, HOME, LANG and TERM of roscoe's environment (plus --env).")]
WritableOpt = Annotated[Optional[list[str]], typer.Option("--writable", metavar="PATH", help="Let the run write PATH, outside the root, for real (repeatable).")]
HideOpt = Annotated[Optional[list[str]], typer.Option("--hide", metavar="PATH", help="Hide PATH (relative to the root, or absolute outside it) from the run: it sees an empty read-only dir or file there (repeatable; adds to the config's [run] hide).")]


@tx_app.command("run", context_settings=RUN_CONTEXT)
def tx_run(
    command: Annotated[list[str], typer.Argument(metavar="-- CMD [ARG...]", help="The command to run in the overlay.")],
    tx: TxOpt = None,
    root: RootOpt = None,
    message: Annotated[Optional[str], typer.Option("-m", "--message", metavar="MSG", help="Message of the new transaction.")] = None,
    network: NetworkOpt = "on",
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    pids: PidsOpt = None,
    env: EnvOpt = None,
    clean_env: CleanEnvOpt = False,
    writable: WritableOpt = None,
    hide: HideOpt = None,
    report: Annotated[Optional[str], typer.Option("--report", metavar="FILE", help="Write the run's JSON report to FILE.")] = None,
    commit: Annotated[bool, typer.Option("--commit", help="Commit afterwards when CMD exited 0 (asks first on a terminal).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="With --commit: do not ask.")] = False,
) -> int:
    """Run CMD inside the transaction's staged overlay (a new transaction without --tx).

    CMD's stdin, stdout and stderr pass through untouched and its exit status is
    returned; roscoe's own lines go to stderr, the first being "roscoe: tx ID".
    roscoe's own failures exit 125, a CMD that cannot be invoked 126, not found 127.
    """
    try:
        return execute(RunArgs(
            tx, root, message, network, timeout, report, command, commit, yes,
            memory=memory, pids=pids, env=env, clean_env=clean_env, writable=writable, hide=hide,
        ))
    except RoscoeError as e:
        return fail(e, in_run=True)


@tx_app.command("shell")
def tx_shell(
    tx: TxOpt = None,
    root: RootOpt = None,
    network: NetworkOpt = "on",
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    pids: PidsOpt = None,
    env: EnvOpt = None,
    clean_env: CleanEnvOpt = False,
    writable: WritableOpt = None,
    hide: HideOpt = None,
) -> int:
    """An interactive shell ($SHELL) inside the transaction's staged overlay.

    Its prompt names the transaction (roscoe:ID$); the run's options are tx run's.
    """
    try:
        return execute(RunArgs(
            tx=tx, root=root, network=network, timeout=timeout, command=shell_command(),
            memory=memory, pids=pids, env=env, clean_env=clean_env, writable=writable, hide=hide,
        ), interactive=True)
    except RoscoeError as e:
        return fail(e, in_run=True)


@tx_app.command("plan")
def tx_plan(
    plan: Annotated[Optional[str], typer.Argument(metavar="PLAN", help="The plan: a JSON file, or - for standard input.")] = None,
    tx: TxOpt = None,
    root: RootOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff the transaction would have after the plan; stage nothing.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON: the dry run's diff, or what was staged.")] = False,
    schema: Annotated[bool, typer.Option("--schema", help="Print the plan's JSON Schema and exit.")] = False,
    hide: HideOpt = None,
) -> int:
    """Stage a JSON plan of file operations (mkdir, move, copy, rename, delete,
    write) into a transaction (a new one without --tx, whose id is printed).

    The whole plan is checked before any op runs; a plan that is malformed,
    names a path outside the root, or fails at an op exits 2 naming the op,
    and stages nothing. See roscoe-plan(5) for the format.
    """
    from cli.plan import execute as plan_execute

    return plan_execute(plan, tx=tx, root=root, dry_run=dry_run, json_=json_, schema=schema, hide=hide or ())


@tx_app.command("diff")
def tx_diff(
    tx: TxId,
    json_: JsonOpt = False,
    patch: Annotated[bool, typer.Option("--patch", help="Unified diffs of changed text files.")] = False,
    stat: Annotated[bool, typer.Option("--stat", help="One line per path and a summary.")] = False,
) -> int:
    """The hashed diff of the transaction against the live tree."""
    ws = workspace()
    try:
        if patch and not json_:
            record = ws.get(tx)
            render.patches(record.id, record.root, ws.patches(record.id))
            return 0
        record = ws.get(tx)
        changes = ws.diff(record.id)
    finally:
        ws.close()
    if json_:
        render.json_out(changes.to_json(record.id))
    elif stat:
        render.stat(changes)
    else:
        render.diff(record.id, changes)
    return 0


@tx_app.command("show")
def tx_show(tx: TxId, json_: JsonOpt = False) -> int:
    """State, root, backend, runs, diff summary and approvals of a transaction."""
    ws = workspace()
    try:
        view = ws.show(tx)
    finally:
        ws.close()
    if json_:
        render.json_out(view.to_json())
    else:
        render.show(view)
    return 0


@tx_app.command("list")
def tx_list(
    state: Annotated[Optional[str], typer.Option("--state", metavar="STATE", help="Only transactions in STATE (open, committing, committed, aborted).")] = None,
    json_: JsonOpt = False,
) -> int:
    """Transactions, newest first."""
    if state is not None and state not in STATES:
        raise UsageError(detail=f"--state {state}: expected one of {', '.join(STATES)}")
    ws = workspace()
    try:
        records = ws.list(state)
        runs = ws.run_counts()
        approvals = ws.approval_states()
    finally:
        ws.close()
    if json_:
        render.json_out([dict(r.to_json(), runs=runs.get(r.id, 0), approval=approvals.get(r.id)) for r in records])
    else:
        render.tx_list(records, runs, approvals)
    return 0


@tx_app.command("approve")
def tx_approve(
    tx: TxId,
    diff_hash: Annotated[str, typer.Option("--hash", metavar="DIFF_HASH", help="The diff_hash you reviewed (from `tx diff ID --json` or `tx show ID`).")],
    by: Annotated[Optional[str], typer.Option("--by", metavar="NAME", help="Who approves (default: the login user).")] = None,
    json_: JsonResultOpt = False,
) -> int:
    """Approve the transaction's exact diff: a commit goes through only while
    the diff still hashes to DIFF_HASH and no run has happened since."""
    from journal.decisions import approve

    ws = workspace()
    try:
        record = approve(ws, tx, diff_hash, by)
        notices = ws.notices
    finally:
        ws.close()
    if json_:
        render.json_out(dict(tx=record.tx, **record.to_json()))
    say(f"tx {record.tx} approved by {record.approver} for diff {record.diff_hash}; any later run voids it")
    warn(notices)
    return 0


@tx_app.command("reject")
def tx_reject(
    tx: TxId,
    by: Annotated[str, typer.Option("--by", metavar="NAME", help="Who rejects it (required).")],
    reason: Annotated[Optional[str], typer.Option("-m", "--message", metavar="REASON", help="Why, for the agent and the audit trail.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the rejection as JSON.")] = False,
) -> int:
    """Refuse the transaction's diff for good: a commit of it exits 4, and an
    approval of it is refused, until a later run changes the diff."""
    import json

    from journal.decisions import reject

    ws = workspace()
    try:
        record = reject(ws, tx, by, reason)
        notices = ws.notices
    finally:
        ws.close()
    if json_:
        render.json_out(dict(record.to_json(), tx=record.tx))
    why = f": {json.dumps(reason, ensure_ascii=False)}" if reason else ""
    say(f"tx {record.tx} rejected by {record.approver} for diff {record.diff_hash}{why};"
        " a commit of it exits 4 until its diff changes")
    warn(notices)
    return 0


@tx_app.command("wait")
def tx_wait(
    tx: TxId,
    timeout: Annotated[Optional[str], typer.Option("--timeout", metavar="SECONDS", help="Give up after this long (exit 124); default: wait for ever.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print how the wait ended as JSON.")] = False,
) -> int:
    """Block until the transaction is approved (exit 0), rejected (4),
    committed (0) or aborted (1); exit 124 when SECONDS pass first."""
    from journal.waiting import seconds, wait

    limit = seconds(timeout)
    ws = workspace()
    try:
        result = wait(ws, tx, limit)
    finally:
        ws.close()
    if json_:
        render.json_out(result.to_json())
    render.waited(result, timeout)
    return result.exit_code


@tx_app.command("abort")
def tx_abort(tx: TxId, json_: JsonResultOpt = False) -> int:
    """Discard the transaction's staged changes; the live tree is not touched."""
    from cli.state import open_workspace

    ws = open_workspace(aborting=tx)
    try:
        record = ws.abort(tx)
    finally:
        ws.close()
    if json_:
        render.json_out(record.to_json())
    say(f"tx {record.id} aborted; its staged changes are discarded and the live tree was not touched")
    return 0


YesOpt = Annotated[bool, typer.Option("--yes", help="Do not ask first on a terminal.")]


@tx_app.command("commit")
def tx_commit(tx: TxId, yes: YesOpt = False, json_: JsonResultOpt = False) -> int:
    """Commit the transaction's changes to the live tree, atomically.

    Refuses with exit 3 when the live tree changed under the transaction
    since its last run, and with exit 4 when it holds special files.
    """
    from cli.state import commit_command

    ws = workspace()
    try:
        return commit_command(ws, tx, yes=yes, json_=json_)
    finally:
        ws.close()


@tx_app.command("rollback")
def tx_rollback(
    tx: TxId,
    yes: YesOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Roll back even paths changed since the commit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff the rollback would apply; stage and write nothing.")] = False,
    json_: JsonResultOpt = False,
) -> int:
    """Put back exactly what a committed transaction changed, as a new
    transaction (printed on stdout) that can itself be rolled back."""
    from cli.state import rollback_with_prompt

    ws = workspace()
    try:
        if dry_run:
            from journal.rollback import dry_run as preview

            planned = preview(ws, tx)
        else:
            return rollback_with_prompt(ws, tx, yes=yes, force=force, json_=json_)
    finally:
        ws.close()
    if json_:
        render.json_out(planned.to_json())
    else:
        render.rollback_dry_run(planned)
    return 0


@tx_app.command("log")
def tx_log(json_: JsonOpt = False) -> int:
    """Committed history of every root, newest first (rollbacks included)."""
    ws = workspace()
    try:
        records = ws.journal.committed()
        counts = {r.id: ws.journal.change_count(r.id) for r in records}
        undone = ws.journal.rolled_back_by()
    finally:
        ws.close()
    if json_:
        render.json_out([dict(r.to_json(), changes=counts[r.id], rolled_back_by=undone.get(r.id)) for r in records])
    else:
        render.log(records, counts, undone)
    return 0


@app.command("audit")
def audit_cmd(
    tx: Annotated[Optional[str], typer.Option("--tx", metavar="ID", help="Only the events of this transaction.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", metavar="TIME", help="Only events at or after TIME: ISO 8601 (UTC unless an offset is given) or an age such as 30m, 12h, 7d.")] = None,
    json_: JsonOpt = False,
) -> int:
    """The audit trail: every begin, run, diff shown, approval, refusal, commit,
    abort, rollback and recovery, oldest first, each hash-chained to the one before."""
    from journal.audit import parse_since

    since_ns = parse_since(since) if since is not None else None
    ws = workspace()
    try:
        tx_id = ws.get(tx).id if tx is not None else None
        events = ws.journal.audit_events(tx_id, since_ns)
        head = ws.journal.audit_head()
    finally:
        ws.close()
    if json_:
        render.json_out({
            "head": {"seq": head[0], "hash": head[1]} if head else None,
            "events": [e.to_json() for e in events],
        })
    else:
        render.audit(events, head)
    return 0


@app.command("recover")
def recover_cmd(json_: JsonResultOpt = False) -> int:
    """Undo any commit a crash interrupted (every command does this first);
    exit 6 when there was one, 0 when there was none."""
    from cli.errors import print_error_json
    from cli.state import open_workspace, recovered_line
    from cowfs.errors import error_json

    ws = open_workspace()
    try:
        found = ws.recovered
        cleaned = ws.clean_finished()
        for tx_id in cleaned:
            say(f"removed the leftover staging dir of finished tx {tx_id}")
    finally:
        ws.close()
    if not found:
        say("nothing to recover")
        if json_:
            render.json_out({"staging_removed": cleaned})
        return 0
    print_error_json(error_json(
        ExitCode.RECOVERED, "recovered", "; ".join(map(recovered_line, found)),
        list(dict.fromkeys(r.root for r in found)),
    ))
    return int(ExitCode.RECOVERED)


@app.command("verify")
def verify_cmd(
    json_: JsonOpt = False,
    integrity: Annotated[bool, typer.Option("--integrity", help="Check only the journal, the blobs and the audit trail; do not read the live tree.")] = False,
) -> int:
    """Check the journal, the blob store, the audit trail and the live tree
    against each other; exit 1 when roscoe's own state is damaged, 3 when
    only the live tree drifted from what was committed."""
    from journal.verify import verify

    ws = workspace()
    try:
        report = verify(ws, live=not integrity)
    finally:
        ws.close()
    if json_:
        render.json_out(report.to_json())
    else:
        render.verify(report)
    if report.ok:
        return 0
    return int(ExitCode.CONFLICT) if report.healthy else int(ExitCode.ERROR)


@app.command("gc")
def gc_cmd(
    keep_days: Annotated[float, typer.Option("--keep-days", metavar="N", help="Keep the images of transactions committed in the last N days.")],
    json_: JsonOpt = False,
) -> int:
    """Drop images no rollback can need any more."""
    from journal.gc import gc

    if keep_days < 0:
        raise UsageError(detail="--keep-days must be 0 or more")
    ws = workspace()
    try:
        result = gc(ws, keep_days)
    finally:
        ws.close()
    if json_:
        render.json_out(result)
    else:
        say(f"gc: {len(result['dropped'])} transactions past rollback, {result['removed_blobs']} blobs removed, {result['freed_bytes']} bytes freed")  # type: ignore[arg-type]
    return 0


def invoke(argv: list[str], *, debug: bool = False) -> int:
    from typer._click import exceptions as click_errors

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="roscoe", standalone_mode=False)
    except click_errors.UsageError as e:
        where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        in_run = argv[:2] in (["tx", "run"], ["tx", "shell"])
        return fail(UsageError(detail=f"{e.format_message()}{where}"), in_run=in_run, debug=debug)
    except click_errors.ClickException as e:
        return fail(UsageError(detail=e.format_message()), debug=debug)
    except typer.Abort:
        return fail(KeyboardInterrupt("aborted"), debug=debug)
    except typer.Exit as e:
        return e.exit_code
    return result if isinstance(result, int) else int(ExitCode.OK)
