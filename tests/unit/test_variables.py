"""Contract §6: the ``{{namespace.field}}`` variables of one push, and bad input that must not raise."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crm_push.variables import build_push_variables

ROOT = Path(__file__).resolve().parents[2]
KOLKATA = "Asia/Kolkata"


def dynamodb_json(name: str) -> dict[str, Any]:
    """An event file as boto3 reads it from DynamoDB: every number a Decimal."""
    text = (ROOT / "events" / name).read_text()
    loaded: dict[str, Any] = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    return loaded


SAMPLE_CALL = dynamodb_json("sample_call.json")
SAMPLE_BOT = dynamodb_json("sample_bot.json")


@pytest.fixture
def call() -> dict[str, Any]:
    return copy.deepcopy(SAMPLE_CALL)


def core_payload(recording_url: str = "", analysis_keys: list[str] | None = None) -> dict[str, Any]:
    """What the core passes as ``payload`` (push.prepare_push): recording URL and the bot's analysis keys."""
    keys = SAMPLE_BOT["analysis_keys"] if analysis_keys is None else analysis_keys
    return {"recording_url": recording_url, "analysis_keys": list(keys)}


def build(call_doc: Any, payload: dict[str, Any] | None = None, tz: str | None = KOLKATA) -> dict[str, Any]:
    return build_push_variables(call_doc, core_payload() if payload is None else payload, tz)


# --- call.* -------------------------------------------------------------------------


def test_connected_event_fields_become_call_variables(call: dict[str, Any]) -> None:
    variables = build(call)

    assert variables["call.from_number"] == "+919812345678"
    assert variables["call.campaign_id"] == "CMP-2026-11-EMI"
    assert variables["call.direction"] == "outbound"


@pytest.mark.parametrize("header", ["X-Lead-Id", "x-lead-id", "X-LEAD-ID", "x-Lead-Id"])
def test_x_sip_header_of_any_case_is_a_call_variable_under_its_own_name(call: dict[str, Any], header: str) -> None:
    call["sip_headers"] = {header: "LD-1"}

    variables = build(call)

    assert variables[f"call.{header}"] == "LD-1"


def test_x_sip_header_keeps_its_decimal_value_for_the_template_to_format(call: dict[str, Any]) -> None:
    call["sip_headers"] = {"X-Priority": Decimal("3")}

    assert build(call)["call.X-Priority"] == Decimal("3")


@pytest.mark.parametrize("header", ["From", "To", "User-Agent", "Xylophone", "X_Lead", "Via-X-Lead"])
def test_sip_header_not_starting_with_x_dash_is_not_a_call_variable(call: dict[str, Any], header: str) -> None:
    call["sip_headers"] = {header: "value", "X-Lead-Id": "LD-1"}

    variables = build(call)

    assert f"call.{header}" not in variables
    assert "call.X-Lead-Id" in variables


def test_sip_headers_json_is_all_headers_as_one_compact_json_object(call: dict[str, Any]) -> None:
    call["sip_headers"] = {"X-Lead-Id": "LD-1", "From": "<sip:a@b>", "X-Count": Decimal("2"), "X-Rate": Decimal("1.50")}

    variables = build(call)

    assert variables["call.sip_headers_json"] == '{"X-Lead-Id":"LD-1","From":"<sip:a@b>","X-Count":2,"X-Rate":1.5}'


def test_sip_headers_json_of_the_sample_call_holds_every_header(call: dict[str, Any]) -> None:
    headers = json.loads(build(call)["call.sip_headers_json"])

    assert headers == SAMPLE_CALL["sip_headers"]


def test_sip_headers_json_is_an_empty_object_when_the_call_has_no_headers(call: dict[str, Any]) -> None:
    del call["sip_headers"]

    assert build(call)["call.sip_headers_json"] == "{}"


def test_x_sip_header_overrides_a_connected_event_field_of_the_same_name(call: dict[str, Any]) -> None:
    call["connected_event"] = {"X-Lead-Id": "from-event"}
    call["sip_headers"] = {"X-Lead-Id": "from-header"}

    assert build(call)["call.X-Lead-Id"] == "from-header"


