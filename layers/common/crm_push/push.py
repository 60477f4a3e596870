"""The post-call push of one call: eligibility, config, recording, variables, render, send, record.

Plain Python. Everything outside the process (the tables, S3, the CRM, the
clock) comes in through ``PushDeps``, so this reads top to bottom and is
tested with in-memory fakes.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from crm_push.config import BotConfig, PostCallPushConfig, SecretRef, check_header
from crm_push.delivery import is_retryable, iso_utc, next_attempt, schedule_for
from crm_push.errors import (
    AlreadyPushed,
    ClaimHeld,
    ConfigError,
    NotDue,
    PayloadTooLarge,
    QueueError,
    ResultsNotStored,
    StorageError,
)
from crm_push.jsonvalues import to_json, to_text
from crm_push.recording import Presigner, RecordingLinkMode, select_recording_url
from crm_push.redaction import scrub, url_credential_values
from crm_push.retry_after import parse_retry_after
from crm_push.secrets import PushCredentials, SecretResolver, SecretUnavailable, resolve_push_credentials, secret_values
from crm_push.signing import signed_content, webhook_headers
from crm_push.templates import compile_template
from crm_push.variables import build_push_variables, parse_utc_timestamp

log = logging.getLogger(__name__)

PushStatus = Literal["ok", "rejected", "skipped", "failed"]
MAX_PAYLOAD_BYTES = 1_000_000
MAX_RESPONSE_BODY_CHARS = 2_000
USER_AGENT = "post-call-push/1.0"


# --- what crosses the ports --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One HTTP request to a CRM. ``headers`` may hold credentials: never log or store them."""

    call_id: str
    method: Literal["POST", "GET"]
    url: str  # with the query string for GET
    headers: dict[str, str]
    body: bytes | None
    recorded_url: str  # the destination without credentials or query values


# Why an attempt did not end in a 2xx (contract §10); None when it did.
ErrorKind = Literal[
    "timeout",
    "connection",
    "dns",
    "tls",
    "destination_refused",
    "http_status",
    "config",
    "secret",
    "circuit_open",
    "payload_too_large",
    "internal",
]


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one attempt to reach the CRM came to: an HTTP answer (``http_status``) or none (``error``).

    ``attempts`` is 1 when the CRM was tried (a refused connection or a failed
    DNS lookup included) and 0 when nothing was tried (the destination was
    refused by the guard). ``retry_after`` is the CRM's ``Retry-After`` header
    as it came, for the core's schedule.
    """

    http_status: int | None
    response_body: str = ""
    error: str | None = None
    attempts: int = 1
    duration_ms: int = 0
    error_kind: ErrorKind | None = None
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """An operator's explicit re-push: who asked, and why."""

    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class PushResult:
    """``post_call_push_result`` (contract §9 and §10), plus which recording link and, for replays, who asked.

    ``status`` describes the latest attempt; ``attempts`` counts every attempt
    of the delivery; ``next_attempt_at`` is set while another is scheduled.
    """

    status: PushStatus
    http_status: int | None
    response_body: str
    error: str | None
    url: str
    method: str
    pushed_at: str
    duration_ms: int
    attempts: int = 0
    error_kind: ErrorKind | None = None
    next_attempt_at: str | None = None
    exhausted: bool = False
    recording_link: str = "none"
    replay: dict[str, str] | None = None

    def as_item(self) -> dict[str, Any]:
        item = asdict(self)
        if item["replay"] is None:
            del item["replay"]
        return item


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """A call's delivery as the state table had it when this push claimed it."""

    attempts: int = 0
    status: Literal["new", "scheduled", "done"] = "new"
    call_written: bool = False  # the call item already carries a result of this delivery
    unwritten: tuple[dict[str, Any], ...] = ()  # attempt entries not yet on the call's integration_log
    taken_over: bool = False  # the previous holder's lease ran out: it may have died mid-attempt
    last_trigger: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """What the state table keeps after an attempt (or a reconciliation)."""

    attempts: int
    status: Literal["scheduled", "done"]
    due: datetime | None
    call_written: bool
    unwritten: tuple[dict[str, Any], ...]
    trigger: str | None


