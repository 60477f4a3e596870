"""Signed pushes checked by the Standard Webhooks reference receiver, not by our own verifier."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from crm_push.errors import ConfigError
from crm_push.push_url import parse_push_url
from crm_push.signing import parse_signing_secret, signed_content, webhook_headers

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()  # the 24-byte size Svix and others issue
NEXT_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
STRANGER = "whsec_" + base64.b64encode(b"s" * 32).decode()
CALL_ID = "call-0f3a9c"
BODY = json.dumps({"lead_id": "L-1", "customer_name": "Asha", "emi_amount": "1499"}).encode()


def now() -> int:
    return int(time.time())


def test_a_post_verifies_at_the_receiver():
    headers = webhook_headers(CALL_ID, now(), signed_content("POST", "https://crm.example.com/in", BODY), [SECRET])

    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)
    assert headers["webhook-id"] == CALL_ID
    assert headers["webhook-signature"].startswith("v1,")


def test_a_get_signs_the_whole_query_string_the_urls_own_parameters_included():
    url = "https://crm.example.com/hook?api=v2&src=bot&lead_id=L-1&customer_name=Asha+K"
    content = signed_content("GET", url, None)
    headers = webhook_headers(CALL_ID, now(), content, [SECRET])

    assert content == b"api=v2&src=bot&lead_id=L-1&customer_name=Asha+K"
    Webhook(SECRET).verify(content, headers, json_parse=False)


def test_a_get_signs_the_query_as_urllib3_writes_it():
    # urllib3 percent-encodes what a query may not hold and upper-cases escapes: the wire, not the config, counts.
    content = signed_content("GET", "https://crm.example.com/hook?city=Zürich&path=a%2fb#frag", None)

    assert content == b"city=Z%C3%BCrich&path=a%2Fb"


def test_a_get_signs_the_query_of_the_request_url_the_core_built():
    configured = parse_push_url("https://crm.example.com/hook?src=bot")
    request_url = configured.request_url("name=Asha+K&note=a|b@c")

    content = signed_content("GET", request_url, None)

    assert content == b"src=bot&name=Asha+K&note=a%7Cb%40c"
    assert content == parse_push_url(request_url).query.encode()  # the sender's reading of the same url


def test_a_get_to_a_url_the_push_cannot_read_is_not_signed():
    with pytest.raises(ConfigError, match="backslash"):
        signed_content("GET", "https://attacker.example\\@victim.example/x?a=1", None)


def test_a_get_without_a_query_signs_nothing_after_the_timestamp():
    content = signed_content("GET", "https://crm.example.com/hook", None)
    headers = webhook_headers(CALL_ID, now(), content, [SECRET])

    assert content == b""
    with pytest.raises(WebhookVerificationError):  # the receiver needs some body; only the empty one matches
        Webhook(SECRET).verify(b"x", headers, json_parse=False)
    Webhook(SECRET).verify(b"", headers, json_parse=False)


def test_during_rotation_a_receiver_holding_either_secret_verifies():
    headers = webhook_headers(CALL_ID, now(), BODY, [SECRET, NEXT_SECRET])

    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(BODY, headers)
    Webhook(NEXT_SECRET).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(STRANGER).verify(BODY, headers)


def test_a_tampered_body_fails():
    headers = webhook_headers(CALL_ID, now(), BODY, [SECRET])
    tampered = BODY.replace(b"1499", b"1")

    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(tampered, headers)


def test_a_tampered_query_fails():
    content = signed_content("GET", "https://crm.example.com/hook?lead_id=L-1&amount=1499", None)
    headers = webhook_headers(CALL_ID, now(), content, [SECRET])

    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(b"lead_id=L-1&amount=1", headers, json_parse=False)


def test_a_replayed_old_timestamp_fails():
    # Six minutes old: past the receiver's five-minute tolerance whatever the machine's load.
    headers = webhook_headers(CALL_ID, now() - 360, BODY, [SECRET])

    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(BODY, headers)


def test_a_retry_re_signed_with_a_new_timestamp_and_the_same_id_verifies():
    first = webhook_headers(CALL_ID, now() - 360, BODY, [SECRET])
    retry = webhook_headers(CALL_ID, now(), BODY, [SECRET])

    assert retry["webhook-id"] == first["webhook-id"]
    assert retry["webhook-signature"] != first["webhook-signature"]
    Webhook(SECRET).verify(BODY, retry)


def test_the_id_cannot_be_swapped_for_another_calls():
    headers = webhook_headers(CALL_ID, now(), BODY, [SECRET])

    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, {**headers, "webhook-id": "call-other"})


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("k" * 32 + "QUJD", "must start with whsec_"),
        ("whsec_", "standard base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "standard base64"),
        ("whsec_" + base64.b64encode(b"k" * 24).decode() + "!", "standard base64"),
        ("whsec_" + base64.b64encode(b"k" * 24).decode() + "A", "wrong length or padding"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "decodes to 16 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "decodes to 65 bytes"),
    ],
    ids=["no-prefix", "empty", "url-safe", "stray-char", "odd-length", "too-short", "too-long"],
)
def test_a_malformed_secret_is_a_config_error_that_never_quotes_it(secret, says):
    with pytest.raises(ConfigError) as raised:
        parse_signing_secret(secret)

    message = str(raised.value)
    assert says in message
    body = secret.removeprefix("whsec_")
    assert not body or body[:8] not in message


def test_unpadded_base64_is_accepted_as_the_reference_receiver_accepts_it():
    padded = "whsec_" + base64.b64encode(b"k" * 25).decode()
    assert padded.endswith("=")

    assert parse_signing_secret(padded.rstrip("=")) == b"k" * 25
    headers = webhook_headers(CALL_ID, now(), BODY, [padded.rstrip("=")])
    Webhook(padded).verify(BODY, headers)


def test_an_id_that_could_split_the_header_is_refused():
    with pytest.raises(ValueError, match="control characters"):
        webhook_headers("call-1\r\nX-Evil: 1", now(), BODY, [SECRET])
    with pytest.raises(ValueError, match="at least one secret"):
        webhook_headers(CALL_ID, now(), BODY, [])