# --- crm.* --------------------------------------------------------------------------


def test_crm_data_fields_become_crm_variables_with_their_values_untouched(call: dict[str, Any]) -> None:
    variables = build(call)

    assert variables["crm.CUSTOMERNAME"] == "Asha Verma"
    assert variables["crm.EMI_AMOUNT"] == Decimal("1499")
    assert variables["crm.ADDRESS"] == {"city": "Pune", "pin": "411001"}


def test_crm_variables_are_only_the_crm_data_fields(call: dict[str, Any]) -> None:
    crm_names = {name for name in build(call) if name.startswith("crm.")}

    assert crm_names == {f"crm.{field}" for field in SAMPLE_CALL["crm_data"]}


# --- result.* -----------------------------------------------------------------------


def test_result_call_id_is_the_call_items_id(call: dict[str, Any]) -> None:
    call["call_id"] = "call-under-test"

    assert build(call)["result.call_id"] == "call-under-test"


def test_result_recording_url_comes_from_the_payload_not_the_stored_one(call: dict[str, Any]) -> None:
    public = "https://api.example.com/api/v1/public/recordings/rec_4QWJ9n2LxT0aZk7s"

    variables = build(call, core_payload(recording_url=public))

    assert variables["result.recording_url"] == public


def test_empty_recording_url_in_the_payload_overrides_the_stored_s3_url(call: dict[str, Any]) -> None:
    assert call["recording_url"].startswith("s3://")

    assert build(call, core_payload(recording_url=""))["result.recording_url"] == ""


def test_call_duration_seconds_is_an_integer_from_start_to_end(call: dict[str, Any]) -> None:
    duration = build(call)["result.call_duration_seconds"]

    assert duration == 156  # 09:30:02 -> 09:32:38
    assert type(duration) is int


def test_call_duration_seconds_truncates_fractional_seconds(call: dict[str, Any]) -> None:
    call["start_time"], call["end_time"] = "2026-11-25T09:30:02.100Z", "2026-11-25T09:30:12.900Z"  # 10.8 s

    assert build(call)["result.call_duration_seconds"] == 10


def test_call_duration_seconds_is_empty_when_end_is_before_start(call: dict[str, Any]) -> None:
    call["start_time"], call["end_time"] = "2026-11-25T09:30:02Z", "2026-11-25T09:29:00Z"

    assert build(call)["result.call_duration_seconds"] == ""


@pytest.mark.parametrize(
    ("disconnected_by", "disposition"),
    [("customer", "Connected"), ("bot", "Connected"), ("timeout", "Connected"), ("error", "Failed")],
)
def test_disposition_follows_who_disconnected(call: dict[str, Any], disconnected_by: str, disposition: str) -> None:
    call["disconnected_by"] = disconnected_by

    assert build(call)["result.disposition"] == disposition


@pytest.mark.parametrize("disconnected_by", ["agent", "", "Customer", "ERROR", None, Decimal("1"), ["bot"]])
def test_disposition_is_unknown_for_any_other_disconnected_by(call: dict[str, Any], disconnected_by: Any) -> None:
    call["disconnected_by"] = disconnected_by

    assert build(call)["result.disposition"] == "Unknown"


def test_disposition_is_unknown_when_disconnected_by_is_missing(call: dict[str, Any]) -> None:
    del call["disconnected_by"]

    assert build(call)["result.disposition"] == "Unknown"


def test_result_disposition_is_distinct_from_the_llm_analysis_disposition(call: dict[str, Any]) -> None:
    variables = build(call)

    assert variables["result.disposition"] == "Connected"
    assert variables["analysis.DISPOSITION"] == "PROMISE_TO_PAY"


def test_disconnected_by_is_passed_through(call: dict[str, Any]) -> None:
    assert build(call)["result.disconnected_by"] == "customer"


