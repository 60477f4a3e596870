"""CRM-native delivery end to end (contract §14): the real handler, DynamoDB Local, moto SQS, the CRM stand-ins.

Each preset's push reaches its stand-in (scripts/crm_standins.py) as the
CRM documents the request; the stand-ins implement the CRMs' upsert
semantics, so "one record per call" is checked where it matters: in the
CRM. OAuth itself is tested in test_oauth_*.py: here the handler's token
source is a stub whose token answer points ``{{auth.instance_url}}`` /
``{{auth.api_domain}}`` at the stand-in. The clock is simulated (the retry
queue is drained on it); the parking lot reads the same clock.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_push.adapters.destination_gate import circuit_name
from crm_push.adapters.dynamodb import from_item
from crm_push.adapters.parking import PARK_PREFIX, ParkingTable
from crm_push.flow import push_call
from crm_push.ports import GateKey, PushDeps, Replay, SecretResolver
from crm_push.variables import parse_utc_timestamp
from scripts.crm_standins import CrmStandins
from scripts.local_stack import small_calls
from tests.conftest import Stack, insert_event
from tests.fakes import FakeClock
from tests.retry_queue import drain, queued

TOKEN = "standin-token"
LEASE_SECONDS = 60


# --- wiring -------------------------------------------------------------------------------------


class StubGrant:
    def __init__(self, access_token: str, token_type: str, origin: str) -> None:
        self.access_token, self.token_type, self.origin = access_token, token_type, origin

    def template_values(self) -> dict[str, str]:
        return {"instance_url": self.origin, "api_domain": self.origin}


class StubTokens:
    """The token source as the core sees it: one token whose answer names the stand-in as the CRM's host."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.asked = 0

    def token(
        self,
        auth: Any,
        scope: str,
        *,
        secrets: SecretResolver | None,
        rejected: str | None = None,
        deadline: float | None = None,
        bot_id: str | None = None,
    ) -> StubGrant:
        self.asked += 1
        return StubGrant(TOKEN, "Bearer", self.origin)


class ReadCounter:
    """Counts the handler's reads of calls, with the simulated time of each."""

    def __init__(self, deps: PushDeps, clock: FakeClock) -> None:
        self.at: list[tuple[str, datetime]] = []
        real = deps.calls.get_call

        def get_call(call_id: str) -> dict[str, Any] | None:
            self.at.append((call_id, clock()))
            return real(call_id)

        deps.calls.get_call = get_call  # type: ignore[method-assign]


def wire(handler: Any, stack: Stack, standins: CrmStandins, clock: FakeClock) -> PushDeps:
    """The handler's own deps on a simulated clock, with the stub token source and a parking lot on that clock."""
    deps: PushDeps = handler.module._runtime()[0]
    deps.tokens = StubTokens(standins.url)
    deps.clock, deps.sleep = clock, clock.advance
    deps.parking = ParkingTable(stack.dynamodb, stack.state_table, wall_clock=lambda: clock().timestamp())
    return deps


@pytest.fixture
def standins() -> Iterator[CrmStandins]:
    with CrmStandins(token=TOKEN) as crm:
        yield crm


@pytest.fixture
def clock() -> FakeClock:
    # Today (the circuit breaker keeps wall-clock time), at 09:00 UTC: a daily quota's reset is hours away.
    return FakeClock(datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0))


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAIM_LEASE_SECONDS", str(LEASE_SECONDS))
    monkeypatch.setenv("RETRY_MAX_DELAY_SECONDS", "0")  # the queue holds nothing back: drain() keeps time
    monkeypatch.setenv("BOT_CONFIG_TTL_SECONDS", "0")  # a replay after a mapping fix reads the new mapping


# --- the bots -------------------------------------------------------------------------------------

KEY_MAPPERS: dict[str, dict[str, Any]] = {
    "salesforce": {"LastName": "{{CUSTOMERNAME}}", "Company": "voicebot", "Disposition__c": "{{analysis.DISPOSITION}}"},
    "hubspot": {"lastname": "{{CUSTOMERNAME}}", "disposition": "{{analysis.DISPOSITION}}"},
    "zoho": {"Last_Name": "{{CUSTOMERNAME}}", "Lead_Source": "voicebot", "Disposition": "{{analysis.DISPOSITION}}"},
    "dynamics": {"lastname": "{{CUSTOMERNAME}}", "description": "{{analysis.DISPOSITION}}"},
}


