"""Regenerate the sample Lambda events in events/ from events/sample_call.json.

    .venv/bin/python -m scripts.make_events

The stream events carry real DynamoDB-JSON images (as Lambda delivers them),
so they work with `sam local invoke -e` and in the tests alike.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeSerializer

EVENTS = Path(__file__).resolve().parent.parent / "events"
STREAM_ARN = "arn:aws:dynamodb:ap-south-1:123456789012:table/Calls/stream/2026-11-01T00:00:00.000"


def load_item(name: str) -> dict[str, Any]:
    item: dict[str, Any] = json.loads((EVENTS / name).read_text(), parse_float=Decimal)
    return item


def dynamodb_json(item: dict[str, Any]) -> dict[str, Any]:
    serializer = TypeSerializer()
    return {k: serializer.serialize(v) for k, v in item.items()}


def stream_record(
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    *,
    event_name: str,
    sequence_number: str,
    event_id: str = "1",
) -> dict[str, Any]:
    """One record as a DynamoDB stream delivers it to Lambda (NEW_AND_OLD_IMAGES)."""
    key_source = new or old or {}
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1764063161,
        "Keys": {"call_id": {"S": key_source.get("call_id", "")}},
        "SequenceNumber": sequence_number,
        "SizeBytes": 2048,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new is not None:
        dynamodb["NewImage"] = dynamodb_json(new)
    if old is not None:
        dynamodb["OldImage"] = dynamodb_json(old)
    return {
        "eventID": event_id,
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "ap-south-1",
        "dynamodb": dynamodb,
        "eventSourceARN": STREAM_ARN,
    }


def results_stored_event(
    call_id: str, bot_id: str, event_id: str = "6a7e8feb-b491-4cf7-a9f1-bf3703467718"
) -> dict[str, Any]:
    """An EventBridge ``Call Results Stored`` event as Lambda receives it."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "Call Results Stored",
        "source": "voicebot.results",
        "account": "123456789012",
        "time": "2026-11-25T09:32:42Z",
        "region": "ap-south-1",
        "resources": [],
        "detail": {"call_id": call_id, "bot_id": bot_id},
    }


def main() -> None:
    call = load_item("sample_call.json")
    insert = {"Records": [stream_record(call, None, event_name="INSERT", sequence_number="111100000000000000001")]}
    pushed = {
        **call,
        "post_call_push_result": {
            "status": "ok",
            "http_status": 200,
            "url": "https://crm.example.com/api/v2/call-outcomes",
        },
    }
    writeback = {"Records": [stream_record(pushed, call, event_name="MODIFY", sequence_number="111100000000000000002")]}
    event_bridge = results_stored_event(call["call_id"], call["bot_id"])
    for name, event in (
        ("stream_insert.json", insert),
        ("stream_modify_writeback.json", writeback),
        ("eventbridge_results_stored.json", event_bridge),
    ):
        (EVENTS / name).write_text(json.dumps(event, indent=2, default=str) + "\n")
        print(f"wrote events/{name}")


if __name__ == "__main__":
    main()
