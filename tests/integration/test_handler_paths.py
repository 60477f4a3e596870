"""Every path of the handler through real parts: moto as AWS, a real local HTTP server as the CRM."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from scripts.local_crm import CrmAnswer
from scripts.make_events import results_stored_event, stream_record
from tests.conftest import LambdaContextStub, Stack, insert_event

EVENTS = Path(__file__).resolve().parents[2] / "events"


def seed(stack: Stack, call: dict[str, Any], bot: dict[str, Any]) -> None:
    stack.put_bot(bot)
    stack.put_call(call)


def result_of(stack: Stack, call: dict[str, Any]) -> dict[str, Any]:
    return stack.get_call(call["call_id"]).get("post_call_push_result", {})


# --- sending --------------------------------------------------------------------------


def test_get_sends_the_payload_as_query_parameters(stack, handler, sample_call, sample_bot):
    sample_bot["post_call_push"]["method"] = "GET"
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    (request,) = stack.crm.requests
    assert request.method == "GET"
    assert request.body == b""
    assert request.query["customer_name"] == "Asha Verma"
    assert json.loads(request.query["address"]) == {"city": "Pune", "pin": "411001"}
    assert result_of(stack, sample_call)["method"] == "GET"


def test_post_body_is_the_exact_json_the_mapper_renders(stack, handler, sample_call, sample_bot):
    sample_bot["post_call_push"]["key_mapper"] = {"name": "{{CUSTOMERNAME}}", "emi": "{{crm.EMI_AMOUNT}}", "n": 7}
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    assert stack.crm.requests[0].body == b'{"name":"Asha Verma","emi":"1499","n":7}'


def test_configured_headers_are_sent_instead_of_the_token(stack, handler, sample_call, sample_bot):
    sample_bot["post_call_push"]["headers"] = {"X-Api-Key": "key-123"}
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    headers = stack.crm.requests[0].headers
    assert headers["X-Api-Key"] == "key-123"
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("http_status", "status", "kind", "retried"),
    [(201, "ok", None, False), (422, "rejected", "http_status", False), (500, "rejected", "http_status", True)],
)
def test_the_crm_status_is_recorded(stack, handler, sample_call, sample_bot, http_status, status, kind, retried):
    stack.crm.responder = lambda _req: CrmAnswer(status=http_status, body=b'{"error":"LEAD_ID missing"}')
    sample_bot["post_call_push"]["retry_schedule_seconds"] = [600]
    seed(stack, sample_call, sample_bot)

    response = handler(insert_event(sample_call))

    result = result_of(stack, sample_call)
    assert (result["status"], result["http_status"], result["error_kind"]) == (status, http_status, kind)
    assert result["response_body"] == '{"error":"LEAD_ID missing"}'
    assert (result["next_attempt_at"] is not None) is retried
    assert len(stack.crm.requests) == 1
    assert response == {"batchItemFailures": []}  # recorded (and scheduled): a stream retry would not help


def test_a_refused_connection_is_failed_with_the_reason(stack, handler, sample_call, sample_bot, closed_port):
    sample_bot["post_call_push"]["url"] = f"http://127.0.0.1:{closed_port}/in"
    sample_bot["post_call_push"]["retry_schedule_seconds"] = [600]
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    result = result_of(stack, sample_call)
    assert (result["status"], result["http_status"], result["error_kind"]) == ("failed", None, "connection")
    assert "refused" in result["error"].lower()
    assert (result["attempts"], result["exhausted"]) == (1, False)
    assert result["next_attempt_at"] is not None


@pytest.mark.slow
def test_a_crm_that_never_answers_is_failed_after_the_10_s_timeout(stack, handler, sample_call, sample_bot):
    release = threading.Event()
    stack.crm.responder = lambda _req: (release.wait(15), CrmAnswer())[1]
    sample_bot["post_call_push"]["retry_schedule_seconds"] = []
    seed(stack, sample_call, sample_bot)

    started = time.monotonic()
    handler(insert_event(sample_call))
    elapsed = time.monotonic() - started
    release.set()

    result = result_of(stack, sample_call)
    assert (result["status"], result["error_kind"], result["exhausted"]) == ("failed", "timeout", True)
    assert "timed out" in result["error"]
    assert 9.5 <= elapsed < 20


# --- eligibility ------------------------------------------------------------------------


def test_no_url_is_recorded_as_skipped(stack, handler, sample_call, sample_bot):
    sample_bot["post_call_push"]["url"] = ""
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    assert stack.crm.requests == []
    assert result_of(stack, sample_call)["status"] == "skipped"


def test_a_flagged_call_is_neither_pushed_nor_written(stack, handler, sample_call, sample_bot):
    sample_call["skip_post_push"] = True
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    assert stack.crm.requests == []
    stored = stack.get_call(sample_call["call_id"])
    assert "post_call_push_result" not in stored
    assert stored["integration_log"] == []


def test_a_bot_without_config_is_neither_pushed_nor_written(stack, handler, sample_call, sample_bot):
    del sample_bot["post_call_push"]
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    assert stack.crm.requests == []
    assert "post_call_push_result" not in stack.get_call(sample_call["call_id"])


def test_an_invalid_config_is_recorded_as_failed_naming_the_bot(stack, handler, sample_call, sample_bot):
    sample_bot["post_call_push"]["method"] = "DELETE"
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    result = result_of(stack, sample_call)
    assert stack.crm.requests == []
    assert result["status"] == "failed"
    assert sample_bot["bot_id"] in result["error"]
    assert "method" in result["error"]


def _decimal(item: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(item), parse_float=Decimal)
    return loaded


@pytest.mark.parametrize(
    "shape",
    ["own_write_back", "remove", "modify_before_results", "modify_after_results"],
)
def test_records_other_than_results_just_stored_are_ignored(stack, handler, sample_call, sample_bot, shape):
    seed(stack, sample_call, sample_bot)
    stored = _decimal(sample_call)
    before = {k: v for k, v in stored.items() if k != "results_stored_at"}
    records = {
        "own_write_back": stream_record(
            {**stored, "post_call_push_result": {"status": "ok"}}, stored, event_name="MODIFY", sequence_number="9"
        ),
        "remove": stream_record(None, stored, event_name="REMOVE", sequence_number="9"),
        "modify_before_results": stream_record({**before, "qc": {}}, before, event_name="MODIFY", sequence_number="9"),
        "modify_after_results": stream_record({**stored, "qc": {}}, stored, event_name="MODIFY", sequence_number="9"),
    }

    response = handler({"Records": [records[shape]]})

    assert response == {"batchItemFailures": []}
    assert stack.crm.requests == []
    assert "post_call_push_result" not in stack.get_call(sample_call["call_id"])


def test_a_modify_that_stores_results_is_pushed(stack, handler, sample_call, sample_bot):
    seed(stack, sample_call, sample_bot)
    stored = _decimal(sample_call)
    before = {k: v for k, v in stored.items() if k != "results_stored_at"}

    handler({"Records": [stream_record(stored, before, event_name="MODIFY", sequence_number="5")]})

    assert len(stack.crm.requests) == 1


# --- at most once -------------------------------------------------------------------------


def test_two_concurrent_invocations_for_one_call_push_once(stack, handler, sample_call, sample_bot):
    stack.crm.responder = lambda _req: CrmAnswer(delay_seconds=0.3)  # hold the first push mid-flight
    seed(stack, sample_call, sample_bot)
    event = insert_event(sample_call)
    responses: list[Any] = []

    threads = [threading.Thread(target=lambda: responses.append(handler(event))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(stack.crm.requests) == 1
    assert len(stack.get_call(sample_call["call_id"])["integration_log"]) == 1
    # the loser waited out the live claim, then found the result: nothing to retry
    assert [r["batchItemFailures"] for r in responses] == [[], []]
    handler(event)
    assert len(stack.crm.requests) == 1


# --- recording links ------------------------------------------------------------------------


def test_without_a_token_the_recording_is_a_working_presigned_url(stack, handler, sample_call, sample_bot):
    stack.s3.put_object(Bucket=stack.bucket, Key="recordings/c1.wav", Body=b"RIFF....WAVE")
    del sample_call["recording_access_token"]
    sample_call["recording_url"] = "recordings/c1.wav"  # a bare key: RECORDINGS_BUCKET holds it
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    link = stack.crm.requests[0].json()["recording"]
    assert "X-Amz-Signature=" in link
    assert "X-Amz-Expires=21600" in link
    assert f"/{stack.bucket}/recordings/c1.wav" in link
    with urllib.request.urlopen(link) as fetched:
        assert fetched.read() == b"RIFF....WAVE"
    assert result_of(stack, sample_call)["recording_link"] == "presigned"


def test_without_token_or_recording_the_link_is_empty(stack, handler, sample_call, sample_bot):
    for name in ("recording_access_token", "recording_url"):
        del sample_call[name]
    seed(stack, sample_call, sample_bot)

    handler(insert_event(sample_call))

    assert stack.crm.requests[0].json()["recording"] == ""


# --- EventBridge and malformed input -------------------------------------------------------


def eventbridge_event(call_id: str, bot_id: str) -> dict[str, Any]:
    return results_stored_event(call_id, bot_id)


def test_eventbridge_event_reads_the_call_and_pushes_it(stack, handler, sample_call, sample_bot):
    seed(stack, sample_call, sample_bot)

    response = handler(eventbridge_event(sample_call["call_id"], sample_bot["bot_id"]))

    assert response == {"status": "pushed", "result": "ok"}
    assert len(stack.crm.requests) == 1
    assert result_of(stack, sample_call)["status"] == "ok"


def test_eventbridge_for_an_unknown_call_pushes_nothing(stack, handler, sample_bot):
    stack.put_bot(sample_bot)

    response = handler(eventbridge_event("call-does-not-exist", sample_bot["bot_id"]))

    assert response["status"] == "call_not_found"
    assert stack.crm.requests == []


@pytest.mark.parametrize(
    "event",
    [
        {"detail-type": "Call Results Stored", "detail": {}},
        {"detail-type": "Call Results Stored", "detail": {"call_id": ""}},
        {"detail-type": "Something Else", "detail": {"call_id": "c"}},
        {"unexpected": True},
    ],
)
def test_a_malformed_event_is_reported_not_raised(stack, handler, event):
    response = handler(event)

    assert response["status"] == "invalid_event"
    assert response["error"]
    assert stack.crm.requests == []


def test_a_malformed_record_does_not_stop_the_rest_of_the_batch(stack, handler, sample_call, sample_bot, caplog):
    seed(stack, sample_call, sample_bot)
    good = insert_event(sample_call)["Records"][0]
    broken = {
        "eventID": "x",
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"SequenceNumber": "42", "NewImage": {"results_stored_at": {"BOGUS": "x"}}},
    }
    no_call_id = {
        "eventID": "y",
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"SequenceNumber": "43", "NewImage": {"results_stored_at": {"S": "2026-11-25T00:00:00Z"}}},
    }

    response = handler({"Records": [broken, good, no_call_id]})

    assert response == {"batchItemFailures": []}  # retrying a malformed record cannot help
    assert len(stack.crm.requests) == 1
    assert result_of(stack, sample_call)["status"] == "ok"


def test_an_unreachable_state_table_asks_for_a_retry_before_anything_is_sent(
    stack, handler, sample_call, sample_bot, monkeypatch
):
    seed(stack, sample_call, sample_bot)
    monkeypatch.setenv("PUSH_STATE_TABLE", "PushState-that-does-not-exist")

    response = handler(insert_event(sample_call), LambdaContextStub())

    assert response == {"batchItemFailures": [{"itemIdentifier": "000000000000000000001"}]}
    assert stack.crm.requests == []


def test_a_circuit_opening_is_counted_in_the_functions_metrics(stack, handler, sample_bot, capsys, closed_port):
    sample_bot["post_call_push"]["url"] = f"http://127.0.0.1:{closed_port}/in"
    sample_bot["post_call_push"]["retry_schedule_seconds"] = [600]
    stack.put_bot(sample_bot)
    calls = []
    for i in range(8):
        call = {
            "call_id": f"refused-{stack.calls_table[-6:]}-{i}",
            "bot_id": sample_bot["bot_id"],
            "results_stored_at": "2026-11-25T09:32:41.512Z",
        }
        stack.put_call(call)
        calls.append(call)

    assert handler(insert_event(*calls)) == {"batchItemFailures": []}

    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]

    def total(name: str) -> float:
        values = [e.get(name, 0) for e in emitted]
        return sum(sum(v) if isinstance(v, list) else v for v in values)

    counted = {name: total(name) for name in ("CircuitOpened", "PushErrorKind_connection")}
    assert counted["CircuitOpened"] == 1
    assert counted["PushErrorKind_connection"] >= 5

    # Calls held back by the open circuit are not failed pushes: no Push_failed for them. Another
    # container (a fresh copy of the handler) reads the circuit from the table, not from a local cache
    # that a thread of the first batch may have filled just before the circuit opened.
    held = [{**calls[0], "call_id": f"{calls[0]['call_id']}-held-{i}"} for i in range(3)]
    for call in held:
        stack.put_call(call)
    sys.modules.pop("app", None)
    other_container = importlib.import_module("app")
    other_container.lambda_handler(insert_event(*held, start_sequence=100), LambdaContextStub())
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert (total("NotPushed_held_back"), total("CallsHeldByOpenCircuit"), total("Push_failed")) == (3, 3, 0)