def preset_bot(name: str, origin: str, bot_id: str) -> dict[str, Any]:
    """A bot as the README tells an operator to write it for ``name``, its CRM at ``origin``."""
    push: dict[str, Any] = {"key_mapper": copy.deepcopy(KEY_MAPPERS[name])}
    if name == "salesforce":
        push["preset"] = {"name": "salesforce", "object": "Lead", "external_id_field": "Call_Id__c"}
        push["auth"] = {
            "type": "oauth2_client_credentials",
            "token_url": "https://login.example.com/services/oauth2/token",
            "client_id": "standin-client",
            "client_secret": "standin-secret",
        }
    elif name == "hubspot":
        push["preset"] = {"name": "hubspot", "object": "contacts", "id_property": "call_id", "base_url": origin}
        push["token"] = f"Bearer {TOKEN}"
    elif name == "zoho":
        push["preset"] = {"name": "zoho", "module": "Leads", "duplicate_check_fields": ["Call_Id"]}
        push["auth"] = {
            "type": "oauth2_refresh_token",
            "token_url": "https://accounts.zoho.example/oauth/v2/token",
            "client_id": "standin-client",
            "client_secret": "standin-secret",
            "refresh_token": "standin-refresh",
        }
    else:
        push["preset"] = {
            "name": "dynamics",
            "org_url": origin,
            "entity_set": "contacts",
            "alternate_key": "new_callid",
        }
        push["auth"] = {
            "type": "oauth2_client_credentials",
            "token_url": "https://login.example.com/tenant/oauth2/v2.0/token",
            "client_id": "standin-client",
            "client_secret": "standin-secret",
            "scope": f"{origin}/.default",
        }
    return {"bot_id": bot_id, "timezone": "UTC", "analysis_keys": ["DISPOSITION"], "post_call_push": push}


def expected_request(name: str, call_id: str, fields: dict[str, Any]) -> tuple[str, str, Any, str]:
    """(method, path, body, Authorization) the CRM's documentation gives for this call (contract §14)."""
    if name == "salesforce":
        return "PATCH", f"/services/data/v62.0/sobjects/Lead/Call_Id__c/{call_id}", fields, f"Bearer {TOKEN}"
    body: dict[str, Any]
    if name == "hubspot":
        body = {"inputs": [{"idProperty": "call_id", "id": call_id, "properties": fields}]}
        return "POST", "/crm/v3/objects/contacts/batch/upsert", body, f"Bearer {TOKEN}"
    if name == "zoho":
        body = {"data": [{**fields, "Call_Id": call_id}], "duplicate_check_fields": ["Call_Id"]}
        return "POST", "/crm/v8/Leads/upsert", body, f"Zoho-oauthtoken {TOKEN}"
    return "PATCH", f"/api/data/v9.2/contacts(new_callid='{call_id}')", fields, f"Bearer {TOKEN}"


def mapped_fields(name: str, call: dict[str, Any]) -> dict[str, Any]:
    """The key_mapper's fields for ``call``, worked out by hand from the call's data."""
    customer = call["crm_data"]["CUSTOMERNAME"]
    disposition = call.get("analysis", {}).get("DISPOSITION", "")
    return {
        "salesforce": {"LastName": customer, "Company": "voicebot", "Disposition__c": disposition},
        "hubspot": {"lastname": customer, "disposition": disposition},
        "zoho": {"Last_Name": customer, "Lead_Source": "voicebot", "Disposition": disposition},
        "dynamics": {"lastname": customer, "description": disposition},
    }[name]


def records_of(standins: CrmStandins, name: str) -> list[dict[str, Any]]:
    """Every record the stand-in holds for ``name`` (all objects / modules / entity sets)."""
    return [record for table in standins.records(name).values() for record in table]


def record_key(name: str, record: dict[str, Any]) -> Any:
    if name == "salesforce":
        return record["Call_Id__c"]
    if name == "hubspot":
        return record["properties"]["call_id"]
    if name == "zoho":
        return record["Call_Id"]
    return record["new_callid"]


def record_fields(name: str, record: dict[str, Any]) -> dict[str, Any]:
    return dict(record["properties"]) if name == "hubspot" else dict(record)


