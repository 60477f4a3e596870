"""The CLI's pure parts: masking, the replay loop and its selection, status diagnosis, the runbook."""

from __future__ import annotations

import re
import shlex
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm_push.config import load_bot_config
from crm_push.errors import ClaimHeld, QueueError
from crm_push.push import PushOutcome, PushResult
from push_cli.display import Redactor, mask_secret, shorten_strings, truncate
from push_cli.main import build_parser
from push_cli.replay import candidate_for, line_for, parse_moment, replay_calls, select_range
from push_cli.runbook import CHECKS, CRM_DOWN, QUOTA_SPENT
from push_cli.status import build_status, in_words

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


# --- masking --------------------------------------------------------------------------------


def test_a_token_shows_only_its_scheme_and_first_characters():
    assert mask_secret("Bearer sk_live_sample_token_not_real") == "Bearer sk_l…(masked)"
    assert mask_secret("short-key") == "***(masked)"
    assert mask_secret("Bearer abc") == "Bearer ***(masked)"


def test_the_redactor_hides_secrets_inside_values_and_url_credentials():
    redactor = Redactor(["rec_4QWJ9n2LxT0aZk7s"])

    # A url is shown as its one parse records it: the token segment is masked like any capability path.
    assert redactor.text("https://api.example.com/api/v1/public/recordings/rec_4QWJ9n2LxT0aZk7s") == (
        "https://api.example.com/api/v1/public/recordings/***"
    )
    presigned = "https://s3.example.com/b/k.wav?X-Amz-Credential=AKIA123&X-Amz-Signature=abcdef"
    assert redactor.text(presigned) == "https://s3.example.com/b/k.wav?X-Amz-Credential=***&X-Amz-Signature=***"
    assert redactor.text("https://user:pw@crm.example.com/x") == "https://crm.example.com/x"
    assert redactor.value({"a": ["see rec_4QWJ9n2LxT0aZk7s"]}) == {"a": ["see rec_…(masked)"]}


def test_truncation_never_cuts_a_mask_in_half():
    text = "x" * 50 + "rec_…(masked)" + "tail"

    assert "rec_…(masked)" in truncate(text, 55)
    assert truncate("abcdef", 3) == "abc…(+3 chars)"


def test_a_long_transcript_is_shortened_in_length_and_in_turns():
    transcript = [{"role": "bot", "text": "word " * 100} for _ in range(40)]

    shortened = shorten_strings(transcript, 20)

    assert len(shortened) == 6
    assert shortened[-1] == "…(+35 more items)"
    assert shortened[0]["text"].endswith("…(+480 chars)")


# --- replay ----------------------------------------------------------------------------------


def test_since_and_until_become_the_stored_form():
    assert parse_moment("2026-11-01", "--since") == "2026-11-01T00:00:00.000Z"
    assert parse_moment("2026-11-01T10:30:00+05:30", "--since") == "2026-11-01T05:00:00.000Z"
    assert parse_moment("2026-11-01T10:30:00Z", "--until") == "2026-11-01T10:30:00.000Z"
    with pytest.raises(ValueError, match="--since 'last week' is not a date"):
        parse_moment("last week", "--since")


def call(status: str | None = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"call_id": "c1", "results_stored_at": "2026-11-01T10:00:00.000Z", **extra}
    if status:
        item["post_call_push_result"] = {"status": status, "http_status": 422, "response_body": "no", "error": None}
    return item


EPOCH = int(NOW.timestamp())


def claim(lease_until: int) -> dict[str, Any]:
    """A state-table item held by a push (``DeliveryStateTable.get``)."""
    return {"attempts": 1, "claim_id": "c0ffee", "lease_until": lease_until, "claim_trigger": "stream:1", "log": []}


