"""The ``{{namespace.field}}`` context of one push (contract §6).

Bad input never raises here: a field that is missing or of the wrong type
becomes ``""`` (or is left out) and every other variable is still built, so one
odd attribute cannot cost the customer the whole push.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm_push.jsonvalues import to_json

log = logging.getLogger(__name__)

NAMESPACES = ("call", "crm", "result", "system", "analysis", "qc")
QC_SEEDED_KEYS = ("empathy_score", "compliance_score", "overall_score", "remarks")
LOCAL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_DISPOSITIONS = {"customer": "Connected", "bot": "Connected", "timeout": "Connected", "error": "Failed"}


def disposition_for(disconnected_by: Any) -> str:
    """``result.disposition``: who hung up, as the CRM's coarse outcome."""
    if isinstance(disconnected_by, str):
        return _DISPOSITIONS.get(disconnected_by, "Unknown")
    return "Unknown"


@lru_cache(maxsize=256)
def bot_timezone(tz_name: str | None) -> tzinfo:
    """The bot's zone; an unknown or empty name falls back to UTC (warned once per name)."""
    if not tz_name:
        return UTC
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        log.warning("unknown bot timezone, using UTC", extra={"timezone": str(tz_name)[:64]})
        return UTC


def parse_utc_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO-8601 text; None for anything else.

    Naive timestamps are refused rather than guessed at: the contract stores
    UTC with an offset, so a naive one is a producer bug we must not hide.
    """
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        return None


def format_local_time(moment: datetime | None, zone: tzinfo) -> str:
    """``moment`` in ``zone`` as LOCAL_TIME_FORMAT, ``YYYY-MM-DD HH:MM:SS``.

    Written with isoformat: strftime's ``%Y`` does not zero-pad years before 1000 on Linux.
    """
    if moment is None:
        return ""
    try:
        return moment.astimezone(zone).replace(tzinfo=None).isoformat(" ", "seconds")
    except OverflowError:  # a UTC moment at the edge of year 1 or 9999 has no local time
        return ""


def call_duration_seconds(start: datetime | None, end: datetime | None) -> int | str:
    """Whole seconds from start to end (truncated); "" when unknown or negative."""
    if start is None or end is None or end < start:
        return ""
    return int((end - start).total_seconds())


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _namespaced(prefix: str, fields: Mapping[str, Any], into: dict[str, Any]) -> None:
    for name, value in fields.items():
        into[f"{prefix}.{name}"] = value


def _call_variables(doc: Mapping[str, Any], into: dict[str, Any]) -> None:
    _namespaced("call", _mapping(doc.get("connected_event")), into)
    sip_headers = _mapping(doc.get("sip_headers"))
    for name, value in sip_headers.items():
        if isinstance(name, str) and name[:2].lower() == "x-":
            into[f"call.{name}"] = value
    try:
        into["call.sip_headers_json"] = to_json(dict(sip_headers))
    except (TypeError, ValueError):
        into["call.sip_headers_json"] = ""


def _result_variables(doc: Mapping[str, Any], zone: tzinfo) -> dict[str, Any]:
    start = parse_utc_timestamp(doc.get("start_time"))
    end = parse_utc_timestamp(doc.get("end_time"))
    answer = parse_utc_timestamp(doc.get("answer_time"))
    if doc.get("transport") == "websocket" or answer is None:
        answer = start
    disconnected_by = doc.get("disconnected_by")
    transcript = doc.get("transcript")
    try:
        transcript_json = to_json(transcript) if isinstance(transcript, list) else ""
    except (TypeError, ValueError):
        transcript_json = ""

    result: dict[str, Any] = {
        "call_id": doc.get("call_id", ""),
        "recording_url": doc.get("recording_url", "") or "",
        "call_duration_seconds": call_duration_seconds(start, end),
        "disconnected_by": disconnected_by if isinstance(disconnected_by, str) else "",
        "disposition": disposition_for(disconnected_by),
        "call_start_time": format_local_time(start, zone),
        "call_end_time": format_local_time(end, zone),
        "call_answer_time": format_local_time(answer, zone),
        "transcript": transcript_json,
    }
    for name, value in doc.items():
        if isinstance(name, str) and name.startswith("transfer_"):
            result[name] = value
    return result


def build_push_variables(
    call_doc: Mapping[str, Any], payload: Mapping[str, Any], tz_name: str | None
) -> dict[str, Any]:
    """The flat ``"namespace.field" -> value`` map that templates resolve against.

    ``payload`` overrides attributes of the call item for this push: at least
    the substituted ``recording_url``, and the bot's ``analysis_keys``.
    """
    doc: dict[str, Any] = {**call_doc, **payload} if isinstance(call_doc, Mapping) else dict(payload)
    zone = bot_timezone(tz_name if isinstance(tz_name, str) else None)
    variables: dict[str, Any] = {}

    _call_variables(doc, variables)
    _namespaced("crm", _mapping(doc.get("crm_data")), variables)

    result = _result_variables(doc, zone)
    _namespaced("result", result, variables)
    _namespaced("system", result, variables)

    analysis_keys = doc.get("analysis_keys")
    if isinstance(analysis_keys, (list, tuple, set, frozenset)):
        for key in analysis_keys:
            if isinstance(key, str):
                variables[f"analysis.{key}"] = ""
    _namespaced("analysis", _mapping(doc.get("analysis")), variables)

    for key in QC_SEEDED_KEYS:
        variables[f"qc.{key}"] = ""
    _namespaced("qc", _mapping(doc.get("qc")), variables)
    return variables
