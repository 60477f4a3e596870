"""Durable delivery through real parts: the real handler, DynamoDB Local tables, moto SQS, a real local CRM.

Hours of outage pass in milliseconds: the handler's clock is a test clock,
and the retry queue hops with no SQS delay (``RETRY_MAX_DELAY_SECONDS=0``), so
every message comes back at once and the handler itself decides, by the
clock, whether it is due or goes back on the queue — the path it takes in AWS.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from crm_push.adapters.dynamodb import from_item
from crm_push.ports import UnguardedGate
from scripts.local_crm import CrmAnswer, ReceivedRequest
from scripts.make_events import results_stored_event
from tests.conftest import LambdaContextStub, Stack, insert_event
from tests.fakes import FakeClock
from tests.retry_queue import drain, queued


@pytest.fixture
def clock(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    monkeypatch.setenv("RETRY_MAX_DELAY_SECONDS", "0")
    return FakeClock()


@pytest.fixture
def invoke(handler: Any, clock: FakeClock) -> Any:
    """The handler, wired once, then running on the test clock (its in-invocation waits move it too)."""
    deps, _ = handler.module._runtime()
    deps.clock = clock
    deps.sleep = clock.advance
    # The circuit breaker keeps wall-clock time (Powertools): simulated hours would never reach
    # its probe. Its own tests (test_circuit_breaker.py) cover it; here every destination is open.
    deps.gate = UnguardedGate()
    return handler


def pushes(requests: list[ReceivedRequest]) -> Counter[str]:
    return Counter(r.headers.get("Idempotency-Key", "") for r in requests)


def scripted(*statuses: int) -> Any:
    """A CRM answering each request with the next status (the last one repeats)."""
    answers = list(statuses)

    def respond(_request: ReceivedRequest) -> CrmAnswer:
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        return CrmAnswer(status=status, body=b'{"ok":true}' if status < 300 else b'{"error":"down"}')

    return respond


def stored(stack: Stack, call: dict[str, Any]) -> dict[str, Any]:
    return stack.get_call(call["call_id"])


def test_an_outage_of_hours_then_recovery_delivers_exactly_once(stack, invoke, clock, sample_call, sample_bot):
    stack.crm.responder = scripted(503, 503, 502, 504, 200)
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    assert invoke(insert_event(sample_call)) == {"batchItemFailures": []}
    first = stored(stack, sample_call)["post_call_push_result"]
    assert (first["status"], first["attempts"], first["error_kind"]) == ("rejected", 1, "http_status")
    assert first["next_attempt_at"] is not None

    drain(stack, invoke, clock)

    item = stored(stack, sample_call)
    result = item["post_call_push_result"]
    assert (result["status"], result["http_status"], result["attempts"]) == ("ok", 200, 5)
    assert result["next_attempt_at"] is None
    assert result["exhausted"] is False
    log = [e for e in item["integration_log"] if e["type"] == "post_call_push"]
    assert [(int(e["attempts"]), e["status"], int(e["http_status"])) for e in log] == [
        (1, "rejected", 503),
        (2, "rejected", 503),
        (3, "rejected", 502),
        (4, "rejected", 504),
        (5, "ok", 200),
    ]
    assert [e["status"] for e in item["events"] if e["type"] == "post_call_push"] == ["rejected", "ok"]
    assert pushes(stack.crm.requests) == {sample_call["call_id"]: 5}
    assert clock.now - FakeClock().now > timedelta(hours=2)  # 5 s + 5 min + 30 min + 2 h, each ±10 %


def test_a_crm_always_failing_gets_eight_attempts_then_exhausted(stack, invoke, clock, sample_call, sample_bot):
    stack.crm.responder = scripted(503)
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    invoke(insert_event(sample_call))
    drain(stack, invoke, clock)

    result = stored(stack, sample_call)["post_call_push_result"]
    assert len(stack.crm.requests) == 8
    assert (result["attempts"], result["exhausted"], result["next_attempt_at"]) == (8, True, None)
    assert queued(stack) == []


def test_gone_stops_after_one_request(stack, invoke, clock, sample_call, sample_bot):
    stack.crm.responder = scripted(410)
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    invoke(insert_event(sample_call))
    drain(stack, invoke, clock)

    result = stored(stack, sample_call)["post_call_push_result"]
    assert len(stack.crm.requests) == 1
    assert (result["status"], result["exhausted"], result["next_attempt_at"]) == ("rejected", False, None)


def test_duplicated_messages_redeliveries_and_eventbridge_retries_send_nothing_more(
    stack, invoke, clock, sample_call, sample_bot
):
    stack.crm.responder = scripted(503, 503, 200)
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    event = insert_event(sample_call)

    invoke(event)
    records = queued(stack)
    assert len(records) == 1
    # SQS delivers at least once: the same message twice, plus the stream and EventBridge again.
    duplicate = {**records[0], "messageId": str(uuid.uuid4())}
    clock.advance(400)
    invoke({"Records": [records[0], duplicate]})
    invoke(event)
    invoke(results_stored_event(sample_call["call_id"], sample_call["bot_id"]))
    drain(stack, invoke, clock)

    assert pushes(stack.crm.requests) == {sample_call["call_id"]: 3}
    item = stored(stack, sample_call)
    assert item["post_call_push_result"]["status"] == "ok"
    assert len([e for e in item["integration_log"] if e["type"] == "post_call_push"]) == 3


def test_an_early_eventbridge_event_pushes_nothing_and_marks_nothing(stack, invoke, sample_call, sample_bot):
    del sample_call["results_stored_at"]
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    with pytest.raises(Exception, match="results_stored_at"):
        invoke(results_stored_event(sample_call["call_id"], sample_call["bot_id"]))

    assert stack.crm.requests == []
    assert "post_call_push_result" not in stored(stack, sample_call)
    state = stack.dynamodb.get_item(
        TableName=stack.state_table, Key={"pk": {"S": f"delivery#{sample_call['call_id']}"}}, ConsistentRead=True
    )
    assert "Item" not in state


def test_a_batch_near_its_deadline_defers_the_rest_and_each_reaches_the_crm_once(stack, invoke, clock, sample_bot):
    stack.put_bot(sample_bot)
    calls = []
    for i in range(6):
        call = {
            "call_id": f"deadline-{uuid.uuid4().hex[:8]}-{i}",
            "bot_id": sample_bot["bot_id"],
            "results_stored_at": "2026-11-25T09:32:41.512Z",
            "start_time": "2026-11-25T09:30:02Z",
        }
        stack.put_call(call)
        calls.append(call)

    # 12 s left, 3 s kept for write-backs: not enough for a 10 s attempt, so nothing is tried now.
    response = invoke(insert_event(*calls), LambdaContextStub(remaining_ms=12_000))
    assert response == {"batchItemFailures": []}
    assert stack.crm.requests == []
    assert all("post_call_push_result" not in stored(stack, c) for c in calls)

    drain(stack, invoke, clock)
    assert pushes(stack.crm.requests) == {c["call_id"]: 1 for c in calls}
    assert all(stored(stack, c)["post_call_push_result"]["attempts"] == 1 for c in calls)


def test_a_write_back_throttled_past_retries_is_recorded_from_the_queue_and_never_resent(
    stack, invoke, clock, sample_call, sample_bot
):
    from botocore.exceptions import ClientError

    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    deps, _ = invoke.module._runtime()
    client = deps.calls._client
    real_update = client.update_item
    throttled = {"left": 1}

    def update_item(**kwargs: Any) -> Any:
        if kwargs.get("TableName") == stack.calls_table and throttled["left"]:
            throttled["left"] -= 1
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "UpdateItem"
            )
        return real_update(**kwargs)

    client.update_item = update_item
    try:
        assert invoke(insert_event(sample_call)) == {"batchItemFailures": []}
        assert "post_call_push_result" not in stored(stack, sample_call)
        drain(stack, invoke, clock)
        invoke(insert_event(sample_call))  # the stream delivers the record again
    finally:
        client.update_item = real_update

    item = stored(stack, sample_call)
    assert item["post_call_push_result"]["status"] == "ok"
    assert len(item["integration_log"]) == 1
    assert len(stack.crm.requests) == 1


def test_a_call_near_the_item_size_limit_still_gets_its_outcome(stack, invoke, clock, sample_call, sample_bot):
    stack.crm.responder = lambda _req: CrmAnswer(status=422, body=b"x" * 5000)
    sample_call["transcript"] = [{"role": "user", "text": "y" * 396_000, "t": 1}]
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    invoke(insert_event(sample_call))

    result = stored(stack, sample_call)["post_call_push_result"]
    assert (result["status"], int(result["http_status"]), result["error_kind"]) == ("rejected", 422, "http_status")
    assert int(result["attempts"]) == 1
    assert len(stack.crm.requests) == 1


def test_the_delivery_state_stays_small_while_the_call_is_retried(stack, invoke, clock, sample_call, sample_bot):
    stack.crm.responder = scripted(503)
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    invoke(insert_event(sample_call))
    for _ in range(3):
        clock.advance(40_000)
        invoke({"Records": queued(stack)})
    item = stack.dynamodb.get_item(
        TableName=stack.state_table, Key={"pk": {"S": f"delivery#{sample_call['call_id']}"}}, ConsistentRead=True
    )["Item"]
    state = from_item(item)
    assert int(state["attempts"]) == 5
    assert len(state["log"]) == 4  # attempts 2-5 wait here for the call's next write
    # One write unit a write: DynamoDB bills by item size, and this item stays under 1 KB.
    rewrite = stack.dynamodb.update_item(
        TableName=stack.state_table,
        Key={"pk": item["pk"]},
        UpdateExpression="SET expires_at = expires_at",
        ReturnConsumedCapacity="TOTAL",
    )
    assert rewrite["ConsumedCapacity"]["CapacityUnits"] == 1.0
