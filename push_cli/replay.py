"""``replay``: push calls again with the bot's current config, on an operator's say-so.

Each push goes through the core's ``push_call`` with a ``Replay`` (who and
why), so it is recorded on the call like any push, with a ``replay`` entry in
``integration_log``. A replay takes the call's delivery whatever its schedule
(contract §10): a call with an attempt pending is pushed now, and the pending
attempt then finds the delivery ended and does nothing. A call already pushed
``ok`` is held back unless ``--force``; a call a push holds right now (a live
claim in the state table) is always held back, since its holder may be sending
at this moment. A call whose CRM already answered, with only the write of that
answer pending ("answered, not yet written"), is held back unless ``--force``:
its record message writes it (``dlq redrive`` when it was dead-lettered), and
a replay would push it a second time (contract §12). Ranges are paced
(``--rate``) so a replay cannot flood a CRM.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from crm_push.clock import iso_utc
from crm_push.errors import ClaimHeld, QueueError, StorageError
from crm_push.push import PushOutcome
from push_cli.delivery_item import decided_not_written, unwritten_answers
from push_cli.display import print_json, row, table, truncate

STATUSES = ("ok", "rejected", "failed", "skipped", "none")
"""What ``--status`` can select: a result status, or ``none`` for a call never pushed."""

MAX_LISTED = 200  # rows of a dry run shown on screen; --json lists every one

_NOT_PUSHED = {
    "not_eligible": "not pushed: the call is flagged skip_post_push",
    "no_config": "not pushed: the bot has no usable post_call_push config",
    "already_pushed": "not pushed: it already has a result",
    "call_not_found": "not pushed: the call no longer exists",
    "claim_lost": "sent, but the result was not recorded: another push took the call over",
    "claim_held": "not pushed: another push holds the call right now; look at it with status",
    "scheduled": "not pushed: its next attempt is scheduled",
    "deferred": "not pushed: no time was left to attempt it; it is on the retry queue",
    "record_deferred": "not pushed: the CRM already answered it; only the write is pending "
    "(a record message carries it; dlq redrive if it was dead-lettered)",
}


@dataclass
class Candidate:
    """A call considered for replay, as it is now."""

    call_id: str
    stored_at: str
    status: str  # its post_call_push_result status, or "none"
    last_error: str = ""
    held_back: str = ""  # why it will not be replayed; "" when it will
    next_attempt_at: str = ""  # the attempt the function has scheduled, which a replay makes a no-op


@dataclass
class ReplayLine:
    """What one replay did."""

    call_id: str
    outcome: str  # ok | rejected | failed | skipped | busy | storage_error | queue_error | a _NOT_PUSHED key
    http_status: int | None = None
    error: str = ""
    attempts: int | None = None  # the delivery's attempts so far, this one included
    next_attempt_at: str | None = None  # the function retries it then (the replay failed retryably)
    exhausted: bool = False  # the replay failed retryably and no attempt is left


@dataclass
class ReplayReport:
    by: str
    reason: str
    dry_run: bool
    rate: float
    selected: list[Candidate] = field(default_factory=list)
    held_back: list[Candidate] = field(default_factory=list)
    filtered_out: int = 0  # calls in the range whose status was not asked for
    lines: list[ReplayLine] = field(default_factory=list)
    interrupted: bool = False

    @property
    def not_attempted(self) -> int:
        return 0 if self.dry_run else len(self.selected) - len(self.lines)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(line.outcome for line in self.lines))

    @property
    def all_ok(self) -> bool:
        return all(line.outcome == "ok" for line in self.lines) and not self.interrupted

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts, "not_attempted": self.not_attempted}


# --- choosing the calls ------------------------------------------------------------------


def parse_moment(text: str, option: str) -> str:
    """``--since``/``--until`` as the stored form of ``results_stored_at`` (UTC, milliseconds, Z).

    A bare date is midnight UTC; a time without an offset is UTC.
    """
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError as exc:
        raise ValueError(f"{option} {text!r} is not a date (2026-11-01) or an ISO-8601 time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def candidate_for(
    call: Mapping[str, Any], *, force: bool, now: datetime, delivery: Mapping[str, Any] | None = None
) -> Candidate:
    """The call as a replay candidate, held back when replaying it needs ``--force`` or cannot work.

    ``delivery`` is the call's item in the state table (``DeliveryStateTable.get``):
    its claim and schedule.
    """
    result = call.get("post_call_push_result")
    result = result if isinstance(result, Mapping) else {}
    status = str(result.get("status") or "none")
    error = str(result.get("error") or "")
    if status == "rejected":
        error = f"HTTP {result.get('http_status')}: {truncate(str(result.get('response_body') or ''), 80)}"
    candidate = Candidate(str(call.get("call_id")), str(call.get("results_stored_at") or ""), status, error)
    delivery = delivery or {}
    if delivery.get("st") == "scheduled" and delivery.get("due") is not None:
        candidate.next_attempt_at = iso_utc(datetime.fromtimestamp(int(delivery["due"]), UTC))
    lease = delivery.get("lease_until") if delivery.get("claim_id") else None
    # A lease is held through its last second (adapters/state.py). Even --force waits for it: the core
    # never takes a live claim, because its holder may be sending this very call right now.
    if lease is not None and int(lease) >= int(now.timestamp()):
        until = datetime.fromtimestamp(int(lease), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        candidate.held_back = (
            f"a push holds the call until {until} (its lease) and may be sending it now; "
            "try again after that (--force does not take a live claim)"
        )
    elif force:
        pass
    elif decided_not_written(delivery):
        last = unwritten_answers(delivery)[-1]
        candidate.held_back = (
            f"answered, not yet written: the CRM already answered attempt {last.get('attempts') or '?'} "
            f"({last.get('status') or '?'}); a record message writes it - post-call-push dlq redrive if it was "
            "dead-lettered. --force pushes the call a second time"
        )
    elif status == "ok":
        candidate.held_back = "already pushed ok; --force pushes it again"
    elif call.get("skip_post_push") is True:
        candidate.held_back = "flagged skip_post_push; --force pushes it anyway"
    elif not call.get("results_stored_at"):
        candidate.held_back = "results not stored yet: the function pushes it when they are; --force pushes now"
    return candidate


def select_range(
    call_ids: Iterable[tuple[str, str]],
    get_call: Callable[[str], Mapping[str, Any] | None],
    statuses: Sequence[str],
    *,
    force: bool,
    now: datetime,
    limit: int | None = None,
    get_delivery: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> tuple[list[Candidate], list[Candidate], int]:
    """(to replay, held back, filtered out) among a bot's calls, read one by one from the tables.

    ``get_delivery`` reads a call's state-table item, only for calls of a
    status asked for.
    """
    selected: list[Candidate] = []
    held: list[Candidate] = []
    filtered_out = 0
    for call_id, _stored_at in call_ids:
        call = get_call(call_id)
        if call is None:
            continue  # deleted since the index was read
        candidate = candidate_for(call, force=force, now=now)
        if candidate.status not in statuses:
            filtered_out += 1
            continue
        if get_delivery is not None:
            candidate = candidate_for(call, force=force, now=now, delivery=get_delivery(call_id))
        if candidate.held_back:
            held.append(candidate)
        elif limit is None or len(selected) < limit:
            selected.append(candidate)
        else:
            candidate.held_back = f"over --limit {limit}"
            held.append(candidate)
    return selected, held, filtered_out


# --- replaying ----------------------------------------------------------------------------


def line_for(outcome: PushOutcome) -> ReplayLine:
    result = outcome.result
    if result is None or outcome.outcome != "pushed":
        line = ReplayLine(outcome.call_id, outcome.outcome, error=_NOT_PUSHED.get(outcome.outcome, outcome.outcome))
        if result is not None:
            line.http_status = result.http_status
        return line
    error = result.error or ""
    if result.status == "rejected":
        error = truncate(result.response_body, 120)
    if result.next_attempt_at:
        error += f" (attempt {result.attempts}; the function retries at {result.next_attempt_at})"
    elif result.exhausted:
        error += f" (attempt {result.attempts}; no attempt left)"
    return ReplayLine(
        outcome.call_id,
        result.status,
        result.http_status,
        error.strip(),
        attempts=result.attempts,
        next_attempt_at=result.next_attempt_at,
        exhausted=result.exhausted,
    )


def replay_calls(
    call_ids: Sequence[str],
    push: Callable[[str], PushOutcome],
    *,
    rate: float,
    on_done: Callable[[ReplayLine], None] = lambda _line: None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> tuple[list[ReplayLine], bool]:
    """Push each call in turn, starting at most ``rate`` pushes a second; (lines, interrupted).

    ``stop`` is checked between calls, so a Ctrl-C lets the push in flight
    finish and be recorded instead of leaving its claim behind.
    """
    interval = 1.0 / rate
    lines: list[ReplayLine] = []
    next_start: float | None = None
    for call_id in call_ids:
        if stop is not None and stop.is_set():
            return lines, True
        if next_start is not None:
            wait = next_start - monotonic()
            if wait > 0:
                sleep(wait)
            if stop is not None and stop.is_set():
                return lines, True
        next_start = monotonic() + interval
        try:
            line = line_for(push(call_id))
        except ClaimHeld as exc:
            line = ReplayLine(call_id, "busy", error=str(exc))
        except StorageError as exc:
            line = ReplayLine(call_id, "storage_error", error=str(exc))
        except QueueError as exc:
            line = ReplayLine(call_id, "queue_error", error=str(exc))
        lines.append(line)
        on_done(line)
    return lines, False


class ProgressBar:
    """A bar on stderr while a range replays; nothing when stderr is not a terminal."""

    def __init__(self, console: Console, total: int, enabled: bool) -> None:
        self._counts: Counter[str] = Counter()
        self._progress = Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("", total=total)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, line: ReplayLine) -> None:
        self._counts[line.outcome] += 1
        summary = " ".join(f"{name}={count}" for name, count in sorted(self._counts.items()))
        self._progress.update(self._task, advance=1, description=summary)


# --- showing ------------------------------------------------------------------------------


def render_replay(console: Console, report: ReplayReport, *, as_json: bool) -> None:
    if as_json:
        print_json(console, report.as_json())
        return
    if report.dry_run:
        _render_dry_run(console, report)
    else:
        _render_summary(console, report)
    if report.held_back:
        held = table(f"Held back ({len(report.held_back)}, not replayed)", "call id", "current status", "why")
        for candidate in report.held_back[:MAX_LISTED]:
            row(held, candidate.call_id, candidate.status, candidate.held_back)
        console.print(held)
    if report.filtered_out:
        console.print(f"{report.filtered_out} call(s) in the range have a status not asked for (--status).")


def _render_dry_run(console: Console, report: ReplayReport) -> None:
    count = len(report.selected)
    seconds = max(0, count - 1) / report.rate
    console.print(
        f"Dry run - nothing sent, nothing written. {count} call(s) would be replayed "
        f"at {report.rate:g}/s (about {seconds:.0f}s), by {report.by}: {report.reason!r}"
    )
    if report.selected:
        grid = table(
            "Would replay", "call id", "results stored at", "current status", "scheduled attempt", "last error"
        )
        for candidate in report.selected[:MAX_LISTED]:
            row(
                grid,
                candidate.call_id,
                candidate.stored_at,
                candidate.status,
                candidate.next_attempt_at or "-",
                candidate.last_error,
            )
        console.print(grid)
        if count > MAX_LISTED:
            console.print(f"... and {count - MAX_LISTED} more (--json lists every one)")
    scheduled = sum(1 for candidate in report.selected if candidate.next_attempt_at)
    if scheduled:
        console.print(
            f"{scheduled} of them have an attempt scheduled: the function retries them by itself. A replay "
            "pushes them now, and their scheduled attempt then does nothing."
        )


def _render_summary(console: Console, report: ReplayReport) -> None:
    done = len(report.lines)
    if not report.selected:
        console.print("Nothing replayed: no call needs it" + (" (see held back below)" if report.held_back else ""))
        return
    headline = f"Replayed {done} of {len(report.selected)} call(s) by {report.by}: {report.reason!r}"
    if report.interrupted:
        headline += f" - stopped by Ctrl-C; {report.not_attempted} not attempted"
    console.print(headline)
    if report.interrupted and report.not_attempted:
        first = report.selected[done]
        console.print(
            f"To resume: the first call not attempted is {first.call_id}, results stored at "
            f"{first.stored_at or '?'} (pass that as --since for a range)"
        )
    if report.lines:
        counts = table("Result", "status", "calls")
        for outcome, count in sorted(report.counts.items(), key=lambda item: (item[0] != "ok", item[0])):
            row(counts, outcome, count)
        console.print(counts)
    failures = [line for line in report.lines if line.outcome != "ok"]
    if failures:
        grid = table("Not ok", "call id", "status", "http", "error")
        for line in failures[:MAX_LISTED]:
            row(grid, line.call_id, line.outcome, line.http_status if line.http_status is not None else "-", line.error)
        console.print(grid)
        console.print("Next: post-call-push status --call-id <id> shows a call's history and the runbook check.")


def stored_window(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    """Both ends parsed, and refused when the window is empty."""
    start = parse_moment(since, "--since") if since else None
    end = parse_moment(until, "--until") if until else None
    if start and end and end <= start:
        raise ValueError(f"--until {until} is not after --since {since}")
    return start, end
