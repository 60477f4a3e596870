"""The operator CLI end to end: moto as AWS, the local CRM server, ``main(argv)`` in-process."""

from __future__ import annotations

import copy
import json
import re
import shlex
import signal
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm_push.adapters.state import DeliveryStateTable
from crm_push.config import Settings
from crm_push.push import PushOutcome, push_call
from crm_push.wiring import build_deps
from push_cli.main import Clock, main
from scripts.local_crm import CrmAnswer
from tests.conftest import Stack, insert_event

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "Bearer sk_live_sample_token_not_real"
RECORDING_TOKEN = "rec_4QWJ9n2LxT0aZk7s"


def run(capsys: pytest.CaptureFixture[str], *argv: str, clock: Clock | None = None) -> tuple[int, str, str]:
    code = main(list(argv), clock=clock)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str, clock: Clock | None = None) -> tuple[int, Any]:
    code, out, err = run(capsys, *argv, "--json", clock=clock)
    assert out, err
    return code, json.loads(out)


class FakeClock(Clock):
    """Time that moves only when the replay loop sleeps: a rate limit is checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        super().__init__(sleep=self._sleep, monotonic=lambda: self.now)

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def new_call(sample_call: dict[str, Any], **changes: Any) -> dict[str, Any]:
    call = copy.deepcopy(sample_call)
    call["call_id"] = f"call-{uuid.uuid4().hex[:12]}"
    call.update(changes)
    return call


def push_result(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "status": status,
        "http_status": fields.get("http_status"),
        "response_body": fields.get("response_body", ""),
        "error": fields.get("error"),
        "url": "https://crm.example.com/api/v2/call-outcomes",
        "method": "POST",
        "pushed_at": "2026-11-01T10:00:05.000Z",
        "duration_ms": 12,
        "attempts": 1,
        "error_kind": fields.get("error_kind"),
        "recording_link": fields.get("recording_link", "public_token"),
    }


def with_result(call: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    call["post_call_push_result"] = result
    call["integration_log"] = [{"type": "post_call_push", **result}]
    call["events"] = [*call.get("events", []), {"type": "post_call_push", "t": 160, "status": result["status"]}]
    return call


def runbook_anchors() -> set[str]:
    """The anchors GitHub gives docs/runbook.md's headings: a link the CLI prints must land on one."""
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "runbook.md").read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-") for heading in headings}


