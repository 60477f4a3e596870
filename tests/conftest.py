"""Shared fixtures: DynamoDB Local and moto as AWS, a real local HTTP server as the CRM, the real handler.

DynamoDB is DynamoDB Local (scripts/dynamodb_local.py), started once per
session: conditional writes, streams and capacity behave as in AWS. S3, SQS,
SSM and Secrets Manager are one moto server. Each test gets its own uniquely
named tables, bucket and retry queue (scripts/local_stack.py defines them,
for `make run` and the benches too); the handler finds them through the same
environment variables as in AWS.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from crm_push.adapters.dynamodb import from_item
from scripts.dynamodb_local import DynamoDBLocal
from scripts.local_crm import LocalCrm
from scripts.local_stack import (
    AwsEndpoints,
    LambdaContextStub,
    MotoServer,
    create_resources,
    create_state_table,
    create_tables,
    to_dynamodb,
)
from scripts.make_events import stream_record

__all__ = [
    "REGION",
    "LambdaContextStub",
    "Stack",
    "create_state_table",
    "create_tables",
    "insert_event",
    "to_dynamodb",
]

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
        "AWS_EC2_METADATA_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "PostCallPushTest",
        "POWERTOOLS_SERVICE_NAME": "post-call-push",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def dynamodb_local_endpoint() -> Iterator[str]:
    """One DynamoDB Local for the session (a few seconds to start); tests share it through unique table names."""
    with DynamoDBLocal() as server:
        yield server.endpoint


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session: S3, SQS, SSM, Secrets Manager."""
    server = MotoServer().start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def aws(dynamodb_local_endpoint: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AwsEndpoints:
    """Points every AWS client built during the test at the local stack, as the function's environment would."""
    endpoints = AwsEndpoints(dynamodb=dynamodb_local_endpoint, moto=moto_endpoint)
    for name, value in endpoints.env().items():
        monkeypatch.setenv(name, value)
    return endpoints


@pytest.fixture
def dynamodb(aws: AwsEndpoints) -> Any:
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=aws.dynamodb)


@pytest.fixture
def dynamodb_streams(aws: AwsEndpoints) -> Any:
    return boto3.client("dynamodbstreams", region_name=REGION, endpoint_url=aws.dynamodb)


@pytest.fixture
def s3(aws: AwsEndpoints) -> Any:
    return boto3.client("s3", region_name=REGION, endpoint_url=aws.moto)


@pytest.fixture
def sqs(aws: AwsEndpoints) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=aws.moto)


@pytest.fixture
def secretsmanager(aws: AwsEndpoints) -> Any:
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws.moto)


@pytest.fixture
def ssm(aws: AwsEndpoints) -> Any:
    return boto3.client("ssm", region_name=REGION, endpoint_url=aws.moto)


class Stack:
    """The tables, bucket, retry queue and CRM of one test, with helpers to seed and read them."""

    def __init__(
        self,
        dynamodb: Any,
        s3: Any,
        crm: LocalCrm,
        calls: str,
        bots: str,
        bucket: str,
        *,
        state_table: str = "",
        retry_queue_url: str = "",
        sqs: Any = None,
    ) -> None:
        self.dynamodb, self.s3, self.sqs, self.crm = dynamodb, s3, sqs, crm
        self.calls_table, self.bots_table, self.bucket = calls, bots, bucket
        self.state_table, self.retry_queue_url = state_table, retry_queue_url

    def put_bot(self, bot: dict[str, Any]) -> None:
        self.dynamodb.put_item(TableName=self.bots_table, Item=to_dynamodb(bot))

    def put_call(self, call: dict[str, Any]) -> None:
        self.dynamodb.put_item(TableName=self.calls_table, Item=to_dynamodb(call))

    def get_call(self, call_id: str) -> dict[str, Any]:
        item = self.dynamodb.get_item(TableName=self.calls_table, Key={"call_id": {"S": call_id}}, ConsistentRead=True)
        return from_item(item.get("Item", {}))


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@pytest.fixture
def crm() -> Iterator[LocalCrm]:
    with LocalCrm() as server:
        yield server


@pytest.fixture
def stack(dynamodb: Any, s3: Any, sqs: Any, crm: LocalCrm, monkeypatch: pytest.MonkeyPatch) -> Stack:
    resources = create_resources(dynamodb, s3, sqs, uuid.uuid4().hex[:10])
    for name, value in resources.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://api.example.com/")
    monkeypatch.setenv("PUSH_ALLOW_PRIVATE_NETWORKS", "true")
    return Stack(
        dynamodb,
        s3,
        crm,
        resources.calls_table,
        resources.bots_table,
        resources.bucket,
        state_table=resources.state_table,
        retry_queue_url=resources.retry_queue_url,
        sqs=sqs,
    )


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
