"""OAuth destinations end to end through the real handler (contract §13).

The token endpoint and the CRM are ``scripts/oauth_server.py`` (Authlib): its
CRM accepts only tokens it issued, and it counts every token request. The
state table (the shared token cache) is DynamoDB Local, KMS (``PUSH_KMS_KEY_ID``),
Secrets Manager and SSM are moto; every credential is a reference under the
bot's scope (``post-call-push/<scope>/...``) unless a test says otherwise.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from crm_push import logsafety
from crm_push.ports import UnguardedGate
from push_cli.main import main as cli
from scripts.local_stack import AwsEndpoints, LambdaContextStub
from tests.conftest import Stack, insert_event
from tests.fakes import FakeClock
from tests.integration.oauth_support import OAuthServer, create_kms_key, rsa_pems
from tests.retry_queue import drain, queued

CLIENT_SECRET = "cs-" + uuid.uuid4().hex
FIRST_REFRESH = "rt-" + uuid.uuid4().hex
AUDIENCE = "https://login.example.test"
PRIVATE_PEM, PUBLIC_PEM = rsa_pems()
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    config = {
        "clients": [
            {"client_id": "cc-app", "client_secret": CLIENT_SECRET, "grant_types": ["client_credentials"]},
            {"client_id": "rt-app", "client_secret": CLIENT_SECRET, "grant_types": ["refresh_token"]},
            {"client_id": "jwt-app", "grant_types": [JWT_GRANT], "public_key": PUBLIC_PEM, "auth_method": "none"},
        ],
        "refresh_tokens": [{"token": FIRST_REFRESH, "client_id": "rt-app", "scope": "crm"}],
        "rotate_refresh_tokens": True,
        "expires_in": 3600,
        "audience": AUDIENCE,
        # As Salesforce answers: the API host of the org, here the server itself.
        "answer_extra": {"instance_url": "{server}"},
    }
    with OAuthServer(config) as running:
        yield running


@pytest.fixture
def scope(stack: Stack, aws: AwsEndpoints, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tenant of its own (moto outlives the test) and the stack's KMS key, set before the handler wires itself."""
    monkeypatch.setenv("PUSH_KMS_KEY_ID", create_kms_key(aws.moto))
    return f"tenant-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def references(scope: str, secretsmanager: Any, ssm: Any) -> dict[str, dict[str, str]]:
    """The credentials in the bot's scope: one secret (client secret, private key), one SSM refresh token."""
    secret = f"post-call-push/{scope}/crm"
    secretsmanager.create_secret(
        Name=secret, SecretString=json.dumps({"client_secret": CLIENT_SECRET, "private_key": PRIVATE_PEM})
    )
    parameter = f"/post-call-push/{scope}/refresh-token"
    ssm.put_parameter(Name=parameter, Value=FIRST_REFRESH, Type="SecureString")
    return {
        "client_secret": {"secret": secret, "key": "client_secret"},
        "private_key": {"secret": secret, "key": "private_key"},
        "refresh_token": {"parameter": parameter},
    }


def auth_config(grant: str, server: OAuthServer, refs: dict[str, dict[str, str]]) -> dict[str, Any]:
    if grant == "client_credentials":
        return {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-app",
            "client_secret": refs["client_secret"],
            "scope": "api",
        }
    if grant == "refresh_token":
        return {
            "type": "oauth2_refresh_token",
            "token_url": server.token_url,
            "client_id": "rt-app",
            "client_secret": refs["client_secret"],
            "refresh_token": refs["refresh_token"],
        }
    return {
        "type": "oauth2_jwt_bearer",
        "token_url": server.token_url,
        "client_id": "jwt-app",
        "subject": "integration@acme.example.test",
        "audience": AUDIENCE,
        "private_key": refs["private_key"],
    }


def oauth_bot(sample_bot: dict[str, Any], scope: str, auth: dict[str, Any], url: str) -> dict[str, Any]:
    bot = copy.deepcopy(sample_bot)
    bot["bot_id"] = f"bot-{uuid.uuid4().hex[:8]}"
    bot["tenant_id"] = scope
    push = bot["post_call_push"]
    push.pop("token", None)
    push.update(url=url, auth=auth)
    return bot


def calls_of(bot: dict[str, Any], sample_call: dict[str, Any], count: int) -> list[dict[str, Any]]:
    calls = []
    for _ in range(count):
        call = copy.deepcopy(sample_call)
        call["call_id"] = f"call-{uuid.uuid4().hex[:12]}"
        call["bot_id"] = bot["bot_id"]
        calls.append(call)
    return calls