def write_json(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture
def seeded(stack: Stack, sample_call: dict[str, Any], sample_bot: dict[str, Any]) -> dict[str, Any]:
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    return sample_call


# --- preview -------------------------------------------------------------------------------


def test_preview_explains_each_field_and_sends_and_writes_nothing(capsys, stack, seeded):
    code, out, _ = run(capsys, "preview", "--call-id", seeded["call_id"])

    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "crm.CUSTOMERNAME" in lines["customer_name"]
    assert "suffix fallback" in lines["customer_name"]
    assert "pre-seeded" in lines["callback_time"]
    assert " object " in lines["address"]
    assert '"city":"Pune"' in lines["address"]  # DynamoDB keeps no key order within a map
    assert '"pin":"411001"' in lines["address"]
    assert " string " in lines["emi_amount"]
    assert "1499" in lines["emi_amount"]
    assert "Bearer sk_l…(masked)" in out
    assert TOKEN not in out
    assert "sk_live_sample_token_not_real" not in out
    assert RECORDING_TOKEN not in out
    assert stack.crm.requests == []
    stored = stack.get_call(seeded["call_id"])
    assert "post_call_push_result" not in stored
    assert stored["integration_log"] == []
    assert stack.dynamodb.scan(TableName=stack.state_table)["Items"] == []


def test_preview_body_is_what_the_push_then_sends(capsys, stack, seeded):
    code, preview = run_json(capsys, "preview", "--call-id", seeded["call_id"], "--full")
    assert code == 0

    code, _, _ = run(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "compare with preview")
    assert code == 0

    sent = stack.crm.requests[0].json()
    # The recording link is masked in the preview (it carries the access token); all else is identical.
    assert sent.pop("recording").endswith(f"/recordings/{RECORDING_TOKEN}")
    assert preview["body"].pop("recording").endswith("/recordings/***")
    assert preview["body"] == sent
    assert preview["method"] == stack.crm.requests[0].method == "POST"


def test_preview_from_files_needs_no_tables(capsys, monkeypatch, tmp_path):
    for name in ("CALLS_TABLE", "BOTS_TABLE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://api.example.com")

    code, preview = run_json(
        capsys,
        "preview",
        "--call-file",
        str(ROOT / "events" / "sample_call.json"),
        "--bot-file",
        str(ROOT / "events" / "sample_bot.json"),
    )

    assert code == 0
    assert preview["url"] == "https://crm.example.com/api/v2/call-outcomes"
    assert preview["recording"]["mode"] == "public_token"
    by_path = {f["path"]: f for f in preview["fields"]}
    assert by_path["attempt"]["sent_as"] == "number"
    assert by_path["transcript"]["sent_as"] == "array"
    assert by_path["customer_name"]["placeholders"][0]["how"] == "suffix fallback"
    everything = json.dumps(preview, ensure_ascii=False)
    assert "sk_live_sample_token_not_real" not in everything
    assert RECORDING_TOKEN not in everything


def test_preview_says_why_a_field_is_empty_or_a_string(capsys, stack, sample_call, sample_bot):
    sample_call["crm_data"]["RAW_ADDRESS"] = "{'city': 'Pune'}"  # Python repr: not JSON
    sample_bot["post_call_push"]["key_mapper"] = {
        "name": "{{crm.CUSTOMER_NAME}}",
        "address_line": "addr: {{crm.ADDRESS}}",
        "raw_address": "{{crm.RAW_ADDRESS}}",
        "address": "{{crm.ADDRESS}}",
    }
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    code, preview = run_json(capsys, "preview", "--call-id", sample_call["call_id"])

    assert code == 0
    fields = {f["path"]: f for f in preview["fields"]}
    assert fields["name"]["placeholders"][0]["how"] == "unresolved"
    assert fields["name"]["sent"] == '""'
    assert fields["address_line"]["sent_as"] == "string"
    assert any("text around {{crm.ADDRESS}}" in n for n in fields["address_line"]["notes"])
    assert fields["raw_address"]["sent_as"] == "string"
    assert any("not valid JSON" in n for n in fields["raw_address"]["notes"])
    assert fields["address"]["sent_as"] == "object"
    assert fields["address"]["notes"] == []
    assert any("{{crm.CUSTOMER_NAME}}" in w for w in preview["warnings"])


def test_preview_of_a_get_push_lists_the_query_parameters(capsys, stack, sample_call, sample_bot):
    sample_bot["post_call_push"]["method"] = "GET"
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    code, preview = run_json(capsys, "preview", "--call-id", sample_call["call_id"])

    assert code == 0
    assert preview["method"] == "GET"
    assert preview["body"] is None
    query = dict(preview["query"])
    assert json.loads(query["address"]) == {"city": "Pune", "pin": "411001"}
    assert query["attempt"] == "1"
    assert "Content-Type" not in {h["name"] for h in preview["headers"]}


def test_preview_flags_literal_braces_from_a_malformed_template(capsys, stack, sample_call, sample_bot):
    sample_bot["post_call_push"]["key_mapper"] = {"name": "{{ crm.CUSTOMERNAME }", "ok": "{{crm.LOAN_ACCOUNT}}"}
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    code, preview = run_json(capsys, "preview", "--call-id", sample_call["call_id"])

    assert code == 0
    assert any("literal braces reach the CRM in: name" in w for w in preview["warnings"])
    name = next(f for f in preview["fields"] if f["path"] == "name")
    assert any("unbalanced braces" in n for n in name["notes"])


def test_preview_of_a_presigned_recording_masks_the_signature_and_checks_the_object(
    capsys, stack, sample_call, sample_bot
):
    del sample_call["recording_access_token"]
    sample_call["recording_url"] = f"s3://{stack.bucket}/recordings/missing.wav"
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    code, preview = run_json(capsys, "preview", "--call-id", sample_call["call_id"], "--check-recording")

    assert code == 0
    recording = preview["recording"]
    assert recording["mode"] == "presigned"
    assert "recording_access_token is missing" in recording["how"]
    assert "X-Amz-Signature=***" in recording["link"]
    assert any("does not exist" in p for p in recording["problems"])
    assert "X-Amz-Signature=" not in json.dumps(preview).replace("X-Amz-Signature=***", "")


def test_preview_of_an_unknown_call_exits_2(capsys, stack):
    code, out, err = run(capsys, "preview", "--call-id", "call-nope")

    assert code == 2
    assert "call-nope" in err
    assert out == ""


def test_preview_of_an_unknown_bot_exits_2(capsys, stack, seeded):
    code, _, err = run(capsys, "preview", "--call-id", seeded["call_id"], "--bot-id", "bot-nope")

    assert code == 2
    assert "bot-nope" in err


@pytest.mark.parametrize(
    ("content", "exit_code", "message"),
    [
        ('{"bot_id": "b", "post_call_push": {', 2, "is not valid JSON"),
        ('["not", "a", "bot"]', 2, "must hold one JSON object"),
        (
            '{"bot_id": "b", "post_call_push": {"url": "https://crm.example.com", "key_mapper": ["x"]}}',
            1,
            "must be a map",
        ),
        ('{"bot_id": "b", "post_call_push": {"url": "https://crm.example.com", "method": "DELETE"}}', 1, "method"),
    ],
    ids=["bad-json", "not-an-object", "key-mapper-not-a-map", "bad-method"],
)
def test_preview_with_an_invalid_bot_file(capsys, tmp_path, content, exit_code, message):
    bot_file = tmp_path / "bot.json"
    bot_file.write_text(content)

    code, out, err = run(
        capsys, "preview", "--call-file", str(ROOT / "events" / "sample_call.json"), "--bot-file", str(bot_file)
    )

    assert code == exit_code
    assert message in out + err


# --- lint ------------------------------------------------------------------------------------


def test_lint_of_the_sample_bot_against_its_recent_calls_passes(capsys, stack, seeded, sample_bot):
    code, report = run_json(capsys, "lint", "--bot-id", sample_bot["bot_id"])

    assert code == 0
    assert report["errors"] == 0
    assert report["samples"] == 1
    assert report["placeholders"] == 17


def test_lint_finds_near_misses_unknown_namespaces_and_bad_braces(capsys, tmp_path, sample_bot):
    sample_bot["post_call_push"]["key_mapper"] = {
        "name": "{{crm.CUSTOMER_NAME}}",
        "campaign": "{{foo.campaign_id}}",
        "half_open": "{{ crm.LOAN_ACCOUNT }",
        "empty": "{{}}",
        "ok": "{{crm.LOAN_ACCOUNT}}",
    }
    bot_file = write_json(tmp_path / "bot.json", sample_bot)

    code, report = run_json(
        capsys, "lint", "--bot-file", bot_file, "--call-file", str(ROOT / "events" / "sample_call.json")
    )

    assert code == 1
    by_field = {f["where"]: f for f in report["findings"] if f["severity"] == "error"}
    assert "did you mean {{crm.CUSTOMERNAME}}" in by_field["key_mapper.name"]["suggestion"]
    assert "'foo' is not a namespace" in by_field["key_mapper.campaign"]["problem"]
    assert "unbalanced braces" in by_field["key_mapper.half_open"]["problem"]
    assert "empty placeholder" in by_field["key_mapper.empty"]["problem"]
    assert "key_mapper.ok" not in by_field


def test_lint_reports_what_the_crm_schema_would_reject(capsys, tmp_path, sample_bot):
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["customer_name", "mobile"],
        "properties": {
            "customer_name": {"type": "string", "minLength": 1},
            "emi_amount": {"type": "number"},
            "address": {"type": "object"},
            "attempt": {"type": "string"},
        },
    }
    sample_call = json.loads((ROOT / "events" / "sample_call.json").read_text())
    sample_call["crm_data"]["ADDRESS"] = "12 MG Road, Pune"  # text, not a map
    code, report = run_json(
        capsys,
        "lint",
        "--bot-file",
        write_json(tmp_path / "bot.json", sample_bot),
        "--call-file",
        write_json(tmp_path / "call.json", sample_call),
        "--schema",
        write_json(tmp_path / "crm.json", schema),
    )

    assert code == 1
    problems = {f["where"]: f["problem"] for f in report["findings"] if f["severity"] == "error"}
    assert "requires 'mobile'" in problems["key_mapper"]
    assert "sent as string, the schema wants number" in problems["key_mapper.emi_amount"]
    assert "sent as string, the schema wants object" in problems["key_mapper.address"]
    assert "sent as number, the schema wants string" in problems["key_mapper.attempt"]
    assert "key_mapper.customer_name" not in problems


