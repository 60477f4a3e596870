"""The destination gate (contract §10): a circuit breaker and a rate limit per CRM destination.

A destination is scheme, host and port (``push.destination_of``). Both guards
keep their state in the delivery-state table (``PUSH_STATE_TABLE``, key
``pk``), beside the ``delivery#<call_id>`` items:

``circuit#<destination>``
    Powertools' circuit breaker record (``CircuitBreakerDynamoDBPersistence``):
    ``state`` (CLOSED, OPEN, HALF_OPEN), ``failure_count`` (the tripping
    container's count), ``opened_at``, ``half_open_owner`` and
    ``probe_lease_expiry`` (the one probe in flight), ``expires_at`` (TTL: an
    hour after the last transition; a missing record is a closed circuit).
``rate#<destination>#<epoch second>``
    ``sent``: requests let through in that calendar second (UTC);
    ``expires_at``: a minute later.

The rate limit is a counter per calendar second, taken with one conditional
update (``ADD``, only while below the limit) by every invocation alike. The
count it returns is the request's place in its second, and the n-th request
goes out at ``(n-1)/limit`` of the second's first 800 ms: requests are
spread, not sent in a burst, and none leaves in the last 200 ms, so one that
is slow on its way still arrives in the second it was counted in (contract
§10 allows one more at a second's edge; this keeps it to that).

What counts against a destination is what the core retries because of the
CRM itself (``delivery.is_retryable``): no answer (timeout, connection, DNS,
TLS), 408, 429 and 5xx. A 429 counts: a CRM asking us to slow down is
spared more by a paused circuit than by each call burning an attempt on it.
Any other answer, 4xx included, is the CRM working. An outcome of no attempt
(the deadline came first, the SSRF guard refused the URL) or of our own bug
says nothing about the CRM and leaves the circuit alone.

The numbers (``CircuitSettings``) and why:

* 5 consecutive failures open a circuit: one slow or dropped request must not
  stop a destination, and a lower number would not spare a hanging CRM
  anything more, since a batch has up to ``PUSH_CONCURRENCY`` (16) requests in
  flight before the first one times out.
* 60 s open before one probe: a hanging CRM then sees one request a minute
  instead of 16 at a time, and calls reach a recovered CRM within a minute.
  The template's circuit alarm counts held calls per minute, so it needs
  held calls to come back at least once a minute (recovery <= 60 s).
* 1 probe success closes it: the probe is a real call, and a 2xx from a CRM
  that was down is the evidence; needing 3 would leave the other held calls
  waiting out two more probe rounds for nothing.
* state cached 5 s per container (Powertools' default): a container that did
  not trip the circuit itself stops calling within 5 s of another one tripping
  it, for one eventually consistent read per destination per 5 s.

Powertools counts failures per execution environment (container) and writes
only transitions to the table, so the healthy path costs no writes; the price
is that each container needs its own 5 failures before it learns more than
its 5-second-old view of the table (README, "Circuit breaker and rate limit").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from aws_lambda_powertools.utilities.circuit_breaker import (
    CircuitBreakerConfig,
    CircuitInfo,
    CircuitState,
    CircuitTransition,
    circuit_breaker,
)
from aws_lambda_powertools.utilities.circuit_breaker.persistence import CircuitBreakerDynamoDBPersistence
from aws_lambda_powertools.utilities.circuit_breaker.persistence.base import CircuitBreakerPersistenceLayer
from botocore.exceptions import BotoCoreError, ClientError

from crm_push.adapters.dynamodb import aws_error
from crm_push.delivery import is_retryable
from crm_push.push import HeldBack, SendOutcome

log = logging.getLogger(__name__)

CIRCUIT_PREFIX = "circuit#"
RATE_PREFIX = "rate#"
STATE_KEY = "pk"
STATE_TTL_ATTRIBUTE = "expires_at"

# No request leaves in the last 200 ms of its window: on a pooled connection it reaches the
# CRM well within that, so it arrives in the second it was counted in.
RATE_EDGE_GUARD_SECONDS = 0.2
RATE_COUNTER_TTL_SECONDS = 60
# When the counter cannot be read, nobody knows how busy the CRM is: hold the call a little.
RATE_COUNTER_DOWN_HOLD_SECONDS = 5.0

MetricCounter = Callable[[str], None]
"""Counts one occurrence of a metric by name (the handler maps it to a Powertools metric)."""

Verdict = Literal["failure", "healthy", "no_verdict"]


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    """The circuit breaker's numbers (see the module's docstring for why these)."""

    failure_threshold: int = 5
    recovery_timeout_seconds: int = 60
    success_threshold: int = 1
    state_cache_seconds: int = 5
    probe_answer_seconds: float = 15.0
    """How long calls wait while another call is the probe: one attempt (10 s) and its bookkeeping."""


def circuit_name(destination: str) -> str:
    """The circuit's name, which is also its item's ``pk``."""
    return f"{CIRCUIT_PREFIX}{destination}"


def destination_of_circuit(name: str) -> str:
    return name.removeprefix(CIRCUIT_PREFIX)


def verdict_on(outcome: SendOutcome) -> Verdict:
    """What one attempt says about the destination's health."""
    if outcome.attempts == 0:
        return "no_verdict"  # nothing reached for the CRM
    if is_retryable(outcome.http_status, outcome.error_kind):
        return "failure"
    if outcome.http_status is None:
        return "no_verdict"  # our own failure (internal), not the CRM's
    return "healthy"


