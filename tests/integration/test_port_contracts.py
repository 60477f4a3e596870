"""One set of scenarios for each port, run against the in-memory fake and the real adapter.

The core's unit tests trust tests/fakes.py; these keep that trust earned: a
fake that drifts from DynamoDB Local (or the real sender, or SQS) fails here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_push.adapters.crm_http import CrmHttpSender
from crm_push.adapters.dynamodb import BotsTable, CallsTable
from crm_push.adapters.retry_queue import SqsRetryQueue
from crm_push.adapters.state import DeliveryStateTable
from crm_push.errors import AlreadyPushed, ClaimHeld, NotDue
from crm_push.ports import DeliveryUpdate, PushRequest, SendOutcome
from scripts.local_crm import CrmAnswer
from tests.conftest import Stack
from tests.fakes import InMemoryCalls, InMemoryDelivery, InMemoryQueue, ScriptedCrm, StaticBots

NOW = datetime(2026, 11, 25, 9, 33, tzinfo=UTC)
SIDES = ["fake", "real"]


def _call(call_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "bot_id": "bot-1", "results_stored_at": "2026-11-25T09:32:41Z", "events": []}


def _result(attempts: int, pushed_at: str, status: str = "rejected") -> dict[str, Any]:
    return {"status": status, "attempts": attempts, "pushed_at": pushed_at, "http_status": 503}


# --- CallStore ----------------------------------------------------------------------------


@pytest.fixture(params=SIDES)
def calls(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return InMemoryCalls(_call("c1"))
    stack: Stack = request.getfixturevalue("stack")
    stack.put_call(_call("c1"))
    return CallsTable(stack.dynamodb, stack.calls_table)


def test_calls_read_an_item_or_none(calls: Any) -> None:
    assert calls.get_call("c1")["bot_id"] == "bot-1"
    assert calls.get_call("missing") is None


def _entry(attempts: int) -> dict[str, Any]:
    return {"type": "post_call_push", "attempts": attempts}


def test_calls_write_an_outcome_once_and_a_later_one_after_it(calls: Any) -> None:
    event = {"type": "post_call_push", "t": 1, "status": "rejected"}
    assert calls.write_outcome("c1", _result(1, "t1"), [_entry(1)], event, False) is True
    assert calls.write_outcome("c1", _result(1, "t1"), [_entry(1)], event, False) is False  # the same write again
    assert calls.write_outcome("c1", _result(0, "t0"), [], event, False) is False  # an older one
    assert calls.write_outcome("c1", _result(3, "t3", "ok"), [_entry(2), _entry(3)], event, False) is True
    stored = calls.get_call("c1")
    assert stored["post_call_push_result"]["status"] == "ok"
    assert [e["attempts"] for e in stored["integration_log"]] == [1, 2, 3]
    assert len(stored["events"]) == 2


def test_calls_an_outcome_with_no_attempt_is_written_with_its_entry(calls: Any) -> None:
    # A config error or a hold is the first outcome at 0 attempts; a later one at 0 attempts follows it.
    event = {"type": "post_call_push", "t": 1, "status": "failed"}
    held = {**_result(0, "2026-11-25T09:33:00.000Z", "failed"), "next_attempt_at": "2026-11-25T09:34:00.000Z"}
    assert calls.write_outcome("c1", held, [], event, False) is True
    failed = {**_result(0, "2026-11-25T09:35:00.000Z", "failed"), "next_attempt_at": None}
    entry = {"type": "post_call_push", "attempts": 0, "pushed_at": failed["pushed_at"], "status": "failed"}
    assert calls.write_outcome("c1", failed, [entry], event, False) is True
    stored = calls.get_call("c1")
    assert stored["post_call_push_result"]["pushed_at"] == failed["pushed_at"]
    assert [e["status"] for e in stored["integration_log"]] == ["failed"]
    assert len(stored["events"]) == 2


def test_calls_a_result_never_goes_backwards(calls: Any) -> None:
    event = {"type": "post_call_push", "t": 1, "status": "ok"}
    newer = {**_result(1, "2026-11-25T09:40:00.000Z", "ok"), "next_attempt_at": None}
    older = {**_result(1, "2026-11-25T09:33:00.000Z"), "next_attempt_at": "2026-11-25T09:33:05.000Z"}
    assert calls.write_outcome("c1", newer, [_entry(1)], event, False) is True
    assert calls.write_outcome("c1", older, [_entry(1)], event, False) is False
    assert calls.get_call("c1")["post_call_push_result"]["status"] == "ok"


def test_calls_each_attempt_is_logged_once_whichever_writer_carries_it(calls: Any) -> None:
    event = {"type": "post_call_push", "t": 1, "status": "rejected"}
    # A late record message carries attempt 1; the next attempt's write carries 1 and 2: 1 is logged once,
    # in whichever order they land.
    assert calls.write_outcome("c1", _result(2, "t2", "ok"), [_entry(1), _entry(2)], event, False) is True
    assert calls.write_outcome("c1", _result(1, "t1"), [_entry(1)], event, False) is False
    assert [e["attempts"] for e in calls.get_call("c1")["integration_log"]] == [1, 2]


def test_calls_entries_the_call_already_shows_are_not_appended_again(calls: Any) -> None:
    event = {"type": "post_call_push", "t": 1, "status": "rejected"}
    assert calls.write_outcome("c1", _result(1, "t1"), [_entry(1)], event, False) is True
    assert calls.write_outcome("c1", _result(2, "t2", "ok"), [_entry(1), _entry(2)], event, False) is True
    assert [e["attempts"] for e in calls.get_call("c1")["integration_log"]] == [1, 2]


def test_calls_a_result_from_before_durable_delivery_is_final_but_for_a_replay(calls: Any) -> None:
    legacy = {"status": "ok", "http_status": 200, "pushed_at": "2026-11-20T10:00:00Z"}
    calls.write_outcome("c1", legacy, [], {"type": "x"}, True)
    assert calls.write_outcome("c1", _result(1, "t1"), [_entry(1)], {"type": "x"}, False) is False
    assert calls.get_call("c1")["post_call_push_result"] == legacy
    assert calls.write_outcome("c1", _result(1, "t1"), [_entry(1)], {"type": "x"}, True) is True


def test_calls_forced_writes_apply_whatever_is_stored(calls: Any) -> None:
    event = {"type": "post_call_push", "t": 1, "status": "ok"}
    calls.write_outcome("c1", _result(2, "t2", "ok"), [], event, False)
    assert calls.write_outcome("c1", _result(2, "t2", "ok"), [], event, True) is True


def test_calls_an_outcome_for_a_missing_call_is_not_written(calls: Any) -> None:
    assert calls.write_outcome("missing", _result(1, "t1"), [], {"type": "x"}, False) is False
    assert calls.get_call("missing") is None


# --- DeliveryStore ------------------------------------------------------------------------


@pytest.fixture(params=SIDES)
def delivery(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return InMemoryDelivery()
    stack: Stack = request.getfixturevalue("stack")
    return DeliveryStateTable(stack.dynamodb, stack.state_table)


def _scheduled(attempts: int, due: datetime, unwritten: tuple[dict[str, Any], ...] = ()) -> DeliveryUpdate:
    return DeliveryUpdate(attempts, "scheduled", due, True, unwritten, "stream:1")


def test_delivery_a_new_call_is_claimed_once(delivery: Any) -> None:
    state = delivery.claim("c1", "a", "stream:1", NOW, 60, False)
    assert (state.attempts, state.status, state.taken_over) == (0, "new", False)
    with pytest.raises(ClaimHeld) as held:
        delivery.claim("c1", "b", "eventbridge:1", NOW, 60, False)
    assert held.value.until == int(NOW.timestamp()) + 60


def test_delivery_a_claim_recognises_its_own_id(delivery: Any) -> None:
    delivery.claim("c1", "a", "stream:1", NOW, 60, False)
    assert delivery.claim("c1", "a", "stream:1", NOW, 60, False).taken_over is False


def test_delivery_a_scheduled_attempt_is_not_due_before_its_time(delivery: Any) -> None:
    delivery.claim("c1", "a", "stream:1", NOW, 60, False)
    entry = {"status": "rejected", "http_status": 503, "attempts": 2, "pushed_at": "t2", "duration_ms": 5}
    assert delivery.save("c1", "a", _scheduled(2, NOW + timedelta(seconds=300), (entry,)), NOW) is True
    with pytest.raises(NotDue) as early:
        delivery.claim("c1", "b", "sqs:m1", NOW + timedelta(seconds=10), 60, False)
    assert (early.value.due, early.value.scheduled_by) == (int(NOW.timestamp()) + 300, "stream:1")
    state = delivery.claim("c1", "b", "sqs:m1", NOW + timedelta(seconds=300), 60, False)
    assert (state.attempts, state.status, state.call_written) == (2, "scheduled", True)
    assert [(e["attempts"], e["http_status"], e["status"]) for e in state.unwritten] == [(2, 503, "rejected")]


def test_delivery_done_is_done_unless_forced(delivery: Any) -> None:
    delivery.claim("c1", "a", "stream:1", NOW, 60, False)
    delivery.save("c1", "a", DeliveryUpdate(1, "done", None, True, (), "stream:1"), NOW)
    with pytest.raises(AlreadyPushed):
        delivery.claim("c1", "b", "stream:1", NOW, 60, False)
    assert delivery.claim("c1", "replay", "replay:1", NOW, 60, True).attempts == 1


def test_delivery_a_dead_holder_is_taken_over_after_its_lease(delivery: Any) -> None:
    delivery.claim("c1", "dead", "stream:1", NOW, 60, False)
    state = delivery.claim("c1", "next", "stream:1", NOW + timedelta(seconds=61), 60, False)
    assert state.taken_over is True
    # Its lease is gone, but an attempt it saw answered is still recorded (contract §12); nothing less is.
    assert delivery.save("c1", "dead", DeliveryUpdate(0, "done", None, True, (), None), NOW) is False
    assert delivery.save("c1", "dead", DeliveryUpdate(1, "done", None, True, (), None), NOW) is True


def test_delivery_saves_never_go_backwards(delivery: Any) -> None:
    delivery.claim("c1", "a", "stream:1", NOW, 60, False)
    assert delivery.save("c1", "a", DeliveryUpdate(2, "done", None, True, (), "stream:1"), NOW) is True
    late = DeliveryUpdate(1, "scheduled", NOW + timedelta(seconds=5), False, (_entry(1),), "stream:1")
    assert delivery.save("c1", None, late, NOW) is False
    with pytest.raises(AlreadyPushed):
        delivery.claim("c1", "b", "stream:2", NOW, 60, False)


def test_delivery_answered_but_unwritten_attempts_come_back_with_a_refusal_until_marked_written(delivery: Any) -> None:
    delivery.claim("c1", "a", "stream:1", NOW, 60, False)
    pending = {"status": "ok", "http_status": 200, "attempts": 1, "pushed_at": "t1", "url": "https://crm/x"}
    delivery.save("c1", "a", DeliveryUpdate(1, "done", None, False, (pending,), "stream:1"), NOW)
    with pytest.raises(AlreadyPushed) as refused:
        delivery.claim("c1", "b", "eventbridge:1", NOW, 60, False)
    assert [(e["attempts"], e["status"], e["url"]) for e in refused.value.pending] == [(1, "ok", "https://crm/x")]
    assert delivery.mark_written("c1", 2) is False  # not the attempt the delivery is at
    assert delivery.mark_written("c1", 1) is True
    with pytest.raises(AlreadyPushed) as again:
        delivery.claim("c1", "c", "eventbridge:2", NOW, 60, False)
    assert again.value.pending == ()


def test_delivery_a_released_claim_frees_the_call(delivery: Any) -> None:
    delivery.claim("c1", "a", "stream:1", NOW, 60, False)
    delivery.release("c1", "a")
    delivery.release("c1", "not-the-holder")  # nobody's to release: no error
    assert delivery.claim("c1", "b", "stream:1", NOW, 60, False).taken_over is False


# --- BotDirectory ------------------------------------------------------------------------


BOT = {"bot_id": "bot-1", "timezone": "Asia/Kolkata", "post_call_push": {"url": "https://crm.example.com/in"}}


@pytest.fixture(params=SIDES)
def bots(request: pytest.FixtureRequest) -> Any:
    if request.param == "fake":
        return StaticBots(BOT)
    stack: Stack = request.getfixturevalue("stack")
    stack.put_bot(BOT)
    return BotsTable(stack.dynamodb, stack.bots_table)


def test_bots_a_known_bot_is_its_validated_config_and_an_unknown_one_none(bots: Any) -> None:
    bot = bots.get_bot("bot-1")
    assert (bot.timezone, bot.has_push_config, bot.push.url) == ("Asia/Kolkata", True, "https://crm.example.com/in")
    assert bots.get_bot("nobody") is None


# --- CrmSender ----------------------------------------------------------------------------


@pytest.fixture(params=SIDES)
def crm_side(request: pytest.FixtureRequest) -> Callable[[int, dict[str, str]], tuple[Any, str]]:
    """A sender whose CRM answers ``status`` with ``headers``, and the URL to send to."""

    def make(status: int, headers: dict[str, str]) -> tuple[Any, str]:
        if request.param == "fake":
            kind = None if status < 300 else "http_status"
            outcome = SendOutcome(status, '{"ok":false}', None, 1, 1, kind, headers.get("Retry-After"))
            return ScriptedCrm(outcome), "https://crm.example.com/in"
        crm = request.getfixturevalue("crm")
        crm.responder = lambda _req: CrmAnswer(status, b'{"ok":false}', {"Content-Type": "application/json", **headers})
        return CrmHttpSender(allow_private_networks=True), f"{crm.url}/in"

    return make


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [(200, {}, None, None), (503, {"Retry-After": "120"}, "http_status", "120"), (410, {}, "http_status", None)],
)
def test_crm_one_send_is_one_attempt_classified(crm_side: Any, status, headers, kind, retry_after) -> None:
    sender, url = crm_side(status, headers)
    request = PushRequest("c1", "POST", url, {"Idempotency-Key": "c1"}, b"{}", url)
    outcome = sender.send(request, None)
    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (status, kind, 1)
    assert outcome.retry_after == retry_after
    assert outcome.response_body == '{"ok":false}'


# --- RetryQueue ---------------------------------------------------------------------------


@pytest.fixture(params=SIDES)
def queue_side(request: pytest.FixtureRequest) -> tuple[Any, Callable[[], list[dict[str, Any]]]]:
    if request.param == "fake":
        fake = InMemoryQueue()
        return fake, lambda: [json.loads(json.dumps(m.message)) for m in fake.take()]
    stack: Stack = request.getfixturevalue("stack")
    real = SqsRetryQueue(stack.retry_queue_url, client=stack.sqs, max_delay_seconds=0)

    def received() -> list[dict[str, Any]]:
        response = stack.sqs.receive_message(QueueUrl=stack.retry_queue_url, MaxNumberOfMessages=10)
        return [json.loads(m["Body"]) for m in response.get("Messages", [])]

    return real, received


def test_queue_a_scheduled_message_comes_back_as_sent(queue_side: Any) -> None:
    queue, received = queue_side
    message = {"kind": "attempt", "call_id": "c1", "bot_id": "bot-1", "due": "2026-11-25T09:38:00.000Z"}
    queue.schedule(message, 300)
    [back] = received()
    assert {k: back[k] for k in message} == message