class CallStore(Protocol):
    def get_call(self, call_id: str) -> dict[str, Any] | None: ...

    def write_outcome(
        self, call_id: str, result: dict[str, Any], entries: list[dict[str, Any]], event: dict[str, Any], force: bool
    ) -> bool:
        """Set the result, append ``entries`` to ``integration_log`` and ``event`` to ``events``.

        Conditional: the call has no result yet, or one with fewer attempts
        (``force``, for replays: any result). False when that write was
        already made (a retried write after a lost answer, or a crash).
        Raises StorageError.
        """
        ...


class DeliveryStore(Protocol):
    def claim(
        self, call_id: str, claim_id: str, trigger: str, now: datetime, lease_seconds: int, force: bool
    ) -> DeliveryState:
        """Take the call's delivery for one attempt.

        Raises AlreadyPushed (delivered, unless ``force``), NotDue (the next
        attempt is scheduled later, unless ``force``), ClaimHeld (another
        push holds a live lease) or StorageError.
        """
        ...

    def save(self, call_id: str, claim_id: str, update: DeliveryUpdate, now: datetime) -> bool:
        """Record the attempt and release the claim; False if the claim was lost meanwhile."""
        ...

    def release(self, call_id: str, claim_id: str) -> None:
        """Give the claim back without an attempt."""
        ...


class RetryQueue(Protocol):
    def schedule(self, message: dict[str, Any], delay_seconds: float) -> None:
        """Deliver ``message`` to the handler after ``delay_seconds`` (the queue caps one hop). Raises QueueError."""
        ...


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Not sent and not an attempt: the destination's circuit is open, or its rate limit is reached."""

    reason: Literal["circuit_open", "rate_limited"]
    until: datetime


class DestinationGate(Protocol):
    def send(
        self, destination: str, rate_limit_per_second: float | None, send: Callable[[], SendOutcome]
    ) -> SendOutcome | HeldBack:
        """Run ``send`` unless the destination must be spared (contract §10: circuit breaker, rate limit)."""
        ...

    def is_open(self, destination: str) -> bool:
        """Whether the destination's circuit is open now (calls are being held back)."""
        ...


class OpenGate:
    """Every destination open and unlimited: for tools and tests that do not exercise the gate."""

    def send(
        self, destination: str, rate_limit_per_second: float | None, send: Callable[[], SendOutcome]
    ) -> SendOutcome | HeldBack:
        return send()

    def is_open(self, destination: str) -> bool:
        return False


class BotDirectory(Protocol):
    def get_bot(self, bot_id: str) -> BotConfig | None: ...


class CrmSender(Protocol):
    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        """One attempt; never raises: every failure comes back as a SendOutcome with ``error``."""
        ...


@dataclass
class PushDeps:
    calls: CallStore
    bots: BotDirectory
    crm: CrmSender
    delivery: DeliveryStore
    retry_queue: RetryQueue | None = None
    presign: Presigner | None = None
    public_base_url: str | None = None
    recordings_bucket: str | None = None
    claim_lease_seconds: int = 900
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    deadline: Callable[[], float | None] = field(default=lambda: None)
    """Monotonic time by which sending must stop (the Lambda's remaining time), or None."""
    attempt_seconds: float = 10.0
    """How long one attempt may take: no attempt starts with less time than this left."""
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = field(default=random.random)
    gate: DestinationGate = field(default_factory=OpenGate)
    secrets: SecretResolver | None = None


PushOutcomeKind = Literal[
    "pushed",  # an attempt was made and recorded (its result says what came of it)
    "scheduled",  # nothing due now: the next attempt is on the retry queue
    "deferred",  # not attempted (the deadline was near): on the retry queue, no attempt spent
    "claim_held",  # another invocation holds the call: a check is on the retry queue
    "held_back",  # the destination's circuit is open or its rate limit reached: scheduled, no attempt spent
    "not_eligible",
    "no_config",
    "already_pushed",
    "call_not_found",
    "claim_lost",
]


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What happened to one call; ``result`` is the attempt's result when one was made."""

    call_id: str
    outcome: PushOutcomeKind
    result: PushResult | None = None