def result_of(stack: Stack, call_id: str) -> dict[str, Any]:
    return dict(stack.get_call(call_id)["post_call_push_result"])


def header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


# --- (a) each preset sends the documented request ------------------------------------------------


@pytest.mark.parametrize("name", ["salesforce", "hubspot", "zoho", "dynamics"])
def test_a_preset_push_reaches_its_crm_as_the_documented_request(
    name: str, stack: Stack, handler: Any, standins: CrmStandins, clock: FakeClock, sample_call: dict[str, Any]
) -> None:
    # Given a bot with the preset, and a call
    bot = preset_bot(name, standins.url, sample_call["bot_id"])
    stack.put_bot(bot)
    stack.put_call(sample_call)
    wire(handler, stack, standins, clock)

    # When the stream delivers the call
    assert handler(insert_event(sample_call)) == {"batchItemFailures": []}

    # Then the CRM got one request, as its documentation gives it
    call_id = sample_call["call_id"]
    fields = mapped_fields(name, sample_call)
    method, path, body, authorization = expected_request(name, call_id, fields)
    [request] = standins.requests_for(name)
    assert (request.method, request.path) == (method, path)
    assert request.json() == body
    assert header(request.headers, "Authorization") == authorization
    assert header(request.headers, "Content-Type") == "application/json"
    assert header(request.headers, "Idempotency-Key") == call_id
    assert header(request.headers, "OData-Version") == ("4.0" if name == "dynamics" else None)
    # and the CRM holds one record keyed on the call id, and the call says ok
    [record] = records_of(standins, name)
    assert record_key(name, record) == call_id
    result = result_of(stack, call_id)
    assert (result["status"], result["attempts"], result["error_kind"]) == ("ok", 1, None)
    assert result["url"].startswith(standins.url)


def test_the_result_names_the_method_the_preset_sent(
    stack: Stack, handler: Any, standins: CrmStandins, clock: FakeClock, sample_call: dict[str, Any]
) -> None:
    stack.put_bot(preset_bot("salesforce", standins.url, sample_call["bot_id"]))
    stack.put_call(sample_call)
    wire(handler, stack, standins, clock)
    assert handler(insert_event(sample_call)) == {"batchItemFailures": []}
    [request] = standins.requests_for("salesforce")
    assert result_of(stack, sample_call["call_id"])["method"] == request.method == "PATCH"


# --- (b) effectively once: stream, crash after the answer, replay ----------------------------------


class SimulatedCrash(BaseException):
    """The container dies here: nothing after it runs (as in test_exactly_once.py)."""


@contextlib.contextmanager
def dying_after_the_answer(deps: PushDeps) -> Iterator[None]:
    """Every write after the CRM's answer (the call's outcome, the state) kills the container, until the block ends."""
    targets = [(deps.calls, "write_outcome"), (deps.state, "save")]
    reals = [getattr(target, method) for target, method in targets]

    def die(*_args: Any, **_kwargs: Any) -> Any:
        raise SimulatedCrash("the container died after the CRM answered")

    for target, method in targets:
        setattr(target, method, die)
    try:
        yield
    finally:
        for (target, method), real in zip(targets, reals, strict=True):
            setattr(target, method, real)


