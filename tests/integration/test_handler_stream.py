"""The handler end to end: stream record -> CRM (a real local server) -> result on the call (moto)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Stack, insert_event


def test_insert_record_pushes_mapped_payload_and_records_ok(
    stack: Stack, handler: Any, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    # Given a bot with a push config and a call whose results were just stored
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    # When the stream delivers the INSERT
    response = handler(insert_event(sample_call))

    # Then the CRM got the mapped payload, and the call records an ok push
    assert response == {"batchItemFailures": []}
    assert len(stack.crm.requests) == 1
    sent = stack.crm.requests[0]
    body = sent.json()
    assert body["customer_name"] == "Asha Verma"
    assert body["emi_amount"] == "1499"
    assert body["address"] == {"city": "Pune", "pin": "411001"}
    assert body["attempt"] == 1
    assert body["recording"] == "https://api.example.com/api/v1/public/recordings/rec_4QWJ9n2LxT0aZk7s"
    assert sent.headers["Authorization"] == "Bearer sk_live_sample_token_not_real"
    assert sent.headers["Idempotency-Key"] == sample_call["call_id"]

    stored = stack.get_call(sample_call["call_id"])
    result = stored["post_call_push_result"]
    assert result["status"] == "ok"
    assert result["http_status"] == 200
    assert [e["type"] for e in stored["integration_log"]] == ["post_call_push"]
    assert stored["events"][-1]["type"] == "post_call_push"
    # Delivery bookkeeping lives in the state table: the call gains only the result (and log entries).
    assert set(stored) - set(sample_call) == {"post_call_push_result"}


def test_redelivered_record_pushes_once(
    stack: Stack, handler: Any, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    event = insert_event(sample_call)

    handler(event)
    handler(event)

    assert len(stack.crm.requests) == 1
    assert len(stack.get_call(sample_call["call_id"])["integration_log"]) == 1
