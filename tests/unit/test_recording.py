"""Contract §5: which recording link the CRM gets. The presigner is a fake; no S3."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from crm_push.errors import PushError
from crm_push.recording import (
    SESSION_LINK_MAX_SECONDS,
    DescribedPresigner,
    PresignedLink,
    RecordingLinkMode,
    presigned_link_lifetime,
    select_recording_url,
)

BASE = "https://api.example.com"
BUCKET = "voicebot-recordings"
TOKEN_CALL = {"recording_key": "recordings/2026/11/25/call-1.wav", "recording_access_token": "rec_4QWJ9n2L"}


class FakePresigner:
    """Records every (bucket, key) it was asked for and answers a recognisable URL."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, bucket: str, key: str) -> str:
        self.calls.append((bucket, key))
        return f"https://presigned.example/{bucket}/{key}?X-Amz-Signature=sig"


def failing_presigner(bucket: str, key: str) -> str:
    raise RuntimeError("S3 is down")


def select(
    call_doc: dict[str, Any],
    *,
    public_base_url: str | None = BASE,
    recordings_bucket: str | None = BUCKET,
    presign: Any = None,
) -> tuple[str, RecordingLinkMode]:
    return select_recording_url(
        call_doc, public_base_url=public_base_url, recordings_bucket=recordings_bucket, presign=presign
    )


# --- 1. the public token URL -----------------------------------------------------------


def test_key_token_and_base_url_give_the_public_recordings_url() -> None:
    assert select(TOKEN_CALL) == (f"{BASE}/api/v1/public/recordings/rec_4QWJ9n2L", "public_token")


@pytest.mark.parametrize("base", ["https://api.example.com/", "https://api.example.com//"])
def test_public_url_has_no_double_slash_when_the_base_url_ends_with_a_slash(base: str) -> None:
    url, _ = select(TOKEN_CALL, public_base_url=base)

    assert url == "https://api.example.com/api/v1/public/recordings/rec_4QWJ9n2L"


def test_public_url_keeps_a_path_prefix_of_the_base_url() -> None:
    url, _ = select(TOKEN_CALL, public_base_url="https://example.com/voicebot/")

    assert url == "https://example.com/voicebot/api/v1/public/recordings/rec_4QWJ9n2L"


def test_public_url_wins_over_presigning_the_stored_url() -> None:
    presigner = FakePresigner()

    url, mode = select({**TOKEN_CALL, "recording_url": "s3://bucket/key.wav"}, presign=presigner)

    assert (url, mode) == (f"{BASE}/api/v1/public/recordings/rec_4QWJ9n2L", "public_token")
    assert presigner.calls == []


@pytest.mark.parametrize(
    ("call_doc", "base"),
    [
        ({"recording_access_token": "tok"}, BASE),  # no recording_key
        ({"recording_key": "k.wav"}, BASE),  # no token
        ({"recording_key": "k.wav", "recording_access_token": ""}, BASE),
        ({"recording_key": "", "recording_access_token": "tok"}, BASE),
        (TOKEN_CALL, None),  # no PUBLIC_BASE_URL
        (TOKEN_CALL, ""),
    ],
)
def test_without_key_token_and_base_url_all_present_there_is_no_public_url(
    call_doc: dict[str, Any], base: str | None
) -> None:
    assert select(call_doc, public_base_url=base) == ("", "none")


def test_incomplete_token_rule_falls_back_to_presigning_the_stored_url() -> None:
    presigner = FakePresigner()

    url, mode = select({**TOKEN_CALL, "recording_url": "s3://b/k.wav"}, public_base_url=None, presign=presigner)

    assert mode == "presigned"
    assert presigner.calls == [("b", "k.wav")]
    assert url == "https://presigned.example/b/k.wav?X-Amz-Signature=sig"


# --- 2. a presigned URL for the stored recording_url ------------------------------------------


@pytest.mark.parametrize(
    ("recording_url", "bucket", "key"),
    [
        (
            "s3://voicebot-recordings/recordings/2026/11/25/call.wav",
            "voicebot-recordings",
            "recordings/2026/11/25/call.wav",
        ),
        ("s3://other-bucket/call.wav", "other-bucket", "call.wav"),
        ("http://minio:9000/recordings/2026/call.wav", "recordings", "2026/call.wav"),
        ("https://s3.ap-south-1.amazonaws.com/rec-bucket/a/b.wav", "rec-bucket", "a/b.wav"),
        ("https://minio.internal/rec/call%20one.wav", "rec", "call one.wav"),
        ("recordings/2026/call.wav", BUCKET, "recordings/2026/call.wav"),  # bare key: default bucket
        ("/recordings/2026/call.wav", BUCKET, "recordings/2026/call.wav"),
        ("  s3://b/k.wav  ", "b", "k.wav"),
    ],
)
def test_stored_recording_url_is_presigned_for_its_bucket_and_key(recording_url: str, bucket: str, key: str) -> None:
    presigner = FakePresigner()

    url, mode = select({"recording_url": recording_url}, presign=presigner)

    assert presigner.calls == [(bucket, key)]
    assert (url, mode) == (f"https://presigned.example/{bucket}/{key}?X-Amz-Signature=sig", "presigned")


