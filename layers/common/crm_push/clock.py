"""Time as the push writes and compares it: one UTC format, whole-second due times, the lease rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, as every timestamp the push writes (they sort as text)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def whole_second_after(moment: datetime) -> datetime:
    """``moment`` rounded up to a whole second, as the state table compares due times."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def from_epoch(epoch: int | float) -> datetime:
    return datetime.fromtimestamp(float(epoch), UTC)


def lease_is_live(lease_until: int | float | None, now_epoch: int | float) -> bool:
    """A claim's lease is held through its last second: another push may take over only after it."""
    return lease_until is not None and float(lease_until) >= float(now_epoch)


def first_second_after_lease(lease_until: int | float) -> datetime:
    return from_epoch(int(lease_until) + 1)
