"""One attempt: render and send a call's push, through the destination gate, and say what came of it.

Every failure becomes a result here; nothing escapes to the delivery flow
but the outcome. What the CRM answers is scrubbed of every credential that
was sent before it is cut to size and stored (contract §12).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from crm_push.clock import iso_utc
from crm_push.config import BotConfig
from crm_push.error_kinds import is_retryable
from crm_push.errors import AuthFailed, ConfigError, PayloadTooLarge
from crm_push.ports import (
    MAX_RESPONSE_BODY_CHARS,
    GateKey,
    HeldBack,
    PushDeps,
    PushResult,
    PushStatus,
    SendOutcome,
)
from crm_push.presets import AnswerReading, classify_answer
from crm_push.redaction import scrub
from crm_push.request import PreparedPush, prepare_push, recorded_url_of
from crm_push.secrets import SecretUnavailable

log = logging.getLogger(__name__)

# A CRM that answers these to a credential from a store may have seen one rotated a moment ago:
# worth one fresh read and one re-send within the same attempt (audit #15).
_STALE_CREDENTIAL_STATUSES = frozenset({401, 403})


def status_for(outcome: SendOutcome) -> PushStatus:
    if outcome.http_status is None:
        return "failed"
    return "ok" if 200 <= outcome.http_status < 300 else "rejected"


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """One attempt's result (``attempts`` already counts it), and what the ladder needs to know of it."""

    result: PushResult
    retryable: bool = False
    retry_after: str | None = None
    deferred: bool = False  # not sent after all (the deadline came first): no attempt, no outcome
    held: HeldBack | None = None  # not sent: the destination is being spared
    quota_until: datetime | None = None  # the CRM says the tenant's allowance is spent until then (contract §14)
    gate_key: GateKey | None = None  # the (destination, scope) it went to, from the one parse of its url


def new_result(
    bot: BotConfig,
    status: PushStatus,
    *,
    now: datetime,
    url: str | None = None,
    method: str | None = None,
    **fields: Any,
) -> PushResult:
    config = bot.push
    base: dict[str, Any] = {
        "http_status": None,
        "response_body": "",
        "error": None,
        "url": recorded_url_of(config) if url is None else url,
        # What was sent: a preset's own method (PATCH for Salesforce and Dataverse), else the config's.
        "method": method or (config.method if config else "POST"),
        "pushed_at": iso_utc(now),
        "duration_ms": 0,
    }
    base.update(fields)
    return PushResult(status=status, **base)


def run_attempt(call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps, attempts_before: int) -> AttemptOutcome:
    """Render and send one attempt; every failure becomes a result, none escapes."""
    config = bot.push
    now = deps.clock()
    counted: dict[str, Any] = {"attempts": attempts_before}
    if config is None:
        error = bot.push_error or "invalid post_call_push config"
        return AttemptOutcome(new_result(bot, "failed", now=now, error=error, error_kind="config", **counted))
    if not config.has_destination:
        error = "post_call_push has no url"
        return AttemptOutcome(new_result(bot, "skipped", now=now, error=error, error_kind="config", **counted))
    prepared_or_failure = _prepare(call_doc, bot, deps, attempts_before, fresh=False)
    if isinstance(prepared_or_failure, AttemptOutcome):
        return prepared_or_failure
    prepared = prepared_or_failure
    key = GateKey(prepared.destination.target.destination, bot.scope)

    def send() -> SendOutcome:
        sent = deps.crm.send(prepared.request, deps.deadline())
        if sent.http_status == 401 and prepared.access_token is not None:
            sent = _resend_with_new_token(call_doc, bot, deps, prepared, sent)
        elif sent.http_status in _STALE_CREDENTIAL_STATUSES and prepared.uses_references:
            sent = _resend_with_fresh_credentials(call_doc, bot, deps, prepared, sent)
        return _as_the_gate_judges(bot, deps, sent)

    quota = deps.parking.quota_until(key)
    # A spent quota (contract §14) holds the call before the gate: the tenant's allowance is gone until then.
    sent = HeldBack("quota", quota) if quota is not None else deps.gate.send(key, config.rate_limit_per_second, send)
    if isinstance(sent, HeldBack):
        what = {"circuit_open": "circuit open", "rate_limited": "rate limited", "quota": "quota spent"}[sent.reason]
        held = new_result(
            bot,
            "failed",
            now=now,
            url=prepared.request.recorded_url,
            method=prepared.request.method,
            error=f"not sent: {what} for this destination",
            error_kind=None if sent.reason == "rate_limited" else sent.reason,
            recording_link=prepared.recording_link,
            **counted,
        )
        return AttemptOutcome(held, held=sent, gate_key=key)
    return replace(_outcome(bot, deps, prepared, sent, attempts_before), gate_key=key)


def _prepare(
    call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps, attempts_before: int, *, fresh: bool
) -> PreparedPush | AttemptOutcome:
    now = deps.clock()
    counted: dict[str, Any] = {"attempts": attempts_before}
    try:
        return prepare_push(call_doc, bot, deps, fresh=fresh)
    except PayloadTooLarge as exc:
        failed = new_result(bot, "failed", now=now, error=str(exc), error_kind="payload_too_large", **counted)
        return AttemptOutcome(failed)
    except SecretUnavailable as exc:
        # It fails the attempt (contract §11), and counts as one so that a store that
        # stays throttled still ends the delivery when the schedule does.
        failed = new_result(bot, "failed", now=now, error=str(exc), error_kind="secret", attempts=attempts_before + 1)
        return AttemptOutcome(failed, retryable=is_retryable(None, "secret", transient=exc.transient))
    except AuthFailed as exc:
        # No access token (contract §13): counted like a secret store's failure, retried on the ladder
        # only when the token endpoint did not answer or asked us to wait.
        failed = new_result(
            bot, "failed", now=now, error=str(exc), error_kind=exc.error_kind, attempts=attempts_before + 1
        )
        return AttemptOutcome(failed, retryable=exc.error_kind == "auth" and exc.transient)
    except ConfigError as exc:
        return AttemptOutcome(new_result(bot, "failed", now=now, error=str(exc), error_kind="config", **counted))
    except Exception as exc:  # a bug must still leave a readable record on the call
        log.exception("push could not be prepared", extra={"call_id": call_doc.get("call_id")})
        error = f"internal error while rendering: {type(exc).__name__}"
        return AttemptOutcome(new_result(bot, "failed", now=now, error=error, error_kind="internal", **counted))


