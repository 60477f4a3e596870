"""The retry ladder (contract §10): when the next attempt of a delivery goes, or that none is left.

Pure functions over plain values: the delivery flow asks them after each
attempt, and the tests pin the ladder without a clock or a queue. Which
outcomes retry at all is ``error_kinds.is_retryable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Svix's ladder: 8 attempts over about 27.6 h.
DEFAULT_RETRY_SCHEDULE: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.10  # each delay is stretched or shrunk by up to 10 %
# A Retry-After further away than this counts as this far (contract §10, revised 2026-12-03).
MAX_RETRY_AFTER_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """When the next attempt is due, or why there is none."""

    delay_seconds: float | None  # None: no further attempt
    reason: str = ""  # why not, for the record


def next_attempt(
    attempts_made: int,
    schedule: Sequence[int],
    *,
    retry_after_seconds: float | None = None,
    jitter: float = 0.5,
) -> NextAttempt:
    """The delay before attempt ``attempts_made + 1`` after a retryable outcome.

    ``jitter`` is a number in [0, 1) from the caller (0.5 = no jitter), so this
    stays pure. The next attempt goes at the later of the jittered delay and
    the CRM's ``Retry-After`` (counted at most as a day). A Retry-After never
    ends a delivery by itself: only the schedule running out does.
    """
    index = attempts_made - 1
    if index < 0 or index >= len(schedule):
        return NextAttempt(None, "no attempt left in the retry schedule")
    delay = schedule[index] * (1 - JITTER + 2 * JITTER * jitter)
    if retry_after_seconds is not None:
        delay = max(delay, min(retry_after_seconds, MAX_RETRY_AFTER_SECONDS))
    return NextAttempt(delay)


def schedule_for(configured: Sequence[int] | None) -> tuple[int, ...]:
    return DEFAULT_RETRY_SCHEDULE if configured is None else tuple(configured)
