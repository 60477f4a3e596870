"""Which recording link the CRM gets (contract §5).

Pure: the presigner is passed in, so the rule is tested without S3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

Presigner = Callable[[str, str], str]
"""(bucket, key) -> a time-limited GET URL for that object."""

RecordingLinkMode = Literal["public_token", "presigned", "none"]


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
                log.warning("recording presign failed", extra={"error": type(exc).__name__})
    return "", "none"
