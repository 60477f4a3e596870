"""``post-call-push reconcile``: did every call whose results were stored reach its CRM?

The sweep answers it for a window of ``results_stored_at`` across every bot
with a ``post_call_push`` config, without scanning the Calls table: the bots
come from the Bots table (small, one Scan), each bot's calls of the window
from the Calls table's ``bot_id-results_stored_at-index`` (a Query per bot),
and each call's result and delivery from batched reads of the Calls and
state tables. A call is **stranded** when it has no final result on the call
item and no live delivery in the state table (a push holding it, or an
attempt scheduled): nothing will deliver it by itself. That is what a stream
outage leaves behind: batches sent to the on-failure queue, or records
skipped while the event source mapping was recreated at ``LATEST``.

Every other call is accounted for: delivered; in progress; not pushed by
design (``skip_post_push``); too recent to judge; or *answered, not yet
written* (the CRM answered and only the write is pending: a record message
carries it, ``dlq redrive`` if it was parked), which is never pushed again.

``--on-failure-message FILE`` / ``--on-failure-queue URL`` turn the
on-failure queue's messages into the sweep: a stream batch's message
(``DDBStreamBatchInfo``) names a shard and a range of sequence numbers,
resolvable only for 24 h; its arrival times are turned into a window of
``results_stored_at`` (widened by ``--margin``) instead. An EventBridge
event parked there names its call, which is checked directly.

``--replay`` pushes each stranded call through the core, as a replay with
who and why, paced by ``--rate``; each call is read again just before, and
pushed only if it is still stranded.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from rich.console import Console

from crm_push.adapters.dynamodb import CallsTable, aws_error, from_item, to_item
from crm_push.clock import iso_utc
from crm_push.errors import StorageError
from crm_push.ports import PushOutcome, is_final_result
from crm_push.variables import parse_utc_timestamp
from push_cli.context import EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEM, Context, fail
from push_cli.delivery_item import (
    LATE_AFTER_SECONDS,
    claim_expired,
    claim_live,
    decided_not_written,
    scheduled_due,
    unwritten_answers,
)
from push_cli.display import err_console, make_console, print_json, row, table
from push_cli.replay import ReplayLine, parse_moment, replay_calls

Verdict = Literal["delivered", "in_progress", "by_design", "recent", "unwritten", "unclear", "stranded"]
VERDICTS: tuple[Verdict, ...] = ("stranded", "unwritten", "unclear", "recent", "in_progress", "by_design", "delivered")
NEEDS_ATTENTION: frozenset[str] = frozenset({"stranded", "unwritten", "unclear"})

SETTLE_MINUTES = 15  # a call stored this recently may still be on its way through the stream
MARGIN_MINUTES = 5  # around an on-failure batch's arrival times: results_stored_at is written just before
MAX_LISTED = 200
_BATCH_GET = 100  # the BatchGetItem maximum
_STATE_KEY = "delivery#{}"  # adapters/state.py: delivery_key
INDEX_NAME = "bot_id-results_stored_at-index"  # template.yaml, CallsTable; CallsTable.call_ids_by_bot's default


@dataclass(frozen=True, slots=True)
class Finding:
    call_id: str
    bot_id: str
    stored_at: str
    verdict: Verdict
    why: str


# --- the rule (pure) ------------------------------------------------------------------------


def classify(
    call: Mapping[str, Any], delivery: Mapping[str, Any] | None, *, now: datetime, settle_seconds: int
) -> tuple[Verdict, str]:
    """What became of one call whose results were stored, from its item and its delivery item.

    ``call`` needs ``results_stored_at``, ``skip_post_push`` and the result's
    ``status``/``next_attempt_at``/``attempts``; ``delivery`` is its state
    item (``DeliveryStateTable.get``'s form) or None.
    """
    result = call.get("post_call_push_result")
    if is_final_result(result):
        return "delivered", f"final result: {result.get('status')}" if isinstance(result, Mapping) else "final"
    if call.get("skip_post_push") is True:
        return "by_design", "flagged skip_post_push"
    if decided_not_written(delivery):
        last = unwritten_answers(delivery)[-1]
        return (
            "unwritten",
            f"the CRM answered ({last.get('status')}, attempt {last.get('attempts')}); only the write is pending: "
            "a record message carries it (dlq redrive if it was parked); never push it again",
        )
    if claim_live(delivery, now):
        return "in_progress", "a push holds the call now"
    due = scheduled_due(delivery)
    if due is not None:
        if (now - due).total_seconds() <= LATE_AFTER_SECONDS:
            return "in_progress", f"next attempt scheduled at {iso_utc(due)}"
        return "stranded", f"its next attempt was due at {iso_utc(due)} and never ran (its message is lost or parked)"
    if claim_expired(delivery, now):
        return "stranded", "a push claimed it and died before recording an attempt"
    if delivery is not None and delivery.get("st") == "done":
        # The state says ended, the call item says otherwise, and nothing is pending: a human looks first.
        return "unclear", "the state table says the delivery ended, but the call item has no final result: look first"
    planned = parse_utc_timestamp(result.get("next_attempt_at")) if isinstance(result, Mapping) else None
    if planned is not None:
        if (now - planned).total_seconds() <= LATE_AFTER_SECONDS:
            return "in_progress", f"next attempt scheduled at {iso_utc(planned)} (per the call item)"
        return "stranded", f"its next attempt was due at {iso_utc(planned)}, and the state table has no delivery"
    stored = parse_utc_timestamp(call.get("results_stored_at"))
    if delivery is None and stored is not None and (now - stored).total_seconds() < settle_seconds:
        return "recent", "stored moments ago: the stream may still bring it"
    if delivery is None:
        return "stranded", "never pushed: no trigger reached the function"
    return "stranded", "claimed and released without an attempt"


Window = tuple[datetime, datetime]


def merge_windows(windows: Iterable[Window]) -> list[Window]:
    """Overlapping or touching windows as one, in time order."""
    merged: list[Window] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass
class OnFailureFindings:
    """What the on-failure queue's messages point at."""

    windows: list[Window] = field(default_factory=list)  # from stream batches
    calls: list[str] = field(default_factory=list)  # named by EventBridge events
    stream_batches: int = 0
    events: int = 0
    unreadable: int = 0
    message_ids: list[str] = field(default_factory=list)


def read_on_failure_message(body: Any, margin: timedelta, found: OnFailureFindings) -> None:
    """Add one on-failure message to ``found``: a stream batch's window, or an EventBridge event's call.

    Shapes: a stream batch that exhausted its retries (``DDBStreamBatchInfo``,
    Lambda's on-failure destination record); an EventBridge event that could
    not be delivered (the event itself, EventBridge's dead-letter queue); an
    event whose async invocation failed (``requestPayload``, Lambda's
    on-failure record).
    """
    from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamLambdaOnFailureDestinationModel

    if isinstance(body, Mapping) and "DDBStreamBatchInfo" in body:
        try:
            record = DynamoDBStreamLambdaOnFailureDestinationModel.model_validate(dict(body))
        except ValidationError:
            found.unreadable += 1
            return
        info = record.ddb_stream_batch_info
        first = _aware(info.approximate_arrival_of_first_record)
        last = _aware(info.approximate_arrival_of_last_record)
        # Arrival times are whole seconds, and a window's end is exclusive: the last second counts whole.
        found.windows.append((min(first, last) - margin, max(first, last) + timedelta(seconds=1) + margin))
        found.stream_batches += 1
        return
    event = body.get("requestPayload") if isinstance(body, Mapping) and "requestPayload" in body else body
    detail = event.get("detail") if isinstance(event, Mapping) else None
    call_id = detail.get("call_id") if isinstance(detail, Mapping) else None
    if isinstance(call_id, str) and call_id:
        found.calls.append(call_id)
        found.events += 1
        return
    found.unreadable += 1


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- the sweep ------------------------------------------------------------------------------


class SweepSource(Protocol):
    """Where the sweep reads from; ``DynamoSweepSource`` in AWS, anything alike in tests."""

    def bots(self) -> tuple[list[str], int]:
        """Bots with a post_call_push config, and how many bots have none."""
        ...

    def call_ids(self, bot_id: str, start: str, end: str) -> list[tuple[str, str]]: ...

    def calls(self, call_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def deliveries(self, call_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...


@dataclass
class ReconcileReport:
    windows: list[tuple[str, str]]
    bots_swept: int = 0
    bots_without_push: int = 0
    calls_seen: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)  # the calls that need an operator
    on_failure: dict[str, Any] | None = None
    dead_letters: int | None = None  # messages in the retry dead-letter queue, when it could be read
    replay: dict[str, Any] | None = None  # by, reason, rate, dry_run
    lines: list[ReplayLine] = field(default_factory=list)
    interrupted: bool = False

    @property
    def stranded(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "stranded"]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def sweep(
    source: SweepSource,
    windows: Sequence[tuple[str, str]],
    *,
    now: datetime,
    bot_id: str | None = None,
    call_ids: Sequence[str] = (),
    settle_seconds: int = SETTLE_MINUTES * 60,
    progress: Callable[[str], None] = lambda _text: None,
) -> ReconcileReport:
    """Classify every call stored in ``windows`` (of the one bot, or of every bot), plus ``call_ids``."""
    report = ReconcileReport(windows=list(windows))
    counts: Counter[str] = Counter()
    if windows:
        if bot_id:
            bots, report.bots_without_push = [bot_id], 0
        else:
            bots, report.bots_without_push = source.bots()
        report.bots_swept = len(bots)
        for number, bot in enumerate(bots, 1):
            ids = [call_id for start, end in windows for call_id, _ in source.call_ids(bot, start, end)]
            progress(f"bot {bot} ({number}/{len(bots)}): {len(ids)} call(s) stored in the window")
            _judge(source, ids, now, settle_seconds, counts, report)
    if call_ids:
        progress(f"{len(call_ids)} call(s) named by on-failure events")
        _judge(source, list(dict.fromkeys(call_ids)), now, settle_seconds, counts, report)
    report.counts = {verdict: counts[verdict] for verdict in VERDICTS if counts[verdict]}
    return report


def _judge(
    source: SweepSource,
    ids: list[str],
    now: datetime,
    settle_seconds: int,
    counts: Counter[str],
    report: ReconcileReport,
) -> None:
    for start in range(0, len(ids), _BATCH_GET):
        chunk = ids[start : start + _BATCH_GET]
        calls = source.calls(chunk)
        deliveries = source.deliveries(chunk)
        for call_id in chunk:
            call = calls.get(call_id)
            if call is None:
                continue  # deleted since the index was read
            report.calls_seen += 1
            verdict, why = classify(call, deliveries.get(call_id), now=now, settle_seconds=settle_seconds)
            counts[verdict] += 1
            if verdict in NEEDS_ATTENTION or verdict == "recent":
                stored = str(call.get("results_stored_at") or "")
                report.findings.append(Finding(call_id, str(call.get("bot_id") or ""), stored, verdict, why))


class DynamoSweepSource:
    """The sweep's reads: one Scan of the Bots table, a Query per bot, batched gets of calls and deliveries."""

    # Only what classify reads: the result's small fields, never the CRM's answer or the call's content.
    _CALL_PROJECTION = "call_id, bot_id, results_stored_at, skip_post_push, #r.#status, #r.#next, #r.#attempts"
    _CALL_NAMES = {
        "#r": "post_call_push_result",
        "#status": "status",
        "#next": "next_attempt_at",
        "#attempts": "attempts",
    }

    def __init__(self, client: Any, calls_table: str, bots_table: str, state_table: str | None) -> None:
        self._client = client
        self._calls_table, self._bots_table, self._state_table = calls_table, bots_table, state_table
        self._calls = CallsTable(client, calls_table)

    def bots(self) -> tuple[list[str], int]:
        with_push: list[str] = []
        without = 0
        request: dict[str, Any] = {
            "TableName": self._bots_table,
            # Only whether a config exists: the config (and any inline token) is never read here.
            "ProjectionExpression": "bot_id, #push.#url",
            "ExpressionAttributeNames": {"#push": "post_call_push", "#url": "url"},
        }
        while True:
            try:
                response = self._client.scan(**request)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"listing the bots of {self._bots_table} failed: {aws_error(exc)}") from exc
            for item in response.get("Items", []):
                bot = from_item(item)
                if "post_call_push" in bot:
                    with_push.append(str(bot["bot_id"]))
                else:
                    without += 1
            if not response.get("LastEvaluatedKey"):
                return sorted(with_push), without
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def call_ids(self, bot_id: str, start: str, end: str) -> list[tuple[str, str]]:
        try:
            return self._calls.call_ids_by_bot(bot_id, stored_from=start, stored_before=end)
        except StorageError as exc:
            if "index" in str(exc).lower():
                # A table brought with ExistingCallsTableName that lacks the stack's index.
                fail(
                    f"the Calls table {self._calls_table} has no {INDEX_NAME} (hash bot_id, range "
                    "results_stored_at): add it (docs/runbook.md, 'Bring your own tables'); reconcile never scans",
                    EXIT_PROBLEM,
                )
            raise

    def calls(self, call_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        items = _batch_get(
            self._client,
            self._calls_table,
            [{"call_id": call_id} for call_id in call_ids],
            projection=self._CALL_PROJECTION,
            names=self._CALL_NAMES,
        )
        return {str(item["call_id"]): item for item in items}

    def deliveries(self, call_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not self._state_table:
            return {}
        from crm_push.adapters.state import expand_entry

        items = _batch_get(self._client, self._state_table, [{"pk": _STATE_KEY.format(c)} for c in call_ids])
        found: dict[str, dict[str, Any]] = {}
        for item in items:
            item["log"] = [expand_entry(e) for e in item.get("log") or () if isinstance(e, dict)]
            found[str(item["pk"]).removeprefix(_STATE_KEY.format(""))] = item
        return found


def _batch_get(
    client: Any,
    table_name: str,
    keys: list[dict[str, Any]],
    *,
    projection: str | None = None,
    names: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Items by key, eventually consistent (a sweep of the past needs no more), unprocessed keys retried."""
    items: list[dict[str, Any]] = []
    for start in range(0, len(keys), _BATCH_GET):
        request: dict[str, Any] = {"Keys": [to_item(key) for key in keys[start : start + _BATCH_GET]]}
        if projection:
            request["ProjectionExpression"] = projection
        if names:
            request["ExpressionAttributeNames"] = names
        pending: dict[str, Any] = {table_name: request}
        for retry in range(10):
            try:
                response = client.batch_get_item(RequestItems=pending)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"reading from {table_name} failed: {aws_error(exc)}") from exc
            items.extend(from_item(item) for item in response.get("Responses", {}).get(table_name, []))
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                break
            sleep(min(2.0, 0.05 * 2**retry))  # throttled: back off as the SDK would
        else:
            raise StorageError(f"reading from {table_name} failed: still throttled after 10 tries")
    return items


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", help="window start, inclusive: 2026-11-01 (midnight UTC) or an ISO-8601 time")
    parser.add_argument("--until", help="window end, exclusive; default: now")
    parser.add_argument("--bot-id", help="only this bot's calls (default: every bot with a post_call_push config)")
    parser.add_argument(
        "--on-failure-message",
        action="append",
        default=[],
        metavar="FILE",
        help="an on-failure queue message saved as JSON (repeatable): sweep the window its stream batch arrived "
        "in, or check the call its EventBridge event names",
    )
    parser.add_argument(
        "--on-failure-queue",
        metavar="URL",
        help="read every message of the on-failure queue (stack output OnFailureQueueUrl) the same way; "
        "messages are left in the queue",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=MARGIN_MINUTES,
        metavar="MINUTES",
        help=f"widen an on-failure batch's window by this much each side (default {MARGIN_MINUTES})",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_MINUTES,
        metavar="MINUTES",
        help=f"calls stored less than this long ago are 'recent', not stranded (default {SETTLE_MINUTES})",
    )
    parser.add_argument("--replay", action="store_true", help="push each stranded call now, as a replay")
    parser.add_argument("--reason", help="with --replay: why, recorded on every call pushed")
    parser.add_argument("--by", help="with --replay: who (default: $USER)")
    parser.add_argument("--rate", type=float, default=2.0, help="at most this many pushes a second (default 2)")
    parser.add_argument("--limit", type=int, help="push at most this many stranded calls")
    parser.add_argument("--dry-run", action="store_true", help="with --replay: list what would be pushed; send nothing")
    parser.add_argument(
        "--ignore-dead-letters",
        action="store_true",
        help="replay although the retry dead-letter queue holds messages (they may carry answers for these calls)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_parser(commands: Any, parents: list[argparse.ArgumentParser], epilog: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "reconcile",
        parents=parents,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="find calls stored in a window that never reached their CRM (and push them with --replay)",
        description="Sweep every bot's calls whose results were stored in --since..--until (or in the windows "
        "the on-failure queue's stream batches name) and find the stranded ones: no final result on the call "
        "and nothing in the state table that will deliver it (no push holding it, no attempt scheduled). "
        "Calls whose answer only waits to be written are listed apart: dlq redrive, never a replay. Reads the "
        "Bots table, the Calls table's bot_id-results_stored_at-index and batched items; never scans the Calls "
        "table. --replay pushes the stranded calls as replays, paced by --rate.",
    )
    add_arguments(parser)
    return parser


class _Clock(Protocol):
    """What the paced replay waits with (``push_cli.main.Clock``; tests pass fakes)."""

    def sleep(self, seconds: float, /) -> None: ...

    def monotonic(self) -> float: ...


def run(args: argparse.Namespace, ctx: Context, console: Console | None = None, clock: _Clock | None = None) -> int:
    console = console or make_console()
    _check_options(args)
    margin = timedelta(minutes=args.margin)
    on_failure = _on_failure(args, ctx, margin)
    windows = [(iso_utc(start), iso_utc(end)) for start, end in merge_windows(on_failure.windows)]
    if not args.since and not windows and not on_failure.calls:
        console.print(
            f"The on-failure messages name no stream batch and no call ({on_failure.unreadable} not understood): "
            "nothing to sweep."
        )
        return EXIT_PROBLEM if on_failure.unreadable else EXIT_OK
    if args.since:
        try:
            start = parse_moment(args.since, "--since")
            end = parse_moment(args.until, "--until") if args.until else iso_utc(datetime.now(UTC))
        except ValueError as exc:
            fail(str(exc))
        if end <= start:
            fail(f"--until {args.until} is not after --since {args.since}")
        windows = [(start, end)]
    if args.bot_id and ctx.bot_item(args.bot_id) is None:
        fail(f"bot {args.bot_id} is not in the Bots table {ctx.bots_table}")
    if not ctx.state_table:
        fail("reconcile needs the state table (--state-table or PUSH_STATE_TABLE): it tells live deliveries apart")
    calls = ctx.calls()  # says what is missing before anything is read
    assert ctx.bots_table is not None  # bot_item/calls() above failed otherwise
    source = DynamoSweepSource(ctx.dynamodb(), str(ctx.calls_table), ctx.bots_table, ctx.state_table)
    quiet = args.json or not err_console().is_terminal
    progress = (lambda _text: None) if quiet else (lambda text: err_console().print(text))
    now = datetime.now(UTC)
    report = sweep(
        source,
        windows,
        now=now,
        bot_id=args.bot_id,
        call_ids=on_failure.calls,
        settle_seconds=int(args.settle * 60),
        progress=progress,
    )
    if on_failure.message_ids or args.on_failure_message:
        report.on_failure = {
            "stream_batches": on_failure.stream_batches,
            "events": on_failure.events,
            "unreadable": on_failure.unreadable,
            "message_ids": on_failure.message_ids,
        }
    from push_cli.dlq import parked_count

    report.dead_letters = parked_count(ctx)
    if args.replay:
        code = _replay(args, ctx, report, calls, clock)
        if code is not None:
            render(console, report, as_json=args.json)
            return code
    render(console, report, as_json=args.json)
    if report.interrupted:
        return EXIT_INTERRUPTED
    if args.replay and not args.dry_run:
        still = [line for line in report.lines if line.outcome != "ok"]
        others = [f for f in report.findings if f.verdict in NEEDS_ATTENTION and f.verdict != "stranded"]
        return EXIT_PROBLEM if still or others or len(report.lines) < len(report.stranded) else EXIT_OK
    return EXIT_PROBLEM if any(f.verdict in NEEDS_ATTENTION for f in report.findings) else EXIT_OK


def _check_options(args: argparse.Namespace) -> None:
    sources = bool(args.since) + bool(args.on_failure_message or args.on_failure_queue)
    if sources != 1:
        fail("give a window (--since [--until]) or on-failure messages (--on-failure-message/--on-failure-queue)")
    if args.until and not args.since:
        fail("--until goes with --since")
    if args.margin < 0 or args.settle < 0:
        fail("--margin and --settle are minutes, 0 or more")
    if args.replay:
        if not (args.reason or "").strip():
            fail("--replay needs --reason: it is recorded on every call pushed")
        if not 0 < args.rate <= 50:
            fail("--rate must be more than 0 and at most 50 pushes a second")
    elif args.reason or args.dry_run or args.limit is not None:
        fail("--reason, --dry-run and --limit go with --replay")


def _on_failure(args: argparse.Namespace, ctx: Context, margin: timedelta) -> OnFailureFindings:
    found = OnFailureFindings()
    for path in args.on_failure_message:
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            fail(f"cannot read on-failure message file {path}: {exc.strerror or exc}")
        except ValueError:
            fail(f"on-failure message file {path} is not JSON")
        read_on_failure_message(body, margin, found)
    if args.on_failure_queue:
        from push_cli.dlq import Received

        with Received(ctx.sqs(), args.on_failure_queue, limit=10_000) as messages:
            for message in messages:
                found.message_ids.append(str(message.get("MessageId")))
                try:
                    body = json.loads(str(message.get("Body") or ""))
                except ValueError:
                    found.unreadable += 1
                    continue
                read_on_failure_message(body, margin, found)
    return found


def _replay(
    args: argparse.Namespace, ctx: Context, report: ReconcileReport, calls: CallsTable, clock: _Clock | None
) -> int | None:
    """Push the stranded calls; an exit status when it must not start, else None."""
    by = args.by or os.environ.get("USER") or os.environ.get("USERNAME") or "operator"
    report.replay = {"by": by, "reason": args.reason.strip(), "rate": args.rate, "dry_run": args.dry_run}
    targets = [f.call_id for f in report.stranded][: args.limit]
    if args.dry_run or not targets:
        return None
    if report.dead_letters and not args.ignore_dead_letters:
        err_console().print(
            f"error: {report.dead_letters} message(s) are parked in the retry dead-letter queue, and some may "
            "carry answers for these calls: a replay would push those again. Run post-call-push dlq list, then "
            "dlq redrive, then reconcile again (or pass --ignore-dead-letters)"
        )
        return EXIT_PROBLEM
    deps = ctx.push_deps()
    push = core_push(deps, by=by, reason=report.replay["reason"])
    now_settle = int(args.settle * 60)
    get_delivery = ctx.delivery_state

    def push_if_still_stranded(call_id: str) -> PushOutcome:
        call = calls.get_call(call_id)
        if call is None:
            return PushOutcome(call_id, "call_not_found")
        delivery = get_delivery(call_id)
        verdict, _ = classify(call, delivery, now=datetime.now(UTC), settle_seconds=now_settle)
        if verdict != "stranded":
            return PushOutcome(call_id, _SINCE_SWEPT[verdict])
        return push(call_id)

    stop = threading.Event()
    report.lines, report.interrupted = replay_calls(
        targets,
        push_if_still_stranded,
        rate=args.rate,
        stop=stop,
        sleep=clock.sleep if clock else time.sleep,
        monotonic=clock.monotonic if clock else time.monotonic,
    )
    return None


# What a call found no longer stranded just before its push became, as the replay lines name it.
_SINCE_SWEPT: dict[str, Any] = {
    "delivered": "already_pushed",
    "in_progress": "claim_held",
    "by_design": "not_eligible",
    "recent": "scheduled",
    "unwritten": "record_deferred",
    "unclear": "already_pushed",
}


def core_push(deps: Any, *, by: str, reason: str) -> Callable[[str], PushOutcome]:
    """One call pushed through the core as an operator's replay (who and why recorded on the call).

    Not forced: a call whose delivery ended since the sweep selected it (another
    trigger got there first) is left alone, so a sweep never pushes a call twice.
    """
    from crm_push.push import Replay, push_call

    replay = Replay(by=by, reason=reason, force=False)
    return lambda call_id: push_call(call_id, deps, replay=replay)


# --- showing --------------------------------------------------------------------------------

_VERDICT_WORDS = {
    "stranded": "stranded: nothing will deliver them by itself",
    "unwritten": "answered, not yet written: never push again (dlq redrive if parked)",
    "unclear": "unclear: the state says ended, the call item not; look before anything else",
    "recent": "recent: may still be on their way",
    "in_progress": "in progress: a push holds them or an attempt is scheduled",
    "by_design": "not pushed by design (skip_post_push)",
    "delivered": "delivered: a final result on the call",
}


def render(console: Console, report: ReconcileReport, *, as_json: bool) -> None:
    if as_json:
        print_json(console, report.as_json())
        return
    spans = "; ".join(f"{start} .. {end}" for start, end in report.windows) or "(calls named by events only)"
    console.print(
        f"Reconciled results stored in {spans}: {report.calls_seen} call(s) of {report.bots_swept} bot(s)"
        + (f" ({report.bots_without_push} bot(s) without post_call_push skipped)" if report.bots_without_push else "")
    )
    if report.on_failure:
        info = report.on_failure
        console.print(
            f"From the on-failure queue: {info['stream_batches']} stream batch(es), {info['events']} event(s)"
            + (f", {info['unreadable']} message(s) not understood" if info["unreadable"] else "")
        )
    summary = table("Calls", "verdict", "calls")
    for verdict in VERDICTS:
        if report.counts.get(verdict):
            row(summary, _VERDICT_WORDS[verdict], report.counts[verdict])
    console.print(summary)
    listed = [f for f in report.findings if f.verdict in NEEDS_ATTENTION]
    if listed:
        grid = table("Need an operator", "call id", "bot id", "results stored at", "verdict", "why", wrap=("why",))
        for finding in listed[:MAX_LISTED]:
            row(grid, finding.call_id, finding.bot_id, finding.stored_at, finding.verdict, finding.why)
        console.print(grid)
        if len(listed) > MAX_LISTED:
            console.print(f"... and {len(listed) - MAX_LISTED} more (--json lists every one)")
    if report.dead_letters:
        console.print(
            f"The retry dead-letter queue holds {report.dead_letters} message(s): post-call-push dlq list, then "
            "dlq redrive. Never replay those calls: an answered attempt is written, not sent again."
        )
    _render_replay(console, report)


def _render_replay(console: Console, report: ReconcileReport) -> None:
    stranded = len(report.stranded)
    if report.replay is None:
        if stranded:
            console.print(
                f"Next: push the {stranded} stranded call(s) with the same options plus "
                '--replay --reason "<why, e.g. the ticket>" (add --dry-run first to see the plan)'
            )
        return
    if report.replay["dry_run"]:
        console.print(
            f"Dry run - nothing sent. {stranded} stranded call(s) would be pushed at {report.replay['rate']:g}/s."
        )
        return
    if not report.lines:
        if stranded:
            console.print("Nothing pushed.")
        return
    counts = Counter(line.outcome for line in report.lines)
    console.print(
        f"Pushed {len(report.lines)} of {stranded} stranded call(s) as replays by {report.replay['by']}: "
        + ", ".join(f"{outcome}={count}" for outcome, count in sorted(counts.items()))
        + (" - stopped by Ctrl-C" if report.interrupted else "")
    )
    failures = [line for line in report.lines if line.outcome != "ok"]
    if failures:
        grid = table("Not ok", "call id", "outcome", "http", "error", wrap=("error",))
        for line in failures[:MAX_LISTED]:
            row(grid, line.call_id, line.outcome, line.http_status if line.http_status is not None else "-", line.error)
        console.print(grid)
