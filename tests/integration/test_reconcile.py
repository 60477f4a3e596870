"""``reconcile`` against DynamoDB Local and moto SQS: the calls a stream outage left behind, found across bots
through the bot/date index, from a window or from the on-failure queue's messages; pushed with --replay."""

from __future__ import annotations

import argparse
import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm_push.adapters.state import compact_entry
from push_cli import reconcile
from push_cli.context import CliError, Context
from push_cli.display import make_console
from push_cli.reconcile import ReconcileReport
from tests.conftest import REGION, Stack, insert_event, to_dynamodb

WINDOW = ("--since", "2026-11-20T10:00:00Z", "--until", "2026-11-20T11:00:00Z")
IN_WINDOW = "2026-11-20T10:{:02d}:00.000Z"


class FakeClock:
    """Pacing without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def context(stack: Stack) -> Context:
    return Context(
        calls_table=stack.calls_table,
        bots_table=stack.bots_table,
        state_table=stack.state_table,
        retry_queue_url=stack.retry_queue_url,
        region=REGION,
        public_base_url="https://api.example.com",
        recordings_bucket=stack.bucket,
    )


def reconcile_json(stack: Stack, *argv: str, clock: FakeClock | None = None) -> tuple[int, dict[str, Any]]:
    parser = argparse.ArgumentParser()
    reconcile.add_arguments(parser)
    out = io.StringIO()
    code = reconcile.run(parser.parse_args([*argv, "--json"]), context(stack), make_console(out), clock or FakeClock())
    return code, json.loads(out.getvalue())


def by_verdict(report: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["verdict"], set()).add(finding["call_id"])
    return found


def new_call(template: dict[str, Any], call_id: str, bot_id: str, stored_at: str, **fields: Any) -> dict[str, Any]:
    call = copy.deepcopy(template)
    call.update(call_id=call_id, bot_id=bot_id, results_stored_at=stored_at, **fields)
    return call


def put_delivery(stack: Stack, call_id: str, **fields: Any) -> None:
    item = {"pk": f"delivery#{call_id}", **fields}
    if "log" in item:
        item["log"] = [compact_entry(e) for e in item["log"]]
    stack.dynamodb.put_item(TableName=stack.state_table, Item=to_dynamodb(item))


FINAL_OK = {
    "status": "ok",
    "http_status": 200,
    "response_body": "",
    "error": None,
    "url": "https://crm.example.com/x",
    "method": "POST",
    "pushed_at": "2026-11-20T10:00:05.000Z",
    "duration_ms": 12,
    "attempts": 1,
}


@pytest.fixture
def outage(stack: Stack, sample_call: dict[str, Any], sample_bot: dict[str, Any]) -> dict[str, str]:
    """Two bots that push and one that does not; calls of the window in every state a sweep must tell apart."""
    for bot_id in ("bot-a", "bot-b"):
        stack.put_bot({**sample_bot, "bot_id": bot_id})
    stack.put_bot({"bot_id": "bot-quiet", "timezone": "UTC"})
    now = int(datetime.now(UTC).timestamp())
    calls = {
        "delivered": new_call(sample_call, "c-delivered", "bot-a", IN_WINDOW.format(1), post_call_push_result=FINAL_OK),
        "never": new_call(sample_call, "c-never", "bot-a", IN_WINDOW.format(2)),
        "died": new_call(sample_call, "c-died", "bot-b", IN_WINDOW.format(3)),
        "live": new_call(sample_call, "c-live", "bot-b", IN_WINDOW.format(4)),
        "answered": new_call(sample_call, "c-answered", "bot-a", IN_WINDOW.format(5)),
        "skipped": new_call(sample_call, "c-skipped", "bot-a", IN_WINDOW.format(6), skip_post_push=True),
        "after": new_call(sample_call, "c-after", "bot-a", "2026-11-20T11:00:00.000Z"),
        "quiet": new_call(sample_call, "c-quiet", "bot-quiet", IN_WINDOW.format(7)),
    }
    for call in calls.values():
        stack.put_call(call)
    put_delivery(stack, "c-died", claim_id="k1", lease_until=now - 600, attempts=0, claim_trigger="stream:1")
    put_delivery(stack, "c-live", st="scheduled", due=now + 600, attempts=1, written=True, log=[])
    put_delivery(
        stack,
        "c-answered",
        st="done",
        attempts=1,
        written=False,
        log=[{**FINAL_OK, "type": "post_call_push", "next_attempt_at": None}],
    )
    return {name: call["call_id"] for name, call in calls.items()}


def test_the_sweep_finds_the_stranded_calls_of_every_bot_and_no_others(stack, outage):
    code, report = reconcile_json(stack, *WINDOW)

    assert code == 1
    assert by_verdict(report) == {"stranded": {"c-never", "c-died"}, "unwritten": {"c-answered"}}
    assert report["counts"] == {"stranded": 2, "unwritten": 1, "in_progress": 1, "by_design": 1, "delivered": 1}
    assert (report["bots_swept"], report["bots_without_push"], report["calls_seen"]) == (2, 1, 6)
    assert stack.crm.requests == []


def test_one_bot_only(stack, outage):
    _, report = reconcile_json(stack, *WINDOW, "--bot-id", "bot-b")

    assert by_verdict(report) == {"stranded": {"c-died"}}
    assert report["calls_seen"] == 2


def test_a_window_with_nothing_stranded_exits_0(stack, outage):
    code, report = reconcile_json(stack, "--since", "2026-11-20T11:00:00Z", "--until", "2026-11-20T12:00:00Z")

    assert by_verdict(report) == {"stranded": {"c-after"}}
    assert code == 1
    code, report = reconcile_json(stack, "--since", "2026-11-21", "--until", "2026-11-22")
    assert (code, report["calls_seen"], report["findings"]) == (0, 0, [])


def stream_batch(first: str, last: str) -> dict[str, Any]:
    return {
        "requestContext": {
            "requestId": "r1",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:post-call-push",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 6,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2026-11-20T10:10:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": "shardId-00000001700000000000-aaaa0000",
            "startSequenceNumber": "100",
            "endSequenceNumber": "180",
            "approximateArrivalOfFirstRecord": first,
            "approximateArrivalOfLastRecord": last,
            "batchSize": 3,
            "streamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/Calls/stream/2026-11-01T00:00:00.000",
        },
    }


def test_an_on_failure_batch_is_swept_over_its_arrival_window(stack, outage, tmp_path: Path):
    # The batch arrived 10:02:10 .. 10:02:50: with a 1-minute margin, only calls stored 10:01:10 .. 10:03:51.
    message = tmp_path / "batch.json"
    message.write_text(json.dumps(stream_batch("2026-11-20T10:02:10Z", "2026-11-20T10:02:50Z")))

    code, report = reconcile_json(stack, "--on-failure-message", str(message), "--margin", "1")

    assert code == 1
    assert report["windows"] == [["2026-11-20T10:01:10.000Z", "2026-11-20T10:03:51.000Z"]]
    assert by_verdict(report) == {"stranded": {"c-never", "c-died"}}
    assert report["on_failure"]["stream_batches"] == 1


def test_the_on_failure_queue_is_read_whole_and_left_as_it_was(stack, outage, sqs):
    queue = sqs.create_queue(QueueName=f"on-failure-{stack.calls_table}")["QueueUrl"]
    sqs.send_message(
        QueueUrl=queue, MessageBody=json.dumps(stream_batch("2026-11-20T10:05:00Z", "2026-11-20T10:05:00Z"))
    )
    event = {"detail-type": "Call Results Stored", "detail": {"call_id": "c-died", "bot_id": "bot-b"}}
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
    sqs.send_message(QueueUrl=queue, MessageBody="not json")

    code, report = reconcile_json(stack, "--on-failure-queue", queue, "--margin", "0")

    assert code == 1
    assert by_verdict(report) == {"unwritten": {"c-answered"}, "stranded": {"c-died"}}
    assert {k: report["on_failure"][k] for k in ("stream_batches", "events", "unreadable")} == {
        "stream_batches": 1,
        "events": 1,
        "unreadable": 1,
    }
    visible = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert len(visible) == 3


def test_bad_options_are_refused(stack, outage):
    for argv in (
        (),
        (*WINDOW, "--on-failure-message", "x.json"),
        (*WINDOW, "--replay"),
        (*WINDOW, "--reason", "no replay"),
        ("--until", "2026-11-20"),
    ):
        with pytest.raises(CliError):
            reconcile_json(stack, *argv)


def test_a_calls_table_without_the_index_is_named_not_scanned(stack, outage, dynamodb):
    bare = f"Calls-bare-{stack.calls_table}"
    dynamodb.create_table(
        TableName=bare,
        KeySchema=[{"AttributeName": "call_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "call_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    stack.calls_table = bare

    with pytest.raises(CliError, match="has no bot_id-results_stored_at-index") as failure:
        reconcile_json(stack, *WINDOW)
    assert failure.value.exit_code == 1


# --- a real stream outage, and --replay through the core --------------------------------------------
# NEW CORE: these push through crm_push.push.push_call (the handler and the replay); they need the core
# the lead is rewriting to run end to end.


def test_a_stream_outage_is_found_and_replayed_once(stack, sample_call, sample_bot, handler):
    stack.put_bot({**sample_bot, "bot_id": "bot-a"})
    calls = [new_call(sample_call, f"c-{i}", "bot-a", IN_WINDOW.format(10 + i)) for i in range(4)]
    for call in calls:
        stack.put_call(call)
    handler(insert_event(*calls[:2]))  # the stream delivered the first two; then it stopped
    assert len(stack.crm.requests) == 2

    _, report = reconcile_json(stack, *WINDOW)
    assert by_verdict(report) == {"stranded": {"c-2", "c-3"}}

    _, plan = reconcile_json(stack, *WINDOW, "--replay", "--reason", "INC-9 stream outage", "--dry-run")
    assert len(stack.crm.requests) == 2
    assert plan["replay"]["dry_run"] is True

    clock = FakeClock()
    code, done = reconcile_json(
        stack, *WINDOW, "--replay", "--reason", "INC-9 stream outage", "--by", "asha", "--rate", "1", clock=clock
    )

    assert code == 0
    assert [line["outcome"] for line in done["lines"]] == ["ok", "ok"]
    assert len(stack.crm.requests) == 4
    assert clock.sleeps == [pytest.approx(1.0)]
    for call_id in ("c-2", "c-3"):
        assert stack.get_call(call_id)["integration_log"][-1]["replay"] == {
            "by": "asha",
            "reason": "INC-9 stream outage",
        }
    code, after = reconcile_json(stack, *WINDOW)
    assert (code, after["findings"]) == (0, [])


def test_a_call_delivered_after_the_sweep_is_not_pushed_again(stack, outage):
    """The replay reads each call again just before pushing it: a sweep's list may be minutes old."""
    args = argparse.Namespace(by="asha", reason="INC-9", rate=50.0, dry_run=False, limit=None, settle=15.0,
                              ignore_dead_letters=False)  # fmt: skip
    report = ReconcileReport(windows=[])
    report.findings = [reconcile.Finding("c-delivered", "bot-a", IN_WINDOW.format(1), "stranded", "swept earlier")]
    ctx = context(stack)

    reconcile._replay(args, ctx, report, ctx.calls(), FakeClock())

    assert [(line.call_id, line.outcome) for line in report.lines] == [("c-delivered", "already_pushed")]
    assert stack.crm.requests == []


def test_replay_waits_for_the_dead_letters_first(stack, outage, sqs):
    dead = sqs.create_queue(QueueName=f"dlq-{stack.calls_table}")
    arn = sqs.get_queue_attributes(QueueUrl=dead["QueueUrl"], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(
        QueueUrl=stack.retry_queue_url,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "10"})},
    )
    sqs.send_message(QueueUrl=dead["QueueUrl"], MessageBody='{"v": 2, "kind": "attempt", "call_id": "c-never"}')

    code, report = reconcile_json(stack, *WINDOW, "--replay", "--reason", "INC-9")

    assert code == 1
    assert report["dead_letters"] == 1
    assert report["lines"] == []
    assert stack.crm.requests == []
