"""``post-call-push dlq list|redrive``: the retry queue's dead letters, read and put back.

A message that failed 10 receives on the retry queue is parked in its
dead-letter queue (template.yaml ``RetryDeadLetterQueue``). Each is one of the
two kinds of ``crm_push.messages``:

``record``
    the CRM already answered an attempt; the writes of that answer (the call
    item, the state) are pending. Put back, the handler *writes* what it
    carries and never sends anything again.
``attempt``
    a wake-up for a call's next attempt (or a check on a held call). Put
    back, it wakes the call; the state table decides whether anything is
    due, so a call delivered meanwhile is left alone.

So dead letters are redriven, never replayed (contract §12): a replay would
push a call whose answer is only waiting to be written. ``redrive`` sends
each message's body unchanged to the retry queue and deletes it from the
dead-letter queue only once that send succeeded; a message it cannot read
stays where it is. ``list`` shows kinds, call ids and ages, never what a
message carries (results, CRM answers).

Reading a queue means receiving its messages: both commands hide what they
read for a short visibility timeout and make what they leave visible again
at once when done.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console

from crm_push.adapters.dynamodb import aws_error
from crm_push.clock import iso_utc
from crm_push.messages import DestinationChain, Record, WakeUp, parse
from push_cli.context import EXIT_OK, EXIT_PROBLEM, Context, fail
from push_cli.display import err_console, make_console, print_json, row, table

KINDS = ("record", "attempt", "destination")
READ_VISIBILITY_SECONDS = 60  # what a listing hides from others while it reads; released right after
MAX_LISTED = 200
_RECEIVE_BATCH = 10  # the SQS maximum per ReceiveMessage


@dataclass
class ParkedMessage:
    """One dead letter as an operator sees it: what kind, for which call, since when. No content."""

    message_id: str
    kind: str  # record | attempt | destination | unreadable (not a retry message this code reads)
    call_id: str
    bot_id: str
    sent_at: str  # when it was first sent to the retry queue
    age_seconds: int | None
    receives: int  # receives on the retry queue before it was parked (and any since)
    due: str = ""  # an attempt's due time
    attempts: int | None = None  # a record's attempt number
    problem: str = ""  # why it is unreadable

    @property
    def redrivable(self) -> bool:
        return self.kind in KINDS


@dataclass
class DlqReport:
    queue_url: str
    action: str  # list | redrive
    retry_queue_url: str = ""
    dry_run: bool = False
    messages: list[ParkedMessage] = field(default_factory=list)
    redriven: list[str] = field(default_factory=list)  # message ids sent back and deleted
    failed: list[dict[str, str]] = field(default_factory=list)  # {message_id, call_id, error}
    left: list[str] = field(default_factory=list)  # message ids not redriven (unreadable, filtered out)
    approximate_depth: int | None = None

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(message.kind for message in self.messages))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts}


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "redrive"), help="list the parked messages, or put them back")
    parser.add_argument(
        "--queue-url",
        help="the retry dead-letter queue (stack output RetryDeadLetterQueueUrl); default: the one the retry "
        "queue (--retry-queue-url) names in its redrive policy",
    )
    parser.add_argument("--call-id", action="append", default=[], help="only this call's messages (repeatable)")
    parser.add_argument("--kind", choices=KINDS, help="only messages of this kind")
    parser.add_argument("--limit", type=int, default=1000, help="read at most this many messages (default 1000)")
    parser.add_argument("--dry-run", action="store_true", help="redrive: say what would be put back; move nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_parser(commands: Any, parents: list[argparse.ArgumentParser], epilog: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "dlq",
        parents=parents,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the retry queue's dead letters: list them, or redrive them (never replay them)",
        description="List the messages parked in the retry dead-letter queue - kind (record: the CRM already "
        "answered and the writes are pending; attempt: a wake-up), call id, age, receives - or redrive them: "
        "each is sent back to the retry queue unchanged and deleted from the dead-letter queue once sent. A "
        "redriven record is written, never sent again; a redriven attempt wakes its call, which the state "
        "table guards. Fix the cause first (the function's errors), then redrive.",
    )
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace, ctx: Context, console: Console | None = None, clock: Any = None) -> int:
    console = console or make_console()
    if args.limit < 1:
        fail("--limit must be at least 1")
    if args.dry_run and args.action != "redrive":
        fail("--dry-run goes with redrive")
    sqs = ctx.sqs()
    queue_url = args.queue_url or dead_letter_queue_url(sqs, ctx.retry_queue_url)
    if not queue_url:
        fail(
            "no dead-letter queue: pass --queue-url (stack output RetryDeadLetterQueueUrl), or --retry-queue-url "
            "(RETRY_QUEUE_URL) so it can be read from the retry queue's redrive policy"
        )
    if args.action == "redrive":
        if not ctx.retry_queue_url:
            fail("redrive sends to the retry queue: pass --retry-queue-url or set RETRY_QUEUE_URL")
        if ctx.retry_queue_url == queue_url:
            fail("--queue-url is the retry queue itself: pass its dead-letter queue")
    report = DlqReport(queue_url=queue_url, action=args.action, retry_queue_url=ctx.retry_queue_url or "")
    report.dry_run = bool(args.dry_run)
    report.approximate_depth = queue_depth(sqs, queue_url)
    wanted_calls = set(args.call_id)

    def wanted(message: ParkedMessage) -> bool:
        return (not wanted_calls or message.call_id in wanted_calls) and (not args.kind or message.kind == args.kind)

    now = datetime.now(UTC)
    with Received(sqs, queue_url, limit=args.limit) as batch:
        for raw in batch:
            message = describe(raw, now)
            if not wanted(message):
                continue
            report.messages.append(message)
            if args.action != "redrive" or report.dry_run:
                continue
            if not message.redrivable:
                report.left.append(message.message_id)
                continue
            error = redrive_one(sqs, raw, queue_url, str(ctx.retry_queue_url))
            if error:
                report.failed.append({"message_id": message.message_id, "call_id": message.call_id, "error": error})
            else:
                report.redriven.append(message.message_id)
                raw["_deleted"] = True
    render(console, report, as_json=args.json)
    if report.failed:
        return EXIT_PROBLEM
    if args.action == "redrive" and not report.dry_run and report.left:
        return EXIT_PROBLEM
    return EXIT_OK


# --- reading and moving messages ------------------------------------------------------------


def describe(raw: dict[str, Any], now: datetime) -> ParkedMessage:
    """A received message as kind, call id and ages only: nothing it carries is kept."""
    attributes = raw.get("Attributes") or {}
    sent_ms = _int(attributes.get("SentTimestamp"))
    sent = datetime.fromtimestamp(sent_ms / 1000, UTC) if sent_ms is not None else None
    message = ParkedMessage(
        message_id=str(raw.get("MessageId")),
        kind="unreadable",
        call_id="",
        bot_id="",
        sent_at=iso_utc(sent) if sent else "",
        age_seconds=int((now - sent).total_seconds()) if sent else None,
        # Less this receive: what the retry queue and earlier listings counted.
        receives=max(0, (_int(attributes.get("ApproximateReceiveCount")) or 1) - 1),
    )
    try:
        body = json.loads(str(raw.get("Body") or ""))
    except ValueError:
        message.problem = "not JSON"
        return message
    if not isinstance(body, dict):
        message.problem = "not a JSON object"
        return message
    if isinstance(body.get("call_id"), str):
        message.call_id = body["call_id"]
    try:
        parsed = parse(body)
    except (ValueError, KeyError, TypeError) as exc:
        # parse's errors name the field at fault, never its content.
        message.problem = str(exc)[:120]
        return message
    message.call_id = parsed.call_id
    message.bot_id = parsed.bot_id or ""
    if isinstance(parsed, WakeUp):
        message.kind = "attempt"
        message.due = iso_utc(parsed.due) if parsed.due else ""
    elif isinstance(parsed, DestinationChain):
        # A destination's probe or release: redriving it resumes the chain (no call is sent twice by it).
        message.kind = "destination"
        message.due = iso_utc(parsed.due) if parsed.due else ""
    elif isinstance(parsed, Record):
        message.kind = "record"
        if parsed.state is not None:
            message.attempts = parsed.state.attempts
        elif parsed.call is not None:
            message.attempts = _int(parsed.call.result.get("attempts"))
    return message


def redrive_one(sqs: Any, raw: dict[str, Any], dead_letter_url: str, retry_queue_url: str) -> str:
    """Send one message back to the retry queue, then delete it here; "" when done, else why not.

    Deleted only after the send: a crash in between leaves it in both queues,
    which the handler absorbs (a record applies once, a wake-up finds the
    state as it is). The other order could lose it.
    """
    try:
        sqs.send_message(QueueUrl=retry_queue_url, MessageBody=str(raw["Body"]))
    except (ClientError, BotoCoreError) as exc:
        return f"not sent back: {aws_error(exc)}"
    try:
        sqs.delete_message(QueueUrl=dead_letter_url, ReceiptHandle=raw["ReceiptHandle"])
    except (ClientError, BotoCoreError) as exc:
        return f"sent back, but not deleted from the dead-letter queue (a second copy is harmless): {aws_error(exc)}"
    return ""


class Received:
    """Receive up to ``limit`` messages (hidden for a short while), and make the ones not deleted visible again.

    A message is deleted by the caller, who marks it ``raw["_deleted"] = True``.
    """

    def __init__(self, sqs: Any, queue_url: str, *, limit: int, visibility: int = READ_VISIBILITY_SECONDS) -> None:
        self._sqs, self._url, self._limit, self._visibility = sqs, queue_url, limit, visibility
        self._messages: list[dict[str, Any]] = []

    def __enter__(self) -> Iterator[dict[str, Any]]:
        return self._read()

    def _read(self) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        while len(seen) < self._limit:
            try:
                response = self._sqs.receive_message(
                    QueueUrl=self._url,
                    MaxNumberOfMessages=min(_RECEIVE_BATCH, self._limit - len(seen)),
                    VisibilityTimeout=self._visibility,
                    WaitTimeSeconds=1,
                    MessageSystemAttributeNames=["All"],
                )
            except (ClientError, BotoCoreError) as exc:
                fail(f"reading {self._url} failed: {aws_error(exc)}", EXIT_PROBLEM)
            batch = response.get("Messages") or []
            fresh = [m for m in batch if m.get("MessageId") not in seen]
            if not fresh:
                return
            for message in fresh:
                seen.add(str(message.get("MessageId")))
                self._messages.append(message)
                yield message

    def __exit__(self, *exc: object) -> None:
        keep = [m for m in self._messages if not m.get("_deleted")]
        for start in range(0, len(keep), _RECEIVE_BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(keep[start : start + _RECEIVE_BATCH])
            ]
            try:
                self._sqs.change_message_visibility_batch(QueueUrl=self._url, Entries=entries)
            except (ClientError, BotoCoreError):
                # They come back by themselves when the short visibility timeout ends.
                err_console().print(f"note: some messages stay hidden for up to {self._visibility} s")


def dead_letter_queue_url(sqs: Any, retry_queue_url: str | None) -> str | None:
    """The dead-letter queue the retry queue's redrive policy names, or None when that cannot be read."""
    if not retry_queue_url:
        return None
    try:
        attributes = sqs.get_queue_attributes(QueueUrl=retry_queue_url, AttributeNames=["RedrivePolicy"])
        policy = json.loads(attributes.get("Attributes", {}).get("RedrivePolicy") or "{}")
        arn = str(policy.get("deadLetterTargetArn") or "")
        if not arn:
            return None
        _, _, _, _, account, name = arn.split(":", 5)
        return str(sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])
    except (ClientError, BotoCoreError, ValueError):
        return None


