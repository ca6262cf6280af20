"""The typer app: every command parses its options, calls one method of the
service (journal.service), and hands the result to ``cli.render``. No logic
lives here. The options of the commands with a fast path come from the
tables of ``cli.grammar``, as the fast paths' do."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cli import grammar, render
from cli.errors import fail, say, warn
from cli.run import RunArgs, execute, shell_command
from cowfs.errors import ExitCode, RoscoeError, UsageError

app = typer.Typer(
    name="roscoe", add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Transactional copy-on-write changes to a directory tree: stage a run, "
    "review its hashed diff, then commit it atomically or throw it away.",
    epilog="roscoe serve [--socket PATH] runs the roscoe service, whose clients are this same CLI "
    "(ROSCOE_SOCKET); see man roscoe, SERVICE.",
)
tx_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None,
    help="Transactions: begin, run, shell, diff, show, list, approve, reject, wait, commit, rollback, log, abort.",
)
app.add_typer(tx_app, name="tx")


def service(ctx: typer.Context):  # type: ignore[no-untyped-def]
    """The service over the settings ``invoke`` was given (journal.service)."""
    from cli.state import service as make

    return make(ctx.obj)


def option(table: tuple[grammar.Opt, ...], attr: str):  # type: ignore[no-untyped-def]
    """The typer option of ``attr`` in ``table`` (cli.grammar)."""
    found = next(o for o in table if o.attr == attr)
    return typer.Option(*found.names, metavar=found.metavar, help=found.help)


def declares(table: tuple[grammar.Opt, ...], *arguments: str):  # type: ignore[no-untyped-def]
    """Check, as a command is declared, that its options are ``table``'s
    (its other parameters being the ``arguments`` and the context)."""
    def check(command):  # type: ignore[no-untyped-def]
        code = command.__code__
        params = set(code.co_varnames[:code.co_argcount]) - {"ctx", *arguments}
        if params != {o.attr for o in table}:
            raise AssertionError(f"{command.__name__}: options {sorted(params)} are not cli.grammar's"
                                 f" {sorted(o.attr for o in table)}")
        return command
    return check


@app.callback()
@declares(grammar.GLOBAL)
def main_options(
    home: Annotated[Optional[str], option(grammar.GLOBAL, "home")] = None,
    config: Annotated[Optional[str], option(grammar.GLOBAL, "config")] = None,
    debug: Annotated[bool, option(grammar.GLOBAL, "debug")] = False,
) -> None:
    """Global options go before the subcommand (they were applied by cli.main)."""


TxId = Annotated[str, typer.Argument(metavar="ID", help="Transaction id (or a unique prefix of 4+ chars).")]
TxOpt = Annotated[Optional[str], option((grammar.TX,), "tx")]
RootOpt = Annotated[Optional[str], option((grammar.ROOT,), "root")]
JsonOpt = Annotated[bool, option((grammar.JSON,), "json_")]
TargetOpt = Annotated[Optional[str], typer.Option("--target", metavar="URL", help="Also what other machines committed to gs://BUCKET/PREFIX, read from the journal in its bucket.")]
# Every command but tx run and tx shell takes --json (cli.errors.NO_JSON): its
# result as one JSON object on stdout; a failure prints the error object
# (cli.errors.fail does that for every command, from the command line).
JsonResultOpt = Annotated[bool, option((grammar.JSON_RESULT,), "json_")]


@tx_app.command("begin")
def tx_begin(
    ctx: typer.Context,
    root: RootOpt = None,
    message: Annotated[Optional[str], typer.Option("-m", "--message", metavar="MSG", help="What the transaction is for.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", metavar="URL", help="Commit through the GCS API to gs://BUCKET/PREFIX (the root is its mount); default: the config's [roots] target.")] = None,
    json_: JsonResultOpt = False,
) -> int:
    """Open a transaction over the root; print only its id (with --json, the transaction)."""
    with service(ctx) as roscoe:
        tx = roscoe.begin(root, message, target)
    if json_:
        render.json_out(tx.to_json())
    else:
        print(tx.id)
    return 0


RUN_CONTEXT = {"allow_interspersed_args": False, "ignore_unknown_options": True}


NetworkOpt = Annotated[str, option(grammar.SANDBOX, "network")]
TimeoutOpt = Annotated[Optional[str], option(grammar.SANDBOX, "timeout")]
MemoryOpt = Annotated[Optional[str], option(grammar.SANDBOX, "memory")]
PidsOpt = Annotated[Optional[str], option(grammar.SANDBOX, "pids")]
EnvOpt = Annotated[Optional[list[str]], option(grammar.SANDBOX, "env")]
CleanEnvOpt = Annotated[bool, option(grammar.SANDBOX, "clean_env")]
WritableOpt = Annotated[Optional[list[str]], option(grammar.SANDBOX, "writable")]
HideOpt = Annotated[Optional[list[str]], option(grammar.SANDBOX, "hide")]


@tx_app.command("run", context_settings=RUN_CONTEXT)
@declares(grammar.RUN, "command")
def tx_run(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(metavar="-- CMD [ARG...]", help="The command to run in the overlay.")],
    tx: TxOpt = None,
    root: RootOpt = None,
    message: Annotated[Optional[str], option(grammar.RUN, "message")] = None,
    network: NetworkOpt = "on",
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    pids: PidsOpt = None,
    env: EnvOpt = None,
    clean_env: CleanEnvOpt = False,
    writable: WritableOpt = None,
    hide: HideOpt = None,
    report: Annotated[Optional[str], option(grammar.RUN, "report")] = None,
    commit: Annotated[bool, option(grammar.RUN, "commit")] = False,
    yes: Annotated[bool, option(grammar.RUN, "yes")] = False,
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
        ), ctx.obj)
    except RoscoeError as e:
        return fail(e, in_run=True)


@tx_app.command("shell")
@declares(grammar.SHELL)
def tx_shell(
    ctx: typer.Context,
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
            tx=tx, root=root, network=network, timeout=timeout, command=shell_command(ctx.obj.env),
            memory=memory, pids=pids, env=env, clean_env=clean_env, writable=writable, hide=hide,
        ), ctx.obj, interactive=True)
    except RoscoeError as e:
        return fail(e, in_run=True)


@tx_app.command("plan")
@declares(grammar.PLAN, "plan")
def tx_plan(
    ctx: typer.Context,
    plan: Annotated[Optional[str], typer.Argument(metavar="PLAN", help="The plan: a JSON file, or - for standard input.")] = None,
    tx: TxOpt = None,
    root: RootOpt = None,
    dry_run: Annotated[bool, option(grammar.PLAN, "dry_run")] = False,
    json_: Annotated[bool, option(grammar.PLAN, "json_")] = False,
    schema: Annotated[bool, option(grammar.PLAN, "schema")] = False,
    hide: HideOpt = None,
) -> int:
    """Stage a JSON plan of file operations (mkdir, move, copy, rename, delete,
    write) into a transaction (a new one without --tx, whose id is printed).

    The whole plan is checked before any op runs; a plan that is malformed,
    names a path outside the root, or fails at an op exits 2 naming the op,
    and stages nothing. See roscoe-plan(5) for the format.
    """
    from cli.plan import execute as plan_execute

    return plan_execute(ctx.obj, plan, tx=tx, root=root, dry_run=dry_run, json_=json_, schema=schema, hide=hide or ())


@tx_app.command("diff")
@declares(grammar.DIFF, "tx")
def tx_diff(
    ctx: typer.Context,
    tx: TxId,
    json_: JsonOpt = False,
    patch: Annotated[bool, option(grammar.DIFF, "patch")] = False,
    stat: Annotated[bool, option(grammar.DIFF, "stat")] = False,
) -> int:
    """The hashed diff of the transaction against the live tree."""
    with service(ctx) as roscoe:
        record = roscoe.get(tx)
        if patch and not json_:
            render.patches(record.id, record.root, roscoe.patches(record.id))
            return 0
        changes = roscoe.diff(record.id)
    if json_:
        render.json_out(changes.to_json(record.id))
    elif stat:
        render.stat(changes)
    else:
        render.diff(record.id, changes)
    return 0


@tx_app.command("show")
def tx_show(ctx: typer.Context, tx: TxId, json_: JsonOpt = False) -> int:
    """State, root, backend, runs, diff summary and approvals of a transaction."""
    with service(ctx) as roscoe:
        view = roscoe.show(tx)
    if json_:
        render.json_out(view.to_json())
    else:
        render.show(view)
    return 0


@tx_app.command("list")
def tx_list(
    ctx: typer.Context,
    state: Annotated[Optional[str], typer.Option("--state", metavar="STATE", help="Only transactions in STATE (open, committing, committed, aborted).")] = None,
    json_: JsonOpt = False,
) -> int:
    """Transactions, newest first."""
    with service(ctx) as roscoe:
        listing = roscoe.list(state)
    if json_:
        render.json_out(listing.to_json())
    else:
        render.tx_list(listing.records, listing.runs, listing.approvals)
    return 0


@tx_app.command("approve")
def tx_approve(
    ctx: typer.Context,
    tx: TxId,
    diff_hash: Annotated[str, typer.Option("--hash", metavar="DIFF_HASH", help="The diff_hash you reviewed (from `tx diff ID --json` or `tx show ID`).")],
    by: Annotated[Optional[str], typer.Option("--by", metavar="NAME", help="Who approves (default: the login user).")] = None,
    json_: JsonResultOpt = False,
) -> int:
    """Approve the transaction's exact diff: a commit goes through only while
    the diff still hashes to DIFF_HASH and no run has happened since."""
    with service(ctx) as roscoe:
        record = roscoe.approve(tx, diff_hash, by)
        notices = roscoe.notices
    if json_:
        render.json_out(dict(tx=record.tx, **record.to_json()))
    say(f"tx {record.tx} approved by {record.approver} for diff {record.diff_hash}; any later run voids it")
    warn(notices)
    return 0


@tx_app.command("reject")
def tx_reject(
    ctx: typer.Context,
    tx: TxId,
    by: Annotated[str, typer.Option("--by", metavar="NAME", help="Who rejects it (required).")],
    reason: Annotated[Optional[str], typer.Option("-m", "--message", metavar="REASON", help="Why, for the agent and the audit trail.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the rejection as JSON.")] = False,
) -> int:
    """Refuse the transaction's diff for good: a commit of it exits 4, and an
    approval of it is refused, until a later run changes the diff."""
    import json

    with service(ctx) as roscoe:
        record = roscoe.reject(tx, by, reason)
        notices = roscoe.notices
    if json_:
        render.json_out(dict(record.to_json(), tx=record.tx))
    why = f": {json.dumps(reason, ensure_ascii=False)}" if reason else ""
    say(f"tx {record.tx} rejected by {record.approver} for diff {record.diff_hash}{why};"
        " a commit of it exits 4 until its diff changes")
    warn(notices)
    return 0


@tx_app.command("wait")
def tx_wait(
    ctx: typer.Context,
    tx: TxId,
    timeout: Annotated[Optional[str], typer.Option("--timeout", metavar="SECONDS", help="Give up after this long (exit 124); default: wait for ever.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print how the wait ended as JSON.")] = False,
) -> int:
    """Block until the transaction is approved (exit 0), rejected (4),
    committed (0) or aborted (1); exit 124 when SECONDS pass first."""
    from journal.waiting import seconds

    limit = seconds(timeout)
    with service(ctx) as roscoe:
        result = roscoe.wait(tx, limit)
    if json_:
        render.json_out(result.to_json())
    render.waited(result, timeout)
    return result.exit_code


@tx_app.command("abort")
def tx_abort(ctx: typer.Context, tx: TxId, json_: JsonResultOpt = False) -> int:
    """Discard the transaction's staged changes; the live tree is not touched."""
    with service(ctx) as roscoe:
        record = roscoe.abort(tx)
    if json_:
        render.json_out(record.to_json())
    say(f"tx {record.id} aborted; its staged changes are discarded and the live tree was not touched")
    return 0