# --- the pieces of a push -----------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without userinfo, and with query values replaced: safe to store and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def build_headers(
    config: PostCallPushConfig, credentials: PushCredentials, variables: Mapping[str, Any], call_id: str
) -> dict[str, str]:
    """Our headers, then the config's: ``headers`` if set (plaintext ones are templates), else the token."""
    headers = {"User-Agent": USER_AGENT, "Idempotency-Key": call_id}
    if config.method == "POST":
        headers["Content-Type"] = "application/json"
    if credentials.headers is not None:
        for name, configured in credentials.headers.items():
            # A value from a secret store is used verbatim: never rendered as a template (contract §11).
            if name in credentials.verbatim_headers:
                value = configured
            else:
                value = compile_template(configured).render(variables, drop_unresolved=True)
                check_header(name, value)  # a templated value must not smuggle CR/LF in either
            check_latin1_header(name, value)
            headers[name] = value
    elif credentials.token:
        headers["Authorization"] = credentials.token
    return headers


def check_latin1_header(name: str, value: str) -> None:
    """HTTP/1.1 carries header values as Latin-1 bytes; anything else cannot be sent faithfully.

    RFC 8187 encoding is defined only for parameters of particular headers,
    and a CRM would not decode it on an arbitrary one: such a value belongs in
    the payload, so the config is at fault.
    """
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(
            f"header {name} has characters HTTP headers cannot carry (outside Latin-1); map that value into the"
            " payload instead"
        ) from None


def build_request(
    config: PostCallPushConfig,
    credentials: PushCredentials,
    payload: dict[str, Any],
    variables: Mapping[str, Any],
    call_id: str,
    signed_at: int,
) -> PushRequest:
    """The HTTP request for a rendered payload: JSON body for POST, query parameters for GET.

    With signing secrets the request is signed as sent (Standard Webhooks):
    ``webhook-id`` is the Idempotency-Key, so a receiver de-duplicates
    retries, and ``signed_at`` is this attempt's own time.
    """
    assert config.url  # callers handle the no-url case as "skipped"
    headers = build_headers(config, credentials, variables, call_id)
    if config.method == "GET":
        params = [(k, to_json(v) if isinstance(v, (dict, list)) else to_text(v)) for k, v in payload.items()]
        parts = urlsplit(config.url)
        query = "&".join(q for q in (parts.query, urlencode(params)) if q)
        url, body = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment)), None
        size = len(url)
    else:
        url, body = config.url, to_json(payload).encode("utf-8")
        size = len(body)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes, so it was not sent")
    if credentials.signing_secrets:
        content = signed_content(config.method, url, body)
        headers.update(webhook_headers(call_id, signed_at, content, credentials.signing_secrets))
    return PushRequest(call_id, config.method, url, headers, body, redact_url(config.url))


@dataclass(frozen=True, slots=True)
class PreparedPush:
    request: PushRequest
    payload: dict[str, Any]
    variables: dict[str, Any]
    recording_link: RecordingLinkMode
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)
    """Every credential of this push (resolved ones included): scrubbed from whatever is stored or logged."""


class NoSecretStore:
    """For deps without a secret store: a config that references one cannot be pushed."""

    def resolve(self, ref: SecretRef) -> str:
        raise SecretUnavailable(f"{ref.describe()}: no secret store is configured here", transient=False)


def prepare_push(call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps) -> PreparedPush:
    """Credentials, recording URL, variables, render, request: everything short of sending.

    Raises ConfigError, or SecretUnavailable when a referenced credential cannot be had.
    """
    config = bot.push
    if config is None or not config.url:
        raise ConfigError(bot.push_error or "no push config")
    credentials = resolve_push_credentials(config, deps.secrets or NoSecretStore())
    recording_url, link_mode = select_recording_url(
        call_doc, public_base_url=deps.public_base_url, recordings_bucket=deps.recordings_bucket, presign=deps.presign
    )
    variables = build_push_variables(
        call_doc, {"recording_url": recording_url, "analysis_keys": list(bot.analysis_keys)}, bot.timezone
    )
    payload = config.compiled_key_mapper.render(variables, drop_unresolved=True)
    call_id = str(call_doc.get("call_id", ""))
    signed_at = int(deps.clock().timestamp())
    request = build_request(config, credentials, payload, variables, call_id, signed_at)
    known = secret_values(credentials) | url_credential_values(config.url)
    return PreparedPush(request, payload, variables, link_mode, known)


