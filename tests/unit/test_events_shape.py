"""The sample events in events/ have the shapes Lambda delivers, so `sam local invoke -e` tests what AWS runs.

`sam local invoke` passes an event file through untouched: nothing there
checks it. These tests do, against two references that do not come from this
project: Powertools' parser models (AWS's documented record shapes) and the
DynamoDB stream event the SAM CLI itself generates (`sam local generate-event
dynamodb update`), captured in tests/unit/fixtures/. When the SAM CLI is
installed (`make test` installs it), the capture is compared with what this
SAM version generates now, so the reference cannot go stale unnoticed. To
refresh it after a SAM upgrade:

    .sam-venv/bin/sam local generate-event dynamodb update \
        > tests/unit/fixtures/sam_generate_event_dynamodb_update.json
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel, EventBridgeModel

from scripts.sam_local.local_template import load_template

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
SAM_CAPTURE = Path(__file__).parent / "fixtures" / "sam_generate_event_dynamodb_update.json"
SAM_PYTHON = ROOT / ".sam-venv" / "bin" / "python"
STREAM_ARN = re.compile(r"^arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:\d{12}:table/[A-Za-z0-9_.-]{3,255}/stream/\S+$")
STREAM_EVENTS = {"stream_insert.json": "INSERT", "stream_modify_writeback.json": "MODIFY"}

# What `sam local generate-event dynamodb update` runs, minus its weekly version check against
# PyPI: the same event library with the command's default option values.
_GENERATE_WITH_SAM = """
from samcli.lib.generated_sample_events.events import Events
events = Events()
tags = events.event_mapping["dynamodb"]["update"]["tags"]
print(events.generate_event("dynamodb", "update", {k.replace("-", "_"): v["default"] for k, v in tags.items()}))
"""


def _load(path: Path) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(path.read_text())
    return event


def _sam_record(event_name: str) -> dict[str, Any]:
    records: list[dict[str, Any]] = _load(SAM_CAPTURE)["Records"]
    return next(record for record in records if record["eventName"] == event_name)


@pytest.mark.parametrize(("file_name", "event_name"), STREAM_EVENTS.items())
def test_stream_event_is_a_dynamodb_stream_batch(file_name: str, event_name: str) -> None:
    event = _load(EVENTS / file_name)

    parsed = DynamoDBStreamModel.model_validate(event)

    [record] = parsed.Records
    assert record.eventName == event_name
    assert STREAM_ARN.match(record.eventSourceARN), record.eventSourceARN
    # Lambda sends epoch seconds; the handler and the filter rely on a number, not an ISO string.
    assert isinstance(event["Records"][0]["dynamodb"]["ApproximateCreationDateTime"], int | float)
    assert isinstance(record.dynamodb.ApproximateCreationDateTime, datetime)
    # template.yaml's stream view: the filter compares the old and new images.
    assert record.dynamodb.StreamViewType == "NEW_AND_OLD_IMAGES"
    assert isinstance(record.dynamodb.NewImage, dict)
    assert record.dynamodb.Keys == {"call_id": record.dynamodb.NewImage["call_id"]}
    if event_name == "MODIFY":
        assert isinstance(record.dynamodb.OldImage, dict)
        assert record.dynamodb.OldImage["call_id"] == record.dynamodb.NewImage["call_id"]
    else:
        assert record.dynamodb.OldImage is None


@pytest.mark.parametrize(("file_name", "event_name"), STREAM_EVENTS.items())
def test_stream_record_has_the_fields_of_the_sam_cli_record(file_name: str, event_name: str) -> None:
    ours = _load(EVENTS / file_name)["Records"][0]
    sams = _sam_record(event_name)

    assert DynamoDBStreamModel.model_validate({"Records": [sams]})  # the reference itself is a valid record
    assert sorted(ours) == sorted(sams)
    assert sorted(ours["dynamodb"]) == sorted(sams["dynamodb"])
    for key, value in ours.items():
        assert type(value) is type(sams[key]), key
    for key in ("ApproximateCreationDateTime", "SequenceNumber", "SizeBytes", "StreamViewType"):
        assert type(ours["dynamodb"][key]) is type(sams["dynamodb"][key]), key


def test_results_stored_event_is_an_eventbridge_event_the_rule_routes_to_the_function() -> None:
    event = _load(EVENTS / "eventbridge_results_stored.json")

    parsed = EventBridgeModel.model_validate(event)

    rule = load_template(ROOT / "template.yaml")["Resources"]["PostCallPushFunction"]["Properties"]["Events"]
    pattern = rule["ResultsStored"]["Properties"]["Pattern"]
    assert parsed.detail_type in pattern["detail-type"]
    detail = event["detail"]
    assert set(detail) == {"call_id", "bot_id"}  # contract section 3
    assert all(isinstance(value, str) and value for value in detail.values())


@pytest.mark.skipif(not SAM_PYTHON.exists(), reason="the SAM CLI is not installed (make test installs it)")
def test_sam_capture_is_what_this_sam_cli_generates() -> None:
    generated = subprocess.run(
        [str(SAM_PYTHON), "-c", _GENERATE_WITH_SAM], capture_output=True, text=True, check=True, timeout=120
    ).stdout

    assert json.loads(generated) == _load(SAM_CAPTURE), (
        "the SAM CLI generates a different DynamoDB stream event now: refresh the capture (see the module docstring)"
    )