class _CrmFailed(Exception):
    """Carries a failed attempt through Powertools' breaker, which counts exceptions."""

    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__("the CRM failed")
        self.outcome = outcome


class _NoVerdict(Exception):
    """Carries an attempt that says nothing about the CRM: re-raised by the breaker without counting."""

    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__("no verdict on the CRM")
        self.outcome = outcome


def state_table_persistence(client: Any, table_name: str) -> CircuitBreakerDynamoDBPersistence:
    """Powertools' DynamoDB persistence on the delivery-state table: one ``circuit#...`` item per destination."""
    return CircuitBreakerDynamoDBPersistence(
        table_name=table_name, key_attr=STATE_KEY, expiry_attr=STATE_TTL_ATTRIBUTE, boto3_client=client
    )


# --- the rate limit --------------------------------------------------------------------------


class RateCounter(Protocol):
    """Per-window counters shared by every invocation; ``take`` is one atomic conditional increment."""

    def take(self, key: str, capacity: int, expires_at: int) -> int | None:
        """Count one request in window ``key`` unless ``capacity`` are counted already.

        Returns the request's place in the window (1 for the first), or None when it is full.
        """
        ...


class RateCounterTable:
    """The counters as ``rate#...`` items of the state table.

    Each ``take`` is one UpdateItem on an item under 1 KB: one write unit,
    whether it takes a slot or its condition refuses it (DynamoDB bills a
    failed conditional write like a successful one).
    """

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def take(self, key: str, capacity: int, expires_at: int) -> int | None:
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={STATE_KEY: {"S": key}},
                UpdateExpression="ADD #sent :one SET #ttl = :ttl",
                ConditionExpression="attribute_not_exists(#sent) OR #sent < :capacity",
                ExpressionAttributeNames={"#sent": "sent", "#ttl": STATE_TTL_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":capacity": {"N": str(capacity)},
                    ":ttl": {"N": str(expires_at)},
                },
                ReturnValues="UPDATED_NEW",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise
        return int(response["Attributes"]["sent"]["N"])


@dataclass(frozen=True, slots=True)
class RateWindow:
    """The window a request falls in: ``capacity`` requests from ``start`` for ``seconds``."""

    start: int  # epoch seconds
    seconds: int
    capacity: int

    @property
    def end(self) -> datetime:
        return datetime.fromtimestamp(self.start + self.seconds, UTC)


