"""The three grants against a real OAuth 2.0 server (Authlib, scripts/oauth_server.py), secrets by reference.

Each test ends with the token doing what it is for: the server's CRM endpoint
accepts it. Failures: invalid_grant is final with its code, 503 and a silent
endpoint are transient, and nothing secret reaches an exception's text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from crm_push.adapters.crm_http import CrmHttpSender
from crm_push.config import SecretRef
from crm_push.oauth.config import parse_auth_config
from crm_push.oauth.provider import TokenSource
from crm_push.oauth.tokens import AccessToken, AuthFailed
from crm_push.ports import PushRequest, SecretResolver
from crm_push.secrets import StoreSecretResolver, scoped_resolver
from scripts.local_stack import AwsEndpoints
from tests.integration.oauth_support import OAuthServer, make_token_source, rsa_pems

CLIENT_SECRET = "cs-" + uuid.uuid4().hex
FIRST_REFRESH = "rt-" + uuid.uuid4().hex
AUDIENCE = "https://login.example.test"
PRIVATE_PEM, PUBLIC_PEM = rsa_pems()


@pytest.fixture
def scope() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    config = {
        "clients": [
            {"client_id": "cc-basic", "client_secret": CLIENT_SECRET, "grant_types": ["client_credentials"]},
            {
                "client_id": "cc-body",
                "client_secret": CLIENT_SECRET,
                "grant_types": ["client_credentials", "refresh_token"],
                "auth_method": "client_secret_post",
            },
            {"client_id": "rt-client", "client_secret": CLIENT_SECRET, "grant_types": ["refresh_token"]},
            {
                "client_id": "jwt-client",
                "grant_types": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
                "public_key": PUBLIC_PEM,
                "auth_method": "none",
            },
        ],
        "refresh_tokens": [{"token": FIRST_REFRESH, "client_id": "rt-client", "scope": "crm"}],
        "rotate_refresh_tokens": True,
        "expires_in": 1800,
        "audience": AUDIENCE,
        "answer_extra": {"instance_url": "https://acme.my.example.test", "api_domain": "https://www.zohoapis.test"},
    }
    with OAuthServer(config) as running:
        yield running


@pytest.fixture
def resolver(aws: AwsEndpoints, secretsmanager: Any, ssm: Any, scope: str) -> SecretResolver:
    return scoped_resolver(StoreSecretResolver(secretsmanager, ssm), scope, "post-call-push/", "/post-call-push/")


@pytest.fixture
def source(aws: AwsEndpoints) -> TokenSource:
    return make_token_source(dynamodb_endpoint=aws.dynamodb, moto_endpoint=aws.moto, state_table=None, kms_key_id=None)


def crm_accepts(server: OAuthServer, token: AccessToken) -> bool:
    request = PushRequest(
        "call-1", "POST", server.crm_url, {"Authorization": token.authorization}, b"{}", server.crm_url
    )
    return CrmHttpSender(allow_private_networks=True).send(request).http_status == 200


def put_secret(client: Any, name: str, value: dict[str, str]) -> None:
    client.create_secret(Name=name, SecretString=json.dumps(value))


def test_client_credentials_basic_by_reference_is_accepted_by_the_crm(
    server: OAuthServer, source: TokenSource, resolver: SecretResolver, secretsmanager: Any, scope: str
) -> None:
    name = f"post-call-push/{scope}/crm"
    put_secret(secretsmanager, name, {"client_secret": CLIENT_SECRET})
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-basic",
            "client_secret": {"secret": name, "key": "client_secret"},
            "scope": "api",
        }
    )
    token = source.token(auth, scope, secrets=resolver)
    assert crm_accepts(server, token)
    assert token.instance_url == "https://acme.my.example.test"
    assert token.api_domain == "https://www.zohoapis.test"
    assert 1790 <= token.lifetime <= 1800
    seen = server.stats()["last_token_request"]
    # RFC 6749 §2.3.1: the credentials in the Authorization header, none in the body.
    assert seen["authorization_scheme"] == "Basic"
    assert seen["form_keys"] == ["grant_type", "scope"]
    assert seen["content_type"] == "application/x-www-form-urlencoded"


def test_client_credentials_in_the_body(server: OAuthServer, source: TokenSource, scope: str) -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-body",
            "client_secret": CLIENT_SECRET,
            "client_auth": "body",
        }
    )
    token = source.token(auth, scope, secrets=None)
    assert crm_accepts(server, token)
    seen = server.stats()["last_token_request"]
    assert seen["form_keys"] == ["client_id", "client_secret", "grant_type"]
    assert seen["authorization_scheme"] == ""


def test_refresh_token_rotation_is_written_back_to_the_parameter_before_use(
    server: OAuthServer, source: TokenSource, resolver: SecretResolver, ssm: Any, secretsmanager: Any, scope: str
) -> None:
    parameter = f"/post-call-push/{scope}/zoho-refresh-token"
    ssm.put_parameter(Name=parameter, Value=FIRST_REFRESH, Type="SecureString")
    put_secret(secretsmanager, f"post-call-push/{scope}/zoho", {"client_secret": CLIENT_SECRET})
    auth = parse_auth_config(
        {
            "type": "oauth2_refresh_token",
            "token_url": server.token_url,
            "client_id": "rt-client",
            "client_secret": {"secret": f"post-call-push/{scope}/zoho", "key": "client_secret"},
            "refresh_token": {"parameter": parameter},
        }
    )
    first = source.token(auth, scope, secrets=resolver)
    assert crm_accepts(server, first)
    rotated = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]
    assert rotated["Value"] != FIRST_REFRESH
    assert rotated["Type"] == "SecureString"
    assert server.stats()["live_refresh_tokens"] == [rotated["Value"]]  # the old one is revoked by the server
    # The next renewal (here: the CRM rejected the token) uses the rotated refresh token, read past the cache.
    second = source.token(auth, scope, secrets=resolver, rejected=first.access_token)
    assert second.access_token != first.access_token
    assert crm_accepts(server, second)
    assert ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"] not in (
        FIRST_REFRESH,
        rotated["Value"],
    )


def test_refresh_token_rotation_keeps_the_secrets_other_keys(
    server: OAuthServer, source: TokenSource, resolver: SecretResolver, secretsmanager: Any, scope: str
) -> None:
    name = f"post-call-push/{scope}/zoho"
    put_secret(secretsmanager, name, {"client_secret": CLIENT_SECRET, "refresh_token": FIRST_REFRESH, "note": "x"})
    auth = parse_auth_config(
        {
            "type": "oauth2_refresh_token",
            "token_url": server.token_url,
            "client_id": "rt-client",
            "client_secret": {"secret": name, "key": "client_secret"},
            "refresh_token": {"secret": name, "key": "refresh_token"},
        }
    )
    assert crm_accepts(server, source.token(auth, scope, secrets=resolver))
    stored = json.loads(secretsmanager.get_secret_value(SecretId=name)["SecretString"])
    assert stored["client_secret"] == CLIENT_SECRET
    assert stored["note"] == "x"
    assert stored["refresh_token"] in server.stats()["live_refresh_tokens"]
    assert stored["refresh_token"] != FIRST_REFRESH


def test_plaintext_refresh_token_is_rotated_in_the_bot_item(
    server: OAuthServer, aws: AwsEndpoints, dynamodb: Any, scope: str
) -> None:
    bots = f"Bots-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=bots,
        KeySchema=[{"AttributeName": "bot_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "bot_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    raw_auth = {
        "type": "oauth2_refresh_token",
        "token_url": server.token_url,
        "client_id": "rt-client",
        "client_secret": CLIENT_SECRET,
        "refresh_token": FIRST_REFRESH,
    }
    dynamodb.put_item(
        TableName=bots,
        Item={
            "bot_id": {"S": "bot-1"},
            "post_call_push": {
                "M": {
                    "url": {"S": "https://crm.example.test/x"},
                    "auth": {"M": {k: {"S": v} for k, v in raw_auth.items()}},
                }
            },
        },
    )
    source = make_token_source(
        dynamodb_endpoint=aws.dynamodb, moto_endpoint=aws.moto, state_table=None, kms_key_id=None, bots_table=bots
    )
    auth = parse_auth_config(raw_auth)
    token = source.token(auth, scope, secrets=None, bot_id="bot-1")
    assert crm_accepts(server, token)
    item = dynamodb.get_item(TableName=bots, Key={"bot_id": {"S": "bot-1"}}, ConsistentRead=True)["Item"]
    kept = item["post_call_push"]["M"]["auth"]["M"]["refresh_token"]["S"]
    assert kept != FIRST_REFRESH
    assert kept in server.stats()["live_refresh_tokens"]
    assert item["post_call_push"]["M"]["url"]["S"] == "https://crm.example.test/x"
    # The config object in memory still holds the old value: the source reads the item's current one.
    again = source.token(auth, scope, secrets=None, bot_id="bot-1", rejected=token.access_token)
    assert crm_accepts(server, again)


def test_jwt_bearer_with_key_by_reference(
    server: OAuthServer, source: TokenSource, resolver: SecretResolver, secretsmanager: Any, scope: str
) -> None:
    name = f"post-call-push/{scope}/salesforce-key"
    secretsmanager.create_secret(Name=name, SecretString=PRIVATE_PEM)
    auth = parse_auth_config(
        {
            "type": "oauth2_jwt_bearer",
            "token_url": server.token_url,
            "client_id": "jwt-client",
            "subject": "integration@acme.example",
            "audience": AUDIENCE,
            "private_key": {"secret": name},
            "key_id": "key-2026",
        }
    )
    token = source.token(auth, scope, secrets=resolver)
    assert crm_accepts(server, token)
    stats = server.stats()
    assert stats["last_token_request"]["form_keys"] == ["assertion", "grant_type"]
    assertion = stats["last_assertion"]
    assert assertion["headers"] == {"alg": "RS256", "kid": "key-2026", "typ": "JWT"}
    claims = assertion["claims"]
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("jwt-client", "integration@acme.example", AUDIENCE)
    assert 0 < claims["exp"] - claims["iat"] <= 180
    assert claims["jti"]


def test_jwt_bearer_with_a_key_the_server_does_not_know_is_final(
    server: OAuthServer, source: TokenSource, scope: str
) -> None:
    other_private, _ = rsa_pems()
    auth = parse_auth_config(
        {
            "type": "oauth2_jwt_bearer",
            "token_url": server.token_url,
            "client_id": "jwt-client",
            "subject": "integration@acme.example",
            "audience": AUDIENCE,
            "private_key": other_private,
        }
    )
    with pytest.raises(AuthFailed) as failure:
        source.token(auth, scope, secrets=None)
    assert failure.value.error_code == "invalid_grant"
    assert not failure.value.transient


def _refresh_auth(server: OAuthServer, refresh_token: str = FIRST_REFRESH) -> Any:
    return parse_auth_config(
        {
            "type": "oauth2_refresh_token",
            "token_url": server.token_url,
            "client_id": "rt-client",
            "client_secret": CLIENT_SECRET,
            "refresh_token": refresh_token,
        }
    )


def test_revoked_refresh_token_is_final_invalid_grant_without_secrets_in_the_message(
    server: OAuthServer, source: TokenSource, scope: str
) -> None:
    with pytest.raises(AuthFailed) as failure:
        source.token(_refresh_auth(server, "rt-revoked-or-wrong"), scope, secrets=None)
    error = failure.value
    assert (error.error_kind, error.transient, error.error_code, error.http_status) == (
        "auth",
        False,
        "invalid_grant",
        400,
    )
    assert str(error) == f"token endpoint {server.url} answered 400 invalid_grant"


def test_an_echoing_error_description_never_reaches_the_message(
    server: OAuthServer, source: TokenSource, scope: str
) -> None:
    server.fail(error="invalid_client", status=401, count=1)
    with pytest.raises(AuthFailed) as failure:
        source.token(_refresh_auth(server), scope, secrets=None)
    assert failure.value.error_code == "invalid_client"
    assert not failure.value.transient
    for secret in (CLIENT_SECRET, FIRST_REFRESH):
        assert secret not in str(failure.value)
        assert secret not in repr(failure.value.args)


def test_503_is_transient_then_the_next_try_succeeds(server: OAuthServer, source: TokenSource, scope: str) -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-basic",
            "client_secret": CLIENT_SECRET,
        }
    )
    server.fail(status=503, count=1)
    with pytest.raises(AuthFailed) as failure:
        source.token(auth, scope, secrets=None)
    assert (failure.value.transient, failure.value.http_status, failure.value.error_code) == (True, 503, None)
    assert crm_accepts(server, source.token(auth, scope, secrets=None))


def test_429_is_transient(server: OAuthServer, source: TokenSource, scope: str) -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-basic",
            "client_secret": CLIENT_SECRET,
        }
    )
    server.fail(status=429, error="slow_down", count=1)
    with pytest.raises(AuthFailed) as failure:
        source.token(auth, scope, secrets=None)
    assert failure.value.transient
    assert failure.value.error_code == "slow_down"


@pytest.mark.slow
def test_a_silent_endpoint_is_transient_within_the_deadline(
    server: OAuthServer, source: TokenSource, scope: str
) -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-basic",
            "client_secret": CLIENT_SECRET,
        }
    )
    server.fail(hang_seconds=4, count=1)
    started = time.monotonic()
    with pytest.raises(AuthFailed) as failure:
        source.token(auth, scope, secrets=None, deadline=time.monotonic() + 1.5)
    assert time.monotonic() - started < 3
    assert failure.value.transient
    assert failure.value.http_status is None
    assert "did not answer" in str(failure.value)


def test_a_reference_outside_the_scope_is_never_read(
    server: OAuthServer, source: TokenSource, resolver: SecretResolver, scope: str
) -> None:
    from crm_push.secrets import SecretUnavailable

    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-basic",
            "client_secret": {"secret": "post-call-push/other-tenant/crm", "key": "client_secret"},
        }
    )
    with pytest.raises(SecretUnavailable) as failure:
        source.token(auth, scope, secrets=resolver)
    assert failure.value.problem == "out_of_scope"
    assert server.stats()["token_requests"] == 0


def test_http_token_url_is_refused_unless_private_networks_are_allowed(server: OAuthServer, scope: str) -> None:
    strict = TokenSource(CrmHttpSender(allow_private_networks=False), allow_private_networks=False)
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "cc-basic",
            "client_secret": CLIENT_SECRET,
        }
    )
    with pytest.raises(AuthFailed) as failure:
        strict.token(auth, scope, secrets=None)
    assert (failure.value.error_kind, failure.value.transient) == ("config", False)
    https_loopback = auth.model_copy(update={"token_url": server.token_url.replace("http://", "https://")})
    with pytest.raises(AuthFailed) as refused:
        strict.token(https_loopback, scope, secrets=None)
    assert refused.value.error_kind == "destination_refused"
    assert server.stats()["token_requests"] == 0


def test_secret_ref_type_is_the_configs(server: OAuthServer) -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": {"parameter": "/p/x"},
            "client_secret": {"secret": "s", "key": "k"},
        }
    )
    assert auth.references == (SecretRef(parameter="/p/x"), SecretRef(secret="s", key="k"))
