"""``post-call-push auth``: the config in words, and ``--test`` fetching a real token it never shows."""

from __future__ import annotations

import argparse
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from push_cli import auth as auth_cli
from push_cli.context import CliError, Context
from push_cli.display import make_console
from scripts.local_stack import AwsEndpoints, create_tables, to_dynamodb
from tests.integration.oauth_support import OAuthServer

SECRET = "cs-" + uuid.uuid4().hex


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    config = {
        "clients": [{"client_id": "cli-app", "client_secret": SECRET, "grant_types": ["client_credentials"]}],
        "expires_in": 7200,
        "answer_extra": {"instance_url": "https://acme.my.example.test"},
    }
    with OAuthServer(config) as running:
        yield running


def run(bots_table: str, aws: AwsEndpoints, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    auth_cli.add_parser(commands, [], "")
    args = parser.parse_args(["auth", *argv])
    env = {
        "BOTS_TABLE": bots_table,
        "CALLS_TABLE": "-",
        "PUSH_ALLOW_PRIVATE_NETWORKS": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_DYNAMODB": aws.dynamodb,
        "AWS_ENDPOINT_URL": aws.moto,
    }
    ctx = Context.from_options(args, environ=env)
    ctx.bots_table = bots_table
    out = io.StringIO()
    code = auth_cli.cmd_auth(args, ctx, make_console(out))
    return code, out.getvalue()


def test_auth_shows_the_config_and_tests_it_without_showing_a_token(
    server: OAuthServer, aws: AwsEndpoints, dynamodb: Any, secretsmanager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bots = create_tables(dynamodb, uuid.uuid4().hex[:8])
    secretsmanager.create_secret(Name="post-call-push/acme/crm", SecretString=json.dumps({"cs": SECRET}))
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": server.token_url,
        "client_id": "cli-app",
        "client_secret": {"secret": "post-call-push/acme/crm", "key": "cs"},
        "scope": "api",
    }
    dynamodb.put_item(
        TableName=bots,
        Item=to_dynamodb(
            {"bot_id": "bot-1", "tenant_id": "acme", "post_call_push": {"url": "https://x.example.test", "auth": auth}}
        ),
    )
    code, shown = run(bots, aws, "--bot-id", "bot-1")
    assert code == 0
    assert "oauth2_client_credentials" in shown
    assert server.url in shown
    assert "secret post-call-push/acme/crm key cs" in shown

    code, shown = run(bots, aws, "--bot-id", "bot-1", "--test", "--json")
    assert code == 0, shown
    report = json.loads(shown)
    assert report["test"]["ok"] is True
    assert report["test"]["lifetime_seconds"] == 7200
    assert report["test"]["instance_url"] == "https://acme.my.example.test"
    assert server.stats()["token_requests"] == 1
    assert SECRET not in shown
    assert "access_token" not in shown

    server.fail(error="invalid_client", status=401, count=1)
    code, shown = run(bots, aws, "--bot-id", "bot-1", "--test")
    assert code == 1
    assert "invalid_client" in shown
    assert "final" in shown
    assert SECRET not in shown


def test_auth_for_a_bot_without_oauth_says_so(aws: AwsEndpoints, dynamodb: Any) -> None:
    _, bots = create_tables(dynamodb, uuid.uuid4().hex[:8])
    dynamodb.put_item(TableName=bots, Item=to_dynamodb({"bot_id": "b", "post_call_push": {"url": "https://x.test"}}))
    with pytest.raises(CliError) as failure:
        run(bots, aws, "--bot-id", "b")
    assert "no post_call_push.auth" in str(failure.value)
