"""The CLI's lint rules, pure: braces, names, namespaces, schema, against the variable catalogue."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from crm_push.config import SecretRef
from crm_push.secrets import SecretUnavailable
from push_cli.lint import brace_findings, edit_distance, lint_bot, suggest_name

EVENTS = Path(__file__).resolve().parents[2] / "events"


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
        ("{crm.NAME}", "warning", "{{crm.NAME}}"),  # the spelling it probably meant
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
    # The sample keeps its token in the bot item, as bots did before secrets by reference: only that is flagged.
    assert [(f.severity, f.where) for f in report.findings] == [("warning", "post_call_push.token")]
    # Every placeholder of the config was looked at, counted here by a plain scan of its text.
    assert report.placeholders == len(re.findall(r"\{\{[^{}]*\}\}", json.dumps(bot["post_call_push"])))


def test_a_placeholder_no_sample_call_has_is_an_error_with_a_suggestion(bot, call):
    report = lint_bot(with_mapper(bot, {"name": "{{crm.CUSTOMER_NAME}}"}), "b", sample_calls=[call])

    finding = next(f for f in report.findings if f.where == "key_mapper.name")
    assert finding.severity == "error"
    assert "1 sampled" in finding.problem
    assert "{{crm.CUSTOMERNAME}}" in finding.suggestion


def test_a_placeholder_only_some_calls_have_is_a_warning(bot, call):
    without = copy.deepcopy(call)
    del without["crm_data"]["EMI_AMOUNT"]
    report = lint_bot(with_mapper(bot, {"emi": "{{crm.EMI_AMOUNT}}"}), "b", sample_calls=[call, without])

    finding = next(f for f in report.findings if f.where == "key_mapper.emi")
    assert finding.severity == "warning"
    assert "1 of 2" in finding.problem


def test_a_namespaced_key_that_only_resolves_by_fallback_is_a_warning(bot, call):
    report = lint_bot(with_mapper(bot, {"lead": "{{crm.X-Lead-Id}}"}), "b", sample_calls=[call])

    finding = next(f for f in report.findings if f.where == "key_mapper.lead")
    assert finding.severity == "warning"
    assert "call.X-Lead-Id" in finding.problem
    assert "fallback" in finding.problem


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
    assert finding.severity == "error"
    assert "'crn'" in finding.problem
    assert "crm.LOAN_ACCOUNT" in finding.suggestion


def test_an_analysis_key_outside_the_bots_analysis_keys_is_caught_without_samples(bot):
    report = lint_bot(with_mapper(bot, {"x": "{{analysis.PTP_DTE}}"}), "b")

    problem = errors(report)["key_mapper.x"]
    assert "{{analysis.PTP_DTE}}" in problem
    assert "analysis_keys" in problem


def test_nested_templates_and_header_templates_are_linted(bot):
    changed = with_mapper(bot, {"customer": {"name": "{{}}"}, "items": ["{{ x }"]})
    changed["post_call_push"]["headers"] = {"X-Api-Key": "{{crm.KEY}"}
    report = lint_bot(changed, "b")

    assert {"key_mapper.customer.name", "key_mapper.items[0]", "headers.X-Api-Key"} <= set(errors(report))


@pytest.mark.parametrize(
    ("push", "where", "fragment"),
    [
        ({"url": "https://crm.example.com", "key_mapper": "x"}, "post_call_push", "must be a map"),
        ({"url": "https://crm.example.com", "method": "DELETE"}, "post_call_push", "method"),
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


# --- credentials ----------------------------------------------------------------------------------

SIGNING = "whsec_" + base64.b64encode(b"lint-signing-key-0123456789").decode()


def warnings_of(report: Any) -> dict[str, str]:
    return {f.where: f.problem for f in report.findings if f.severity == "warning"}


def test_plaintext_credentials_are_warned_about_and_the_fix_named(bot):
    bot["post_call_push"].update(
        url="https://crm-user:pw-4242@crm.example.com/in?api_key=qs-5151&source=bot",
        headers={
            "Authorization": "Bearer sk_live_abc",
            "X-Api-Key": "ak-123",
            "X-Partner-Token": "pt-456",
            "X-Source": "voicebot",
            "X-Session-Key": "{{crm.SESSION_KEY}}",
        },
        signing_secret=[SIGNING],
    )

    report = lint_bot(bot, "bot-1")

    found = warnings_of(report)
    assert "plain text in the bot config" in found["post_call_push.token"]
    assert "header Authorization is stored in plain text" in found["post_call_push.headers.Authorization"]
    assert "post_call_push.headers.X-Api-Key" in found
    assert "post_call_push.headers.X-Partner-Token" in found
    assert "post_call_push.headers.X-Source" not in found  # not a credential's name
    assert "post_call_push.headers.X-Session-Key" not in found  # filled from call data, nothing stored
    assert "the signing secret is stored in plain text" in found["post_call_push.signing_secret"]
    url_warnings = [f.problem for f in report.findings if f.where == "post_call_push.url"]
    assert any("carries a password" in w for w in url_warnings)
    assert any("api_key look like credentials" in w for w in url_warnings)
    migrate = {f.suggestion for f in report.findings if f.where.startswith("post_call_push.headers")}
    assert migrate == {"post-call-push secrets migrate --bot-id bot-1"}
    shown = json.dumps(report.as_json())
    for value in ("sk_live_abc", "ak-123", "pt-456", "pw-4242", "qs-5151", SIGNING):
        assert value not in shown


def test_a_malformed_signing_secret_is_an_error_that_never_quotes_it(bot):
    bot["post_call_push"]["signing_secret"] = "whsec_c2hvcnQtc2VjcmV0"  # 12 bytes: too short

    report = lint_bot(bot, "b")

    assert "signing_secret decodes to 12 bytes" in errors(report)["post_call_push"]
    assert "c2hvcnQtc2VjcmV0" not in json.dumps(report.as_json())


class StoreOf:
    """The resolver port over a dict: which reference holds what, or why it cannot be read."""

    def __init__(self, values: dict[SecretRef, str | SecretUnavailable]) -> None:
        self.values = values
        self.asked: list[SecretRef] = []

    def resolve(self, ref: SecretRef) -> str:
        self.asked.append(ref)
        value = self.values.get(ref, SecretUnavailable(f"{ref.describe()} does not exist (ParameterNotFound)", False))
        if isinstance(value, SecretUnavailable):
            raise value
        return value


def referencing(bot: dict[str, Any]) -> dict[str, Any]:
    del bot["post_call_push"]["token"]
    bot["post_call_push"]["headers"] = {
        "Authorization": {"secret": "post-call-push/b", "key": "token"},
        "X-Api-Key": {"parameter": "/crm/b/key"},
    }
    bot["post_call_push"]["signing_secret"] = {"secret": "post-call-push/b", "key": "signing_secret"}
    return bot


def test_references_that_resolve_pass_and_plaintext_warnings_go(bot, call):
    store = StoreOf(
        {
            SecretRef(secret="post-call-push/b", key="token"): "Bearer sk_live_resolved",
            SecretRef(parameter="/crm/b/key"): "ak-resolved",
            SecretRef(secret="post-call-push/b", key="signing_secret"): SIGNING,
        }
    )

    report = lint_bot(referencing(bot), "b", sample_calls=[call], secret_resolver=lambda: store)

    assert report.findings == []
    assert len(store.asked) == 3


def test_each_reference_that_fails_is_an_error_naming_it_and_why(bot):
    store = StoreOf(
        {
            SecretRef(secret="post-call-push/b", key="token"): "Bearer sk_live_resolved\n",
            SecretRef(secret="post-call-push/b", key="signing_secret"): SecretUnavailable(
                "secret post-call-push/b key signing_secret: the store is throttling or unavailable (Throttling)", True
            ),
        }
    )

    report = lint_bot(referencing(bot), "b", secret_resolver=lambda: store)

    found = {f.where: f for f in report.findings if f.severity == "error"}
    assert "control character" in found["post_call_push.headers.Authorization"].problem
    assert "parameter /crm/b/key does not exist" in found["post_call_push.headers.X-Api-Key"].problem
    assert "create it" in found["post_call_push.headers.X-Api-Key"].suggestion
    assert "run the lint again" in found["post_call_push.signing_secret"].suggestion
    assert "sk_live_resolved" not in json.dumps(report.as_json())


def test_without_a_resolver_references_are_reported_unchecked_and_none_is_read(bot):
    report = lint_bot(referencing(bot), "b")

    assert "3 secret reference(s) not checked" in warnings_of(report)["post_call_push"]
    assert report.errors == 0
