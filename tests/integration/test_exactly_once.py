"""Exactly once under stress: concurrent invokers, redeliveries, crashes and concurrent writers.

The contract (§9, §10): a call reaches its CRM successfully at most once however
often its triggers are delivered and however many invocations race; entries
others append to the call are never lost. The tables are AWS's DynamoDB Local,
whose conditional writes are atomic per item as in DynamoDB: these tests test
the claim, not the test database's luck.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from crm_push.adapters.dynamodb import from_item, to_item
from crm_push.ports import UnguardedGate
from scripts.local_crm import CrmAnswer, ReceivedRequest
from scripts.local_stack import small_calls
from scripts.make_events import results_stored_event
from tests.conftest import LambdaContextStub, Stack, insert_event
from tests.fakes import FakeClock
from tests.retry_queue import drain, queued

# Tests here that move a test clock also open every destination's gate: the circuit breaker keeps
# wall-clock time (Powertools), and its own tests are test_circuit_breaker.py.
APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "post_call_push" / "app.py"

# --- helpers ---------------------------------------------------------------------------


def _load_invoker(index: int) -> ModuleType:
    """A separate copy of the handler module: one "container" of a concurrent invoker.

    Lambda runs one invocation at a time per container, so concurrent
    invocations are separate module states (wiring, clients, worker pool).
    Powertools Metrics keeps its metric set at class level, shared by every
    instance in a process; separate containers do not share it, so each copy
    gets its own.
    """
    spec = importlib.util.spec_from_file_location(f"app_invoker_{index}", APP_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    provider = module.metrics.provider
    provider.metric_set, provider.dimension_set, provider.metadata_set = {}, {}, {}
    return module


def _pushes_by_call(requests: list[ReceivedRequest]) -> Counter[str]:
    return Counter(r.headers.get("Idempotency-Key", "") for r in requests)


def _push_log_entries(stored: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in stored.get("integration_log", []) if e.get("type") == "post_call_push"]


def _push_events(stored: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in stored.get("events", []) if e.get("type") == "post_call_push"]


def _sequence(event: dict[str, Any], index: int = 0) -> str:
    return str(event["Records"][index]["dynamodb"]["SequenceNumber"])


# --- the stress test -----------------------------------------------------------------------

INVOKERS = 2
BATCH = 100
RUNS = 20


def _delivery_state(stack: Stack, call_id: str) -> dict[str, Any]:
    item = stack.dynamodb.get_item(
        TableName=stack.state_table, Key={"pk": {"S": f"delivery#{call_id}"}}, ConsistentRead=True
    )
    return from_item(item.get("Item", {}))


def _race(stack: Stack, invokers: list[ModuleType], event: dict[str, Any]) -> list[Any]:
    start = threading.Barrier(len(invokers))
    responses: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def invoke(module: ModuleType) -> None:
        try:
            start.wait()
            response = module.lambda_handler(event, LambdaContextStub())
            with lock:
                responses.append(response)
        except BaseException as exc:  # reported by the assertion below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=invoke, args=(m,), name=f"invoker-{i}") for i, m in enumerate(invokers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an invoker hung"
    assert errors == []
    return responses


@pytest.mark.slow
def test_the_same_batch_from_two_concurrent_invokers_pushes_each_call_exactly_once_20_runs(
    stack: Stack, handler: Any, sample_bot: dict[str, Any]
) -> None:
    # Given a CRM slow enough (10 ms) that the invokers overlap while claims are held
    stack.put_bot(sample_bot)
    stack.crm.responder = lambda _req: CrmAnswer(200, delay_seconds=0.01)
    invokers = [_load_invoker(i) for i in range(INVOKERS)]
    clock = FakeClock()
    try:
        for run in range(RUNS):
            calls = small_calls(sample_bot["bot_id"], BATCH, f"race{run}-{stack.calls_table[-6:]}")
            for call in calls:
                stack.put_call(call)
            before = len(stack.crm.requests)

            # When two invokers deliver the same batch at once
            responses = _race(stack, invokers, insert_event(*calls))

            # Then neither asks for a retry (a lost race leaves a check on the queue instead)
            assert all(r == {"batchItemFailures": []} for r in responses), run
            # and the CRM saw exactly one request per call
            pushes = _pushes_by_call(stack.crm.requests[before:])
            assert pushes == Counter({c["call_id"]: 1 for c in calls}), run
            # and the checks left by lost races, delivered after any lease, send nothing more
            deps, _ = handler.module._runtime()
            deps.clock, deps.sleep, deps.gate = (
                clock,
                clock.advance,
                UnguardedGate(),
            )
            clock.advance(3600)
            drain(stack, handler, clock)
            assert len(stack.crm.requests) - before == BATCH, run
            # and each call records exactly one push: one result, one log entry, one event; no claim left
            for call in calls:
                stored = stack.get_call(call["call_id"])
                assert stored["post_call_push_result"]["status"] == "ok", call["call_id"]
                assert len(_push_log_entries(stored)) == 1, call["call_id"]
                assert len(_push_events(stored)) == 1, call["call_id"]
                state = _delivery_state(stack, call["call_id"])
                assert (state["st"], "claim_id" in state) == ("done", False), call["call_id"]
    finally:
        for module in invokers:
            if module._executor is not None:
                module._executor.shutdown(wait=True)


# --- crash injection ---------------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """The container dies (timeout, OOM, kill) at this point of the push: nothing after it runs."""


CRASH_POINTS = {
    # step that dies -> how many requests the CRM has seen when the call is finally recorded
    "after_claim": 1,  # nothing sent: after the lease the next delivery sends once
    "after_send": 2,  # the CRM answered, nothing recorded: the one documented duplicate (same Idempotency-Key)
    "after_call_write": 1,  # the call says what happened: the next delivery adopts it, sends nothing
    "after_state_write": 1,  # all recorded: the retried trigger finds the delivery done
}


@pytest.mark.parametrize("crash_point", sorted(CRASH_POINTS))
def test_a_crash_between_any_two_steps_ends_in_one_recorded_outcome(
    stack: Stack,
    handler: Any,
    sample_call: dict[str, Any],
    sample_bot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    crash_point: str,
) -> None:
    # Given a container that dies at one step of the push
    monkeypatch.setenv("CLAIM_LEASE_SECONDS", "60")
    monkeypatch.setenv("RETRY_MAX_DELAY_SECONDS", "0")
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    event = insert_event(sample_call)
    deps, _ = handler.module._runtime()
    clock = FakeClock()
    deps.clock, deps.sleep, deps.gate = (
        clock,
        clock.advance,
        UnguardedGate(),
    )
    steps = {
        "after_claim": (deps.state, "claim"),
        "after_send": (deps.crm, "send"),
        "after_call_write": (deps.calls, "write_outcome"),
        "after_state_write": (deps.state, "save"),
    }
    target, method = steps[crash_point]
    real = getattr(target, method)

    def step_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise SimulatedCrash(crash_point)

    monkeypatch.setattr(target, method, step_then_die)
    with pytest.raises(SimulatedCrash):
        handler(event)
    monkeypatch.setattr(target, method, real)

    # When the stream redelivers at once (a healthy container), then again after the lease,
    # and whatever it left on the retry queue is delivered
    assert handler(event) == {"batchItemFailures": []}
    clock.advance(61)
    assert handler(event) == {"batchItemFailures": []}
    drain(stack, handler, clock)
    assert handler(event) == {"batchItemFailures": []}

    # Then the call is recorded exactly once, and the CRM saw at most the one documented duplicate
    stored = stack.get_call(call_id)
    assert stored["post_call_push_result"]["status"] == "ok"
    assert len(_push_log_entries(stored)) == 1
    assert len(_push_events(stored)) == 1
    assert _pushes_by_call(stack.crm.requests) == Counter({call_id: CRASH_POINTS[crash_point]})
    assert queued(stack) == []


def test_a_crash_before_the_next_attempt_is_queued_is_recovered_by_the_retried_trigger(
    stack: Stack,
    handler: Any,
    sample_call: dict[str, Any],
    sample_bot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a CRM down for the first attempts and a container that dies right after saving the schedule
    monkeypatch.setenv("RETRY_MAX_DELAY_SECONDS", "0")
    sample_bot["post_call_push"]["retry_schedule_seconds"] = [600, 600]
    answers = iter([503, 200])
    stack.crm.responder = lambda _req: CrmAnswer(next(answers, 200))
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    event = insert_event(sample_call)
    deps, _ = handler.module._runtime()
    clock = FakeClock()
    deps.clock, deps.sleep, deps.gate = (
        clock,
        clock.advance,
        UnguardedGate(),
    )
    real_schedule = deps.retry_queue.schedule

    def die(*args: Any, **kwargs: Any) -> None:
        raise SimulatedCrash("died before the message was sent")

    monkeypatch.setattr(deps.retry_queue, "schedule", die)
    with pytest.raises(SimulatedCrash):
        handler(event)
    monkeypatch.setattr(deps.retry_queue, "schedule", real_schedule)
    assert queued(stack) == []

    # When the stream redelivers the record, then the queue is delivered
    assert handler(event) == {"batchItemFailures": []}
    drain(stack, handler, clock)

    # Then the schedule was re-sent once and the call is delivered by its second attempt
    result = stack.get_call(sample_call["call_id"])["post_call_push_result"]
    assert (result["status"], result["attempts"]) == ("ok", 2)
    assert len(stack.crm.requests) == 2


def test_another_writer_appending_while_the_push_runs_loses_nothing(
    stack: Stack, handler: Any, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    # Given another writer that appends to the call's events and integration_log
    # while the push is in flight (the CRM calls it before answering)
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    other_event = {"type": "sms_sent", "t": 160}
    other_log = {"type": "sms_gateway", "status": "sent"}

    def append_then_answer(_request: ReceivedRequest) -> CrmAnswer:
        stack.dynamodb.update_item(
            TableName=stack.calls_table,
            Key={"call_id": {"S": call_id}},
            UpdateExpression=(
                "SET events = list_append(events, :event),"
                " integration_log = list_append(if_not_exists(integration_log, :empty), :log)"
            ),
            ExpressionAttributeValues=to_item({":event": [other_event], ":log": [other_log], ":empty": []}),
        )
        return CrmAnswer(200)

    stack.crm.responder = append_then_answer

    # When the push runs
    assert handler(insert_event(sample_call)) == {"batchItemFailures": []}

    # Then both writers' entries are there, in the order they were written
    stored = stack.get_call(call_id)
    assert [e["type"] for e in stored["events"]] == ["connected", "disconnected", "sms_sent", "post_call_push"]
    assert [e["type"] for e in stored["integration_log"]] == ["sms_gateway", "post_call_push"]
    assert stored["integration_log"][0] == other_log
    assert stored["post_call_push_result"]["status"] == "ok"


# --- contract §12: an answered attempt is never made again, whatever fails after the answer ------------------


def _template_value(pattern: str) -> int:
    """A number as the deployed template sets it: these tests run with the template's own lease and visibility."""
    import re

    text = (Path(__file__).resolve().parents[2] / "template.yaml").read_text()
    match = re.search(pattern, text)
    assert match is not None, pattern
    return int(match.group(1))