def test_lint_schema_without_samples_reports_only_what_no_call_can_change(capsys, tmp_path, sample_bot):
    schema = {
        "type": "object",
        "required": ["mobile"],
        "properties": {"emi_amount": {"type": "integer"}, "address": {"type": "object"}},
    }
    code, report = run_json(
        capsys,
        "lint",
        "--bot-file",
        write_json(tmp_path / "bot.json", sample_bot),
        "--schema",
        write_json(tmp_path / "crm.json", schema),
    )

    assert code == 1
    where = {f["where"] for f in report["findings"] if f["severity"] == "error"}
    assert where == {"key_mapper", "key_mapper.emi_amount"}  # address depends on the call's data


def test_lint_refuses_a_broken_schema(capsys, tmp_path, sample_bot):
    code, _, err = run(
        capsys,
        "lint",
        "--bot-file",
        write_json(tmp_path / "bot.json", sample_bot),
        "--schema",
        write_json(tmp_path / "crm.json", {"type": "objekt"}),
    )

    assert code == 2
    assert "not a valid JSON Schema" in err


def test_lint_of_an_invalid_config_says_what_is_wrong_in_plain_words(capsys, stack, sample_bot):
    sample_bot["post_call_push"]["method"] = "DELETE"
    stack.put_bot(sample_bot)

    code, out, _ = run(capsys, "lint", "--bot-id", sample_bot["bot_id"], "--sample", "0")

    assert code == 1
    (error_row,) = [line for line in out.splitlines() if line.lstrip().startswith("ERROR")]
    assert all(word in error_row for word in ("method", "POST", "GET"))