def test_call_times_are_in_the_bot_timezone_as_date_and_time(call: dict[str, Any]) -> None:
    variables = build(call, tz=KOLKATA)  # +05:30

    assert variables["result.call_start_time"] == "2026-11-25 15:00:02"
    assert variables["result.call_answer_time"] == "2026-11-25 15:00:09"
    assert variables["result.call_end_time"] == "2026-11-25 15:02:38"


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC", "2026-11-25 09:30:02"),
        (None, "2026-11-25 09:30:02"),  # the contract's default zone
        ("America/New_York", "2026-11-25 04:30:02"),  # EST, -05:00
        ("Asia/Kathmandu", "2026-11-25 15:15:02"),  # +05:45
    ],
)
def test_start_time_is_formatted_in_the_given_zone(call: dict[str, Any], tz: str | None, expected: str) -> None:
    assert build(call, tz=tz)["result.call_start_time"] == expected


def test_start_time_with_an_offset_is_converted_to_the_bot_timezone(call: dict[str, Any]) -> None:
    call["start_time"] = "2026-11-25T04:30:02-05:00"

    assert build(call, tz=KOLKATA)["result.call_start_time"] == "2026-11-25 15:00:02"


def test_local_time_crosses_midnight_into_the_next_day(call: dict[str, Any]) -> None:
    call["end_time"] = "2026-11-25T20:00:00Z"

    assert build(call, tz=KOLKATA)["result.call_end_time"] == "2026-11-26 01:30:00"


def test_answer_time_is_the_start_time_for_websocket_calls(call: dict[str, Any]) -> None:
    call["transport"] = "websocket"
    assert call["answer_time"] != call["start_time"]

    variables = build(call)

    assert variables["result.call_answer_time"] == "2026-11-25 15:00:02"


def test_answer_time_is_the_start_time_when_answer_time_is_absent(call: dict[str, Any]) -> None:
    del call["answer_time"]

    assert build(call)["result.call_answer_time"] == "2026-11-25 15:00:02"


def test_transcript_is_a_compact_json_array_string(call: dict[str, Any]) -> None:
    call["transcript"] = [{"role": "bot", "text": "Hello", "t": Decimal("1.2")}]

    assert build(call)["result.transcript"] == '[{"role":"bot","text":"Hello","t":1.2}]'


@pytest.mark.parametrize(
    ("stored", "sent"),
    [
        (Decimal("1.5"), "1.5"),
        (Decimal("7"), "7"),
        (Decimal("7.0"), "7"),
        (Decimal("11.50"), "11.5"),
        (Decimal("0.1"), "0.1"),
        (Decimal("-3"), "-3"),
    ],
)
def test_transcript_numbers_are_plain_json_numbers(call: dict[str, Any], stored: Decimal, sent: str) -> None:
    call["transcript"] = [{"t": stored}]

    assert build(call)["result.transcript"] == f'[{{"t":{sent}}}]'


def test_transcript_of_the_sample_call_parses_back_to_its_turns(call: dict[str, Any]) -> None:
    turns = json.loads(build(call)["result.transcript"])

    assert [turn["role"] for turn in turns] == ["bot", "customer", "bot", "customer"]
    assert [turn["t"] for turn in turns] == [1.2, 4.8, 6.1, 11.5]


def test_transcript_keeps_non_ascii_text_as_is(call: dict[str, Any]) -> None:
    call["transcript"] = [{"role": "bot", "text": "नमस्ते"}]

    assert "नमस्ते" in build(call)["result.transcript"]


def test_empty_transcript_is_an_empty_json_array(call: dict[str, Any]) -> None:
    call["transcript"] = []

    assert build(call)["result.transcript"] == "[]"


