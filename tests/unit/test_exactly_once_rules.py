"""Contract §12 at the core, one audit finding a test: an answered attempt is never made again, results
never go backwards, a final result ends the delivery, a stopped delivery ends visibly.

Each test failed on main at 9f35516 (the audit's repro scripts show the same scenarios); the
integration tier repeats the first two on DynamoDB Local and moto SQS (test_exactly_once.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from crm_push.errors import StorageError
from crm_push.ports import GateKey, HeldBack, Replay, SendOutcome
from crm_push.push import handle_retry_message, push_call
from tests.fakes import InMemoryCalls, InMemoryDelivery, ScriptedCrm
from tests.unit.test_delivery import DOWN, OK, FailingWrites, World

LEASE = 240  # the template's CLAIM_LEASE_SECONDS
VISIBILITY = 720  # the template's retry queue VisibilityTimeout


def post_call_push_entries(world: World) -> list[tuple[int, str]]:
    return [
        (e["attempts"], e["status"]) for e in world.stored.get("integration_log", []) if e["type"] == "post_call_push"
    ]


def world_with_throttled_call_writes(call: dict[str, Any], bot: dict[str, Any], *outcomes: SendOutcome) -> World:
    world = World(call, bot, *outcomes)
    world.calls = FailingWrites(call, failures=2)
    world.deps.calls = world.calls
    world.deps.claim_lease_seconds = LEASE
    return world


def test_audit_1_an_accepted_push_whose_write_back_is_throttled_twice_is_not_sent_again(call, bot):
    world = world_with_throttled_call_writes(call, bot, OK)
    # The CRM answers 200; the call write is throttled: the state keeps the answer, a record message the write.
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:E1").outcome == "pushed"
    assert world.deps.state.items[world.call_id]["attempts"] == 1
    [record] = world.queue.take()
    assert record.message["kind"] == "record"
    # The record message's first receive is throttled too: it comes back in seconds, not after 720 s.
    assert handle_retry_message(record.message, world.deps, "R").outcome == "record_deferred"
    [retried] = world.queue.take()
    assert retried.delay_seconds < LEASE
    # Another trigger inside the lease, and a check after it: neither sends.
    world.clock.advance(10)
    assert push_call(world.call_id, world.deps, trigger="eventbridge:X").outcome == "already_pushed"
    world.clock.advance(LEASE)
    assert push_call(world.call_id, world.deps, trigger="sqs:check").outcome == "already_pushed"
    # The record message, late or duplicated, changes nothing.
    world.clock.advance(VISIBILITY)
    handle_retry_message(retried.message, world.deps, "R")
    handle_retry_message(record.message, world.deps, "R")
    assert len(world.crm.requests) == 1
    assert post_call_push_entries(world) == [(1, "ok")]
    assert (world.result["status"], world.result["attempts"]) == ("ok", 1)


def test_audit_1_a_retryable_first_attempt_with_throttled_writes_is_attempted_once_per_attempt(call, bot):
    world = world_with_throttled_call_writes(call, bot, DOWN, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:E1")
    # The invocation waited its 5 s and made attempt 2 itself, from the saved state.
    assert len(world.crm.requests) == 2
    for message in world.queue.take():  # both record messages, late and in any order
        world.clock.advance(VISIBILITY)
        handle_retry_message(message.message, world.deps, "R")
    world.drain()
    assert len(world.crm.requests) == 2
    assert post_call_push_entries(world) == [(1, "rejected"), (2, "ok")]
    assert (world.result["status"], world.result["attempts"]) == ("ok", 2)


def test_audit_2_a_late_record_never_takes_a_final_result_backwards(call, bot):
    calls = InMemoryCalls(call)
    cid = call["call_id"]
    newer = {"status": "ok", "attempts": 1, "pushed_at": "2026-11-25T09:40:00.000Z", "next_attempt_at": None}
    older = {"status": "rejected", "attempts": 1, "pushed_at": "2026-11-25T09:33:00.000Z", "next_attempt_at": "x"}
    assert calls.write_outcome(cid, newer, [], {}, False)
    assert not calls.write_outcome(cid, older, [], {}, False)
    assert not calls.write_outcome(cid, {**newer, "attempts": 0}, [], {}, False)
    assert calls.items[cid]["post_call_push_result"]["status"] == "ok"


def test_audit_2_a_late_state_update_never_takes_the_delivery_backwards(call, bot):
    world = World(call, bot, DOWN, DOWN, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    world.drain()
    state: InMemoryDelivery = world.deps.state
    assert state.items[world.call_id]["attempts"] == 3
    from crm_push.ports import DeliveryUpdate

    stale = DeliveryUpdate(
        attempts=1, status="scheduled", due=world.clock.now, call_written=True, unwritten=(), trigger="x"
    )
    assert not state.save(world.call_id, None, stale, world.clock.now)
    assert state.items[world.call_id]["st"] == "done"


@pytest.mark.parametrize(
    "legacy_result",
    [
        {"status": "ok", "http_status": 200, "pushed_at": "2026-11-20T10:00:00Z"},  # before §10: no attempts
        {"status": "rejected", "http_status": 400, "attempts": 1, "pushed_at": "2026-11-20T10:00:00.000Z"},
    ],
)
def test_audit_10_a_final_result_on_the_call_stops_every_trigger_whatever_the_state_table_holds(
    call, bot, legacy_result
):
    call["post_call_push_result"] = legacy_result
    world = World(call, bot)  # an empty state table: expired, recreated, or never written by this version
    for trigger in ("stream:1", "eventbridge:e1", "sqs:m1"):
        assert push_call(world.call_id, world.deps, call_doc=call, trigger=trigger).outcome == "already_pushed"
    assert world.crm.requests == []
    assert world.result == legacy_result
    # An operator's replay is the one way to push it again.
    replayed = push_call(world.call_id, world.deps, replay=Replay(by="ops", reason="mapping fixed"))
    assert replayed.outcome == "pushed"
    assert len(world.crm.requests) == 1


def test_audit_10_a_scheduled_result_with_more_attempts_than_the_state_knows_is_adopted(call, bot):
    world = World(call, bot, OK)
    due = world.clock.now + timedelta(seconds=300)
    call["post_call_push_result"] = {
        "status": "rejected",
        "attempts": 3,
        "pushed_at": "2026-11-25T09:00:00.000Z",
        "next_attempt_at": due.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    }
    world.calls.items[world.call_id] = dict(call)
    assert push_call(world.call_id, world.deps, trigger="eventbridge:e1").outcome == "scheduled"
    assert world.crm.requests == []
    world.drain()
    assert len(world.crm.requests) == 1
    assert (world.result["status"], world.result["attempts"]) == ("ok", 4)


@pytest.mark.parametrize("stop", ["skip_post_push", "config_removed"])
def test_audit_16_a_delivery_stopped_mid_ladder_ends_visibly(call, bot, stop):
    world = World(call, bot, DOWN)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")  # attempts 1 and 2 (after 5 s)
    assert world.result["next_attempt_at"] is not None
    sent = len(world.crm.requests)
    if stop == "skip_post_push":
        world.calls.items[world.call_id]["skip_post_push"] = True
    else:
        world.deps.bots.bots[bot["bot_id"]] = {"bot_id": bot["bot_id"]}
    assert world.drain() == ["stopped"]
    assert len(world.crm.requests) == sent
    result = world.result
    assert result["next_attempt_at"] is None
    assert result["status"] == "rejected"  # it still describes the latest attempt
    assert f"delivery stopped after {sent} attempt(s)" in result["error"]
    assert world.deps.state.items[world.call_id]["st"] == "done"
    assert world.stored["integration_log"][-1]["type"] == "post_call_push_stopped"
    assert world.queue.messages == []


def test_audit_21_a_replay_held_by_an_open_circuit_without_a_queue_strands_nothing(call, bot):
    class OpenCircuit:
        def held_until(self, key: GateKey) -> Any:
            return None

        def send(self, key: GateKey, rate: Any, send: Any) -> Any:
            return HeldBack("circuit_open", world.clock.now + timedelta(seconds=60))

    world = World(call, bot, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    before = dict(world.deps.state.items[world.call_id])
    world.deps.retry_queue = None
    world.deps.gate = OpenCircuit()
    outcome = push_call(world.call_id, world.deps, replay=Replay(by="ops", reason="again"))
    assert outcome.outcome == "held_no_queue"
    assert world.deps.state.items[world.call_id] == before  # still done, not "scheduled" with no message
    assert world.result["status"] == "ok"


def test_audit_22_a_lost_claim_is_reported_and_queues_nothing(call, bot):
    class LosesClaims(InMemoryDelivery):
        def save(self, call_id: str, claim_id: str | None, update: Any, now: Any) -> bool:
            return False

    world = World(call, bot, DOWN)
    world.deps.state = LosesClaims()
    outcome = push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert outcome.outcome == "claim_lost"
    assert world.queue.messages == []  # no wake-up from a push that no longer owns the delivery
    assert len(world.crm.requests) == 1


class Outage:
    """A destination down until ``until``, its circuit open: it holds calls, and lets one probe through a minute."""

    def __init__(self, world: World, until: Any) -> None:
        self.world, self.until, self.probes = world, until, 0
        self.next_probe = world.clock.now + timedelta(seconds=60)

    def _down(self) -> bool:
        return self.world.clock.now < self.until

    def held_until(self, key: GateKey) -> Any:
        if not self._down():
            return None
        return self.next_probe if self.next_probe > self.world.clock.now else None

    def send(self, key: GateKey, rate: Any, send: Any) -> Any:
        now = self.world.clock.now
        if self._down() and now < self.next_probe:
            return HeldBack("circuit_open", self.next_probe)
        if self._down():
            self.next_probe = now + timedelta(seconds=60)
            self.probes += 1
            return DOWN  # the probe's request reached a CRM still down
        return send()


class CountingCalls(InMemoryCalls):
    """Counts the reads made while the outage lasts (``outage`` is set by the test)."""

    reads = 0
    outage: Outage | None = None

    def get_call(self, call_id: str) -> Any:
        if self.outage is not None and self.outage._down():
            self.reads += 1
        return super().get_call(call_id)


def test_audit_17_a_held_call_is_not_read_or_rendered_while_its_destination_holds_calls(call, bot):
    world = World(call, bot, OK)
    world.calls = CountingCalls(call)
    world.deps.calls = world.calls
    outage = Outage(world, world.clock.now + timedelta(hours=2))
    world.deps.gate = outage
    world.calls.outage = outage
    # The stream's push meets the open circuit: the call's first outcome says so, nothing is sent.
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "held_back"
    outcomes = world.drain()
    # Two hours of outage: only the destination's probes read the call (one a minute, carrying it);
    # the call's own wake-ups (its ladder) never read or render it, and it wakes once a step at most.
    assert world.calls.reads == outage.probes
    own_wake_ups = outcomes.count("held_back")
    assert own_wake_ups <= 4  # 5 s, 300 s, 1800 s and 7200 s steps of the ladder inside two hours
    assert (world.result["status"], world.result["attempts"]) == ("ok", 0)
    probes_logged = [e for e in world.stored["integration_log"] if e["type"] == "post_call_push_probe"]
    assert len(probes_logged) == outage.probes  # every failed probe is in the call's log, none is an attempt


def test_audit_17_held_calls_wake_spread_over_the_window_not_in_one_second(call, bot):
    class OpenUntil:
        def __init__(self, until: Any) -> None:
            self.until = until

        def held_until(self, key: GateKey) -> Any:
            return None

        def send(self, key: GateKey, rate: Any, send: Any) -> Any:
            return HeldBack("circuit_open", self.until)

    wakes = []
    for jitter in (0.0, 0.5, 0.99):
        world = World(call, bot, OK)
        world.deps.jitter = lambda j=jitter: j
        world.deps.gate = OpenUntil(world.clock.now + timedelta(seconds=60))
        push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
        [message] = [m for m in world.queue.take() if m.message["kind"] == "attempt"]
        wakes.append(round(message.delay_seconds))
    assert wakes[0] < wakes[1] < wakes[2]
    assert wakes[0] >= 60


def test_a_state_save_that_fails_after_the_answer_rides_the_queue_and_is_applied_without_sending(call, bot):
    class ThrottledOnce(InMemoryDelivery):
        failures = 1

        def save(self, call_id: str, claim_id: str | None, update: Any, now: Any) -> bool:
            if self.failures:
                self.failures -= 1
                raise StorageError("ThrottlingException")
            return super().save(call_id, claim_id, update, now)

    world = World(call, bot, DOWN, OK)
    world.deps.state = ThrottledOnce()
    assert push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1").outcome == "record_deferred"
    assert len(world.crm.requests) == 1
    world.drain()  # the record message saves the state, then wakes the call for attempt 2
    assert len(world.crm.requests) == 2
    assert post_call_push_entries(world) == [(1, "rejected"), (2, "ok")]


# --- the audit's other findings at the core ------------------------------------------------------------


def test_audit_9_a_header_value_rendered_from_call_data_is_scrubbed_from_the_crms_echo(call, bot):
    class EchoCrm(ScriptedCrm):
        def send(self, request: Any, deadline: Any = None) -> SendOutcome:
            self.requests.append(request)
            return SendOutcome(401, "invalid key " + request.headers["X-Api-Key"], None, 1, 3, "http_status")

    call.setdefault("crm_data", {})["api_key"] = "sk_live_per_customer_98765"
    bot["post_call_push"]["headers"] = {"X-Api-Key": "{{crm.api_key}}"}
    world = World(call, bot)
    world.crm = EchoCrm()
    world.deps.crm = world.crm
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert world.crm.requests[0].headers["X-Api-Key"] == "sk_live_per_customer_98765"
    assert "sk_live_per_customer_98765" not in repr([world.result, world.stored["integration_log"]])
    assert world.result["response_body"] == "invalid key ***"


def test_audit_8_the_crms_body_is_scrubbed_before_it_is_cut_to_size(call, bot):
    token = bot["post_call_push"]["token"]
    page = "<html>" + "x" * 1960 + " Authorization: " + token + " ...</html>"
    world = World(call, bot, SendOutcome(400, page, None, 1, 3, "http_status"))
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    stored = world.result["response_body"]
    assert len(stored) <= 2000
    assert "Authorization: ***" in stored
    assert "sk_live" not in stored  # no part of the token survives the cut


def test_audit_15_a_rotated_credential_is_read_again_and_resent_once_within_the_attempt(call, bot):
    class RotatingStore:
        """The store holds the new key; this container's cache still has the old one."""

        def __init__(self) -> None:
            self.fresh_reads = 0

        def resolve(self, ref: Any, *, fresh: bool = False) -> str:
            if fresh:
                self.fresh_reads += 1
                return "Bearer new-key-0001"
            return "Bearer old-key-0001"

    class KeyCheckingCrm(ScriptedCrm):
        def send(self, request: Any, deadline: Any = None) -> SendOutcome:
            self.requests.append(request)
            if request.headers["Authorization"] == "Bearer new-key-0001":
                return OK
            return SendOutcome(401, "unknown key", None, 1, 3, "http_status")

    bot["post_call_push"]["token"] = {"secret": f"post-call-push/{bot['bot_id']}/crm", "key": "token"}
    world = World(call, bot)
    world.crm = KeyCheckingCrm()
    world.deps.crm = world.crm
    store = RotatingStore()
    world.deps.secrets = store
    world.deps.secrets_name_prefix = "post-call-push/"
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")
    assert [r.headers["Authorization"] for r in world.crm.requests] == ["Bearer old-key-0001", "Bearer new-key-0001"]
    assert store.fresh_reads == 1
    assert (world.result["status"], world.result["attempts"]) == ("ok", 1)  # one attempt, two requests


