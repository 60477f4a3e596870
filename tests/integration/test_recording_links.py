"""Presigned recording links that outlive the role's session (audit #11): moto S3, IAM and Secrets Manager.

The process runs with temporary credentials (conftest sets AWS_SESSION_TOKEN), as
the function does with its role. moto does not check signatures, so what is
checked is whose key a link names (``X-Amz-Credential``), its session token and
its ``X-Amz-Expires``, and that the URL fetches the object.
"""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from crm_push.adapters.recordings import make_presigner
from crm_push.config import load_bot_config
from crm_push.ports import PushDeps
from crm_push.recording import SESSION_LINK_MAX_SECONDS, select_recording_url
from crm_push.secrets import SecretUnavailable, StoreSecretResolver
from push_cli.main import main
from push_cli.preview import ROLE_SIGNED_LINK_WARNING, build_preview
from tests.conftest import REGION, Stack
from tests.fakes import InMemoryCalls, ScriptedCrm, StaticBots, make_deps

WEEK = 604800
ROLE_KEY_ID = "testing"  # the process's own (temporary) credentials, from conftest


class Clock:
    """Monotonic seconds that move only when told: the secret cache's age without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def signer_key_pair(moto_endpoint: str) -> tuple[str, str]:
    """A real IAM user's access key (AKIA...) from moto's IAM."""
    iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_endpoint)
    user = f"recordings-signer-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"recordings-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="calls/c1.wav", Body=b"RIFF....WAVE")
    return name


@pytest.fixture
def signer(aws: Any, secretsmanager: Any) -> tuple[str, str, str]:
    """(secret name, access key id, secret access key) of a signer stored the documented way."""
    key_id, secret_key = signer_key_pair(aws.moto)
    name = f"recordings-signer/{uuid.uuid4().hex[:8]}"
    secretsmanager.create_secret(
        Name=name, SecretString=json.dumps({"access_key_id": key_id, "secret_access_key": secret_key})
    )
    return name, key_id, secret_key


def resolver(secretsmanager: Any, clock: Clock | None = None) -> StoreSecretResolver:
    return StoreSecretResolver(secrets_client=secretsmanager, clock=clock or Clock())


# --- with a signer ---------------------------------------------------------------------------


def records_of(caplog: Any, logger: str) -> list[logging.LogRecord]:
    """The records one logger emitted, each once: other tests may have left the SDK's loggers at DEBUG, and the
    handler's Powertools wiring may hand caplog the same record twice."""
    seen: dict[int, logging.LogRecord] = {}
    for record in caplog.records:
        if record.name == logger:
            seen.setdefault(id(record), record)
    return list(seen.values())


def test_a_configured_signer_signs_the_link_for_the_whole_ttl_with_its_own_key_and_no_session(
    aws, secretsmanager, bucket, signer
):
    name, key_id, _ = signer
    presign = make_presigner(aws.moto, WEEK, signer_secret=name, secrets=resolver(secretsmanager))

    link = presign.link(bucket, "calls/c1.wav")

    params = query(link.url)
    assert params["X-Amz-Credential"].split("/")[0] == key_id
    assert key_id != ROLE_KEY_ID
    assert "X-Amz-Security-Token" not in params  # nothing of the role's session is in the link
    assert params["X-Amz-Expires"] == str(WEEK)
    assert (link.signed_with, link.expires_in_seconds, link.dies_with_session) == ("signer", WEEK, False)
    assert presign(bucket, "calls/c1.wav").startswith(f"{aws.moto}/{bucket}/calls/c1.wav?")
    with urllib.request.urlopen(link.url) as fetched:
        assert fetched.read() == b"RIFF....WAVE"


def test_without_a_resolver_given_the_signer_secret_is_read_with_the_session(aws, bucket, signer):
    name, key_id, _ = signer
    presign = make_presigner(aws.moto, WEEK, session=boto3.session.Session(), signer_secret=name)

    assert query(presign(bucket, "calls/c1.wav"))["X-Amz-Credential"].startswith(key_id + "/")


