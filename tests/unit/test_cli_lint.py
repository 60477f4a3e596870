"""The CLI's lint rules, pure: braces, names, namespaces, schema, against the variable catalogue."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from push_cli.lint import brace_findings, edit_distance, lint_bot, suggest_name

EVENTS = Path(__file__).resolve().parents[2] / "events"


@pytest.fixture
def bot() -> dict[str, Any]:
    item: dict[str, Any] = json.loads((EVENTS / "sample_bot.json").read_text())
    return item


@pytest.fixture
def call() -> dict[str, Any]:
    item: dict[str, Any] = json.loads((EVENTS / "sample_call.json").read_text())
    return item


def with_mapper(bot: dict[str, Any], key_mapper: Any) -> dict[str, Any]:
    changed = copy.deepcopy(bot)
    changed["post_call_push"]["key_mapper"] = key_mapper
    return changed


def errors(report: Any) -> dict[str, str]:
    return {f.where: f.problem for f in report.findings if f.severity == "error"}


@pytest.mark.parametrize(
    ("template", "severity", "fragment"),
    [
        ("{{ crm.X }", "error", "unbalanced braces"),
        ("{crm.X}}", "error", "unbalanced braces"),
        ("{{}}", "error", "empty placeholder"),
        ("{{   }}", "error", "empty placeholder"),
        ("Dear {{crm.NAME}}, {{", "error", "unbalanced braces"),
        ("{crm.NAME}", "warning", "did you mean {{crm.NAME}}?"),
        ("{{{crm.NAME}}}", "warning", "triple braces"),
    ],
)
def test_malformed_braces_are_found(template, severity, fragment):
    found = brace_findings(template)

    assert any(s == severity and fragment in message for s, message in found), found


@pytest.mark.parametrize(
    "template",
    ["{{crm.NAME}}", "{{ crm.NAME }}", "Dear {{crm.NAME}} ({{call.X-Lead-Id}})", '{"city": "{{crm.CITY}}"}', "plain"],
)
def test_well_formed_templates_have_no_brace_findings(template):
    assert brace_findings(template) == []


def test_edit_distance_gives_up_past_the_limit():
    assert edit_distance("CUSTOMER_NAME", "CUSTOMERNAME") == 1
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("a", "abcdefgh", limit=2) == 3


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("crm.CUSTOMER_NAME", "crm.CUSTOMERNAME"),  # separator dropped
        ("crm.customername", "crm.CUSTOMERNAME"),  # case
        ("crm.X-Lead-Id", "call.X-Lead-Id"),  # right field, wrong namespace
        ("crm.LOAN_ACOUNT", "crm.LOAN_ACCOUNT"),  # one letter missing
        ("CUSTOMER_NAME", "crm.CUSTOMERNAME"),  # a bare key matches on the field
        ("crm.SOMETHING_ELSE", None),
    ],
)
def test_near_miss_names_suggest_the_known_one(key, expected):
    known = ["crm.CUSTOMERNAME", "crm.LOAN_ACCOUNT", "call.X-Lead-Id", "result.call_id", "system.call_id"]

    assert suggest_name(key, known) == expected


def test_the_sample_bot_is_clean_against_the_sample_call(bot, call):
    report = lint_bot(bot, "bot-loan-reminder-01", sample_calls=[call])

    assert report.errors == 0
    assert report.warnings == 0
    assert report.placeholders == 17


def test_a_placeholder_no_sample_call_has_is_an_error_with_a_suggestion(bot, call):
    report = lint_bot(with_mapper(bot, {"name": "{{crm.CUSTOMER_NAME}}"}), "b", sample_calls=[call])

    finding = next(f for f in report.findings if f.where == "key_mapper.name")
    assert finding.severity == "error"
    assert "resolves from nothing in the 1 sampled calls" in finding.problem
    assert finding.suggestion == "did you mean {{crm.CUSTOMERNAME}}?"


def test_a_placeholder_only_some_calls_have_is_a_warning(bot, call):
    without = copy.deepcopy(call)
    del without["crm_data"]["EMI_AMOUNT"]
    report = lint_bot(with_mapper(bot, {"emi": "{{crm.EMI_AMOUNT}}"}), "b", sample_calls=[call, without])

    finding = next(f for f in report.findings if f.where == "key_mapper.emi")
    assert finding.severity == "warning"
    assert "resolved in 1 of 2 sampled calls" in finding.problem


def test_a_namespaced_key_that_only_resolves_by_fallback_is_a_warning(bot, call):
    report = lint_bot(with_mapper(bot, {"lead": "{{crm.X-Lead-Id}}"}), "b", sample_calls=[call])

    finding = next(f for f in report.findings if f.where == "key_mapper.lead")
    assert finding.severity == "warning"
    assert "resolves from call.X-Lead-Id by the suffix fallback" in finding.problem


def test_without_samples_fixed_names_are_still_checked(bot):
    report = lint_bot(
        with_mapper(bot, {"d": "{{result.call_duration}}", "ok": "{{result.call_duration_seconds}}",
                          "t": "{{result.transfer_status}}", "c": "{{crm.ANYTHING}}"}),
        "b",
    )  # fmt: skip

    found = errors(report)
    assert set(found) == {"key_mapper.d"}
    assert "always sent as" in found["key_mapper.d"]
    sample_warning = next(f for f in report.findings if f.where == "samples")
    assert "{{crm.ANYTHING}}" in sample_warning.problem
    assert "{{result.transfer_status}}" in sample_warning.problem


def test_an_unknown_namespace_suggests_the_nearest(bot):
    report = lint_bot(with_mapper(bot, {"x": "{{crn.LOAN_ACCOUNT}}"}), "b")

    finding = next(f for f in report.findings if f.where == "key_mapper.x")
    assert "'crn' is not a namespace" in finding.problem
    assert finding.suggestion == "did you mean crm.LOAN_ACCOUNT?"


def test_an_analysis_key_outside_the_bots_analysis_keys_is_caught_without_samples(bot):
    report = lint_bot(with_mapper(bot, {"x": "{{analysis.PTP_DTE}}"}), "b")

    assert errors(report)["key_mapper.x"] == "{{analysis.PTP_DTE}} is not one of the bot's analysis_keys"


def test_nested_templates_and_header_templates_are_linted(bot):
    changed = with_mapper(bot, {"customer": {"name": "{{}}"}, "items": ["{{ x }"]})
    changed["post_call_push"]["headers"] = {"X-Api-Key": "{{crm.KEY}"}
    report = lint_bot(changed, "b")

    assert {"key_mapper.customer.name", "key_mapper.items[0]", "headers.X-Api-Key"} <= set(errors(report))


@pytest.mark.parametrize(
    ("push", "where", "fragment"),
    [
        ({"url": "https://crm.example.com", "key_mapper": "x"}, "post_call_push", "must be a map"),
        ({"url": "https://crm.example.com", "method": "PATCH"}, "post_call_push", "method"),
        ({"url": "ftp://crm.example.com"}, "post_call_push", "scheme must be http or https"),
        ({"url": "https://crm.example.com", "headers": {"X-Key": "a\nb"}}, "post_call_push", "control character"),
    ],
)
def test_invalid_configs_are_errors_in_plain_words(bot, push, where, fragment):
    changed = copy.deepcopy(bot)
    changed["post_call_push"] = push

    assert fragment in errors(lint_bot(changed, "b"))[where]


def test_config_warnings(bot):
    changed = copy.deepcopy(bot)
    changed["post_call_push"].update(url="", headers={"Authorization": "Bearer x"})
    changed["timezone"] = "Asia/Bombay-ish"
    report = lint_bot(changed, "b")

    warnings = {f.where for f in report.findings if f.severity == "warning"}
    assert {"post_call_push.url", "post_call_push.token", "timezone"} <= warnings
    assert report.errors == 0


def test_a_bot_without_a_push_config_is_an_error(bot):
    del bot["post_call_push"]

    assert "never pushed" in errors(lint_bot(bot, "b"))["post_call_push"]
