"""The destination gate per (destination, scope) (contract §12): one tenant never holds back another.

Powertools' real circuit breaker over the in-memory persistence of
``gate_fakes``; the same behaviour on DynamoDB Local is in
tests/integration/test_gate_tenancy.py.
"""

from __future__ import annotations

import inspect
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from aws_lambda_powertools.utilities.circuit_breaker import CircuitState
from aws_lambda_powertools.utilities.circuit_breaker.persistence import CircuitStateRecord

from crm_push.adapters.destination_gate import (
    CircuitAndRateGate,
    CircuitSettings,
    circuit_name,
    held_by,
    key_of_circuit,
    rate_counter_key,
)
from crm_push.ports import DestinationGate, GateKey, HeldBack, SendOutcome
from tests.unit.gate_fakes import (
    DOWN,
    HUNG,
    OK,
    SLOW_DOWN,
    FakeClock,
    MemoryCircuits,
    MemoryRateCounter,
    ScriptedSends,
    fresh_destination,
)

SETTINGS = CircuitSettings()


def make_gate(
    clock: FakeClock | None = None, circuits: MemoryCircuits | None = None, sleep_moves_clock: bool = True
) -> tuple[CircuitAndRateGate, MemoryCircuits, MemoryRateCounter, Counter[str]]:
    metrics: Counter[str] = Counter()
    circuits = circuits or MemoryCircuits()
    rates = MemoryRateCounter()
    gate = CircuitAndRateGate(
        circuits,
        rates,
        settings=SETTINGS,
        count_metric=lambda name: metrics.update([name]),
        clock=clock,
        sleep=clock.advance if clock is not None and sleep_moves_clock else (lambda _seconds: None),
    )
    return gate, circuits, rates, metrics


def two_tenants() -> tuple[GateKey, GateKey]:
    """Two tenants of one SaaS CRM host."""
    host = fresh_destination()
    return GateKey(host, "tenant-a"), GateKey(host, "tenant-b")


def at(second: int, microsecond: int = 0) -> datetime:
    return datetime(2026, 12, 3, 10, 0, second, microsecond, tzinfo=UTC)


# --- names ------------------------------------------------------------------------------------------


def test_a_circuit_and_a_rate_counter_are_named_by_scope_then_destination() -> None:
    key = GateKey("https://api.hubapi.com:443", "tenant-a")
    assert circuit_name(key) == "circuit#tenant-a#https://api.hubapi.com:443"
    assert rate_counter_key(key, 1_764_756_000) == "rate#tenant-a#https://api.hubapi.com:443#1764756000"


@pytest.mark.parametrize("scope", ["tenant-a", "bot-7", "acme#eu", "a:b/c", "#", "https://x:1"])
def test_a_circuit_name_reads_back_as_its_key_whatever_the_scope_holds(scope: str) -> None:
    key = GateKey("https://crm.example.com:8443", scope)
    assert key_of_circuit(circuit_name(key)) == key


def test_scopes_that_share_a_prefix_have_different_circuits() -> None:
    # "acme" and "acme#eu" must never meet in one name, whatever the destination.
    names = {circuit_name(GateKey("https://crm.example.com:443", s)) for s in ("acme", "acme#eu", "acme#")}
    assert len(names) == 3


@pytest.mark.parametrize(
    "key", [GateKey("https://crm.example.com:443#x", "tenant-a"), GateKey("", "tenant-a"), GateKey("https://c:443", "")]
)
def test_a_key_that_could_not_be_read_back_is_refused(key: GateKey) -> None:
    with pytest.raises(ValueError, match="gate key"):
        circuit_name(key)


def test_the_gate_offers_exactly_the_ports_interface() -> None:
    gate: DestinationGate = make_gate()[0]  # mypy checks the protocol; the names below are what callers see
    public = {name for name, _ in inspect.getmembers(type(gate), inspect.isfunction) if not name.startswith("_")}
    assert public == {"send", "held_until"}
    assert list(inspect.signature(gate.send).parameters) == ["key", "rate_limit_per_second", "send"]
    assert list(inspect.signature(gate.held_until).parameters) == ["key"]


