"""Credentials scrubbed out of what a CRM answers before it is stored or logged (contract §9, §11).

A CRM that rejects a request often echoes what it got: ``{"error": "invalid
token Bearer sk_live_..."}``, the query string, or the ``Authorization``
header it decoded. ``scrub`` replaces every known credential value in such
text, in the forms a server typically echoes it: as sent, after the auth
scheme, URL-encoded, JSON-escaped and base64-encoded (Basic credentials).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus

REDACTED = "***"
# Shorter values would blank out ordinary words and digits all over a response body.
MIN_SECRET_CHARS = 4
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "apikey", "api-key", "digest", "key", "sharedaccesssignature"})
_SIGNING_PREFIX = "whsec_"
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every credential in ``secrets`` (and its echoed forms) replaced."""
    pattern = _pattern(frozenset(s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS))
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


@lru_cache(maxsize=128)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    forms = {form for secret in secrets for form in _echoed_forms(secret) if len(form) >= MIN_SECRET_CHARS}
    if not forms:
        return None
    # Longest first: a value containing another is replaced whole, not in pieces.
    return re.compile("|".join(re.escape(form) for form in sorted(forms, key=lambda f: (-len(f), f))))


def _echoed_forms(secret: str) -> set[str]:
    variants = {secret}
    scheme, space, credential = secret.partition(" ")
    if space and scheme.lower() in _AUTH_SCHEMES and len(credential.strip()) >= MIN_SECRET_CHARS:
        variants.add(credential.strip())
        if scheme.lower() == "basic":
            variants.update(_basic_parts(credential.strip()))
    if secret.startswith(_SIGNING_PREFIX):
        variants.add(secret[len(_SIGNING_PREFIX) :])
    forms: set[str] = set()
    for value in (v for v in variants if len(v) >= MIN_SECRET_CHARS):
        encoded = quote(value, safe="")
        json_escaped = json.dumps(value)[1:-1]
        raw = value.encode("utf-8")
        forms.update(
            {
                value,
                encoded,
                _PERCENT_ESCAPE.sub(lambda m: m.group(0).lower(), encoded),
                quote_plus(value, safe=""),
                quote(value, safe="/:@"),
                json_escaped,
                json_escaped.replace("/", "\\/"),
                json.dumps(value, ensure_ascii=False)[1:-1],
                base64.b64encode(raw).decode("ascii"),
                base64.b64encode(raw).decode("ascii").rstrip("="),
                base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
            }
        )
    return forms


def _basic_parts(credential: str) -> set[str]:
    """``user:password`` and the password of a Basic credential: what a CRM echoes once it decoded it."""
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return set()
    _, colon, password = decoded.partition(":")
    return {decoded, password} if colon else {decoded}
