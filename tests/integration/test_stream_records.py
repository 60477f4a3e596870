"""The handler fed the Calls table's real stream records (DynamoDB Local), wrapped as Lambda delivers them.

Hand-written records (events/, ``insert_event``) say what we believe a stream
delivers; these say what DynamoDB's own implementation writes, including the
records of the push's own write-backs, which must come back as no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Stack
from tests.streams import TableStream

Handler = Callable[[dict[str, Any]], Any]


@pytest.fixture
def calls_stream(stack: Stack, dynamodb_streams: Any) -> TableStream:
    return TableStream(stack.dynamodb, dynamodb_streams, stack.calls_table)


def pushed_call_ids(stack: Stack) -> list[str]:
    return [request.headers.get("Idempotency-Key", "") for request in stack.crm.requests]


def test_insert_with_results_is_pushed_once_and_its_own_write_backs_come_back_ignored(
    stack: Stack, handler: Handler, calls_stream: TableStream, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    # Given a call created with its results already stored
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    batch = calls_stream.read_new()
    assert [(r["eventName"], r["dynamodb"]["Keys"]["call_id"]["S"]) for r in batch] == [("INSERT", call_id)]
    assert isinstance(batch[0]["dynamodb"]["ApproximateCreationDateTime"], int | float)

    # When the stream batch reaches the handler
    response = handler({"Records": batch})

    # Then the CRM gets exactly one request and the result is written on the call
    assert response == {"batchItemFailures": []}
    assert pushed_call_ids(stack) == [call_id]
    assert stack.get_call(call_id)["post_call_push_result"]["status"] == "ok"

    # When the push's own writes come back on the stream
    write_backs = calls_stream.read_new()
    assert write_backs, "the write-back left no stream record"
    assert {r["eventName"] for r in write_backs} == {"MODIFY"}
    response = handler({"Records": write_backs})

    # Then they are ignored: nothing sent, nothing retried, nothing written
    assert response == {"batchItemFailures": []}
    assert pushed_call_ids(stack) == [call_id]
    assert calls_stream.read_new() == []

    # and the stream redelivering the first batch (a retry) sends nothing either
    assert handler({"Records": batch}) == {"batchItemFailures": []}
    assert pushed_call_ids(stack) == [call_id]


def test_results_stored_on_an_existing_call_by_a_modify_are_pushed_once(
    stack: Stack, handler: Handler, calls_stream: TableStream, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    # Given a call created before its results, which a later update stores
    stack.put_bot(sample_bot)
    results_stored_at = sample_call.pop("results_stored_at")
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    stack.dynamodb.update_item(
        TableName=stack.calls_table,
        Key={"call_id": {"S": call_id}},
        UpdateExpression="SET results_stored_at = :at",
        ExpressionAttributeValues={":at": {"S": results_stored_at}},
    )
    batch = calls_stream.read_new()
    assert [r["eventName"] for r in batch] == ["INSERT", "MODIFY"]

    # When both records reach the handler in one batch
    response = handler({"Records": batch})

    # Then only the MODIFY that stored the results is pushed, once
    assert response == {"batchItemFailures": []}
    assert pushed_call_ids(stack) == [call_id]
    stored = stack.get_call(call_id)
    assert stored["post_call_push_result"]["status"] == "ok"
    assert stored["results_stored_at"] == results_stored_at