def test_lint_of_an_unknown_bot_exits_2(capsys, stack):
    code, _, err = run(capsys, "lint", "--bot-id", "bot-nope")

    assert code == 2
    assert "bot-nope" in err


def test_lint_gates_on_errors_only(capsys, tmp_path, sample_bot):
    sample_bot["post_call_push"]["url"] = "http://crm.example.com/outcomes"  # a warning
    code, out, _ = run(capsys, "lint", "--bot-file", write_json(tmp_path / "bot.json", sample_bot))

    assert code == 0
    assert "plain http" in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("ERROR")]


# --- replay ----------------------------------------------------------------------------------


def test_replay_dry_run_sends_and_writes_nothing(capsys, stack, seeded):
    code, out, _ = run(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "check", "--dry-run")

    assert code == 0
    assert "1 call(s) would be replayed" in out
    assert stack.crm.requests == []
    assert "post_call_push_result" not in stack.get_call(seeded["call_id"])


def test_replay_sends_once_and_records_who_and_why(capsys, stack, seeded):
    code, _, _ = run(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "INC-42 CRM down", "--by", "asha")

    assert code == 0
    assert len(stack.crm.requests) == 1
    stored = stack.get_call(seeded["call_id"])
    assert stored["post_call_push_result"]["status"] == "ok"
    assert stored["integration_log"][-1]["replay"] == {"by": "asha", "reason": "INC-42 CRM down"}

    # Pushed ok now: a second replay is held back unless forced.
    code, out, _ = run(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "again")
    assert code == 1
    assert "--force" in out
    assert len(stack.crm.requests) == 1

    code, _, _ = run(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "again", "--force")
    assert code == 0
    assert len(stack.crm.requests) == 2
    assert len(stack.get_call(seeded["call_id"])["integration_log"]) == 2


def test_replay_of_a_rejected_push_reports_the_crm_answer(capsys, stack, seeded):
    stack.crm.responder = lambda _req: CrmAnswer(status=422, body=b'{"error":"emi_amount must be a number"}')

    code, report = run_json(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "retry")

    assert code == 1
    assert report["counts"] == {"rejected": 1}
    assert report["lines"][0]["http_status"] == 422
    assert "emi_amount must be a number" in report["lines"][0]["error"]


def seed_range(stack: Stack, sample_call: dict[str, Any]) -> dict[str, dict[str, Any]]:
    calls = {
        "failed": with_result(
            new_call(sample_call, results_stored_at="2026-11-01T08:00:00.000Z"),
            push_result("failed", error="timed out after 10.0s", error_kind="timeout"),
        ),
        "failed_too": with_result(
            new_call(sample_call, results_stored_at="2026-11-01T09:00:00.000Z"),
            push_result("failed", error="connection failed: ConnectionRefusedError", error_kind="connection"),
        ),
        "rejected": with_result(
            new_call(sample_call, results_stored_at="2026-11-01T10:00:00.000Z"),
            push_result("rejected", http_status=422, response_body="bad", error_kind="http_status"),
        ),
        "ok": with_result(
            new_call(sample_call, results_stored_at="2026-11-01T11:00:00.000Z"), push_result("ok", http_status=200)
        ),
        "failed_next_day": with_result(
            new_call(sample_call, results_stored_at="2026-11-02T00:00:00.000Z"),
            push_result("failed", error="timed out after 10.0s"),
        ),
        "other_bot": with_result(
            new_call(sample_call, bot_id="bot-other", results_stored_at="2026-11-01T08:30:00.000Z"),
            push_result("failed", error="timed out after 10.0s"),
        ),
    }
    for call in calls.values():
        stack.put_call(call)
    return calls