def test_bare_key_without_a_default_bucket_gives_no_url() -> None:
    presigner = FakePresigner()

    assert select({"recording_url": "recordings/call.wav"}, recordings_bucket=None, presign=presigner) == ("", "none")
    assert presigner.calls == []


def test_stored_recording_url_without_storage_config_gives_no_url() -> None:
    assert select({"recording_url": "s3://b/k.wav"}, presign=None) == ("", "none")


@pytest.mark.parametrize(
    "recording_url",
    ["s3://bucket-only", "s3://bucket/", "https://host/", "https://host/bucket-only", "ftp://host/b/k.wav", "", "   "],
)
def test_recording_url_without_a_bucket_and_key_gives_no_url(recording_url: str) -> None:
    presigner = FakePresigner()

    assert select({"recording_url": recording_url}, presign=presigner) == ("", "none")
    assert presigner.calls == []


@pytest.mark.parametrize("recording_url", [None, 5, {"bucket": "b", "key": "k"}, ["s3://b/k"]])
def test_recording_url_that_is_not_a_string_gives_no_url(recording_url: Any) -> None:
    assert select({"recording_url": recording_url}, presign=FakePresigner()) == ("", "none")


def test_presigner_failure_gives_no_url_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="crm_push.recording"):
        result = select({"recording_url": "s3://b/k.wav"}, presign=failing_presigner)

    assert result == ("", "none")
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert "presign" in warning.getMessage()


def test_a_presign_error_of_our_own_is_logged_with_its_message_anything_else_by_its_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unreadable_signer(bucket: str, key: str) -> str:
        raise PushError("recordings signer secret rec-signer does not exist (ResourceNotFoundException)")

    def leaky(bucket: str, key: str) -> str:
        raise RuntimeError("secret_access_key=wJalrXUtnFEMI")

    with caplog.at_level(logging.WARNING, logger="crm_push.recording"):
        assert select({"recording_url": "s3://b/k.wav"}, presign=unreadable_signer) == ("", "none")
        assert select({"recording_url": "s3://b/k.wav"}, presign=leaky) == ("", "none")

    ours, theirs = caplog.records
    assert "rec-signer does not exist" in ours.__dict__["detail"]
    assert theirs.__dict__["error"] == "RuntimeError"
    assert theirs.__dict__["detail"] == ""
    assert "wJalrXUtnFEMI" not in caplog.text


# --- how long a presigned link can live (audit #11) --------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "signed_with", "expected"),
    [
        (604800, "signer", 604800),  # an IAM user's keys honour SigV4's 7 days
        (604800, "long_term", 604800),
        (604800, "session", SESSION_LINK_MAX_SECONDS),  # temporary credentials: capped
        (3600, "session", 3600),  # a shorter TTL is kept as configured
        (SESSION_LINK_MAX_SECONDS, "session", SESSION_LINK_MAX_SECONDS),
    ],
)
def test_a_link_signed_with_temporary_credentials_is_capped_to_what_they_can_honour(
    ttl: int, signed_with: Any, expected: int
) -> None:
    assert presigned_link_lifetime(ttl, signed_with) == expected


def test_the_session_cap_is_six_hours() -> None:
    assert SESSION_LINK_MAX_SECONDS == 6 * 3600


def test_a_presigned_link_hides_its_signed_url_from_repr_and_says_whether_it_dies_with_a_session() -> None:
    link = PresignedLink("https://s3.example.com/b/k?X-Amz-Signature=deadbeef", 21600, "session")
    other = PresignedLink("https://s3.example.com/b/k?X-Amz-Signature=deadbeef", 604800, "signer")

    assert "deadbeef" not in repr(link)
    assert link.dies_with_session
    assert not other.dies_with_session


def test_a_plain_presigner_is_not_a_described_one() -> None:
    class Described(FakePresigner):
        def link(self, bucket: str, key: str) -> PresignedLink:
            return PresignedLink(self(bucket, key), 60, "signer")

    assert not isinstance(FakePresigner(), DescribedPresigner)
    assert not isinstance(failing_presigner, DescribedPresigner)
    assert isinstance(Described(), DescribedPresigner)


# --- 3. nothing ------------------------------------------------------------------------------------


def test_call_without_any_recording_gives_an_empty_url() -> None:
    assert select({}, presign=FakePresigner()) == ("", "none")
