"""The bot config's credentials: plaintext or references to a store, each checked without ever being quoted."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from crm_push.config import PostCallPushConfig, SecretRef, check_push_url, load_bot_config
from crm_push.errors import ConfigError

URL = "https://crm.example.com/in"
SIGNING = "whsec_" + base64.b64encode(b"signing-key-bytes-0123456").decode()
NEXT_SIGNING = "whsec_" + base64.b64encode(b"next-signing-key-bytes-0123456").decode()
TOKEN = "Bearer sk_live_9f8e7d6c5b4a"


def config(**fields: Any) -> PostCallPushConfig:
    return PostCallPushConfig.model_validate({"url": URL, "key_mapper": {"id": "{{result.call_id}}"}, **fields})


def error_of(**fields: Any) -> str:
    bot = load_bot_config({"post_call_push": {"url": URL, **fields}}, "bot-1")
    assert bot.push is None, "the config was accepted"
    assert bot.push_error is not None
    return bot.push_error


# --- references ---------------------------------------------------------------------------


def test_every_credential_may_be_a_reference_and_plaintext_still_works():
    loaded = config(
        token={"secret": "post-call-push/bot-1", "key": "token"},
        headers={"X-Api-Key": {"parameter": "/crm/bot-1/api-key"}, "X-Tenant": "{{crm.TENANT}}"},
        signing_secret=[SIGNING, {"secret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:whsec-AbCdEf"}],
    )

    assert loaded.token == SecretRef(secret="post-call-push/bot-1", key="token")
    assert loaded.headers is not None
    assert loaded.headers["X-Api-Key"] == SecretRef(parameter="/crm/bot-1/api-key")
    assert loaded.headers["X-Tenant"] == "{{crm.TENANT}}"
    assert loaded.signing_secret == (
        SIGNING,
        SecretRef(secret="arn:aws:secretsmanager:us-east-1:123456789012:secret:whsec-AbCdEf"),
    )
    assert [ref.describe() for ref in loaded.references] == [
        "secret post-call-push/bot-1 key token",
        "parameter /crm/bot-1/api-key",
        "secret arn:aws:secretsmanager:us-east-1:123456789012:secret:whsec-AbCdEf",
    ]
    assert loaded.compiled_key_mapper.render({"result.call_id": "c-1"}, drop_unresolved=True) == {"id": "c-1"}


def test_one_signing_secret_or_a_rotation_list_both_become_a_tuple():
    assert config(signing_secret=SIGNING).signing_secret == (SIGNING,)
    assert config(signing_secret=[SIGNING, NEXT_SIGNING]).signing_secret == (SIGNING, NEXT_SIGNING)
    assert config(signing_secret={"parameter": "/crm/whsec"}).signing_secret == (SecretRef(parameter="/crm/whsec"),)
    assert config(signing_secret=[]).signing_secret is None
    assert config(signing_secret="").signing_secret is None


def test_the_same_reference_is_resolved_once():
    shared = {"secret": "post-call-push/bot-1", "key": "token"}
    loaded = config(headers={"Authorization": shared, "X-Copy": shared})

    assert len(loaded.references) == 1


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ({"secret": "a", "parameter": "b"}, "exactly one store"),
        ({}, "exactly one store"),
        ({"key": "token"}, "exactly one store"),
        ({"parameter": "/p", "key": "token"}, "a parameter has no keys"),
        ({"secrets": "post-call-push/bot-1"}, "secrets: Extra inputs are not permitted"),
        ({"secret": ""}, "secret: String should have at least 1 character"),
        ({"secret": 42}, "secret: Input should be a valid string"),
        ({"secret": "name\n"}, "no surrounding spaces or control characters"),
    ],
    ids=["two-stores", "empty", "key-alone", "key-on-parameter", "typo", "empty-id", "number", "newline"],
)
def test_a_malformed_reference_says_what_is_wrong_and_where(reference, says):
    message = error_of(token=reference)

    assert message.startswith("bot bot-1: invalid post_call_push config: token: ")
    assert "token is a reference map, but" in message
    assert says in message


def test_a_header_that_is_neither_text_nor_a_reference_is_refused():
    assert "header X-Api-Key must be text or a reference map" in error_of(headers={"X-Api-Key": 42})


def test_a_referenced_header_still_has_its_name_checked():
    assert "header Content-Length is set by the push itself" in error_of(
        headers={"Content-Length": {"parameter": "/p"}}
    )
    assert "characters not allowed in a header name" in error_of(headers={"X Bad": {"parameter": "/p"}})


# --- plaintext checks kept --------------------------------------------------------------------


def test_plaintext_values_keep_todays_header_checks():
    assert "header Authorization has a control character" in error_of(token="Bearer a\r\nX-Evil: 1")
    assert "header X-Api-Key has a control character" in error_of(headers={"X-Api-Key": "k\nX-Evil: 1"})
    assert "header Host is set by the push itself" in error_of(headers={"Host": "evil.example.com"})


@pytest.mark.parametrize(
    "secret",
    [
        "sk_live_not_a_whsec_secret_1234",
        "whsec_" + "k" * 31 + "-",
        "whsec_" + base64.b64encode(b"short-key").decode(),
    ],
    ids=["no-prefix", "not-base64", "too-short"],
)
def test_a_malformed_signing_secret_is_a_config_error_without_the_secret(secret):
    message = error_of(signing_secret=secret)

    assert "signing_secret" in message
    assert secret not in message
    assert secret.removeprefix("whsec_")[:10] not in message


def test_a_malformed_entry_of_a_rotation_list_is_named_by_position():
    message = error_of(signing_secret=[SIGNING, "whsec_not*base64*at*all*1234567890"])

    assert "signing_secret: Value error, entry 1: signing_secret after whsec_ must be standard base64" in message
    assert "not*base64" not in message


def test_a_rotation_list_has_a_bound():
    assert "at most 5 secrets" in error_of(signing_secret=[SIGNING] * 6)


def test_signing_headers_cannot_be_configured_when_signing():
    assert "header Webhook-Signature is set by signing" in error_of(
        signing_secret=SIGNING, headers={"Webhook-Signature": "v1,forged"}
    )
    # Without signing the names are nobody's: a CRM may want its own.
    assert config(headers={"webhook-id": "x"}).headers == {"webhook-id": "x"}


# --- credentials never shown ------------------------------------------------------------------


def test_repr_and_validation_errors_never_show_a_credential():
    loaded = config(token=TOKEN, headers={"X-Api-Key": "hdr-secret-31337"}, signing_secret=SIGNING)
    assert TOKEN not in repr(loaded)
    assert "hdr-secret-31337" not in repr(loaded)
    assert SIGNING not in repr(loaded)

    with pytest.raises(ValidationError) as raised:
        PostCallPushConfig.model_validate({"url": URL, "token": "Bearer sk_live_leaky\r\n"})
    assert "sk_live_leaky" not in str(raised.value)
    with pytest.raises(ValidationError) as raised:
        PostCallPushConfig.model_validate({"url": URL, "signing_secret": ["whsec_leaky-leaky-leaky-leaky"]})
    assert "leaky" not in str(raised.value)


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["/", "?", "#"])
def test_a_url_password_with_an_unencoded_delimiter_is_refused_without_quoting_the_url(char):
    password = f"Zq7{char}Xv9-31337"
    url = f"https://crm-user:{password}@crm.example.com/api/in"

    with pytest.raises(ConfigError) as raised:
        check_push_url(url)

    message = str(raised.value)
    assert "url is malformed" in message
    assert "percent-encoded" in message  # it still says how to fix it
    for part in ("Zq7", "Xv9", "31337", "crm-user", "crm.example.com", "api/in"):
        assert part not in message, f"{part!r} quoted"
    assert raised.value.__cause__ is None  # a logged traceback would print urllib's message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://crm.example.com/in", "url scheme must be http or https (not ftp)"),
        ("crm-user:s3cr3t-pass@crm.example.com", "url scheme must be http or https"),
        ("//crm.example.com/in", "url must start with http:// or https://"),
        ("https://crm.example.com:99999/in", "a port must be a number from 1 to 65535"),
        ("https://[::1/in", "unbalanced [ ]"),
        ("https:///in", "url has no host"),
    ],
)
def test_url_errors_say_what_is_wrong_and_quote_nothing_of_an_arbitrary_url(url, says):
    with pytest.raises(ConfigError) as raised:
        check_push_url(url)

    assert says in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
    assert "crm-user" not in str(raised.value)