def test_replay_range_dry_run_selects_by_window_and_status(capsys, stack, sample_call, sample_bot):
    stack.put_bot(sample_bot)
    calls = seed_range(stack, sample_call)
    bot_id = sample_bot["bot_id"]

    code, report = run_json(
        capsys, "replay", "--bot-id", bot_id, "--since", "2026-11-01", "--until", "2026-11-02",
        "--status", "failed", "--reason", "INC-7", "--dry-run",
    )  # fmt: skip

    assert code == 0
    assert [c["call_id"] for c in report["selected"]] == [calls["failed"]["call_id"], calls["failed_too"]["call_id"]]
    assert report["filtered_out"] == 2  # the rejected and the ok call
    assert report["lines"] == []
    assert stack.crm.requests == []


def test_replay_range_pushes_each_selected_call_at_the_rate_asked(capsys, stack, sample_call, sample_bot):
    stack.put_bot(sample_bot)
    calls = seed_range(stack, sample_call)
    clock = FakeClock()

    code, out, _ = run(
        capsys, "replay", "--bot-id", sample_bot["bot_id"], "--since", "2026-11-01", "--until", "2026-11-02",
        "--status", "failed,rejected", "--reason", "INC-7", "--rate", "4", clock=clock,
    )  # fmt: skip

    assert code == 0
    sent_ids = [request.json()["call_id"] for request in stack.crm.requests]
    assert sent_ids == [calls[name]["call_id"] for name in ("failed", "failed_too", "rejected")]
    # Time stands still while a push runs here, so each wait is the whole interval: 1/4 s.
    assert clock.sleeps == [0.25, 0.25]
    assert "3 of 3" in out
    for name in ("failed", "failed_too", "rejected"):
        entry = stack.get_call(calls[name]["call_id"])["integration_log"][-1]
        assert entry["replay"]["reason"] == "INC-7"
        assert entry["status"] == "ok"
    assert "replay" not in stack.get_call(calls["ok"]["call_id"])["integration_log"][-1]


def test_replay_range_stops_cleanly_on_ctrl_c(capsys, stack, sample_call, sample_bot):
    stack.put_bot(sample_bot)
    calls = seed_range(stack, sample_call)

    class CtrlCWhileWaiting(FakeClock):
        def _sleep(self, seconds: float) -> None:
            super()._sleep(seconds)
            signal.raise_signal(signal.SIGINT)  # the operator presses Ctrl-C during the first wait

    code, out, err = run(
        capsys, "replay", "--bot-id", sample_bot["bot_id"], "--since", "2026-11-01", "--until", "2026-11-02",
        "--reason", "INC-7", clock=CtrlCWhileWaiting(),
    )  # fmt: skip

    assert code == 130
    assert len(stack.crm.requests) == 1
    assert "2 not attempted" in out
    # The resume hint names the call after the one sent, in the order of selection.
    in_order = [calls[name]["call_id"] for name in ("failed", "failed_too", "rejected")]
    first_not_attempted = in_order[in_order.index(stack.crm.requests[0].json()["call_id"]) + 1]
    assert first_not_attempted in out.lower().split("resume", 1)[1]
    assert "in flight" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_replay_of_an_unknown_call_exits_2(capsys, stack):
    code, _, err = run(capsys, "replay", "--call-id", "call-nope", "--reason", "x")

    assert code == 2
    assert "call-nope" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bot-id", "b", "--since", "2026-11-01", "--status", "ok"], "add --force"),
        (["--bot-id", "b", "--since", "2026-11-01", "--status", "broken"], "use one or more of"),
        (["--bot-id", "b"], "needs --since"),
        (["--bot-id", "b", "--since", "2026-11-02", "--until", "2026-11-01"], "is not after --since"),
        (["--bot-id", "b", "--since", "yesterday"], "is not a date"),
        (["--call-id", "c", "--rate", "0"], "--rate must be"),
        (["--call-id", "c", "--since", "2026-11-01"], "use them with --bot-id"),
    ],
    ids=["ok-needs-force", "unknown-status", "no-since", "empty-window", "bad-date", "zero-rate", "since-on-call"],
)
def test_replay_refuses_unsafe_or_unclear_requests(capsys, stack, argv, message):
    code, _, err = run(capsys, "replay", *argv, "--reason", "x")

    assert code == 2
    assert message in err
    assert stack.crm.requests == []


# --- status ------------------------------------------------------------------------------------


