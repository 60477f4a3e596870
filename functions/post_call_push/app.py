"""Lambda entry point: parse the trigger, hand each call to the core, report what to retry.

Wiring only. The push itself is ``crm_push.push.push_call``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from crm_push.config import Settings
from crm_push.errors import ClaimHeld, StorageError
from crm_push.models import CallResultsStored, parse_call_results_stored, stream_call_image
from crm_push.push import PushDeps, PushOutcome, push_call
from crm_push.wiring import build_deps

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "post-call-push"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "PostCallPush"))
copy_config_to_registered_loggers(source_logger=logger, include={"crm_push"})

# Stop sending this long before Lambda's own timeout, so results are still written back.
_WRITE_BACK_RESERVE_SECONDS = 3.0

_deps: PushDeps | None = None
_claim_wait_seconds = 15.0
_executor: ThreadPoolExecutor | None = None
_wiring_lock = threading.Lock()


def _runtime() -> tuple[PushDeps, ThreadPoolExecutor]:
    """Adapters and the worker pool, created once per warm container."""
    global _deps, _executor, _claim_wait_seconds
    with _wiring_lock:
        if _deps is None or _executor is None:
            settings = Settings.from_env()
            _claim_wait_seconds = settings.claim_wait_seconds
            _deps = build_deps(settings)
            _executor = ThreadPoolExecutor(max_workers=settings.push_concurrency, thread_name_prefix="push")
        return _deps, _executor


def _invocation_deps(context: LambdaContext | None) -> PushDeps:
    deps, _ = _runtime()
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return deps
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - _WRITE_BACK_RESERVE_SECONDS
    return replace(deps, deadline=lambda: deadline)


def _count(outcome: PushOutcome) -> None:
    if outcome.result is not None:
        metrics.add_metric(name=f"Push_{outcome.result.status}", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="PushDuration", unit=MetricUnit.Milliseconds, value=outcome.result.duration_ms)
    else:
        metrics.add_metric(name=f"NotPushed_{outcome.outcome}", unit=MetricUnit.Count, value=1)


def _push_waiting_out_races(call_id: str, deps: PushDeps, call_doc: dict[str, Any] | None) -> PushOutcome:
    """push_call, waiting a little when another invocation holds the call.

    A live holder finishes in about one CRM round trip, after which our claim
    finds its result and stops; waiting here keeps a plain race from turning
    into stream retries (and on-failure queue alarms). A holder that died keeps
    its claim until the lease ends: then ClaimHeld propagates and the record is
    reported for retry, as it should be.
    """
    deadline = deps.deadline()
    give_up = time.monotonic() + _claim_wait_seconds
    if deadline is not None:
        give_up = min(give_up, deadline)
    pause = 0.1
    while True:
        try:
            return push_call(call_id, deps, call_doc=call_doc)
        except ClaimHeld:
            if time.monotonic() + pause > give_up:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _push_or_raise(call_id: str, deps: PushDeps, call_doc: dict[str, Any] | None) -> PushOutcome:
    """Push one call. ClaimHeld and StorageError propagate: a later retry can succeed."""
    outcome = _push_waiting_out_races(call_id, deps, call_doc)
    if outcome.outcome in ("no_config", "not_eligible", "call_not_found"):
        logger.info("call not pushed", extra={"call_id": call_id, "reason": outcome.outcome})
    return outcome


def _make_record_handler(deps: PushDeps, executor: ThreadPoolExecutor) -> Any:
    async def record_handler(record: DynamoDBRecord) -> str:
        # A DynamoDBRecord is a Mapping over the raw record (never a dict), and the raw record may be anything.
        raw = getattr(record, "raw_event", record)
        section = raw.get("dynamodb") if isinstance(raw, dict) else None
        sequence_number = section.get("SequenceNumber") if isinstance(section, dict) else None
        try:
            image = stream_call_image(record)
        except ValueError as exc:
            # Retrying cannot fix a malformed record: log it (never its contents) and move on.
            logger.error(
                "malformed stream record skipped", extra={"sequence_number": sequence_number, "error": str(exc)}
            )
            metrics.add_metric(name="MalformedRecord", unit=MetricUnit.Count, value=1)
            return "malformed"
        if image is None:
            return "ignored"
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(executor, _push_or_raise, image["call_id"], deps, image)
        except (ClaimHeld, StorageError) as exc:
            logger.warning(
                "push will be retried",
                extra={"call_id": image["call_id"], "sequence_number": sequence_number, "error": str(exc)},
            )
            raise
        _count(outcome)
        return outcome.outcome

    return record_handler


def _handle_event_bridge(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    try:
        detail: CallResultsStored = parse_call_results_stored(event)
    except ValueError as exc:
        logger.error(
            "malformed Call Results Stored event ignored", extra={"event_id": event.get("id"), "error": str(exc)}
        )
        metrics.add_metric(name="MalformedEvent", unit=MetricUnit.Count, value=1)
        return {"status": "invalid_event", "error": str(exc)}
    logger.append_keys(call_id=detail.call_id, bot_id=detail.bot_id)
    outcome = _push_or_raise(detail.call_id, _invocation_deps(context), None)
    _count(outcome)
    return {"status": outcome.outcome, "result": outcome.result.status if outcome.result else None}


def _tracing_enabled() -> bool:
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() not in ("1", "true", "yes")


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if isinstance(event, dict) and isinstance(event.get("Records"), list):
        deps = _invocation_deps(context)
        _, executor = _runtime()
        # A processor per invocation: it holds the batch's successes and failures, and
        # must not be shared if two invocations ever run in one process (tests, replays).
        processor = AsyncBatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
        return async_process_partial_response(  # type: ignore[return-value]
            event=event, record_handler=_make_record_handler(deps, executor), processor=processor, context=context
        )
    if isinstance(event, dict) and "detail-type" in event:
        return _handle_event_bridge(event, context)
    logger.error(
        "unrecognised trigger ignored", extra={"keys": sorted(event)[:10] if isinstance(event, dict) else None}
    )
    return {"status": "invalid_event", "error": "neither a DynamoDB stream batch nor an EventBridge event"}


if _tracing_enabled():
    # Tracer costs ~300 ms of cold start (aws-xray-sdk): pay it only when tracing is on.
    from aws_lambda_powertools import Tracer

    tracer = Tracer()
    lambda_handler = tracer.capture_lambda_handler(lambda_handler)
