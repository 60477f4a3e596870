"""``post-call-push``: preview, lint, replay and status of the post-call CRM push.

    post-call-push [global options] COMMAND [options]

Global options work as in the AWS CLI and default from the same environment
variables as the function (CALLS_TABLE, BOTS_TABLE, PUBLIC_BASE_URL, ...), so
the CLI runs against the local stack (moto, ``--endpoint-url``) and real AWS
alike.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from crm_push.adapters.destination_gate import read_circuit
from crm_push.config import BotConfig, load_bot_config
from crm_push.errors import ConfigError, PushError, StorageError
from crm_push.push import Replay, push_call
from crm_push.request import gate_key_of
from push_cli import auth as auth_cli
from push_cli import circuits as circuits_cli
from push_cli import dlq as dlq_cli
from push_cli import lint as lint_module
from push_cli import reconcile as reconcile_cli
from push_cli import secrets as secrets_cli
from push_cli.circuits import parked_line, read_parked
from push_cli.context import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    CliError,
    Context,
    fail,
    load_bot_file,
    load_call_file,
    load_json_file,
)
from push_cli.display import err_console, make_console
from push_cli.dlq import parked_count
from push_cli.preview import build_preview, render_preview
from push_cli.replay import (
    STATUSES,
    ProgressBar,
    ReplayReport,
    candidate_for,
    render_replay,
    replay_calls,
    select_range,
    stored_window,
)
from push_cli.status import build_status, render_status

EPILOG = """\
exit status: 0 done and fine; 1 a problem was found (lint errors, a replay not ok, an unusable config);
2 the command could not run (bad arguments, unknown call or bot, unreadable file); 130 stopped by Ctrl-C.
Runbook: docs/runbook.md
"""


@dataclass
class Clock:
    """What the replay loop waits with; tests pass fakes so a rate limit is checked without waiting."""

    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


# --- arguments ---------------------------------------------------------------------------


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """The AWS-CLI-like options, accepted before or after the command."""
    default = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("global options (default: the function's environment variables)")
    group.add_argument(
        "--endpoint-url",
        default=default,
        help="one AWS endpoint for every service (DynamoDB, SQS, S3), e.g. a local stack; without it, "
        "$AWS_ENDPOINT_URL and $AWS_ENDPOINT_URL_<SERVICE> as botocore reads them",
    )
    group.add_argument("--profile", default=default, help="AWS profile ($AWS_PROFILE)")
    group.add_argument("--region", default=default, help="AWS region ($AWS_REGION)")
    group.add_argument("--calls-table", default=default, help="Calls table ($CALLS_TABLE)")
    group.add_argument("--bots-table", default=default, help="Bots table ($BOTS_TABLE)")
    group.add_argument(
        "--state-table", default=default, help="delivery-state table: claims, attempts, schedule ($PUSH_STATE_TABLE)"
    )
    group.add_argument("--retry-queue-url", default=default, help="SQS queue of scheduled attempts ($RETRY_QUEUE_URL)")
    group.add_argument(
        "--public-base-url", default=default, help="public API base for recording links ($PUBLIC_BASE_URL)"
    )
    group.add_argument(
        "--recordings-bucket", default=default, help="bucket of bare recording keys ($RECORDINGS_BUCKET)"
    )
    group.add_argument(
        "--recordings-endpoint-url",
        default=default,
        help="S3-compatible endpoint for recordings ($RECORDINGS_ENDPOINT_URL, else --endpoint-url)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="post-call-push",
        description="Operator tooling for the post-call CRM push: see what a push sends, check a bot's config, "
        "push calls again, and read a call's push history.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(suppress=False)],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_global_options(suppress=True)]

    preview = commands.add_parser(
        "preview",
        parents=common,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the exact request a push would send, field by field; sends and writes nothing",
        description="Render the request the push would send for a call - method, URL, headers (masked), body "
        "or query - and explain every key_mapper field: which variable filled each placeholder, by which rule, "
        "and the JSON type it is sent as. Nothing is sent and nothing is written.",
    )
    source = preview.add_mutually_exclusive_group(required=True)
    source.add_argument("--call-id", help="a call in the Calls table")
    source.add_argument("--call-file", help="a call item as plain JSON (like events/sample_call.json)")
    preview.add_argument("--bot-file", help="a bot item as plain JSON: preview a config change before it is saved")
    preview.add_argument("--bot-id", help="use this bot's config instead of the call's own bot")
    preview.add_argument(
        "--check-recording",
        action="store_true",
        help="also check that a presigned recording's object exists (one S3 HEAD)",
    )
    preview.add_argument("--full", action="store_true", help="show values whole (transcripts included)")
    preview.add_argument("--json", action="store_true", help="machine-readable output")

    lint = commands.add_parser(
        "lint",
        parents=common,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="check a bot's post_call_push config; exits 1 on errors",
        description="Validate a bot's post_call_push config and lint its key_mapper: malformed braces, unknown "
        "namespaces, placeholders that never resolve in recent calls, near-miss names, and (with --schema) what "
        "the CRM's JSON Schema would reject. Exits 1 when there is an error, so it can gate a config change.",
    )
    bot_source = lint.add_mutually_exclusive_group(required=True)
    bot_source.add_argument("--bot-id", help="a bot in the Bots table")
    bot_source.add_argument("--bot-file", help="a bot item as plain JSON (like events/sample_bot.json)")
    lint.add_argument(
        "--sample",
        type=int,
        default=20,
        metavar="N",
        help="check placeholders against the bot's N most recent calls (default 20; 0 to skip)",
    )
    lint.add_argument(
        "--call-file",
        action="append",
        default=[],
        metavar="FILE",
        help="check against this call instead of recent ones (repeatable)",
    )
    lint.add_argument("--schema", metavar="FILE", help="a JSON Schema of the CRM's payload")
    lint.add_argument(
        "--skip-secrets", action="store_true", help="do not read the secrets and parameters the config references"
    )
    lint.add_argument("--json", action="store_true", help="machine-readable output")
    secrets_cli.add_prefix_options(lint)

    replay = commands.add_parser(
        "replay",
        parents=common,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="push calls again with the current config, recorded as a replay",
        description="Push one call, or a bot's calls in a time range, again with the bot's current config. Each "
        "push is recorded on the call with who replayed it and why. A call with an attempt scheduled is pushed "
        "now, and the scheduled attempt then does nothing. A call already pushed ok is held back unless --force; "
        "a call a push holds right now is held back until its lease ends. Ranges are paced by --rate; Ctrl-C "
        "stops after the call in flight, with a summary.",
    )
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--call-id", help="replay this call")
    target.add_argument("--bot-id", help="replay this bot's calls whose results were stored in --since..--until")
    replay.add_argument("--since", help="range start, inclusive: 2026-11-01 (midnight UTC) or an ISO-8601 time")
    replay.add_argument("--until", help="range end, exclusive; default: now")
    replay.add_argument(
        "--status",
        default="failed,rejected",
        help=f"replay calls whose last push has one of these statuses ({','.join(STATUSES)}; "
        "none = never pushed); default failed,rejected",
    )
    replay.add_argument("--reason", required=True, help="why: recorded on every call replayed")
    replay.add_argument("--by", help="who is replaying (default: $USER)")
    replay.add_argument(
        "--force",
        action="store_true",
        help="replay calls already pushed ok, flagged skip_post_push or with results not stored",
    )
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; send nothing")
    replay.add_argument("--rate", type=float, default=2.0, help="at most this many pushes a second (default 2)")
    replay.add_argument("--limit", type=int, help="replay at most this many calls of the range")
    replay.add_argument("--json", action="store_true", help="machine-readable output")

    status = commands.add_parser(
        "status",
        parents=common,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a call's push history and delivery schedule and, when it went wrong, the runbook check",
        description="Show a call's latest push result, every attempt (replays included, and those so far only "
        "in the state table), its delivery schedule (attempts, next attempt, last error kind, exhausted, a claim "
        "held now), its post_call_push events and the recording link used; when the push failed, the matching "
        "runbook check and the exact next command.",
    )
    status.add_argument("--call-id", required=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    secrets_cli.add_parser(commands, common, EPILOG)
    circuits_cli.add_parser(commands, common, EPILOG)
    auth_cli.add_parser(commands, common, EPILOG)
    reconcile_cli.add_parser(commands, common, EPILOG)
    dlq_cli.add_parser(commands, common, EPILOG)
    return parser


# --- commands -----------------------------------------------------------------------------


def _bot_config(ctx: Context, bot_id: str, why: str) -> tuple[dict[str, Any], BotConfig]:
    item = ctx.bot_item(bot_id)
    if item is None:
        fail(f"bot {bot_id}{why} is not in the Bots table {ctx.bots_table}")
    return item, load_bot_config(item, bot_id)


def _call(ctx: Context, call_id: str) -> dict[str, Any]:
    call = ctx.calls().get_call(call_id)
    if call is None:
        fail(f"call {call_id} is not in the Calls table {ctx.calls_table}")
    return call


def cmd_preview(args: argparse.Namespace, ctx: Context, console: Console, clock: Clock) -> int:
    call = load_call_file(args.call_file) if args.call_file else _call(ctx, args.call_id)
    if args.bot_file:
        item = load_bot_file(args.bot_file)
        bot_id = str(item.get("bot_id") or Path(args.bot_file).stem)
        bot = load_bot_config(item, bot_id)
    else:
        wanted = args.bot_id or call.get("bot_id")
        if not isinstance(wanted, str) or not wanted:
            fail("the call has no bot_id: pass --bot-id or --bot-file")
        _, bot = _bot_config(ctx, wanted, "" if args.bot_id else f" (of call {call.get('call_id')})")
    settings = ctx.settings_values()
    preview = build_preview(
        call,
        bot,
        ctx.preview_deps(),
        width=None if args.full else 60,
        recording_ttl_seconds=settings.recording_url_ttl_seconds,
        check_recording=_object_checker(ctx) if args.check_recording else None,
    )
    render_preview(console, preview, as_json=args.json)
    return EXIT_OK if preview.would_send else EXIT_PROBLEM


def _object_checker(ctx: Context) -> Callable[[str, str], str | None]:
    def check(bucket: str, key: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = ctx.session().client("s3", endpoint_url=ctx.recordings_endpoint_url)
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return f"s3://{bucket}/{key} does not exist: the link opens to an error"
            if code in ("403", "AccessDenied"):
                return f"s3://{bucket}/{key}: access denied to this operator; could not check the object"
            return f"checking s3://{bucket}/{key} failed: {code}"
        except BotoCoreError as exc:
            return f"checking s3://{bucket}/{key} failed: {type(exc).__name__}"
        return None

    return check


def cmd_lint(args: argparse.Namespace, ctx: Context, console: Console, clock: Clock) -> int:
    if args.bot_file:
        item = load_bot_file(args.bot_file)
        bot_id = str(item.get("bot_id") or Path(args.bot_file).stem)
    else:
        bot_id = args.bot_id
        found = ctx.bot_item(bot_id)
        if found is None:
            fail(f"bot {bot_id} is not in the Bots table {ctx.bots_table}")
        item = found
    schema = load_json_file(args.schema, "schema") if args.schema else None
    if schema is not None:
        try:
            lint_module.check_schema(_json_plain(schema))
        except ConfigError as exc:
            fail(f"{args.schema}: {exc}")
    if args.call_file:
        samples = [load_call_file(path) for path in args.call_file]
    elif args.sample > 0 and (args.bot_id or ctx.calls_table):
        calls = ctx.calls()
        recent = calls.call_ids_by_bot(bot_id, newest_first=True, limit=args.sample)
        samples = [call for call in (calls.get_call(call_id) for call_id, _ in recent) if call is not None]
    else:
        samples = []
    report = lint_module.lint_bot(
        item,
        bot_id,
        sample_calls=samples,
        schema=_json_plain(schema) if schema is not None else None,
        secret_resolver=None if args.skip_secrets else lambda: secrets_cli.store_resolver(ctx),
        reference_prefixes=secrets_cli.deployed_prefixes(args, ctx),
    )
    lint_module.render_lint(console, report, as_json=args.json)
    return EXIT_PROBLEM if report.errors else EXIT_OK


def _json_plain(value: Any) -> Any:
    """A schema file read with Decimal numbers, made plain for jsonschema (``minimum: 1`` must be a number)."""
    from crm_push.jsonvalues import to_plain

    return to_plain(value)


def _operator(args: argparse.Namespace) -> str:
    if args.by:
        return str(args.by)
    for variable in ("USER", "LOGNAME", "USERNAME"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        fail("cannot tell who is replaying: pass --by NAME")


def cmd_replay(args: argparse.Namespace, ctx: Context, console: Console, clock: Clock) -> int:
    if not args.reason.strip():
        fail("--reason must say why the calls are replayed")
    if not 0 < args.rate <= 50:
        fail("--rate must be more than 0 and at most 50 pushes a second")
    statuses = [s.strip() for s in args.status.split(",") if s.strip()]
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown or not statuses:
        fail(f"--status {args.status!r}: use one or more of {', '.join(STATUSES)}")
    if args.call_id and (args.since or args.until):
        fail("--since/--until select a range of a bot's calls: use them with --bot-id, not --call-id")
    if "ok" in statuses and not args.force:
        fail("--status ok replays calls that already succeeded: add --force if that is really meant")
    report = ReplayReport(by=_operator(args), reason=args.reason.strip(), dry_run=args.dry_run, rate=args.rate)
    calls = ctx.calls()
    # A replay sends through the function's own adapters: say what is missing before reading anything.
    deps = None if args.dry_run else ctx.push_deps()
    # A dry run without the state table still lists the calls; it cannot see claims or schedules then.
    get_delivery = ctx.delivery_state if ctx.state_table else None
    now = datetime.now(UTC)

    if args.call_id:
        call = _call(ctx, args.call_id)
        delivery = get_delivery(args.call_id) if get_delivery else None
        candidate = candidate_for(call, force=args.force, now=now, delivery=delivery)
        (report.held_back if candidate.held_back else report.selected).append(candidate)
    else:
        if not args.since:
            fail("a range replay needs --since (and optionally --until)")
        try:
            start, end = stored_window(args.since, args.until)
        except ValueError as exc:
            fail(str(exc))
        if ctx.bot_item(args.bot_id) is None:
            fail(f"bot {args.bot_id} is not in the Bots table {ctx.bots_table}")
        ids = calls.call_ids_by_bot(args.bot_id, stored_from=start, stored_before=end)
        report.selected, report.held_back, report.filtered_out = select_range(
            ids, calls.get_call, statuses, force=args.force, now=now, limit=args.limit, get_delivery=get_delivery
        )

    if deps is not None and report.selected:
        if deps.retry_queue is None:
            err_console().print(
                "note: no retry queue (--retry-queue-url or RETRY_QUEUE_URL): a replay the CRM does not answer "
                "gets no later attempt, and its delivery ends exhausted"
            )
        replay = Replay(by=report.by, reason=report.reason)
        stop = threading.Event()
        restore = _stop_on_ctrl_c(stop)
        try:
            with ProgressBar(err_console(), len(report.selected), enabled=sys.stderr.isatty() and not args.json) as bar:
                report.lines, report.interrupted = replay_calls(
                    [c.call_id for c in report.selected],
                    lambda call_id: push_call(call_id, deps, replay=replay),
                    rate=args.rate,
                    on_done=bar.advance,
                    stop=stop,
                    sleep=clock.sleep,
                    monotonic=clock.monotonic,
                )
        finally:
            restore()
    render_replay(console, report, as_json=args.json)
    if report.interrupted:
        return EXIT_INTERRUPTED
    if args.call_id and report.held_back:
        return EXIT_PROBLEM
    return EXIT_OK if report.all_ok else EXIT_PROBLEM


def _stop_on_ctrl_c(stop: threading.Event) -> Callable[[], None]:
    """First Ctrl-C: finish the push in flight, then stop. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err_console().print("stopping after the call in flight (Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, handler)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore


def cmd_status(args: argparse.Namespace, ctx: Context, console: Console, clock: Clock) -> int:
    call = _call(ctx, args.call_id)
    bot_id = call.get("bot_id")
    item = ctx.bot_item(bot_id) if isinstance(bot_id, str) and bot_id else None
    bot = load_bot_config(item, str(bot_id)) if item is not None else None
    # The call item alone still tells most of the story: a missing or unreadable state table is a note.
    delivery, unread = None, ""
    if not ctx.state_table:
        unread = "state table not read: pass --state-table or set PUSH_STATE_TABLE to see the schedule and claims"
    else:
        try:
            delivery = ctx.delivery_state(args.call_id)
        except StorageError as exc:
            unread = f"state table not read: {exc}"
    report = build_status(
        call,
        bot,
        bot_exists=item is not None,
        delivery=delivery,
        delivery_unread=unread,
        dead_letters=parked_count(ctx),
    )
    key = gate_key_of(bot, ctx.preview_deps()) if ctx.state_table and bot is not None else None
    if key is not None and ctx.state_table:
        try:
            view = read_circuit(ctx.dynamodb(), ctx.state_table, key)
        except Exception as exc:  # the circuit is context: a failed read must not hide the rest
            report.delivery.note = f"{report.delivery.note}; circuit not read: {type(exc).__name__}".lstrip("; ")
        else:
            closed = {"destination": key.destination, "scope": key.scope, "state": "CLOSED"}
            report.circuit = view.as_json() if view else closed
        try:
            parked = read_parked(ctx.dynamodb(), ctx.state_table, key)
        except Exception as exc:  # context too: never hide the rest
            report.delivery.note = f"{report.delivery.note}; parking not read: {type(exc).__name__}".lstrip("; ")
        else:
            report.parked = parked_line(parked, datetime.now(UTC)) if parked is not None else None
    render_status(console, report, as_json=args.json)
    return EXIT_OK


COMMANDS = {
    "preview": cmd_preview,
    "lint": cmd_lint,
    "replay": cmd_replay,
    "status": cmd_status,
    "secrets": secrets_cli.cmd_secrets,
    "circuits": circuits_cli.cmd_circuits,
    "auth": auth_cli.cmd_auth,
    "reconcile": reconcile_cli.run,
    "dlq": dlq_cli.run,
}


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    # The core logs for CloudWatch; here every finding it logs is already shown in the output.
    logging.getLogger("crm_push").setLevel(logging.CRITICAL)
    console = make_console()
    ctx = Context.from_options(args)
    try:
        return COMMANDS[args.command](args, ctx, console, clock or Clock())
    except CliError as exc:
        err_console().print(f"error: {exc}")
        return exc.exit_code
    except PushError as exc:
        err_console().print(f"error: {exc}")
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        err_console().print("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            err_console().print("error: no AWS credentials: pass --profile or configure the AWS environment")
            return EXIT_USAGE
        if isinstance(exc, (ClientError, BotoCoreError)):
            err_console().print(f"error: AWS: {exc}")
            return EXIT_PROBLEM
        raise


if __name__ == "__main__":
    sys.exit(main())
