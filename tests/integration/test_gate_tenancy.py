"""The destination gate per (destination, scope) on DynamoDB Local (contract §10, §12).

The real gate (``state_table_gate``: Powertools' DynamoDB persistence and the
conditional rate counter) on a state table made as the template makes it.
Each gate built here is one container: its own persistence cache, the table
shared. The CRM is a callback: what is under test is which calls the gate
lets through, and what it leaves in the table.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from crm_push.adapters.destination_gate import (
    CircuitSettings,
    close_circuit,
    list_circuits,
    read_circuit,
    state_table_gate,
)
from crm_push.ports import GateKey, HeldBack, SendOutcome
from scripts.local_stack import MetricCounter, create_state_table

OK = SendOutcome(200, "{}", None, 1, 3)
DOWN = SendOutcome(503, "down", None, 1, 3, "http_status")
SLOW_DOWN = SendOutcome(429, "slow down", None, 1, 3, "http_status", retry_after="1")


@pytest.fixture
def state_table(dynamodb: Any) -> str:
    return create_state_table(dynamodb, uuid.uuid4().hex[:10])


def tenants_of_one_host() -> tuple[GateKey, GateKey]:
    # A fresh host per test: Powertools counts failures per circuit name in module state.
    host = f"https://crm-{uuid.uuid4().hex[:8]}.example.com:443"
    return GateKey(host, "tenant-a"), GateKey(host, "tenant-b")


def item(dynamodb: Any, table: str, pk: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = dynamodb.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True).get(
        "Item"
    )
    return found


@pytest.mark.parametrize("failing", [DOWN, SLOW_DOWN], ids=["5xx", "429"])
def test_one_tenants_failures_open_only_its_circuit_item_and_every_container_holds_only_that_tenant(
    dynamodb: Any, state_table: str, failing: SendOutcome
) -> None:
    # Given two tenants of one CRM host, and tenant A's calls failing five times in a row
    a, b = tenants_of_one_host()
    metrics = MetricCounter()
    gate = state_table_gate(dynamodb, state_table, count_metric=metrics)
    assert [gate.send(a, None, lambda: failing) for _ in range(5)] == [failing] * 5

    # Then A's circuit item is open, under A's scope, and B has no circuit item at all
    opened = item(dynamodb, state_table, f"circuit#tenant-a#{a.destination}")
    assert opened is not None
    assert (opened["state"]["S"], opened["failure_count"]["N"]) == ("OPEN", "5")
    assert int(opened["expires_at"]["N"]) > time.time()
    assert item(dynamodb, state_table, f"circuit#tenant-b#{b.destination}") is None
    assert metrics.counts["CircuitOpened"] == 1

    # and a container that never saw the failures holds A's calls until the probe and sends B's
    other = state_table_gate(dynamodb, state_table)
    probe_at = datetime.fromtimestamp(int(opened["opened_at"]["N"]) + CircuitSettings().recovery_timeout_seconds, UTC)
    assert other.held_until(a) == probe_at
    assert other.held_until(b) is None
    sent: list[str] = []

    def crm_for(key: GateKey) -> SendOutcome:
        sent.append(key.scope)
        return OK

    assert other.send(a, None, lambda: crm_for(a)) == HeldBack("circuit_open", probe_at)
    assert other.send(b, None, lambda: crm_for(b)) == OK
    assert sent == ["tenant-b"]


def test_operators_see_and_close_one_scopes_circuit_and_leave_the_others(dynamodb: Any, state_table: str) -> None:
    # Given both tenants' circuits on one host open, and a third tenant's on another host
    a, b = tenants_of_one_host()
    c = GateKey(f"https://other-{uuid.uuid4().hex[:6]}.example.com:443", "acme#eu")  # a scope holding '#'
    gate = state_table_gate(dynamodb, state_table)
    for key in (a, b, c):
        for _ in range(5):
            gate.send(key, None, lambda: DOWN)

    # When an operator lists them: each shows its scope, and a scope filter keeps to that scope
    listed = list_circuits(dynamodb, state_table)
    assert sorted((v.destination, v.scope, v.state, v.failure_count) for v in listed) == sorted(
        [
            (a.destination, "tenant-a", "OPEN", 5),
            (b.destination, "tenant-b", "OPEN", 5),
            (c.destination, "acme#eu", "OPEN", 5),
        ]
    )
    assert [v.key for v in list_circuits(dynamodb, state_table, scope="tenant-b")] == [b]
    assert [v.key for v in list_circuits(dynamodb, state_table, scope="acme")] == []  # "acme" is not "acme#eu"
    assert [v.key for v in list_circuits(dynamodb, state_table, scope="acme#eu")] == [c]
    view = read_circuit(dynamodb, state_table, b)
    assert view is not None
    assert view.as_json()["scope"] == "tenant-b"
    assert read_circuit(dynamodb, state_table, GateKey(a.destination, "tenant-never-failed")) is None

    # When the operator closes B's circuit by hand
    assert close_circuit(dynamodb, state_table, GateKey(a.destination, "tenant-never-failed")) is False
    assert close_circuit(dynamodb, state_table, b) is True

    # Then B's calls go again and A's are still held, in a container that starts now
    fresh = state_table_gate(dynamodb, state_table)
    assert fresh.held_until(b) is None
    assert fresh.send(b, None, lambda: OK) == OK
    assert isinstance(fresh.held_until(a), datetime)
    assert isinstance(fresh.send(a, None, lambda: OK), HeldBack)
    states = {v.scope: v.state for v in list_circuits(dynamodb, state_table)}
    assert states == {"tenant-a": "OPEN", "tenant-b": "CLOSED", "acme#eu": "OPEN"}


def test_each_tenant_gets_its_own_limit_from_one_host_whatever_the_other_sends(dynamodb: Any, state_table: str) -> None:
    # Given tenant A at 10/s with three busy workers and tenant B at 2/s with two, on one host
    a, b = tenants_of_one_host()
    limits = {a: 10.0, b: 2.0}
    workers = {a: 3, b: 2}
    arrivals: list[tuple[str, float]] = []
    lock = threading.Lock()
    first = math.floor(time.time()) + 1
    stop_at = first + 3  # three whole seconds, each wholly inside the run

    def crm(key: GateKey) -> SendOutcome:
        with lock:
            arrivals.append((key.scope, time.time()))
        return OK

    def worker(key: GateKey) -> None:
        gate = state_table_gate(dynamodb, state_table)  # one container per worker: only the table is shared
        while time.time() < stop_at:
            outcome = gate.send(key, limits[key], lambda: crm(key))
            if isinstance(outcome, HeldBack):
                time.sleep(max(0.0, min(outcome.until.timestamp(), stop_at) - time.time()))

    threads = [threading.Thread(target=worker, args=(key,)) for key, n in workers.items() for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then in every whole second B got its 2, however hard A pushed, and A never more than its 10
    per_second = Counter((scope, math.floor(at)) for scope, at in arrivals)
    for second in range(first, stop_at):
        assert per_second[("tenant-b", second)] == 2, per_second
        assert 8 <= per_second[("tenant-a", second)] <= 10, per_second
    # and each tenant's counters in the table hold its own count against its own limit
    counters = dynamodb.scan(
        TableName=state_table,
        FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": "rate#"}},
    )["Items"]
    by_scope: dict[str, int] = {}
    for counter in counters:
        scope = counter["pk"]["S"].split("#")[1]
        by_scope[scope] = max(by_scope.get(scope, 0), int(counter["sent"]["N"]))
    assert by_scope == {"tenant-a": 10, "tenant-b": 2}


def test_post_call_push_circuits_shows_scopes_and_closes_one_only_with_its_scope(
    dynamodb: Any, state_table: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from push_cli.main import main

    a, b = tenants_of_one_host()
    gate = state_table_gate(dynamodb, state_table)
    for key in (a, b):
        for _ in range(5):
            gate.send(key, None, lambda: DOWN)
    monkeypatch.setenv("PUSH_STATE_TABLE", state_table)
    capsys.readouterr()

    assert main(["circuits", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["circuits"]
    assert sorted((c["destination"], c["scope"], c["state"]) for c in listed) == [
        (a.destination, "tenant-a", "OPEN"),
        (a.destination, "tenant-b", "OPEN"),
    ]
    assert main(["circuits"]) == 0
    shown = capsys.readouterr().out
    assert "tenant-a" in shown
    assert "tenant-b" in shown
    assert "2 scopes" in shown  # both tenants failing on one host: likely the CRM itself

    # --close without --scope is refused: it would not say whose circuit
    assert main(["circuits", "--close", a.destination]) == 2
    assert "--scope" in capsys.readouterr().err
    # what is not a url is refused without being echoed
    assert main(["circuits", "--close", "https://crm.example.com\\@s3cret", "--scope", "tenant-a"]) == 2
    said = capsys.readouterr()
    assert "s3cret" not in said.out + said.err
    # a scope without a circuit on that destination says so
    assert main(["circuits", "--close", a.destination, "--scope", "tenant-c"]) == 2
    assert "tenant-c" in capsys.readouterr().err

    # the bot's url, credentials and all, names its destination; the credential is never shown
    bots_url = a.destination.replace("https://", "https://user:s3cret@").upper().replace("HTTPS", "https")
    assert main(["circuits", "--close", f"{bots_url}/hooks/calls?key=k", "--scope", "tenant-b"]) == 0
    said = capsys.readouterr()
    assert "s3cret" not in (said.out + said.err).lower()
    assert a.destination in said.out
    assert main(["circuits", "--json", "--scope", "tenant-b"]) == 0
    assert [c["state"] for c in json.loads(capsys.readouterr().out)["circuits"]] == ["CLOSED"]
    assert read_circuit(dynamodb, state_table, a) is not None
    view = read_circuit(dynamodb, state_table, a)
    assert view is not None
    assert view.state == "OPEN"
