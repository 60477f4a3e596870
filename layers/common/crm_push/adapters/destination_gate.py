"""The destination gate (contract §10, §12): a circuit breaker and a rate limit per (destination, scope).

A gate key (``ports.GateKey``) is a destination (scheme, host and port, from
the one parse of the url) within one tenant's scope (the bot's ``tenant_id``,
else its ``bot_id``): a SaaS CRM serves every tenant from one host, and one
tenant's broken flow, quota or rate limit must never hold back another
tenant's calls to it (contract §12). Both guards keep their state in the
delivery-state table (``PUSH_STATE_TABLE``, key ``pk``), beside the
``delivery#<call_id>`` items:

``circuit#<scope>#<destination>``
    Powertools' circuit breaker record (``CircuitBreakerDynamoDBPersistence``):
    ``state`` (CLOSED, OPEN, HALF_OPEN), ``failure_count`` (the tripping
    container's count), ``opened_at``, ``half_open_owner`` and
    ``probe_lease_expiry`` (the one probe in flight), ``expires_at`` (TTL: an
    hour after the last transition; a missing record is a closed circuit).
``rate#<scope>#<destination>#<window start, epoch seconds>``
    ``sent``: requests let through in that calendar window (UTC);
    ``expires_at``: a minute after the window ends.

A destination never holds ``#`` (it is scheme://host:port), so the last
``#`` splits a circuit's name back into scope and destination whatever the
scope holds.

The rate limit is a counter per calendar window, taken with one conditional
update (``ADD``, only while below the bot's own limit) by every invocation
alike. The count it returns is the request's place in its window, and the
n-th request goes out at ``(n-1)/limit`` of the window's sending time (all of
it but the last 200 ms): requests are spread, not sent in a burst, and none
leaves in the last 200 ms, so one that is slow on its way still arrives in
the second it was counted in (contract §10 allows one more at a second's
edge; this keeps it to that). Bots of one scope that share a destination
share its counter: each takes a slot only while the count is below its own
limit, so the scope's total never passes the highest of their limits.

What counts against a circuit is ``error_kinds.counts_against_circuit``: no
answer (timeout, connection, DNS, TLS), 408, 429 and 5xx. A 429 counts: a CRM
asking this scope to slow down is spared more by a paused circuit than by
each call burning an attempt on it, and since circuits are per scope it
pauses only the tenant that was told. A spent quota (``quota``, contract §14)
does not count. Any other answer of the CRM, 4xx included, is the CRM
working. An outcome of no attempt (the deadline came first, the SSRF guard
refused the URL), of our own side (config, secret, a bug) or of another
endpoint (the OAuth token endpoint) says nothing about the CRM and leaves the
circuit alone.

The numbers (``CircuitSettings``) and why:

* 5 consecutive failures open a circuit: one slow or dropped request must not
  stop a destination, and a lower number would not spare a hanging CRM
  anything more, since a batch has up to ``PUSH_CONCURRENCY`` (16) requests in
  flight before the first one times out.
* 60 s open before one probe: a hanging CRM then sees one request a minute
  per scope instead of 16 at a time, and calls reach a recovered CRM within a
  minute. The template's circuit alarm counts held calls per minute, so it
  needs held calls to come back at least once a minute (recovery <= 60 s).
* 1 probe success closes it: the probe is a real call, and a 2xx from a CRM
  that was down is the evidence; needing 3 would leave the other held calls
  waiting out two more probe rounds for nothing.
* state cached 5 s per container (Powertools' default): a container that did
  not trip the circuit itself stops calling within 5 s of another one tripping
  it, for one eventually consistent read per key per 5 s.

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
from aws_lambda_powertools.utilities.circuit_breaker.persistence import (
    CircuitBreakerDynamoDBPersistence,
    CircuitStateRecord,
)
from aws_lambda_powertools.utilities.circuit_breaker.persistence.base import CircuitBreakerPersistenceLayer
from botocore.exceptions import BotoCoreError, ClientError

from crm_push.adapters.dynamodb import aws_error
from crm_push.clock import from_epoch, iso_utc
from crm_push.config import MIN_RATE_LIMIT_PER_SECOND
from crm_push.error_kinds import counts_against_circuit
from crm_push.ports import GateKey, HeldBack, SendOutcome

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
# The longest window a limit can make (config's floor is one request an hour): a limit that got
# past validation still holds a call for an hour at most, never for years (audit #18).
MAX_RATE_WINDOW_SECONDS = round(1 / MIN_RATE_LIMIT_PER_SECOND)
# 1/limit computed in floating point lands a hair above the whole number it stands for
# (1/(1/49) is 49.00000000000001): without this slack that limit would get a 50 s window.
_WINDOW_SLACK = 1e-9

# The kinds whose HTTP status is the CRM's own answer to the request: such an answer that does not
# count against the circuit is the CRM working (it resets the failure streak, and closes a circuit
# when it answers a probe). ``auth`` carries the token endpoint's status, not the CRM's.
CRM_ANSWER_KINDS = frozenset({None, "http_status", "crm_rejected", "quota"})

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


def circuit_name(key: GateKey) -> str:
    """The circuit's name, which is also its item's ``pk``: ``circuit#<scope>#<destination>``."""
    if "#" in key.destination or not key.destination:
        # A destination is scheme://host:port; a '#' would make the name ambiguous to read back.
        raise ValueError("a gate key's destination is scheme://host:port")
    if not key.scope:
        raise ValueError("a gate key needs a scope (the bot's tenant_id, else its bot_id)")
    return f"{CIRCUIT_PREFIX}{key.scope}#{key.destination}"


