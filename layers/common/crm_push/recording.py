"""Which recording link the CRM gets (contract §5), and how long a presigned one can live.

Pure: the presigner is passed in, so the rule is tested without S3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from crm_push.errors import PushError

log = logging.getLogger(__name__)

Presigner = Callable[[str, str], str]
"""(bucket, key) -> a time-limited GET URL for that object."""

RecordingLinkMode = Literal["public_token", "presigned", "none"]

PresignCredentials = Literal["signer", "session", "long_term"]
"""Whose keys signed a presigned link.

``signer``: the dedicated IAM user's keys named by ``RECORDINGS_SIGNER_SECRET``.
``session``: temporary credentials (a session token): the function's role, an
operator's SSO or assumed-role session. ``long_term``: other keys without a
session token (a local stack, an operator's own IAM user).
"""

SESSION_LINK_MAX_SECONDS = 6 * 3600
"""The longest lifetime a link signed with temporary credentials is given (see ``presigned_link_lifetime``)."""


def presigned_link_lifetime(ttl_seconds: int, signed_with: PresignCredentials) -> int:
    """``X-Amz-Expires`` for a link signed with ``signed_with``: what the signature can honour.

    S3 refuses a link once the credentials that signed it have expired, whatever
    ``X-Amz-Expires`` says. Long-term keys (the signer, or keys without a
    session token) honour ``RECORDING_URL_TTL_SECONDS`` (SigV4 allows 7 days).
    Temporary credentials honour only what is left of their session, and the
    function cannot know that: Lambda hands its role's credentials over in
    environment variables with no expiry, and botocore has no public expiry
    for credentials that do carry one. So such a link is capped at 6 hours,
    the longest AWS documents for role credentials handed to compute (an
    instance profile's); it may still die sooner, when the session that signed
    it ends. The cap keeps the link from promising days it cannot keep, and the
    link's ``signed_with`` lets preview say so; the cure is the signer or the
    public token link.
    """
    if signed_with == "session":
        return min(ttl_seconds, SESSION_LINK_MAX_SECONDS)
    return ttl_seconds


@dataclass(frozen=True, slots=True)
class PresignedLink:
    """A presigned GET URL and its terms. The URL carries a signature: never log it."""

    url: str = field(repr=False)
    expires_in_seconds: int  # the link's X-Amz-Expires
    signed_with: PresignCredentials

    @property
    def dies_with_session(self) -> bool:
        """True when S3 stops honouring the link as the signing session ends, possibly before ``expires_in``."""
        return self.signed_with == "session"


@runtime_checkable
class DescribedPresigner(Protocol):
    """A Presigner that can also say how each link is signed (``adapters.recordings.RecordingPresigner``)."""

    def __call__(self, bucket: str, key: str) -> str: ...

    def link(self, bucket: str, key: str) -> PresignedLink:
        """The presigned link of (bucket, key) with its terms; raises like the call does."""
        ...


def parse_recording_location(recording_url: str, default_bucket: str | None) -> tuple[str, str] | None:
    """(bucket, key) of an ``s3://bucket/key``, ``http(s)://host/bucket/key`` or bare-key recording."""
    text = recording_url.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme == "s3":
        bucket, key = parts.netloc, parts.path.lstrip("/")
    elif parts.scheme in ("http", "https"):
        # Older items store a path-style object URL: the first path segment is the bucket.
        bucket, _, key = parts.path.lstrip("/").partition("/")
        key = unquote(key)
    elif not parts.scheme and default_bucket:
        bucket, key = default_bucket, text.lstrip("/")
    else:
        return None
    return (bucket, key) if bucket and key else None


def public_recording_link(public_base_url: str, access_token: str) -> str:
    """The public recordings proxy link (contract §5, rule 1), with no double slash."""
    return f"{public_base_url.rstrip('/')}/api/v1/public/recordings/{access_token}"


def select_recording_url(
    call_doc: Mapping[str, Any],
    *,
    public_base_url: str | None,
    recordings_bucket: str | None,
    presign: Presigner | None,
) -> tuple[str, RecordingLinkMode]:
    """The recording URL to push and how it was made."""
    key = call_doc.get("recording_key")
    token = call_doc.get("recording_access_token")
    if isinstance(key, str) and key and isinstance(token, str) and token and public_base_url:
        return public_recording_link(public_base_url, token), "public_token"

    stored = call_doc.get("recording_url")
    if isinstance(stored, str) and presign is not None:
        location = parse_recording_location(stored, recordings_bucket)
        if location is not None:
            try:
                return presign(*location), "presigned"
            except Exception as exc:  # a broken link must not cost the customer the whole push
                # Our own errors are written to name no secret (an unreadable signer secret says which
                # secret and why); anything else is named by its type only.
                detail = str(exc) if isinstance(exc, PushError) else ""
                log.warning("recording presign failed", extra={"error": type(exc).__name__, "detail": detail})
    return "", "none"
