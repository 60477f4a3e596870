"""OAuth in operation (contract §13): the AuthFailed alarm, status's words for auth failures, and a push
without OAuth that loads none of the OAuth machinery (cold start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm_push.config import load_bot_config
from push_cli.auth import refusal_in_words
from push_cli.status import build_status
from tests.unit.test_template import TEMPLATE, _metric_alarm

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


# --- the alarm ---------------------------------------------------------------------------------------


def test_auth_failed_alarms_on_the_first_final_refusal_and_points_at_the_runbook() -> None:
    alarm = _metric_alarm("AuthFailedAlarm")
    assert (alarm["MetricName"], alarm["Statistic"], alarm["Period"]) == ("AuthFailed", "Sum", 300)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert "docs/runbook.md" in alarm["AlarmDescription"]
    assert "The CRM's credentials were revoked" in alarm["AlarmDescription"]
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    assert "## 8. The CRM's credentials were revoked" in runbook


def test_the_dashboard_shows_auth_failed() -> None:
    body = TEMPLATE["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert '"AuthFailed", "service", "post-call-push"' in body


# --- status ------------------------------------------------------------------------------------------

BOT = load_bot_config(
    {
        "bot_id": "bot-1",
        "tenant_id": "acme",
        "post_call_push": {
            "url": "https://acme.example.test/leads",
            "auth": {
                "type": "oauth2_refresh_token",
                "token_url": "https://accounts.zoho.test/oauth/v2/token",
                "client_id": {"secret": "post-call-push/acme/zoho", "key": "client_id"},
                "client_secret": {"secret": "post-call-push/acme/zoho", "key": "client_secret"},
                "refresh_token": {"secret": "post-call-push/acme/zoho", "key": "refresh_token"},
            },
        },
    },
    "bot-1",
)


def auth_failure(error: str, **fields: Any) -> dict[str, Any]:
    result = {
        "status": "failed",
        "http_status": None,
        "response_body": "",
        "error": error,
        "error_kind": "auth",
        "url": "https://acme.example.test/leads",
        "method": "POST",
        "pushed_at": "2026-11-25T09:32:45.000Z",
        "duration_ms": 0,
        "attempts": 1,
        "next_attempt_at": None,
        **fields,
    }
    return {
        "call_id": "call-1",
        "bot_id": "bot-1",
        "results_stored_at": "2026-11-25T09:32:41.512Z",
        "post_call_push_result": result,
        "integration_log": [{"type": "post_call_push", **result}],
    }


def test_a_final_refusal_names_the_auth_config_by_reference_and_the_code() -> None:
    call = auth_failure("token endpoint https://accounts.zoho.test answered 400 invalid_grant")

    report = build_status(call, BOT, bot_exists=True, now=NOW, delivery={})

    assert report.runbook.startswith("docs/runbook.md#8-the-crms-credentials-were-revoked")
    assert "grant oauth2_refresh_token" in report.diagnosis
    assert "token endpoint https://accounts.zoho.test" in report.diagnosis
    assert "client_id secret post-call-push/acme/zoho key client_id" in report.diagnosis
    assert "(invalid_grant): the refresh token or assertion was refused" in report.diagnosis
    assert report.next_commands[0] == "post-call-push auth --bot-id bot-1 --test"
    assert report.next_commands[-1].startswith(
        "post-call-push replay --bot-id bot-1 --status failed --since 2026-11-25"
    )


def test_a_refusal_of_a_bot_whose_auth_was_removed_since_still_points_at_check_8() -> None:
    plain = load_bot_config({"bot_id": "bot-1", "post_call_push": {"url": "https://acme.example.test/x"}}, "bot-1")
    call = auth_failure("token endpoint https://accounts.zoho.test answered 401 invalid_client")

    report = build_status(call, plain, bot_exists=True, now=NOW, delivery={})

    assert report.runbook.startswith("docs/runbook.md#8-")
    assert "the bot has no auth config now" in report.diagnosis


def test_a_token_endpoint_that_did_not_answer_is_the_ladders_business_not_check_8() -> None:
    error = "token endpoint https://accounts.zoho.test answered 503"
    call = auth_failure(error, next_attempt_at="2026-11-25T12:05:00.000Z")
    delivery = {"attempts": 1, "st": "scheduled", "due": int(NOW.timestamp()) + 300, "written": True, "log": []}

    report = build_status(call, BOT, bot_exists=True, now=NOW, delivery=delivery)

    assert report.runbook.startswith("docs/runbook.md#6-a-crm-is-down")
    assert f"no OAuth access token ({error})" in report.diagnosis


@pytest.mark.parametrize(
    ("error", "code", "says"),
    [
        ("token endpoint https://h answered 400 invalid_grant", "invalid_grant", "revoked"),
        ("token endpoint https://h answered 401 invalid_client", "invalid_client", "secret is wrong"),
        ("token endpoint https://h answered 400 unauthorized_client", "unauthorized_client", "may not use"),
        ("token endpoint https://h answered 403", None, "HTTP 403 without an error code"),
        ("the token endpoint rotated the refresh_token but it could not be written to x", "refresh_token_not_kept",
         "could not be stored"),
        ("token endpoint https://h answered 400 weird_code", "weird_code", "documentation"),
    ],
)  # fmt: skip
def test_the_endpoints_code_in_words(error: str, code: str | None, says: str) -> None:
    found, meaning = refusal_in_words(error)
    assert found == code
    assert says in meaning


# --- cold start --------------------------------------------------------------------------------------

_FORBIDDEN = ("crm_push.oauth.provider", "crm_push.oauth.grants", "crm_push.oauth.cache", "crm_push.oauth.rotation")
_FORBIDDEN_PACKAGES = ("oauthlib", "jwt", "cryptography", "authlib")
_CHILD = """
import json, sys
sys.path[:0] = [{layer!r}, {function!r}]
import app
deps, _ = app._runtime()
from crm_push.config import load_bot_config
from crm_push.request import prepare_push
bot = load_bot_config(json.load(open({bot!r})), "bot-1")
prepare_push(json.load(open({call!r})), bot, deps)  # everything a push does short of sending
def loaded():
    return sorted(m for m in sys.modules if m in {forbidden!r} or m.split(".")[0] in {packages!r})
before = loaded()
import crm_push.oauth.provider  # the control: the listing sees the token source once it is imported
print(json.dumps({{"without_oauth": before, "control": loaded()}}))
"""


def test_a_push_without_oauth_loads_no_oauth_machinery() -> None:
    child = _CHILD.format(
        layer=str(ROOT / "layers" / "common"),
        function=str(ROOT / "functions" / "post_call_push"),
        bot=str(ROOT / "events" / "sample_bot.json"),
        call=str(ROOT / "events" / "sample_call.json"),
        forbidden=_FORBIDDEN,
        packages=_FORBIDDEN_PACKAGES,
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "cold",
        "AWS_SECRET_ACCESS_KEY": "cold",
        "AWS_EC2_METADATA_DISABLED": "true",
        "CALLS_TABLE": "calls",
        "BOTS_TABLE": "bots",
        "PUSH_STATE_TABLE": "state",
        "PUBLIC_BASE_URL": "https://api.example.com/",
        "PUSH_KMS_KEY_ID": "alias/post-call-push",  # configured, yet never touched without an OAuth bot
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listing = json.loads(done.stdout.strip().splitlines()[-1])
    assert listing["without_oauth"] == []
    assert "crm_push.oauth.provider" in listing["control"]