def _resend_with_new_token(
    call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps, prepared: PreparedPush, first: SendOutcome
) -> SendOutcome:
    """The CRM refused the access token: drop it, fetch one new token, re-send once (contract §13).

    Same attempt, same Idempotency-Key, fresh signature. A token that cannot
    be had answers for the attempt; a second 401 is the CRM's final word.
    """
    try:
        renewed = prepare_push(call_doc, bot, deps, rejected_token=prepared.access_token)
    except AuthFailed as exc:
        return replace(first, error=str(exc))
    except Exception:  # the first answer stands: it is what the CRM said
        log.warning("re-preparing after a refused token failed", extra={"call_id": call_doc.get("call_id")})
        return first
    log.info("CRM refused the access token: re-sending once with a new one", extra={"call_id": call_doc.get("call_id")})
    return _second_send(deps, renewed, first)


def _resend_with_fresh_credentials(
    call_doc: Mapping[str, Any], bot: BotConfig, deps: PushDeps, prepared: PreparedPush, first: SendOutcome
) -> SendOutcome:
    """The CRM refused a credential from a store: read every reference again and re-send once.

    Same attempt, same Idempotency-Key, fresh signature. When nothing
    changed in the stores, the first answer stands (no second request).
    """
    fresh = _prepare(call_doc, bot, deps, 0, fresh=True)
    if isinstance(fresh, AttemptOutcome) or fresh.secret_values == prepared.secret_values:
        return first
    log.info(
        "CRM refused a stored credential: re-sending once with the stores read again",
        extra={"call_id": call_doc.get("call_id"), "http_status": first.http_status},
    )
    return _second_send(deps, fresh, first)


def _as_the_gate_judges(bot: BotConfig, deps: PushDeps, sent: SendOutcome) -> SendOutcome:
    """The answer with what the CRM meant by it, before the circuit breaker counts it.

    A spent quota (a Salesforce 403, a HubSpot DAILY 429) or a refused record in
    a 2xx is the CRM working: it must not count towards opening the circuit
    (contract §14). The attempt reads the answer again for the record.
    """
    if sent.http_status is None:
        return sent
    reading = read_answer(bot, sent, sent.response_body, deps.clock())
    if reading.error_kind in ("quota", "crm_rejected"):
        return replace(sent, error_kind=reading.error_kind)
    return sent


def _second_send(deps: PushDeps, renewed: PreparedPush, first: SendOutcome) -> SendOutcome:
    """The re-send within one attempt; its echo is scrubbed of the new credentials now (the core knows the old)."""
    second = deps.crm.send(renewed.request, deps.deadline())
    body = scrub(second.response_body, renewed.secret_values)
    error = scrub(second.error, renewed.secret_values) if second.error else None
    return replace(second, response_body=body, error=error, duration_ms=first.duration_ms + second.duration_ms)


def _outcome(bot: BotConfig, deps: PushDeps, prepared: PreparedPush, sent: SendOutcome, before: int) -> AttemptOutcome:
    counted: dict[str, Any] = {"attempts": before}
    if sent.attempts == 0 and sent.http_status is None and sent.error_kind is None:
        # The sender found no time left: nothing reached for the CRM, so nothing to record.
        return AttemptOutcome(new_result(bot, "failed", now=deps.clock(), **counted), deferred=True)
    # Scrub first, then cut: a credential straddling the cut would otherwise be stored in part.
    body = scrub(sent.response_body, prepared.secret_values)
    error = scrub(sent.error, prepared.secret_values) if sent.error else None
    status: PushStatus = status_for(sent)
    kind = sent.error_kind
    retryable = status != "ok" and is_retryable(sent.http_status, kind)
    quota_until = None
    if sent.http_status is not None:
        reading = read_answer(bot, sent, body, deps.clock())
        status, kind, retryable = reading.status, reading.error_kind, reading.retryable
        quota_until = reading.quota_until
        error = reading.error or error
    result = new_result(
        bot,
        status,
        now=deps.clock(),
        url=prepared.request.recorded_url,
        method=prepared.request.method,
        http_status=sent.http_status,
        response_body=body[:MAX_RESPONSE_BODY_CHARS],
        error=error,
        error_kind=None if status == "ok" else kind,
        duration_ms=sent.duration_ms,
        attempts=before + sent.attempts,
        recording_link=prepared.recording_link,
    )
    return AttemptOutcome(result, retryable=retryable, retry_after=sent.retry_after, quota_until=quota_until)


def read_answer(bot: BotConfig, sent: SendOutcome, body: str, now: datetime) -> AnswerReading:
    """What the CRM's answer means: by HTTP status, by the preset's rules, by ``response.ok_when`` (contract §14)."""
    assert sent.http_status is not None
    config = bot.push
    preset = config.preset if config else None
    ok_when = config.response.ok_when if config and config.response else None
    headers = {"Retry-After": sent.retry_after} if sent.retry_after else {}
    return classify_answer(preset, sent.http_status, body, headers, now, ok_when)