@pytest.mark.parametrize(
    ("item", "delivery", "force", "held_back"),
    [
        (call("ok"), None, False, "already pushed ok"),
        (call("ok"), None, True, ""),
        (call("failed"), None, False, ""),
        (call(None, skip_post_push=True), None, False, "flagged skip_post_push"),
        (call(None, results_stored_at=None), None, False, "results not stored yet"),
        (call("failed"), claim(EPOCH + 60), False, "a push holds the call until 2026-11-25 12:01:00 UTC"),
        (call("failed"), claim(EPOCH + 60), True, "a push holds the call until 2026-11-25 12:01:00 UTC"),
        (call("failed"), claim(EPOCH), False, "a push holds"),  # held through its last second
        (call("failed"), claim(EPOCH - 1), False, ""),
        (call("ok"), claim(EPOCH - 60), False, "already pushed ok"),
    ],
    ids=[
        "ok", "ok-forced", "failed", "flagged", "not-stored", "live-claim", "live-claim-forced",
        "last-second-of-lease", "expired-claim", "ok-with-expired-claim",
    ],
)  # fmt: skip
def test_what_a_replay_holds_back(item, delivery, force, held_back):
    candidate = candidate_for(item, force=force, now=NOW, delivery=delivery)

    assert candidate.held_back.startswith(held_back) if held_back else candidate.held_back == ""


def test_a_candidate_with_an_attempt_scheduled_says_when():
    delivery = {"attempts": 2, "st": "scheduled", "due": EPOCH + 300, "log": []}

    candidate = candidate_for(call("failed"), force=False, now=NOW, delivery=delivery)

    assert candidate.held_back == ""
    assert candidate.next_attempt_at == "2026-11-25T12:05:00.000Z"


def test_a_rejected_candidate_carries_the_crm_answer():
    assert candidate_for(call("rejected"), force=False, now=NOW).last_error == "HTTP 422: no"


def test_range_selection_reads_claims_only_for_the_statuses_asked_for():
    items = {"a": call("failed", call_id="a"), "b": call("failed", call_id="b"), "c": call("ok", call_id="c")}
    asked: list[str] = []

    def delivery_of(call_id: str) -> dict[str, Any] | None:
        asked.append(call_id)
        return claim(EPOCH + 60) if call_id == "b" else None

    selected, held, filtered = select_range(
        [(k, "t") for k in items], items.get, ["failed"], force=False, now=NOW, get_delivery=delivery_of
    )

    assert [c.call_id for c in selected] == ["a"]
    assert [c.call_id for c in held] == ["b"]
    assert filtered == 1
    assert asked == ["a", "b"]


def test_range_selection_filters_by_status_and_respects_the_limit():
    items = {
        "a": call("failed", call_id="a"),
        "b": call("rejected", call_id="b"),
        "c": call("ok", call_id="c"),
        "d": call("failed", call_id="d"),
    }
    ids = [(k, "t") for k in [*items, "deleted"]]

    selected, held, filtered = select_range(ids, items.get, ["failed", "rejected"], force=False, now=NOW, limit=2)

    assert [c.call_id for c in selected] == ["a", "b"]
    assert [(c.call_id, c.held_back) for c in held] == [("d", "over --limit 2")]
    assert filtered == 1


class FakeTime:
    def __init__(self, push_seconds: float = 0.0) -> None:
        self.now = 0.0
        self.push_seconds = push_seconds
        self.started: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def push(self, call_id: str) -> PushOutcome:
        self.started.append(self.now)
        self.now += self.push_seconds
        return ok_outcome(call_id)


def ok_outcome(call_id: str) -> PushOutcome:
    result = PushResult("ok", 200, "", None, "https://crm.example.com", "POST", "2026-11-25T12:00:00.000Z", 5)
    return PushOutcome(call_id, "pushed", result)


@pytest.mark.parametrize("push_seconds", [0.0, 0.1, 0.7])
def test_pushes_start_no_closer_than_the_rate_allows(push_seconds):
    fake = FakeTime(push_seconds)

    lines, interrupted = replay_calls(
        ["a", "b", "c", "d"], fake.push, rate=2, sleep=fake.sleep, monotonic=lambda: fake.now
    )

    assert not interrupted
    assert [line.outcome for line in lines] == ["ok"] * 4
    gaps = [later - earlier for earlier, later in zip(fake.started, fake.started[1:], strict=False)]
    assert all(gap >= 0.5 - 1e-9 for gap in gaps), gaps
    # A push slower than the interval is not made to wait on top of it.
    assert all(gap <= max(0.5, push_seconds) + 1e-9 for gap in gaps), gaps


def test_a_stop_request_ends_the_loop_after_the_call_in_flight():
    stop = threading.Event()
    pushed: list[str] = []

    def push(call_id: str) -> PushOutcome:
        pushed.append(call_id)
        stop.set()  # Ctrl-C arrives while this push is in flight
        return ok_outcome(call_id)

    lines, interrupted = replay_calls(["a", "b", "c"], push, rate=10, stop=stop, sleep=lambda _s: None)

    assert interrupted
    assert pushed == ["a"]
    assert [line.call_id for line in lines] == ["a"]