YesOpt = Annotated[bool, option((grammar.YES,), "yes")]


@tx_app.command("commit")
@declares(grammar.COMMIT, "tx")
def tx_commit(ctx: typer.Context, tx: TxId, yes: YesOpt = False, json_: JsonResultOpt = False) -> int:
    """Commit the transaction's changes to the live tree, atomically.

    Refuses with exit 3 when the live tree changed under the transaction
    since its last run, and with exit 4 when it holds special files.
    """
    from cli.state import commit_command

    with service(ctx) as roscoe:
        return commit_command(roscoe, tx, yes=yes, json_=json_)


@tx_app.command("rollback")
@declares(grammar.ROLLBACK, "tx")
def tx_rollback(
    ctx: typer.Context,
    tx: TxId,
    yes: YesOpt = False,
    force: Annotated[bool, option(grammar.ROLLBACK, "force")] = False,
    dry_run: Annotated[bool, option(grammar.ROLLBACK, "dry_run")] = False,
    json_: JsonResultOpt = False,
) -> int:
    """Put back exactly what a committed transaction changed, as a new
    transaction (printed on stdout) that can itself be rolled back."""
    from cli.state import rollback_with_prompt

    with service(ctx) as roscoe:
        if not dry_run:
            return rollback_with_prompt(roscoe, tx, yes=yes, force=force, json_=json_)
        planned = roscoe.rollback_dry_run(tx)
    if json_:
        render.json_out(planned.to_json())
    else:
        render.rollback_dry_run(planned)
    return 0


