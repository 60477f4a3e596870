"""Lambda entry point: parse the trigger, hand each call to the core, report what to retry.

Three triggers reach it (contract §3, §10): a DynamoDB stream batch, an
EventBridge ``Call Results Stored`` event, and an SQS batch from the retry
queue. Wiring only: the delivery itself is ``crm_push.flow``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from crm_push import messages
from crm_push.config import Settings
from crm_push.errors import QueueError, ResultsNotStored, StorageError
from crm_push.models import CallResultsStored, parse_call_results_stored, stream_call_image
from crm_push.ports import PushDeps, PushOutcome
from crm_push.push import handle_retry_message, push_call
from crm_push.wiring import build_deps, write_back_reserve_seconds

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "post-call-push"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "PostCallPush"))
copy_config_to_registered_loggers(source_logger=logger, include={"crm_push"})

# Stop sending this long before Lambda's own timeout, so results are still written back
# even when every write meets the SDK's worst case (audit #12).
_WRITE_BACK_RESERVE_SECONDS = write_back_reserve_seconds()
# Errors a later delivery of the same trigger can fix: report the record for retry.
_RETRY_TRIGGER = (StorageError, QueueError)

_deps: PushDeps | None = None
_executor: ThreadPoolExecutor | None = None
_wiring_lock = threading.Lock()
# Powertools' add_metric is an unlocked read-modify-write; pushes run on worker threads.
_metrics_lock = threading.Lock()


def _runtime() -> tuple[PushDeps, ThreadPoolExecutor]:
    """Adapters and the worker pool, created once per warm container."""
    global _deps, _executor
    with _wiring_lock:
        if _deps is None or _executor is None:
            settings = Settings.from_env()
            _deps = build_deps(settings, count_metric=_count_gate_event)
            _executor = ThreadPoolExecutor(max_workers=settings.push_concurrency, thread_name_prefix="push")
        return _deps, _executor


def _count_gate_event(name: str) -> None:
    """The destination gate's events (CircuitOpened, CallsHeldByOpenCircuit, RateLimited, ...) as metrics."""
    _add_metric(name, MetricUnit.Count, 1)


def _add_metric(name: str, unit: MetricUnit, value: float) -> None:
    with _metrics_lock:
        metrics.add_metric(name=name, unit=unit, value=value)


def _invocation_deps(context: LambdaContext | None) -> PushDeps:
    deps, _ = _runtime()
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return deps
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - _WRITE_BACK_RESERVE_SECONDS
    return replace(deps, deadline=lambda: deadline)


def _count(outcome: PushOutcome) -> None:
    result = outcome.result
    # A held-back call was not attempted: counting it as Push_failed would feed the failure-rate
    # alarm once a minute per waiting call (the gate counts it as CallsHeldByOpenCircuit).
    if result is None or outcome.outcome in ("held_back", "held_no_queue"):
        _add_metric(f"NotPushed_{outcome.outcome}", MetricUnit.Count, 1)
        if outcome.outcome == "held_back" and result is None:
            # Held before it was read (its gate said so): the gate itself counts the calls it holds
            # while sending; these it never saw, and the circuit alarm needs them.
            _add_metric("CallsHeldByOpenCircuit", MetricUnit.Count, 1)
        return
    _add_metric(f"Push_{result.status}", MetricUnit.Count, 1)
    _add_metric("PushDuration", MetricUnit.Milliseconds, result.duration_ms)
    if result.error_kind:
        _add_metric(f"PushErrorKind_{result.error_kind}", MetricUnit.Count, 1)
    if result.error_kind == "auth" and not result.next_attempt_at:
        # The token endpoint refused for good (invalid_grant, invalid_client ...): credentials
        # revoked or wrong. Every later call of the bot fails the same way until someone acts.
        _add_metric("AuthFailed", MetricUnit.Count, 1)
        logger.error(
            "OAuth token refused: the bot's credentials need fixing",
            extra={"call_id": outcome.call_id, "error": result.error},
        )
    if result.next_attempt_at:
        _add_metric("AttemptScheduled", MetricUnit.Count, 1)
    if outcome.outcome == "record_deferred":
        _add_metric("RecordDeferred", MetricUnit.Count, 1)
    if result.exhausted:
        _add_metric("DeliveryExhausted", MetricUnit.Count, 1)
        logger.error(
            "delivery exhausted: no attempt left",
            extra={"call_id": outcome.call_id, "attempts": result.attempts, "error_kind": result.error_kind},
        )


def _run_batch(
    event: dict[str, Any],
    event_type: EventType,
    handle: Callable[[Any, PushDeps], str],
    context: LambdaContext,
) -> dict[str, Any]:
    """Each record on the worker pool; the records ``handle`` raised for are reported for retry."""
    deps = _invocation_deps(context)
    _, executor = _runtime()

    async def record_handler(record: Any) -> str:
        return await asyncio.get_running_loop().run_in_executor(executor, handle, record, deps)

    # A processor per invocation: it holds the batch's successes and failures, and
    # must not be shared if two invocations ever run in one process (tests, replays).
    processor = AsyncBatchProcessor(event_type=event_type, raise_on_entire_batch_failure=False)
    return async_process_partial_response(  # type: ignore[return-value]
        event=event, record_handler=record_handler, processor=processor, context=context
    )


