"""template.yaml: the stream filter admits exactly "results just stored", and the wiring stays consistent."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode.cfn_yaml import load

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE: dict[str, Any] = load(str(ROOT / "template.yaml"))
FUNCTION = TEMPLATE["Resources"]["PostCallPushFunction"]["Properties"]
GLOBALS = TEMPLATE["Globals"]["Function"]
ENV = {**GLOBALS["Environment"]["Variables"], **FUNCTION["Environment"]["Variables"]}
_ABSENT = object()


def matches(pattern: dict[str, Any], event: Any) -> bool:
    """Lambda/EventBridge pattern matching, for equality and ``exists`` only.

    Every key must match (AND); a list of conditions matches if any does (OR). A path
    whose parent object is missing has no value, so ``{"exists": false}`` holds there.
    """
    for key, rule in pattern.items():
        value = event.get(key, _ABSENT) if isinstance(event, dict) else _ABSENT
        if isinstance(rule, dict):
            if not matches(rule, value if isinstance(value, dict) else {}):
                return False
        elif not any(_leaf_matches(condition, value) for condition in rule):
            return False
    return True


def _leaf_matches(condition: Any, value: Any) -> bool:
    if isinstance(condition, dict):
        assert set(condition) == {"exists"}, f"matcher does not know {condition}"
        # exists applies to leaves only: an object value does not count as present.
        return (value is not _ABSENT and not isinstance(value, dict)) is condition["exists"]
    return bool(value == condition)


def stream_record(name: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())["Records"][0]
    return record


def results_added_by_modify() -> dict[str, Any]:
    """An existing call item on which results ingestion has just set results_stored_at."""
    record = copy.deepcopy(stream_record("stream_modify_writeback.json"))
    del record["dynamodb"]["OldImage"]["results_stored_at"]
    return record


def removal() -> dict[str, Any]:
    record = copy.deepcopy(stream_record("stream_modify_writeback.json"))
    record["eventName"] = "REMOVE"
    del record["dynamodb"]["NewImage"]
    return record


@pytest.mark.parametrize(
    ("record", "delivered"),
    [
        pytest.param(stream_record("stream_insert.json"), True, id="insert-with-results"),
        pytest.param(results_added_by_modify(), True, id="modify-storing-results"),
        pytest.param(stream_record("stream_modify_writeback.json"), False, id="push-write-back"),
        pytest.param(removal(), False, id="remove"),
    ],
)
def test_stream_filter_delivers_only_results_just_stored(record: dict[str, Any], delivered: bool) -> None:
    filters = FUNCTION["Events"]["CallsStream"]["Properties"]["FilterCriteria"]["Filters"]
    assert any(matches(json.loads(f["Pattern"]), record) for f in filters) is delivered


def _statements(node: Any) -> list[dict[str, Any]]:
    """Every IAM statement anywhere in the template, including both branches of an Fn::If."""
    if isinstance(node, list):
        return [s for item in node for s in _statements(item)]
    if not isinstance(node, dict):
        return []
    found = list(node["Statement"]) if isinstance(node.get("Statement"), list) else []
    return found + [s for key, value in node.items() if key != "Statement" for s in _statements(value)]


def test_iam_grants_no_wildcard_actions() -> None:
    statements = _statements(TEMPLATE["Resources"])
    assert len(statements) >= 5
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert "*" not in actions, statement
        if statement["Effect"] == "Allow":
            assert not any("*" in action for action in actions), statement


def test_claim_lease_outlives_the_invocation() -> None:
    timeout = FUNCTION.get("Timeout", GLOBALS["Timeout"])
    assert int(ENV["CLAIM_LEASE_SECONDS"]) == 2 * timeout


def test_failure_rate_alarm_reads_the_metrics_the_handler_emits() -> None:
    alarm = TEMPLATE["Resources"]["PushFailureRateAlarm"]["Properties"]
    metrics = [m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m]
    assert {m["MetricName"] for m in metrics} == {f"Push_{s}" for s in ("ok", "rejected", "skipped", "failed")}
    for metric in metrics:
        assert metric["Namespace"] == ENV["POWERTOOLS_METRICS_NAMESPACE"]
        assert metric["Dimensions"] == [{"Name": "service", "Value": ENV["POWERTOOLS_SERVICE_NAME"]}]