@tx_app.command("log")
def tx_log(ctx: typer.Context, json_: JsonOpt = False, target: TargetOpt = None) -> int:
    """Committed history of every root, newest first (rollbacks included)."""
    with service(ctx) as roscoe:
        entries = roscoe.log(target)
    if json_:
        render.json_out([e.to_json() for e in entries])
    else:
        render.log(entries)
    return 0


@app.command("audit")
def audit_cmd(
    ctx: typer.Context,
    tx: Annotated[Optional[str], typer.Option("--tx", metavar="ID", help="Only the events of this transaction.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", metavar="TIME", help="Only events at or after TIME: ISO 8601 (UTC unless an offset is given) or an age such as 30m, 12h, 7d.")] = None,
    json_: JsonOpt = False,
) -> int:
    """The audit trail: every begin, run, diff shown, approval, refusal, commit,
    abort, rollback and recovery, oldest first, each hash-chained to the one before."""
    from journal.audit import parse_since

    since_ns = parse_since(since) if since is not None else None
    with service(ctx) as roscoe:
        trail = roscoe.audit(tx, since_ns)
    if json_:
        render.json_out(trail.to_json())
    else:
        render.audit(trail.events, trail.head)
    return 0


@app.command("recover")
def recover_cmd(ctx: typer.Context, json_: JsonResultOpt = False, target: TargetOpt = None) -> int:
    """Undo any commit a crash interrupted (every command does this first);
    exit 6 when there was one, 0 when there was none."""
    from cli.errors import print_error_json
    from cli.state import recovered_line
    from cowfs.errors import error_json

    with service(ctx) as roscoe:
        done = roscoe.recover(target)
    found, cleaned = done.recovered, done.staging_removed
    for tx_id in cleaned:
        say(f"removed the leftover staging dir of finished tx {tx_id}")
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
    ctx: typer.Context,
    json_: JsonOpt = False,
    integrity: Annotated[bool, typer.Option("--integrity", help="Check only the journal, the blobs and the audit trail; do not read the live tree.")] = False,
    target: TargetOpt = None,
) -> int:
    """Check the journal, the blob store, the audit trail and the live tree
    against each other; exit 1 when roscoe's own state is damaged, 3 when
    only the live tree drifted from what was committed."""
    with service(ctx) as roscoe:
        report = roscoe.verify(live=not integrity, target=target)
    if json_:
        render.json_out(report.to_json())
    else:
        render.verify(report)
    if report.ok:
        return 0
    return int(ExitCode.CONFLICT) if report.healthy else int(ExitCode.ERROR)


