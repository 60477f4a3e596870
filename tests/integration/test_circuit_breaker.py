"""The circuit breaker per (destination, scope) (contract §10, §12): the real handler, DynamoDB Local, a real CRM.

The CRM is ``LocalCrm`` made to hang (it accepts the request and never
answers in time), to refuse with a 4xx, or to recover. The handler is the
real one, wired by ``build_deps``; only the numbers are shortened so the test
takes seconds: a 1 s attempt instead of 10 s, a 5 s recovery timeout
instead of 60 s. The retry queue is the moto queue, read and fed back to the
handler as SQS events in real time (messages become visible when due).
Two tenants on one host are in test_gate_tenancy.py (the gate on DynamoDB Local).
"""

from __future__ import annotations

import importlib
import json
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_push.adapters.crm_http import CONNECT_TIMEOUT_SECONDS, CrmHttpSender
from crm_push.adapters.destination_gate import (
    CircuitSettings,
    circuit_name,
    list_circuits,
    read_circuit,
    state_table_gate,
    verdict_on,
)
from crm_push.clock import iso_utc
from crm_push.flow import HELD_WAKE_SPREAD_SECONDS
from crm_push.ports import GateKey, PushRequest
from crm_push.variables import parse_utc_timestamp
from scripts.local_crm import CrmAnswer, ReceivedRequest
from scripts.local_stack import MetricCounter, small_calls
from tests.conftest import LambdaContextStub, Stack, insert_event
from tests.retry_queue import queued

CONCURRENCY = 2
ATTEMPT_SECONDS = 1.0
RECOVERY_SECONDS = 5
SETTINGS = CircuitSettings(recovery_timeout_seconds=RECOVERY_SECONDS, probe_answer_seconds=1.0)


@dataclass(frozen=True)
class Arrival:
    call_id: str
    at: float
    answered: int | None  # None: left hanging
    circuit: str  # the circuit's state in the table when the request arrived


def gate_key(stack: Stack, bot: dict[str, Any]) -> GateKey:
    """The circuit the sample bot's pushes go through: LocalCrm's url is scheme://host:port, the destination itself."""
    return GateKey(stack.crm.url, str(bot.get("tenant_id") or bot["bot_id"]))


class ScriptedCrm:
    """The CRM's behaviour, switchable mid-test: ``hang``, or answer ``status`` after ``delay`` seconds."""

    def __init__(self, stack: Stack, key: GateKey) -> None:
        self.stack = stack
        self.hang = True
        self.status = 200
        self.delay = 0.0
        self.arrivals: list[Arrival] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._circuit_key = {"pk": {"S": circuit_name(key)}}

    def circuit_state(self) -> str:
        item = self.stack.dynamodb.get_item(
            TableName=self.stack.state_table, Key=self._circuit_key, ConsistentRead=True
        ).get("Item")
        return str(item["state"]["S"]) if item else "none"

    def __call__(self, request: ReceivedRequest) -> CrmAnswer:
        hang, status, delay = self.hang, self.status, self.delay
        arrival = Arrival(
            request.headers.get("Idempotency-Key", ""), time.time(), None if hang else status, self.circuit_state()
        )
        with self._lock:
            self.arrivals.append(arrival)
        if hang:
            self.release.wait(timeout=60)  # long after the push gave up on it
            return CrmAnswer(503)
        return CrmAnswer(status, delay_seconds=delay)

    def answered(self, status: int) -> Counter[str]:
        return Counter(a.call_id for a in self.arrivals if a.answered == status)


@pytest.fixture
def scripted_crm(stack: Stack, sample_bot: dict[str, Any]) -> Iterator[ScriptedCrm]:
    scripted = ScriptedCrm(stack, gate_key(stack, sample_bot))
    stack.crm.responder = scripted
    try:
        yield scripted
    finally:
        scripted.release.set()