def key_of_circuit(name: str) -> GateKey:
    """The gate key a circuit's name stands for; the last ``#`` ends the scope."""
    scope, _, destination = name.removeprefix(CIRCUIT_PREFIX).rpartition("#")
    return GateKey(destination=destination, scope=scope)


def rate_counter_key(key: GateKey, window_start: int) -> str:
    """``rate#<scope>#<destination>#<window start>``: one counter per key and calendar window."""
    return f"{RATE_PREFIX}{circuit_name(key).removeprefix(CIRCUIT_PREFIX)}#{window_start}"


def verdict_on(outcome: SendOutcome) -> Verdict:
    """What one attempt says about the destination's health."""
    if outcome.attempts == 0:
        return "no_verdict"  # nothing reached for the CRM
    if counts_against_circuit(outcome.http_status, outcome.error_kind):
        return "failure"
    if outcome.http_status is not None and outcome.error_kind in CRM_ANSWER_KINDS:
        return "healthy"
    return "no_verdict"  # our own failure (internal, config, secret) or another endpoint's, not the CRM's


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
    """Powertools' DynamoDB persistence on the delivery-state table: one ``circuit#...`` item per gate key."""
    return CircuitBreakerDynamoDBPersistence(
        table_name=table_name, key_attr=STATE_KEY, expiry_attr=STATE_TTL_ATTRIBUTE, boto3_client=client
    )


def held_by(record: CircuitStateRecord, now: datetime, settings: CircuitSettings) -> datetime | None:
    """When a circuit in this state lets calls go again, if it holds them at ``now``; None if it does not.

    OPEN: until the probe time (from then on the next call may become the
    probe). HALF_OPEN: a probe is in flight, so a short wait for its answer;
    once its lease is over (the prober died) the next call may take over.
    """
    if record.state == CircuitState.OPEN:
        if record.opened_at is None:  # Powertools reads a missing opened_at as "just opened"
            return now + timedelta(seconds=settings.recovery_timeout_seconds)
        probe_at = from_epoch(record.opened_at + settings.recovery_timeout_seconds)
        return probe_at if probe_at > now else None
    if record.state == CircuitState.HALF_OPEN:
        if record.probe_lease_expiry is not None and from_epoch(record.probe_lease_expiry) <= now:
            return None
        return now + timedelta(seconds=settings.probe_answer_seconds)
    return None


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
        return from_epoch(self.start + self.seconds)


