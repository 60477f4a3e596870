"""The whole push's surroundings on this machine: DynamoDB Local, moto, a local CRM.

    with LocalStack() as stack:      # make run, the benches
        stack.seed_sample()
        ...                          # os.environ now points the handler at this stack

    .venv/bin/python -m scripts.local_stack serve [--host H] [--public-host P]

DynamoDB is AWS's own DynamoDB Local (scripts/dynamodb_local.py): claims,
conditional write-backs, streams and capacity behave as in AWS. Everything
else (S3 presigning, SQS, SSM, Secrets Manager) is a moto server. Clients
find them the way the function does in AWS, through the environment:
``AWS_ENDPOINT_URL_DYNAMODB`` and ``AWS_ENDPOINT_URL_DYNAMODB_STREAMS`` for
DynamoDB Local, ``AWS_ENDPOINT_URL`` (moto) for the rest. The CRM is
``scripts/local_crm.py``, a real HTTP server.

``serve`` starts it all, seeds the sample bot and call from events/ (the bot's
url pointing at the local CRM), prints ONE JSON line describing every
endpoint, table, queue and the function's environment, then serves until
SIGTERM or SIGINT, printing one JSON line per request the CRM receives (its
credentials masked). ``make sam-local`` runs the function in a container
against it.

The table and queue definitions here are the ones the tests use
(tests/conftest.py): one place, so tests, ``make run`` and the benches run
on the same shapes as template.yaml.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crm_push.adapters.parking import WAITS_ON_INDEX
from scripts.dynamodb_local import DynamoDBLocal
from scripts.local_crm import CrmAnswer, LocalCrm, ReceivedRequest, Responder

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
REGION = "us-east-1"
SAMPLE_BUCKET = "voicebot-recordings"
CRM_PATH = "/api/v2/call-outcomes"

# Any values do: DynamoDB Local runs with -sharedDb and moto accepts every key.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # Account-based endpoints would bypass AWS_ENDPOINT_URL for a credential that names an account.
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "AWS_EC2_METADATA_DISABLED": "true",
}

# Header names whose values are credentials: shown as *** wherever a request is printed.
SECRET_HEADER_WORDS = ("authorization", "api-key", "apikey", "token", "secret", "cookie", "signature", "password")


def masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's credential-bearing headers, names kept and values masked."""
    return {name: "***" for name in headers if any(word in name.lower() for word in SECRET_HEADER_WORDS)}


# --- items and tables ------------------------------------------------------------------------


def to_dynamodb(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain JSON-like item as DynamoDB JSON (floats become Decimals, as DynamoDB stores them)."""
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    plain = json.loads(json.dumps(item), parse_float=Decimal)
    return {k: serializer.serialize(v) for k, v in plain.items()}


def create_tables(dynamodb: Any, suffix: str) -> tuple[str, str]:
    """The Calls table (stream with both images, the bot/date index) and the Bots table, as template.yaml."""
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


STATE_TTL_ATTRIBUTE = "expires_at"


def create_state_table(dynamodb: Any, suffix: str) -> str:
    """The delivery-state table (contract §10): claims, attempts, schedules, circuit state."""
    name = f"PushState-{suffix}"
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "waits_on", "AttributeType": "S"},
            {"AttributeName": "due", "AttributeType": "N"},
        ],
        # Sparse: only deliveries waiting on a destination carry waits_on (contract §14: the release finds them).
        GlobalSecondaryIndexes=[
            {
                "IndexName": WAITS_ON_INDEX,
                "KeySchema": [
                    {"AttributeName": "waits_on", "KeyType": "HASH"},
                    {"AttributeName": "due", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    # DynamoDB Local accepts the setting (it never expires items); moto does too.
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": STATE_TTL_ATTRIBUTE}
    )
    return name


def create_retry_queue(sqs: Any, suffix: str) -> str:
    """The SQS queue that carries scheduled attempts (contract §10); its url."""
    url: str = sqs.create_queue(QueueName=f"post-call-push-retry-{suffix}")["QueueUrl"]
    return url


def small_calls(bot_id: str, count: int, prefix: str) -> list[dict[str, Any]]:
    """``count`` calls with just what a push needs, for batches in races, benches and circuits.

    Small on purpose: a 50 KB transcript would measure DynamoDB, not the push.
    """
    return [
        {
            "call_id": f"{prefix}-{i:03d}",
            "bot_id": bot_id,
            "results_stored_at": "2026-11-25T09:32:41.512Z",
            "start_time": "2026-11-25T09:30:02Z",
            "end_time": "2026-11-25T09:32:38Z",
            "disconnected_by": "customer",
            "crm_data": {"CUSTOMERNAME": f"Customer {i}"},
        }
        for i in range(count)
    ]


class MetricCounter:
    """A ``count_metric`` callback (the destination gate's events) that counts by name, thread-safe."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


@dataclass(frozen=True)
class AwsEndpoints:
    """Where each AWS service of the local stack answers."""

    dynamodb: str
    moto: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.moto,
            "AWS_ENDPOINT_URL_DYNAMODB": self.dynamodb,
            # botocore's name for the service "DynamoDB Streams" (with the underscore).
            "AWS_ENDPOINT_URL_DYNAMODB_STREAMS": self.dynamodb,
        }


@dataclass(frozen=True)
class StackResources:
    """The tables, bucket and queue one stack (or one test) uses."""

    calls_table: str
    bots_table: str
    state_table: str
    bucket: str
    retry_queue_url: str

    def env(self) -> dict[str, str]:
        """The function's environment variables that name them (contract §4, §10)."""
        return {
            "CALLS_TABLE": self.calls_table,
            "BOTS_TABLE": self.bots_table,
            "PUSH_STATE_TABLE": self.state_table,
            "RECORDINGS_BUCKET": self.bucket,
            "RETRY_QUEUE_URL": self.retry_queue_url,
        }


def create_resources(dynamodb: Any, s3: Any, sqs: Any, suffix: str, bucket: str | None = None) -> StackResources:
    calls, bots = create_tables(dynamodb, suffix)
    state = create_state_table(dynamodb, suffix)
    bucket = bucket or f"recordings-{suffix}"
    s3.create_bucket(Bucket=bucket)
    return StackResources(calls, bots, state, bucket, create_retry_queue(sqs, suffix))


# --- moto ----------------------------------------------------------------------------------


class MotoServer:
    """moto's threaded server on a free port: S3, SQS, SSM, Secrets Manager (not DynamoDB)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        self._server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        self.endpoint = ""

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()


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


# --- the stack -----------------------------------------------------------------------------


def _with_host(url: str, host: str) -> str:
    """``url`` with its host replaced (port, path and query kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))


