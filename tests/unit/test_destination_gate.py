"""The destination gate (contract §10): Powertools' real circuit breaker and our rate limit, on in-memory state.

The breaker is Powertools' own handler over an in-memory persistence layer
that keeps Powertools' record semantics (the conditional probe election
included), so these tests pin what the gate asks of the breaker: which
outcomes count, when a held call comes back, what is counted as a metric.
The DynamoDB side is tested in tests/integration/test_circuit_breaker.py and
test_rate_limit.py.

Powertools times a circuit with the wall clock in whole seconds, so the
recovery tests use a 1 s recovery timeout and really wait for it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from aws_lambda_powertools.utilities.circuit_breaker import CircuitState
from aws_lambda_powertools.utilities.circuit_breaker.persistence import CircuitStateRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_push.adapters.destination_gate import (
    MAX_RATE_WINDOW_SECONDS,
    CircuitAndRateGate,
    CircuitSettings,
    circuit_name,
    rate_window,
    verdict_on,
)
from crm_push.config import MIN_RATE_LIMIT_PER_SECOND
from crm_push.ports import HeldBack, SendOutcome
from tests.unit.gate_fakes import (
    BAD_REQUEST,
    DOWN,
    HUNG,
    NOT_TRIED,
    OK,
    FakeClock,
    MemoryCircuits,
    MemoryRateCounter,
    ScriptedSends,
    gate_key,
)


def make_gate(
    *,
    recovery: int = 60,
    probe_answer: float = 15.0,
    clock: FakeClock | None = None,
    sleep: Callable[[float], None] | None = None,
    circuits: MemoryCircuits | None = None,
    rates: MemoryRateCounter | None = None,
) -> tuple[CircuitAndRateGate, MemoryCircuits, MemoryRateCounter, Counter[str]]:
    metrics: Counter[str] = Counter()
    circuits = circuits or MemoryCircuits()
    rates = rates or MemoryRateCounter()
    gate = CircuitAndRateGate(
        circuits,
        rates,
        settings=CircuitSettings(recovery_timeout_seconds=recovery, probe_answer_seconds=probe_answer),
        count_metric=lambda name: metrics.update([name]),
        clock=clock,
        sleep=sleep or (clock.advance if clock is not None else time.sleep),
    )
    return gate, circuits, rates, metrics


def wait_for_probe_time(circuits: MemoryCircuits, name: str, recovery: int) -> None:
    opened_at = circuits.records[name].opened_at
    assert opened_at is not None
    time.sleep(max(0.0, opened_at + recovery - time.time()) + 0.05)


# --- what counts against a destination ------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "verdict"),
    [
        (OK, "healthy"),
        (BAD_REQUEST, "healthy"),  # the CRM is working: it read the request and said no
        (SendOutcome(404, "", None, 1, 5, "http_status"), "healthy"),
        (SendOutcome(410, "", None, 1, 5, "http_status"), "healthy"),
        (DOWN, "failure"),
        (SendOutcome(500, "", None, 1, 5, "http_status"), "failure"),
        (SendOutcome(429, "", None, 1, 5, "http_status", retry_after="30"), "failure"),
        (SendOutcome(408, "", None, 1, 5, "http_status"), "failure"),
        # a spent quota is the CRM answering for one tenant, not failing (contract §14)
        (SendOutcome(429, "", None, 1, 5, "quota", retry_after="3600"), "healthy"),
        (SendOutcome(503, "", None, 1, 5, "quota", retry_after="7200"), "healthy"),
        (SendOutcome(200, '{"success":false}', None, 1, 5, "crm_rejected"), "healthy"),
        (HUNG, "failure"),
        (SendOutcome(None, "", "could not connect: connection refused", 1, 2, "connection"), "failure"),
        (SendOutcome(None, "", "could not resolve host crm.example.com", 1, 2, "dns"), "failure"),
        (SendOutcome(None, "", "TLS failed: certificate verify failed", 1, 2, "tls"), "failure"),
        (NOT_TRIED, "no_verdict"),
        (SendOutcome(None, "", "destination refused", 0, 0, "destination_refused"), "no_verdict"),
        (SendOutcome(None, "", "internal error while sending: KeyError", 1, 0, "internal"), "no_verdict"),
        # the token endpoint's answer, or our own config and secrets, say nothing about the CRM
        (SendOutcome(503, "", "token endpoint answered 503", 1, 5, "auth"), "no_verdict"),
        (SendOutcome(400, "", "invalid_client", 1, 5, "auth"), "no_verdict"),
        (SendOutcome(None, "", "secret unavailable", 1, 0, "secret"), "no_verdict"),
        (SendOutcome(None, "", "unresolved template in url", 1, 0, "config"), "no_verdict"),
    ],
)
def test_what_an_attempt_says_about_the_destination(outcome: SendOutcome, verdict: str) -> None:
    assert verdict_on(outcome) == verdict


# --- the circuit ------------------------------------------------------------------------------------


def test_five_consecutive_failures_open_the_circuit_and_hold_calls_until_the_probe_time() -> None:
    gate, circuits, _, metrics = make_gate()
    where = gate_key()
    crm = ScriptedSends(HUNG)
    for _ in range(5):
        assert gate.send(where, None, crm) == HUNG
    held = gate.send(where, None, crm)
    assert crm.sent == 5
    assert isinstance(held, HeldBack)
    assert held.reason == "circuit_open"
    record = circuits.records[circuit_name(where)]
    assert (record.state, record.failure_count) == (CircuitState.OPEN, 5)
    assert record.opened_at is not None
    assert held.until == datetime.fromtimestamp(record.opened_at + 60, UTC)
    assert metrics == Counter({"CircuitOpened": 1, "CallsHeldByOpenCircuit": 1})


def test_a_crm_that_answers_4xx_is_working_and_breaks_the_streak() -> None:
    gate, circuits, _, metrics = make_gate()
    where = gate_key()
    crm = ScriptedSends(*[DOWN] * 4, BAD_REQUEST, *[DOWN] * 4, *[BAD_REQUEST] * 20)
    outcomes = [gate.send(where, None, crm) for _ in range(29)]
    assert crm.sent == 29
    assert not any(isinstance(o, HeldBack) for o in outcomes)
    assert circuit_name(where) not in circuits.records  # nothing written: the healthy path is write-free
    assert metrics == Counter()


def test_an_attempt_not_made_neither_counts_nor_breaks_the_streak() -> None:
    gate, circuits, _, _ = make_gate()
    where = gate_key()
    crm = ScriptedSends(DOWN, DOWN, DOWN, DOWN, NOT_TRIED, DOWN)
    outcomes = [gate.send(where, None, crm) for _ in range(6)]
    assert outcomes[4] == NOT_TRIED
    assert circuits.records[circuit_name(where)].state == CircuitState.OPEN


def test_requests_in_flight_when_the_circuit_opens_do_not_open_it_again() -> None:
    # A batch has up to 16 requests in flight at once: 5 fail and open the circuit, and the
    # other 7 fail after it opened. They were sent, so they come back as what they were, but
    # they must not count as fresh failures: that would reopen the circuit and report it twice.
    gate, circuits, _, metrics = make_gate()
    where = gate_key()
    name = circuit_name(where)
    in_flight = threading.Barrier(12)
    opened = threading.Event()
    first_five = threading.Semaphore(5)

    def hanging_crm() -> SendOutcome:
        in_flight.wait(timeout=10)
        if not first_five.acquire(blocking=False):
            opened.wait(timeout=10)
        return HUNG

    results: list[SendOutcome | HeldBack] = []
    lock = threading.Lock()

    def worker() -> None:
        outcome = gate.send(where, None, hanging_crm)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and circuits.records.get(name) is None:
        time.sleep(0.01)
    opened.set()
    for thread in threads:
        thread.join(timeout=10)

    assert results == [HUNG] * 12
    assert circuits.records[name].state == CircuitState.OPEN
    assert metrics["CircuitOpened"] == 1


def test_after_the_recovery_timeout_one_call_probes_and_its_success_closes_the_circuit() -> None:
    gate, circuits, _, metrics = make_gate(recovery=1, probe_answer=2.0)
    where = gate_key()
    name = circuit_name(where)
    for _ in range(5):
        gate.send(where, None, lambda: DOWN)
    wait_for_probe_time(circuits, name, 1)

    # Four calls arrive at the probe time; the first one in is the probe and hangs a while.
    probe_sent = threading.Event()
    release_probe = threading.Event()
    sent: list[str] = []

    def slow_recovered_crm() -> SendOutcome:
        sent.append("probe")
        probe_sent.set()
        release_probe.wait(timeout=10)
        return OK

    probe_result: list[SendOutcome | HeldBack] = []
    probe = threading.Thread(target=lambda: probe_result.append(gate.send(where, None, slow_recovered_crm)))
    probe.start()
    assert probe_sent.wait(timeout=10)
    assert circuits.records[name].state == CircuitState.HALF_OPEN
    others = [gate.send(where, None, slow_recovered_crm) for _ in range(3)]
    release_probe.set()
    probe.join(timeout=10)

    assert sent == ["probe"]
    assert probe_result == [OK]
    for held in others:
        assert isinstance(held, HeldBack)
        assert held.reason == "circuit_open"
        # Back once the probe has answered, not at once (that would spin) and not a minute later.
        assert 1.0 <= (held.until - datetime.now(UTC)).total_seconds() <= 2.0
    assert circuits.records[name].state == CircuitState.CLOSED
    assert gate.send(where, None, lambda: OK) == OK
    assert metrics["CircuitOpened"] == 1
    assert metrics["CircuitClosed"] == 1
    assert metrics["CallsHeldByOpenCircuit"] == 3


def test_a_failed_probe_reopens_the_circuit_for_another_recovery_timeout() -> None:
    gate, circuits, _, metrics = make_gate(recovery=1)
    where = gate_key()
    name = circuit_name(where)
    for _ in range(5):
        gate.send(where, None, lambda: HUNG)
    first_opened = circuits.records[name].opened_at
    wait_for_probe_time(circuits, name, 1)

    assert gate.send(where, None, lambda: HUNG) == HUNG  # the probe: sent, and failed
    record = circuits.records[name]
    assert record.state == CircuitState.OPEN
    assert record.opened_at is not None
    assert first_opened is not None
    assert record.opened_at > first_opened
    held = gate.send(where, None, lambda: OK)
    assert isinstance(held, HeldBack)
    assert held.until == datetime.fromtimestamp(record.opened_at + 1, UTC)
    assert metrics["CircuitReopened"] == 1


def test_a_container_that_did_not_see_the_failures_holds_back_once_its_cached_state_expires() -> None:
    # Two containers: separate persistence caches over one store (the state table).
    shared: dict[str, CircuitStateRecord] = {}
    first, _, _, _ = make_gate(circuits=MemoryCircuits(shared))
    second, _, _, _ = make_gate(circuits=MemoryCircuits(shared))
    where = gate_key()
    assert second.send(where, None, lambda: OK) == OK  # caches "closed" for up to 5 s
    for _ in range(5):
        first.send(where, None, lambda: HUNG)
    fresh, _, _, _ = make_gate(circuits=MemoryCircuits(shared))
    crm = ScriptedSends(OK)
    assert isinstance(fresh.send(where, None, crm), HeldBack)  # a cold container reads through
    assert crm.sent == 0


# --- the rate limit ---------------------------------------------------------------------------------


def at(second: int, microsecond: int = 0) -> datetime:
    return datetime(2026, 11, 26, 10, 0, second, microsecond, tzinfo=UTC)


@pytest.mark.parametrize(
    ("limit", "seconds", "capacity"),
    [
        (5, 1, 5),
        (2.5, 1, 2),
        (1, 1, 1),
        (300, 1, 300),
        (0.5, 2, 1),
        (0.3, 4, 1),
        (1 / 60, 60, 1),
        (1 / 49, 49, 1),  # 1/(1/49) is 49.00000000000001 in floating point: still a 49 s window
        (MIN_RATE_LIMIT_PER_SECOND, 3600, 1),
    ],
)
def test_a_limit_becomes_whole_requests_per_calendar_window(limit: float, seconds: int, capacity: int) -> None:
    now = at(7, 300_000)
    window = rate_window(limit, now)
    assert (window.seconds, window.capacity) == (seconds, capacity)
    assert window.start % seconds == 0
    assert window.start <= now.timestamp() < window.start + seconds


@settings(max_examples=300, deadline=None)
@given(
    limit=st.floats(min_value=MIN_RATE_LIMIT_PER_SECOND, max_value=10_000, allow_nan=False),
    epoch=st.floats(min_value=1.7e9, max_value=2.2e9, allow_nan=False),
)
def test_no_limit_the_config_allows_makes_a_window_over_an_hour_or_lets_more_through(
    limit: float, epoch: float
) -> None:
    now = datetime.fromtimestamp(epoch, UTC)
    window = rate_window(limit, now)
    assert 1 <= window.seconds <= MAX_RATE_WINDOW_SECONDS == 3600
    assert window.capacity >= 1
    assert window.capacity / window.seconds <= limit * (1 + 1e-9)  # never more than the limit
    assert window.start <= now.timestamp() < window.start + window.seconds


@pytest.mark.parametrize("limit", [1 / 3601, 1e-9, 5e-324])
def test_a_limit_below_the_floor_still_holds_a_call_for_an_hour_at_most(limit: float) -> None:
    # Config refuses these (MIN_RATE_LIMIT_PER_SECOND); were one to get past it, a call waits an hour, not years.
    window = rate_window(limit, at(7))
    assert (window.seconds, window.capacity) == (3600, 1)
    assert window.end - at(7) <= timedelta(hours=1)


@pytest.mark.parametrize("limit", [0, -1, float("nan"), float("inf")])
def test_a_limit_that_is_not_a_positive_number_is_refused(limit: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        rate_window(limit, at(7))


def test_calls_in_one_second_are_spread_over_its_first_800_ms_not_sent_in_a_burst() -> None:
    clock = FakeClock(at(7, 100_000))
    gate, _, _, _ = make_gate(clock=clock)
    where = gate_key()
    sent_at: list[datetime] = []

    def crm() -> SendOutcome:
        sent_at.append(clock.now)
        return OK

    assert [gate.send(where, 5, crm) for _ in range(5)] == [OK] * 5
    # the 1st goes at once; the n-th not before (n-1)/5 of the second's first 800 ms
    assert sent_at == [at(7, 100_000), at(7, 160_000), at(7, 320_000), at(7, 480_000), at(7, 640_000)]


def test_over_the_limit_a_call_is_held_until_the_next_second_and_spends_no_slot() -> None:
    clock = FakeClock(at(7, 100_000))
    gate, _, rates, metrics = make_gate(clock=clock)
    where = gate_key()
    crm = ScriptedSends(OK)
    outcomes = [gate.send(where, 5, crm) for _ in range(7)]
    assert outcomes[:5] == [OK] * 5
    assert outcomes[5:] == [HeldBack("rate_limited", at(8))] * 2
    assert crm.sent == 5
    assert metrics["RateLimited"] == 2
    clock.now = at(8, 500_000)
    assert gate.send(where, 5, crm) == OK
    assert rates.counts == Counter(
        {
            f"rate#tenant-a#{where.destination}#{int(at(7).timestamp())}": 5,
            f"rate#tenant-a#{where.destination}#{int(at(8).timestamp())}": 1,
        }
    )


def test_in_the_last_200_ms_of_a_second_a_call_waits_for_the_next_so_it_arrives_in_the_second_it_was_counted() -> None:
    clock = FakeClock(at(7, 850_000))
    gate, _, rates, _ = make_gate(clock=clock)
    crm = ScriptedSends(OK)
    assert gate.send(gate_key(), 5, crm) == HeldBack("rate_limited", at(8))
    assert (crm.sent, rates.takes) == (0, 0)


def test_a_call_held_up_past_its_slot_is_not_sent_late_into_the_next_second() -> None:
    # A starved thread wakes 0.7 s after its slot: sending now could land on top of the next second's calls.
    clock = FakeClock(at(7, 100_000))
    gate, _, _, _ = make_gate(clock=clock, sleep=lambda seconds: clock.advance(seconds + 0.7))
    where = gate_key()
    crm = ScriptedSends(OK)
    assert gate.send(where, 5, crm) == OK  # the first slot needs no wait
    assert gate.send(where, 5, crm) == HeldBack("rate_limited", at(8))
    assert crm.sent == 1


def test_each_destination_has_its_own_limit() -> None:
    clock = FakeClock(at(7, 100_000))
    gate, _, _, _ = make_gate(clock=clock)
    one, other = gate_key(), gate_key()
    crm = ScriptedSends(OK)
    assert [gate.send(one, 1, crm), gate.send(other, 1, crm)] == [OK, OK]
    assert isinstance(gate.send(one, 1, crm), HeldBack)


def test_below_one_a_second_a_call_over_the_limit_is_held_for_the_rest_of_its_window() -> None:
    clock = FakeClock(at(8, 100_000))  # 10:00:08 starts a 2 s window
    gate, _, _, _ = make_gate(clock=clock)
    where = gate_key()
    assert gate.send(where, 0.5, lambda: OK) == OK
    clock.advance(1.0)
    assert gate.send(where, 0.5, lambda: OK) == HeldBack("rate_limited", at(10))


def test_an_open_circuit_holds_a_call_before_it_takes_a_rate_slot() -> None:
    gate, _, rates, _ = make_gate()
    where = gate_key()
    for _ in range(5):
        gate.send(where, None, lambda: HUNG)
    takes = rates.takes
    held = gate.send(where, 5, lambda: OK)
    assert isinstance(held, HeldBack)
    assert held.reason == "circuit_open"
    assert rates.takes == takes


def test_a_call_held_by_the_rate_limit_does_not_reset_the_failure_streak() -> None:
    # Were the rate limit checked inside the breaker, its hold would count as a success.
    clock = FakeClock(at(7, 100_000))
    gate, circuits, _, _ = make_gate(clock=clock)
    where = gate_key()
    for _ in range(4):
        assert gate.send(where, 4, lambda: DOWN) == DOWN
    assert isinstance(gate.send(where, 4, lambda: OK), HeldBack)  # the 5th in this second
    clock.now = at(8, 100_000)
    assert gate.send(where, 4, lambda: DOWN) == DOWN
    assert circuits.records[circuit_name(where)].state == CircuitState.OPEN


def test_an_unreachable_counter_holds_the_call_briefly_rather_than_risk_the_crm() -> None:
    clock = FakeClock(at(7, 100_000))
    rates = MemoryRateCounter()
    rates.down = True
    gate, _, _, _ = make_gate(clock=clock, rates=rates)
    crm = ScriptedSends(OK)
    assert gate.send(gate_key(), 5, crm) == HeldBack("rate_limited", clock.now + timedelta(seconds=5))
    assert crm.sent == 0


def test_without_a_limit_no_counter_is_touched() -> None:
    gate, _, rates, _ = make_gate()
    assert gate.send(gate_key(), None, lambda: OK) == OK
    assert rates.takes == 0