def destination_of(url: str) -> str:
    """The circuit breaker's and rate limit's unit (contract §10): scheme, host and port, never credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = 0
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def status_for(outcome: SendOutcome) -> PushStatus:
    if outcome.http_status is None:
        return "failed"
    return "ok" if 200 <= outcome.http_status < 300 else "rejected"


def seconds_since_start(call_doc: Mapping[str, Any], now: datetime) -> Decimal:
    start = parse_utc_timestamp(call_doc.get("start_time"))
    if start is None:
        return Decimal(0)
    return Decimal(str(round((now - start).total_seconds(), 3)))


def _result(status: PushStatus, *, config: PostCallPushConfig | None, now: datetime, **fields: Any) -> PushResult:
    base: dict[str, Any] = {
        "http_status": None,
        "response_body": "",
        "error": None,
        "url": redact_url(config.url) if config and config.url else "",
        "method": config.method if config else "POST",
        "pushed_at": iso_utc(now),
        "duration_ms": 0,
    }
    base.update(fields)
    return PushResult(status=status, **base)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """One attempt's result (``attempts`` already counts it), and what the ladder needs to know of it."""

    result: PushResult
    retryable: bool = False
    retry_after: str | None = None
    deferred: bool = False  # not sent after all (the deadline came first): no attempt, no outcome
    held: HeldBack | None = None  # not sent: the destination is being spared


def run_attempt(call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps, attempts_before: int) -> AttemptOutcome:
    """Render and send one attempt; every failure becomes a result, none escapes."""
    config = bot.push
    now = deps.clock()
    counted = {"attempts": attempts_before}
    if config is None:
        error = bot.push_error or "invalid post_call_push config"
        return AttemptOutcome(_result("failed", config=None, now=now, error=error, error_kind="config", **counted))
    if not config.url:
        error = "post_call_push has no url"
        return AttemptOutcome(_result("skipped", config=config, now=now, error=error, error_kind="config", **counted))
    try:
        prepared = prepare_push(call_doc, bot, deps)
    except PayloadTooLarge as exc:
        failed = _result("failed", config=config, now=now, error=str(exc), error_kind="payload_too_large", **counted)
        return AttemptOutcome(failed)
    except SecretUnavailable as exc:
        # It fails the attempt (contract §11), and counts as one so that a store that
        # stays throttled still ends the delivery when the schedule does.
        failed = _result("failed", config=config, now=now, error=str(exc), error_kind="secret")
        failed = replace(failed, attempts=attempts_before + 1)
        return AttemptOutcome(failed, retryable=is_retryable(None, "secret", transient=exc.transient))
    except ConfigError as exc:
        return AttemptOutcome(_result("failed", config=config, now=now, error=str(exc), error_kind="config", **counted))
    except Exception as exc:  # a bug must still leave a readable record on the call
        log.exception("push could not be prepared", extra={"call_id": call_doc.get("call_id")})
        error = f"internal error while rendering: {type(exc).__name__}"
        return AttemptOutcome(_result("failed", config=config, now=now, error=error, error_kind="internal", **counted))

    sent = deps.gate.send(
        destination_of(config.url),
        config.rate_limit_per_second,
        lambda: deps.crm.send(prepared.request, deps.deadline()),
    )
    if isinstance(sent, HeldBack):
        held = _result(
            "failed",
            config=config,
            now=now,
            error=f"not sent: {sent.reason.replace('_', ' ')} for this destination",
            error_kind="circuit_open" if sent.reason == "circuit_open" else None,
            recording_link=prepared.recording_link,
            **counted,
        )
        return AttemptOutcome(held, held=sent)
    status = status_for(sent)
    kind = sent.error_kind
    if status == "rejected" and kind is None:
        kind = "http_status"
    if sent.attempts == 0 and sent.http_status is None and kind is None:
        # The sender found no time left: nothing reached for the CRM, so nothing to record.
        return AttemptOutcome(_result(status, config=config, now=now, **counted), deferred=True)
    result = _result(
        status,
        config=config,
        now=deps.clock(),
        http_status=sent.http_status,
        # A CRM that rejects a request often echoes the credentials it got: never store them.
        response_body=scrub(sent.response_body, prepared.secret_values)[:MAX_RESPONSE_BODY_CHARS],
        error=scrub(sent.error, prepared.secret_values) if sent.error else None,
        error_kind=None if status == "ok" else kind,
        duration_ms=sent.duration_ms,
        attempts=attempts_before + sent.attempts,
        recording_link=prepared.recording_link,
    )
    retryable = status != "ok" and is_retryable(sent.http_status, kind)
    return AttemptOutcome(result, retryable=retryable, retry_after=sent.retry_after)