def test_a_busy_call_is_reported_and_the_loop_goes_on():
    def push(call_id: str) -> PushOutcome:
        if call_id == "a":
            raise ClaimHeld("call a is being pushed by another invocation")
        if call_id == "b":
            raise QueueError("call b needs the retry queue (another invocation holds the call), and none is set")
        if call_id == "c":
            return PushOutcome(call_id, "claim_held")
        return ok_outcome(call_id)

    lines, _ = replay_calls(["a", "b", "c", "d"], push, rate=50, sleep=lambda _s: None)

    assert [(line.call_id, line.outcome) for line in lines] == [
        ("a", "busy"),
        ("b", "queue_error"),
        ("c", "claim_held"),
        ("d", "ok"),
    ]
    assert "another push holds the call" in lines[2].error


def test_a_replay_the_crm_did_not_answer_says_when_the_function_retries():
    result = PushResult(
        "failed", None, "", "timed out after 10.0s", "https://crm.example.com", "POST", "2026-11-25T12:00:00.000Z",
        10_000, attempts=3, error_kind="timeout", next_attempt_at="2026-11-25T12:30:00.000Z",
    )  # fmt: skip

    line = line_for(PushOutcome("c1", "pushed", result))

    assert (line.outcome, line.attempts, line.next_attempt_at) == ("failed", 3, "2026-11-25T12:30:00.000Z")
    # The CRM's failure, which attempt it was and when the function tries again, in whatever words.
    assert "timed out after 10.0s" in line.error
    assert re.search(r"\battempt 3\b", line.error)
    assert "2026-11-25T12:30:00.000Z" in line.error


# --- status --------------------------------------------------------------------------------


BOT = load_bot_config({"post_call_push": {"url": "https://crm.example.com", "key_mapper": {}}}, "bot-1")


def test_an_ok_push_with_no_recording_link_points_at_check_5():
    item = call(None, bot_id="bot-1")
    item["post_call_push_result"] = {"status": "ok", "http_status": 200, "recording_link": "none"}

    report = build_status(item, BOT, bot_exists=True, now=NOW)

    assert report.runbook.startswith("docs/runbook.md#5-recording-link-broken")
    assert report.next_commands == ["post-call-push preview --call-id c1 --check-recording"]


def failed(**fields: Any) -> dict[str, Any]:
    """A post_call_push_result of a failed attempt, as the core writes it."""
    return {
        "status": "failed",
        "http_status": None,
        "response_body": "",
        "error": None,
        "url": "https://crm.example.com",
        "method": "POST",
        "pushed_at": "2026-11-25T11:59:00.000Z",
        "duration_ms": 10,
        "attempts": 1,
        "error_kind": None,
        "next_attempt_at": None,
        "exhausted": False,
        "recording_link": "public_token",
        **fields,
    }