@pytest.mark.parametrize("name", ["salesforce", "hubspot", "zoho", "dynamics"])
def test_stream_crash_after_the_answer_and_replay_leave_one_record_updated_by_the_replay(
    name: str,
    stack: Stack,
    handler: Any,
    standins: CrmStandins,
    clock: FakeClock,
    sample_call: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a preset bot and a container that dies after the CRM answered, before anything is written
    bot = preset_bot(name, standins.url, sample_call["bot_id"])
    stack.put_bot(bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    event = insert_event(sample_call)
    deps = wire(handler, stack, standins, clock)

    # When the stream delivers the call and the container dies after the answer
    with dying_after_the_answer(deps), pytest.raises(SimulatedCrash):
        handler(event)
    assert len(standins.requests_for(name)) == 1
    assert "post_call_push_result" not in stack.get_call(call_id)

    # and the stream redelivers it after the lease (the one documented re-send), and once more
    clock.advance(LEASE_SECONDS + 1)
    assert handler(event) == {"batchItemFailures": []}
    assert handler(event) == {"batchItemFailures": []}
    drain(stack, handler, clock)

    # Then the CRM got it twice and still holds one record
    assert len(standins.requests_for(name)) == 2
    assert len(records_of(standins, name)) == 1
    assert (result_of(stack, call_id)["status"], result_of(stack, call_id)["attempts"]) == ("ok", 1)

    # When an operator fixes the mapping and replays the call
    fixed = copy.deepcopy(bot)
    new_field = "Rating" if name in ("salesforce", "zoho") else "rating"
    fixed["post_call_push"]["key_mapper"][new_field] = "replayed-{{analysis.DISPOSITION}}"
    stack.put_bot(fixed)
    outcome = push_call(call_id, deps, replay=Replay("ops@example.com", "mapping fix"))

    # Then the replay updated the same record: one record, with the new field
    assert outcome.outcome == "pushed"
    assert len(standins.requests_for(name)) == 3
    [record] = records_of(standins, name)
    assert record_key(name, record) == call_id
    assert record_fields(name, record)[new_field] == "replayed-PROMISE_TO_PAY"
    result = result_of(stack, call_id)
    assert result["status"] == "ok"
    assert result["replay"] == {"by": "ops@example.com", "reason": "mapping fix"}
    assert queued(stack) == []


# --- (c) answers that are final -----------------------------------------------------------------


def test_a_zoho_200_with_a_refused_record_is_rejected_for_good(
    stack: Stack, handler: Any, standins: CrmStandins, clock: FakeClock, sample_call: dict[str, Any]
) -> None:
    # Given a Zoho bot whose mapping leaves out the field Leads require
    bot = preset_bot("zoho", standins.url, sample_call["bot_id"])
    del bot["post_call_push"]["key_mapper"]["Last_Name"]
    stack.put_bot(bot)
    stack.put_call(sample_call)
    wire(handler, stack, standins, clock)

    # When the call is pushed (Zoho answers 200, data[0].status "error")
    assert handler(insert_event(sample_call)) == {"batchItemFailures": []}

    # Then it is rejected by the CRM, final, with Zoho's code in error, and nothing is scheduled
    result = result_of(stack, sample_call["call_id"])
    assert (result["status"], result["http_status"], result["error_kind"]) == ("rejected", 200, "crm_rejected")
    assert "MANDATORY_NOT_FOUND" in result["error"]
    assert (result["attempts"], result["next_attempt_at"], result["exhausted"]) == (1, None, False)
    assert records_of(standins, "zoho") == []
    assert queued(stack) == []


def test_a_salesforce_300_is_final(
    stack: Stack, handler: Any, standins: CrmStandins, clock: FakeClock, sample_call: dict[str, Any]
) -> None:
    # Given two Salesforce records that already carry this call's external id
    call_id = sample_call["call_id"]
    standins.seed_salesforce("Lead", {"Call_Id__c": call_id}, {"Call_Id__c": call_id})
    stack.put_bot(preset_bot("salesforce", standins.url, sample_call["bot_id"]))
    stack.put_call(sample_call)
    wire(handler, stack, standins, clock)

    # When the call is pushed
    assert handler(insert_event(sample_call)) == {"batchItemFailures": []}
    drain(stack, handler, clock)

    # Then the 300 ends the delivery after one attempt: nothing is retried
    result = result_of(stack, call_id)
    assert (result["status"], result["http_status"], result["attempts"]) == ("rejected", 300, 1)
    assert result["next_attempt_at"] is None
    assert len(standins.requests_for("salesforce")) == 1


# --- (d) quotas ----------------------------------------------------------------------------------


def park_item(stack: Stack, key: GateKey) -> dict[str, Any]:
    item = stack.dynamodb.get_item(
        TableName=stack.state_table, Key={"pk": {"S": f"{PARK_PREFIX}{key.label}"}}, ConsistentRead=True
    ).get("Item")
    return from_item(item or {})


def circuit_item(stack: Stack, key: GateKey) -> dict[str, Any]:
    item = stack.dynamodb.get_item(
        TableName=stack.state_table, Key={"pk": {"S": circuit_name(key)}}, ConsistentRead=True
    ).get("Item")
    return from_item(item or {})


QUOTA_CASES = {
    # preset -> (switch the stand-in's quota on/off, the CRM's status, the reset after `now`)
    "salesforce": ("salesforce_limit_exceeded", True, 403),
    "hubspot": ("hubspot_rate_limit_policy", "DAILY", 429),
}


def quota_reset(name: str, now: datetime) -> datetime:
    if name == "salesforce":
        return now + timedelta(hours=1)  # no reset time given: the contract's 1 h
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)  # HubSpot DAILY: next 00:00 UTC


@pytest.mark.parametrize("name", sorted(QUOTA_CASES))
def test_a_spent_quota_parks_the_destination_without_attempts_or_circuit_and_releases_at_the_reset(
    name: str, stack: Stack, handler: Any, standins: CrmStandins, clock: FakeClock, sample_bot: dict[str, Any]
) -> None:
    # Given a CRM whose allowance for this tenant is spent
    switch, on, status = QUOTA_CASES[name]
    setattr(standins, switch, on)
    bot_id = sample_bot["bot_id"]
    stack.put_bot(preset_bot(name, standins.url, bot_id))
    first, *others = small_calls(bot_id, 4, f"quota-{stack.calls_table[-6:]}")
    for call in (first, *others):
        stack.put_call(call)
    deps = wire(handler, stack, standins, clock)
    key = GateKey(standins.url, bot_id)
    met_at = clock()

    # When one call meets the quota, and the others arrive after it
    assert handler(insert_event(first)) == {"batchItemFailures": []}
    assert handler(insert_event(*others, start_sequence=10)) == {"batchItemFailures": []}

    # Then the call that met it records its attempt: rejected, quota, next attempt at the reset
    reset = quota_reset(name, met_at)
    met = result_of(stack, first["call_id"])
    assert (met["status"], met["http_status"], met["error_kind"], met["attempts"]) == ("rejected", status, "quota", 1)
    assert parse_utc_timestamp(met["next_attempt_at"]) == reset
    assert met["exhausted"] is False
    # and the others are parked before any attempt: failed, 0 attempts, quota, a next attempt from the reset on
    for call in others:
        parked = result_of(stack, call["call_id"])
        assert (parked["status"], parked["attempts"], parked["error_kind"]) == ("failed", 0, "quota")
        parked_until = parse_utc_timestamp(parked["next_attempt_at"])
        assert parked_until is not None
        assert parked_until >= reset
    assert len(standins.requests_for(name)) == 1
    # and the quota is recorded for the (destination, scope), the circuit is not opened
    assert int(park_item(stack, key)["quota_until"]) == int(reset.timestamp())
    assert circuit_item(stack, key).get("state", "CLOSED") == "CLOSED"
    assert deps.parking.waiting(key) != []

    # When the reset passes (the CRM takes requests again) and the queue is delivered
    setattr(standins, switch, None if switch == "hubspot_rate_limit_policy" else False)
    drain(stack, handler, clock)

    # Then every call went out once, within a minute of the reset, and the CRM holds one record each
    assert len(standins.requests_for(name)) == 1 + 4
    assert len(records_of(standins, name)) == 4
    for call in (first, *others):
        result = result_of(stack, call["call_id"])
        assert result["status"] == "ok", call["call_id"]
        assert result["attempts"] == (2 if call is first else 1), call["call_id"]
        pushed_at = parse_utc_timestamp(result["pushed_at"])
        assert pushed_at is not None
        assert reset <= pushed_at <= reset + timedelta(seconds=61), call["call_id"]
    assert deps.parking.waiting(key) == []
    assert circuit_item(stack, key).get("state", "CLOSED") == "CLOSED"


def test_a_ten_secondly_429_is_an_ordinary_retry(
    stack: Stack,
    handler: Any,
    standins: CrmStandins,
    clock: FakeClock,
    sample_call: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given HubSpot's burst limit, reached for one request
    standins.hubspot_rate_limit_policy = "TEN_SECONDLY_ROLLING"
    real = standins.handle

    def once(*args: Any) -> Any:
        answer = real(*args)
        standins.hubspot_rate_limit_policy = None
        return answer

    monkeypatch.setattr(standins, "handle", once)
    stack.put_bot(preset_bot("hubspot", standins.url, sample_call["bot_id"]))
    stack.put_call(sample_call)
    wire(handler, stack, standins, clock)

    # When the call is pushed and its retries are delivered
    assert handler(insert_event(sample_call)) == {"batchItemFailures": []}
    drain(stack, handler, clock)

    # Then the 429 spent one attempt of the ladder and the retry delivered it; no quota was recorded
    stored = stack.get_call(sample_call["call_id"])
    first_try = next(e for e in stored["integration_log"] if e.get("type") == "post_call_push")
    assert (first_try["http_status"], first_try["error_kind"], first_try["attempts"]) == (429, "http_status", 1)
    assert first_try["next_attempt_at"] is not None
    result = stored["post_call_push_result"]
    assert (result["status"], result["attempts"]) == ("ok", 2)
    assert park_item(stack, GateKey(standins.url, sample_call["bot_id"])).get("quota_until") is None


def test_quota_answers_in_flight_together_do_not_open_the_circuit(
    stack: Stack,
    handler: Any,
    standins: CrmStandins,
    clock: FakeClock,
    sample_bot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given HubSpot's daily allowance spent, and a CRM slow enough that a batch's requests are in flight together
    standins.hubspot_rate_limit_policy = "DAILY"
    real = standins.handle

    def slow(*args: Any) -> Any:
        time.sleep(0.3)
        return real(*args)

    monkeypatch.setattr(standins, "handle", slow)
    bot_id = sample_bot["bot_id"]
    stack.put_bot(preset_bot("hubspot", standins.url, bot_id))
    calls = small_calls(bot_id, 6, f"inflight-{stack.calls_table[-6:]}")
    for call in calls:
        stack.put_call(call)
    wire(handler, stack, standins, clock)

    # When the batch is delivered and every request meets the quota
    assert handler(insert_event(*calls)) == {"batchItemFailures": []}
    assert len(standins.requests_for("hubspot")) >= 5

    # Then the circuit is still closed: a quota is not a failing CRM
    assert circuit_item(stack, GateKey(standins.url, bot_id)).get("state", "CLOSED") == "CLOSED"


# --- (e) held calls are not read --------------------------------------------------------------------


def test_calls_woken_while_their_quota_is_spent_are_neither_read_nor_rendered(
    stack: Stack,
    handler: Any,
    standins: CrmStandins,
    clock: FakeClock,
    sample_bot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a HubSpot bot whose retries ride the queue, and a CRM that counts its daily quota by our clock
    bot_id = sample_bot["bot_id"]
    bot = preset_bot("hubspot", standins.url, bot_id)
    bot["post_call_push"]["retry_schedule_seconds"] = [300, 300, 300]
    stack.put_bot(bot)
    early, late = small_calls(bot_id, 2, f"held-{stack.calls_table[-6:]}")
    for call in (early, late):
        stack.put_call(call)
    deps = wire(handler, stack, standins, clock)
    reset = quota_reset("hubspot", clock())
    real = standins.handle
    policy: dict[str, str | None] = {"now": "TEN_SECONDLY_ROLLING"}

    def by_our_clock(*args: Any) -> Any:
        standins.hubspot_rate_limit_policy = policy["now"] if clock() < reset else None
        return real(*args)

    monkeypatch.setattr(standins, "handle", by_our_clock)

    # When one call's attempt is refused for a burst (its retry is queued), and the next one spends the day's quota
    assert handler(insert_event(early)) == {"batchItemFailures": []}
    policy["now"] = "DAILY"
    assert handler(insert_event(late, start_sequence=5)) == {"batchItemFailures": []}
    assert result_of(stack, late["call_id"])["error_kind"] == "quota"
    reads = ReadCounter(deps, clock)
    wake_ups: list[tuple[str, datetime]] = []

    def invoke(event: dict[str, Any], context: Any = None) -> Any:
        for record in event["Records"]:
            message = json.loads(record["body"])
            if message["kind"] == "attempt":
                wake_ups.append((message["call_id"], clock()))
        return handler(event, context)

    drain(stack, invoke, clock)

    # Then the early call was woken before the reset (its ladder) and held without a read or a request
    assert any(call_id == early["call_id"] and when < reset for call_id, when in wake_ups)
    assert [when for _call_id, when in reads.at if when < reset] == []
    # and both went out once after the reset: two refused requests, then one each
    assert len(standins.requests_for("hubspot")) == 2 + 2
    for call in (early, late):
        result = result_of(stack, call["call_id"])
        assert result["status"] == "ok"
        pushed_at = parse_utc_timestamp(result["pushed_at"])
        assert pushed_at is not None
        assert pushed_at >= reset