TEMPLATE_LEASE_SECONDS = _template_value(r'CLAIM_LEASE_SECONDS: "(\d+)"')
TEMPLATE_VISIBILITY_SECONDS = _template_value(r"VisibilityTimeout: (\d+)")


class ThrottledTable:
    """DynamoDB answering ProvisionedThroughputExceeded to ``times`` writes of one table, past botocore's retries.

    Hooked on the handler's own client (botocore's before-call event), so everything between the handler and
    DynamoDB Local is the real code path.
    """

    def __init__(self, client: Any, table: str, times: int) -> None:
        self.table, self.times, self.refused = table, times, 0
        client.meta.events.register("before-call.dynamodb.UpdateItem", self._maybe_refuse)

    def _maybe_refuse(self, params: dict[str, Any], **_: Any) -> Any:
        import json

        if json.loads(params.get("body") or b"{}").get("TableName") != self.table or self.refused >= self.times:
            return None
        self.refused += 1

        class Answer:
            status_code = 400
            headers: dict[str, str] = {}

        error = {"Code": "ProvisionedThroughputExceededException", "Message": "Rate of requests exceeds the allowed"}
        return Answer(), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}


@pytest.mark.parametrize("late_trigger", ["eventbridge", "stream"])
def test_a_503_then_ok_with_the_write_back_throttled_twice_reaches_the_crm_once_per_attempt(
    stack: Stack,
    handler: Any,
    sample_call: dict[str, Any],
    sample_bot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    late_trigger: str,
) -> None:
    # Given the template's lease, a CRM that answers 503 then 200, and a Calls table that throttles two writes
    monkeypatch.setenv("CLAIM_LEASE_SECONDS", str(TEMPLATE_LEASE_SECONDS))
    monkeypatch.setenv("RETRY_MAX_DELAY_SECONDS", "0")
    answers = iter([503, 200])
    stack.crm.responder = lambda _req: CrmAnswer(next(answers, 200))
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    event = insert_event(sample_call)
    deps, _ = handler.module._runtime()
    clock = FakeClock()
    deps.clock, deps.sleep, deps.gate = clock, clock.advance, UnguardedGate()
    throttle = ThrottledTable(deps.calls._client, stack.calls_table, times=2)

    # When the stream delivers the call (attempt 1: 503, attempt 2 after 5 s: 200, both call writes throttled)
    assert handler(event) == {"batchItemFailures": []}
    assert throttle.refused == 2
    # and, after the lease and a visibility timeout, the call's EventBridge event or the stream record comes again
    clock.advance(TEMPLATE_LEASE_SECONDS + 1)
    if late_trigger == "eventbridge":
        assert handler(results_stored_event(call_id, sample_bot["bot_id"]))["status"] == "already_pushed"
    else:
        assert handler(event) == {"batchItemFailures": []}
    clock.advance(TEMPLATE_VISIBILITY_SECONDS)
    drain(stack, handler, clock)  # the record messages, late: they write what is missing and send nothing

    # Then the CRM saw exactly the two attempts, and the call says ok, each attempt logged once
    stored = stack.get_call(call_id)
    result = stored["post_call_push_result"]
    assert (result["status"], result["attempts"]) == ("ok", 2)
    assert len(stack.crm.requests) == 2
    assert [(e["attempts"], e["status"]) for e in _push_log_entries(stored)] == [(1, "rejected"), (2, "ok")]
    assert _delivery_state(stack, call_id)["st"] == "done"
    assert queued(stack) == []