def test_every_transfer_attribute_is_a_result_variable(call: dict[str, Any]) -> None:
    call.update(
        {
            "transfer_status": "transferred",
            "transfer_target": "+911234",
            "transfer_attempts": Decimal("2"),
            "transfer_details": {"queue": "hi"},
            "transfer_": "bare prefix",
        }
    )

    variables = build(call)

    assert variables["result.transfer_status"] == "transferred"
    assert variables["result.transfer_target"] == "+911234"
    assert variables["result.transfer_attempts"] == Decimal("2")
    assert variables["result.transfer_details"] == {"queue": "hi"}
    assert variables["result.transfer_"] == "bare prefix"


@pytest.mark.parametrize("attribute", ["transferred", "is_transfer_done", "Transfer_status", "transfer"])
def test_attribute_not_starting_with_transfer_underscore_is_not_a_result_variable(
    call: dict[str, Any], attribute: str
) -> None:
    call[attribute] = "x"

    assert f"result.{attribute}" not in build(call)


def test_empty_transfer_attribute_is_kept_as_empty(call: dict[str, Any]) -> None:
    assert build(call)["result.transfer_target"] == ""


def test_system_namespace_is_an_alias_of_result(call: dict[str, Any]) -> None:
    variables = build(call, core_payload(recording_url="https://rec"))

    result = {name.removeprefix("result."): v for name, v in variables.items() if name.startswith("result.")}
    system = {name.removeprefix("system."): v for name, v in variables.items() if name.startswith("system.")}
    assert system == result
    assert {"call_id", "recording_url", "transcript", "transfer_status"} <= set(system)


# --- analysis.* and qc.* ------------------------------------------------------------


def test_analysis_fields_become_analysis_variables(call: dict[str, Any]) -> None:
    variables = build(call)

    assert variables["analysis.PTP_DATE"] == "2026-11-27"
    assert variables["analysis.SUMMARY"].startswith("Customer confirmed")


def test_analysis_key_missing_from_the_analysis_is_pre_seeded_empty(call: dict[str, Any]) -> None:
    assert "CALLBACK_TIME" not in call["analysis"]

    assert build(call)["analysis.CALLBACK_TIME"] == ""


def test_analysis_value_wins_over_the_pre_seeded_empty_string(call: dict[str, Any]) -> None:
    variables = build(call, core_payload(analysis_keys=["DISPOSITION"]))

    assert variables["analysis.DISPOSITION"] == "PROMISE_TO_PAY"


def test_every_analysis_key_is_pre_seeded_when_the_call_has_no_analysis(call: dict[str, Any]) -> None:
    del call["analysis"]

    variables = build(call, core_payload(analysis_keys=["DISPOSITION", "PTP_DATE"]))

    assert variables["analysis.DISPOSITION"] == ""
    assert variables["analysis.PTP_DATE"] == ""


def test_analysis_keys_come_from_the_payload_the_core_passes(call: dict[str, Any]) -> None:
    variables = build(call, core_payload(analysis_keys=["NEXT_ACTION"]))

    assert variables["analysis.NEXT_ACTION"] == ""
    assert "analysis.CALLBACK_TIME" not in variables


@pytest.mark.parametrize("key", ["empathy_score", "compliance_score", "overall_score", "remarks"])
def test_qc_key_is_pre_seeded_empty_when_the_call_has_no_qc(call: dict[str, Any], key: str) -> None:
    del call["qc"]

    assert build(call)[f"qc.{key}"] == ""


def test_qc_values_win_over_the_pre_seeded_keys_and_extra_keys_are_kept(call: dict[str, Any]) -> None:
    call["qc"] = {"overall_score": Decimal("9"), "greeting_ok": True}

    variables = build(call)

    assert variables["qc.overall_score"] == Decimal("9")
    assert variables["qc.greeting_ok"] is True
    assert variables["qc.remarks"] == ""


def test_only_the_six_namespaces_appear(call: dict[str, Any]) -> None:
    namespaces = {name.split(".", 1)[0] for name in build(call)}

    assert namespaces == {"call", "crm", "result", "system", "analysis", "qc"}


def test_the_call_item_is_not_modified(call: dict[str, Any]) -> None:
    before = copy.deepcopy(call)

    build(call, core_payload(recording_url="https://rec"))

    assert call == before