def test_audit_18_a_rate_limit_below_one_an_hour_is_invalid_config(bot):
    from crm_push.config import load_bot_config

    bot["post_call_push"]["rate_limit_per_second"] = 1e-9
    loaded = load_bot_config(bot, bot["bot_id"])
    assert loaded.push is None
    assert "rate_limit_per_second" in (loaded.push_error or "")
    bot["post_call_push"]["rate_limit_per_second"] = 1 / 3600
    assert load_bot_config(bot, bot["bot_id"]).push is not None


def test_audit_19_each_logged_attempt_names_the_url_it_really_went_to(call, bot):
    world = World(call, bot, DOWN, DOWN, OK)
    push_call(world.call_id, world.deps, call_doc=call, trigger="stream:1")  # attempts 1 and 2, to the old url
    world.deps.bots.bots[bot["bot_id"]]["post_call_push"]["url"] = "https://crm-new.example.com/api/v2/call-outcomes"
    world.drain()
    urls = [e["url"] for e in world.stored["integration_log"] if e["type"] == "post_call_push"]
    assert urls == [
        "https://crm.example.com/api/v2/call-outcomes",
        "https://crm.example.com/api/v2/call-outcomes",
        "https://crm-new.example.com/api/v2/call-outcomes",
    ]


def test_audit_20_pending_entries_keep_a_short_body_so_the_state_item_stays_small():
    from crm_push.adapters.state import PENDING_BODY_CHARS, compact_entry, expand_entry

    entry = {"type": "post_call_push", "status": "rejected", "http_status": 503, "response_body": "<html>" * 400,
             "url": "https://crm.example.com/x", "method": "POST", "attempts": 2, "pushed_at": "t"}  # fmt: skip
    kept = compact_entry(entry)
    assert len(kept["b"]) == PENDING_BODY_CHARS
    assert expand_entry(kept)["url"] == entry["url"]  # its own url, not the one of the final write


def test_audit_12_no_attempt_starts_without_time_to_record_its_answer_at_the_sdks_worst():
    # What botocore makes of the config: a bare max_attempts would mean retries *after* the first try.
    import boto3

    from crm_push.wiring import _AWS_CONFIG, write_back_reserve_seconds

    boto3.session.Session().client("dynamodb", region_name="us-east-1", config=_AWS_CONFIG)
    tries = _AWS_CONFIG.retries["total_max_attempts"]
    one_request = tries * (_AWS_CONFIG.connect_timeout + _AWS_CONFIG.read_timeout)
    # the call item, the state, and a record message when either fails
    assert write_back_reserve_seconds() >= 3 * one_request
