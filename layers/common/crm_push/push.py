"""The post-call push of one call: eligibility, config, recording, variables, render, send, record.

Plain Python. Everything outside the process (the tables, S3, the CRM, the
clock) comes in through ``PushDeps``, so this reads top to bottom and is
tested with in-memory fakes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from crm_push.config import BotConfig, PostCallPushConfig, check_header
from crm_push.errors import AlreadyPushed, CallNotFound, ConfigError
from crm_push.jsonvalues import to_json, to_text
from crm_push.recording import Presigner, RecordingLinkMode, select_recording_url
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
    """``post_call_push_result`` (contract §9), plus how many attempts and which recording link."""

    status: PushStatus
    http_status: int | None
    response_body: str
    error: str | None
    url: str
    method: str
    pushed_at: str
    duration_ms: int
    attempts: int = 0
    recording_link: str = "none"
    replay: dict[str, str] | None = None

    def as_item(self) -> dict[str, Any]:
        item = asdict(self)
        if item["replay"] is None:
            del item["replay"]
        return item


class CallStore(Protocol):
    def get_call(self, call_id: str) -> dict[str, Any] | None: ...

    def claim(self, call_id: str, claim_id: str, now: datetime, lease_seconds: int, force: bool = False) -> None:
        """Take the call for this push.

        Raises CallNotFound, AlreadyPushed (a result exists and not ``force``)
        or ClaimHeld (another push holds an unexpired lease).
        """
        ...

    def record_result(self, call_id: str, claim_id: str, result: dict[str, Any], event: dict[str, Any]) -> bool:
        """Write the result, append the log and the event, release the claim; False if the claim was lost."""
        ...


class BotDirectory(Protocol):
    def get_bot(self, bot_id: str) -> BotConfig | None: ...


class CrmSender(Protocol):
    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        """Send and never raise: every failure comes back as a SendOutcome with ``error``."""
        ...


@dataclass
class PushDeps:
    calls: CallStore
    bots: BotDirectory
    crm: CrmSender
    presign: Presigner | None = None
    public_base_url: str | None = None
    recordings_bucket: str | None = None
    claim_lease_seconds: int = 900
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    deadline: Callable[[], float | None] = field(default=lambda: None)
    """Monotonic time by which sending must stop (the Lambda's remaining time), or None."""


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What happened to one call; ``result`` is None when nothing was written."""

    call_id: str
    outcome: Literal["pushed", "not_eligible", "no_config", "already_pushed", "call_not_found", "claim_lost"]
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


def build_headers(config: PostCallPushConfig, variables: Mapping[str, Any], call_id: str) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Idempotency-Key": call_id}
    if config.method == "POST":
        headers["Content-Type"] = "application/json"
    if config.headers:
        for name, template in config.headers.items():
            value = compile_template(template).render(variables, drop_unresolved=True)
            check_header(name, value)  # a templated value must not smuggle CR/LF in either
            headers[name] = value
    elif config.token:
        headers["Authorization"] = config.token
    return headers


def build_request(
    config: PostCallPushConfig, payload: dict[str, Any], variables: Mapping[str, Any], call_id: str
) -> PushRequest:
    """The HTTP request for a rendered payload: JSON body for POST, query parameters for GET."""
    assert config.url  # callers handle the no-url case as "skipped"
    headers = build_headers(config, variables, call_id)
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
        raise ConfigError(f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes, so it was not sent")
    return PushRequest(call_id, config.method, url, headers, body, redact_url(config.url))


@dataclass(frozen=True, slots=True)
class PreparedPush:
    request: PushRequest
    payload: dict[str, Any]
    variables: dict[str, Any]
    recording_link: RecordingLinkMode


def prepare_push(call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps) -> PreparedPush:
    """Recording URL, variables, render, request: everything short of sending. Raises ConfigError."""
    config = bot.push
    if config is None or not config.url:
        raise ConfigError(bot.push_error or "no push config")
    recording_url, link_mode = select_recording_url(
        call_doc, public_base_url=deps.public_base_url, recordings_bucket=deps.recordings_bucket, presign=deps.presign
    )
    variables = build_push_variables(
        call_doc, {"recording_url": recording_url, "analysis_keys": list(bot.analysis_keys)}, bot.timezone
    )
    payload = config.compiled_key_mapper.render(variables, drop_unresolved=True)
    call_id = str(call_doc.get("call_id", ""))
    return PreparedPush(build_request(config, payload, variables, call_id), payload, variables, link_mode)


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
        "pushed_at": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "duration_ms": 0,
    }
    base.update(fields)
    return PushResult(status=status, **base)


def run_push(call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps) -> PushResult:
    """Render and send one claimed call; every failure becomes a result, none escapes."""
    config = bot.push
    now = deps.clock()
    if config is None:
        return _result("failed", config=None, now=now, error=bot.push_error or "invalid post_call_push config")
    if not config.url:
        return _result("skipped", config=config, now=now, error="post_call_push has no url")
    try:
        prepared = prepare_push(call_doc, bot, deps)
    except ConfigError as exc:
        return _result("failed", config=config, now=now, error=str(exc))
    except Exception as exc:  # a bug must still leave a readable record on the call
        log.exception("push could not be prepared", extra={"call_id": call_doc.get("call_id")})
        return _result("failed", config=config, now=now, error=f"internal error while rendering: {type(exc).__name__}")

    sent = deps.crm.send(prepared.request, deps.deadline())
    return _result(
        status_for(sent),
        config=config,
        now=deps.clock(),
        http_status=sent.http_status,
        response_body=sent.response_body[:MAX_RESPONSE_BODY_CHARS],
        error=sent.error,
        duration_ms=sent.duration_ms,
        attempts=sent.attempts,
        recording_link=prepared.recording_link,
    )


# --- the whole push of one call -------------------------------------------------------


def push_call(
    call_id: str,
    deps: PushDeps,
    *,
    call_doc: Mapping[str, Any] | None = None,
    replay: Replay | None = None,
) -> PushOutcome:
    """Push one call whose results were just stored (or replay it), and record what happened.

    ``call_doc`` is the item as the trigger saw it (a stream image); without
    it the item is read. Raises ClaimHeld or StorageError when a retry later
    can succeed; every other failure is recorded on the call.
    """
    doc = call_doc if call_doc is not None else deps.calls.get_call(call_id)
    if doc is None:
        return PushOutcome(call_id, "call_not_found")
    if doc.get("skip_post_push") is True and replay is None:
        return PushOutcome(call_id, "not_eligible")

    bot_id = doc.get("bot_id")
    bot = deps.bots.get_bot(bot_id) if isinstance(bot_id, str) and bot_id else None
    if bot is None or not bot.has_push_config:
        return PushOutcome(call_id, "no_config")

    claim_id = uuid.uuid4().hex
    try:
        # The claim echoes nothing back: the trigger's image (or the consistent read) is the
        # call as its results were stored, and returning a 50 KB item would cost every push.
        deps.calls.claim(call_id, claim_id, deps.clock(), deps.claim_lease_seconds, force=replay is not None)
    except AlreadyPushed:
        return PushOutcome(call_id, "already_pushed")
    except CallNotFound:
        return PushOutcome(call_id, "call_not_found")

    started = time.monotonic()
    result = run_push(doc, bot, deps)
    if replay is not None:
        result = PushResult(**{**asdict(result), "replay": {"by": replay.by, "reason": replay.reason}})
    event = {"type": "post_call_push", "t": seconds_since_start(doc, deps.clock()), "status": result.status}
    recorded = deps.calls.record_result(call_id, claim_id, result.as_item(), event)
    log.info(
        "post-call push finished",
        extra={
            "call_id": call_id,
            "bot_id": bot_id,
            "status": result.status,
            "http_status": result.http_status,
            "attempts": result.attempts,
            "duration_ms": result.duration_ms,
            "total_ms": int((time.monotonic() - started) * 1000),
            "recorded": recorded,
            "error": result.error,
        },
    )
    return PushOutcome(call_id, "pushed" if recorded else "claim_lost", result)
