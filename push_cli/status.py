"""``status``: a call's push history and delivery schedule, and — when it went wrong — the runbook check.

Two places describe a call's delivery (contract §10): the call item (the
result and ``integration_log``, written at the first outcome and when the
delivery ends) and the delivery-state table (attempts, the next attempt, the
claim, and the attempts made since the call item was last written). Status
reads both, so an operator sees attempt 5 while the call item still shows 1.

An attempt the CRM answered whose write to the call item failed is "answered,
not yet written" (``push_cli/delivery_item.py``): a record message, or the
delivery's next write, carries it. Status says so and, when the retry
dead-letter queue holds messages, points at ``dlq redrive``; it never
suggests a replay for it, which would push the call again (contract §12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from crm_push.clock import iso_utc
from crm_push.config import BotConfig
from crm_push.error_kinds import NO_ANSWER_KINDS
from crm_push.retry_policy import schedule_for
from push_cli.auth import auth_in_words, refusal_in_words
from push_cli.delivery_item import LATE_AFTER_SECONDS, decided_not_written, unwritten_answers
from push_cli.display import print_json, row, table, truncate
from push_cli.runbook import (
    CREDENTIALS_REVOKED,
    CRM_DOWN,
    CRM_REJECTS,
    PUSH_NOT_SENT,
    QUOTA_SPENT,
    RECORDING_LINK,
    RUNBOOK_PATH,
    Check,
    command,
)

# The runbook section for answers waiting to be written and for dead letters (an unnumbered section).
DEAD_LETTERS_SECTION = f"{RUNBOOK_PATH}#dead-letters-are-redriven-not-replayed"
RECORDED_ON_CALL = "call"
RECORDED_IN_STATE = "state table"


@dataclass
class HistoryEntry:
    pushed_at: str
    status: str
    http_status: Any
    attempts: Any  # which attempt of the delivery this was
    error_kind: str
    duration_ms: Any
    recording_link: str
    replay: str  # "by alice: CRM was down" or ""
    detail: str  # the error, or the CRM's answer when it rejected
    recorded_in: str = RECORDED_ON_CALL  # or RECORDED_IN_STATE: not on the call item yet


@dataclass
class DeliveryView:
    """The call's delivery as the state table has it, with what follows from it for an operator."""

    read: bool  # the state table was read (``note`` says why not)
    note: str = ""
    state: str = ""  # "scheduled" (another attempt is due), "done", or "" (no attempt recorded there)
    attempts: int | None = None
    max_attempts: int | None = None  # 1 + the bot's retry schedule
    next_attempt_at: str | None = None
    next_attempt_in_seconds: int | None = None  # negative once it is overdue
    last_error_kind: str | None = None
    exhausted: bool = False
    claim_held: bool = False  # a push holds the call right now
    claim_until: str | None = None
    claim_by: str | None = None  # the trigger holding it: stream:..., sqs:..., eventbridge:..., direct:...
    claim_expired: bool = False  # a claim whose holder died before recording anything
    last_written_by: str | None = None
    unrecorded: list[HistoryEntry] = field(default_factory=list)  # attempts only in the state table so far
    unwritten: int = 0  # of those, attempts the CRM answered that the call item should carry already
    answered_not_written: bool = False  # the answer ended the delivery; only its write is pending
    dead_letters: int | None = None  # messages in the retry dead-letter queue (None: not read)


@dataclass
class StatusReport:
    call_id: str
    bot_id: str
    results_stored_at: str
    latest: dict[str, Any] | None  # post_call_push_result on the call item
    latest_attempt: dict[str, Any] | None  # the most recent attempt known (may be only in the state table)
    delivery: DeliveryView
    history: list[HistoryEntry] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: str = ""
    runbook: str = ""  # "docs/runbook.md#..." of the matching check, or ""
    next_commands: list[str] = field(default_factory=list)
    circuit: dict[str, Any] | None = None  # the destination's circuit (CircuitView.as_json), when it was read
    parked: str | None = None  # why the destination's calls wait (a spent quota, an open circuit), when they do
    scope: str | None = None  # the bot's tenant scope: circuits, quotas and secrets are its

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- reading the two sources ----------------------------------------------------------------


def _detail(entry: Mapping[str, Any]) -> str:
    if entry.get("status") == "rejected":
        return truncate(str(entry.get("response_body") or ""), 100)
    return truncate(str(entry.get("error") or ""), 100)


