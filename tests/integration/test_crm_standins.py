"""Each preset's request, sent over real HTTP to its stand-in CRM: one record per call id, answers classified.

The request is built by crm_push.presets and its url rendered by
crm_push.url_templates exactly as the push will; urllib3 sends it, as the
push's sender does. A repeated delivery must update the record the first one
created, and every documented answer must read as contract §14 says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3

from crm_push.preset_config import AnyPreset, parse_preset
from crm_push.presets import AnswerReading, build_preset_request, classify_answer
from crm_push.url_templates import compile_url_template
from scripts.crm_standins import CrmStandins

TOKEN = "tok-3f9a"
CALL_ID = "call-7f3a/β 1"  # a slash, a space and non-ASCII: the key must still be one segment / one value
NOW = datetime(2026, 12, 3, 17, 45, tzinfo=UTC)
HTTP = urllib3.PoolManager(retries=False, timeout=5.0)


@pytest.fixture
def crm() -> Iterator[CrmStandins]:
    with CrmStandins(token=TOKEN) as standins:
        yield standins


def presets_for(crm: CrmStandins) -> dict[str, AnyPreset]:
    return {
        "salesforce": parse_preset({"name": "salesforce", "object": "Lead", "external_id_field": "Call_Id__c"}),
        "hubspot": parse_preset(
            {"name": "hubspot", "object": "contacts", "id_property": "call_id", "base_url": crm.url}
        ),
        "zoho": parse_preset({"name": "zoho", "module": "Leads", "duplicate_check_fields": ["Call_Id"]}),
        "dynamics": parse_preset(
            {"name": "dynamics", "org_url": crm.url, "entity_set": "leads", "alternate_key": "new_callid"}
        ),
    }


FIELDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "salesforce": ({"LastName": "Asha", "Status": "New"}, {"LastName": "Asha", "Status": "Qualified"}),
    "hubspot": ({"firstname": "Asha", "lifecyclestage": "lead"}, {"firstname": "Asha", "lifecyclestage": "customer"}),
    "zoho": ({"Last_Name": "Asha", "Lead_Status": "New"}, {"Last_Name": "Asha", "Lead_Status": "Qualified"}),
    "dynamics": ({"lastname": "Asha", "statuscode": 1}, {"lastname": "Asha", "statuscode": 3}),
}


def send(
    crm: CrmStandins, preset: AnyPreset, fields: dict[str, Any], *, call_id: str = CALL_ID, token: str = TOKEN
) -> tuple[urllib3.BaseHTTPResponse, AnswerReading]:
    request = build_preset_request(preset, call_id, fields)
    url = compile_url_template(request.url_template).render({}, {"instance_url": crm.url, "api_domain": crm.url})
    headers = {
        "Authorization": f"{request.auth_scheme} {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": call_id.encode().decode("latin-1"),
        **request.extra_headers,
    }
    response = HTTP.request(request.method, url, body=json.dumps(request.body).encode(), headers=headers)
    body = response.data.decode()
    return response, classify_answer(preset, response.status, body, dict(response.headers), NOW)


def only_record(crm: CrmStandins, name: str) -> dict[str, Any]:
    tables = crm.records(name)
    records = [record for table in tables.values() for record in table]
    assert len(records) == 1, records
    return records[0]


OK = AnswerReading("ok")


def test_salesforce_twice_is_one_record_updated(crm: CrmStandins) -> None:
    preset = presets_for(crm)["salesforce"]
    first, reading = send(crm, preset, FIELDS["salesforce"][0])
    assert (first.status, reading) == (201, OK)
    assert json.loads(first.data)["created"] is True
    second, reading = send(crm, preset, FIELDS["salesforce"][1])
    assert (second.status, reading) == (200, OK)
    assert json.loads(second.data)["created"] is False
    record = only_record(crm, "salesforce")
    assert record["Call_Id__c"] == CALL_ID
    assert record["Status"] == "Qualified"
    sent = crm.requests_for("salesforce")[0]
    assert sent.method == "PATCH"
    assert sent.path == "/services/data/v62.0/sobjects/Lead/Call_Id__c/call-7f3a%2F%CE%B2%201"


def test_hubspot_twice_is_one_record_updated(crm: CrmStandins) -> None:
    preset = presets_for(crm)["hubspot"]
    first, reading = send(crm, preset, FIELDS["hubspot"][0])
    assert (first.status, reading) == (200, OK)
    assert json.loads(first.data)["results"][0]["new"] is True
    second, reading = send(crm, preset, FIELDS["hubspot"][1])
    assert (second.status, reading) == (200, OK)
    assert json.loads(second.data)["results"][0]["new"] is False
    record = only_record(crm, "hubspot")
    assert record["properties"] == {"firstname": "Asha", "lifecyclestage": "customer", "call_id": CALL_ID}
    assert crm.requests_for("hubspot")[0].json()["inputs"][0]["idProperty"] == "call_id"


def test_zoho_twice_is_one_record_updated(crm: CrmStandins) -> None:
    preset = presets_for(crm)["zoho"]
    first, reading = send(crm, preset, FIELDS["zoho"][0])
    assert (first.status, reading) == (200, OK)
    assert json.loads(first.data)["data"][0]["action"] == "insert"
    second, reading = send(crm, preset, FIELDS["zoho"][1])
    assert (second.status, reading) == (200, OK)
    assert json.loads(second.data)["data"][0]["action"] == "update"
    assert json.loads(second.data)["data"][0]["duplicate_field"] == "Call_Id"
    record = only_record(crm, "zoho")
    assert (record["Call_Id"], record["Lead_Status"]) == (CALL_ID, "Qualified")
    assert crm.requests_for("zoho")[0].headers["Authorization"] == f"Zoho-oauthtoken {TOKEN}"


def test_dynamics_twice_is_one_record_updated(crm: CrmStandins) -> None:
    preset = presets_for(crm)["dynamics"]
    for fields in FIELDS["dynamics"]:
        response, reading = send(crm, preset, fields)
        assert (response.status, reading) == (204, OK)
        assert response.headers["OData-EntityId"].startswith(f"{crm.url}/api/data/v9.2/leads(")
    record = only_record(crm, "dynamics")
    assert (record["new_callid"], record["statuscode"]) == (CALL_ID, 3)
    sent = crm.requests_for("dynamics")[0]
    assert sent.headers["OData-Version"] == "4.0"
    assert sent.path == "/api/data/v9.2/leads(new_callid='call-7f3a%2F%CE%B2%201')"


def test_a_quote_in_the_call_id_stays_inside_the_odata_key(crm: CrmStandins) -> None:
    preset = presets_for(crm)["dynamics"]
    for fields in FIELDS["dynamics"]:
        _, reading = send(crm, preset, fields, call_id="o'brien")
        assert reading == OK
    assert only_record(crm, "dynamics")["new_callid"] == "o'brien"


def test_distinct_calls_are_distinct_records(crm: CrmStandins) -> None:
    presets = presets_for(crm)
    for name, preset in presets.items():
        for call_id in ("call-1", "call-2"):
            _, reading = send(crm, preset, FIELDS[name][0], call_id=call_id)
            assert reading == OK, name
        assert sum(len(table) for table in crm.records(name).values()) == 2, name


@pytest.mark.parametrize("name", ["salesforce", "hubspot", "zoho", "dynamics"])
def test_a_wrong_token_is_refused_and_final(crm: CrmStandins, name: str) -> None:
    response, reading = send(crm, presets_for(crm)[name], FIELDS[name][0], token="wrong")
    assert response.status == 401
    assert (reading.status, reading.error_kind, reading.retryable) == ("rejected", "http_status", False)
    assert crm.records(name) == {} or all(not table for table in crm.records(name).values())


# --- the answers that are not ok -------------------------------------------------------------


def test_salesforce_several_matches_is_300_and_final(crm: CrmStandins) -> None:
    crm.seed_salesforce("Lead", {"Call_Id__c": CALL_ID}, {"Call_Id__c": CALL_ID.upper()})
    response, reading = send(crm, presets_for(crm)["salesforce"], FIELDS["salesforce"][0])
    assert response.status == 300
    assert len(json.loads(response.data)) == 2
    assert reading == AnswerReading(
        "rejected", "http_status", False, None, "several records have this external id (300)"
    )


def test_salesforce_request_limit_is_a_quota(crm: CrmStandins) -> None:
    crm.salesforce_limit_exceeded = True
    response, reading = send(crm, presets_for(crm)["salesforce"], FIELDS["salesforce"][0])
    assert response.status == 403
    assert reading == AnswerReading("rejected", "quota", True, NOW + timedelta(hours=1), "REQUEST_LIMIT_EXCEEDED")
    assert crm.records("salesforce") == {}


def test_salesforce_refuses_the_external_id_in_the_body(crm: CrmStandins) -> None:
    fields = {**FIELDS["salesforce"][0], "Call_Id__c": CALL_ID}
    response, reading = send(crm, presets_for(crm)["salesforce"], fields)
    assert response.status == 400
    assert reading == AnswerReading("rejected", "http_status", False, None, "INVALID_FIELD")


def test_hubspot_daily_limit_is_a_quota_until_midnight(crm: CrmStandins) -> None:
    crm.hubspot_rate_limit_policy = "DAILY"
    response, reading = send(crm, presets_for(crm)["hubspot"], FIELDS["hubspot"][0])
    assert response.status == 429
    assert reading == AnswerReading("rejected", "quota", True, datetime(2026, 12, 4, tzinfo=UTC), "DAILY")


def test_hubspot_ten_second_limit_is_a_retry(crm: CrmStandins) -> None:
    crm.hubspot_rate_limit_policy = "TEN_SECONDLY_ROLLING"
    response, reading = send(crm, presets_for(crm)["hubspot"], FIELDS["hubspot"][0])
    assert response.status == 429
    assert reading == AnswerReading("rejected", "http_status", True, None, "TEN_SECONDLY_ROLLING")


def test_hubspot_refused_input_is_crm_rejected(crm: CrmStandins) -> None:
    crm.hubspot_known_properties = {"contacts": {"firstname", "call_id"}}
    response, reading = send(crm, presets_for(crm)["hubspot"], FIELDS["hubspot"][0])
    assert response.status == 207
    assert reading == AnswerReading("rejected", "crm_rejected", False, None, "VALIDATION_ERROR")
    assert crm.records("hubspot") == {"contacts": []}


def test_zoho_refused_record_in_a_200_is_crm_rejected(crm: CrmStandins) -> None:
    response, reading = send(crm, presets_for(crm)["zoho"], {"Lead_Status": "New"})  # Last_Name is required
    assert response.status == 200
    assert reading == AnswerReading("rejected", "crm_rejected", False, None, "MANDATORY_NOT_FOUND")
    assert crm.records("zoho") == {"Leads": []}


def test_dynamics_throttle_is_a_retry_and_a_long_one_a_quota(crm: CrmStandins) -> None:
    crm.dynamics_retry_after = 30
    response, reading = send(crm, presets_for(crm)["dynamics"], FIELDS["dynamics"][0])
    assert (response.status, response.headers["Retry-After"]) == (429, "30")
    assert reading == AnswerReading("rejected", "http_status", True, None, "0x80072322")
    crm.dynamics_retry_after = 1800
    _, reading = send(crm, presets_for(crm)["dynamics"], FIELDS["dynamics"][0])
    assert reading == AnswerReading("rejected", "quota", True, NOW + timedelta(seconds=1800), "0x80072322")


def test_dynamics_conditional_headers(crm: CrmStandins) -> None:
    preset = presets_for(crm)["dynamics"]
    request = build_preset_request(preset, "call-9", {"lastname": "x"})
    url = compile_url_template(request.url_template).render({})
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = json.dumps(request.body).encode()
    assert HTTP.request("PATCH", url, body=body, headers={**auth, "If-Match": "*"}).status == 404
    assert HTTP.request("PATCH", url, body=body, headers={**auth, "If-None-Match": "*"}).status == 204
    assert HTTP.request("PATCH", url, body=body, headers={**auth, "If-None-Match": "*"}).status == 412


def test_the_json_endpoints_show_records_and_requests_without_credentials(crm: CrmStandins) -> None:
    presets = presets_for(crm)
    for name, preset in presets.items():
        send(crm, preset, FIELDS[name][0])
    records = json.loads(HTTP.request("GET", f"{crm.url}/_standin/records").data)
    assert set(records) == {"salesforce", "hubspot", "zoho", "dynamics"}
    assert records["salesforce"]["Lead"][0]["Call_Id__c"] == CALL_ID
    requests = HTTP.request("GET", f"{crm.url}/_standin/requests")
    assert TOKEN not in requests.data.decode()
    assert [r["preset"] for r in json.loads(requests.data)] == ["salesforce", "hubspot", "zoho", "dynamics"]


def test_wrong_method_and_unknown_path(crm: CrmStandins) -> None:
    assert HTTP.request("POST", f"{crm.url}/services/data/v62.0/sobjects/Lead/X__c/1").status == 405
    assert HTTP.request("GET", f"{crm.url}/nothing").status == 404


def test_salesforce_before_api_46_answers_204_on_update(crm: CrmStandins) -> None:
    preset = parse_preset(
        {"name": "salesforce", "object": "Lead", "external_id_field": "Call_Id__c", "api_version": "45.0"}
    )
    assert send(crm, preset, FIELDS["salesforce"][0])[0].status == 201
    response, reading = send(crm, preset, FIELDS["salesforce"][1])
    assert (response.status, reading) == (204, OK)