class LocalStack:
    """DynamoDB Local + moto + a LocalCrm, with tables, bucket and retry queue, and os.environ set.

    ``host`` is where the servers listen; ``public_host`` is the name others
    (a container under ``sam local``) reach them by, used in every url the
    stack hands out, the seeded bot's CRM url included.
    """

    def __init__(
        self,
        *,
        suffix: str = "local",
        bucket: str = SAMPLE_BUCKET,
        crm_responder: Responder | None = None,
        host: str = "127.0.0.1",
        public_host: str | None = None,
        set_environ: bool = True,
    ) -> None:
        self.suffix, self.bucket, self.host = suffix, bucket, host
        self.public_host = public_host or host
        self._set_environ = set_environ
        self._crm_responder = crm_responder
        self._dynamodb_local: DynamoDBLocal | None = None
        self._moto: MotoServer | None = None
        self._crm: LocalCrm | None = None
        self._saved_environ: dict[str, str | None] = {}
        self._endpoints: AwsEndpoints | None = None
        self._resources: StackResources | None = None
        self.session: Any = None  # boto3, with the stack's credentials: a client for any service of it
        self.dynamodb: Any = None
        self.s3: Any = None
        self.sqs: Any = None

    # The parts exist only between start() and stop().
    @property
    def endpoints(self) -> AwsEndpoints:
        assert self._endpoints is not None, "LocalStack is not started"
        return self._endpoints

    @property
    def resources(self) -> StackResources:
        assert self._resources is not None, "LocalStack is not started"
        return self._resources

    @property
    def crm(self) -> LocalCrm:
        assert self._crm is not None, "LocalStack is not started"
        return self._crm

    @property
    def crm_url(self) -> str:
        return _with_host(self.crm.url, self.public_host) + CRM_PATH

    def start(self) -> LocalStack:
        import boto3

        try:
            self._dynamodb_local = DynamoDBLocal().start()
            self._moto = MotoServer(self.host).start()
            self._crm = LocalCrm(self._crm_responder, host=self.host).start()
            self._endpoints = AwsEndpoints(
                _with_host(self._dynamodb_local.endpoint, self.public_host),
                _with_host(self._moto.endpoint, self.public_host),
            )
            self.session = boto3.session.Session(
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                region_name=REGION,
            )
            # This process reaches the servers where they listen, whatever name others use.
            self.dynamodb = self.session.client("dynamodb", endpoint_url=self._dynamodb_local.endpoint)
            self.s3 = self.session.client("s3", endpoint_url=self._moto.endpoint)
            self.sqs = self.session.client("sqs", endpoint_url=self._moto.endpoint)
            resources = create_resources(self.dynamodb, self.s3, self.sqs, self.suffix, self.bucket)
            # moto names the queue after the host it was asked on; others ask on the public one.
            queue_url = _with_host(resources.retry_queue_url, self.public_host)
            self._resources = replace(resources, retry_queue_url=queue_url)
            if self._set_environ:
                self._apply_environ(self.function_env())
        except BaseException:
            self.stop()
            raise
        return self

    def function_env(self) -> dict[str, str]:
        """Every environment variable the function needs to run against this stack."""
        return {
            **CREDENTIALS,
            **self.endpoints.env(),
            **self.resources.env(),
            "PUBLIC_BASE_URL": "https://api.example.com",
            # The local CRM listens on a private address, which the SSRF guard refuses by default.
            "PUSH_ALLOW_PRIVATE_NETWORKS": "true",
            "POWERTOOLS_SERVICE_NAME": "post-call-push",
            "POWERTOOLS_METRICS_NAMESPACE": "PostCallPush",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }

    def _apply_environ(self, values: Mapping[str, str]) -> None:
        for name, value in values.items():
            self._saved_environ.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def stop(self) -> None:
        for name, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environ.clear()
        for part in (self._crm, self._moto, self._dynamodb_local):
            if part is not None:
                part.stop()
        self._crm = self._moto = self._dynamodb_local = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # --- data ----------------------------------------------------------------------------

    def put_bot(self, bot: Mapping[str, Any]) -> None:
        self.dynamodb.put_item(TableName=self.resources.bots_table, Item=to_dynamodb(bot))

    def put_call(self, call: Mapping[str, Any]) -> None:
        self.dynamodb.put_item(TableName=self.resources.calls_table, Item=to_dynamodb(call))

    def get_call(self, call_id: str) -> dict[str, Any]:
        from crm_push.adapters.dynamodb import from_item

        response = self.dynamodb.get_item(
            TableName=self.resources.calls_table, Key={"call_id": {"S": call_id}}, ConsistentRead=True
        )
        return from_item(response.get("Item", {}))

    def sample_bot(self) -> dict[str, Any]:
        bot: dict[str, Any] = json.loads((EVENTS / "sample_bot.json").read_text())
        bot["post_call_push"]["url"] = self.crm_url
        return bot

    def seed_sample(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The sample bot (posting to the local CRM) and the sample call from events/, stored."""
        bot = self.sample_bot()
        call: dict[str, Any] = json.loads((EVENTS / "sample_call.json").read_text())
        self.put_bot(bot)
        self.put_call(call)
        return bot, call

    def describe(self) -> dict[str, Any]:
        """Everything a client of the stack needs, as plain JSON."""
        return {
            "dynamodb_endpoint": self.endpoints.dynamodb,
            "dynamodb_streams_endpoint": self.endpoints.dynamodb,
            "aws_endpoint": self.endpoints.moto,
            "crm_url": self.crm_url,
            "region": REGION,
            **{name.lower(): value for name, value in self.resources.env().items()},
            "function_env": self.function_env(),
        }


# --- serve ---------------------------------------------------------------------------------


def _print_each_request(answer: Responder, write: Callable[[str], None]) -> Responder:
    def respond(request: ReceivedRequest) -> CrmAnswer:
        line = {
            "crm_request": {
                "method": request.method,
                "path": request.path,
                "auth_headers": masked_headers(request.headers),
                "body_bytes": len(request.body),
                "idempotency_key": request.headers.get("Idempotency-Key"),
            }
        }
        write(json.dumps(line))
        return answer(request)

    return respond


def serve(host: str, public_host: str | None) -> int:
    def write(line: str) -> None:
        print(line, flush=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    responder = _print_each_request(lambda _request: CrmAnswer(), write)
    with LocalStack(crm_responder=responder, host=host, public_host=public_host) as stack:
        bot, call = stack.seed_sample()
        write(json.dumps({"local_stack": {**stack.describe(), "bot_id": bot["bot_id"], "call_id": call["call_id"]}}))
        while not stop.wait(1.0):
            pass
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.local_stack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="start the stack, print it as one JSON line, serve until SIGTERM")
    serve_parser.add_argument("--host", default="127.0.0.1", help="address the servers listen on")
    serve_parser.add_argument(
        "--public-host", default=None, help="name others reach them by (e.g. the Docker bridge address)"
    )
    options = parser.parse_args(argv)
    return serve(options.host, options.public_host)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