def seed(stack: Stack, bot: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    stack.put_bot(bot)
    for call in calls:
        stack.put_call(call)


def result_of(stack: Stack, call: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = stack.get_call(call["call_id"])["post_call_push_result"]
    return result


def metric_total(stdout: str, name: str) -> float:
    """The sum of one metric over the EMF lines Powertools printed."""
    total = 0.0
    for line in stdout.splitlines():
        if line.startswith('{"_aws"'):
            value = json.loads(line).get(name, 0)
            total += sum(value) if isinstance(value, list) else value
    return total


# --- (a) each grant pushes a call ------------------------------------------------------------------


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token", "jwt_bearer"])
def test_each_grant_pushes_a_call_with_secrets_by_reference(
    grant: str,
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
    ssm: Any,
) -> None:
    bot = oauth_bot(sample_bot, scope, auth_config(grant, server, references), server.crm_url)
    [call] = calls_of(bot, sample_call, 1)
    seed(stack, bot, [call])

    assert handler(insert_event(call)) == {"batchItemFailures": []}

    result = result_of(stack, call)
    assert (result["status"], result["attempts"], result["http_status"]) == ("ok", 1, 200)
    stats = server.stats()
    assert (stats["token_requests"], stats["crm_accepted"], stats["crm_rejected"]) == (1, 1, 0)
    if grant == "refresh_token":
        # Rotated by the server, written back to the parameter before the access token was used.
        kept = ssm.get_parameter(Name=references["refresh_token"]["parameter"], WithDecryption=True)["Parameter"]
        assert kept["Value"] != FIRST_REFRESH
        assert stats["live_refresh_tokens"] == [kept["Value"]]
    if grant == "jwt_bearer":
        assert stats["last_assertion"]["claims"]["sub"] == "integration@acme.example.test"


# --- (b) one token for a batch, and for another container --------------------------------------------


def test_a_batch_of_calls_costs_one_token_request_and_another_container_reuses_it(
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
) -> None:
    bot = oauth_bot(sample_bot, scope, auth_config("client_credentials", server, references), server.crm_url)
    calls = calls_of(bot, sample_call, 6)
    seed(stack, bot, calls)

    assert handler(insert_event(*calls[:5])) == {"batchItemFailures": []}

    assert [result_of(stack, c)["status"] for c in calls[:5]] == ["ok"] * 5
    assert server.stats()["token_requests"] == 1
    # Another execution environment: nothing in memory, the token comes from the shared cache (KMS decrypt).
    sys.modules.pop("app", None)
    other = importlib.import_module("app")
    other.lambda_handler(insert_event(calls[5], start_sequence=10), LambdaContextStub())
    assert result_of(stack, calls[5])["status"] == "ok"
    stats = server.stats()
    assert (stats["token_requests"], stats["crm_accepted"]) == (1, 6)


# --- (c) a revoked token -------------------------------------------------------------------------------


def test_a_revoked_token_costs_one_token_request_and_one_resend_within_the_attempt(
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
) -> None:
    bot = oauth_bot(sample_bot, scope, auth_config("client_credentials", server, references), server.crm_url)
    first, second = calls_of(bot, sample_call, 2)
    seed(stack, bot, [first, second])
    handler(insert_event(first))
    assert server.stats()["token_requests"] == 1

    server.revoke()  # every token issued so far: the CRM now answers 401 to the cached one
    handler(insert_event(second, start_sequence=5))

    result = result_of(stack, second)
    assert (result["status"], result["attempts"], result["http_status"]) == ("ok", 1, 200)
    stats = server.stats()
    assert (stats["token_requests"], stats["crm_rejected"], stats["crm_accepted"]) == (2, 1, 2)
    log = [e for e in stack.get_call(second["call_id"])["integration_log"] if e["type"] == "post_call_push"]
    assert [(e["status"], int(e["attempts"])) for e in log] == [("ok", 1)]


# --- (d) invalid_grant ---------------------------------------------------------------------------------


def test_invalid_grant_fails_the_delivery_for_good_and_counts_auth_failed(
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
    ssm: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A refresh token the server does not know (revoked by the user): Authlib itself answers invalid_grant.
    revoked = "rt-revoked-" + uuid.uuid4().hex
    ssm.put_parameter(Name=references["refresh_token"]["parameter"], Value=revoked, Overwrite=True)
    bot = oauth_bot(sample_bot, scope, auth_config("refresh_token", server, references), server.crm_url)
    [call] = calls_of(bot, sample_call, 1)
    seed(stack, bot, [call])

    handler(insert_event(call))

    result = result_of(stack, call)
    assert (result["status"], result["error_kind"], result["attempts"]) == ("failed", "auth", 1)
    assert result["next_attempt_at"] is None
    assert "invalid_grant" in result["error"]
    assert revoked not in json.dumps(result, default=str)
    assert queued(stack) == []  # final: nothing on the ladder
    out = capsys.readouterr().out
    assert metric_total(out, "AuthFailed") == 1
    assert metric_total(out, "PushErrorKind_auth") == 1
    assert server.stats()["crm_accepted"] == 0


# --- (e) a token endpoint that fails for a while -----------------------------------------------------


@pytest.fixture
def clock(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    monkeypatch.setenv("RETRY_MAX_DELAY_SECONDS", "0")
    return FakeClock()


def on_clock(handler: Any, clock: FakeClock) -> Any:
    deps, _ = handler.module._runtime()
    deps.clock = clock
    deps.sleep = clock.advance
    deps.gate = UnguardedGate()  # the breaker keeps wall-clock time; its own tests cover it
    return handler


def test_a_token_endpoint_answering_503_is_retried_on_the_ladder_then_delivers(
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    clock: FakeClock,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bot = oauth_bot(sample_bot, scope, auth_config("client_credentials", server, references), server.crm_url)
    [call] = calls_of(bot, sample_call, 1)
    seed(stack, bot, [call])
    invoke = on_clock(handler, clock)
    # Two refusals: the ladder's first short step is waited out within the invocation, the second goes to the queue.
    server.fail(status=503, count=2)

    invoke(insert_event(call))

    first = result_of(stack, call)
    assert (first["status"], first["error_kind"]) == ("failed", "auth")
    assert first["next_attempt_at"] is not None
    assert "503" in first["error"]
    assert metric_total(capsys.readouterr().out, "AuthFailed") == 0  # retryable: no alarm
    waiting = queued(stack)
    assert len(waiting) == 1
    invoke({"Records": waiting}, LambdaContextStub())  # its wake-up, early: it goes back on the queue

    drain(stack, invoke, clock)

    result = result_of(stack, call)
    assert (result["status"], result["attempts"], result["next_attempt_at"]) == ("ok", 3, None)
    log = [e for e in stack.get_call(call["call_id"])["integration_log"] if e["type"] == "post_call_push"]
    assert [(e["status"], e.get("error_kind"), int(e["attempts"])) for e in log] == [
        ("failed", "auth", 1),
        ("failed", "auth", 2),
        ("ok", None, 3),
    ]
    stats = server.stats()
    assert (stats["token_requests"], stats["crm_accepted"]) == (3, 1)


def test_a_token_endpoint_that_does_not_answer_is_retried(
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    clock: FakeClock,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
    closed_port: int,
) -> None:
    auth = {**auth_config("client_credentials", server, references), "token_url": f"http://127.0.0.1:{closed_port}/t"}
    bot = oauth_bot(sample_bot, scope, auth, server.crm_url)
    [call] = calls_of(bot, sample_call, 1)
    seed(stack, bot, [call])

    on_clock(handler, clock)(insert_event(call))

    result = result_of(stack, call)
    assert (result["status"], result["error_kind"]) == ("failed", "auth")
    assert result["next_attempt_at"] is not None
    assert "did not answer" in result["error"]


# --- (f) {{auth.instance_url}} -------------------------------------------------------------------------


def test_the_url_begins_with_the_instance_url_from_the_token_answer(
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
) -> None:
    auth = auth_config("jwt_bearer", server, references)
    bot = oauth_bot(sample_bot, scope, auth, "{{auth.instance_url}}/crm/records")
    [call] = calls_of(bot, sample_call, 1)
    seed(stack, bot, [call])

    handler(insert_event(call))

    result = result_of(stack, call)
    assert (result["status"], result["attempts"]) == ("ok", 1)
    assert result["url"] == server.crm_url
    assert server.stats()["crm_accepted"] == 1


# --- (g) no credential anywhere ------------------------------------------------------------------------


def test_no_credential_in_logs_records_messages_metrics_or_cli_output(
    server: OAuthServer,
    stack: Stack,
    handler: Any,
    scope: str,
    references: dict[str, dict[str, str]],
    sample_bot: dict[str, Any],
    sample_call: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logsafety.install()  # as the function and the CLI do before their first AWS client
    for name in ("crm_push", "post-call-push", "app", "botocore", "boto3", "urllib3", "push_cli"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)
    bots = {
        grant: oauth_bot(sample_bot, scope, auth_config(grant, server, references), server.crm_url)
        for grant in ("client_credentials", "refresh_token", "jwt_bearer")
    }
    # One more with every credential in plaintext, refused for good by the endpoint (its description echoes them).
    plaintext = oauth_bot(
        sample_bot,
        scope,
        {**auth_config("refresh_token", server, references), "client_secret": CLIENT_SECRET, "refresh_token": "x"},
        server.crm_url,
    )
    calls = {grant: calls_of(bot, sample_call, 2) for grant, bot in bots.items()}
    [refused] = calls_of(plaintext, sample_call, 1)
    for grant, bot in bots.items():
        seed(stack, bot, calls[grant])
    seed(stack, plaintext, [refused])

    for grant in bots:
        handler(insert_event(calls[grant][0]))
    server.revoke()  # each bot's next push: a 401, a new token, a re-send
    for grant in bots:
        handler(insert_event(calls[grant][1], start_sequence=20))
    server.fail(error="invalid_client", status=401, count=1)
    handler(insert_event(refused, start_sequence=30))
    # A scheduled attempt, whose retry message stays on the queue: a config with no token cached yet, a 503.
    busy = oauth_bot(
        sample_bot, scope, {**auth_config("client_credentials", server, references), "scope": "other"}, server.crm_url
    )
    busy["post_call_push"]["retry_schedule_seconds"] = [600]
    [late] = calls_of(busy, sample_call, 1)
    seed(stack, busy, [late])
    server.fail(status=503, count=1)
    monkeypatch.setenv("RETRY_MAX_DELAY_SECONDS", "0")  # the message visible at once, to be read below
    sys.modules.pop("app", None)  # a fresh container: its token must come from the shared cache, or be fetched
    fresh = importlib.import_module("app")
    fresh.lambda_handler(insert_event(late, start_sequence=40), LambdaContextStub())

    results = {c["call_id"]: result_of(stack, c)["status"] for cs in calls.values() for c in cs}
    assert set(results.values()) == {"ok"}, results
    assert result_of(stack, refused)["error_kind"] == "auth"
    handler_out = capsys.readouterr().out
    assert metric_total(handler_out, "AuthFailed") == 1
    messages = [record["body"] for record in queued(stack)]
    assert messages, "the 503 must have left a retry message to check"

    cli_out, codes = [], []
    for argv in (
        ["status", "--call-id", refused["call_id"]],
        ["status", "--call-id", calls["refresh_token"][1]["call_id"], "--json"],
        ["auth", "--bot-id", bots["refresh_token"]["bot_id"], "--test", "--json"],
        ["auth", "--bot-id", plaintext["bot_id"]],
        ["lint", "--bot-id", bots["client_credentials"]["bot_id"]],
        ["lint", "--bot-id", plaintext["bot_id"]],
        ["preview", "--call-id", calls["jwt_bearer"][0]["call_id"]],
        ["secrets", "migrate", "--bot-id", plaintext["bot_id"], "--dry-run"],
    ):
        codes.append(cli(argv))
        out, err = capsys.readouterr()
        cli_out.append(out + err)
    assert codes == [0] * len(codes), list(zip(codes, cli_out, strict=True))
    assert "invalid_client" in cli_out[0]
    assert "would move" in cli_out[-1]

    stats = server.stats()
    key_body = "".join(PRIVATE_PEM.strip().splitlines()[1:-1])
    secrets = [*stats["issued_secrets"], FIRST_REFRESH, CLIENT_SECRET, key_body[:64], key_body[-64:]]
    assert len(stats["issued_secrets"]) >= 7  # 3 grants x 2 tokens, rotated refresh tokens, the CLI's
    items = [stack.get_call(c["call_id"]) for cs in [*calls.values(), [refused, late]] for c in cs]
    state = stack.dynamodb.scan(TableName=stack.state_table)["Items"]
    assert any(item["pk"]["S"].startswith("token#") for item in state), "the tokens are cached in the state table"
    assert len(caplog.records) > 50  # the SDK logged at DEBUG: the checks below mean something
    places = {
        "log lines": "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records),
        "handler stdout (logs, metrics)": handler_out,
        "call items (result, integration_log)": json.dumps(items, default=str),
        "retry-queue messages": "\n".join(messages),
        "CLI output": "\n".join(cli_out),
        "state table": repr(state),
    }
    for record in caplog.records:
        line = record.getMessage() + json.dumps(record.__dict__, default=str)
        leaked = [secret[:5] for secret in secrets if secret in line]
        assert not leaked, f"a credential ({leaked}…) is logged by {record.name}: {record.msg!s:.60}"
    for where, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a credential ({secret[:5]}…) is in the {where}"
