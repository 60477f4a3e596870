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
from crm_push.errors import ClaimHeld
from crm_push.push import PushOutcome, PushResult
from push_cli.display import Redactor, mask_secret, shorten_strings, truncate
from push_cli.main import build_parser
from push_cli.replay import candidate_for, parse_moment, replay_calls, select_range
from push_cli.runbook import CHECKS
from push_cli.status import build_status

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


# --- masking --------------------------------------------------------------------------------


def test_a_token_shows_only_its_scheme_and_first_characters():
    assert mask_secret("Bearer sk_live_sample_token_not_real") == "Bearer sk_l…(masked)"
    assert mask_secret("short-key") == "***(masked)"
    assert mask_secret("Bearer abc") == "Bearer ***(masked)"


def test_the_redactor_hides_secrets_inside_values_and_url_credentials():
    redactor = Redactor(["rec_4QWJ9n2LxT0aZk7s"])

    assert redactor.text("https://api.example.com/api/v1/public/recordings/rec_4QWJ9n2LxT0aZk7s") == (
        "https://api.example.com/api/v1/public/recordings/rec_…(masked)"
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


@pytest.mark.parametrize(
    ("item", "force", "held_back"),
    [
        (call("ok"), False, "already pushed ok"),
        (call("ok"), True, ""),
        (call("failed"), False, ""),
        (call(None, skip_post_push=True), False, "flagged skip_post_push"),
        (call(None, results_stored_at=None), False, "results not stored yet"),
        (call("failed", post_call_push_claim={"expires_at": int(NOW.timestamp()) + 60}), True, "a push holds"),
        (call("failed", post_call_push_claim={"expires_at": int(NOW.timestamp()) - 60}), False, ""),
    ],
    ids=["ok", "ok-forced", "failed", "flagged", "not-stored", "live-claim", "expired-claim"],
)
def test_what_a_replay_holds_back(item, force, held_back):
    candidate = candidate_for(item, force=force, now=NOW)

    assert candidate.held_back.startswith(held_back) if held_back else candidate.held_back == ""


def test_a_rejected_candidate_carries_the_crm_answer():
    assert candidate_for(call("rejected"), force=False, now=NOW).last_error == "HTTP 422: no"


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
        return ok_outcome(call_id)

    lines, _ = replay_calls(["a", "b"], push, rate=50, sleep=lambda _s: None)

    assert [(line.call_id, line.outcome) for line in lines] == [("a", "busy"), ("b", "ok")]


# --- status --------------------------------------------------------------------------------


BOT = load_bot_config({"post_call_push": {"url": "https://crm.example.com", "key_mapper": {}}}, "bot-1")


def test_an_ok_push_with_no_recording_link_points_at_check_5():
    item = call(None, bot_id="bot-1")
    item["post_call_push_result"] = {"status": "ok", "http_status": 200, "recording_link": "none"}

    report = build_status(item, BOT, bot_exists=True, now=NOW)

    assert report.runbook.startswith("docs/runbook.md#5-recording-link-broken")
    assert report.next_commands == ["post-call-push preview --call-id c1 --check-recording"]


def test_a_config_failure_sends_the_operator_to_lint_first():
    item = call("failed", bot_id="bot-1")
    item["post_call_push_result"]["error"] = "bot bot-1: invalid post_call_push config: method: bad"

    report = build_status(item, BOT, bot_exists=True, now=NOW)

    assert "the config cannot be used" in report.diagnosis
    assert report.next_commands[0] == "post-call-push lint --bot-id bot-1"


def test_a_claim_that_expired_without_a_result_is_a_dead_push():
    item = call(None, bot_id="bot-1", post_call_push_claim={"claimed_at": "t", "expires_at": 1})

    report = build_status(item, BOT, bot_exists=True, now=NOW)

    assert "died before recording a result" in report.diagnosis
    assert report.next_commands[0].startswith("post-call-push replay --call-id c1")


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