@app.command("gc")
def gc_cmd(
    ctx: typer.Context,
    keep_days: Annotated[float, typer.Option("--keep-days", metavar="N", help="Keep the images of transactions committed in the last N days.")],
    json_: JsonOpt = False,
) -> int:
    """Drop images no rollback can need any more."""
    with service(ctx) as roscoe:
        result = roscoe.gc(keep_days)
    if json_:
        render.json_out(result)
    else:
        say(f"gc: {len(result['dropped'])} transactions past rollback, {result['removed_blobs']} blobs removed, {result['freed_bytes']} bytes freed")  # type: ignore[arg-type]
    return 0


@app.command("mcp")
def mcp_cmd(ctx: typer.Context, json_: JsonResultOpt = False) -> int:
    """A Model Context Protocol server on stdin and stdout: the agent's tools
    (begin, run, plan, diff, show, commit, wait, abort), each the roscoe
    command of that name, whose --json object is the tool's result. (Its
    stdout speaks JSON-RPC; with --json, a failure to start is the error object.)"""
    from cli.mcp import serve

    try:
        return serve(ctx.obj)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in ("mcp", "mcp_types", "anyio", "jsonschema"):
            raise
        raise RoscoeError(detail=f"roscoe mcp needs the mcp package: pip install 'roscoe[mcp]' ({e})") from None


def invoke(argv: list[str], settings) -> int:  # type: ignore[no-untyped-def]
    """Run the command ``argv`` with ``settings`` (journal.settings; ``ctx.obj`` of every command)."""
    from typer._click import exceptions as click_errors

    debug = settings.debug
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="roscoe", standalone_mode=False, obj=settings)
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
