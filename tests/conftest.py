"""Shared fixtures: a moto server as AWS, a real local HTTP server as the CRM, the real handler."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from crm_push.adapters.dynamodb import from_item
from scripts.local_crm import LocalCrm
from scripts.make_events import stream_record

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"

# No test may reach real AWS: fake credentials and a region before anything imports boto3 clients.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "POWERTOOLS_METRICS_NAMESPACE": "PostCallPushTest",
        "POWERTOOLS_SERVICE_NAME": "post-call-push",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session, with DynamoDB's write atomicity (scripts/serial_moto.py).

    Each test gets its own uniquely named tables.
    """
    server = subprocess.Popen(
        [sys.executable, "-m", "scripts.serial_moto"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        assert port.isdigit(), "the test moto server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()  # it holds nothing worth a graceful stop
        server.wait(timeout=10)


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def dynamodb(aws: str) -> Any:
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=aws)


@pytest.fixture
def s3(aws: str) -> Any:
    return boto3.client("s3", region_name=REGION, endpoint_url=aws)


def create_tables(dynamodb: Any, suffix: str) -> tuple[str, str]:
    calls, bots = f"Calls-{suffix}", f"Bots-{suffix}"
    dynamodb.create_table(
        TableName=calls,
        KeySchema=[{"AttributeName": "call_id", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "call_id", "AttributeType": "S"},
            {"AttributeName": "bot_id", "AttributeType": "S"},
            {"AttributeName": "results_stored_at", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "bot_id-results_stored_at-index",
                "KeySchema": [
                    {"AttributeName": "bot_id", "KeyType": "HASH"},
                    {"AttributeName": "results_stored_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    dynamodb.create_table(
        TableName=bots,
        KeySchema=[{"AttributeName": "bot_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "bot_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return calls, bots


class Stack:
    """The tables, bucket and CRM of one test, with helpers to seed and read them."""

    def __init__(self, dynamodb: Any, s3: Any, crm: LocalCrm, calls: str, bots: str, bucket: str) -> None:
        self.dynamodb, self.s3, self.crm = dynamodb, s3, crm
        self.calls_table, self.bots_table, self.bucket = calls, bots, bucket

    def put_bot(self, bot: dict[str, Any]) -> None:
        self.dynamodb.put_item(TableName=self.bots_table, Item=to_dynamodb(bot))

    def put_call(self, call: dict[str, Any]) -> None:
        self.dynamodb.put_item(TableName=self.calls_table, Item=to_dynamodb(call))

    def get_call(self, call_id: str) -> dict[str, Any]:
        item = self.dynamodb.get_item(TableName=self.calls_table, Key={"call_id": {"S": call_id}}, ConsistentRead=True)
        return from_item(item.get("Item", {}))


def to_dynamodb(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    plain = json.loads(json.dumps(item), parse_float=Decimal)
    return {k: serializer.serialize(v) for k, v in plain.items()}


@pytest.fixture
def crm() -> Iterator[LocalCrm]:
    with LocalCrm() as server:
        yield server


@pytest.fixture
def stack(dynamodb: Any, s3: Any, crm: LocalCrm, monkeypatch: pytest.MonkeyPatch) -> Stack:
    suffix = uuid.uuid4().hex[:10]
    calls, bots = create_tables(dynamodb, suffix)
    bucket = f"recordings-{suffix}"
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("CALLS_TABLE", calls)
    monkeypatch.setenv("BOTS_TABLE", bots)
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://api.example.com/")
    monkeypatch.setenv("RECORDINGS_BUCKET", bucket)
    monkeypatch.setenv("PUSH_ALLOW_PRIVATE_NETWORKS", "true")
    return Stack(dynamodb, s3, crm, calls, bots, bucket)


@pytest.fixture
def sample_call() -> dict[str, Any]:
    call: dict[str, Any] = json.loads((ROOT / "events" / "sample_call.json").read_text())
    call["call_id"] = f"call-{uuid.uuid4().hex[:12]}"
    return call


@pytest.fixture
def sample_bot(crm: LocalCrm) -> dict[str, Any]:
    bot: dict[str, Any] = json.loads((ROOT / "events" / "sample_bot.json").read_text())
    bot["post_call_push"]["url"] = f"{crm.url}/api/v2/call-outcomes"
    return bot


@pytest.fixture
def handler(stack: Stack) -> Callable[[dict[str, Any]], Any]:
    """The real lambda_handler, freshly imported so it wires itself to this test's stack."""
    sys.modules.pop("app", None)
    app = importlib.import_module("app")

    def invoke(event: dict[str, Any], context: Any = None) -> Any:
        return app.lambda_handler(event, context or LambdaContextStub())

    invoke.module = app  # type: ignore[attr-defined]
    return invoke


class LambdaContextStub:
    """The attributes Powertools reads from Lambda's context object."""

    function_name = "post-call-push"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:post-call-push"
    aws_request_id = "req-" + uuid.uuid4().hex[:8]

    def __init__(self, remaining_ms: int = 60_000) -> None:
        self._remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


def insert_event(*calls: dict[str, Any], start_sequence: int = 1) -> dict[str, Any]:
    """A stream batch in which each call's results were just stored (INSERT)."""
    return {
        "Records": [
            stream_record(
                json.loads(json.dumps(call), parse_float=Decimal),
                None,
                event_name="INSERT",
                sequence_number=str(start_sequence + i).rjust(21, "0"),
                event_id=str(i),
            )
            for i, call in enumerate(calls)
        ]
    }
