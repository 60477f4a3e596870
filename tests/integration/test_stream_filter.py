"""template.yaml's stream FilterCriteria evaluated against real stream records from DynamoDB Local.

Lambda drops a record no filter matches before the function is invoked, so
the filters decide which records cost an invocation; the handler applies the
same rule again. The records here are what DynamoDB writes (an INSERT has no
OldImage at all, a REMOVE no NewImage), not what a test author expects.

The evaluator covers the subset of Lambda's event-filter syntax (EventBridge
patterns) the template may use: nested keys, exact string values and
``exists``; several conditions on one leaf are ORed, keys ANDed, filters ORed.
Anything else raises, so a new construct in the template needs a matching
rule here first. AWS documents ``{"exists": false}`` for an attribute missing
from an image, not for an image missing from the record (an INSERT has no
OldImage): the evaluator refuses to decide that case instead of guessing, so
the template cannot come to rely on it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode.cfn_yaml import load

from tests.conftest import Stack
from tests.streams import TableStream

ROOT = Path(__file__).resolve().parents[2]
_MISSING = object()
# Depth of an image's attributes (record -> dynamodb -> NewImage/OldImage -> attribute): a key missing
# there is an attribute the image lacks; a key missing above it is a whole section the record lacks.
_ATTRIBUTE_DEPTH = 2

Decision = bool | None  # None: AWS does not document the outcome


class UndocumentedMatch(Exception):
    """The outcome would depend on matching behaviour AWS does not document."""


def _leaf(condition: Any, value: Any, missing_from: int | None) -> Decision:
    if isinstance(condition, dict):
        if set(condition) != {"exists"} or not isinstance(condition["exists"], bool):
            raise NotImplementedError(f"filter condition not covered by this evaluator: {condition}")
        # exists applies to leaves: a nested object is not a value.
        present = value is not _MISSING and not isinstance(value, dict)
        if not present and not condition["exists"] and missing_from is not None and missing_from < _ATTRIBUTE_DEPTH:
            return None  # e.g. an INSERT's OldImage: not "an attribute the image lacks"
        return present is condition["exists"]
    if isinstance(condition, str):
        if isinstance(value, list):  # an array in the record matches when any element does
            return condition in value
        return bool(value == condition)
    raise NotImplementedError(f"filter condition not covered by this evaluator: {condition!r}")


def _any(decisions: list[Decision]) -> Decision:
    return True if True in decisions else (None if None in decisions else False)


def _pattern(pattern: Mapping[str, Any], record: Any, depth: int, missing_from: int | None) -> Decision:
    decisions: list[Decision] = []
    for key, rule in pattern.items():
        value = record.get(key, _MISSING) if isinstance(record, dict) else _MISSING
        if isinstance(rule, dict):
            missing = value is _MISSING or not isinstance(value, dict)
            first_missing = depth if missing and missing_from is None else missing_from
            decisions.append(_pattern(rule, {} if missing else value, depth + 1, first_missing))
        elif isinstance(rule, list) and rule:
            first_missing = depth if value is _MISSING and missing_from is None else missing_from
            decisions.append(_any([_leaf(condition, value, first_missing) for condition in rule]))
        else:
            raise NotImplementedError(f"filter rule for {key!r} must be an object or a non-empty list: {rule!r}")
    # Keys are ANDed: one definite mismatch decides, whatever else is undocumented.
    return False if False in decisions else (None if None in decisions else True)


def pattern_matches(pattern: Mapping[str, Any], record: dict[str, Any]) -> bool:
    """Whether one filter pattern matches ``record``; UndocumentedMatch when AWS does not say."""
    decision = _pattern(pattern, record, 0, None)
    if decision is None:
        raise UndocumentedMatch(f"exists:false under a section the record lacks decides {pattern}")
    return decision


def admitted(filters: Sequence[Mapping[str, Any]], record: dict[str, Any]) -> bool:
    """Lambda invokes the function with a record when any filter matches it (OR)."""
    decision = _any([_pattern(pattern, record, 0, None) for pattern in filters])
    if decision is None:
        raise UndocumentedMatch(f"no filter matches {record.get('eventName')} for sure, and one is undocumented")
    return decision


def template_filters() -> list[dict[str, Any]]:
    template = load(str(ROOT / "template.yaml"))
    stream_event = template["Resources"]["PostCallPushFunction"]["Properties"]["Events"]["CallsStream"]
    return [json.loads(f["Pattern"]) for f in stream_event["Properties"]["FilterCriteria"]["Filters"]]


FILTERS = template_filters()


# --- the evaluator itself: it must be able to say no --------------------------------------------


def test_evaluator_matches_keys_values_and_exists() -> None:
    pattern = {"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"a": {"S": [{"exists": True}]}}}}
    assert pattern_matches(pattern, {"eventName": "MODIFY", "dynamodb": {"NewImage": {"a": {"S": "x"}}}})
    assert not pattern_matches(pattern, {"eventName": "REMOVE", "dynamodb": {"NewImage": {"a": {"S": "x"}}}})
    assert not pattern_matches(pattern, {"eventName": "INSERT", "dynamodb": {"NewImage": {"b": {"S": "x"}}}})
    assert not pattern_matches({"dynamodb": {"NewImage": [{"exists": True}]}}, {"dynamodb": {"NewImage": {}}})
    absent = {"dynamodb": {"OldImage": {"a": {"S": [{"exists": False}]}}}}
    assert pattern_matches(absent, {"dynamodb": {"OldImage": {"b": {"S": "x"}}}})
    assert not pattern_matches(absent, {"dynamodb": {"OldImage": {"a": {"S": "x"}}}})


def test_evaluator_refuses_exists_false_under_a_missing_object() -> None:
    # The template's former single filter: it relied on this for every INSERT.
    former = {
        "dynamodb": {
            "NewImage": {"results_stored_at": {"S": [{"exists": True}]}},
            "OldImage": {"results_stored_at": {"S": [{"exists": False}]}},
        }
    }
    insert = {"eventName": "INSERT", "dynamodb": {"NewImage": {"results_stored_at": {"S": "2026-11-25"}}}}
    with pytest.raises(UndocumentedMatch):
        pattern_matches(former, insert)


def test_evaluator_refuses_constructs_it_does_not_know() -> None:
    with pytest.raises(NotImplementedError):
        pattern_matches({"eventName": [{"prefix": "INS"}]}, {"eventName": "INSERT"})


# --- the template's filters on real records ------------------------------------------------------


Seed = Callable[[Stack, dict[str, Any]], None]


def insert_with_results(stack: Stack, call: dict[str, Any]) -> None:
    stack.put_call(call)


def insert_without_results(stack: Stack, call: dict[str, Any]) -> None:
    call.pop("results_stored_at")
    stack.put_call(call)


def _set(stack: Stack, call_id: str, name: str, value: str) -> None:
    stack.dynamodb.update_item(
        TableName=stack.calls_table,
        Key={"call_id": {"S": call_id}},
        UpdateExpression="SET #name = :value",
        ExpressionAttributeNames={"#name": name},
        ExpressionAttributeValues={":value": {"S": value}},
    )


def modify_storing_results(stack: Stack, call: dict[str, Any]) -> None:
    at = call.pop("results_stored_at")
    stack.put_call(call)
    _set(stack, call["call_id"], "results_stored_at", at)


def modify_after_results(stack: Stack, call: dict[str, Any]) -> None:
    """Another writer touching a call whose results were stored earlier (e.g. an SMS log)."""
    stack.put_call(call)
    _set(stack, call["call_id"], "sms_status", "sent")


def remove(stack: Stack, call: dict[str, Any]) -> None:
    stack.put_call(call)
    stack.dynamodb.delete_item(TableName=stack.calls_table, Key={"call_id": {"S": call["call_id"]}})


@pytest.mark.parametrize(
    ("seed", "last_record", "delivered"),
    [
        pytest.param(insert_with_results, "INSERT", True, id="insert-with-results"),
        pytest.param(insert_without_results, "INSERT", False, id="insert-without-results"),
        pytest.param(modify_storing_results, "MODIFY", True, id="modify-storing-results"),
        pytest.param(modify_after_results, "MODIFY", False, id="modify-after-results"),
        pytest.param(remove, "REMOVE", False, id="remove"),
    ],
)
def test_template_filter_on_real_records(
    stack: Stack, dynamodb_streams: Any, sample_call: dict[str, Any], seed: Seed, last_record: str, delivered: bool
) -> None:
    stream = TableStream(stack.dynamodb, dynamodb_streams, stack.calls_table)
    seed(stack, sample_call)
    record = stream.read_new()[-1]
    assert record["eventName"] == last_record
    assert admitted(FILTERS, record) is delivered


def test_template_filter_drops_the_push_s_own_write_backs(
    stack: Stack, handler: Any, dynamodb_streams: Any, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    # Given a call the real handler has pushed from its real INSERT record
    stream = TableStream(stack.dynamodb, dynamodb_streams, stack.calls_table)
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    insert = stream.read_new()
    assert [admitted(FILTERS, record) for record in insert] == [True]
    assert handler({"Records": insert}) == {"batchItemFailures": []}
    assert len(stack.crm.requests) == 1

    # When the push's own writes come back on the stream
    write_backs = stream.read_new()

    # Then the filters drop every one of them: they never cost an invocation
    assert write_backs, "the push wrote nothing back"
    assert [admitted(FILTERS, record) for record in write_backs] == [False] * len(write_backs)
