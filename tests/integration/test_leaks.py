"""Leaks found by testing as an adversary would (issue 11, part 5), each through the real parts."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from crm_push import logsafety
from crm_push.config import SecretRef
from crm_push.secrets import StoreSecretResolver
from scripts.local_crm import CrmAnswer, ReceivedRequest
from scripts.local_stack import AwsEndpoints
from tests.conftest import REGION, Stack, insert_event

TOKEN = "Bearer tok-leak-9f8e7d6c5b4a"
HEADER_SECRET = "hdr-leak-31337-secret"
REFERENCED_SECRET = "ref-leak-55aa66bb77cc"
SSM_SECRET = "ssm-leak-88dd99ee00ff"
QUERY_SECRET = "qs-leak-5151-secret"
USER, PASSWORD = "crm-leak-user", "pw-leak-4242-userinfo"


def everything_seen(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, *stored: Any) -> str:
    """Every place a value could surface: stdout (Powertools JSON logs, EMF metrics), log records, stored data."""
    return "\n".join(
        [
            capsys.readouterr().out,
            caplog.text,
            *(json.dumps(record.__dict__, default=str) for record in caplog.records),
            *(json.dumps(item, default=str) for item in stored),
        ]
    )


@pytest.fixture
def wire_filter_restored() -> Iterator[None]:
    was_installed = logsafety.installed()
    yield
    if was_installed:
        logsafety.install()
    else:
        logsafety.uninstall()


# --- (a) a URL password the config error used to quote --------------------------------------


@pytest.mark.parametrize("char", ["/", "?", "#"])
def test_a_url_password_with_an_unencoded_delimiter_reaches_no_record_and_no_log(
    stack: Stack,
    handler: Any,
    sample_call: dict[str, Any],
    sample_bot: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    wire_filter_restored: None,
    char: str,
) -> None:
    # Given a config whose URL password holds an unencoded delimiter: urllib's error would quote it
    password = f"Zq7{char}Xv9-31337"
    host = stack.crm.url.removeprefix("http://")
    sample_bot["post_call_push"]["url"] = f"http://{USER}:{password}@{host}/in"
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    logsafety.install()  # the Bots GetItem holds the URL: (b) below keeps it out of the SDK's own DEBUG lines
    caplog.set_level(logging.DEBUG)

    # When the push runs
    handler(insert_event(sample_call))

    # Then it fails as a config error that says what is wrong, and no part of the password is anywhere
    stored = stack.get_call(sample_call["call_id"])
    result = stored["post_call_push_result"]
    assert result["status"] == "failed"
    assert "url is malformed" in result["error"]
    assert "percent-encoded" in result["error"]
    assert stack.crm.requests == []
    seen = everything_seen(capsys, caplog, result, stored["integration_log"])
    for piece in ("Zq7", "Xv9", "31337"):
        assert piece not in seen, f"{piece!r} leaked"


# --- (b) the AWS SDK's DEBUG wire logs --------------------------------------------------------


def read_credentials_the_way_the_push_does(stack: Stack, aws: AwsEndpoints, secret_name: str) -> None:
    """A Bots GetItem holding a plaintext config, then GetSecretValue and GetParameter through Powertools."""
    item = stack.dynamodb.get_item(TableName=stack.bots_table, Key={"bot_id": {"S": "bot-leaky"}}, ConsistentRead=True)
    assert item["Item"]["post_call_push"]["M"]["token"]["S"] == TOKEN
    resolver = StoreSecretResolver(
        boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws.moto),
        boto3.client("ssm", region_name=REGION, endpoint_url=aws.moto),
    )
    assert resolver.resolve(SecretRef(secret=secret_name, key="api_key")) == REFERENCED_SECRET
    assert resolver.resolve(SecretRef(parameter=f"/{secret_name}/key")) == SSM_SECRET


@pytest.fixture
def leaky_stores(stack: Stack, aws: AwsEndpoints) -> str:
    stack.put_bot(
        {
            "bot_id": "bot-leaky",
            "post_call_push": {
                "url": "https://crm.example.com/in",
                "token": TOKEN,
                "headers": {"X-Key": HEADER_SECRET},
            },
        }
    )
    name = f"post-call-push/bot-leaky/leak-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws.moto).create_secret(
        Name=name, SecretString=json.dumps({"api_key": REFERENCED_SECRET})
    )
    boto3.client("ssm", region_name=REGION, endpoint_url=aws.moto).put_parameter(
        Name=f"/{name}/key", Value=SSM_SECRET, Type="SecureString"
    )
    return name


SDK_SECRETS = (TOKEN, HEADER_SECRET, REFERENCED_SECRET, SSM_SECRET)


def test_without_the_filter_botocore_debug_logs_print_the_secrets(
    stack, aws, leaky_stores, caplog, capsys, wire_filter_restored
):
    # The control: it shows the grep below would catch a leak, so its silence means something.
    logsafety.uninstall()
    caplog.set_level(logging.DEBUG)

    read_credentials_the_way_the_push_does(stack, aws, leaky_stores)

    seen = everything_seen(capsys, caplog)
    assert all(secret in seen for secret in SDK_SECRETS)


def test_with_the_root_logger_at_debug_no_sdk_log_line_carries_a_secret(
    stack, aws, leaky_stores, caplog, capsys, wire_filter_restored
):
    logsafety.install()
    logsafety.install()  # idempotent: one filter per logger however often it is called
    caplog.set_level(logging.DEBUG)

    read_credentials_the_way_the_push_does(stack, aws, leaky_stores)

    endpoint_filters = logging.getLogger("botocore.endpoint").filters
    assert sum(isinstance(f, logsafety.AwsWireFilter) for f in endpoint_filters) == 1
    botocore_lines = [r for r in caplog.records if r.name.startswith("botocore")]
    assert botocore_lines, "botocore logged nothing at DEBUG: the test would prove nothing"
    seen = everything_seen(capsys, caplog)
    for secret in SDK_SECRETS:
        assert secret not in seen, f"{secret!r} leaked"
    assert "X-Amz-Security-Token" not in seen  # the signing material of botocore.auth


def test_the_filter_holds_when_someone_turns_botocore_itself_to_debug(
    stack, aws, leaky_stores, caplog, capsys, wire_filter_restored
):
    logsafety.install()
    boto3.set_stream_logger("botocore", logging.DEBUG)  # what an operator types when debugging
    try:
        caplog.set_level(logging.DEBUG)
        read_credentials_the_way_the_push_does(stack, aws, leaky_stores)
    finally:
        botocore_logger = logging.getLogger("botocore")
        for stream_handler in list(botocore_logger.handlers):
            botocore_logger.removeHandler(stream_handler)
        botocore_logger.setLevel(logging.NOTSET)

    seen = everything_seen(capsys, caplog) + capsys.readouterr().err
    for secret in SDK_SECRETS:
        assert secret not in seen, f"{secret!r} leaked"


def test_the_function_installs_the_wire_filter(
    stack: Stack, handler: Any, sample_call: dict[str, Any], sample_bot: dict[str, Any], wire_filter_restored: None
) -> None:
    logsafety.uninstall()
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    handler(insert_event(sample_call))

    assert logsafety.installed()


# --- (c) a CRM echoing credentials back ---------------------------------------------------------


def echo_everything(request: ReceivedRequest) -> CrmAnswer:
    """A 401 as many CRMs write it: what was received, quoted back."""
    body = {
        "error": "unauthorized",
        "received": {"headers": request.headers, "query": request.query},
        "hint": f"user {USER} with password {PASSWORD} is locked",
        "basic": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    }
    return CrmAnswer(401, json.dumps(body).encode())


def test_crm_echo_is_scrubbed(
    stack: Stack,
    aws: AwsEndpoints,
    handler: Any,
    sample_call: dict[str, Any],
    sample_bot: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given credentials in every place a config can hold them: a header, a referenced header, the query, the userinfo
    name = f"post-call-push/{sample_bot['bot_id']}/echo-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws.moto).create_secret(
        Name=name, SecretString=json.dumps({"api_key": REFERENCED_SECRET})
    )
    host = stack.crm.url.removeprefix("http://")
    sample_bot["post_call_push"] = {
        **{k: v for k, v in sample_bot["post_call_push"].items() if k not in ("token", "headers")},
        "url": f"http://{USER}:{PASSWORD}@{host}/in?api_key={QUERY_SECRET}",
        "headers": {"Authorization": TOKEN, "X-Api-Key": {"secret": name, "key": "api_key"}, "X-Other": HEADER_SECRET},
        "retry_schedule_seconds": [],
    }
    stack.crm.responder = echo_everything
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    caplog.set_level(logging.DEBUG)

    # When the push runs and the CRM answers 401 quoting all of them back
    handler(insert_event(sample_call))

    # Then the CRM did get them (so the echo held them) ...
    sent = stack.crm.requests[0]
    assert sent.headers["Authorization"] == TOKEN
    assert sent.headers["X-Api-Key"] == REFERENCED_SECRET
    assert sent.query["api_key"] == QUERY_SECRET
    # ... the result keeps the CRM's answer, scrubbed ...
    stored = stack.get_call(sample_call["call_id"])
    result = stored["post_call_push_result"]
    assert result["status"] == "rejected"
    assert result["http_status"] == 401
    assert "unauthorized" in result["response_body"]
    assert "***" in result["response_body"]
    # ... and none of the credentials is in the result, integration_log or any log line
    seen = everything_seen(capsys, caplog, result, stored["integration_log"], stored.get("events"))
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for secret in (TOKEN, "tok-leak-9f8e7d6c5b4a", HEADER_SECRET, REFERENCED_SECRET, QUERY_SECRET, PASSWORD, basic):
        assert secret not in seen, f"{secret!r} leaked"
