"""The pure parts of reconcile, dlq and the "answered, not yet written" guidance: which call is stranded,
what an on-failure message points at, and that nothing tells an operator to replay an answered call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from push_cli.delivery_item import decided_not_written, unwritten_answers
from push_cli.dlq import describe
from push_cli.reconcile import OnFailureFindings, classify, merge_windows, read_on_failure_message
from push_cli.replay import candidate_for
from push_cli.status import DEAD_LETTERS_SECTION, build_status

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
EPOCH = int(NOW.timestamp())
SETTLE = 15 * 60


def call(**fields: Any) -> dict[str, Any]:
    return {"call_id": "c1", "bot_id": "b1", "results_stored_at": "2026-12-03T10:00:00.000Z", **fields}


def entry(status: str, attempts: int, **fields: Any) -> dict[str, Any]:
    """An attempt entry as DeliveryStateTable.get hands it over (expanded)."""
    return {
        "type": "post_call_push",
        "status": status,
        "attempts": attempts,
        "http_status": fields.get("http_status", 200 if status == "ok" else None),
        "error": None,
        "error_kind": fields.get("error_kind"),
        "next_attempt_at": fields.get("next_attempt_at"),
        "exhausted": False,
        "pushed_at": "2026-12-03T10:00:01.000Z",
    }


ANSWERED_OK_NOT_WRITTEN = {"pk": "delivery#c1", "attempts": 1, "st": "done", "written": False, "log": [entry("ok", 1)]}


# --- which call is stranded ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_call", "delivery", "verdict"),
    [
        pytest.param(call(post_call_push_result={"status": "ok", "attempts": 1}), None, "delivered", id="final ok"),
        pytest.param(call(post_call_push_result={"status": "rejected"}), None, "delivered", id="legacy result"),
        pytest.param(
            call(post_call_push_result={"status": "ok"}),
            {"st": "scheduled", "due": EPOCH - 86400},
            "delivered",
            id="a final result wins over any state",
        ),
        pytest.param(call(skip_post_push=True), None, "by_design", id="skip flag"),
        pytest.param(call(), None, "stranded", id="never pushed"),
        pytest.param(call(results_stored_at="2026-12-03T11:55:00.000Z"), None, "recent", id="stored minutes ago"),
        pytest.param(
            call(), {"claim_id": "x", "lease_until": EPOCH + 30, "attempts": 0}, "in_progress", id="live claim"
        ),
        pytest.param(call(), {"claim_id": "x", "lease_until": EPOCH, "attempts": 0}, "in_progress", id="last second"),
        pytest.param(call(), {"claim_id": "x", "lease_until": EPOCH - 1, "attempts": 0}, "stranded", id="dead claim"),
        pytest.param(
            call(post_call_push_result={"status": "failed", "next_attempt_at": "2026-12-03T12:05:00.000Z"}),
            {"st": "scheduled", "due": EPOCH + 300, "attempts": 1, "written": True, "log": []},
            "in_progress",
            id="scheduled later",
        ),
        pytest.param(
            call(), {"st": "scheduled", "due": EPOCH - 60, "attempts": 1}, "in_progress", id="due a minute ago"
        ),
        pytest.param(
            call(), {"st": "scheduled", "due": EPOCH - 3 * 3600, "attempts": 1}, "stranded", id="due hours ago"
        ),
        pytest.param(
            call(post_call_push_result={"status": "failed", "next_attempt_at": "2026-12-02T12:00:00.000Z"}),
            None,
            "stranded",
            id="open result, state gone",
        ),
        pytest.param(
            call(post_call_push_result={"status": "failed", "next_attempt_at": "2026-12-03T12:10:00.000Z"}),
            None,
            "in_progress",
            id="open result due later, state gone",
        ),
        pytest.param(call(), ANSWERED_OK_NOT_WRITTEN, "unwritten", id="answered ok, not written"),
        pytest.param(
            call(),
            {"st": "done", "attempts": 2, "written": False, "log": [entry("rejected", 2, http_status=422)]},
            "unwritten",
            id="answered 422, not written",
        ),
        pytest.param(
            call(),
            {
                "st": "scheduled",
                "due": EPOCH - 3 * 3600,
                "attempts": 1,
                "written": False,
                "log": [entry("rejected", 1, http_status=503, next_attempt_at="2026-12-03T08:00:00.000Z")],
            },
            "stranded",
            id="a retryable answer pending, its next attempt lost",
        ),
        pytest.param(
            call(), {"st": "done", "attempts": 1, "written": True, "log": []}, "unclear", id="state done only"
        ),
        pytest.param(call(), {"attempts": 0}, "stranded", id="released without an attempt"),
    ],
)
def test_each_call_gets_one_verdict(the_call, delivery, verdict):
    assert classify(the_call, delivery, now=NOW, settle_seconds=SETTLE)[0] == verdict


def test_a_call_seen_before_it_settled_is_stranded_once_settle_is_zero():
    recent = call(results_stored_at="2026-12-03T11:59:00.000Z")

    assert classify(recent, None, now=NOW, settle_seconds=SETTLE)[0] == "recent"
    assert classify(recent, None, now=NOW, settle_seconds=0)[0] == "stranded"


def test_windows_that_overlap_or_touch_are_swept_once():
    def at(minutes: int) -> datetime:
        return NOW + timedelta(minutes=minutes)

    merged = merge_windows([(at(30), at(40)), (at(0), at(10)), (at(10), at(15))])

    assert merged == [(at(0), at(15)), (at(30), at(40))]


# --- what an on-failure message points at -------------------------------------------------------

# The shape Lambda sends to a stream's on-failure destination (AWS Lambda developer guide, "Retaining
# discarded records for a DynamoDB event source"), with this stack's values.
STREAM_BATCH = {
    "requestContext": {
        "requestId": "316aa6d0-8154-xmpl-9af7-85d5f4a6bc81",
        "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:post-call-push",
        "condition": "RetryAttemptsExhausted",
        "approximateInvokeCount": 6,
    },
    "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
    "version": "1.0",
    "timestamp": "2026-12-03T10:04:26.479Z",
    "DDBStreamBatchInfo": {
        "shardId": "shardId-00000001701234567890-abcd1234",
        "startSequenceNumber": "800000000003126276362",
        "endSequenceNumber": "800000000003126276362",
        "approximateArrivalOfFirstRecord": "2026-12-03T10:00:02Z",
        "approximateArrivalOfLastRecord": "2026-12-03T10:01:49Z",
        "batchSize": 37,
        "streamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/Calls/stream/2026-11-01T00:00:00.000",
    },
}
EVENT = {
    "version": "0",
    "id": "a1b2",
    "detail-type": "Call Results Stored",
    "source": "results-ingestion",
    "detail": {"call_id": "call-from-event", "bot_id": "b1"},
}


def test_a_stream_batch_becomes_its_arrival_window_widened_by_the_margin():
    found = OnFailureFindings()

    read_on_failure_message(STREAM_BATCH, timedelta(minutes=5), found)

    assert found.windows == [
        (datetime(2026, 12, 3, 9, 55, 2, tzinfo=UTC), datetime(2026, 12, 3, 10, 6, 50, tzinfo=UTC))
    ]
    assert (found.stream_batches, found.events, found.unreadable) == (1, 0, 0)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(EVENT, id="EventBridge dead letter"),
        pytest.param(
            {"requestContext": {"condition": "RetriesExhausted"}, "requestPayload": EVENT, "version": "1.0"},
            id="async invocation failure",
        ),
    ],
)
def test_an_event_names_its_call(message):
    found = OnFailureFindings()

    read_on_failure_message(message, timedelta(minutes=5), found)

    assert found.calls == ["call-from-event"]
    assert found.windows == []


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"DDBStreamBatchInfo": {"shardId": "x"}}, id="batch info without times"),
        pytest.param({"detail": {}}, id="event without call"),
        pytest.param(["not", "an", "object"], id="a list"),
    ],
)
def test_a_message_of_another_shape_is_counted_not_guessed(message):
    found = OnFailureFindings()

    read_on_failure_message(message, timedelta(minutes=5), found)

    assert (found.windows, found.calls, found.unreadable) == ([], [], 1)


# --- answered, not yet written --------------------------------------------------------------------


def test_entries_waiting_for_the_end_of_a_ladder_are_not_unwritten_answers():
    mid_ladder = {"st": "scheduled", "written": True, "log": [entry("failed", 2, next_attempt_at="x")]}

    assert unwritten_answers(mid_ladder) == []
    assert not decided_not_written(mid_ladder)


def test_a_retryable_answer_not_written_is_unwritten_but_not_decided():
    first_failed = {"st": "scheduled", "written": False, "log": [entry("failed", 1, next_attempt_at="x")]}

    assert len(unwritten_answers(first_failed)) == 1
    assert not decided_not_written(first_failed)


def test_a_final_answer_not_written_is_decided():
    assert decided_not_written(ANSWERED_OK_NOT_WRITTEN)
    assert decided_not_written({"written": False, "log": [entry("rejected", 1, http_status=400)]})


def test_replay_holds_back_a_call_whose_answer_is_only_waiting_to_be_written():
    candidate = candidate_for(call(), force=False, now=NOW, delivery=ANSWERED_OK_NOT_WRITTEN)

    assert "answered, not yet written" in candidate.held_back
    assert "dlq redrive" in candidate.held_back


def test_replay_force_pushes_it_anyway():
    assert candidate_for(call(), force=True, now=NOW, delivery=ANSWERED_OK_NOT_WRITTEN).held_back == ""


@pytest.mark.parametrize("dead_letters", [None, 0, 3])
def test_status_of_an_answered_call_never_suggests_a_replay(dead_letters):
    report = build_status(
        call(), None, bot_exists=True, delivery=ANSWERED_OK_NOT_WRITTEN, now=NOW, dead_letters=dead_letters
    )

    assert report.diagnosis.startswith("answered, not yet written")
    assert report.runbook.startswith(DEAD_LETTERS_SECTION)
    assert not any(" replay " in command for command in report.next_commands)
    assert any("dlq redrive" in command for command in report.next_commands) == bool(dead_letters)


def test_status_sends_a_lost_attempt_to_the_dead_letters_when_there_are_some():
    overdue = {"st": "scheduled", "due": EPOCH - 3 * 3600, "attempts": 1, "written": True, "log": []}
    failed = call(post_call_push_result={"status": "failed", "attempts": 1, "error_kind": "timeout",
                                         "next_attempt_at": "2026-12-03T09:00:00.000Z"})  # fmt: skip

    with_parked = build_status(failed, None, bot_exists=True, delivery=overdue, now=NOW, dead_letters=2)
    without = build_status(failed, None, bot_exists=True, delivery=overdue, now=NOW, dead_letters=0)

    assert [c.split()[1:3] for c in with_parked.next_commands] == [["dlq", "list"], ["dlq", "redrive"]]
    assert without.next_commands[0].startswith("post-call-push replay")


# --- a dead letter as listed ------------------------------------------------------------------------


def test_a_dead_letter_is_described_without_its_content():
    body = (
        '{"v": 2, "kind": "record", "call_id": "c1", "bot_id": "b1", "claim_id": "k", "tries": 0, '
        '"state": {"attempts": 1, "status": "done", "due": null, "call_written": false, "unwritten": [], '
        '"trigger": "stream:1"}, "call": {"result": {"status": "ok", "response_body": "SECRET-ECHO"}, '
        '"entries": [], "event": {}, "force": false}}'
    )
    raw = {"MessageId": "m1", "Body": body, "Attributes": {"SentTimestamp": str((EPOCH - 7200) * 1000),
                                                            "ApproximateReceiveCount": "11"}}  # fmt: skip

    message = describe(raw, NOW)

    assert (message.kind, message.call_id, message.bot_id, message.attempts) == ("record", "c1", "b1", 1)
    assert (message.age_seconds, message.receives) == (7200, 10)
    assert "SECRET-ECHO" not in repr(message)


@pytest.mark.parametrize(
    ("body", "problem"),
    [("not json", "not JSON"), ('{"v": 9, "kind": "attempt", "call_id": "c1"}', "version")],
)
def test_a_dead_letter_this_version_cannot_read_is_unreadable(body, problem):
    message = describe({"MessageId": "m1", "Body": body, "Attributes": {}}, NOW)

    assert message.kind == "unreadable"
    assert problem in message.problem
    assert not message.redrivable