def test_status_of_a_rejected_push_points_at_the_runbook_with_the_next_command(capsys, stack, seeded):
    stack.crm.responder = lambda _req: CrmAnswer(status=422, body=b'{"error":"mobile is required"}')
    run(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "first try", "--by", "asha")

    code, out, _ = run(capsys, "status", "--call-id", seeded["call_id"])

    assert code == 0
    assert "REJECTED" in out
    assert "422" in out
    assert "public_token" in out
    assert "asha" in out
    assert "first try" in out
    anchor = re.search(r"docs/runbook\.md#([\w-]+)", out)
    assert anchor is not None
    assert anchor.group(1) == "2-crm-rejects-the-payload"
    assert anchor.group(1) in runbook_anchors()
    assert f"post-call-push preview --call-id {seeded['call_id']}" in out
    assert "mobile is required" in out


def test_status_shows_every_push_including_replays(capsys, stack, sample_call, sample_bot):
    stack.put_bot(sample_bot)
    call = with_result(new_call(sample_call), push_result("failed", error="timed out after 10.0s"))
    stack.put_call(call)
    run(capsys, "replay", "--call-id", call["call_id"], "--reason", "INC-9", "--by", "ravi")

    code, status = run_json(capsys, "status", "--call-id", call["call_id"])

    assert code == 0
    assert [(h["status"], h["replay"]) for h in status["history"]] == [("failed", ""), ("ok", "by ravi: INC-9")]
    assert [e["status"] for e in status["events"]] == ["failed", "ok"]
    assert status["latest"]["recording_link"] == "public_token"
    assert status["runbook"] == ""


def test_status_of_a_failed_push_names_check_1(capsys, stack, sample_call, sample_bot):
    stack.put_bot(sample_bot)
    result = push_result("failed", error="connection failed: ConnectionRefused", error_kind="connection")
    call = with_result(new_call(sample_call), result)
    stack.put_call(call)

    code, status = run_json(capsys, "status", "--call-id", call["call_id"])

    assert code == 0
    assert status["runbook"].startswith("docs/runbook.md#1-push-not-sent")
    assert "the CRM did not answer (connection: connection failed" in status["diagnosis"]
    assert any(c.startswith(f"post-call-push replay --call-id {call['call_id']}") for c in status["next_commands"])


def test_status_of_a_call_never_pushed_because_the_bot_has_no_config(capsys, stack, sample_call, sample_bot):
    del sample_bot["post_call_push"]
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    code, status = run_json(capsys, "status", "--call-id", sample_call["call_id"])

    assert code == 0
    assert status["latest"] is None
    assert "has no post_call_push config" in status["diagnosis"]
    assert status["next_commands"] == [f"post-call-push lint --bot-id {sample_bot['bot_id']}"]


def test_status_of_an_unknown_call_exits_2(capsys, stack):
    code, _, err = run(capsys, "status", "--call-id", "call-nope")

    assert code == 2
    assert "call-nope" in err


def test_global_options_override_the_environment(capsys, stack, seeded, monkeypatch):
    monkeypatch.setenv("CALLS_TABLE", "Calls-that-does-not-exist")
    monkeypatch.setenv("PUSH_STATE_TABLE", "PushState-that-does-not-exist")
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB")
    monkeypatch.delenv("AWS_ENDPOINT_URL")

    code, status = run_json(
        capsys, "--endpoint-url", stack.dynamodb.meta.endpoint_url, "status", "--calls-table", stack.calls_table,
        "--state-table", stack.state_table, "--call-id", seeded["call_id"],
    )  # fmt: skip

    assert code == 0
    assert status["delivery"]["read"]
    assert status["delivery"]["note"] == "no delivery item in the state table: no push has claimed this call"


def test_status_without_a_state_table_shows_the_call_item_and_says_what_it_missed(capsys, stack, seeded, monkeypatch):
    monkeypatch.delenv("PUSH_STATE_TABLE")

    code, out, _ = run(capsys, "status", "--call-id", seeded["call_id"])

    assert code == 0
    assert "state table not read: pass --state-table or set PUSH_STATE_TABLE" in out


def test_replay_needs_the_state_table_and_says_so(capsys, stack, seeded, monkeypatch):
    monkeypatch.delenv("PUSH_STATE_TABLE")

    code, _, err = run(capsys, "replay", "--call-id", seeded["call_id"], "--reason", "x")

    assert code == 2
    assert "no state table: pass --state-table or set PUSH_STATE_TABLE" in err
    assert stack.crm.requests == []


# --- durable delivery: the schedule, a pending attempt, a live claim, an exhausted delivery ------------


