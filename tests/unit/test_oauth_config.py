"""``post_call_push.auth`` validation and the cache key (contract §13)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from crm_push.config import SecretRef
from crm_push.oauth.config import (
    ClientCredentialsAuth,
    JwtBearerAuth,
    RefreshTokenAuth,
    cache_key,
    parse_auth_config,
    token_url_origin,
)

SECRET = "s3cr3t-value-never-shown"
BASE = {"token_url": "https://login.example.com/services/oauth2/token", "client_id": "app"}


def cc(**extra: Any) -> dict[str, Any]:
    return {"type": "oauth2_client_credentials", **BASE, "client_secret": SECRET, **extra}


def test_the_three_shapes_parse() -> None:
    assert isinstance(parse_auth_config(cc()), ClientCredentialsAuth)
    refresh = parse_auth_config(
        {"type": "oauth2_refresh_token", **BASE, "client_secret": SECRET, "refresh_token": {"parameter": "/p/rt"}}
    )
    assert isinstance(refresh, RefreshTokenAuth)
    assert refresh.references == (SecretRef(parameter="/p/rt"),)
    jwt = parse_auth_config(
        {
            "type": "oauth2_jwt_bearer",
            **BASE,
            "subject": "u@example.com",
            "audience": "https://login.salesforce.com",
            "private_key": {"secret": "k"},
            "key_id": "k1",
        }
    )
    assert isinstance(jwt, JwtBearerAuth)
    basic = parse_auth_config(cc())
    assert isinstance(basic, ClientCredentialsAuth)
    assert basic.client_auth == "basic"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (cc(token_url="ftp://login.example.com/token"), "scheme"),
        (cc(token_url="https://user:pw@login.example.com/token"), "user name or password"),
        (cc(token_url="https://login.example.com/t\\x"), "backslash"),
        (cc(token_url="https://login.example.com/token#frag"), "fragment"),
        (cc(client_secret=""), "empty"),
        (cc(client_secret="a\r\nb"), "control character"),
        (cc(client_secret={"secret": "x", "parameter": "y"}), "reference map"),
        (cc(client_auth="jwt"), "client_auth"),
        (cc(extra={"grant_type": "password"}), "may not set grant_type"),
        (cc(extra={"a b": "x"}), "field names"),
        (cc(unknown=1), "unknown"),
        ({"type": "oauth2_password", **BASE}, "type"),
        ({"type": "oauth2_refresh_token", **BASE, "client_secret": SECRET}, "refresh_token"),
        ({"type": "oauth2_jwt_bearer", **BASE, "subject": "u", "audience": "a", "private_key": SECRET}, "PEM"),
    ],
)
def test_invalid_configs_are_refused_without_quoting_values(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as failure:
        parse_auth_config(raw)
    text = str(failure.value)
    assert problem in text
    assert SECRET not in text
    assert "pw@" not in text


def test_repr_hides_credentials() -> None:
    auth = parse_auth_config(cc(client_id="the-client-id"))
    assert SECRET not in repr(auth)
    assert "the-client-id" not in repr(auth)


def test_origin_of_a_token_url() -> None:
    assert token_url_origin("https://login.microsoftonline.com/tenant-x/oauth2/v2.0/token") == (
        "https://login.microsoftonline.com"
    )
    assert token_url_origin("http://127.0.0.1:8080/token?x=1") == "http://127.0.0.1:8080"


def test_cache_key_separates_tenants_and_configs_but_not_secret_rotation() -> None:
    base = parse_auth_config(cc(scope="api"))
    assert cache_key(base, "tenant-a", None) != cache_key(base, "tenant-b", None)
    assert cache_key(base, "tenant-a", None) != cache_key(parse_auth_config(cc(scope="other")), "tenant-a", None)
    assert cache_key(base, "tenant-a", None) != cache_key(parse_auth_config(cc(client_id="b")), "tenant-a", None)
    # A new client secret is the same client: its token stays good.
    assert cache_key(base, "tenant-a", None) == cache_key(
        parse_auth_config(cc(scope="api", client_secret="rotated")), "tenant-a", None
    )
    assert SECRET not in cache_key(base, "tenant-a", None)


def test_plaintext_refresh_tokens_are_keyed_by_their_bot_referenced_ones_by_their_reference() -> None:
    raw = {"type": "oauth2_refresh_token", **BASE, "client_secret": SECRET}
    plain_1 = parse_auth_config({**raw, "refresh_token": "rt-1"})
    plain_2 = parse_auth_config({**raw, "refresh_token": "rt-2"})  # rotated
    assert cache_key(plain_1, "t", "bot-1") == cache_key(plain_2, "t", "bot-1")
    assert cache_key(plain_1, "t", "bot-1") != cache_key(plain_1, "t", "bot-2")
    ref_a = parse_auth_config({**raw, "refresh_token": {"parameter": "/p/a"}})
    ref_b = parse_auth_config({**raw, "refresh_token": {"parameter": "/p/b"}})
    assert cache_key(ref_a, "t", "bot-1") == cache_key(ref_a, "t", "bot-2")
    assert cache_key(ref_a, "t", None) != cache_key(ref_b, "t", None)
