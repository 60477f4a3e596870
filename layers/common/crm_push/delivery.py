"""Durable delivery policy (contract §10): which outcomes retry, and when the next attempt goes.

Pure functions over plain values: the core (``push.py``) asks them what to do
after each attempt, and the tests pin the ladder without a clock or a queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Svix's ladder: 8 attempts over about 27.6 h.
DEFAULT_RETRY_SCHEDULE: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.10  # each delay is stretched or shrunk by up to 10 %
RETRY_AFTER_STRETCH_SECONDS = 7200  # a Retry-After may push an attempt at most this far past its slot
RETRYABLE_HTTP = frozenset({408, 429})
NO_ANSWER_KINDS = frozenset({"timeout", "connection", "dns", "tls"})


def is_retryable(http_status: int | None, error_kind: str | None, *, transient: bool = False) -> bool:
    """No answer, 408, 429 and 5xx retry; every other non-2xx is final (410 included).

    ``transient`` is for a secret store that was throttled or unavailable: the
    only ``secret`` failure worth another attempt.
    """
    if http_status is not None:
        return http_status in RETRYABLE_HTTP or 500 <= http_status <= 599
    if error_kind == "secret":
        return transient
    return error_kind in NO_ANSWER_KINDS


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """When the next attempt is due, or why there is none."""

    delay_seconds: float | None  # None: no further attempt
    reason: str = ""  # why not, for the record: "schedule exhausted", "Retry-After beyond the schedule"


def next_attempt(
    attempts_made: int,
    schedule: Sequence[int],
    *,
    retry_after_seconds: float | None = None,
    jitter: float = 0.5,
) -> NextAttempt:
    """The delay before attempt ``attempts_made + 1`` after a retryable outcome.

    ``jitter`` is a number in [0, 1) from the caller (0.5 = no jitter), so this
    stays pure. A ``Retry-After`` raises the delay to at least what the CRM
    asked for and at most the jittered delay + 2 h; a CRM asking for more
    than that gets no attempt before its time, so the delivery ends there
    (exhausted) rather than knock early.
    """
    index = attempts_made - 1
    if index < 0 or index >= len(schedule):
        return NextAttempt(None, "no attempt left in the retry schedule")
    delay = schedule[index] * (1 - JITTER + 2 * JITTER * jitter)
    if retry_after_seconds is not None and retry_after_seconds > delay:
        if retry_after_seconds > delay + RETRY_AFTER_STRETCH_SECONDS:
            return NextAttempt(None, f"the CRM asked to wait {int(retry_after_seconds)} s, beyond the retry schedule")
        delay = retry_after_seconds
    return NextAttempt(delay)


def schedule_for(configured: Sequence[int] | None) -> tuple[int, ...]:
    return DEFAULT_RETRY_SCHEDULE if configured is None else tuple(configured)


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as every timestamp the push writes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def due_at(now: datetime, delay_seconds: float) -> datetime:
    return now + timedelta(seconds=delay_seconds)