def test_a_rotated_signer_key_is_used_once_the_cached_value_is_five_minutes_old(
    aws, secretsmanager, bucket, signer, caplog
):
    name, old_key_id, _ = signer
    clock = Clock()
    presign = make_presigner(aws.moto, WEEK, signer_secret=name, secrets=resolver(secretsmanager, clock))
    assert query(presign(bucket, "calls/c1.wav"))["X-Amz-Credential"].startswith(old_key_id + "/")

    new_key_id, new_secret_key = signer_key_pair(aws.moto)
    secretsmanager.put_secret_value(
        SecretId=name, SecretString=json.dumps({"access_key_id": new_key_id, "secret_access_key": new_secret_key})
    )
    clock.now += 299
    assert query(presign(bucket, "calls/c1.wav"))["X-Amz-Credential"].startswith(old_key_id + "/")

    clock.now += 1
    caplog.clear()  # the first load may be captured too, when an earlier test left the logger at INFO
    with caplog.at_level(logging.INFO, logger="crm_push.adapters.recordings"):
        assert query(presign(bucket, "calls/c1.wav"))["X-Amz-Credential"].startswith(new_key_id + "/")

    (loaded,) = [
        r
        for r in records_of(caplog, "crm_push.adapters.recordings")
        if r.getMessage() == "recordings signer keys loaded"
    ]
    assert loaded.__dict__["rotated"] is True
    assert new_key_id not in caplog.text
    assert new_secret_key not in caplog.text


def test_a_missing_signer_secret_gives_no_link_rather_than_a_role_signed_one(aws, secretsmanager, bucket, caplog):
    presign = make_presigner(aws.moto, WEEK, signer_secret="recordings-signer/absent", secrets=resolver(secretsmanager))

    with pytest.raises(SecretUnavailable, match="recordings-signer/absent does not exist") as raised:
        presign.link(bucket, "calls/c1.wav")
    assert raised.value.problem == "not_found"

    with caplog.at_level(logging.WARNING, logger="crm_push.recording"):
        chosen = select_recording_url(
            {"recording_url": f"s3://{bucket}/calls/c1.wav"},
            public_base_url=None,
            recordings_bucket=None,
            presign=presign,
        )
    assert chosen == ("", "none")
    (warning,) = records_of(caplog, "crm_push.recording")
    assert "recordings-signer/absent does not exist" in warning.__dict__["detail"]