def protected_handler(
    stack: Stack, metrics: MetricCounter, monkeypatch: pytest.MonkeyPatch, settings: CircuitSettings = SETTINGS
) -> Callable[..., Any]:
    """A fresh copy of the real handler (one container), with a short attempt and recovery timeout."""
    monkeypatch.setenv("PUSH_CONCURRENCY", str(CONCURRENCY))
    sys.modules.pop("app", None)
    app: Any = importlib.import_module("app")
    deps, _ = app._runtime()
    app._deps = replace(
        deps,
        crm=CrmHttpSender(pool_size=CONCURRENCY, allow_private_networks=True, total_timeout=ATTEMPT_SECONDS),
        gate=state_table_gate(stack.dynamodb, stack.state_table, settings=settings, count_metric=metrics),
    )

    def invoke(event: dict[str, Any]) -> Any:
        return app.lambda_handler(event, LambdaContextStub())

    return invoke


def seed(stack: Stack, bot: dict[str, Any], count: int, prefix: str) -> list[str]:
    # The first retry (12 s, less 10 % jitter) is past the 10 s a call may wait in its invocation:
    # it rides the queue, so every call of a batch is tried (or held) once and the batch ends.
    bot["post_call_push"]["retry_schedule_seconds"] = [12, 2, 2]
    stack.put_bot(bot)
    calls = small_calls(bot["bot_id"], count, f"{prefix}-{stack.calls_table[-6:]}")
    for call in calls:
        stack.put_call(call)
    return [c["call_id"] for c in calls]


def results(stack: Stack, call_ids: list[str]) -> dict[str, dict[str, Any]]:
    return {call_id: stack.get_call(call_id).get("post_call_push_result", {}) for call_id in call_ids}


