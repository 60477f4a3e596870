"""Token requests as built (RFC 6749 §2.3.1, §4.4, §6; RFC 7523) and token answers as read."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
import pytest

from crm_push.oauth.config import JwtBearerAuth, parse_auth_config
from crm_push.oauth.grants import Credentials, basic_client_auth, build_token_request, read_token_answer
from crm_push.oauth.tokens import AccessToken, AuthFailed
from crm_push.ports import SendOutcome
from tests.integration.oauth_support import rsa_pems

URL = "https://login.example.com/oauth2/token"


def form(body: bytes) -> dict[str, list[str]]:
    return parse_qs(body.decode(), keep_blank_values=True)


def test_basic_client_auth_form_encodes_before_base64() -> None:
    header = basic_client_auth("id with space", "p:a/s+s%")
    user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    assert (user, password) == ("id+with+space", "p%3Aa%2Fs%2Bs%25")
    assert (unquote_plus(user), unquote_plus(password)) == ("id with space", "p:a/s+s%")


def test_client_credentials_basic_keeps_credentials_out_of_the_body() -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_client_credentials",
            "token_url": URL,
            "client_id": "app",
            "client_secret": "s",
            "scope": "https://org.crm.dynamics.com/.default",
            "extra": {"soid": "ZohoCRM.123"},
        }
    )
    request = build_token_request(auth, Credentials("app", "sekrit-123"), 0)
    assert form(request.body) == {
        "grant_type": ["client_credentials"],
        "scope": ["https://org.crm.dynamics.com/.default"],
        "soid": ["ZohoCRM.123"],
    }
    assert request.headers["Authorization"] == basic_client_auth("app", "sekrit-123")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert b"sekrit-123" not in request.body
    assert "sekrit" not in repr(request)


def test_refresh_token_in_body_mode() -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_refresh_token",
            "token_url": URL,
            "client_id": "app",
            "client_secret": "sec",
            "refresh_token": "rt",
            "client_auth": "body",
        }
    )
    request = build_token_request(auth, Credentials("app", "sec", "rt-current"), 0)
    assert form(request.body) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["rt-current"],
        "client_id": ["app"],
        "client_secret": ["sec"],
    }
    assert "Authorization" not in request.headers


def test_jwt_bearer_sends_grant_type_and_a_short_lived_rs256_assertion_only() -> None:
    private, public = rsa_pems()
    auth = parse_auth_config(
        {
            "type": "oauth2_jwt_bearer",
            "token_url": URL,
            "client_id": "consumer-key",
            "subject": "integration@acme.example",
            "audience": "https://login.salesforce.com",
            "private_key": private,
            "key_id": "k-1",
        }
    )
    request = build_token_request(auth, Credentials("consumer-key", private_key=private), 1_800_000_000)
    fields = form(request.body)
    assert sorted(fields) == ["assertion", "grant_type"]
    assert fields["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assertion = fields["assertion"][0]
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "kid": "k-1", "typ": "JWT"}
    claims = jwt.decode(
        assertion,
        public,
        algorithms=["RS256"],
        audience="https://login.salesforce.com",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == "consumer-key"
    assert claims["sub"] == "integration@acme.example"
    assert claims["exp"] - claims["iat"] == 180
    assert "Authorization" not in request.headers


def test_an_unusable_private_key_is_a_config_error_naming_no_key() -> None:
    auth = parse_auth_config(
        {
            "type": "oauth2_jwt_bearer",
            "token_url": URL,
            "client_id": "c",
            "subject": "u",
            "audience": "a",
            "private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----",
        }
    )
    assert isinstance(auth, JwtBearerAuth)
    assert isinstance(auth.private_key, str)
    with pytest.raises(AuthFailed) as failure:
        build_token_request(auth, Credentials("c", private_key=auth.private_key), 0)
    assert failure.value.error_kind == "config"
    assert "not-a-key" not in str(failure.value)


def answer(status: int | None, body: Any = "", **kw: Any) -> SendOutcome:
    text = body if isinstance(body, str) else json.dumps(body)
    return SendOutcome(status, text, **kw)


def test_a_granted_token_is_read_with_defaults() -> None:
    read = read_token_answer(answer(200, {"access_token": "at"}), URL)
    assert (read.token_type, read.expires_in, read.refresh_token) == ("Bearer", 3600, None)
    full = read_token_answer(
        answer(
            200,
            {
                "access_token": "at",
                "token_type": "bearer",
                "expires_in": "1799",
                "refresh_token": "rt2",
                "instance_url": "https://acme.my.salesforce.com/",
                "api_domain": "https://www.zohoapis.eu",
                "scope": "a b",
            },
        ),
        URL,
    )
    assert (full.expires_in, full.refresh_token, full.scope) == (1799, "rt2", "a b")
    assert full.instance_url == "https://acme.my.salesforce.com"
    token = AccessToken(full.access_token, full.token_type, 0, 1799)
    assert token.authorization == "Bearer at"


@pytest.mark.parametrize(
    ("outcome", "transient", "code", "kind"),
    [
        (
            answer(400, {"error": "invalid_grant", "error_description": "refresh token rt-SECRET revoked"}),
            False,
            "invalid_grant",
            "auth",
        ),
        (answer(401, {"error": "invalid_client"}), False, "invalid_client", "auth"),
        (answer(400, {"error": "unauthorized_client"}), False, "unauthorized_client", "auth"),
        (answer(403, "<html>forbidden</html>"), False, None, "auth"),
        (answer(302, ""), False, None, "auth"),
        (answer(429, {"error": "slow_down"}), True, "slow_down", "auth"),
        (answer(408, ""), True, None, "auth"),
        (answer(503, "<html>down</html>"), True, None, "auth"),
        (answer(None, error="timed out after 10.0s", error_kind="timeout"), True, None, "auth"),
        (answer(None, error="could not connect: connection refused", error_kind="connection"), True, None, "auth"),
        (
            answer(None, error="destination refused: private", error_kind="destination_refused", attempts=0),
            False,
            None,
            "destination_refused",
        ),
        (answer(200, "<html>login page</html>"), False, None, "auth"),
        (answer(200, {"token_type": "bearer"}), False, None, "auth"),
        (answer(200, {"access_token": "a b"}), False, None, "auth"),
        (answer(200, {"access_token": "at", "expires_in": 0}), False, None, "auth"),
        (answer(200, {"access_token": "at", "instance_url": "javascript:alert(1)"}), False, None, "auth"),
        (answer(200, {"error": "invalid_scope"}), False, "invalid_scope", "auth"),
        (answer(400, {"error": 'bad"code'}), False, None, "auth"),
    ],
)
def test_failures_are_classified(outcome: SendOutcome, transient: bool, code: str | None, kind: str) -> None:
    with pytest.raises(AuthFailed) as failure:
        read_token_answer(outcome, URL)
    assert (failure.value.transient, failure.value.error_code, failure.value.error_kind) == (transient, code, kind)
    assert "SECRET" not in str(failure.value)
    assert str(failure.value).startswith("token endpoint https://login.example.com ")
