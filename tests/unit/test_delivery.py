"""Durable delivery (contract §10): the ladder, the queue, the state, exactly once, against in-memory ports.

The retry queue is drained the way the handler does it (``handle_retry_message``),
with a fake clock moved to each message's due time, so hours of outage take
milliseconds and every assertion is exact.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from crm_push.error_kinds import is_retryable
from crm_push.errors import ResultsNotStored, StorageError
from crm_push.flow import HELD_WAKE_SPREAD_SECONDS
from crm_push.ports import GateKey, HeldBack, PushDeps, Replay, SendOutcome
from crm_push.push import handle_retry_message, push_call
from crm_push.retry_policy import DEFAULT_RETRY_SCHEDULE, next_attempt
from crm_push.variables import parse_utc_timestamp
from tests.fakes import FakeClock, InMemoryCalls, InMemoryDelivery, InMemoryQueue, ScriptedCrm, StaticBots, make_deps

EVENTS = Path(__file__).resolve().parents[2] / "events"

OK = SendOutcome(200, '{"ok":true}', None, 1, 12)
DOWN = SendOutcome(503, "down for maintenance", None, 1, 8, "http_status")
REFUSED = SendOutcome(None, "", "could not connect: connection refused", 1, 2, "connection")


class World:
    """One call, its bot and a scripted CRM, with the ports and a clock the test drives."""

    def __init__(self, call: dict[str, Any], bot: dict[str, Any], *outcomes: SendOutcome) -> None:
        self.call_id = call["call_id"]
        self.calls = InMemoryCalls(call)
        self.crm = ScriptedCrm(outcomes=list(outcomes) or [OK])
        self.clock = FakeClock()
        self.queue = InMemoryQueue()
        self.delivery = InMemoryDelivery()
        self.deps: PushDeps = make_deps(
            self.calls, StaticBots(bot), self.crm, clock=self.clock, retry_queue=self.queue, delivery=self.delivery
        )
        self.message_count = 0

    @property
    def stored(self) -> dict[str, Any]:
        return self.calls.items[self.call_id]

    @property
    def result(self) -> dict[str, Any]:
        return self.stored["post_call_push_result"]

    def drain(self, limit: int = 500) -> list[Any]:
        """Deliver queued messages in due order, moving the clock to each; returns what each came to."""
        seen = []
        while self.queue.messages and len(seen) < limit:
            self.queue.messages.sort(key=lambda m: m.delay_seconds)
            queued = self.queue.messages.pop(0)
            self.clock.advance(queued.delay_seconds)
            # Everything else on the queue is that much nearer to its time.
            for other in self.queue.messages:
                other.delay_seconds = max(0.0, other.delay_seconds - queued.delay_seconds)
            self.message_count += 1
            outcome = handle_retry_message(queued.message, self.deps, f"m{self.message_count}")
            seen.append(outcome if isinstance(outcome, str) else outcome.outcome)
        return seen


# --- the ladder (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "kind", "retryable"),
    [
        (None, "timeout", True),
        (None, "connection", True),
        (None, "dns", True),
        (None, "tls", True),
        (408, "http_status", True),
        (429, "http_status", True),
        (500, "http_status", True),
        (503, "http_status", True),
        (599, "http_status", True),
        (400, "http_status", False),
        (404, "http_status", False),
        (410, "http_status", False),
        (422, "http_status", False),
        (None, "config", False),
        (None, "destination_refused", False),
        (None, "payload_too_large", False),
        (None, "internal", False),
        (None, "secret", False),
    ],
)
def test_which_outcomes_retry(http_status, kind, retryable):
    assert is_retryable(http_status, kind) is retryable


def test_a_secret_store_that_was_throttled_retries_and_a_missing_secret_does_not():
    assert is_retryable(None, "secret", transient=True)
    assert not is_retryable(None, "secret", transient=False)


def test_the_default_ladder_without_jitter_is_the_contracts():
    delays = [next_attempt(n, DEFAULT_RETRY_SCHEDULE).delay_seconds for n in range(1, 8)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert next_attempt(8, DEFAULT_RETRY_SCHEDULE).delay_seconds is None


@pytest.mark.parametrize(("jitter", "factor"), [(0.0, 0.9), (0.999999, 1.1), (0.25, 0.95)])
def test_jitter_stays_within_ten_percent(jitter, factor):
    assert next_attempt(2, DEFAULT_RETRY_SCHEDULE, jitter=jitter).delay_seconds == pytest.approx(300 * factor)


def test_retry_after_raises_the_delay_and_never_lowers_it():
    assert next_attempt(1, DEFAULT_RETRY_SCHEDULE, retry_after_seconds=120).delay_seconds == 120
    assert next_attempt(2, DEFAULT_RETRY_SCHEDULE, retry_after_seconds=10).delay_seconds == 300


def test_a_far_retry_after_waits_until_then_counted_at_most_a_day_and_never_ends_the_delivery():
    # Contract §10 (revised 2026-12-03): the later of the jittered delay and Retry-After, capped at a day.
    far = next_attempt(2, DEFAULT_RETRY_SCHEDULE, retry_after_seconds=300 + 7201)
    assert far.delay_seconds == 7501
    beyond_a_day = next_attempt(2, DEFAULT_RETRY_SCHEDULE, retry_after_seconds=5 * 86400)
    assert beyond_a_day.delay_seconds == 86400
    sooner = next_attempt(2, DEFAULT_RETRY_SCHEDULE, retry_after_seconds=10)
    assert sooner.delay_seconds == 300
    # Only the schedule running out ends a delivery.
    assert next_attempt(8, DEFAULT_RETRY_SCHEDULE, retry_after_seconds=10).delay_seconds is None


def test_an_empty_schedule_means_one_attempt():
    assert next_attempt(1, ()).delay_seconds is None


# --- a delivery across an outage ---------------------------------------------------------------


def test_an_outage_of_hours_ends_in_exactly_one_ok_with_every_attempt_logged(call, bot):
    world = World(call, bot, DOWN, REFUSED, DOWN, DOWN, OK)
    first = push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")

    # Attempt 1 fails, attempt 2 (5 s later) is waited out in the invocation; the third goes to the queue.
    assert first.outcome == "pushed"
    assert len(world.crm.requests) == 2
    assert world.result["status"] == "rejected"
    assert world.result["attempts"] == 1
    assert world.result["next_attempt_at"] is not None
    assert world.calls.writes == 1
    assert len(world.queue.messages) == 1

    world.drain()
    result = world.result
    assert len(world.crm.requests) == 5
    assert (result["status"], result["http_status"], result["attempts"]) == ("ok", 200, 5)
    assert result["next_attempt_at"] is None
    assert result["exhausted"] is False
    assert result["error_kind"] is None
    log = [e for e in world.stored["integration_log"] if e["type"] == "post_call_push"]
    assert [(e["attempts"], e["status"], e["error_kind"]) for e in log] == [
        (1, "rejected", "http_status"),
        (2, "failed", "connection"),
        (3, "rejected", "http_status"),
        (4, "rejected", "http_status"),
        (5, "ok", None),
    ]
    # The call item is written for the first outcome and for the end, nothing in between.
    assert world.calls.writes == 2
    assert [e["status"] for e in world.stored["events"] if e["type"] == "post_call_push"] == ["rejected", "ok"]
    assert world.queue.messages == []
    # Every attempt carried the same idempotency key.
    assert {r.headers["Idempotency-Key"] for r in world.crm.requests} == {world.call_id}


def test_attempts_follow_the_schedule_in_time(call, bot):
    world = World(call, bot, DOWN, DOWN, DOWN, OK)
    started = world.clock.now
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.drain()
    sent_at = [parse_utc_timestamp(e["pushed_at"]) for e in world.stored["integration_log"]]
    gaps = [(b - a).total_seconds() for a, b in zip([started, *sent_at], sent_at, strict=False)][1:]
    # Due times are kept in whole seconds, so each gap is its delay rounded up (plus the wake-up slack).
    assert gaps == pytest.approx([5, 300, 1800], abs=1.1)


def test_a_crm_that_never_recovers_gets_exactly_eight_attempts_then_exhausted(call, bot):
    world = World(call, bot, DOWN)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.drain()
    assert len(world.crm.requests) == 8
    assert world.result["attempts"] == 8
    assert world.result["exhausted"] is True
    assert world.result["next_attempt_at"] is None
    assert world.queue.messages == []
    assert len(world.stored["integration_log"]) == 8
    elapsed = world.clock.now - FakeClock().now
    assert timedelta(hours=27) < elapsed < timedelta(hours=28)


def test_gone_is_final_after_one_request(call, bot):
    world = World(call, bot, SendOutcome(410, "gone", None, 1, 3, "http_status"))
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.drain()
    assert len(world.crm.requests) == 1
    assert (world.result["status"], world.result["exhausted"], world.result["next_attempt_at"]) == (
        "rejected",
        False,
        None,
    )
    assert world.queue.messages == []


def test_a_bot_schedule_of_none_means_a_single_attempt_marked_exhausted(call, bot):
    bot["post_call_push"]["retry_schedule_seconds"] = []
    world = World(call, bot, DOWN)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert len(world.crm.requests) == 1
    assert world.result["exhausted"] is True
    assert world.queue.messages == []


def test_a_bot_schedule_is_followed(call, bot):
    bot["post_call_push"]["retry_schedule_seconds"] = [60, 60]
    world = World(call, bot, DOWN)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.drain()
    assert len(world.crm.requests) == 3
    assert world.result["exhausted"] is True


def test_retry_after_holds_the_next_attempt_back(call, bot):
    throttled = SendOutcome(429, "slow down", None, 1, 3, "http_status", retry_after="600")
    world = World(call, bot, throttled, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert len(world.crm.requests) == 1  # 600 s is not waited out in the invocation
    due = parse_utc_timestamp(world.result["next_attempt_at"])
    assert due is not None
    assert (due - world.clock.now).total_seconds() == 600
    world.drain()
    assert world.result["status"] == "ok"


# --- the queue: early, duplicated, racing --------------------------------------------------------


def test_a_message_that_arrives_early_is_put_back_and_not_attempted(call, bot):
    world = World(call, bot, DOWN, DOWN, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    [queued] = world.queue.take()
    assert queued.delay_seconds == pytest.approx(300, abs=1)
    # Delivered at once (as if SQS had capped the delay): the attempt is not due yet.
    assert handle_retry_message(queued.message, world.deps, "early").outcome == "put_back"
    assert len(world.crm.requests) == 2
    [put_back] = world.queue.messages
    assert put_back.delay_seconds == pytest.approx(300, abs=1)


def test_duplicated_messages_and_redelivered_triggers_cause_no_extra_request(call, bot):
    world = World(call, bot, DOWN, DOWN, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.queue.messages.append(world.queue.messages[0])  # SQS delivered it twice
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="eventbridge:e1").outcome == "scheduled"
    world.drain()
    assert len(world.crm.requests) == 3
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "already_pushed"
    assert len(world.crm.requests) == 3
    assert world.queue.messages == []


def test_a_live_claim_elsewhere_leaves_a_check_for_after_its_lease(call, bot):
    world = World(call, bot)
    world.delivery.claim(world.call_id, "other", "stream:9", world.clock.now, 240)
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="eventbridge:e1").outcome == "claim_held"
    [check] = world.queue.messages
    assert check.delay_seconds == pytest.approx(241)
    assert world.crm.requests == []
    # The holder died: after its lease the check takes the call over and pushes it once.
    world.drain()
    assert len(world.crm.requests) == 1
    assert world.result["status"] == "ok"


def test_a_trigger_retried_after_a_crash_re_sends_its_schedule_and_no_other_does(call, bot):
    world = World(call, bot, DOWN, DOWN, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.queue.take()  # the invocation died before its message reached the queue
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="eventbridge:e1").outcome == "scheduled"
    assert world.queue.messages == []
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "scheduled"
    assert len(world.queue.messages) == 1
    world.drain()
    assert world.result["status"] == "ok"
    assert len(world.crm.requests) == 3


# --- never lost, never twice ---------------------------------------------------------------


def test_near_the_deadline_a_call_is_not_attempted_and_nothing_is_spent(call, bot):
    world = World(call, bot)
    world.deps.deadline = lambda: 0.0  # no time left at all
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "deferred"
    assert world.crm.requests == []
    assert "post_call_push_result" not in world.stored
    [wake] = world.queue.messages
    assert wake.delay_seconds == 0
    world.deps.deadline = lambda: None
    world.drain()
    assert len(world.crm.requests) == 1
    assert (world.result["status"], world.result["attempts"]) == ("ok", 1)


def test_a_sender_out_of_time_is_not_an_attempt(call, bot):
    world = World(call, bot, SendOutcome(None, "", "not sent: no time left", 0, 0), OK)
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "deferred"
    assert "post_call_push_result" not in world.stored
    world.drain()
    assert (world.result["status"], world.result["attempts"]) == ("ok", 1)


class FailingWrites(InMemoryCalls):
    """The Calls table throttling past botocore's retries, ``failures`` times."""

    def __init__(self, call: dict[str, Any], failures: int) -> None:
        super().__init__(call)
        self.failures = failures

    def write_outcome(self, *args: Any, **kwargs: Any) -> bool:
        if self.failures:
            self.failures -= 1
            raise StorageError("ProvisionedThroughputExceededException")
        return super().write_outcome(*args, **kwargs)


