"""Reading a 2xx body with response.ok_when (contract §14)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from crm_push.errors import ConfigError
from crm_push.response_reading import OkWhen, json_equal, parse_ok_when, reads_as_ok

ZOHO_OK = json.dumps({"data": [{"code": "SUCCESS", "status": "success", "details": {"id": "1"}}]})
ZOHO_REFUSED = json.dumps({"data": [{"code": "MANDATORY_NOT_FOUND", "status": "error"}]})
STATUS = {"path": "data.0.status", "equals": "success"}


def test_a_matching_answer_reads_as_ok() -> None:
    assert reads_as_ok(ZOHO_OK, STATUS)


def test_another_value_is_not_ok() -> None:
    assert not reads_as_ok(ZOHO_REFUSED, STATUS)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        "<html>ok</html>",
        '{"data": [{"status": "success"}',  # cut short
        "NaN",
        '{"data": []}',  # index out of range
        '{"data": {"status": "success"}}',  # a map where a list was expected: "0" is not a key here
        '{"data": [{"code": "SUCCESS"}]}',  # the key is missing
        '{"data": "success"}',
        "[" * 100_000,  # deeper than the parser goes
    ],
)
def test_unreadable_answers_and_missing_paths_are_not_ok(body: str) -> None:
    assert not reads_as_ok(body, STATUS)


def test_a_number_step_keys_a_map_too() -> None:
    assert reads_as_ok('{"data": {"0": {"status": "success"}}}', STATUS)


def test_a_null_value_is_found_but_a_missing_one_is_not() -> None:
    rule = {"path": "error", "equals": None}
    assert reads_as_ok('{"error": null}', rule)
    assert not reads_as_ok("{}", rule)


@pytest.mark.parametrize(
    ("equals", "body", "ok"),
    [
        (1, '{"n": 1.0}', True),
        (Decimal("1"), '{"n": 1}', True),  # a bot config from DynamoDB holds Decimals
        (Decimal("8.50"), '{"n": 8.5}', True),
        (0.1, '{"n": 0.1}', True),
        (1, '{"n": true}', False),  # true is not 1 in JSON
        (True, '{"n": 1}', False),
        (False, '{"n": 0}', False),
        (True, '{"n": true}', True),
        ("1", '{"n": 1}', False),
        ({"a": [1, "x"]}, '{"n": {"a": [1.0, "x"]}}', True),
        ({"a": 1}, '{"n": {"a": 1, "b": 2}}', False),
        ([1, 2], '{"n": [1, 2, 3]}', False),
        (None, '{"n": 0}', False),
    ],
)
def test_values_compare_as_json(equals: Any, body: str, ok: bool) -> None:
    assert reads_as_ok(body, {"path": "n", "equals": equals}) is ok


def test_json_equal_is_symmetric_on_mixed_types() -> None:
    assert json_equal(Decimal("2"), 2)
    assert json_equal(2, Decimal("2.0"))
    assert not json_equal(True, Decimal("1"))
    assert not json_equal(Decimal("1"), True)
    assert not json_equal("a", None)
    assert not json_equal(None, "a")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("data.0.status", "must be a map"),
        ({"path": "data.0.status"}, "needs equals"),
        ({"equals": "x"}, "must be a dotted path"),
        ({"path": "", "equals": "x"}, "must be a dotted path"),
        ({"path": 3, "equals": "x"}, "must be a dotted path"),
        ({"path": "data..status", "equals": "x"}, "empty step"),
        ({"path": ".data", "equals": "x"}, "empty step"),
        ({"path": "a." * 40 + "b", "equals": "x"}, "more than 32 steps"),
        ({"path": "a" * 300, "equals": "x"}, "longer than 256"),
        ({"path": "a", "equals": float("nan")}, "not a JSON value"),
        ({"path": "a", "equals": Decimal("Infinity")}, "not a JSON value"),
        ({"path": "a", "equals": {1, 2}}, "not a JSON value"),
        ({"path": "a", "equals": 1, "eq": 2}, "unknown key 'eq'"),
    ],
)
def test_invalid_rules_are_config_errors(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_ok_when(value)


def test_a_parsed_rule_is_reused_and_described_without_the_answer() -> None:
    rule = parse_ok_when({"path": "result.ok", "equals": Decimal("1.50")})
    assert isinstance(rule, OkWhen)
    assert parse_ok_when(rule) is rule
    assert rule.steps == ("result", "ok")
    assert rule.describe() == "result.ok == 1.5"
    assert reads_as_ok('{"result": {"ok": 1.5}}', rule)