def first_attempt_queues_its_retry(call_id: str) -> PushOutcome:
    """One attempt through the function's own wiring, as a stream record would make it.

    The deadline stays 10.5 s away: room for an attempt (10 s), none to wait out
    even a 1 s retry in the invocation, so the retry rides the SQS retry queue
    as every delay over 10 s does, and arrives within a couple of seconds.
    """
    deps = replace(build_deps(Settings.from_env()), deadline=lambda: time.monotonic() + 10.5)
    return push_call(call_id, deps, trigger=f"stream:{uuid.uuid4().hex}")


def next_retry_message(stack: Stack) -> dict[str, Any]:
    """The retry queue's next message, waiting for its delay (long poll; it is due in about a second)."""
    for _ in range(3):
        received = stack.sqs.receive_message(
            QueueUrl=stack.retry_queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=10, AttributeNames=["All"]
        )
        if received.get("Messages"):
            message: dict[str, Any] = received["Messages"][0]
            return message
    raise AssertionError("no message reached the retry queue")


def deliver_to_handler(handler: Any, stack: Stack, message: dict[str, Any]) -> Any:
    """Hand a retry-queue message to the real handler as Lambda's SQS event source does, deleting it on success."""
    event = {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:post-call-push-retry",
                "awsRegion": "us-east-1",
            }
        ]
    }
    response = handler(event)
    if not response.get("batchItemFailures"):
        stack.sqs.delete_message(QueueUrl=stack.retry_queue_url, ReceiptHandle=message["ReceiptHandle"])
    return response


def queue_is_empty(stack: Stack) -> bool:
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=stack.retry_queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return all(int(count) == 0 for count in attributes.values())


def crm_down(_request: Any) -> CrmAnswer:
    return CrmAnswer(status=503, body=b"down for maintenance")


def crm_up(_request: Any) -> CrmAnswer:
    return CrmAnswer()


def test_replay_of_a_call_with_an_attempt_pending_pushes_now_and_the_pending_attempt_does_nothing(
    capsys, stack, sample_call, sample_bot, handler
):
    sample_bot["post_call_push"]["retry_schedule_seconds"] = [1]
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    stack.crm.responder = crm_down
    first = first_attempt_queues_its_retry(call_id)
    assert first.result is not None
    assert first.result.next_attempt_at is not None

    code, status = run_json(capsys, "status", "--call-id", call_id)
    assert code == 0
    assert status["runbook"].startswith("docs/runbook.md#6-a-crm-is-down")
    assert "Nothing to do: the push retries by itself - attempt 2 of 2" in status["diagnosis"]
    assert status["delivery"]["state"] == "scheduled"
    assert status["delivery"]["next_attempt_at"] == first.result.next_attempt_at[:20] + "000Z"  # whole seconds
    assert status["delivery"]["last_error_kind"] == "http_status"

    stack.crm.responder = crm_up  # the CRM is back
    code, report = run_json(capsys, "replay", "--call-id", call_id, "--reason", "CRM back, INC-9", "--by", "asha")
    assert code == 0
    assert report["counts"] == {"ok": 1}
    assert len(stack.crm.requests) == 2

    # The attempt scheduled before the replay arrives: the delivery is done, so it sends nothing.
    response = deliver_to_handler(handler, stack, next_retry_message(stack))

    assert response == {"batchItemFailures": []}
    assert len(stack.crm.requests) == 2
    stored = stack.get_call(call_id)
    assert stored["post_call_push_result"]["status"] == "ok"
    assert stored["post_call_push_result"]["attempts"] == 2
    assert stored["post_call_push_result"]["replay"] == {"by": "asha", "reason": "CRM back, INC-9"}
    assert [(e["status"], e["attempts"]) for e in stored["integration_log"]] == [("rejected", 1), ("ok", 2)]
    assert queue_is_empty(stack)


def test_status_shows_attempts_the_call_item_does_not_have_yet(capsys, stack, sample_call, sample_bot, handler):
    sample_bot["post_call_push"]["retry_schedule_seconds"] = [1, 600]
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    stack.crm.responder = crm_down
    first_attempt_queues_its_retry(call_id)
    deliver_to_handler(handler, stack, next_retry_message(stack))  # attempt 2 fails too: 10 minutes to the third
    assert len(stack.crm.requests) == 2
    capsys.readouterr()  # the handler's metrics (EMF lines on stdout) are not the CLI's output

    code, status = run_json(capsys, "status", "--call-id", call_id)

    assert code == 0
    assert status["latest"]["attempts"] == 1  # the call item is next written when the delivery ends
    assert status["latest_attempt"]["attempts"] == 2
    delivery = status["delivery"]
    assert (delivery["attempts"], delivery["max_attempts"], delivery["state"]) == (2, 3, "scheduled")
    assert 500 <= delivery["next_attempt_in_seconds"] <= 660
    assert [(e["attempts"], e["http_status"], e["recorded_in"]) for e in delivery["unrecorded"]] == [
        (2, 503, "state table")
    ]
    assert [(h["attempts"], h["recorded_in"]) for h in status["history"]] == [(1, "call")]
    assert delivery["claim_held"] is False
    assert "attempt 3 of 3 at" in status["diagnosis"]

    code, out, _ = run(capsys, "status", "--call-id", call_id)
    assert "Latest push: REJECTED HTTP 503 (http_status)" in out
    assert "Delivery: 2 of 3 attempt(s), scheduled: next attempt at" in out
    assert "1 attempt(s) so far only in the state table" in out
    assert "Runbook: docs/runbook.md#6-a-crm-is-down" in out