def test_a_throttled_write_back_is_recorded_later_and_never_pushed_again(call, bot):
    world = World(call, bot)
    world.calls = FailingWrites(call, failures=1)
    world.deps.calls = world.calls
    outcome = push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert outcome.outcome == "pushed"
    assert "post_call_push_result" not in world.stored
    assert [m.message["kind"] for m in world.queue.messages] == ["record"]
    assert world.drain() == ["recorded"]
    assert world.result["status"] == "ok"
    assert len(world.stored["integration_log"]) == 1
    # The stream retries the record anyway: the delivery is done.
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "already_pushed"
    assert len(world.crm.requests) == 1


def test_a_record_message_delivered_twice_writes_once(call, bot):
    world = World(call, bot)
    world.calls = FailingWrites(call, failures=1)
    world.deps.calls = world.calls
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.queue.messages.append(world.queue.messages[0])
    world.drain()
    assert len(world.stored["integration_log"]) == 1
    assert len(world.stored["events"]) == len(call["events"]) + 1


def test_when_neither_table_nor_queue_takes_the_record_the_trigger_is_retried(call, bot):
    class BrokenQueue(InMemoryQueue):
        def schedule(self, message: dict[str, Any], delay_seconds: float) -> None:
            from crm_push.errors import QueueError

            raise QueueError("queue down")

    world = World(call, bot)
    world.calls = FailingWrites(call, failures=1)
    world.deps.calls = world.calls
    world.deps.retry_queue = BrokenQueue()
    with pytest.raises(StorageError):
        push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")


