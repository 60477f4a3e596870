"""The rate limit per (destination, scope) (contract §10, §12), across concurrent invocations, on DynamoDB Local.

Two copies of the real handler module are two containers invoked at once;
the only thing they share is the per-second counter in the state table. The
CRM (``LocalCrm``) notes when each request arrives, and "calendar second"
is read off those arrival times, as the contract measures it. Two tenants with
different limits on one host are in test_gate_tenancy.py.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from crm_push.adapters.destination_gate import state_table_gate
from scripts.local_crm import CrmAnswer, ReceivedRequest
from scripts.local_stack import MetricCounter
from tests.conftest import LambdaContextStub, Stack, insert_event
from tests.retry_queue import queued

APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "post_call_push" / "app.py"


class ArrivalLog:
    """The CRM: answers 200 at once and notes which call arrived when."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, request: ReceivedRequest) -> CrmAnswer:
        with self._lock:
            self.arrivals.append((request.headers.get("Idempotency-Key", ""), time.time()))
        return CrmAnswer(200)

    def per_second(self) -> Counter[int]:
        return Counter(math.floor(at) for _, at in self.arrivals)

    def per_call(self) -> Counter[str]:
        return Counter(call_id for call_id, _ in self.arrivals)


@pytest.fixture
def arrivals(stack: Stack) -> ArrivalLog:
    log = ArrivalLog()
    stack.crm.responder = log
    return log


def container(index: int, stack: Stack, metrics: MetricCounter) -> Any:
    """A separate copy of the handler module: one container, with its own clients, pool and gate."""
    spec = importlib.util.spec_from_file_location(f"app_rate_{index}", APP_PATH)
    assert spec is not None
    assert spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    provider = module.metrics.provider
    provider.metric_set, provider.dimension_set, provider.metadata_set = {}, {}, {}
    deps, _ = module._runtime()
    module._deps = replace(deps, gate=state_table_gate(stack.dynamodb, stack.state_table, count_metric=metrics))
    return module


def seed(stack: Stack, bot: dict[str, Any], limit: float, count: int) -> list[dict[str, Any]]:
    bot["post_call_push"]["rate_limit_per_second"] = limit
    stack.put_bot(bot)
    calls = [
        {
            "call_id": f"rate-{stack.calls_table[-6:]}-{i:02d}",
            "bot_id": bot["bot_id"],
            "results_stored_at": "2026-11-25T09:32:41.512Z",
            "start_time": "2026-11-25T09:30:02Z",
            "crm_data": {"CUSTOMERNAME": f"Customer {i}"},
        }
        for i in range(count)
    ]
    for call in calls:
        stack.put_call(call)
    return calls


def rate_counters(stack: Stack, bot: dict[str, Any]) -> dict[str, int]:
    # LocalCrm's url is scheme://host:port, the destination itself; the scope is the bot's tenant, else the bot.
    prefix = f"rate#{bot.get('tenant_id') or bot['bot_id']}#{stack.crm.url}#"
    items = stack.dynamodb.scan(
        TableName=stack.state_table,
        FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": prefix}},
    )["Items"]
    return {item["pk"]["S"]: int(item["sent"]["N"]) for item in items}


def test_thirty_calls_from_two_concurrent_invocations_keep_to_five_a_second_and_go_out_once(
    stack: Stack, arrivals: ArrivalLog, sample_bot: dict[str, Any]
) -> None:
    # Given a bot limited to 5 requests a second, and two containers with 15 calls each
    calls = seed(stack, sample_bot, 5, 30)
    metrics = MetricCounter()
    containers = [container(i, stack, metrics) for i in range(2)]
    batches = [insert_event(*calls[:15]), insert_event(*calls[15:], start_sequence=16)]

    # When both invocations run at once
    start = threading.Barrier(2)
    responses: list[Any] = [None, None]

    def invoke(index: int) -> None:
        start.wait(timeout=30)
        responses[index] = containers[index].lambda_handler(batches[index], LambdaContextStub())

    threads = [threading.Thread(target=invoke, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for module in containers:
            if module._executor is not None:
                module._executor.shutdown(wait=True)

    # Then neither asks for a retry, and every call reached the CRM exactly once
    assert responses == [{"batchItemFailures": []}] * 2
    assert arrivals.per_call() == Counter({c["call_id"]: 1 for c in calls})
    # and no calendar second saw more than 5, plus the one the contract allows at a second's edge
    assert max(arrivals.per_second().values()) <= 6, arrivals.per_second()
    # and they were held, not failed: one attempt each, nothing left on the retry queue
    for call in calls:
        result = stack.get_call(call["call_id"])["post_call_push_result"]
        assert (result["status"], result["attempts"]) == ("ok", 1)
    assert queued(stack) == []
    assert metrics.counts["RateLimited"] > 0
    # and no per-second counter went past the limit, whoever took its slots
    assert max(rate_counters(stack, sample_bot).values()) == 5


def test_far_below_one_a_second_a_held_call_rides_the_retry_queue_without_an_attempt(
    stack: Stack, arrivals: ArrivalLog, sample_bot: dict[str, Any]
) -> None:
    # Given a bot limited to one request every 4 seconds, and two calls at once early in a 4 s window
    # (late in one, the wait for the next would be short enough to spend in the invocation)
    window = 4
    calls = seed(stack, sample_bot, 1 / window, 2)
    invoke = container(0, stack, MetricCounter())
    time.sleep(window - time.time() % window)

    # When they arrive in one batch
    assert invoke.lambda_handler(insert_event(*calls), LambdaContextStub()) == {"batchItemFailures": []}

    # Then one is sent and the other is scheduled for the next window, with nothing written on it
    assert len(arrivals.arrivals) == 1
    held = [c["call_id"] for c in calls if c["call_id"] not in arrivals.per_call()]
    assert "post_call_push_result" not in stack.get_call(held[0])
    delayed = stack.sqs.get_queue_attributes(
        QueueUrl=stack.retry_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]["ApproximateNumberOfMessagesDelayed"]
    assert delayed == "1"  # its wake-up, for the next window
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(arrivals.arrivals) < 2:
        assert time.monotonic() < deadline, "the held call never came back"
        if records:
            assert invoke.lambda_handler({"Records": records}, LambdaContextStub()) == {"batchItemFailures": []}
        else:
            time.sleep(0.2)
        records = queued(stack)

    # and it went out in a later window, with one attempt
    (first_at, second_at) = sorted(at for _, at in arrivals.arrivals)
    assert math.floor(second_at) // window > math.floor(first_at) // window
    result = stack.get_call(held[0])["post_call_push_result"]
    assert (result["status"], result["attempts"]) == ("ok", 1)