# --- the delivery of one call -----------------------------------------------------------

MAX_WAIT_IN_INVOCATION_SECONDS = 10.0  # longer delays ride the retry queue (contract §10)
MAX_RATE_LIMIT_WAIT_SECONDS = 1.0  # a call over the rate limit waits for the next second, no longer


def push_call(
    call_id: str,
    deps: PushDeps,
    *,
    call_doc: Mapping[str, Any] | None = None,
    replay: Replay | None = None,
    trigger: str | None = None,
) -> PushOutcome:
    """Deliver one call whose results were stored (or replay it), attempt by attempt, recording what happened.

    ``call_doc`` is the item as the trigger saw it (a stream image); without
    it the item is read. ``trigger`` names the delivery that brought us here
    (stable across its redeliveries: a stream event id, an SQS message id),
    so a trigger retried after a crash can make sure the schedule it wrote
    has its message on the queue. Raises ResultsNotStored for an early
    event, and StorageError or QueueError when a retry of the trigger is
    needed; every other failure is recorded on the call.
    """
    trigger = trigger or f"direct:{uuid.uuid4().hex}"
    doc = call_doc if call_doc is not None else deps.calls.get_call(call_id)
    if doc is None:
        return PushOutcome(call_id, "call_not_found")
    if replay is None:
        if "results_stored_at" not in doc:
            raise ResultsNotStored(f"call {call_id} has no results_stored_at yet")
        if doc.get("skip_post_push") is True:
            return PushOutcome(call_id, "not_eligible")

    bot_id = doc.get("bot_id")
    bot = deps.bots.get_bot(bot_id) if isinstance(bot_id, str) and bot_id else None
    if bot is None or not bot.has_push_config:
        return PushOutcome(call_id, "no_config")

    while True:
        if not _time_for_attempt(deps, 0.0):
            _wake_up(deps, call_id, bot_id, deps.clock(), "deadline near, not attempted")
            return PushOutcome(call_id, "deferred")
        claim_id = uuid.uuid4().hex
        try:
            state = deps.delivery.claim(
                call_id, claim_id, trigger, deps.clock(), deps.claim_lease_seconds, force=replay is not None
            )
        except AlreadyPushed:
            return PushOutcome(call_id, "already_pushed")
        except NotDue as exc:
            if exc.scheduled_by == trigger:
                # This trigger wrote that schedule and is being retried: its message may never have been sent.
                _wake_up(deps, call_id, bot_id, _from_epoch(exc.due), "schedule re-sent after a retried trigger")
            return PushOutcome(call_id, "scheduled")
        except ClaimHeld as exc:
            # The holder is usually alive and done in seconds; if it died, this check takes over after its lease.
            # A lease is held through its last second: come back the second after.
            when = _from_epoch(exc.until + 1) if exc.until is not None else deps.clock() + timedelta(seconds=1)
            _wake_up(deps, call_id, bot_id, when, "another invocation holds the call")
            return PushOutcome(call_id, "claim_held")

        if state.taken_over and replay is None:
            adopted = _adopt_recorded_outcome(call_id, deps, claim_id, state, trigger)
            if adopted == "done":
                return PushOutcome(call_id, "already_pushed")
            if adopted == "scheduled":
                continue  # claim again: due now, or NotDue re-sends the schedule's message

        attempt = run_attempt(doc, bot, deps, state.attempts)
        if attempt.deferred:
            deps.delivery.release(call_id, claim_id)
            _wake_up(deps, call_id, bot_id, deps.clock(), "deadline near, not attempted")
            return PushOutcome(call_id, "deferred")
        if attempt.held is not None:
            wait = (attempt.held.until - deps.clock()).total_seconds()
            if attempt.held.reason == "rate_limited" and wait <= MAX_RATE_LIMIT_WAIT_SECONDS:
                deps.delivery.release(call_id, claim_id)
                deps.sleep(max(0.0, wait))
                continue
            _hold_back(call_id, doc, deps, claim_id, state, attempt, trigger)
            _wake_up(deps, call_id, bot_id, attempt.held.until, attempt.held.reason)
            return PushOutcome(call_id, "held_back", attempt.result)
        if replay is not None:
            attempt = replace(
                attempt, result=replace(attempt.result, replay={"by": replay.by, "reason": replay.reason})
            )

        result, due = _record_attempt(call_id, doc, bot, deps, claim_id, state, attempt, trigger, replay is not None)
        if due is None:
            return PushOutcome(call_id, "pushed", result)
        delay = (due - deps.clock()).total_seconds()
        # A short wait is worth it for a blip, not for a destination whose circuit has just opened:
        # the next attempt would only be held back, and this worker is needed by the rest of the batch.
        if (
            delay <= MAX_WAIT_IN_INVOCATION_SECONDS
            and _time_for_attempt(deps, delay)
            and not (bot.push and bot.push.url and deps.gate.is_open(destination_of(bot.push.url)))
        ):
            deps.sleep(max(0.0, delay) + _CLOCK_SLACK_SECONDS)
            replay = None  # a replay's own retries are ordinary scheduled attempts
            continue
        _wake_up(deps, call_id, bot_id, due, "next attempt scheduled")
        return PushOutcome(call_id, "pushed", result)


