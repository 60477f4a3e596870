"""The retry queue as Lambda delivers it: SQS messages wrapped as SQS event records, fed to the handler.

For the tests and `make run`, with a simulated clock that jumps to each message's due time.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from crm_push.variables import parse_utc_timestamp
from scripts.local_stack import LambdaContextStub
from tests.fakes import FakeClock


class HasRetryQueue(Protocol):
    sqs: Any  # a boto3 SQS client
    retry_queue_url: str


def queued(stack: HasRetryQueue) -> list[dict[str, Any]]:
    """Every message on the retry queue, as Lambda's SQS event records (received, then deleted)."""
    records: list[dict[str, Any]] = []
    while True:
        response = stack.sqs.receive_message(QueueUrl=stack.retry_queue_url, MaxNumberOfMessages=10)
        messages = response.get("Messages", [])
        if not messages:
            return records
        for message in messages:
            records.append(
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
                    "messageAttributes": {},
                    "md5OfBody": message["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:post-call-push-retry",
                    "awsRegion": "us-east-1",
                }
            )
            stack.sqs.delete_message(QueueUrl=stack.retry_queue_url, ReceiptHandle=message["ReceiptHandle"])


def drain(stack: HasRetryQueue, invoke: Any, clock: FakeClock, *, limit: int = 200) -> int:
    """Deliver the queue to the handler until it is empty; the clock jumps to the earliest due message."""
    rounds = 0
    while rounds < limit:
        records = queued(stack)
        if not records:
            return rounds
        rounds += 1
        dues = [json.loads(r["body"]).get("due") for r in records]
        earliest = min((d for d in dues if d), default=None)
        if earliest is not None:
            due = parse_utc_timestamp(earliest)
            if due is not None and due > clock.now:
                clock.now = due
        response = invoke({"Records": records}, LambdaContextStub())
        assert response == {"batchItemFailures": []}
    raise AssertionError("the retry queue never drained")
