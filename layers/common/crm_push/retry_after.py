"""Reading a CRM's ``Retry-After`` header (RFC 9110 §10.2.3). Pure: the caller passes the clock."""

from __future__ import annotations

import email.utils
from datetime import UTC

# Far longer than any schedule (about 31.7 years), yet safe for int() and for adding to today's date.
_LONGEST_SECONDS = 10.0**9


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None if absent or unreadable.

    ``now`` is the wall-clock time (``time.time()``) an HTTP-date is measured
    from; a date already past means 0. How long a CRM may make us wait is
    the schedule's decision, not the parser's: the result is only kept within
    ``10**9`` s (about 31.7 years), so that callers' arithmetic cannot overflow.
    """
    if not value:
        return None
    value = value.strip()
    # isdigit() alone accepts non-ASCII digits ("٣"), which are not delta-seconds.
    if value.isascii() and value.isdigit():
        return min(float(value), _LONGEST_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now), _LONGEST_SECONDS)