def _record_attempt(
    call_id: str,
    doc: Mapping[str, Any],
    bot: BotConfig,
    deps: PushDeps,
    claim_id: str,
    state: DeliveryState,
    attempt: AttemptOutcome,
    trigger: str,
    force: bool,
) -> tuple[PushResult, datetime | None]:
    """Decide what follows the attempt, then write the call (first outcome, or the end) and the state.

    Returns the result as recorded and when the next attempt is due (None
    when the delivery ended).
    """
    now = deps.clock()
    result = attempt.result
    due: datetime | None = None
    ended_why = ""
    if attempt.retryable:
        schedule = schedule_for(bot.push.retry_schedule_seconds if bot.push else None)
        nxt = next_attempt(
            result.attempts,
            schedule,
            retry_after_seconds=parse_retry_after(attempt.retry_after, now.timestamp()),
            jitter=deps.jitter(),
        )
        if nxt.delay_seconds is not None and deps.retry_queue is None:
            nxt = replace(nxt, delay_seconds=None, reason="no retry queue is configured")
        if nxt.delay_seconds is None:
            ended_why = nxt.reason
            result = replace(result, exhausted=True)
        else:
            due = _whole_second_after(now + timedelta(seconds=nxt.delay_seconds))
            result = replace(result, next_attempt_at=iso_utc(due))
    entry = {"type": "post_call_push", **result.as_item()}
    write_call = due is None or not state.call_written
    entries = [*_waiting_entries(state, result), entry] if write_call else []
    event = {"type": "post_call_push", "t": seconds_since_start(doc, now), "status": result.status}
    update = DeliveryUpdate(
        attempts=result.attempts,
        status="scheduled" if due is not None else "done",
        due=due,
        call_written=state.call_written or write_call,
        unwritten=() if write_call else (*state.unwritten, entry),
        trigger=trigger,
    )
    try:
        if write_call:
            deps.calls.write_outcome(call_id, result.as_item(), entries, event, force)
        saved = deps.delivery.save(call_id, claim_id, update, now)
    except StorageError as exc:
        # The CRM has answered: that must be recorded, never pushed again. The queue carries
        # the writes to a later invocation; only if it fails too is the trigger retried.
        _defer_record(
            deps, call_id, bot.bot_id, claim_id, result, entries if write_call else None, event, update, force, exc
        )
        saved = True
    log.info(
        "post-call push attempt recorded",
        extra={
            "call_id": call_id,
            "bot_id": bot.bot_id,
            "status": result.status,
            "http_status": result.http_status,
            "error_kind": result.error_kind,
            "attempts": result.attempts,
            "next_attempt_at": result.next_attempt_at,
            "exhausted": result.exhausted,
            "ended_why": ended_why or None,
            "duration_ms": result.duration_ms,
            "call_written": write_call,
            "claim_kept": saved,
            "error": result.error,
        },
    )
    return result, due