def _history_entry(entry: Mapping[str, Any], recorded_in: str) -> HistoryEntry:
    replay = entry.get("replay")
    replay_text = f"by {replay.get('by')}: {replay.get('reason')}" if isinstance(replay, Mapping) else ""
    return HistoryEntry(
        str(entry.get("pushed_at") or ""),
        str(entry.get("status") or ""),
        entry.get("http_status"),
        entry.get("attempts"),
        str(entry.get("error_kind") or ""),
        entry.get("duration_ms"),
        str(entry.get("recording_link") or ""),
        truncate(replay_text, 80),
        _detail(entry),
        recorded_in,
    )


def _push_entries(entries: Any) -> list[Mapping[str, Any]]:
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, Mapping) and e.get("type", "post_call_push") == "post_call_push"]


def _epoch(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _delivery_view(
    state: Mapping[str, Any] | None,
    unread: str,
    latest_attempt: Mapping[str, Any] | None,
    bot: BotConfig | None,
    now: datetime,
) -> DeliveryView:
    view = DeliveryView(read=not unread, note=unread)
    if bot is not None and bot.push is not None:
        view.max_attempts = len(schedule_for(bot.push.retry_schedule_seconds)) + 1
    if latest_attempt is not None:
        view.last_error_kind = latest_attempt.get("error_kind") or None
        view.exhausted = latest_attempt.get("exhausted") is True
        view.attempts = _epoch(latest_attempt.get("attempts"))
    if state is None:
        if not unread:
            view.note = (
                "the state table no longer holds this delivery (its item expires 30 days after its last write)"
                if latest_attempt is not None
                else "no delivery item in the state table: no push has claimed this call"
            )
        if latest_attempt is not None and latest_attempt.get("next_attempt_at"):
            # Only the call item to go by: the schedule it was written with, possibly since overtaken.
            view.state = "scheduled"
            view.next_attempt_at = str(latest_attempt["next_attempt_at"])
            planned = _parse_iso(view.next_attempt_at)
            if planned is not None:
                view.next_attempt_in_seconds = int((planned - now).total_seconds())
        return view

    epoch_now = now.timestamp()
    view.state = str(state.get("st") or "")
    view.attempts = _epoch(state.get("attempts"))
    view.last_written_by = state.get("by")
    due = _epoch(state.get("due"))
    if view.state == "scheduled" and due is not None:
        view.next_attempt_at = iso_utc(datetime.fromtimestamp(due, UTC))
        view.next_attempt_in_seconds = int(due - epoch_now)
    lease = _epoch(state.get("lease_until"))
    if state.get("claim_id") and lease is not None:
        view.claim_until = iso_utc(datetime.fromtimestamp(lease, UTC))
        view.claim_by = state.get("claim_trigger")
        # A lease is held through its last second (adapters/state.py).
        view.claim_held = lease >= int(epoch_now)
        view.claim_expired = not view.claim_held
    view.unrecorded = [_history_entry(e, RECORDED_IN_STATE) for e in _push_entries(state.get("log"))]
    view.unwritten = len(unwritten_answers(state))
    view.answered_not_written = decided_not_written(state)
    return view


def _parse_iso(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def build_status(
    call: Mapping[str, Any],
    bot: BotConfig | None,
    *,
    bot_exists: bool,
    delivery: Mapping[str, Any] | None = None,
    delivery_unread: str = "",
    now: datetime | None = None,
    dead_letters: int | None = None,
) -> StatusReport:
    """The report for ``call``; ``delivery`` is its state-table item (``delivery_unread`` says why there is none).

    ``dead_letters`` is how many messages the retry dead-letter queue holds
    (``dlq.parked_count``), None when it was not read.
    """
    now = now or datetime.now(UTC)
    latest = call.get("post_call_push_result")
    latest = dict(latest) if isinstance(latest, Mapping) else None
    pending = _push_entries(delivery.get("log")) if delivery is not None else []
    latest_attempt = dict(pending[-1]) if pending else latest
    events = call.get("events")
    report = StatusReport(
        call_id=str(call.get("call_id")),
        bot_id=str(call.get("bot_id") or ""),
        results_stored_at=str(call.get("results_stored_at") or ""),
        latest=latest,
        latest_attempt=latest_attempt,
        delivery=_delivery_view(delivery, delivery_unread, latest_attempt, bot, now),
        history=[_history_entry(e, RECORDED_ON_CALL) for e in _push_entries(call.get("integration_log"))],
        events=[dict(e) for e in events if isinstance(e, Mapping) and e.get("type") == "post_call_push"]
        if isinstance(events, list)
        else [],
        scope=bot.scope if bot is not None else None,
    )
    report.delivery.dead_letters = dead_letters
    if report.delivery.answered_not_written:
        report.diagnosis, report.next_commands = _answered_not_written(report)
        report.runbook = f"{DEAD_LETTERS_SECTION} (answered, not yet written)"
        return report
    check, report.diagnosis, report.next_commands = _diagnose(call, bot, report, bot_exists=bot_exists)
    report.runbook = f"{check.reference} (check {check.number}: {check.title})" if check else ""
    return report


def _answered_not_written(report: StatusReport) -> tuple[str, list[str]]:
    """The CRM answered and the answer ended the delivery; only the call item's write is missing.

    Never a replay: that would push the call a second time. The answer is
    written by the record message that carries it (or the next trigger of
    the call); a dead-lettered one is put back with ``dlq redrive``.
    """
    call_id = report.call_id
    attempt = report.latest_attempt or {}
    what = f"the CRM answered attempt {attempt.get('attempts') or '?'} ({attempt.get('status') or '?'}"
    what += f" HTTP {attempt['http_status']})" if attempt.get("http_status") is not None else ")"
    diagnosis = (
        f"answered, not yet written: {what}, and writing it to the call item failed. The answer is kept in the "
        "state table and a record message carries it to the call; it is never sent again"
    )
    parked = report.delivery.dead_letters
    if parked:
        return (
            f"{diagnosis}. The retry dead-letter queue holds {parked} message(s): if this call's record is "
            "among them, redrive it (fix the cause first: the function's errors). Do not replay this call",
            [command("dlq", "list", "--call-id", call_id), command("dlq", "redrive", "--call-id", call_id)],
        )
    return (
        f"{diagnosis}. Nothing to do unless it stays so: look again in a few minutes (the retry queue "
        "retries the write); do not replay this call",
        [command("status", "--call-id", call_id)],
    )


# --- what it means ------------------------------------------------------------------------------


def _what_failed(attempt: Mapping[str, Any]) -> str:
    """The latest attempt's failure in words, from its ``error_kind`` (contract §10)."""
    kind = attempt.get("error_kind")
    error = truncate(str(attempt.get("error") or ""), 160)
    if attempt.get("http_status") is not None:
        body = truncate(str(attempt.get("response_body") or ""), 120)
        return f"the CRM answered HTTP {attempt.get('http_status')}" + (f": {body}" if body else "")
    if kind == "circuit_open":
        return "the CRM failed repeatedly, so its circuit is open and calls to it wait (no attempt spent)"
    if kind == "secret":
        return f"a secret of the config could not be read ({error})"
    if kind == "auth":
        return f"no OAuth access token ({error})"
    if kind in NO_ANSWER_KINDS:
        return f"the CRM did not answer ({kind}: {error})"
    return error or f"the attempt failed ({kind or 'no error kind recorded'})"


def in_words(seconds: float) -> str:
    """A duration as an operator reads it, to two units: ``4m 10s``, ``2h 0m``, ``1d 3h``."""
    left = abs(int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    first = next(i for i, (_, size) in enumerate(units) if left >= size or size == 1)
    parts: list[str] = []
    for unit, size in units[first : first + 2]:
        parts.append(f"{left // size}{unit}")
        left %= size
    return " ".join(parts)


def _diagnose(
    call: Mapping[str, Any], bot: BotConfig | None, report: StatusReport, *, bot_exists: bool
) -> tuple[Check | None, str, list[str]]:
    call_id = report.call_id
    bot_id = report.bot_id
    preview = command("preview", "--call-id", call_id)
    lint = command("lint", "--bot-id", bot_id)
    replay = command("replay", "--call-id", call_id, "--reason", "<why, e.g. the ticket>")
    look_again = command("status", "--call-id", call_id)
    attempt = report.latest_attempt
    delivery = report.delivery
    if attempt is None:
        return _never_pushed(call, bot, report, bot_exists=bot_exists)

    status = attempt.get("status")
    kind = attempt.get("error_kind")
    if status == "ok":
        if attempt.get("recording_link") == "none":
            return (
                RECORDING_LINK,
                "pushed ok, but the CRM got an empty recording link",
                [command("preview", "--call-id", call_id, "--check-recording")],
            )
        return (
            None,
            "pushed ok. If the CRM shows a wrong or empty field, preview explains every field (checks 3-5)",
            [preview],
        )
    if status == "skipped":
        return PUSH_NOT_SENT, "not sent: the bot's post_call_push has no url", [lint, replay]

    attempts = delivery.attempts if delivery.attempts is not None else attempt.get("attempts")
    if kind == "quota":
        # Not a CRM that is down: the tenant's allowance there is spent, and every call of it waits for the reset.
        until = delivery.next_attempt_at or attempt.get("next_attempt_at") or "its reset"
        return (
            QUOTA_SPENT,
            f"parked: the CRM says this tenant's quota is spent; this call and every other of its destination "
            f"wait until {until} without spending attempts, then go out within a minute",
            [command("circuits", "--scope", report.scope or bot_id), look_again],
        )
    if delivery.state == "scheduled" and delivery.next_attempt_at:
        what = _what_failed(attempt)
        following = f"attempt {int(attempts or 0) + 1}" + (
            f" of {delivery.max_attempts}" if delivery.max_attempts else ""
        )
        if delivery.claim_held:
            return (
                CRM_DOWN,
                f"{what}; {following} is being made right now (a push holds the call until "
                f"{delivery.claim_until}); look again in a moment",
                [look_again],
            )
        wait = delivery.next_attempt_in_seconds
        if wait is not None and wait < -LATE_AFTER_SECONDS:
            late = (
                f"{what}; {following} was due at {delivery.next_attempt_at} ({in_words(wait)} ago) and has not "
                "run: its retry-queue message is late, lost or dead-lettered"
            )
            if delivery.dead_letters:
                return (
                    CRM_DOWN,
                    f"{late}. The retry dead-letter queue holds {delivery.dead_letters} message(s): redrive this "
                    "call's (it wakes the call; nothing already answered is sent again)",
                    [command("dlq", "list", "--call-id", call_id), command("dlq", "redrive", "--call-id", call_id)],
                )
            return CRM_DOWN, f"{late} (see the function's errors). A replay makes that attempt now", [replay]
        when = f"in {in_words(wait)}" if wait is not None and wait >= 0 else "due now"
        return (
            CRM_DOWN,
            f"{what}. Nothing to do: the push retries by itself - {following} at {delivery.next_attempt_at} "
            f"({when}). Once the CRM is back, a replay pushes it now instead",
            [look_again, replay],
        )
    if delivery.exhausted:
        since = report.results_stored_at[:10] or "<the outage's first day>"
        range_replay = ["replay", "--bot-id", bot_id, "--status", "failed,rejected", "--since", since]
        return (
            CRM_DOWN,
            f"delivery exhausted: {_what_failed(attempt)}, on the last of {attempts} attempt(s) of the retry "
            "schedule; nothing retries it now. Check that the CRM is back (or ask its owner), then replay it - "
            "and the other calls of the outage",
            [
                preview,
                replay,
                command(*range_replay, "--reason", "<why, e.g. the ticket>", "--dry-run"),
            ],
        )
    if kind == "http_status" or (status == "rejected" and kind is None):
        return (
            CRM_REJECTS,
            _what_failed(attempt),
            [preview, command("lint", "--bot-id", bot_id, "--schema", "crm-schema.json"), replay],
        )
    if kind == "auth":
        return _credentials_refused(attempt, bot, report)
    error = truncate(str(attempt.get("error") or ""), 200)
    if kind in ("config", "payload_too_large"):
        return PUSH_NOT_SENT, f"not sent: the config cannot be used: {error}", [lint, preview, replay]
    if kind == "secret":
        return PUSH_NOT_SENT, f"not sent: {_what_failed(attempt)}", [lint, replay]
    if kind == "destination_refused":
        return (
            PUSH_NOT_SENT,
            f"not sent: the CRM's address is refused (loopback, private, link-local or metadata): {error}",
            [preview, lint],
        )
    if kind == "internal":
        return (
            PUSH_NOT_SENT,
            f"not sent: an internal error in the push (a bug: see the function's logs for this call): {error}",
            [preview, replay],
        )
    if kind in NO_ANSWER_KINDS or kind == "circuit_open":
        return PUSH_NOT_SENT, f"not sent: {_what_failed(attempt)}; no attempt is scheduled", [preview, replay]
    return PUSH_NOT_SENT, f"not sent: {error or 'no error recorded'}", [lint, preview, replay]


def _credentials_refused(
    attempt: Mapping[str, Any], bot: BotConfig | None, report: StatusReport
) -> tuple[Check | None, str, list[str]]:
    """A token endpoint refused for good (contract §13): which auth config, what it answered, what to do."""
    bot_id = report.bot_id
    error = truncate(str(attempt.get("error") or ""), 200)
    code, meaning = refusal_in_words(error)
    auth = bot.push.oauth if bot is not None and bot.push is not None else None
    config = f"auth config: {auth_in_words(auth)}" if auth is not None else "the bot has no auth config now"
    since = report.results_stored_at[:10] or "<the first failed day>"
    return (
        CREDENTIALS_REVOKED,
        f"not sent: the CRM's token endpoint refused the bot's credentials ({code or 'no error code'}): {meaning}. "
        f"{config}. Endpoint's answer: {error}. Every call of this bot fails the same way until the credentials "
        "are renewed in the store (or the app re-authorised); then test them and replay the failed calls",
        [
            command("auth", "--bot-id", bot_id, "--test"),
            command("lint", "--bot-id", bot_id),
            command(
                "replay", "--bot-id", bot_id, "--status", "failed", "--since", since,
                "--reason", "<why, e.g. the ticket>", "--dry-run",
            ),
        ],
    )  # fmt: skip


def _never_pushed(
    call: Mapping[str, Any], bot: BotConfig | None, report: StatusReport, *, bot_exists: bool
) -> tuple[Check | None, str, list[str]]:
    call_id = report.call_id
    bot_id = report.bot_id
    replay = command("replay", "--call-id", call_id, "--reason", "<why, e.g. the ticket>")
    delivery = report.delivery
    if not call.get("results_stored_at"):
        return (
            PUSH_NOT_SENT,
            "no push yet: results are not stored (results_stored_at is missing); the push "
            "starts when results ingestion sets it",
            [command("status", "--call-id", call_id)],
        )
    if call.get("skip_post_push") is True:
        return (
            PUSH_NOT_SENT,
            "never pushed by design: the call is flagged skip_post_push",
            [command("replay", "--call-id", call_id, "--force", "--reason", "<why, e.g. the ticket>")],
        )
    if not bot_exists:
        return PUSH_NOT_SENT, f"not pushed: bot {bot_id or '(none)'} is not in the Bots table", []
    if bot is None or not bot.has_push_config:
        return (
            PUSH_NOT_SENT,
            f"never pushed by design: bot {bot_id} has no post_call_push config",
            [command("lint", "--bot-id", bot_id)],
        )
    if delivery.claim_held:
        return (
            PUSH_NOT_SENT,
            f"a push is in progress ({delivery.claim_by or 'a push'} holds the call until "
            f"{delivery.claim_until}); look again after that",
            [command("status", "--call-id", call_id)],
        )
    if delivery.claim_expired:
        died = (
            f"a push ({delivery.claim_by or 'unknown trigger'}) claimed the call and died before recording an "
            f"attempt (Lambda timeout or crash, or its writes failed: see the function's logs); its lease ended at "
            f"{delivery.claim_until}"
        )
        if delivery.dead_letters:
            # A version that kept nothing in the state when the call write failed parked the CRM's answer there.
            return (
                PUSH_NOT_SENT,
                f"{died}. The retry dead-letter queue holds {delivery.dead_letters} message(s): if one is a record "
                "of this call, the CRM already answered - redrive it, do not replay. Otherwise replay it",
                [command("dlq", "list", "--call-id", call_id), command("dlq", "redrive", "--call-id", call_id)],
            )
        return PUSH_NOT_SENT, f"{died}, so the next delivery of the trigger takes over, or a replay does now", [replay]
    if delivery.state == "scheduled" and delivery.next_attempt_at:
        wait = delivery.next_attempt_in_seconds
        when = f"in {in_words(wait)}" if wait is not None and wait >= 0 else f"{in_words(wait or 0)} ago"
        return (
            PUSH_NOT_SENT,
            f"not attempted yet: the push put the call on the retry queue without an attempt (no time left "
            f"in its invocation); it goes at {delivery.next_attempt_at} ({when})",
            [command("status", "--call-id", call_id), replay],
        )
    return (
        PUSH_NOT_SENT,
        "no push recorded: the trigger never reached the function, or it failed before "
        "claiming the call (see the function's errors and the stream's iterator age)",
        [command("preview", "--call-id", call_id), replay],
    )


# --- showing --------------------------------------------------------------------------------------


def _delivery_lines(report: StatusReport) -> list[str]:
    delivery = report.delivery
    lines = []
    of = f" of {delivery.max_attempts}" if delivery.max_attempts else ""
    attempts = f"{delivery.attempts if delivery.attempts is not None else 0}{of} attempt(s)"
    if delivery.state == "scheduled" and delivery.next_attempt_at:
        wait = delivery.next_attempt_in_seconds
        when = "" if wait is None else f" (in {in_words(wait)})" if wait >= 0 else f" (overdue by {in_words(wait)})"
        state = f"scheduled: next attempt at {delivery.next_attempt_at}{when}"
    elif delivery.exhausted:
        state = "exhausted: no attempt left"
    elif delivery.state == "done":
        state = "ended"
    else:
        state = "no attempt recorded"
    kind = f"; last error kind: {delivery.last_error_kind}" if delivery.last_error_kind else ""
    lines.append(f"Delivery: {attempts}, {state}{kind}")
    if delivery.claim_held:
        lines.append(f"  claim: held by {delivery.claim_by or 'a push'} until {delivery.claim_until}")
    elif delivery.claim_expired:
        lines.append(f"  claim: expired at {delivery.claim_until} without a recorded attempt (its holder died)")
    if delivery.unwritten:
        lines.append(
            f"  answered, not yet written: {delivery.unwritten} attempt(s) the CRM answered are not on the call "
            "item yet; a record message or the delivery's next write carries them (never a replay)"
        )
    elif delivery.unrecorded:
        lines.append(
            f"  {len(delivery.unrecorded)} attempt(s) so far only in the state table: the call item gets them "
            "when the delivery ends"
        )
    if delivery.dead_letters:
        lines.append(f"  retry dead-letter queue: {delivery.dead_letters} message(s) parked (post-call-push dlq list)")
    if delivery.note:
        lines.append(f"  ({delivery.note})")
    return lines


def render_status(console: Console, report: StatusReport, *, as_json: bool) -> None:
    if as_json:
        print_json(console, report.as_json())
        return
    console.print(
        f"Call {report.call_id} (bot {report.bot_id or '-'}), results stored at "
        f"{report.results_stored_at or '(not yet)'}"
    )
    latest = report.latest_attempt
    if latest is not None:
        http = latest.get("http_status")
        kind = latest.get("error_kind")
        console.print(
            f"Latest push: {str(latest.get('status')).upper()}"
            f"{f' HTTP {http}' if http is not None else ''}{f' ({kind})' if kind else ''} at "
            f"{latest.get('pushed_at')} - {latest.get('method')} {latest.get('url')} - recording link: "
            f"{latest.get('recording_link') or '-'}"
        )
        if latest.get("replay"):
            replay = latest["replay"]
            console.print(f"  replayed by {replay.get('by')}: {truncate(str(replay.get('reason')), 120)}")
    else:
        console.print("Latest push: none recorded")
    for line in _delivery_lines(report):
        console.print(line)
    if report.circuit is not None:
        console.print(_circuit_line(report.circuit))
    if report.parked:
        console.print(report.parked)
    entries = [*report.history, *report.delivery.unrecorded]
    if entries:
        grid = table(
            f"Push history ({len(entries)} attempt(s))",
            "pushed at",
            "attempt",
            "status",
            "http",
            "error kind",
            "ms",
            "recording link",
            "replay",
            "recorded in",
            "error / CRM answer",
        )
        for entry in entries:
            row(
                grid,
                entry.pushed_at,
                _dash(entry.attempts),
                entry.status,
                _dash(entry.http_status),
                entry.error_kind or "-",
                _dash(entry.duration_ms),
                entry.recording_link or "-",
                entry.replay or "-",
                "integration_log" if entry.recorded_in == RECORDED_ON_CALL else entry.recorded_in,
                entry.detail or "-",
            )
        console.print(grid)
    if report.events:
        timeline = ", ".join(f"t={e.get('t')}s {e.get('status')}" for e in report.events)
        console.print(f"Timeline (events): {timeline}")
    console.print(f"\nDiagnosis: {report.diagnosis}")
    if report.runbook:
        console.print(f"Runbook: {report.runbook}")
    if report.next_commands:
        console.print("Next:")
        for line in report.next_commands:
            console.print(f"  {line}")


def _circuit_line(circuit: Mapping[str, Any]) -> str:
    where = circuit.get("destination")
    if circuit.get("state") in (None, "CLOSED"):
        return f"Circuit of {where}: closed (calls go through)"
    probe = circuit.get("next_probe_at") or "-"
    return (
        f"Circuit of {where}: {str(circuit.get('state')).lower().replace('_', '-')} since {circuit.get('opened_at')};"
        f" next probe {probe} (calls wait for it without spending attempts; see `post-call-push circuits`)"
    )


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