# --- bad input never raises ----------------------------------------------------------


def test_missing_start_time_empties_the_start_answer_and_duration_only(call: dict[str, Any]) -> None:
    del call["start_time"]
    del call["answer_time"]

    variables = build(call)

    assert variables["result.call_start_time"] == ""
    assert variables["result.call_answer_time"] == ""
    assert variables["result.call_duration_seconds"] == ""
    assert variables["result.call_end_time"] == "2026-11-25 15:02:38"
    assert variables["crm.CUSTOMERNAME"] == "Asha Verma"


@pytest.mark.parametrize("transcript", ["not a list", {"role": "bot"}, Decimal("3"), None])
def test_transcript_that_is_not_a_list_becomes_empty(call: dict[str, Any], transcript: Any) -> None:
    call["transcript"] = transcript

    variables = build(call)

    assert variables["result.transcript"] == ""
    assert variables["result.disposition"] == "Connected"


def test_transcript_holding_a_value_json_cannot_carry_becomes_empty(call: dict[str, Any]) -> None:
    call["transcript"] = [{"t": Decimal("NaN")}, {"audio": object()}]

    variables = build(call)

    assert variables["result.transcript"] == ""
    assert variables["result.call_id"] == SAMPLE_CALL["call_id"]


def test_crm_data_that_is_a_string_gives_no_crm_variables(call: dict[str, Any]) -> None:
    call["crm_data"] = '{"CUSTOMERNAME": "Asha"}'

    variables = build(call)

    assert not [name for name in variables if name.startswith("crm.")]
    assert variables["call.from_number"] == "+919812345678"


def test_connected_event_that_is_a_list_gives_no_event_variables(call: dict[str, Any]) -> None:
    call["connected_event"] = [{"from_number": "+91"}]

    variables = build(call)

    assert "call.from_number" not in variables
    assert variables["call.X-Lead-Id"] == "LD-558201"
    assert variables["crm.CUSTOMERNAME"] == "Asha Verma"


def test_sip_headers_that_are_not_a_map_give_an_empty_headers_json(call: dict[str, Any]) -> None:
    call["sip_headers"] = "X-Lead-Id: LD-1"

    variables = build(call)

    assert variables["call.sip_headers_json"] == "{}"
    assert "call.X-Lead-Id" not in variables


def test_sip_headers_json_is_empty_when_a_header_cannot_be_json(call: dict[str, Any]) -> None:
    call["sip_headers"] = {"X-Lead-Id": "LD-1", "X-Bad": Decimal("Infinity")}

    variables = build(call)

    assert variables["call.sip_headers_json"] == ""
    assert variables["call.X-Lead-Id"] == "LD-1"


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-11-25T09:30:02",  # naive: refused, not guessed at
        "2026-11-25 09:30:02",  # naive, space separated
        "yesterday",
        "2026-13-45T00:00:00Z",
        "",
        Decimal("1764063002"),  # epoch seconds are not the contract's ISO-8601
        None,
        ["2026-11-25T09:30:02Z"],
    ],
)
def test_naive_or_malformed_start_time_becomes_empty(call: dict[str, Any], timestamp: Any) -> None:
    call["start_time"] = timestamp

    variables = build(call)

    assert variables["result.call_start_time"] == ""
    assert variables["result.call_duration_seconds"] == ""
    assert variables["result.call_end_time"] == "2026-11-25 15:02:38"


@pytest.mark.parametrize(
    "timestamp",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"],  # outside datetime's range once in UTC
)
def test_timestamp_outside_the_representable_range_becomes_empty(call: dict[str, Any], timestamp: str) -> None:
    call["end_time"] = timestamp

    variables = build(call)

    assert variables["result.call_end_time"] == ""
    assert variables["result.call_start_time"] == "2026-11-25 15:00:02"