def deliver_retry_queue(stack: Stack, invoke: Callable[..., Any], done: Callable[[], bool], seconds: float) -> None:
    """Feed due retry messages to the handler, as Lambda's SQS trigger would, until ``done()``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the retry queue did not deliver every call in time"
        records = queued(stack)
        if records:
            assert invoke({"Records": records}) == {"batchItemFailures": []}
        else:
            time.sleep(0.2)


def circuit_item(stack: Stack, key: GateKey) -> dict[str, Any]:
    pk = {"pk": {"S": circuit_name(key)}}
    item: dict[str, Any] = stack.dynamodb.get_item(TableName=stack.state_table, Key=pk, ConsistentRead=True)["Item"]
    return item


# --- a hanging CRM ---------------------------------------------------------------------------------


def test_a_hanging_crm_opens_the_circuit_then_one_probe_closes_it_and_every_call_goes_out_once(
    stack: Stack, scripted_crm: ScriptedCrm, sample_bot: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a CRM that accepts requests and never answers, and 12 calls in one stream batch
    metrics = MetricCounter()
    invoke = protected_handler(stack, metrics, monkeypatch)
    call_ids = seed(stack, sample_bot, 12, "hang")

    # When the batch is delivered
    response = invoke(insert_event(*[stack.get_call(c) for c in call_ids]))

    # Then no record is retried: every call is scheduled
    assert response == {"batchItemFailures": []}
    first = results(stack, call_ids)
    tried = [c for c, r in first.items() if r["error_kind"] == "timeout"]
    held = [c for c, r in first.items() if r["error_kind"] == "circuit_open"]
    assert sorted(tried + held) == sorted(call_ids)
    # and the CRM saw 5 failures plus at most the one other request in flight when the 5th failed:
    # the rest of the batch was held back at once instead of waiting out its attempts
    assert 5 <= len(scripted_crm.arrivals) <= 5 + CONCURRENCY - 1
    assert len(tried) == len(scripted_crm.arrivals)
    item = circuit_item(stack, gate_key(stack, sample_bot))
    assert (item["state"]["S"], item["failure_count"]["N"]) == ("OPEN", "5")
    probe_at = datetime.fromtimestamp(int(item["opened_at"]["N"]) + RECOVERY_SECONDS, UTC)
    for call_id in held:
        # an open circuit is the call's first outcome, and spends no attempt (contract §10)
        result = first[call_id]
        assert (result["status"], result["attempts"]) == ("failed", 0)
        # held calls wake spread over a window after the probe time, not all in its first second
        held_until = parse_utc_timestamp(result["next_attempt_at"])
        assert probe_at <= held_until <= probe_at + timedelta(seconds=HELD_WAKE_SPREAD_SECONDS + 1)
    for call_id in tried:
        assert (first[call_id]["status"], first[call_id]["attempts"]) == ("failed", 1)
        assert first[call_id]["next_attempt_at"]
    assert metrics.counts["CircuitOpened"] == 1
    assert metrics.counts["CallsHeldByOpenCircuit"] == len(held)

    # When the CRM recovers (answering in 0.3 s) and the retry queue delivers the scheduled calls
    scripted_crm.hang, scripted_crm.delay = False, 0.3
    hung = len(scripted_crm.arrivals)
    deliver_retry_queue(
        stack, invoke, lambda: all(r.get("status") == "ok" for r in results(stack, call_ids).values()), 60
    )

    # Then exactly one request went out while the circuit was not closed: the probe
    after = scripted_crm.arrivals[hung:]
    assert [a.circuit for a in after].count("HALF_OPEN") == 1
    assert after[0].circuit == "HALF_OPEN"
    assert all(a.circuit == "CLOSED" for a in after[1:])
    # and its success closed the circuit
    assert circuit_item(stack, gate_key(stack, sample_bot))["state"]["S"] == "CLOSED"
    assert metrics.counts["CircuitClosed"] == 1
    assert metrics.counts["CircuitOpened"] == 1
    # and every call was delivered exactly once; a held call reached the CRM only then
    assert scripted_crm.answered(200) == Counter(dict.fromkeys(call_ids, 1))
    for call_id in held:
        assert [a.call_id for a in scripted_crm.arrivals].count(call_id) == 1
    final = results(stack, call_ids)
    # The destination's probe carried one waiting call (behaviour §14): it is delivered, and a probe is no
    # attempt; every other call then went with an attempt of its own.
    [carried] = [c for c in call_ids if any(e.get("probe") for e in stack.get_call(c).get("integration_log", []))]
    spent = {c: r["attempts"] - first[c]["attempts"] for c, r in final.items()}
    assert spent == {c: 0 if c == carried else 1 for c in call_ids}


def test_a_container_that_starts_after_the_circuit_opened_sends_nothing(
    stack: Stack, scripted_crm: ScriptedCrm, sample_bot: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a circuit opened by one container
    metrics = MetricCounter()
    call_ids = seed(stack, sample_bot, 10, "later")
    protected_handler(stack, metrics, monkeypatch)(insert_event(*[stack.get_call(c) for c in call_ids[:6]]))
    assert circuit_item(stack, gate_key(stack, sample_bot))["state"]["S"] == "OPEN"
    sent = len(scripted_crm.arrivals)

    # When a fresh container (its own clients and cache) gets the next calls
    other = protected_handler(stack, MetricCounter(), monkeypatch)
    assert other(insert_event(*[stack.get_call(c) for c in call_ids[6:]], start_sequence=7)) == {
        "batchItemFailures": []
    }

    # Then it read the open circuit from the table and held them all without calling the CRM
    assert len(scripted_crm.arrivals) == sent
    later = results(stack, call_ids[6:])
    assert {(r["error_kind"], r["attempts"]) for r in later.values()} == {("circuit_open", 0)}


# --- a CRM that answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "opens"), [(503, True), (429, True), (400, False), (404, False)])
def test_5xx_and_429_open_the_circuit_while_a_refusing_crm_does_not(
    stack: Stack,
    scripted_crm: ScriptedCrm,
    sample_bot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    opens: bool,
) -> None:
    # Given a CRM that answers every request with this status at once
    scripted_crm.hang, scripted_crm.status = False, status
    metrics = MetricCounter()
    # (the function's own recovery timeout: no probe may go out during this test)
    invoke = protected_handler(stack, metrics, monkeypatch, CircuitSettings())
    call_ids = seed(stack, sample_bot, 10, f"s{status}")

    # When a batch of 10 calls is delivered
    assert invoke(insert_event(*[stack.get_call(c) for c in call_ids])) == {"batchItemFailures": []}

    # Then a failing CRM is spared after 5 failures, and a refusing one gets every call (it is working)
    circuits = list_circuits(stack.dynamodb, stack.state_table)
    if opens:
        assert [(c.key, c.state, c.failure_count) for c in circuits] == [(gate_key(stack, sample_bot), "OPEN", 5)]
        assert len(scripted_crm.arrivals) <= 5 + CONCURRENCY - 1
        assert metrics.counts["CircuitOpened"] == 1
    else:
        assert circuits == []  # the healthy path writes nothing
        assert len(scripted_crm.arrivals) == 10
        assert {r["status"] for r in results(stack, call_ids).values()} == {"rejected"}
        assert metrics.counts == Counter()


# --- a CRM that does not accept connections -------------------------------------------------------


def test_a_crm_that_does_not_accept_the_connection_fails_at_the_connect_timeout_not_the_total() -> None:
    # A listener that never accepts, its one-slot backlog taken: further SYNs go unanswered.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            sender = CrmHttpSender(allow_private_networks=True)  # the function's own numbers
            request = PushRequest("call-1", "POST", f"http://127.0.0.1:{port}/hook", {}, b"{}", "")
            started = time.monotonic()
            outcome = sender.send(request)
            elapsed = time.monotonic() - started

    assert outcome.error == f"could not connect: timed out after {CONNECT_TIMEOUT_SECONDS:.1f}s"
    assert (outcome.error_kind, outcome.attempts) == ("connection", 1)
    assert verdict_on(outcome) == "failure"  # it counts against the destination
    assert CONNECT_TIMEOUT_SECONDS - 0.1 <= elapsed < sender.total_timeout - 1


# --- operators ---------------------------------------------------------------------------------------


def test_operators_list_circuits_and_close_one_by_hand(
    stack: Stack,
    scripted_crm: ScriptedCrm,
    sample_bot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from push_cli.main import main

    # Given an open circuit
    scripted_crm.hang, scripted_crm.status = False, 503
    call_ids = seed(stack, sample_bot, 6, "ops")
    protected_handler(stack, MetricCounter(), monkeypatch)(insert_event(*[stack.get_call(c) for c in call_ids]))
    key = gate_key(stack, sample_bot)
    monkeypatch.setenv("PUSH_STATE_TABLE", stack.state_table)

    # When an operator lists the circuits
    capsys.readouterr()
    assert main(["circuits", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)

    # Then the bot's (destination, scope) shows open, with its failures and when the next probe goes
    view = read_circuit(stack.dynamodb, stack.state_table, key)
    assert view is not None
    assert (view.state, view.failure_count) == ("OPEN", 5)
    never_failed = GateKey("https://never-failed.example.com:443", key.scope)
    assert read_circuit(stack.dynamodb, stack.state_table, never_failed) is None
    assert [(c["destination"], c["scope"], c["state"], c["failure_count"]) for c in listed["circuits"]] == [
        (key.destination, key.scope, "OPEN", 5)
    ]
    opened_at = int(circuit_item(stack, key)["opened_at"]["N"])
    probe_at = datetime.fromtimestamp(opened_at + CircuitSettings().recovery_timeout_seconds, UTC)
    assert listed["circuits"][0]["next_probe_at"] == iso_utc(probe_at)
    assert main(["circuits"]) == 0
    table = capsys.readouterr().out
    assert key.destination in table
    assert key.scope in table
    assert "open" in table.lower()

    # When the operator closes it by hand (destination and scope, as listed)
    assert main(["circuits", "--close", key.destination, "--scope", key.scope]) == 0
    capsys.readouterr()

    # Then it is closed, and a fresh container sends again at once
    assert circuit_item(stack, key)["state"]["S"] == "CLOSED"
    scripted_crm.status = 200
    more = seed(stack, sample_bot, 2, "ops-after")
    invoke = protected_handler(stack, MetricCounter(), monkeypatch)
    assert invoke(insert_event(*[stack.get_call(c) for c in more], start_sequence=50)) == {"batchItemFailures": []}
    assert {r["status"] for r in results(stack, more).values()} == {"ok"}


def test_closing_a_destination_without_a_circuit_says_so(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from push_cli.main import main

    monkeypatch.setenv("PUSH_STATE_TABLE", stack.state_table)
    assert main(["circuits", "--close", "https://crm.example.com:443", "--scope", "tenant-a"]) == 2
    said = capsys.readouterr().err
    assert "https://crm.example.com:443" in said
    assert "tenant-a" in said