# --- circuits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", [HUNG, DOWN, SLOW_DOWN], ids=["hang", "5xx", "429"])
def test_one_tenants_failures_open_only_its_own_circuit(failing: SendOutcome) -> None:
    gate, circuits, _, metrics = make_gate()
    a, b = two_tenants()
    a_crm, b_crm = ScriptedSends(failing), ScriptedSends(OK)

    # tenant A's calls fail five times in a row (its flow is broken, or its own quota says 429)
    assert [gate.send(a, None, a_crm) for _ in range(5)] == [failing] * 5
    held = gate.send(a, None, a_crm)

    assert isinstance(held, HeldBack)
    assert held.reason == "circuit_open"
    assert a_crm.sent == 5
    # and tenant B's calls to the same host still go, every one of them
    assert [gate.send(b, None, b_crm) for _ in range(20)] == [OK] * 20
    assert b_crm.sent == 20
    assert set(circuits.records) == {circuit_name(a)}
    assert circuits.records[circuit_name(a)].state == CircuitState.OPEN
    assert gate.held_until(b) is None
    assert metrics["CircuitOpened"] == 1


def test_a_429_storm_interleaved_with_another_tenants_successes_still_opens_the_stormy_tenants_circuit() -> None:
    # One host's circuit would see A's 429s broken up by B's 200s and never open; per scope, A's streak is A's.
    gate, circuits, _, _ = make_gate()
    a, b = two_tenants()
    for _ in range(5):
        assert gate.send(a, None, lambda: SLOW_DOWN) == SLOW_DOWN
        assert gate.send(b, None, lambda: OK) == OK
    assert circuits.records[circuit_name(a)].state == CircuitState.OPEN
    assert circuit_name(b) not in circuits.records


def test_a_spent_quota_opens_no_circuit() -> None:
    # Contract §14: a quota is the CRM answering for one tenant; the core parks those calls itself.
    gate, circuits, _, _ = make_gate()
    a, _ = two_tenants()
    quota = SendOutcome(429, "daily limit", None, 1, 4, "quota", retry_after="43200")
    assert [gate.send(a, None, lambda: quota) for _ in range(10)] == [quota] * 10
    assert circuits.records == {}


def test_a_quota_answer_breaks_a_failure_streak_like_any_answer() -> None:
    gate, circuits, _, _ = make_gate()
    a, _ = two_tenants()
    quota = SendOutcome(429, "daily limit", None, 1, 4, "quota", retry_after="43200")
    crm = ScriptedSends(DOWN, DOWN, DOWN, DOWN, quota, DOWN, DOWN, DOWN, DOWN)
    assert not any(isinstance(gate.send(a, None, crm), HeldBack) for _ in range(9))
    assert circuits.records == {}


# --- rate limits ------------------------------------------------------------------------------------


def test_each_tenant_gets_its_own_limit_on_one_host_whatever_the_other_sends() -> None:
    # A allows 10/s and B 2/s on the same host. A sends far more than its limit every second.
    clock = FakeClock(at(7, 100_000))
    gate, _, rates, _ = make_gate(clock, sleep_moves_clock=False)
    a, b = two_tenants()
    sent: Counter[tuple[str, int]] = Counter()

    def crm(key: GateKey) -> SendOutcome:
        sent[(key.scope, int(clock.now.timestamp()))] += 1
        return OK

    for second in (7, 8, 9):
        clock.now = at(second, 100_000)
        for _ in range(30):
            gate.send(a, 10, lambda: crm(a))
        for _ in range(5):
            gate.send(b, 2, lambda: crm(b))

    for second in (7, 8, 9):
        epoch = int(at(second).timestamp())
        assert sent[("tenant-a", epoch)] == 10
        assert sent[("tenant-b", epoch)] == 2
        assert rates.counts[f"rate#tenant-a#{a.destination}#{epoch}"] == 10
        assert rates.counts[f"rate#tenant-b#{b.destination}#{epoch}"] == 2


def test_a_tenant_first_in_the_second_does_not_take_another_tenants_slots() -> None:
    clock = FakeClock(at(7, 100_000))
    gate, _, _, _ = make_gate(clock, sleep_moves_clock=False)
    a, b = two_tenants()
    assert [gate.send(b, 2, lambda: OK) for _ in range(3)] == [OK, OK, HeldBack("rate_limited", at(8))]
    assert [gate.send(a, 10, lambda: OK) for _ in range(10)] == [OK] * 10