def rate_window(limit_per_second: float, now: datetime) -> RateWindow:
    """``limit_per_second`` as whole requests per calendar window (contract §10: never more in any second).

    At 1/s or more: a one-second window of ``floor(limit)`` requests (2.5/s
    allows 2, since 3 in one second would break the limit). Below 1/s: one
    request per window of ``ceil(1/limit)`` seconds, aligned on the epoch,
    and never longer than ``MAX_RATE_WINDOW_SECONDS`` (an hour).
    """
    if not (limit_per_second > 0 and math.isfinite(limit_per_second)):
        raise ValueError("a rate limit is a positive number of requests per second")
    epoch = now.timestamp()
    if limit_per_second >= 1:
        return RateWindow(math.floor(epoch), 1, math.floor(limit_per_second))
    # Compared before dividing: 1/limit of a tiny limit is infinite.
    if limit_per_second * MAX_RATE_WINDOW_SECONDS <= 1:
        seconds = MAX_RATE_WINDOW_SECONDS
    else:
        seconds = math.ceil(1 / limit_per_second - _WINDOW_SLACK)
    return RateWindow(math.floor(epoch) // seconds * seconds, seconds, 1)


# --- the gate ----------------------------------------------------------------------------------


class CircuitAndRateGate:
    """The real ``DestinationGate``: rate limit and circuit breaker around one attempt, per gate key.

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
        self, key: GateKey, rate_limit_per_second: float | None, send: Callable[[], SendOutcome]
    ) -> SendOutcome | HeldBack:
        name = circuit_name(key)
        held = self._held_before_probe_time(name)
        if held is not None:
            return held
        if rate_limit_per_second is not None:
            limited = self._take_rate_slot(key, rate_limit_per_second)
            if limited is not None:
                return limited
        breaker = circuit_breaker(
            name=name,
            persistence_store=self._persistence,
            on_circuit_open=self._held_by_breaker,
            on_transition=self._on_transition,
            config=self._config,
        )
        try:
            result: SendOutcome | HeldBack = breaker(self._judged(name, send))()
        except (_CrmFailed, _NoVerdict) as carried:
            return carried.outcome
        return result

    def held_until(self, key: GateKey) -> datetime | None:
        """When calls to ``key`` may next go, if its circuit holds them now; None when they may go.

        The breaker's own cached read (one eventually consistent GetItem per
        key per ``state_cache_seconds``), so the core can ask before it reads
        or renders a call. A pure read: it counts no metric and changes
        nothing (the core also asks it when deciding whether a retry is worth
        waiting for, which holds no call); a call the core parks on its answer
        is the core's to count.
        """
        return held_by(self._circuit(circuit_name(key)), self._clock(), self.settings)

    # --- the circuit ----------------------------------------------------------------------

    def _circuit(self, name: str) -> CircuitStateRecord:
        # The breaker configures the persistence itself, but only once it runs: a read before
        # that would cache the state for Powertools' default age instead of ours.
        self._persistence.configure(self._config, name)
        return self._persistence.get_state(name)

    def _held_before_probe_time(self, name: str) -> HeldBack | None:
        """An open circuit whose probe is not due holds the call here, before it takes a rate slot.

        The same cached read the breaker makes next, so it costs nothing more;
        every other state is the breaker's to decide.
        """
        record = self._circuit(name)
        if record.state != CircuitState.OPEN:
            return None
        until = held_by(record, self._clock(), self.settings)
        return None if until is None else self._held(until)

    def _held_by_breaker(self, *, circuit: CircuitInfo) -> HeldBack:
        """The breaker said no: come back when it lets a probe through, or once the probe in flight has answered."""
        now = self._clock()
        until = held_by(self._circuit(circuit.name), now, self.settings)
        # None: the probe was due or its lease over, and another call won the election just now.
        return self._held(until or now + timedelta(seconds=self.settings.probe_answer_seconds))

    def _held(self, until: datetime) -> HeldBack:
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
        key = key_of_circuit(transition.circuit_name)
        moved = (transition.from_state, transition.to_state)
        fields: dict[str, Any] = {
            "destination": key.destination,
            "scope": key.scope,
            "from_state": str(transition.from_state),
            "to_state": str(transition.to_state),
        }
        if transition.to_state == CircuitState.OPEN and transition.opened_at is not None:
            fields["next_probe_at"] = iso_utc(from_epoch(transition.opened_at + self.settings.recovery_timeout_seconds))
        if moved == (CircuitState.CLOSED, CircuitState.OPEN):
            log.warning(
                "circuit opened: the destination is not called for this scope until a probe succeeds", extra=fields
            )
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

    def _take_rate_slot(self, key: GateKey, limit_per_second: float) -> HeldBack | None:
        now = self._clock()
        window = rate_window(limit_per_second, now)
        sending_ends = window.start + window.seconds - self._edge_guard
        if now.timestamp() > sending_ends:
            return self._rate_limited(window.end, key, "edge of the second")
        counter = rate_counter_key(key, window.start)
        try:
            place = self._rates.take(counter, window.capacity, window.start + window.seconds + RATE_COUNTER_TTL_SECONDS)
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "rate-limit counter unavailable; holding the call",
                extra={"destination": key.destination, "scope": key.scope, "error": aws_error(exc)},
            )
            until = now + timedelta(seconds=RATE_COUNTER_DOWN_HOLD_SECONDS)
            return self._rate_limited(until, key, "counter unavailable")
        if place is None:
            return self._rate_limited(window.end, key, "limit reached")
        send_at = window.start + (place - 1) * (window.seconds - self._edge_guard) / window.capacity
        wait = send_at - self._clock().timestamp()  # the counter's round trip has taken some of it
        if wait > 0:
            self._sleep(wait)
        if self._clock().timestamp() > sending_ends:
            # Held up past the window's sending time (a starved thread): it would arrive in the next
            # second on top of that second's own. The slot is lost, which errs on the CRM's side.
            return self._rate_limited(window.end, key, "late for its slot")
        return None

    def _rate_limited(self, until: datetime, key: GateKey, why: str) -> HeldBack:
        self._count("RateLimited")
        log.debug("rate limited", extra={"destination": key.destination, "scope": key.scope, "why": why})
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
    """One (destination, scope) circuit as the table has it, for operators."""

    destination: str
    scope: str
    state: str  # CLOSED, OPEN, HALF_OPEN
    failure_count: int
    opened_at: datetime | None
    next_probe_at: datetime | None  # OPEN: when a call may probe; HALF_OPEN: when the probe's lease ends

    @property
    def key(self) -> GateKey:
        return GateKey(destination=self.destination, scope=self.scope)

    def as_json(self) -> dict[str, Any]:
        def iso(moment: datetime | None) -> str | None:
            return iso_utc(moment) if moment else None

        return {
            "destination": self.destination,
            "scope": self.scope,
            "state": self.state,
            "failure_count": self.failure_count,
            "opened_at": iso(self.opened_at),
            "next_probe_at": iso(self.next_probe_at),
        }


def _epoch(value: Any) -> datetime | None:
    if value is None:
        return None
    return from_epoch(int(value["N"]))


def list_circuits(
    client: Any, table_name: str, settings: CircuitSettings | None = None, *, scope: str | None = None
) -> list[CircuitView]:
    """Every ``circuit#`` item of the state table (or of one scope), open ones first.

    A Scan with a filter: it reads the whole table, delivery items too. The
    table's only key is ``pk``, so the circuits cannot be one Query's
    partition without a new table (a sort key) or an index: an operator's
    command, never the function's.
    """
    settings = settings or CircuitSettings()
    prefix = CIRCUIT_PREFIX if scope is None else f"{CIRCUIT_PREFIX}{scope}#"
    views: list[CircuitView] = []
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "FilterExpression": "begins_with(#pk, :prefix)",
        "ExpressionAttributeNames": {"#pk": STATE_KEY},
        "ExpressionAttributeValues": {":prefix": {"S": prefix}},
    }
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            view = _view(item, settings)
            # The prefix of scope "a" also matches scope "a#b": keep the scope asked for.
            if scope is None or view.scope == scope:
                views.append(view)
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return sorted(views, key=lambda v: (v.state == "CLOSED", v.destination, v.scope))


def _view(item: dict[str, Any], settings: CircuitSettings) -> CircuitView:
    state = item.get("state", {}).get("S", "CLOSED")
    opened_at = _epoch(item.get("opened_at"))
    next_probe: datetime | None = None
    if state == "OPEN" and opened_at is not None:
        next_probe = opened_at + timedelta(seconds=settings.recovery_timeout_seconds)
    elif state == "HALF_OPEN":
        next_probe = _epoch(item.get("probe_lease_expiry"))
    key = key_of_circuit(item[STATE_KEY]["S"])
    return CircuitView(
        destination=key.destination,
        scope=key.scope,
        state=state,
        failure_count=int(item.get("failure_count", {}).get("N", "0")),
        opened_at=opened_at,
        next_probe_at=next_probe,
    )


def read_circuit(
    client: Any, table_name: str, key: GateKey, settings: CircuitSettings | None = None
) -> CircuitView | None:
    """One key's circuit (a consistent GetItem), or None when it has never opened: it is closed."""
    item = client.get_item(TableName=table_name, Key={STATE_KEY: {"S": circuit_name(key)}}, ConsistentRead=True).get(
        "Item"
    )
    return _view(item, settings or CircuitSettings()) if item else None


def close_circuit(client: Any, table_name: str, key: GateKey) -> bool:
    """Close one (destination, scope) circuit by hand, as a successful probe would; False if it has no item.

    Other scopes' circuits on the same destination are theirs: they stay as
    they are. Containers that cached the open state keep it for up to
    ``state_cache_seconds``.
    """
    name = circuit_name(key)
    if read_circuit(client, table_name, key) is None:
        return False
    persistence = state_table_persistence(client, table_name)
    persistence.configure(CircuitBreakerConfig(recovery_timeout=CircuitSettings().recovery_timeout_seconds), name)
    persistence.save_closed(name)
    log.warning("circuit closed by hand", extra={"destination": key.destination, "scope": key.scope})
    return True
