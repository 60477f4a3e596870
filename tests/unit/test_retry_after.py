"""Reading a CRM's Retry-After: delta-seconds or an HTTP-date, measured from the clock passed in."""

from __future__ import annotations

import datetime

import pytest

from crm_push.retry_after import parse_retry_after

NOW = datetime.datetime(2015, 10, 21, 7, 28, 0, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("120", 120.0),
        ("86400", 86400.0),  # not capped: how long to wait at most is the schedule's decision
        ("Wed, 21 Oct 2015 07:28:04 GMT", 4.0),  # IMF-fixdate, 4 s after NOW
        ("Wednesday, 21-Oct-15 09:28:00 GMT", 7200.0),  # obsolete RFC 850 form
        ("Wed, 21 Oct 2015 07:28:02 -0000", 2.0),  # "-0000": UTC
    ],
)
def test_seconds_and_dates_give_the_wait(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize("value", ["Wed, 21 Oct 2015 07:27:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_a_date_already_past_means_no_wait(value: str) -> None:
    assert parse_retry_after(value, NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-1",
        "1.5",
        "+5",
        "soon",
        "5 seconds",
        "\u0663",  # an Arabic-Indic digit is not delta-seconds
        "Wed, 32 Oct 2015 07:28:04 GMT",
    ],
)
def test_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize(
    "value",
    ["9" * 10, "9" * 64, "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"],  # 400 nines overflow a float to inf
)
def test_an_absurd_wait_still_means_wait_but_stays_within_reach(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds == 10.0**9
    now = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    assert now + datetime.timedelta(seconds=seconds) < datetime.datetime.max.replace(tzinfo=datetime.UTC)