def test_timestamp_at_the_edge_of_the_range_that_has_no_local_time_becomes_empty(call: dict[str, Any]) -> None:
    call["start_time"] = "0001-01-01T00:00:00Z"  # valid UTC, but before year 1 in New York

    variables = build(call, tz="America/New_York")

    assert variables["result.call_start_time"] == ""
    assert variables["result.call_end_time"] == "2026-11-25 04:32:38"


def test_answer_time_that_is_malformed_falls_back_to_the_start_time(call: dict[str, Any]) -> None:
    call["answer_time"] = "soon"

    assert build(call)["result.call_answer_time"] == "2026-11-25 15:00:02"


def test_unknown_timezone_falls_back_to_utc_with_a_warning(
    call: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    unknown = f"Mars/Olympus_{uuid.uuid4().hex[:8]}"  # fresh name: the zone look-up is cached per name

    with caplog.at_level(logging.WARNING, logger="crm_push.variables"):
        variables = build(call, tz=unknown)

    assert variables["result.call_start_time"] == "2026-11-25 09:30:02"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "timezone" in caplog.records[0].getMessage()


@pytest.mark.parametrize("tz", ["Asia/", "../../etc/passwd", "Asia/Kolkata\x00", "America"])
def test_timezone_name_that_is_not_a_zone_falls_back_to_utc(call: dict[str, Any], tz: str) -> None:
    assert build(call, tz=tz)["result.call_start_time"] == "2026-11-25 09:30:02"


@pytest.mark.parametrize("analysis", ["PROMISE_TO_PAY", ["DISPOSITION"], None])
def test_analysis_that_is_not_a_map_leaves_the_pre_seeded_keys(call: dict[str, Any], analysis: Any) -> None:
    call["analysis"] = analysis

    variables = build(call, core_payload(analysis_keys=["DISPOSITION"]))

    assert [name for name in variables if name.startswith("analysis.")] == ["analysis.DISPOSITION"]
    assert variables["analysis.DISPOSITION"] == ""


def test_analysis_keys_that_are_a_string_are_not_split_into_characters(call: dict[str, Any]) -> None:
    variables = build(call, {"recording_url": "", "analysis_keys": "CALLBACK_TIME"})

    assert "analysis.C" not in variables
    assert "analysis.CALLBACK_TIME" not in variables


def test_analysis_keys_that_are_not_strings_are_skipped(call: dict[str, Any]) -> None:
    variables = build(call, {"recording_url": "", "analysis_keys": [Decimal("1"), None, "NEXT_ACTION"]})

    assert variables["analysis.NEXT_ACTION"] == ""
    assert "analysis.1" not in variables


def test_qc_that_is_not_a_map_leaves_the_four_pre_seeded_keys(call: dict[str, Any]) -> None:
    call["qc"] = "9/10"

    qc = {name: value for name, value in build(call).items() if name.startswith("qc.")}

    assert qc == {"qc.empathy_score": "", "qc.compliance_score": "", "qc.overall_score": "", "qc.remarks": ""}


def test_disconnected_by_that_is_not_a_string_becomes_empty(call: dict[str, Any]) -> None:
    call["disconnected_by"] = {"who": "customer"}

    assert build(call)["result.disconnected_by"] == ""


def test_call_doc_that_is_not_a_map_still_gives_the_payload_and_pre_seeded_variables() -> None:
    variables = build_push_variables(["not", "a", "call"], core_payload(recording_url="https://rec"), KOLKATA)  # type: ignore[arg-type]

    assert variables["result.recording_url"] == "https://rec"
    assert variables["result.disposition"] == "Unknown"
    assert variables["analysis.CALLBACK_TIME"] == ""
    assert variables["qc.remarks"] == ""


def test_empty_call_doc_gives_every_result_variable_empty_or_unknown() -> None:
    variables = build_push_variables({}, {}, None)

    assert variables["result.call_id"] == ""
    assert variables["result.recording_url"] == ""
    assert variables["result.call_start_time"] == ""
    assert variables["result.transcript"] == ""
    assert variables["result.disposition"] == "Unknown"
    assert variables["call.sip_headers_json"] == "{}"