def with_push(item: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    item["post_call_push_result"] = result
    item["integration_log"] = [{"type": "post_call_push", **result}]
    return item


def test_a_config_failure_sends_the_operator_to_lint_first():
    # The message says nothing the old text matching knew: error_kind alone decides.
    item = with_push(call(None, bot_id="bot-1"), failed(error="key_mapper wants work", error_kind="config"))

    report = build_status(item, BOT, bot_exists=True, now=NOW)

    assert "the config cannot be used: key_mapper wants work" in report.diagnosis
    assert report.next_commands[0] == "post-call-push lint --bot-id bot-1"


@pytest.mark.parametrize(
    ("result", "check", "says"),
    [
        (failed(status="rejected", http_status=422, response_body="mobile?", error_kind="http_status"),
         "2-crm-rejects-the-payload", "the CRM answered HTTP 422: mobile?"),
        (failed(status="rejected", http_status=410, response_body="gone", error_kind="http_status"),
         "2-crm-rejects-the-payload", "the CRM answered HTTP 410"),
        (failed(status="rejected", http_status=400, response_body="bad"),  # written before error_kind existed
         "2-crm-rejects-the-payload", "the CRM answered HTTP 400"),
        (failed(error="payload is 2000000 bytes", error_kind="payload_too_large"),
         "1-push-not-sent", "the config cannot be used: payload is 2000000 bytes"),
        (failed(error="refused: 10.0.0.5 is private", error_kind="destination_refused"),
         "1-push-not-sent", "address is refused"),
        (failed(error="secret crm/token has no key api_key", error_kind="secret"),
         "1-push-not-sent", "a secret of the config could not be read"),
        (failed(error="internal error while rendering: KeyError", error_kind="internal"),
         "1-push-not-sent", "a bug"),
        (failed(error="timed out after 10.0s", error_kind="timeout"),
         "1-push-not-sent", "the CRM did not answer (timeout: timed out after 10.0s); no attempt is scheduled"),
    ],
    ids=["4xx", "410", "legacy-rejected", "too-large", "refused", "secret", "internal", "timeout-unscheduled"],
)  # fmt: skip
def test_the_runbook_check_follows_the_error_kind(result, check, says):
    report = build_status(with_push(call(None, bot_id="bot-1"), result), BOT, bot_exists=True, now=NOW, delivery={})

    assert report.runbook.startswith(f"docs/runbook.md#{check}")
    assert says in report.diagnosis


def scheduled(attempts: int, due: int, *log: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The state-table item of a delivery waiting for its next attempt."""
    return {"attempts": attempts, "st": "scheduled", "due": due, "written": True, "log": list(log), **extra}


@pytest.mark.parametrize(
    ("result", "what"),
    [
        (failed(error="could not connect: connection refused", error_kind="connection"),
         "the CRM did not answer (connection: could not connect: connection refused)"),
        (failed(status="rejected", http_status=503, response_body="maintenance", error_kind="http_status"),
         "the CRM answered HTTP 503: maintenance"),
        (failed(attempts=0, error="circuit open", error_kind="circuit_open"), "its circuit is open"),
    ],
    ids=["connection", "503", "circuit-open"],
)  # fmt: skip
def test_a_crm_that_is_down_needs_nothing_but_says_when_it_retries(result, what):
    item = with_push(call(None, bot_id="bot-1"), result)

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery=scheduled(1, EPOCH + 250))

    assert report.runbook.startswith(CRM_DOWN.reference)
    assert what in report.diagnosis
    assert "Nothing to do: the push retries by itself - attempt 2 of 8 at 2026-11-25T12:04:10.000Z (in 4m 10s)" in (
        report.diagnosis
    )
    assert report.next_commands[0] == "post-call-push status --call-id c1"
    delivery = report.delivery
    assert (delivery.state, delivery.attempts, delivery.max_attempts) == ("scheduled", 1, 8)
    assert (delivery.next_attempt_at, delivery.next_attempt_in_seconds) == ("2026-11-25T12:04:10.000Z", 250)
    assert delivery.last_error_kind == result["error_kind"]
    assert not delivery.exhausted
    assert not delivery.claim_held


def test_a_spent_quota_is_its_own_check_and_points_at_the_scopes_parked_destinations():
    result = failed(status="rejected", http_status=429, response_body='{"policyName":"DAILY"}', error_kind="quota")
    item = with_push(call(None, bot_id="bot-1"), result)

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery=scheduled(1, EPOCH + 36000))

    assert report.runbook.startswith(QUOTA_SPENT.reference)
    assert "quota is spent" in report.diagnosis
    assert "without spending attempts" in report.diagnosis
    assert report.next_commands[0] == "post-call-push circuits --scope bot-1"
    assert "replay" not in " ".join(report.next_commands)


def test_attempts_only_in_the_state_table_are_the_latest_and_in_the_history():
    first = failed(error="timed out after 10.0s", error_kind="timeout", next_attempt_at="2026-11-25T11:59:05.000Z")
    later = {**failed(status="rejected", http_status=502, response_body="bad gateway", error_kind="http_status"),
             "attempts": 3, "pushed_at": "2026-11-25T11:59:40.000Z", "type": "post_call_push"}  # fmt: skip
    second = {**later, "attempts": 2, "http_status": 504, "pushed_at": "2026-11-25T11:59:10.000Z"}
    item = with_push(call(None, bot_id="bot-1"), first)

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery=scheduled(3, EPOCH + 1800, second, later))

    assert report.latest is not None
    assert report.latest["attempts"] == 1  # the call item, unchanged
    assert report.latest_attempt is not None
    assert report.latest_attempt["attempts"] == 3
    assert [(h.attempts, h.recorded_in) for h in report.history] == [(1, "call")]
    assert [(h.attempts, h.http_status) for h in report.delivery.unrecorded] == [(2, 504), (3, 502)]
    assert report.delivery.last_error_kind == "http_status"
    assert "the CRM answered HTTP 502" in report.diagnosis
    assert "attempt 4 of 8 at 2026-11-25T12:30:00.000Z (in 30m 0s)" in report.diagnosis


def test_an_exhausted_delivery_says_what_to_do():
    result = failed(error="timed out after 10.0s", error_kind="timeout", attempts=8, exhausted=True)
    item = with_push(call(None, bot_id="bot-1"), result)

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery={"attempts": 8, "st": "done", "log": []})

    assert report.runbook.startswith(CRM_DOWN.reference)
    assert report.diagnosis.startswith("delivery exhausted: the CRM did not answer (timeout")
    assert "last of 8 attempt(s)" in report.diagnosis
    assert report.delivery.exhausted
    assert report.next_commands[1].startswith("post-call-push replay --call-id c1 --reason")
    assert report.next_commands[2].startswith(
        "post-call-push replay --bot-id bot-1 --status failed,rejected --since 2026-11-01 --reason"
    )


def test_a_scheduled_attempt_long_overdue_lost_its_message():
    item = with_push(call(None, bot_id="bot-1"), failed(error="refused", error_kind="connection"))

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery=scheduled(1, EPOCH - 3600))

    assert "was due at 2026-11-25T11:00:00.000Z (1h 0m ago) and has not run" in report.diagnosis
    assert report.next_commands[0].startswith("post-call-push replay --call-id c1")


def test_an_attempt_in_progress_is_shown_with_its_lease():
    item = with_push(call(None, bot_id="bot-1"), failed(error="refused", error_kind="connection"))
    delivery = scheduled(1, EPOCH - 5, claim_id="c0ffee", lease_until=EPOCH + 90, claim_trigger="sqs:m-1")

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery=delivery)

    assert report.delivery.claim_held
    assert (report.delivery.claim_until, report.delivery.claim_by) == ("2026-11-25T12:01:30.000Z", "sqs:m-1")
    assert "is being made right now (a push holds the call until 2026-11-25T12:01:30.000Z)" in report.diagnosis


def test_a_claim_that_expired_without_a_result_is_a_dead_push():
    item = call(None, bot_id="bot-1")

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery=claim(EPOCH - 1))

    assert report.delivery.claim_expired
    assert not report.delivery.claim_held
    assert "died before recording an attempt" in report.diagnosis
    assert report.next_commands[0].startswith("post-call-push replay --call-id c1")


def test_without_the_state_table_status_goes_by_the_call_item_and_says_so():
    result = failed(error="refused", error_kind="connection", next_attempt_at="2026-11-25T12:05:00.000Z")
    item = with_push(call(None, bot_id="bot-1"), result)

    report = build_status(item, BOT, bot_exists=True, now=NOW, delivery_unread="state table not read: no table")

    assert not report.delivery.read
    assert report.delivery.note == "state table not read: no table"
    assert (report.delivery.next_attempt_at, report.delivery.next_attempt_in_seconds) == (
        result["next_attempt_at"],
        300,
    )
    assert report.runbook.startswith(CRM_DOWN.reference)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0, "0s"), (59, "59s"), (250, "4m 10s"), (3600, "1h 0m"), (7325, "2h 2m"), (90061, "1d 1h"), (-250, "4m 10s")],
)
def test_durations_read_as_words(seconds, words):
    assert in_words(seconds) == words


# --- the runbook -------------------------------------------------------------------------------


def test_every_check_the_cli_points_at_is_a_heading_of_the_runbook():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    headings = re.findall(r"^## (\d+)\. (.+)$", runbook, flags=re.MULTILINE)

    assert [(str(check.number), check.title) for check in CHECKS] == headings[: len(CHECKS)]


def test_every_command_in_the_runbook_parses():
    runbook = (ROOT / "docs" / "runbook.md").read_text().replace("\\\n", " ")
    commands = [line.split("#")[0].strip() for line in runbook.splitlines() if line.startswith("post-call-push ")]
    parser = build_parser()

    assert len(commands) >= 15
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # SystemExit (a failed test) if it does not