def rate_window(limit_per_second: float, now: datetime) -> RateWindow:
    """``limit_per_second`` as whole requests per calendar window (contract §10: never more in any second).

    At 1/s or more: a one-second window of ``floor(limit)`` requests (2.5/s
    allows 2, since 3 in one second would break the limit). Below 1/s: one
    request per window of ``ceil(1/limit)`` seconds, aligned on the epoch.
    """
    epoch = now.timestamp()
    if limit_per_second >= 1:
        return RateWindow(math.floor(epoch), 1, math.floor(limit_per_second))
    seconds = math.ceil(1 / limit_per_second)
    return RateWindow(math.floor(epoch) // seconds * seconds, seconds, 1)


# --- the gate ----------------------------------------------------------------------------------


class CircuitAndRateGate:
    """The real ``DestinationGate``: rate limit and circuit breaker around one attempt.

    Order matters: an open circuit holds the call before it takes a rate slot,
    and the rate limit is checked outside the breaker, so a call held by the
    rate limit is never mistaken for a success (which would reset the failure
    count, or close a half-open circuit). Safe to share between threads.
    """

    def __init__(
        self,
        persistence: CircuitBreakerPersistenceLayer,
        rate_counter: RateCounter,
        *,
        settings: CircuitSettings | None = None,
        count_metric: MetricCounter | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        edge_guard_seconds: float = RATE_EDGE_GUARD_SECONDS,
    ) -> None:
        self.settings = settings or CircuitSettings()
        self._persistence = persistence
        self._rates = rate_counter
        self._count_metric = count_metric
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self._edge_guard = edge_guard_seconds
        self._config = CircuitBreakerConfig(
            failure_threshold=self.settings.failure_threshold,
            recovery_timeout=self.settings.recovery_timeout_seconds,
            success_threshold=self.settings.success_threshold,
            handled_exceptions=_CrmFailed,
            local_cache_max_age=self.settings.state_cache_seconds,
        )

    def send(
        self, destination: str, rate_limit_per_second: float | None, send: Callable[[], SendOutcome]
    ) -> SendOutcome | HeldBack:
        name = circuit_name(destination)
        # The breaker configures the persistence itself, but only after the peek below has read through it.
        self._persistence.configure(self._config, name)
        held = self._held_before_probe_time(name)
        if held is not None:
            return held
        if rate_limit_per_second is not None:
            limited = self._take_rate_slot(destination, rate_limit_per_second)
            if limited is not None:
                return limited
        breaker = circuit_breaker(
            name=name,
            persistence_store=self._persistence,
            on_circuit_open=self._held_by_circuit,
            on_transition=self._on_transition,
            config=self._config,
        )
        try:
            result: SendOutcome | HeldBack = breaker(self._judged(name, send))()
        except (_CrmFailed, _NoVerdict) as carried:
            return carried.outcome
        return result

    def is_open(self, destination: str) -> bool:
        """Whether the destination's circuit is open or probing now: the breaker's own cached read."""
        name = circuit_name(destination)
        self._persistence.configure(self._config, name)
        return self._persistence.get_state(name).state != CircuitState.CLOSED

    # --- the circuit ----------------------------------------------------------------------

    def _held_before_probe_time(self, name: str) -> HeldBack | None:
        """An open circuit whose probe is not due holds the call here, before it takes a rate slot.

        The same cached read the breaker makes next, so it costs nothing more;
        every other state is the breaker's to decide.
        """
        info = self._persistence.get_state(name).to_circuit_info()
        if info.state != CircuitState.OPEN or info.opened_at is None:
            return None
        if self._clock().timestamp() >= info.opened_at + self.settings.recovery_timeout_seconds:
            return None
        return self._held_by_circuit(circuit=info)

    def _held_by_circuit(self, *, circuit: CircuitInfo) -> HeldBack:
        """The breaker said no: come back when it lets a probe through, or once the probe in flight has answered."""
        now = self._clock()
        until = now + timedelta(seconds=self.settings.probe_answer_seconds)
        if circuit.state == CircuitState.OPEN and circuit.opened_at is not None:
            probe_at = datetime.fromtimestamp(circuit.opened_at + self.settings.recovery_timeout_seconds, UTC)
            if probe_at > now:
                until = probe_at
        self._count("CallsHeldByOpenCircuit")
        return HeldBack("circuit_open", until)

    def _judged(self, name: str, send: Callable[[], SendOutcome]) -> Callable[[], SendOutcome]:
        """``send``, raising what the breaker must count as a failure and what it must not count at all."""

        def attempt() -> SendOutcome:
            outcome = send()
            verdict = verdict_on(outcome)
            if verdict == "no_verdict":
                raise _NoVerdict(outcome)
            # A request that was in flight when another one tripped the circuit is not a fresh
            # failure: counting it would trip the open circuit again and report a second opening.
            if verdict == "failure" and self._persistence.get_state(name).state != CircuitState.OPEN:
                raise _CrmFailed(outcome)
            return outcome

        return attempt

    def _on_transition(self, transition: CircuitTransition) -> None:
        destination = destination_of_circuit(transition.circuit_name)
        moved = (transition.from_state, transition.to_state)
        fields: dict[str, Any] = {
            "destination": destination,
            "from_state": str(transition.from_state),
            "to_state": str(transition.to_state),
        }
        if transition.to_state == CircuitState.OPEN and transition.opened_at is not None:
            probe_at = datetime.fromtimestamp(transition.opened_at + self.settings.recovery_timeout_seconds, UTC)
            fields["next_probe_at"] = probe_at.isoformat().replace("+00:00", "Z")
        if moved == (CircuitState.CLOSED, CircuitState.OPEN):
            log.warning("circuit opened: the destination is not called until a probe succeeds", extra=fields)
            self._count("CircuitOpened")
        elif moved == (CircuitState.HALF_OPEN, CircuitState.OPEN):
            log.warning("circuit reopened: the probe failed", extra=fields)
            self._count("CircuitReopened")
        elif transition.to_state == CircuitState.CLOSED:
            log.warning("circuit closed: the probe succeeded, calls go through again", extra=fields)
            self._count("CircuitClosed")
        else:
            log.info("circuit half-open: one call goes through as the probe", extra=fields)

    # --- the rate limit ----------------------------------------------------------------------

    def _take_rate_slot(self, destination: str, limit_per_second: float) -> HeldBack | None:
        now = self._clock()
        window = rate_window(limit_per_second, now)
        sending_ends = window.start + window.seconds - self._edge_guard
        if now.timestamp() > sending_ends:
            return self._rate_limited(window.end, destination, "edge of the second")
        key = f"{RATE_PREFIX}{destination}#{window.start}"
        try:
            place = self._rates.take(key, window.capacity, window.start + window.seconds + RATE_COUNTER_TTL_SECONDS)
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "rate-limit counter unavailable; holding the call",
                extra={"destination": destination, "error": aws_error(exc)},
            )
            until = now + timedelta(seconds=RATE_COUNTER_DOWN_HOLD_SECONDS)
            return self._rate_limited(until, destination, "counter unavailable")
        if place is None:
            return self._rate_limited(window.end, destination, "limit reached")
        send_at = window.start + (place - 1) * (window.seconds - self._edge_guard) / window.capacity
        wait = send_at - self._clock().timestamp()  # the counter's round trip has taken some of it
        if wait > 0:
            self._sleep(wait)
        if self._clock().timestamp() > sending_ends:
            # Held up past the window's sending time (a starved thread): it would arrive in the next
            # second on top of that second's own. The slot is lost, which errs on the CRM's side.
            return self._rate_limited(window.end, destination, "late for its slot")
        return None

    def _rate_limited(self, until: datetime, destination: str, why: str) -> HeldBack:
        self._count("RateLimited")
        log.debug("rate limited", extra={"destination": destination, "why": why})
        return HeldBack("rate_limited", until)

    def _count(self, metric: str) -> None:
        if self._count_metric is None:
            return
        try:
            self._count_metric(metric)
        except Exception:  # a metric must never cost a push
            log.warning("counting metric %s failed", metric, exc_info=True)


