"""The operator CLI for OAuth destinations: status, lint, preview and secrets migrate (contract §13).

``main(argv)`` in-process against DynamoDB Local and moto; the Authlib server
(``scripts/oauth_server.py``) where a token must really be fetched. No output
may show a credential.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from crm_push.adapters.dynamodb import from_item
from push_cli.main import main
from scripts.local_stack import AwsEndpoints
from tests.conftest import Stack, insert_event
from tests.integration.oauth_support import OAuthServer, create_kms_key, rsa_pems

CLIENT_SECRET = "cs-" + uuid.uuid4().hex
REFRESH = "rt-" + uuid.uuid4().hex
PRIVATE_PEM, _ = rsa_pems()
VALUES = (CLIENT_SECRET, REFRESH, "".join(PRIVATE_PEM.strip().splitlines()[1:-1])[:64])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    shown = out + err
    for value in VALUES:
        assert value not in shown, f"a credential was printed: {value[:5]}…"
    return code, shown


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, shown = run(capsys, *argv, "--json")
    return code, json.loads(shown)


def a_bot(sample_bot: dict[str, Any], auth: dict[str, Any], **push: Any) -> dict[str, Any]:
    bot = copy.deepcopy(sample_bot)
    bot["bot_id"] = f"bot-{uuid.uuid4().hex[:8]}"
    bot["tenant_id"] = f"tenant-{uuid.uuid4().hex[:8]}"
    bot["post_call_push"].pop("token", None)
    bot["post_call_push"].update(auth=auth, **push)
    return bot


TOKEN_URL = "https://login.example.test/oauth2/token"


def client_credentials(token_url: str = TOKEN_URL, **fields: Any) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": token_url,
        "client_id": "app-7",
        "client_secret": CLIENT_SECRET,
        **fields,
    }


def stored_push(stack: Stack, bot_id: str) -> dict[str, Any]:
    item = stack.dynamodb.get_item(TableName=stack.bots_table, Key={"bot_id": {"S": bot_id}}, ConsistentRead=True)
    push: dict[str, Any] = from_item(item["Item"])["post_call_push"]
    return push


# --- status ------------------------------------------------------------------------------------------


def test_status_of_a_refused_token_names_the_auth_config_the_answer_and_check_8(
    capsys: pytest.CaptureFixture[str], stack: Stack, sample_bot: dict[str, Any], sample_call: dict[str, Any]
) -> None:
    bot = a_bot(sample_bot, client_credentials(), url="https://acme.example.test/leads")
    stack.put_bot(bot)
    call = {
        **sample_call,
        "bot_id": bot["bot_id"],
        "post_call_push_result": {
            "status": "failed",
            "http_status": None,
            "response_body": "",
            "error": "token endpoint https://login.example.test answered 400 invalid_grant",
            "error_kind": "auth",
            "url": "https://acme.example.test/leads",
            "method": "POST",
            "pushed_at": "2026-11-25T09:32:45.000Z",
            "duration_ms": 0,
            "attempts": 1,
            "next_attempt_at": None,
        },
    }
    stack.put_call(call)

    code, report = run_json(capsys, "status", "--call-id", call["call_id"])

    assert code == 0
    assert report["runbook"].startswith("docs/runbook.md#8-the-crms-credentials-were-revoked")
    diagnosis = report["diagnosis"]
    for words in ("invalid_grant", "oauth2_client_credentials", "https://login.example.test", "client_id app-7"):
        assert words in diagnosis
    assert "revoked" in diagnosis
    assert report["next_commands"][0] == f"post-call-push auth --bot-id {bot['bot_id']} --test"

    code, shown = run(capsys, "status", "--call-id", call["call_id"])
    assert "check 8: The CRM's credentials were revoked" in shown


# --- lint --------------------------------------------------------------------------------------------


def test_lint_checks_the_auth_config_and_that_its_references_resolve_in_scope(
    capsys: pytest.CaptureFixture[str], stack: Stack, sample_bot: dict[str, Any], secretsmanager: Any, ssm: Any
) -> None:
    bot = a_bot(sample_bot, {}, url="https://acme.example.test/leads")
    scope = bot["tenant_id"]
    secretsmanager.create_secret(
        Name=f"post-call-push/{scope}/crm",
        SecretString=json.dumps({"client_secret": CLIENT_SECRET, "not_a_key": "-----BEGIN PRIVATE KEY-----\nxx"}),
    )
    ssm.put_parameter(Name=f"/post-call-push/{scope}/rt", Value=REFRESH, Type="SecureString")
    good = {
        "type": "oauth2_refresh_token",
        "token_url": "https://accounts.zoho.test/oauth/v2/token",
        "client_id": "1000.ABC",
        "client_secret": {"secret": f"post-call-push/{scope}/crm", "key": "client_secret"},
        "refresh_token": {"parameter": f"/post-call-push/{scope}/rt"},
    }
    bot["post_call_push"]["auth"] = good
    stack.put_bot(bot)

    code, report = run_json(capsys, "lint", "--bot-id", bot["bot_id"])
    assert code == 0, report
    assert [f for f in report["findings"] if "auth" in f["where"]] == []

    bad = a_bot(
        sample_bot,
        {
            "type": "oauth2_jwt_bearer",
            "token_url": "http://login.example.test/services/oauth2/token",
            "client_id": {"secret": "post-call-push/another-tenant/crm", "key": "client_id"},
            "subject": "u@acme.example.test",
            "audience": "https://login.example.test",
            "private_key": {"secret": f"post-call-push/{scope}/crm", "key": "not_a_key"},
        },
        url="https://acme.example.test/leads",
    )
    bad["tenant_id"] = scope
    missing = a_bot(sample_bot, client_credentials(client_secret={"parameter": f"/post-call-push/{scope}/none"}))
    missing["tenant_id"] = scope
    plaintext = a_bot(sample_bot, client_credentials())
    for each in (bad, missing, plaintext):
        stack.put_bot(each)

    code, report = run_json(capsys, "lint", "--bot-id", bad["bot_id"])
    assert code == 1
    found = {(f["severity"], f["where"]): f["problem"] for f in report["findings"]}
    assert "another-tenant" in found["error", "post_call_push.auth.client_id"]  # named, never read
    assert "PEM private key" in found["error", "post_call_push.auth.private_key"]
    assert "plain http" in found["warning", "post_call_push.auth.token_url"]

    code, report = run_json(capsys, "lint", "--bot-id", missing["bot_id"])
    assert code == 1
    assert any(
        f["where"] == "post_call_push.auth.client_secret" for f in report["findings"] if f["severity"] == "error"
    )

    code, report = run_json(capsys, "lint", "--bot-id", plaintext["bot_id"])
    assert code == 0
    [warning] = [f for f in report["findings"] if f["where"] == "post_call_push.auth.client_secret"]
    assert warning["suggestion"] == f"post-call-push secrets migrate --bot-id {plaintext['bot_id']}"


# --- preview -----------------------------------------------------------------------------------------


def test_preview_shows_the_grant_and_the_url_from_the_token_answer_never_a_token(
    capsys: pytest.CaptureFixture[str], stack: Stack, sample_bot: dict[str, Any], sample_call: dict[str, Any]
) -> None:
    bot = a_bot(
        sample_bot,
        client_credentials("https://acme.my.salesforce.test/services/oauth2/token"),
        preset={"name": "salesforce", "object": "Task", "external_id_field": "Call_Id__c"},
    )
    bot["post_call_push"].pop("url")
    bot["post_call_push"].pop("method")
    stack.put_bot(bot)
    call = {**sample_call, "bot_id": bot["bot_id"]}
    stack.put_call(call)

    code, preview = run_json(capsys, "preview", "--call-id", call["call_id"])

    assert code == 0, preview
    assert preview["would_send"] is True
    assert preview["url"].startswith("{{auth.instance_url}}/services/data/")
    assert "grant oauth2_client_credentials" in preview["auth"]
    assert "token endpoint https://acme.my.salesforce.test" in preview["auth"]
    assert "from the token answer" in preview["auth"]
    [authorization] = [h for h in preview["headers"] if h["name"] == "Authorization"]
    assert "fetched at push time" in authorization["value"]

    code, shown = run(capsys, "preview", "--call-id", call["call_id"])
    assert "OAuth 2.0: grant oauth2_client_credentials" in shown


# --- secrets migrate ---------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    config = {
        "clients": [{"client_id": "rt-app", "client_secret": CLIENT_SECRET, "grant_types": ["refresh_token"]}],
        "refresh_tokens": [{"token": REFRESH, "client_id": "rt-app"}],
        "rotate_refresh_tokens": True,
    }
    with OAuthServer(config) as running:
        yield running


def test_secrets_migrate_moves_the_auth_secrets_and_the_push_then_rotates_in_the_secret(
    capsys: pytest.CaptureFixture[str],
    stack: Stack,
    handler: Any,
    aws: AwsEndpoints,
    server: OAuthServer,
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
    secretsmanager: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUSH_KMS_KEY_ID", create_kms_key(aws.moto))
    auth = {
        "type": "oauth2_refresh_token",
        "token_url": server.token_url,
        "client_id": "rt-app",
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH,
    }
    bot = a_bot(sample_bot, auth, url=server.crm_url)
    stack.put_bot(bot)

    code, plan = run_json(capsys, "secrets", "migrate", "--bot-id", bot["bot_id"], "--dry-run")
    assert code == 0
    assert [move["where"] for move in plan["moves"]] == ["auth.client_secret", "auth.refresh_token"]
    assert stored_push(stack, bot["bot_id"])["auth"]["client_secret"] == CLIENT_SECRET  # a dry run wrote nothing

    code, done = run_json(capsys, "secrets", "migrate", "--bot-id", bot["bot_id"])
    assert code == 0, done
    name = done["secret_name"]
    assert name == f"post-call-push/{bot['tenant_id']}/{bot['bot_id']}/credentials"
    moved = stored_push(stack, bot["bot_id"])["auth"]
    assert moved["client_secret"] == {"secret": name, "key": "auth.client_secret"}
    assert moved["refresh_token"] == {"secret": name, "key": "auth.refresh_token"}
    assert moved["client_id"] == "rt-app"  # names the app: stays in the config

    # The function reads them by reference now, and keeps the rotated refresh token in the secret.
    call = {**sample_call, "bot_id": bot["bot_id"]}
    stack.put_call(call)
    handler(insert_event(call))
    assert stack.get_call(call["call_id"])["post_call_push_result"]["status"] == "ok"
    kept = json.loads(secretsmanager.get_secret_value(SecretId=name)["SecretString"])
    assert kept["auth.client_secret"] == CLIENT_SECRET
    assert kept["auth.refresh_token"] in server.stats()["live_refresh_tokens"]
    assert kept["auth.refresh_token"] != REFRESH