def _waiting_entries(state: DeliveryState, result: PushResult) -> list[dict[str, Any]]:
    """The attempts the state table kept for the call's next write, whole again.

    They are kept there without what every attempt of a delivery shares, so
    that the state item stays under one write unit.
    """
    shared = {"type": "post_call_push", "url": result.url, "method": result.method}
    shared["recording_link"] = result.recording_link
    return [{**shared, **entry} for entry in state.unwritten]


def _hold_back(
    call_id: str,
    doc: Mapping[str, Any],
    deps: PushDeps,
    claim_id: str,
    state: DeliveryState,
    attempt: AttemptOutcome,
    trigger: str,
) -> None:
    """Schedule a held-back call for when its destination lets it through, spending no attempt.

    An open circuit before the delivery's first outcome is that outcome
    (contract §10): the call item says ``failed``, ``circuit_open`` and when
    the next try goes, so an operator sees why nothing arrived yet.
    """
    assert attempt.held is not None
    now = deps.clock()
    result = replace(attempt.result, next_attempt_at=iso_utc(attempt.held.until))
    write_call = attempt.held.reason == "circuit_open" and not state.call_written
    update = DeliveryUpdate(
        attempts=state.attempts,
        status="scheduled",
        due=attempt.held.until,
        call_written=state.call_written or write_call,
        unwritten=state.unwritten,
        trigger=trigger,
    )
    if write_call:
        event = {"type": "post_call_push", "t": seconds_since_start(doc, now), "status": result.status}
        deps.calls.write_outcome(call_id, result.as_item(), _waiting_entries(state, result), event, False)
        update = replace(update, unwritten=())
    deps.delivery.save(call_id, claim_id, update, now)
    log.info(
        "call held back",
        extra={
            "call_id": call_id,
            "reason": attempt.held.reason,
            "error_kind": result.error_kind,
            "next_attempt_at": result.next_attempt_at,
            "attempts": state.attempts,
            "call_written": write_call,
        },
    )


def _defer_record(
    deps: PushDeps,
    call_id: str,
    bot_id: str,
    claim_id: str,
    result: PushResult,
    entries: list[dict[str, Any]] | None,
    event: dict[str, Any],
    update: DeliveryUpdate,
    force: bool,
    cause: StorageError,
) -> None:
    log.error(
        "recording the attempt failed; handing it to the retry queue", extra={"call_id": call_id, "error": str(cause)}
    )
    if deps.retry_queue is None:
        raise cause
    message = {
        "kind": "record",
        "call_id": call_id,
        "bot_id": bot_id,
        "claim_id": claim_id,
        "result": result.as_item(),
        "entries": entries,
        "event": event,
        "update": delivery_update_to_message(update),
        "force": force,
    }
    try:
        deps.retry_queue.schedule(message, 0)
    except QueueError:
        raise cause from None


def handle_retry_message(message: Mapping[str, Any], deps: PushDeps, message_id: str) -> PushOutcome | str:
    """One message from the retry queue: a wake-up for a call's next attempt, or writes left to finish.

    A wake-up that arrives before its due time (SQS delays one hop by at most
    15 minutes) goes back on the queue for the rest, and nothing is attempted.
    """
    call_id = str(message["call_id"])
    if message.get("kind") == "record":
        finish_record(message, deps)
        return "recorded"
    due = parse_utc_timestamp(message.get("due"))
    now = deps.clock()
    if due is not None and due > now:
        if deps.retry_queue is None:
            raise QueueError(f"call {call_id} has a wake-up for later and no retry queue to put it back on")
        deps.retry_queue.schedule(dict(message), (due - now).total_seconds())
        return "put_back"
    return push_call(call_id, deps, trigger=f"sqs:{message_id}")