@pytest.mark.parametrize(
    ("secret_string", "problem"),
    [
        ("AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "not a JSON object"),
        ('["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"]', "not a JSON object"),
        ('{"access_key_id": "AKIAIOSFODNN7EXAMPLE"}', "needs text under both"),
        ('{"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": ""}', "needs text under both"),
        ('{"access_key_id": 7, "secret_access_key": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}', "needs text"),
        (
            '{"access_key_id": "akia iosfodnn7", "secret_access_key": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}',
            "is not an AWS access key id",
        ),
        (
            '{"access_key_id": "ASIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}',
            "is a temporary (STS) key",
        ),
    ],
    ids=["not-json", "json-list", "no-secret-key", "empty-secret-key", "id-not-text", "bad-id", "temporary-key"],
)
def test_an_unusable_signer_secret_is_refused_in_words_that_quote_none_of_it(
    aws, secretsmanager, bucket, secret_string, problem
):
    name = f"recordings-signer/{uuid.uuid4().hex[:8]}"
    secretsmanager.create_secret(Name=name, SecretString=secret_string)
    presign = make_presigner(aws.moto, WEEK, signer_secret=name, secrets=resolver(secretsmanager))

    with pytest.raises(SecretUnavailable) as raised:
        presign(bucket, "calls/c1.wav")

    message = str(raised.value)
    assert problem in message
    assert name in message
    assert raised.value.problem == "unusable"
    for value in ("AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "iosfodnn7"):
        assert value not in message


# --- without a signer: the process's own credentials --------------------------------------------


def test_without_a_signer_a_session_signed_link_is_capped_and_marked_and_warned_about_once(aws, bucket, caplog):
    presign = make_presigner(aws.moto, WEEK)

    with caplog.at_level(logging.WARNING, logger="crm_push.adapters.recordings"):
        first = presign.link(bucket, "calls/c1.wav")
        second = presign.link(bucket, "calls/c1.wav")

    params = query(first.url)
    assert params["X-Amz-Credential"].startswith(ROLE_KEY_ID + "/")
    assert params["X-Amz-Security-Token"] == "testing"  # a session token: the link dies with that session
    assert params["X-Amz-Expires"] == str(SESSION_LINK_MAX_SECONDS)
    assert (first.signed_with, first.expires_in_seconds, first.dies_with_session) == (
        "session",
        SESSION_LINK_MAX_SECONDS,
        True,
    )
    assert second.signed_with == "session"
    (warning,) = records_of(caplog, "crm_push.adapters.recordings")  # once per presigner (per container), not per call
    assert "RECORDINGS_SIGNER_SECRET" in warning.getMessage()
    assert "X-Amz-Signature" not in caplog.text
    with urllib.request.urlopen(first.url) as fetched:
        assert fetched.read() == b"RIFF....WAVE"


def test_without_a_signer_a_ttl_below_the_cap_is_kept(aws, bucket):
    link = make_presigner(aws.moto, 900).link(bucket, "calls/c1.wav")

    assert query(link.url)["X-Amz-Expires"] == "900"
    assert link.signed_with == "session"


def test_long_term_keys_without_a_session_token_keep_the_whole_ttl_and_are_not_warned_about(
    aws, bucket, monkeypatch, caplog
):
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    presign = make_presigner(aws.moto, WEEK, session=boto3.session.Session())

    with caplog.at_level(logging.WARNING, logger="crm_push.adapters.recordings"):
        link = presign.link(bucket, "calls/c1.wav")

    assert query(link.url)["X-Amz-Expires"] == str(WEEK)
    assert "X-Amz-Security-Token" not in query(link.url)
    assert link.signed_with == "long_term"
    assert records_of(caplog, "crm_push.adapters.recordings") == []


# --- preview ------------------------------------------------------------------------------------


def presigned_call(bucket: str) -> dict[str, Any]:
    return {
        "call_id": f"call-{uuid.uuid4().hex[:8]}",
        "bot_id": "bot-1",
        "results_stored_at": "2026-11-25T09:32:42Z",
        "recording_url": f"s3://{bucket}/calls/c1.wav",
    }


def bot_using_the_recording() -> Any:
    return load_bot_config(
        {
            "bot_id": "bot-1",
            "post_call_push": {
                "url": "https://crm.example.com/hook",
                "key_mapper": {"recording": "{{result.recording_url}}"},
            },
        },
        "bot-1",
    )


def preview_deps(presign: Any) -> PushDeps:
    return make_deps(InMemoryCalls(), StaticBots(), ScriptedCrm(), presign=presign, public_base_url=None)


def test_preview_of_a_signer_signed_link_shows_its_full_lifetime_and_no_session_warning(
    aws, secretsmanager, bucket, signer
):
    name, _, _ = signer
    presign = make_presigner(aws.moto, WEEK, signer_secret=name, secrets=resolver(secretsmanager))

    preview = build_preview(presigned_call(bucket), bot_using_the_recording(), preview_deps(presign))

    assert preview.recording is not None
    assert preview.recording.mode == "presigned"
    assert "valid 7 days, 0:00:00 from the push (" in preview.recording.how
    assert ROLE_SIGNED_LINK_WARNING not in preview.recording.problems
    assert not any("role session" in w for w in preview.warnings)


def test_preview_of_a_role_signed_link_warns_that_it_dies_with_the_role_session(aws, bucket, monkeypatch):
    # Even when the operator's own keys are long-term: the function signs with its role.
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    presign = make_presigner(aws.moto, WEEK, session=boto3.session.Session())

    preview = build_preview(presigned_call(bucket), bot_using_the_recording(), preview_deps(presign))

    assert preview.recording is not None
    assert ROLE_SIGNED_LINK_WARNING in preview.recording.problems
    assert "valid 6:00:00 from the push at most, and only while the function's role session lasts" in (
        preview.recording.how
    )
    assert any(ROLE_SIGNED_LINK_WARNING in w for w in preview.warnings)


def test_cli_preview_warns_about_a_role_signed_recording_link(
    capsys: pytest.CaptureFixture[str], stack: Stack, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    del sample_call["recording_access_token"]
    sample_call["recording_url"] = f"s3://{stack.bucket}/recordings/c1.wav"
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    code = main(["preview", "--call-id", sample_call["call_id"], "--json"])
    out, err = capsys.readouterr()

    assert code == 0, err
    preview = json.loads(out)
    assert preview["recording"]["mode"] == "presigned"
    assert ROLE_SIGNED_LINK_WARNING in preview["recording"]["problems"]
    expected = (
        "the link is presigned with the function's role credentials (RECORDINGS_SIGNER_SECRET is not set): "
        "it expires with the function's role session, within hours; configure RECORDINGS_SIGNER_SECRET "
        "or use the public token link"
    )
    assert any(expected in warning for warning in preview["warnings"])

    main(["preview", "--call-id", sample_call["call_id"]])
    text = capsys.readouterr().out
    assert "function's role session" in " ".join(text.split())
