"""Standard Webhooks signatures (contract §11), pure so that every attempt is signed afresh.

A receiver checks ``webhook-signature`` against ``"{webhook-id}.{webhook-timestamp}.{body}"``
with the shared secret and rejects timestamps more than five minutes away from its
clock, so a retried attempt must be signed again with a new timestamp while keeping
the same id (the receiver's de-duplication key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence

from crm_push.errors import ConfigError
from crm_push.push_url import parse_push_url

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's marker, not a secret
# The standard's bounds: shorter keys are guessable, longer ones buy nothing with HMAC-SHA256.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")

# Standard base64 only: the reference receiver decodes leniently, so a URL-safe or
# otherwise odd secret would be read as different key bytes there than here.
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def parse_signing_secret(value: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret. ConfigError says what is wrong, never the secret."""
    if not isinstance(value, str):
        raise ConfigError("signing_secret must be text of the form whsec_<base64>")
    if not value.startswith(SECRET_PREFIX):
        raise ConfigError("signing_secret must start with whsec_ (Standard Webhooks format whsec_<base64>)")
    encoded = value[len(SECRET_PREFIX) :]
    if not _BASE64.fullmatch(encoded):
        raise ConfigError("signing_secret after whsec_ must be standard base64 (A-Z, a-z, 0-9, + and /)")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ConfigError("signing_secret after whsec_ is not valid base64 (wrong length or padding)") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ConfigError(
            f"signing_secret decodes to {len(key)} bytes; Standard Webhooks secrets are "
            f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
        )
    return key


def signed_content(method: str, url: str, body: bytes | None) -> bytes:
    """What a receiver verifies: the body; for GET the query string exactly as sent (contract §11).

    ``url`` is the request's url (``PushUrl.request_url``). Its query is read
    by the same parse the sender sends from, in the form urllib3 writes on
    the request line (it percent-encodes characters not allowed in a query
    and upper-cases escapes), so the receiver, which sees only the wire,
    computes the same bytes. Raises ConfigError for a url the push cannot send.
    """
    if method.upper() == "GET":
        return parse_push_url(url).query.encode("utf-8")
    return body or b""


def webhook_headers(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, one ``v1`` signature per secret."""
    if not msg_id or _HEADER_UNSAFE.search(msg_id):
        raise ValueError("webhook-id must be non-empty text without control characters")
    if not secrets:
        raise ValueError("signing needs at least one secret")
    keys = [parse_signing_secret(secret) for secret in secrets]
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    signatures = " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii") for key in keys
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp)), "webhook-signature": signatures}
