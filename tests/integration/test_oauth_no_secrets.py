"""No access token, refresh token, client secret or private key in the logs (AWS SDK DEBUG included),
in the state table as plaintext, or in an error's text, across every grant and the shared cache."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from crm_push import logsafety
from crm_push.oauth.config import parse_auth_config
from crm_push.oauth.tokens import AuthFailed
from crm_push.secrets import StoreSecretResolver, scoped_resolver
from scripts.local_stack import AwsEndpoints, create_state_table
from tests.integration.oauth_support import OAuthServer, create_kms_key, make_token_source, rsa_pems

CLIENT_SECRET = "cs-" + uuid.uuid4().hex
FIRST_REFRESH = "rt-" + uuid.uuid4().hex
PRIVATE_PEM, PUBLIC_PEM = rsa_pems()
AUDIENCE = "https://login.example.test"


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    config = {
        "clients": [
            {"client_id": "cc", "client_secret": CLIENT_SECRET, "grant_types": ["client_credentials"]},
            {"client_id": "rt", "client_secret": CLIENT_SECRET, "grant_types": ["refresh_token"]},
            {
                "client_id": "jwt",
                "grant_types": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
                "public_key": PUBLIC_PEM,
                "auth_method": "none",
            },
        ],
        "refresh_tokens": [{"token": FIRST_REFRESH, "client_id": "rt"}],
        "rotate_refresh_tokens": True,
        "audience": AUDIENCE,
    }
    with OAuthServer(config) as running:
        yield running


def test_no_credential_leaks_anywhere(
    server: OAuthServer,
    aws: AwsEndpoints,
    dynamodb: Any,
    secretsmanager: Any,
    ssm: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logsafety.install()  # as the function does at import
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "boto3", "urllib3", "crm_push"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    scope = f"tenant-{uuid.uuid4().hex[:8]}"
    state_table = create_state_table(dynamodb, uuid.uuid4().hex[:10])
    source = make_token_source(
        dynamodb_endpoint=aws.dynamodb,
        moto_endpoint=aws.moto,
        state_table=state_table,
        kms_key_id=create_kms_key(aws.moto),
    )
    secret_name = f"post-call-push/{scope}/crm"
    secretsmanager.create_secret(
        Name=secret_name,
        SecretString=json.dumps({"client_secret": CLIENT_SECRET, "refresh_token": FIRST_REFRESH, "key": PRIVATE_PEM}),
    )
    resolver = scoped_resolver(StoreSecretResolver(secretsmanager, ssm), scope, "post-call-push/", "/post-call-push/")
    ref = {"secret": secret_name}
    configs = [
        {"type": "oauth2_client_credentials", "client_id": "cc", "client_secret": {**ref, "key": "client_secret"}},
        {
            "type": "oauth2_refresh_token",
            "client_id": "rt",
            "client_secret": {**ref, "key": "client_secret"},
            "refresh_token": {**ref, "key": "refresh_token"},
        },
        {
            "type": "oauth2_jwt_bearer",
            "client_id": "jwt",
            "subject": "u",
            "audience": AUDIENCE,
            "private_key": {**ref, "key": "key"},
        },
    ]
    tokens = []
    for raw in configs:
        auth = parse_auth_config({**raw, "token_url": server.token_url})
        first = source.token(auth, scope, secrets=resolver)
        second = source.token(auth, scope, secrets=resolver, rejected=first.access_token)
        source.forget(auth, scope)
        third = source.token(auth, scope, secrets=resolver)  # from the shared cache: a KMS decrypt
        assert third.access_token == second.access_token
        tokens += [first.access_token, second.access_token]
    errors = []
    server.fail(error="invalid_client", status=401, count=1)  # its description echoes the request body
    for raw in configs[:2]:
        auth = parse_auth_config({**raw, "token_url": server.token_url, "client_secret": CLIENT_SECRET})
        source.forget(auth, scope)
        try:
            source.token(auth, scope, secrets=resolver, rejected=tokens[0])
            source.token(auth, "another-tenant", secrets=None)
        except AuthFailed as exc:
            errors.append(exc)
    assert errors, "the failing token endpoint must have failed a request"

    refresh_tokens = {FIRST_REFRESH, *server.stats()["live_refresh_tokens"]}
    refresh_tokens.add(
        json.loads(secretsmanager.get_secret_value(SecretId=secret_name)["SecretString"])["refresh_token"]
    )
    key_body = "".join(PRIVATE_PEM.strip().splitlines()[1:-1])
    secrets = [*tokens, *refresh_tokens, CLIENT_SECRET, key_body[:64], key_body[-64:]]
    assert len(caplog.records) > 20  # the SDK logged plenty at DEBUG: the check below means something
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    table = repr(dynamodb.scan(TableName=state_table)["Items"])
    failures = "".join(f"{exc}{exc.args!r}{exc.error_code}" for exc in errors)
    for secret in secrets:
        assert secret not in logged
        assert secret not in table
        assert secret not in failures