def test_calls_held_by_one_tenants_open_circuit_take_no_rate_slot_and_the_other_tenant_still_sends() -> None:
    gate, _, rates, _ = make_gate(FakeClock(at(7, 100_000)), sleep_moves_clock=False)
    a, b = two_tenants()
    for _ in range(5):
        gate.send(a, None, lambda: HUNG)
    takes = rates.takes
    assert isinstance(gate.send(a, 5, lambda: OK), HeldBack)
    assert rates.takes == takes
    assert gate.send(b, 5, lambda: OK) == OK
    assert rates.takes == takes + 1


# --- held_until -------------------------------------------------------------------------------------


def record(key: GateKey, state: CircuitState, **fields: int) -> CircuitStateRecord:
    return CircuitStateRecord(name=circuit_name(key), state=state, **fields)  # type: ignore[arg-type]


def test_held_until_is_none_for_a_key_that_never_failed_and_reads_the_store_once_per_cache_age() -> None:
    gate, circuits, _, metrics = make_gate()
    a, _ = two_tenants()
    assert [gate.held_until(a) for _ in range(50)] == [None] * 50
    assert circuits.reads == 1  # a cheap cached read, fit to ask before every call
    assert metrics == Counter()


def test_held_until_of_an_open_circuit_is_its_probe_time_and_matches_what_send_says() -> None:
    now = at(30)
    clock = FakeClock(now)
    a, b = two_tenants()
    opened_at = int(now.timestamp()) - 20
    circuits = MemoryCircuits({circuit_name(a): record(a, CircuitState.OPEN, opened_at=opened_at, failure_count=5)})
    gate, _, _, metrics = make_gate(clock, circuits)

    probe_at = datetime.fromtimestamp(opened_at + SETTINGS.recovery_timeout_seconds, UTC)
    assert gate.held_until(a) == probe_at
    assert gate.send(a, None, lambda: OK) == HeldBack("circuit_open", probe_at)
    assert gate.held_until(b) is None  # the other tenant on the same host
    assert metrics["CallsHeldByOpenCircuit"] == 1  # the call send held; asking holds nothing


def test_held_until_is_none_once_the_probe_is_due_so_the_next_call_can_be_the_probe() -> None:
    now = at(30)
    a, _ = two_tenants()
    opened_at = int(now.timestamp()) - SETTINGS.recovery_timeout_seconds
    circuits = MemoryCircuits({circuit_name(a): record(a, CircuitState.OPEN, opened_at=opened_at)})
    gate, _, _, _ = make_gate(FakeClock(now), circuits)
    assert gate.held_until(a) is None


def test_held_until_while_a_probe_is_in_flight_is_a_short_wait_for_its_answer() -> None:
    now = at(30)
    a, _ = two_tenants()
    lease = int(now.timestamp()) + 40
    probing = record(a, CircuitState.HALF_OPEN, opened_at=int(now.timestamp()) - 80, probe_lease_expiry=lease)
    circuits = MemoryCircuits({circuit_name(a): probing})
    gate, _, _, _ = make_gate(FakeClock(now), circuits)
    assert gate.held_until(a) == now + timedelta(seconds=SETTINGS.probe_answer_seconds)


def test_held_until_is_none_once_the_probes_lease_is_over_so_another_call_can_take_over() -> None:
    now = at(30)
    a, _ = two_tenants()
    stale = record(
        a, CircuitState.HALF_OPEN, opened_at=int(now.timestamp()) - 200, probe_lease_expiry=int(now.timestamp())
    )
    gate, _, _, _ = make_gate(FakeClock(now), MemoryCircuits({circuit_name(a): stale}))
    assert gate.held_until(a) is None


@pytest.mark.parametrize(
    ("state", "fields", "held"),
    [
        (CircuitState.CLOSED, {}, None),
        (CircuitState.OPEN, {"opened_at": 100}, 160),
        (CircuitState.OPEN, {"opened_at": 40}, None),
        (CircuitState.HALF_OPEN, {"opened_at": 30, "probe_lease_expiry": 150}, 115),
        (CircuitState.HALF_OPEN, {"opened_at": 30, "probe_lease_expiry": 100}, None),
        (CircuitState.HALF_OPEN, {"opened_at": 30}, 115),
    ],
)
def test_when_a_circuit_lets_calls_go(state: CircuitState, fields: dict[str, int], held: int | None) -> None:
    now = datetime.fromtimestamp(100, UTC)
    until = held_by(CircuitStateRecord(name="circuit#t#https://c:443", state=state, **fields), now, SETTINGS)  # type: ignore[arg-type]
    assert until == (None if held is None else datetime.fromtimestamp(held, UTC))