def finish_record(message: Mapping[str, Any], deps: PushDeps) -> bool:
    """Apply a ``record`` message: the writes an earlier invocation could not make. Idempotent."""
    call_id = str(message["call_id"])
    entries = message.get("entries")
    if entries is not None:
        deps.calls.write_outcome(
            call_id, dict(message["result"]), list(entries), dict(message["event"]), bool(message.get("force"))
        )
    update = delivery_update_from_message(message["update"])
    saved = deps.delivery.save(call_id, str(message["claim_id"]), update, deps.clock())
    log.info("deferred attempt record written", extra={"call_id": call_id, "claim_kept": saved})
    if saved and update.status == "scheduled" and update.due is not None:
        _wake_up(deps, call_id, message.get("bot_id"), update.due, "next attempt scheduled")
    return saved


def delivery_update_to_message(update: DeliveryUpdate) -> dict[str, Any]:
    return {
        "attempts": update.attempts,
        "status": update.status,
        "due": iso_utc(update.due) if update.due else None,
        "call_written": update.call_written,
        "unwritten": list(update.unwritten),
        "trigger": update.trigger,
    }


def delivery_update_from_message(raw: Mapping[str, Any]) -> DeliveryUpdate:
    due = parse_utc_timestamp(raw.get("due")) if raw.get("due") else None
    return DeliveryUpdate(
        attempts=int(raw["attempts"]),
        status="scheduled" if raw.get("status") == "scheduled" else "done",
        due=due,
        call_written=bool(raw.get("call_written")),
        unwritten=tuple(raw.get("unwritten") or ()),
        trigger=raw.get("trigger"),
    )


def _adopt_recorded_outcome(
    call_id: str, deps: PushDeps, claim_id: str, state: DeliveryState, trigger: str
) -> Literal["done", "scheduled"] | None:
    """After taking over a dead holder's claim: adopt what it wrote on the call, if it got that far.

    Its attempt may have reached the CRM and been written to the call item
    before it died; that attempt is not made again. If it died before any
    write, nothing shows it happened, and the attempt is made again: the one
    duplicate the README documents.
    """
    fresh = deps.calls.get_call(call_id) or {}
    recorded = fresh.get("post_call_push_result")
    if not isinstance(recorded, Mapping):
        return None
    recorded_attempts = int(recorded.get("attempts") or 0)
    if recorded_attempts <= state.attempts:
        return None
    due = parse_utc_timestamp(recorded.get("next_attempt_at")) if recorded.get("next_attempt_at") else None
    update = DeliveryUpdate(
        attempts=recorded_attempts,
        status="scheduled" if due is not None else "done",
        due=due,
        call_written=True,
        unwritten=(),
        trigger=trigger,
    )
    deps.delivery.save(call_id, claim_id, update, deps.clock())
    log.warning(
        "took over a call whose holder died after recording an attempt",
        extra={"call_id": call_id, "attempts": recorded_attempts, "scheduled": due is not None},
    )
    return "scheduled" if due is not None else "done"


def _time_for_attempt(deps: PushDeps, after_seconds: float) -> bool:
    deadline = deps.deadline()
    return deadline is None or time.monotonic() + after_seconds + deps.attempt_seconds <= deadline


def _wake_up(deps: PushDeps, call_id: str, bot_id: Any, when: datetime, why: str) -> None:
    """Put a message on the retry queue that brings this call back to the handler at ``when``."""
    if deps.retry_queue is None:
        raise QueueError(f"call {call_id} needs the retry queue ({why}), and none is configured")
    delay = max(0.0, (when - deps.clock()).total_seconds())
    message = {"kind": "attempt", "call_id": call_id, "bot_id": bot_id, "due": iso_utc(when)}
    deps.retry_queue.schedule(message, delay)
    log.info("call scheduled", extra={"call_id": call_id, "due": message["due"], "why": why})


# The state table keeps due times in whole seconds; waking this much after one makes it due for sure.
_CLOCK_SLACK_SECONDS = 0.05


def _whole_second_after(moment: datetime) -> datetime:
    """``moment`` rounded up to a whole second, as the state table compares due times."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def _from_epoch(epoch: int | float) -> datetime:
    return datetime.fromtimestamp(float(epoch), UTC)