def test_a_holder_that_died_after_recording_is_adopted_not_repeated(call, bot):
    world = World(call, bot, OK)
    # A holder claimed, reached the CRM (503), wrote the call item, then died before saving its state.
    state = world.delivery.claim(world.call_id, "dead", "stream:1", world.clock.now, 240)
    assert state.attempts == 0
    due = world.clock.now + timedelta(seconds=300)
    world.calls.write_outcome(
        world.call_id,
        {"status": "rejected", "attempts": 1, "pushed_at": "x", "next_attempt_at": due.isoformat()},
        [{"type": "post_call_push", "attempts": 1}],
        {"type": "post_call_push", "t": 1, "status": "rejected"},
    )
    world.clock.advance(241)  # its lease is over
    outcome = push_call(world.call_id, world.deps, call_doc=call, trigger="sqs:check")
    assert outcome.outcome == "scheduled"
    assert world.crm.requests == []  # the recorded attempt is not made again
    world.drain()
    assert len(world.crm.requests) == 1
    assert (world.result["status"], world.result["attempts"]) == ("ok", 2)


def test_an_early_event_is_not_pushed_and_nothing_is_marked(call, bot):
    del call["results_stored_at"]
    world = World(call, bot)
    with pytest.raises(ResultsNotStored):
        push_call(world.call_id, world.deps, trigger="eventbridge:e1")
    assert world.crm.requests == []
    assert world.delivery.items == {}
    assert "post_call_push_result" not in world.stored


