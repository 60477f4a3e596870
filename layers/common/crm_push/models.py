"""The triggers (contract §3), parsed at the edge into what the core needs."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CALL_RESULTS_STORED = "Call Results Stored"


class CallResultsStored(BaseModel):
    model_config = ConfigDict(extra="ignore")

    call_id: str = Field(min_length=1, max_length=512)
    bot_id: str | None = None


@cache
def _event_model() -> type[BaseModel]:
    """The EventBridge envelope, built on first use: the stream path's cold start never pays for it."""
    from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

    class CallResultsStoredEvent(EventBridgeModel):
        detail: CallResultsStored

    return CallResultsStoredEvent


def parse_call_results_stored(event: dict[str, Any]) -> CallResultsStored:
    """The ``detail`` of a ``Call Results Stored`` event; ValueError says what is wrong."""
    if event.get("detail-type") != CALL_RESULTS_STORED:
        raise ValueError(f"detail-type must be {CALL_RESULTS_STORED!r}, not {str(event.get('detail-type'))[:80]!r}")
    try:
        detail: CallResultsStored = _event_model().model_validate(event).detail  # type: ignore[attr-defined]
        return detail
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid event: {problems}") from exc


def stream_call_image(record: DynamoDBRecord) -> dict[str, Any] | None:
    """The call item of a stream record whose results were just stored, else None.

    Eligible when the new image has ``results_stored_at`` and the old one does
    not (INSERT counts). Every other change, including our own write-back, is
    None. Raises ValueError for a record that cannot be read at all.
    """
    try:
        dynamodb = record.dynamodb
        if dynamodb is None:
            raise ValueError("record has no dynamodb section")
        new_image = dynamodb.new_image or {}
        old_image = dynamodb.old_image or {}
    except ValueError:
        raise
    except Exception as exc:  # the deserialiser raises TypeError, KeyError, ... on bad shapes
        raise ValueError(f"unreadable stream record: {type(exc).__name__}") from exc
    if not isinstance(new_image, dict) or "results_stored_at" not in new_image or "results_stored_at" in old_image:
        return None
    call_id = new_image.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise ValueError("new image has no call_id")
    return new_image