def state_table_gate(
    client: Any,
    table_name: str,
    *,
    settings: CircuitSettings | None = None,
    count_metric: MetricCounter | None = None,
) -> CircuitAndRateGate:
    """The gate on the delivery-state table, for the function's wiring."""
    return CircuitAndRateGate(
        state_table_persistence(client, table_name),
        RateCounterTable(client, table_name),
        settings=settings,
        count_metric=count_metric,
    )


# --- for operators (post-call-push circuits) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitView:
    """One destination's circuit as the table has it, for operators."""

    destination: str
    state: str  # CLOSED, OPEN, HALF_OPEN
    failure_count: int
    opened_at: datetime | None
    next_probe_at: datetime | None  # OPEN: when a call may probe; HALF_OPEN: when the probe's lease ends

    def as_json(self) -> dict[str, Any]:
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat().replace("+00:00", "Z") if moment else None

        return {
            "destination": self.destination,
            "state": self.state,
            "failure_count": self.failure_count,
            "opened_at": iso(self.opened_at),
            "next_probe_at": iso(self.next_probe_at),
        }


def _epoch(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value["N"]), UTC)


def list_circuits(client: Any, table_name: str, settings: CircuitSettings | None = None) -> list[CircuitView]:
    """Every ``circuit#`` item of the state table (a Scan: it reads the whole table, delivery items too)."""
    settings = settings or CircuitSettings()
    views: list[CircuitView] = []
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "FilterExpression": "begins_with(#pk, :prefix)",
        "ExpressionAttributeNames": {"#pk": STATE_KEY},
        "ExpressionAttributeValues": {":prefix": {"S": CIRCUIT_PREFIX}},
    }
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            views.append(_view(item, settings))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return sorted(views, key=lambda v: (v.state == "CLOSED", v.destination))