def test_a_replay_while_an_attempt_is_pending_pushes_now_and_the_pending_one_is_a_no_op(call, bot):
    world = World(call, bot, DOWN, DOWN, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    outcome = push_call(world.call_id, world.deps, replay=Replay(by="ops", reason="CRM back"))
    assert outcome.result is not None
    assert outcome.result.status == "ok"
    assert world.drain() == ["already_pushed"]
    assert len(world.crm.requests) == 3
    assert world.result["replay"] == {"by": "ops", "reason": "CRM back"}


def test_a_header_outside_latin1_is_a_config_error_naming_the_header(call, bot):
    bot["post_call_push"]["headers"] = {"X-Agent": "{{call.agent_name}}"}
    call["connected_event"]["agent_name"] = "प्रिया"
    world = World(call, bot)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert world.crm.requests == []
    assert (world.result["status"], world.result["error_kind"]) == ("failed", "config")
    assert "X-Agent" in world.result["error"]
    assert "Latin-1" in world.result["error"]


# --- a destination being spared (circuit open, rate limit) ----------------------------------


class ScriptedGate:
    """Holds the destination back ``holds`` times, then lets every send through."""

    def __init__(self, clock: FakeClock, reason: str, hold_seconds: float, holds: int = 1) -> None:
        self.clock, self.reason, self.hold_seconds, self.holds = clock, reason, hold_seconds, holds
        self.destinations: list[str] = []

    def held_until(self, key: GateKey) -> Any:
        """A woken call asks before it is read: that counts as one of the holds, like a held send."""
        if self.reason == "circuit_open" and self.holds > 0:
            self.holds -= 1
            return self.clock.now + timedelta(seconds=self.hold_seconds)
        return None

    def send(self, key: GateKey, rate_limit_per_second: float | None, send: Any) -> Any:
        self.destinations.append(key.destination)
        if self.holds:
            self.holds -= 1
            return HeldBack(self.reason, self.clock.now + timedelta(seconds=self.hold_seconds))  # type: ignore[arg-type]
        return send()


def test_an_open_circuit_is_the_first_outcome_and_spends_no_attempt(call, bot):
    world = World(call, bot)
    world.deps.gate = ScriptedGate(world.clock, "circuit_open", 30)
    outcome = push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert outcome.outcome == "held_back"
    assert world.crm.requests == []
    result = world.result
    assert (result["status"], result["attempts"], result["error_kind"]) == ("failed", 0, "circuit_open")
    # Held calls wake spread over a window after the probe time, not all in its first second.
    spread = HELD_WAKE_SPREAD_SECONDS * 0.5  # the fake jitter is 0.5
    assert parse_utc_timestamp(result["next_attempt_at"]) == world.clock.now + timedelta(seconds=30 + spread)
    assert world.stored.get("integration_log", []) == []
    world.drain()
    # The destination's probe (at the probe time) carried the call: delivered, and a probe is not an attempt.
    assert len(world.crm.requests) == 1
    assert (world.result["status"], world.result["attempts"]) == ("ok", 0)
    assert [(e["attempts"], e.get("probe")) for e in world.stored["integration_log"]] == [(0, True)]
    assert world.deps.gate.destinations == ["https://crm.example.com:443"] * 2


def test_an_open_circuit_after_the_first_outcome_does_not_rewrite_the_call(call, bot):
    world = World(call, bot, DOWN, DOWN, OK)
    gate = ScriptedGate(world.clock, "circuit_open", 600, holds=0)
    world.deps.gate = gate
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    writes = world.calls.writes
    gate.holds = 1
    world.drain()
    assert world.calls.writes == writes + 1  # only the final write
    # Held at its third try, the call was carried by the destination's probe: two attempts, then a probe.
    assert (world.result["status"], world.result["attempts"]) == ("ok", 2)
    assert len(world.crm.requests) == 3


def test_over_the_rate_limit_a_call_waits_for_the_next_second_without_spending_an_attempt(call, bot):
    world = World(call, bot)
    world.deps.gate = ScriptedGate(world.clock, "rate_limited", 0.4)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert len(world.crm.requests) == 1
    assert world.queue.messages == []
    assert (world.result["status"], world.result["attempts"]) == ("ok", 1)


def test_far_over_the_rate_limit_a_call_is_scheduled_and_nothing_is_written(call, bot):
    world = World(call, bot)
    world.deps.gate = ScriptedGate(world.clock, "rate_limited", 20)
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "held_back"
    assert "post_call_push_result" not in world.stored
    world.drain()
    assert (world.result["status"], world.result["attempts"]) == ("ok", 1)


def test_a_failure_that_opened_the_circuit_is_not_waited_out_in_the_invocation(call, bot):
    class OpensOnFirstFailure(ScriptedGate):
        def send(self, key: GateKey, rate_limit_per_second: float | None, send: Any) -> Any:
            outcome = send()
            self.opened = True
            return outcome

        def held_until(self, key: GateKey) -> Any:
            return self.clock.now + timedelta(seconds=60) if getattr(self, "opened", False) else None

    world = World(call, bot, DOWN, OK)
    world.deps.gate = OpensOnFirstFailure(world.clock, "circuit_open", 60, holds=0)
    started = world.clock.now
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert len(world.crm.requests) == 1  # no second attempt after a 5 s wait in this invocation
    assert world.clock.now == started  # and no sleep
    [scheduled] = world.queue.messages
    assert scheduled.delay_seconds == pytest.approx(5, abs=1)
