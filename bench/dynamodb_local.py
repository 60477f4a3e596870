"""The push on AWS's DynamoDB Local: batch wall time, and the write capacity one delivery consumes.

DynamoDB Local (scripts/dynamodb_local.py) serialises conditional writes and
bills capacity the way DynamoDB does, so its figures are about DynamoDB, not
about a mock. The rest of AWS (SQS retry queue, S3) is moto; the CRM is
``LocalCrm``. scripts/local_stack.py builds it all.

Figures:

* ``batch_100_dynamodb_local_s``  - ``lambda_handler`` wall time for one
  100-record INSERT batch, default worker pool, CRM answering after 50 ms;
  median of ``RUNS`` batches, each of fresh calls, in a fresh process (the
  worker of bench/batch.py, one warm container);
* ``wcu_per_push_50kb``           - write capacity units one push consumes
  when the CRM accepts the first attempt, for a call item DynamoDB sizes at
  49 write units (about 50,000 bytes, mostly transcript): the sum of
  ``ConsumedCapacity`` over EVERY DynamoDB write the handler makes, whatever
  table it goes to;
* ``wcu_delivery_8_attempts_50kb`` - the same for a delivery the CRM answers
  503 seven times and accepts at the eighth attempt, the scheduled attempts
  arriving through the SQS retry queue as Lambda would deliver them. The bot
  sets ``retry_schedule_seconds`` to [5, 12, 12, 12, 12, 12, 12]: the shape of
  the default schedule (one short wait inside the first invocation, every
  later attempt through the queue) without its 27 hours.

The capacity is measured at the SDK's edge, not in our adapters: botocore
event handlers, registered on every botocore session created while the
meter is installed (the handler's wiring creates its clients then), ask each
write for ``ReturnConsumedCapacity=TOTAL`` and add up what DynamoDB answers.
A new write anywhere in a future design is counted without touching this file.

    .venv/bin/python -m bench.run dynamodb_local
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 100
RUNS = 3
CRM_DELAY_SECONDS = 0.05
TARGET_ITEM_WCU = 49
FAILURES_BEFORE_SUCCESS = 7
BENCH_RETRY_SCHEDULE = [5, 12, 12, 12, 70, 70, 70]
DELIVERY_TIMEOUT_SECONDS = 300.0

WRITE_OPERATIONS = ("UpdateItem", "PutItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")


# --- the meter ---------------------------------------------------------------------------------


@dataclass
class WriteCapacityMeter:
    """Sums the write capacity DynamoDB reports for every write of the clients it is attached to."""

    units_by_table: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    writes: Counter[str] = field(default_factory=Counter)
    refused_writes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> float:
        return sum(self.units_by_table.values())

    def reset(self) -> None:
        with self._lock:
            self.units_by_table.clear()
            self.writes.clear()
            self.refused_writes = 0

    def attach(self, botocore_session: Any) -> None:
        """Clients the session creates from now on report and count their writes' capacity."""
        for operation in WRITE_OPERATIONS:
            botocore_session.register(
                f"before-parameter-build.dynamodb.{operation}",
                self._ask_for_capacity,
                unique_id=f"wcu-meter-{id(self)}-ask-{operation}",
            )
        botocore_session.register("after-call.dynamodb", self._count, unique_id=f"wcu-meter-{id(self)}-count")

    def _ask_for_capacity(self, params: dict[str, Any], **_: Any) -> None:
        params["ReturnConsumedCapacity"] = "TOTAL"

    def _count(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name not in WRITE_OPERATIONS:
            return
        consumed = parsed.get("ConsumedCapacity")
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        with self._lock:
            self.writes[model.name] += 1
            if "Error" in parsed:
                # A refused conditional write is billed too, but DynamoDB does not say how much.
                self.refused_writes += 1
            for entry in entries:
                self.units_by_table[entry["TableName"]] += float(entry.get("CapacityUnits", 0.0))

    @contextmanager
    def installed(self) -> Iterator[WriteCapacityMeter]:
        """Attach to every botocore session created meanwhile (boto3 sessions make theirs with get_session)."""
        import boto3
        import botocore.session

        original = botocore.session.get_session

        def get_session(env_vars: Any = None) -> Any:
            session = original(env_vars)
            self.attach(session)
            return session

        botocore.session.get_session = get_session
        if boto3.DEFAULT_SESSION is not None:  # boto3.client(...) reuses it
            self.attach(boto3.DEFAULT_SESSION._session)
        try:
            yield self
        finally:
            botocore.session.get_session = original


# --- the 50 KB call ------------------------------------------------------------------------------


def _call_of_about(template: dict[str, Any], padding: int) -> dict[str, Any]:
    """The sample call with a transcript ``padding`` characters longer: the bulk of a real call item."""
    call: dict[str, Any] = json.loads(json.dumps(template))
    turns = list(call.get("transcript", []))
    line = "Customer asked about the EMI schedule, the late fee and the branch address; the bot explained each. "
    text = (line * (padding // len(line) + 1))[:padding]
    chunk = 2000
    for i in range(0, len(text), chunk):
        role = "customer" if i // chunk % 2 else "bot"
        turns.append({"role": role, "text": text[i : i + chunk], "t": 20 + i // chunk})
    call["transcript"] = turns
    return call


def _item_write_units(dynamodb: Any, table: str, call: dict[str, Any]) -> float:
    """What DynamoDB bills a small SET on this item: its size in 1 KB write units (the table, not the index)."""
    from scripts.local_stack import to_dynamodb

    dynamodb.put_item(TableName=table, Item=to_dynamodb(call))
    response = dynamodb.update_item(
        TableName=table,
        Key={"call_id": {"S": call["call_id"]}},
        UpdateExpression="SET probe = :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
        ReturnConsumedCapacity="INDEXES",
    )
    dynamodb.delete_item(TableName=table, Key={"call_id": {"S": call["call_id"]}})
    return float(response["ConsumedCapacity"]["Table"]["CapacityUnits"])


def calibrated_call(
    dynamodb: Any, table: str, template: dict[str, Any], units: int = TARGET_ITEM_WCU
) -> dict[str, Any]:
    """A call item DynamoDB sizes at exactly ``units`` write units, its transcript padded to the middle of that band."""
    probe_id = f"probe-{uuid.uuid4().hex[:8]}"

    def units_for(padding: int) -> float:
        return _item_write_units(dynamodb, table, {**_call_of_about(template, padding), "call_id": probe_id})

    low, high = 0, 1024 * (units + 2)  # the smallest padding reaching ``units``, by bisection
    while low < high:
        middle = (low + high) // 2
        if units_for(middle) < units:
            low = middle + 1
        else:
            high = middle
    padding = low + 512  # half a unit in: no rounding of ours flips it to the next unit
    if units_for(padding) != units:
        raise RuntimeError(f"could not build a call item of {units} write units")
    return _call_of_about(template, padding)


# --- driving the real handler in this process ----------------------------------------------------


class _Context:
    function_name = "post-call-push"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:post-call-push"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _fresh_handler() -> ModuleType:
    for path in (str(ROOT / "layers" / "common"), str(ROOT / "functions" / "post_call_push")):
        if path not in sys.path:
            sys.path.insert(0, path)
    sys.modules.pop("app", None)
    return importlib.import_module("app")


def _sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """Retry-queue messages as Lambda's SQS event source hands them to the function."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def _deliver_retry_queue(stack: Any, app: ModuleType, done: Callable[[], bool]) -> int:
    """Feed retry-queue messages to the handler as they become visible, until ``done()``; invocations made."""
    sqs, url = stack.sqs, stack.resources.retry_queue_url
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    invocations = 0
    give_up = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    while not done():
        if time.monotonic() > give_up:
            raise RuntimeError("the scheduled attempts did not finish in time")
        received = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=5, AttributeNames=["All"], VisibilityTimeout=60
        )
        messages = received.get("Messages", [])
        if not messages:
            continue
        response = app.lambda_handler(_sqs_event(messages, arn), _Context())
        invocations += 1
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        for message in messages:  # Lambda deletes what the function did not report as failed
            if message["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return invocations


@dataclass
class Delivery:
    wcu: float
    by_table: dict[str, float]
    writes: dict[str, int]
    refused_writes: int
    crm_requests: int
    invocations: int
    status: str


def measure_delivery(failures_first: int) -> Delivery | None:
    """One 50 KB call pushed through the real handler; ``failures_first`` 503s before the CRM accepts.

    None when the handler schedules no retry (a design without durable delivery).
    """
    from scripts.local_crm import CrmAnswer, ReceivedRequest
    from scripts.local_stack import LocalStack
    from tests.streams import TableStream

    answered: Counter[str] = Counter()

    def crm(request: ReceivedRequest) -> CrmAnswer:
        key = request.headers.get("Idempotency-Key", "")
        answered[key] += 1
        return CrmAnswer(503, b'{"error":"busy"}') if answered[key] <= failures_first else CrmAnswer(200)

    meter = WriteCapacityMeter()
    with LocalStack(suffix=f"wcu{uuid.uuid4().hex[:6]}", crm_responder=crm) as stack:
        bot = stack.sample_bot()
        if failures_first:
            bot["post_call_push"]["retry_schedule_seconds"] = BENCH_RETRY_SCHEDULE
        stack.put_bot(bot)
        template = json.loads((ROOT / "events" / "sample_call.json").read_text())
        call = {**calibrated_call(stack.dynamodb, stack.resources.calls_table, template), "call_id": "call-50kb"}
        stream_client = stack.session.client("dynamodbstreams", endpoint_url=stack.dynamodb.meta.endpoint_url)
        calls_stream = TableStream(stack.dynamodb, stream_client, stack.resources.calls_table)
        calls_stream.read_new()  # the calibration's own records
        stack.put_call(call)
        insert = calls_stream.read_new()
        with meter.installed():
            app = _fresh_handler()
            app._runtime()  # the container's init: its clients now report their capacity
        try:
            meter.reset()
            response = app.lambda_handler({"Records": insert}, _Context())
            if response.get("batchItemFailures"):
                raise RuntimeError(f"the push reported {response} for a healthy stack")
            invocations = 1
            if failures_first:
                if stack.get_call(call["call_id"]).get("post_call_push_result", {}).get("next_attempt_at") is None:
                    return None

                def delivered() -> bool:
                    result = stack.get_call(call["call_id"]).get("post_call_push_result", {})
                    return result.get("status") == "ok" or bool(result.get("exhausted"))

                invocations += _deliver_retry_queue(stack, app, delivered)
            result = stack.get_call(call["call_id"])["post_call_push_result"]
        finally:
            if getattr(app, "_executor", None) is not None:
                app._executor.shutdown(wait=True)
            sys.modules.pop("app", None)
        return Delivery(
            wcu=meter.total,
            by_table=dict(meter.units_by_table),
            writes=dict(meter.writes),
            refused_writes=meter.refused_writes,
            crm_requests=answered[call["call_id"]],
            invocations=invocations,
            status=str(result.get("status")),
        )


# --- the batch --------------------------------------------------------------------------------


def measure_batch() -> list[float]:
    """RUNS batches of 100 fresh calls through the handler in a fresh process (bench/batch.py's worker)."""
    from bench.batch import _events, _run_worker
    from scripts.local_crm import CrmAnswer
    from scripts.local_stack import LocalStack

    with LocalStack(
        suffix=f"batch{uuid.uuid4().hex[:6]}",
        crm_responder=lambda _req: CrmAnswer(200, delay_seconds=CRM_DELAY_SECONDS),
        set_environ=False,
    ) as stack:
        stack.put_bot(stack.sample_bot())
        template = json.loads((ROOT / "events" / "sample_call.json").read_text())
        groups = []
        for b in range(RUNS):
            group = [{**template, "call_id": f"bench-{b}-{i:03d}-{uuid.uuid4().hex[:6]}"} for i in range(RECORDS)]
            for call in group:
                stack.put_call(call)
            groups.append(group)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "PUSH_", "CLAIM_"))},
            **stack.function_env(),
            "POWERTOOLS_METRICS_NAMESPACE": "PostCallPushBench",
        }
        run = _run_worker(env, {"events": _events(groups)})
        sent = len(stack.crm.requests)
    if sent != RECORDS * RUNS or any(run["failures"]):
        raise RuntimeError(f"the batches did not push cleanly: {sent} of {RECORDS * RUNS} sent")
    seconds: list[float] = run["seconds"]
    return seconds


# --- the section ------------------------------------------------------------------------------


def _print_delivery(name: str, delivery: Delivery) -> None:
    # Tables by role (Calls, Bots, PushState): the run's own name suffix says nothing.
    tables = ", ".join(f"{table.split('-', 1)[0]}: {units:g}" for table, units in sorted(delivery.by_table.items()))
    writes = ", ".join(f"{op} x{n}" for op, n in sorted(delivery.writes.items()))
    print(
        f"  {name}: {delivery.wcu:g} WCU ({tables}); writes {writes}; refused {delivery.refused_writes};"
        f" CRM requests {delivery.crm_requests}; invocations {delivery.invocations}; final status {delivery.status}"
    )


def run() -> dict[str, float]:
    seconds = measure_batch()
    figures: dict[str, float] = {"batch_100_dynamodb_local_s": round(statistics.median(seconds), 3)}

    first = measure_delivery(failures_first=0)
    assert first is not None
    if first.crm_requests != 1 or first.status != "ok":
        raise RuntimeError(f"the 50 KB push did not succeed at once: {first}")
    figures["wcu_per_push_50kb"] = round(first.wcu, 1)

    retried = measure_delivery(failures_first=FAILURES_BEFORE_SUCCESS)
    if retried is None:
        print("wcu_delivery_8_attempts_50kb skipped: the handler schedules no retry of a 503 (no durable delivery)")
    elif retried.crm_requests != FAILURES_BEFORE_SUCCESS + 1 or retried.status != "ok":
        raise RuntimeError(f"the 8-attempt delivery did not end as scripted: {retried}")
    else:
        figures["wcu_delivery_8_attempts_50kb"] = round(retried.wcu, 1)

    print(f"{'figure':<30} {'value':>8}  note")
    print(
        f"{'batch_100_dynamodb_local_s':<30} {figures['batch_100_dynamodb_local_s']:>8.3f}"
        f"  batches {', '.join(f'{s:.3f}' for s in seconds)} s; CRM 50 ms"
    )
    print(f"{'wcu_per_push_50kb':<30} {figures['wcu_per_push_50kb']:>8.1f}  call item of {TARGET_ITEM_WCU} WCU")
    if "wcu_delivery_8_attempts_50kb" in figures:
        print(
            f"{'wcu_delivery_8_attempts_50kb':<30} {figures['wcu_delivery_8_attempts_50kb']:>8.1f}  7 x 503, then 200"
        )
    print("per table:")
    _print_delivery("first attempt accepted", first)
    if retried is not None:
        _print_delivery("8 attempts", retried)
    return figures


if __name__ == "__main__":
    print(run())
