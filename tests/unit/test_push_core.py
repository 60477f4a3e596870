"""The core push (eligibility -> config -> render -> send -> record) against in-memory ports."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from crm_push.config import load_bot_config
from crm_push.push import Replay, SendOutcome, push_call, redact_url
from tests.fakes import InMemoryCalls, ScriptedCrm, StaticBots, make_deps

EVENTS = Path(__file__).resolve().parents[2] / "events"
TOKEN = "Bearer sk_live_sample_token_not_real"


def run(call: dict[str, Any], bot: dict[str, Any] | None, crm: ScriptedCrm | None = None, **kw: Any):
    calls = InMemoryCalls(call)
    bots = StaticBots(*([bot] if bot else []))
    crm = crm or ScriptedCrm()
    outcome = push_call(call["call_id"], make_deps(calls, bots, crm), **kw)
    return outcome, calls.items[call["call_id"]], crm


def test_a_flagged_call_is_left_untouched(call, bot):
    call["skip_post_push"] = True
    outcome, stored, crm = run(call, bot)
    assert outcome.outcome == "not_eligible"
    assert crm.requests == []
    assert "post_call_push_result" not in stored


def test_a_bot_without_push_config_is_left_untouched(call, bot):
    del bot["post_call_push"]
    outcome, stored, crm = run(call, bot)
    assert outcome.outcome == "no_config"
    assert crm.requests == []
    assert "post_call_push_result" not in stored


def test_an_unknown_bot_is_left_untouched(call):
    outcome, stored, _crm = run(call, None)
    assert outcome.outcome == "no_config"
    assert "post_call_push_result" not in stored


def test_no_url_records_skipped_and_sends_nothing(call, bot):
    bot["post_call_push"]["url"] = ""
    _outcome, stored, crm = run(call, bot)
    assert crm.requests == []
    assert stored["post_call_push_result"]["status"] == "skipped"
    assert "no url" in stored["post_call_push_result"]["error"]
    assert stored["events"][-1]["status"] == "skipped"


@pytest.mark.parametrize(
    ("change", "expected_error"),
    [
        ({"method": "DELETE"}, "method"),
        ({"url": "ftp://crm.example.com/in"}, "scheme"),
        ({"key_mapper": ["not", "a", "map"]}, "key_mapper"),
        ({"headers": {"X-Key": "a\r\nInjected: yes"}}, "control character"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "set by the push itself"),
        ({"headers": {"Bad Name": "x"}}, "not allowed in a header name"),
    ],
)
def test_an_invalid_config_records_failed_with_the_reason(call, bot, change, expected_error):
    bot["post_call_push"].update(change)
    _outcome, stored, crm = run(call, bot)
    result = stored["post_call_push_result"]
    assert crm.requests == []
    assert result["status"] == "failed"
    assert expected_error in result["error"]
    assert bot["bot_id"] in result["error"]


@pytest.mark.parametrize(
    ("http_status", "status"), [(200, "ok"), (201, "ok"), (204, "ok"), (400, "rejected"), (503, "rejected")]
)
def test_the_crm_answer_decides_the_status(call, bot, http_status, status):
    crm = ScriptedCrm(SendOutcome(http_status, "answer", None, 1, 30))
    _, stored, _ = run(call, bot, crm)
    result = stored["post_call_push_result"]
    assert (result["status"], result["http_status"], result["response_body"]) == (status, http_status, "answer")


def test_no_answer_is_failed_with_the_error(call, bot):
    crm = ScriptedCrm(SendOutcome(None, "", "timed out after 10.0s", 1, 10_000))
    _, stored, _ = run(call, bot, crm)
    result = stored["post_call_push_result"]
    assert (result["status"], result["http_status"], result["error"]) == ("failed", None, "timed out after 10.0s")


def test_the_response_body_is_stored_at_most_2000_characters(call, bot):
    crm = ScriptedCrm(SendOutcome(422, "x" * 5000, None, 1, 5))
    _, stored, _ = run(call, bot, crm)
    assert len(stored["post_call_push_result"]["response_body"]) == 2000


def test_post_sends_the_mapped_payload_as_json_with_the_token(call, bot):
    _, _, crm = run(call, bot)
    request = crm.requests[0]
    body = json.loads(request.body or b"")
    assert request.method == "POST"
    assert request.headers["Authorization"] == TOKEN
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == call["call_id"]
    assert body["customer_name"] == "Asha Verma"
    assert body["address"] == {"city": "Pune", "pin": "411001"}
    assert body["callback_time"] == ""  # pre-seeded analysis key, absent from the analysis
    assert "{{" not in request.body.decode()


def test_configured_headers_replace_the_token_and_may_be_templated(call, bot):
    bot["post_call_push"]["headers"] = {"X-Api-Key": "k-123", "X-Call": "{{result.call_id}}"}
    _, _, crm = run(call, bot)
    headers = crm.requests[0].headers
    assert "Authorization" not in headers
    assert headers["X-Api-Key"] == "k-123"
    assert headers["X-Call"] == call["call_id"]


def test_a_templated_header_that_renders_a_newline_is_refused(call, bot):
    call["crm_data"]["EVIL"] = "x\r\nX-Injected: 1"
    bot["post_call_push"]["headers"] = {"X-Customer": "{{crm.EVIL}}"}
    _, stored, crm = run(call, bot)
    assert crm.requests == []
    assert stored["post_call_push_result"]["status"] == "failed"
    assert "control character" in stored["post_call_push_result"]["error"]


def test_get_sends_query_parameters_with_objects_as_json(call, bot):
    bot["post_call_push"].update({"method": "GET", "url": "https://crm.example.com/hook?source=bot"})
    _, stored, crm = run(call, bot)
    request = crm.requests[0]
    query = parse_qs(urlsplit(request.url).query)
    assert request.body is None
    assert query["source"] == ["bot", "voicebot"]
    assert json.loads(query["address"][0]) == {"city": "Pune", "pin": "411001"}
    assert query["attempt"] == ["1"]
    assert stored["post_call_push_result"]["method"] == "GET"
    # the recorded url is the configured one, never the payload-carrying query
    assert stored["post_call_push_result"]["url"] == "https://crm.example.com/hook?source=***"


def test_a_payload_over_1_mb_is_failed_and_not_sent(call, bot):
    call["analysis"]["SUMMARY"] = "x" * 1_100_000
    _, stored, crm = run(call, bot)
    assert crm.requests == []
    assert stored["post_call_push_result"]["status"] == "failed"
    assert "limit" in stored["post_call_push_result"]["error"]


def test_credentials_never_reach_the_result(call, bot):
    bot["post_call_push"]["url"] = "https://user:pa55word@crm.example.com/in?api_key=k-secret-1"
    _, stored, _ = run(call, bot)
    written = json.dumps(stored["post_call_push_result"]) + json.dumps(stored["integration_log"])
    for secret in ("pa55word", "k-secret-1", "sk_live_sample_token_not_real", "user:"):
        assert secret not in written
    assert stored["post_call_push_result"]["url"] == "https://crm.example.com/in?api_key=***"


def test_a_call_already_pushed_is_not_pushed_again(call, bot):
    calls, crm = InMemoryCalls(call), ScriptedCrm()
    deps = make_deps(calls, StaticBots(bot), crm)
    assert push_call(call["call_id"], deps).outcome == "pushed"
    again = push_call(call["call_id"], deps)
    assert again.outcome == "already_pushed"
    assert len(crm.requests) == 1
    assert len(calls.items[call["call_id"]]["integration_log"]) == 1


def test_a_replay_pushes_again_and_is_marked(call, bot):
    calls = InMemoryCalls(call)
    crm = ScriptedCrm(outcomes=[SendOutcome(422, "bad field", None, 1, 5, "http_status"), SendOutcome(200, "ok")])
    deps = make_deps(calls, StaticBots(bot), crm)
    assert push_call(call["call_id"], deps).result.status == "rejected"
    outcome = push_call(call["call_id"], deps, replay=Replay(by="ops@example.com", reason="CRM fixed its schema"))
    stored = calls.items[call["call_id"]]
    assert outcome.outcome == "pushed"
    assert len(crm.requests) == 2
    assert stored["post_call_push_result"]["status"] == "ok"
    assert stored["post_call_push_result"]["attempts"] == 2
    assert stored["post_call_push_result"]["replay"] == {"by": "ops@example.com", "reason": "CRM fixed its schema"}
    assert [e.get("replay", {}).get("by") for e in stored["integration_log"]] == [None, "ops@example.com"]


def test_result_log_and_event_are_appended_after_existing_entries(call, bot):
    call["integration_log"] = [{"type": "crm_fetch", "status": "ok"}]
    before_events = copy.deepcopy(call["events"])
    _, stored, _ = run(call, bot)
    assert [e["type"] for e in stored["integration_log"]] == ["crm_fetch", "post_call_push"]
    assert stored["events"][: len(before_events)] == before_events
    event = stored["events"][-1]
    assert event["type"] == "post_call_push"
    assert event["status"] == "ok"
    assert float(event["t"]) == pytest.approx(178.0)  # 09:33:00 - 09:30:02


def test_the_token_link_is_preferred_and_presign_is_the_fallback(call, bot):
    _, stored, crm = run(call, bot)
    assert json.loads(crm.requests[0].body)["recording"].endswith("/api/v1/public/recordings/rec_4QWJ9n2LxT0aZk7s")
    assert stored["post_call_push_result"]["recording_link"] == "public_token"

    del call["recording_access_token"]
    _, stored, crm = run(call, bot)
    assert json.loads(crm.requests[0].body)["recording"].startswith("https://s3.example.com/voicebot-recordings/")
    assert stored["post_call_push_result"]["recording_link"] == "presigned"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://crm.example.com/a/b", "https://crm.example.com/a/b"),
        ("https://u:p@crm.example.com:8443/a?x=1&y=2#frag", "https://crm.example.com:8443/a?x=***&y=***"),
        ("http://[::1]:8080/in", "http://[::1]:8080/in"),
    ],
)
def test_redact_url_drops_userinfo_and_query_values(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("{{auth.instance_url}}/services/data/v62.0/sobjects/Lead/Call_Id__c/{{result.call_id}}", None),
        ("https://crm.example.com/calls/{{result.call_id}}?agent={{call.agent}}", None),
        ("https://{{crm.host}}/calls", "url"),  # a host from call data: never
        ("{{auth.token}}/calls", "url"),  # only instance_url / api_domain may begin a url
    ],
)
def test_a_url_template_is_checked_when_the_config_is_loaded(bot, url, error):
    bot["post_call_push"]["url"] = url
    loaded = load_bot_config(bot, bot["bot_id"])
    if error is None:
        assert loaded.push_error is None
        assert loaded.push is not None
    else:
        assert loaded.push is None
        assert error in (loaded.push_error or "")