def _deliver(call_id: str, deps: PushDeps, trigger: str, **kwargs: Any) -> PushOutcome:
    try:
        outcome = push_call(call_id, deps, trigger=trigger, **kwargs)
    except _RETRY_TRIGGER as exc:
        logger.warning("push will be retried", extra={"call_id": call_id, "trigger": trigger, "error": str(exc)})
        raise
    if outcome.outcome in ("no_config", "not_eligible", "call_not_found"):
        logger.info("call not pushed", extra={"call_id": call_id, "reason": outcome.outcome})
    _count(outcome)
    return outcome


def _handle_stream_record(record: DynamoDBRecord, deps: PushDeps) -> str:
    # A DynamoDBRecord is a Mapping over the raw record (never a dict), and the raw record may be anything.
    raw = getattr(record, "raw_event", record)
    section = raw.get("dynamodb") if isinstance(raw, dict) else None
    sequence_number = section.get("SequenceNumber") if isinstance(section, dict) else None
    try:
        image = stream_call_image(record)
    except ValueError as exc:
        # Retrying cannot fix a malformed record: log it (never its contents) and move on.
        logger.error("malformed stream record skipped", extra={"sequence_number": sequence_number, "error": str(exc)})
        _add_metric("MalformedRecord", MetricUnit.Count, 1)
        return "malformed"
    if image is None:
        return "ignored"
    event_id = raw.get("eventID") if isinstance(raw, dict) else None
    return _deliver(image["call_id"], deps, f"stream:{event_id or sequence_number}", call_doc=image).outcome


def _handle_retry_message(record: SQSRecord, deps: PushDeps) -> str:
    message_id = record.message_id
    try:
        message = messages.decode(record.body or "")
    except ValueError as exc:
        logger.error("malformed retry message dropped", extra={"message_id": message_id, "error": str(exc)})
        _add_metric("MalformedRecord", MetricUnit.Count, 1)
        return "malformed"
    try:
        outcome = handle_retry_message(message, deps, message_id)
    except _RETRY_TRIGGER as exc:
        logger.warning("retry message will be retried", extra={"call_id": message.call_id, "error": str(exc)})
        raise
    _count(outcome)
    return outcome.outcome


def _handle_event_bridge(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    try:
        detail: CallResultsStored = parse_call_results_stored(event)
    except ValueError as exc:
        logger.error(
            "malformed Call Results Stored event ignored", extra={"event_id": event.get("id"), "error": str(exc)}
        )
        _add_metric("MalformedEvent", MetricUnit.Count, 1)
        return {"status": "invalid_event", "error": str(exc)}
    logger.append_keys(call_id=detail.call_id, bot_id=detail.bot_id)
    deps = _invocation_deps(context)
    try:
        outcome = _deliver(detail.call_id, deps, f"eventbridge:{event.get('id') or detail.call_id}")
    except ResultsNotStored:
        # Pushing now would send an empty call and mark it pushed. Raising makes Lambda retry the
        # event later (then park it in the on-failure queue); the stream pushes it when results land.
        logger.warning("event arrived before the call's results; not pushed, will be retried")
        _add_metric("EarlyEvent", MetricUnit.Count, 1)
        raise
    return {"status": outcome.outcome, "result": outcome.result.status if outcome.result else None}


def _tracing_enabled() -> bool:
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() not in ("1", "true", "yes")


def _batch_source(event: dict[str, Any]) -> str | None:
    records = event.get("Records")
    if not isinstance(records, list):
        return None
    sources = {r.get("eventSource") for r in records if isinstance(r, dict)}
    return "aws:sqs" if sources == {"aws:sqs"} else "aws:dynamodb"


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    source = _batch_source(event) if isinstance(event, dict) else None
    if source == "aws:sqs":
        return _run_batch(event, EventType.SQS, _handle_retry_message, context)
    if source == "aws:dynamodb":
        return _run_batch(event, EventType.DynamoDBStreams, _handle_stream_record, context)
    if isinstance(event, dict) and "detail-type" in event:
        return _handle_event_bridge(event, context)
    logger.error(
        "unrecognised trigger ignored", extra={"keys": sorted(event)[:10] if isinstance(event, dict) else None}
    )
    return {"status": "invalid_event", "error": "not a DynamoDB stream batch, an SQS batch or an EventBridge event"}


if _tracing_enabled():
    # Tracer costs ~300 ms of cold start (aws-xray-sdk): pay it only when tracing is on.
    from aws_lambda_powertools import Tracer

    tracer = Tracer()
    lambda_handler = tracer.capture_lambda_handler(lambda_handler)
