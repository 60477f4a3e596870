"""template.yaml: the EventBridge rule's source, the stream's retries and the recordings signer (audit #11).

Read as CloudFormation would deploy it, with ``test_template.Deployment``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_template import TEMPLATE, Deployment, _by_sid, _function_statements, _listed, matches

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_EVENT = json.loads((ROOT / "events" / "eventbridge_results_stored.json").read_text())
SIGNER_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:post-call-push-recordings-signer-AbC123"


def results_stored_pattern(deployment: Deployment) -> dict[str, Any]:
    events = deployment.resources["PostCallPushFunction"]["Properties"]["Events"]
    pattern: dict[str, Any] = events["ResultsStored"]["Properties"]["Pattern"]
    return pattern


# ---------------------------------------------------------------- EventBridge source


def test_by_default_the_rule_admits_the_sample_results_stored_event() -> None:
    assert matches(results_stored_pattern(Deployment(TEMPLATE)), SAMPLE_EVENT)


@pytest.mark.parametrize("source", ["test-tooling", "voicebot.results.staging", "aws.events"])
def test_the_rule_refuses_the_same_event_from_another_source(source: str) -> None:
    assert not matches(results_stored_pattern(Deployment(TEMPLATE)), {**SAMPLE_EVENT, "source": source})


def test_the_rule_follows_the_results_event_source_parameter() -> None:
    pattern = results_stored_pattern(Deployment(TEMPLATE, ResultsEventSource="acme.ingestion"))

    assert matches(pattern, {**SAMPLE_EVENT, "source": "acme.ingestion"})
    assert not matches(pattern, SAMPLE_EVENT)


def test_the_results_event_source_parameter_cannot_be_empty() -> None:
    allowed = re.compile(TEMPLATE["Parameters"]["ResultsEventSource"]["AllowedPattern"])

    assert allowed.fullmatch(SAMPLE_EVENT["source"])
    assert not allowed.fullmatch("")


# ---------------------------------------------------------------- stream retries


def test_stream_retries_outlast_a_throttling_burst_and_end_in_the_on_failure_queue() -> None:
    stream = Deployment(TEMPLATE).resources["PostCallPushFunction"]["Properties"]["Events"]["CallsStream"]
    properties = stream["Properties"]

    assert properties["MaximumRetryAttempts"] >= 20  # immediate retries: 5 were spent in well under a minute
    assert properties["BisectBatchOnFunctionError"] is True  # a failing record is isolated before it blocks
    assert 0 < properties["MaximumRecordAgeInSeconds"] < 86400  # reaches the queue before the stream drops it
    assert properties["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["OnFailureQueue", "Arn"]}


# ---------------------------------------------------------------- recordings signer


def test_without_a_signer_the_role_signs_and_reads_the_recordings_and_reads_no_signer_secret() -> None:
    deployment = Deployment(TEMPLATE, RecordingsBucket="recordings")
    statements = _by_sid(_function_statements(deployment))
    env = deployment.resources["PostCallPushFunction"]["Properties"]["Environment"]["Variables"]

    assert env["RECORDINGS_SIGNER_SECRET"] == ""  # Settings reads "" as not set
    assert "ReadRecordingsSigner" not in statements
    assert statements["PresignRecordings"]["Action"] == "s3:GetObject"


def test_a_signer_is_read_by_its_exact_arn_and_the_role_no_longer_reads_the_recordings() -> None:
    deployment = Deployment(TEMPLATE, RecordingsBucket="recordings", RecordingsSignerSecretArn=SIGNER_ARN)
    statements = _by_sid(_function_statements(deployment))
    env = deployment.resources["PostCallPushFunction"]["Properties"]["Environment"]["Variables"]

    assert env["RECORDINGS_SIGNER_SECRET"] == SIGNER_ARN
    signer = statements["ReadRecordingsSigner"]
    assert (signer["Effect"], signer["Action"], signer["Resource"]) == (
        "Allow",
        "secretsmanager:GetSecretValue",
        SIGNER_ARN,
    )
    assert "PresignRecordings" not in statements
    reads_recordings = [s for s in statements.values() if "s3:GetObject" in _listed(s["Action"])]
    assert reads_recordings == []


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("", True),
        (SIGNER_ARN, True),
        ("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:team/recordings-signer-x1Y2z3", True),
        ("post-call-push-recordings-signer", False),  # a name: the grant would need a wildcard
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:recordings-key", False),  # no -xxxxxx suffix
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:*", False),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:recordings-signer-AbC12*", False),
    ],
)
def test_the_signer_parameter_takes_only_a_complete_secret_arn(value: str, allowed: bool) -> None:
    pattern = re.compile(TEMPLATE["Parameters"]["RecordingsSignerSecretArn"]["AllowedPattern"])

    assert bool(pattern.fullmatch(value)) is allowed
