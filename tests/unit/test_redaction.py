"""What a CRM echoes back is scrubbed of every credential, in the forms CRMs echo them."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from crm_push.redaction import REDACTED, scrub

TOKEN = "Bearer sk_live/9f8e+7d6c=5b4a"
API_KEY = "hdr-secret-31337"
USER, PASSWORD = "crm-user", "pw/userinfo?4242"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SIGNING = "whsec_" + base64.b64encode(b"signing-key-bytes-0123456").decode()


@pytest.mark.parametrize(
    ("echo", "secret"),
    [
        (f"invalid Authorization: {TOKEN}", TOKEN),
        ("invalid token sk_live/9f8e+7d6c=5b4a", TOKEN),  # the scheme stripped
        (f"bad token {quote('sk_live/9f8e+7d6c=5b4a', safe='')}", TOKEN),  # URL-encoded
        (f"bad token {quote('sk_live/9f8e+7d6c=5b4a', safe='').lower()}", TOKEN),  # lower-case escapes
        (f"bad token {quote_plus(TOKEN)}", TOKEN),
        (json.dumps({"error": f"token {TOKEN} revoked"}), TOKEN),
        ('{"token":"sk_live\\/9f8e+7d6c=5b4a"}', TOKEN),  # JSON with escaped slashes, as PHP writes it
        (f"got header {BASIC}", BASIC),
        (f"user {USER}:{PASSWORD} unknown", BASIC),  # the CRM decoded the Basic credential
        (f"wrong password {PASSWORD}", BASIC),
        (f"signature checked with {SIGNING}", SIGNING),
        (f"key {SIGNING.removeprefix('whsec_')}", SIGNING),
        (f"Basic {base64.b64encode(API_KEY.encode()).decode()}", API_KEY),
        (f"{API_KEY}{API_KEY}", API_KEY),
    ],
    ids=[
        "as-sent",
        "without-scheme",
        "url-encoded",
        "url-encoded-lower",
        "form-encoded",
        "json",
        "json-escaped-slash",
        "basic-header",
        "basic-decoded",
        "basic-password",
        "signing-secret",
        "signing-key-base64",
        "base64",
        "repeated",
    ],
)
def test_every_echoed_form_of_a_credential_is_scrubbed(echo, secret):
    scrubbed = scrub(echo, [secret, "other-secret-0000"])

    assert REDACTED in scrubbed
    for piece in ("sk_live", "9f8e", "31337", "4242", "userinfo", "signing-key", "c2lnbmluZy1rZXkt"):
        assert piece not in scrubbed, scrubbed


def test_text_around_a_secret_is_kept():
    assert scrub(f'{{"error":"invalid key {API_KEY}","code":401}}', [API_KEY]) == (
        '{"error":"invalid key ***","code":401}'
    )


def test_a_secret_containing_another_is_replaced_whole():
    assert scrub("token abcd-efgh-ijkl", ["abcd", "abcd-efgh-ijkl"]) == "token ***"


def test_short_values_and_empty_input_are_left_alone():
    assert scrub("id 123 ok", ["123", "", "ok"]) == "id 123 ok"
    assert scrub("", [TOKEN]) == ""
    assert scrub("nothing secret here", []) == "nothing secret here"


def test_regex_characters_in_a_secret_are_literal():
    assert scrub("a.b*c+ and aXbbbc", ["a.b*c+"]) == "*** and aXbbbc"