def _view(item: dict[str, Any], settings: CircuitSettings) -> CircuitView:
    state = item.get("state", {}).get("S", "CLOSED")
    opened_at = _epoch(item.get("opened_at"))
    next_probe: datetime | None = None
    if state == "OPEN" and opened_at is not None:
        next_probe = opened_at + timedelta(seconds=settings.recovery_timeout_seconds)
    elif state == "HALF_OPEN":
        next_probe = _epoch(item.get("probe_lease_expiry"))
    return CircuitView(
        destination=destination_of_circuit(item[STATE_KEY]["S"]),
        state=state,
        failure_count=int(item.get("failure_count", {}).get("N", "0")),
        opened_at=opened_at,
        next_probe_at=next_probe,
    )


def read_circuit(
    client: Any, table_name: str, destination: str, settings: CircuitSettings | None = None
) -> CircuitView | None:
    """One destination's circuit (a consistent GetItem), or None when it has never opened: it is closed."""
    item = client.get_item(
        TableName=table_name, Key={STATE_KEY: {"S": circuit_name(destination)}}, ConsistentRead=True
    ).get("Item")
    return _view(item, settings or CircuitSettings()) if item else None


def close_circuit(client: Any, table_name: str, destination: str) -> bool:
    """Close a destination's circuit by hand, as a successful probe would; False if it has no circuit item.

    Containers that cached the open state keep it for up to ``state_cache_seconds``.
    """
    name = circuit_name(destination)
    if read_circuit(client, table_name, destination) is None:
        return False
    persistence = state_table_persistence(client, table_name)
    persistence.configure(CircuitBreakerConfig(recovery_timeout=CircuitSettings().recovery_timeout_seconds), name)
    persistence.save_closed(name)
    log.warning("circuit closed by hand", extra={"destination": destination})
    return True