def test_replay_holds_back_a_call_a_push_holds_now_even_with_force(capsys, stack, seeded):
    call_id = seeded["call_id"]
    # The function's own claim, as a push in flight holds it.
    state = DeliveryStateTable(stack.dynamodb, stack.state_table)
    state.claim(call_id, uuid.uuid4().hex, "stream:ev-1", datetime.now(UTC), 600, force=False)
    lease = int(state.get(call_id)["lease_until"])
    until = datetime.fromtimestamp(lease, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    for extra in ([], ["--force"]):
        code, out, _ = run(capsys, "replay", "--call-id", call_id, "--reason", "INC-3", *extra)
        assert code == 1
        assert f"a push holds the call until {until}" in out

    assert stack.crm.requests == []
    code, status = run_json(capsys, "status", "--call-id", call_id)
    assert status["delivery"]["claim_held"] is True
    assert status["delivery"]["claim_by"] == "stream:ev-1"
    assert "a push is in progress (stream:ev-1 holds the call until" in status["diagnosis"]


def test_an_exhausted_delivery_is_replayed_with_the_command_status_gives(
    capsys, stack, sample_call, sample_bot, handler
):
    sample_bot["post_call_push"]["retry_schedule_seconds"] = []  # one attempt, then exhausted
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    call_id = sample_call["call_id"]
    stack.crm.responder = crm_down
    assert handler(insert_event(sample_call)) == {"batchItemFailures": []}
    capsys.readouterr()  # the handler's metrics (EMF lines on stdout) are not the CLI's output

    code, status = run_json(capsys, "status", "--call-id", call_id)

    assert code == 0
    assert status["delivery"]["exhausted"] is True
    assert status["runbook"].startswith("docs/runbook.md#6-a-crm-is-down")
    assert status["diagnosis"].startswith("delivery exhausted: the CRM answered HTTP 503")
    range_replay = status["next_commands"][2]
    assert range_replay.startswith(
        f"post-call-push replay --bot-id {sample_bot['bot_id']} --status failed,rejected --since 2026-11-25"
    )

    stack.crm.responder = crm_up
    words = shlex.split(range_replay)[1:]
    words.remove("--dry-run")
    code, report = run_json(capsys, *words)

    assert code == 0
    assert [line["call_id"] for line in report["lines"]] == [call_id]
    assert report["counts"] == {"ok": 1}
    assert stack.get_call(call_id)["post_call_push_result"]["status"] == "ok"


def test_status_shows_the_destinations_circuit(capsys, stack, seeded):
    import time

    from aws_lambda_powertools.utilities.circuit_breaker import CircuitBreakerConfig

    from crm_push.adapters.destination_gate import circuit_name, state_table_persistence
    from crm_push.ports import GateKey
    from crm_push.push import destination_of

    bot = stack.dynamodb.get_item(TableName=stack.bots_table, Key={"bot_id": {"S": seeded["bot_id"]}})["Item"]
    destination = destination_of(bot["post_call_push"]["M"]["url"]["S"])
    key = GateKey(destination, seeded["bot_id"])

    code, out, _ = run(capsys, "status", "--call-id", seeded["call_id"])
    assert code == 0
    assert f"Circuit of {destination}: closed" in out

    persistence = state_table_persistence(stack.dynamodb, stack.state_table)
    persistence.configure(CircuitBreakerConfig(recovery_timeout=60), circuit_name(key))
    persistence.save_open(circuit_name(key), 5, int(time.time()))

    code, out, _ = run(capsys, "status", "--call-id", seeded["call_id"], "--json")
    assert code == 0
    circuit = json.loads(out)["circuit"]
    assert (circuit["destination"], circuit["state"], circuit["failure_count"]) == (destination, "OPEN", 5)
    assert circuit["next_probe_at"] is not None
