"""``dlq list|redrive`` on moto SQS: the retry queue's dead letters classified without their content, put back
unchanged and deleted only once sent; a redriven record is written by the real handler, never re-sent."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from crm_push.messages import CallWrite, Record, encode, record_message, wake_up_message
from crm_push.ports import DeliveryUpdate
from push_cli import dlq
from push_cli.context import CliError, Context
from push_cli.display import make_console
from tests.conftest import REGION, Stack
from tests.retry_queue import queued

SECRET_ECHO = "echo-of-sk_live_should_never_print"


@pytest.fixture
def dead_letters(stack: Stack) -> str:
    """The retry queue's dead-letter queue, named in its redrive policy as template.yaml does."""
    url: str = stack.sqs.create_queue(QueueName=f"retry-dlq-{stack.calls_table}")["QueueUrl"]
    arn = stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.sqs.set_queue_attributes(
        QueueUrl=stack.retry_queue_url,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "10"})},
    )
    return url


def result(call_id: str) -> dict[str, Any]:
    return {
        "status": "ok",
        "http_status": 200,
        "response_body": SECRET_ECHO,
        "error": None,
        "url": "https://crm.example.com/hook",
        "method": "POST",
        "pushed_at": "2026-12-03T10:00:01.000Z",
        "duration_ms": 40,
        "attempts": 1,
        "error_kind": None,
        "next_attempt_at": None,
        "exhausted": False,
        "recording_link": "public_token",
    }


def record_body(call_id: str) -> str:
    answer = result(call_id)
    record = Record(
        call_id=call_id,
        bot_id="bot-a",
        claim_id="claim-1",
        state=DeliveryUpdate(attempts=1, status="done", due=None, call_written=True, unwritten=(), trigger="stream:1"),
        call=CallWrite(
            answer, [{"type": "post_call_push", **answer}], {"type": "post_call_push", "t": 160, "status": "ok"}
        ),
    )
    return encode(record_message(record))


def attempt_body(call_id: str) -> str:
    return encode(wake_up_message(call_id, "bot-a", datetime(2026, 12, 3, 10, 5, tzinfo=UTC)))


def park(stack: Stack, queue: str, *bodies: str) -> None:
    for body in bodies:
        stack.sqs.send_message(QueueUrl=queue, MessageBody=body)


def run_dlq(stack: Stack, *argv: str, json_output: bool = True) -> tuple[int, Any]:
    parser = argparse.ArgumentParser()
    dlq.add_arguments(parser)
    out = io.StringIO()
    ctx = Context(region=REGION, retry_queue_url=stack.retry_queue_url, calls_table=stack.calls_table)
    code = dlq.run(parser.parse_args([*argv, *(["--json"] if json_output else [])]), ctx, make_console(out))
    return code, json.loads(out.getvalue()) if json_output else out.getvalue()


def bodies(stack: Stack, queue: str) -> list[str]:
    found = []
    while messages := stack.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages"
    ):
        found += [m["Body"] for m in messages]
    return sorted(found)


def test_list_classifies_each_message_and_shows_none_of_its_content(stack, dead_letters):
    park(stack, dead_letters, record_body("c-rec"), attempt_body("c-att"), "{not json")

    code, report = run_dlq(stack, "list")  # the queue comes from the retry queue's redrive policy
    _, text = run_dlq(stack, "list", json_output=False)

    assert code == 0
    assert report["queue_url"] == dead_letters
    assert {(m["kind"], m["call_id"]) for m in report["messages"]} == {
        ("record", "c-rec"),
        ("attempt", "c-att"),
        ("unreadable", ""),
    }
    assert report["counts"] == {"record": 1, "attempt": 1, "unreadable": 1}
    assert SECRET_ECHO not in json.dumps(report)
    assert SECRET_ECHO not in text
    assert "never replay" in text
    # Listing moved nothing and hid nothing: every message is visible again at once.
    assert len(bodies(stack, dead_letters)) == 3


def test_list_filters_by_call_and_kind(stack, dead_letters):
    park(stack, dead_letters, record_body("c-1"), attempt_body("c-1"), attempt_body("c-2"))

    _, by_call = run_dlq(stack, "list", "--queue-url", dead_letters, "--call-id", "c-1")
    _, by_kind = run_dlq(stack, "list", "--queue-url", dead_letters, "--kind", "attempt")

    assert sorted(m["kind"] for m in by_call["messages"]) == ["attempt", "record"]
    assert sorted(m["call_id"] for m in by_kind["messages"]) == ["c-1", "c-2"]


def test_redrive_puts_each_message_back_unchanged_and_deletes_it_after(stack, dead_letters):
    parked = [record_body("c-rec"), attempt_body("c-att")]
    park(stack, dead_letters, *parked)

    _, plan = run_dlq(stack, "redrive", "--dry-run")
    assert (plan["redriven"], bodies(stack, stack.retry_queue_url)) == ([], [])

    code, report = run_dlq(stack, "redrive")

    assert code == 0
    assert len(report["redriven"]) == 2
    assert bodies(stack, stack.retry_queue_url) == sorted(parked)
    assert bodies(stack, dead_letters) == []


def test_redrive_of_one_kind_leaves_the_rest(stack, dead_letters):
    park(stack, dead_letters, record_body("c-rec"), attempt_body("c-att"))

    run_dlq(stack, "redrive", "--kind", "record")

    assert bodies(stack, stack.retry_queue_url) == [record_body("c-rec")]
    assert bodies(stack, dead_letters) == [attempt_body("c-att")]


def test_a_message_this_version_cannot_read_stays_parked_and_exits_1(stack, dead_letters):
    park(stack, dead_letters, '{"v": 99, "kind": "attempt", "call_id": "c-x"}', attempt_body("c-att"))

    code, report = run_dlq(stack, "redrive")

    assert code == 1
    assert len(report["redriven"]) == 1
    assert len(report["left"]) == 1
    assert bodies(stack, dead_letters) == ['{"v": 99, "kind": "attempt", "call_id": "c-x"}']


def test_a_failed_send_keeps_the_message_in_the_dead_letter_queue(stack, dead_letters, monkeypatch):
    park(stack, dead_letters, record_body("c-rec"))
    monkeypatch.setattr(stack, "retry_queue_url", stack.retry_queue_url + "-gone")

    code, report = run_dlq(stack, "redrive", "--queue-url", dead_letters)

    assert code == 1
    assert report["failed"][0]["call_id"] == "c-rec"
    assert report["failed"][0]["error"].startswith("not sent back")
    assert bodies(stack, dead_letters) == [record_body("c-rec")]


def test_redrive_refuses_to_send_a_queue_to_itself(stack, dead_letters):
    with pytest.raises(CliError, match="retry queue itself"):
        run_dlq(stack, "redrive", "--queue-url", stack.retry_queue_url)


def test_a_redriven_record_is_written_by_the_handler_and_never_sent(
    stack, dead_letters, sample_call, sample_bot, handler
):
    """NEW CORE: the handler applies the record through crm_push.flow.apply_record."""
    stack.put_bot({**sample_bot, "bot_id": "bot-a"})
    stack.put_call({**sample_call, "call_id": "c-rec", "bot_id": "bot-a"})
    park(stack, dead_letters, record_body("c-rec"))

    run_dlq(stack, "redrive")
    response = handler({"Records": queued(stack)})

    assert response == {"batchItemFailures": []}
    assert stack.crm.requests == []
    stored = stack.get_call("c-rec")
    assert stored["post_call_push_result"]["status"] == "ok"
    assert len(stored["integration_log"]) == 1