def queue_depth(sqs: Any, queue_url: str) -> int | None:
    """Messages in a queue, visible or being read (approximate, as SQS counts them); None when unreadable."""
    try:
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        ).get("Attributes", {})
    except (ClientError, BotoCoreError):
        return None
    return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
        attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
    )


def parked_count(ctx: Context) -> int | None:
    """How many messages the retry dead-letter queue holds, for ``status`` and ``reconcile``; None if unknown."""
    if not ctx.retry_queue_url:
        return None
    try:
        sqs = ctx.sqs()
    except Exception:  # no region, no profile: a note elsewhere, never a failure of the command asking
        return None
    url = dead_letter_queue_url(sqs, ctx.retry_queue_url)
    return queue_depth(sqs, url) if url else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --- showing --------------------------------------------------------------------------------


def render(console: Console, report: DlqReport, *, as_json: bool) -> None:
    if as_json:
        print_json(console, report.as_json())
        return
    depth = f" (about {report.approximate_depth} in the queue)" if report.approximate_depth is not None else ""
    if not report.messages:
        console.print(f"No parked message matches{depth}.")
        return
    counts = ", ".join(f"{count} {kind}" for kind, count in sorted(report.counts.items()))
    console.print(f"{len(report.messages)} parked message(s) read{depth}: {counts}")
    grid = table("Dead letters", "message id", "kind", "call id", "bot id", "sent", "age", "receives", "detail")
    for message in report.messages[:MAX_LISTED]:
        age = _age(message.age_seconds)
        if message.kind == "attempt":
            detail = f"due {message.due}" if message.due else "a check"
        elif message.kind == "record":
            detail = f"answer to attempt {message.attempts}, not yet written" if message.attempts else "not written"
        else:
            detail = message.problem or "not a retry message"
        cells = (message.message_id, message.kind, message.call_id or "-", message.bot_id or "-")
        row(grid, *cells, message.sent_at or "-", age, message.receives, detail)
    console.print(grid)
    if len(report.messages) > MAX_LISTED:
        console.print(f"... and {len(report.messages) - MAX_LISTED} more (--json lists every one)")
    if report.action == "list" or report.dry_run:
        records = report.counts.get("record", 0)
        if records:
            console.print(
                f"{records} record message(s): the CRM already answered those calls. Redrive them (they are "
                "written, never re-sent); never replay those calls."
            )
        verb = "Would put back" if report.dry_run else "To put them back, after fixing the cause"
        console.print(f"{verb}: post-call-push dlq redrive --queue-url {report.queue_url}")
        return
    console.print(f"Redriven to the retry queue: {len(report.redriven)}")
    if report.left:
        console.print(f"Left in the dead-letter queue (not a retry message this version reads): {len(report.left)}")
    for failure in report.failed:
        console.print(f"  {failure['message_id']} ({failure['call_id'] or '-'}): {failure['error']}")
    if report.redriven:
        console.print("Next: post-call-push status --call-id CALL_ID shows each call once the function has run them.")


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s"
