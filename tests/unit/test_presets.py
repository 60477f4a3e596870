"""CRM presets (contract §14): the config, the request each makes, what each answer means, and lint."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import pytest

from crm_push.errors import ConfigError
from crm_push.preset_config import (
    DynamicsPreset,
    HubspotPreset,
    SalesforcePreset,
    ZohoPreset,
    parse_preset,
    parse_response,
)
from crm_push.presets import (
    PRESETS,
    AnswerReading,
    build_preset_request,
    classify_answer,
    preset_findings,
)
from crm_push.response_reading import parse_ok_when
from crm_push.url_templates import compile_url_template

NOW = datetime(2026, 12, 3, 17, 45, 12, tzinfo=UTC)
CALL_ID = "call-7f3a"
FIELDS = {"LastName": "Asha", "Phone": "+15550100"}

SALESFORCE = parse_preset({"name": "salesforce", "object": "Lead", "external_id_field": "Call_Id__c"})
HUBSPOT = parse_preset({"name": "hubspot", "object": "contacts", "id_property": "call_id"})
ZOHO = parse_preset({"name": "zoho", "module": "Leads", "duplicate_check_fields": ["Call_Id", "Email"]})
DYNAMICS = parse_preset(
    {
        "name": "dynamics",
        "org_url": "https://acme.crm.dynamics.com",
        "entity_set": "leads",
        "alternate_key": "new_callid",
    }
)
AUTH = {"instance_url": "https://acme.my.salesforce.com", "api_domain": "https://www.zohoapis.eu"}


def url_of(preset: Any, call_id: str = CALL_ID) -> str:
    request = build_preset_request(preset, call_id, FIELDS)
    return compile_url_template(request.url_template).render({}, AUTH)


# --- config ----------------------------------------------------------------------------------


def test_defaults_and_types() -> None:
    assert isinstance(SALESFORCE, SalesforcePreset)
    assert SALESFORCE.api_version == "62.0"
    assert isinstance(HUBSPOT, HubspotPreset)
    assert HUBSPOT.base_url == "https://api.hubapi.com"
    assert isinstance(ZOHO, ZohoPreset)
    assert ZOHO.duplicate_check_fields == ("Call_Id", "Email")
    assert isinstance(DYNAMICS, DynamicsPreset)
    assert parse_preset(SALESFORCE) is SALESFORCE


@pytest.mark.parametrize(
    ("value", "version"),
    [("v58.0", "58.0"), (Decimal("61.0"), "61.0"), (60, "60.0"), (59.0, "59.0"), (" 62.0 ", "62.0")],
)
def test_salesforce_api_version_spellings(value: Any, version: str) -> None:
    preset = parse_preset({"name": "Salesforce", "object": "Lead", "external_id_field": "X__c", "api_version": value})
    assert isinstance(preset, SalesforcePreset)
    assert preset.api_version == version


def test_a_single_duplicate_check_field_may_be_text() -> None:
    preset = parse_preset({"name": "zoho", "module": "Leads", "duplicate_check_fields": "Call_Id"})
    assert isinstance(preset, ZohoPreset)
    assert preset.duplicate_check_fields == ("Call_Id",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("salesforce", "must be a map"),
        ({"object": "Lead"}, "needs a name: one of salesforce, hubspot, zoho, dynamics"),
        ({"name": "salesfroce"}, "did you mean 'salesforce'"),
        (
            {"name": "salesforce", "object": "Lead"},
            "preset salesforce needs external_id_field: the External ID field on the object",
        ),
        ({"name": "salesforce", "external_id_field": "X__c"}, "needs object"),
        (
            {"name": "salesforce", "object": "Lead", "external_id_field": "X__c", "external_id": "X__c"},
            "has no key 'external_id'; did you mean 'external_id_field'?",
        ),
        ({"name": "salesforce", "object": "Lead/../x", "external_id_field": "X__c"}, "object: must be an API name"),
        ({"name": "salesforce", "object": "Lead", "external_id_field": "X__c", "api_version": "latest"}, "62.0"),
        ({"name": "salesforce", "object": "Lead", "external_id_field": "X__c", "api_version": True}, "62.0"),
        ({"name": "hubspot", "object": "contacts"}, "needs id_property: a property with unique values"),
        (
            {"name": "hubspot", "object": "contacts", "id_property": "call_id", "base_url": "https://h/x"},
            "base_url must be only scheme://host[:port]",
        ),
        ({"name": "hubspot", "object": "con tacts", "id_property": "call_id"}, "object: must be an API name"),
        ({"name": "zoho", "module": "Leads"}, "needs duplicate_check_fields"),
        ({"name": "zoho", "module": "Leads", "duplicate_check_fields": []}, "at least one field"),
        ({"name": "zoho", "module": "Leads", "duplicate_check_fields": {"Call_Id"}}, "must be a list"),
        ({"name": "zoho", "module": "Leads", "duplicate_check_fields": ["A", "A"]}, "names a field twice"),
        ({"name": "zoho", "module": "Leads", "duplicate_check_fields": ["A"] * 11}, "at most 10"),
        ({"name": "dynamics", "entity_set": "leads", "alternate_key": "k"}, "needs org_url: the environment url"),
        (
            {"name": "dynamics", "org_url": "ftp://x", "entity_set": "leads", "alternate_key": "k"},
            "org_url must start with https://",
        ),
        (
            {"name": "dynamics", "org_url": "https://o", "entity_set": "leads", "alternate_key": "k'or'1"},
            "alternate_key: must be an API name",
        ),
    ],
)
def test_invalid_preset_configs_are_config_errors(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        parse_preset(value)


def test_response_config() -> None:
    response = parse_response({"ok_when": {"path": "ok", "equals": True}})
    assert response.ok_when is not None
    assert response.ok_when.steps == ("ok",)
    assert parse_response({}).ok_when is None
    with pytest.raises(ConfigError, match="needs equals"):
        parse_response({"ok_when": {"path": "ok"}})
    with pytest.raises(ConfigError, match="no key 'ok'"):
        parse_response({"ok": {"path": "ok", "equals": 1}})
    with pytest.raises(ConfigError, match="must be a map"):
        parse_response([])


# --- requests --------------------------------------------------------------------------------


def test_salesforce_request() -> None:
    request = build_preset_request(SALESFORCE, CALL_ID, FIELDS)
    assert (request.method, request.auth_scheme, request.extra_headers) == ("PATCH", "Bearer", {})
    assert request.body == FIELDS
    assert url_of(SALESFORCE) == (
        "https://acme.my.salesforce.com/services/data/v62.0/sobjects/Lead/Call_Id__c/call-7f3a"
    )


def test_hubspot_request() -> None:
    request = build_preset_request(HUBSPOT, CALL_ID, FIELDS)
    assert (request.method, request.auth_scheme) == ("POST", "Bearer")
    assert request.body == {"inputs": [{"idProperty": "call_id", "id": CALL_ID, "properties": FIELDS}]}
    assert url_of(HUBSPOT) == "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert"


def test_zoho_request_puts_the_call_id_in_the_first_duplicate_check_field() -> None:
    request = build_preset_request(ZOHO, CALL_ID, {**FIELDS, "Call_Id": "from the mapper"})
    assert (request.method, request.auth_scheme) == ("POST", "Zoho-oauthtoken")
    assert request.body == {
        "data": [{**FIELDS, "Call_Id": CALL_ID}],
        "duplicate_check_fields": ["Call_Id", "Email"],
    }
    assert url_of(ZOHO) == "https://www.zohoapis.eu/crm/v8/Leads/upsert"


def test_dynamics_request() -> None:
    request = build_preset_request(DYNAMICS, CALL_ID, FIELDS)
    assert (request.method, request.auth_scheme) == ("PATCH", "Bearer")
    assert request.extra_headers == {"OData-Version": "4.0"}
    assert request.body == FIELDS
    assert url_of(DYNAMICS) == "https://acme.crm.dynamics.com/api/data/v9.2/leads(new_callid='call-7f3a')"


def test_an_odd_call_id_stays_one_key() -> None:
    odd = "a/b?c#d'e {{x}}"
    assert url_of(SALESFORCE, odd).endswith("/Call_Id__c/a%2Fb%3Fc%23d%27e%20%7B%7Bx%7D%7D")
    # OData doubles a quote inside a string literal, then the url encodes it.
    assert url_of(DYNAMICS, odd).endswith("(new_callid='a%2Fb%3Fc%23d%27%27e%20%7B%7Bx%7D%7D')")
    assert build_preset_request(HUBSPOT, odd, {}).body["inputs"][0]["id"] == odd


@pytest.mark.parametrize("call_id", ["", ".", ".."])
def test_a_call_id_that_names_no_record_is_refused(call_id: str) -> None:
    with pytest.raises(ConfigError):
        build_preset_request(SALESFORCE, call_id, FIELDS)


def test_the_mapped_fields_are_not_shared_with_the_caller() -> None:
    fields = dict(FIELDS)
    request = build_preset_request(SALESFORCE, CALL_ID, fields)
    request.body["LastName"] = "changed"
    assert fields == FIELDS


def test_each_preset_is_described_as_data() -> None:
    assert set(PRESETS) == {"salesforce", "hubspot", "zoho", "dynamics"}
    for name, spec in PRESETS.items():
        assert spec.name == name
        assert spec.method in ("POST", "PATCH")


# --- answers ---------------------------------------------------------------------------------


def read(
    preset: Any, status: int, body: Any = "", headers: dict[str, str] | None = None, **kwargs: Any
) -> AnswerReading:
    text = body if isinstance(body, str) else json.dumps(body)
    return classify_answer(preset, status, text, headers or {}, NOW, **kwargs)


OK = AnswerReading("ok")


def final(error: str | None = None, kind: str = "http_status") -> AnswerReading:
    return AnswerReading("rejected", kind, False, None, error)  # type: ignore[arg-type]


def retry(error: str | None = None) -> AnswerReading:
    return AnswerReading("rejected", "http_status", True, None, error)


def quota(until: datetime, error: str | None) -> AnswerReading:
    return AnswerReading("rejected", "quota", True, until, error)


@pytest.mark.parametrize("status", [200, 201, 204])
def test_salesforce_ok(status: int) -> None:
    assert read(SALESFORCE, status, {"id": "00Q1", "success": True, "errors": [], "created": True}) == OK


def test_salesforce_several_matches_is_final() -> None:
    body = ["/services/data/v62.0/sobjects/Lead/00Q1", "/services/data/v62.0/sobjects/Lead/00Q2"]
    assert read(SALESFORCE, 300, body) == final("several records have this external id (300)")


def test_salesforce_400_is_final_with_its_error_code() -> None:
    body = [{"errorCode": "INVALID_FIELD", "message": "No such column 'Phnoe' on sobject of type Lead"}]
    assert read(SALESFORCE, 400, body) == final("INVALID_FIELD")


def test_salesforce_request_limit_is_a_quota_for_an_hour() -> None:
    body = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert read(SALESFORCE, 403, body) == quota(NOW + timedelta(hours=1), "REQUEST_LIMIT_EXCEEDED")
    assert read(SALESFORCE, 403, body, {"retry-after": "7200"}) == quota(
        NOW + timedelta(hours=2), "REQUEST_LIMIT_EXCEEDED"
    )


def test_salesforce_other_403_is_final() -> None:
    body = [{"errorCode": "INSUFFICIENT_ACCESS", "message": "no"}]
    assert read(SALESFORCE, 403, body) == final("INSUFFICIENT_ACCESS")
    assert read(SALESFORCE, 410, "") == final()
    assert read(SALESFORCE, 503, "") == retry()


def test_hubspot_ok_and_per_record_errors() -> None:
    created = {"status": "COMPLETE", "results": [{"id": "51", "new": True, "properties": {}}]}
    assert read(HUBSPOT, 200, created) == OK
    refused = {
        "status": "COMPLETE",
        "results": [],
        "numErrors": 1,
        "errors": [{"status": "error", "category": "VALIDATION_ERROR", "message": "Property values were not valid"}],
    }
    assert read(HUBSPOT, 207, refused) == final("VALIDATION_ERROR", "crm_rejected")
    assert read(HUBSPOT, 200, {"errors": ["odd"]}) == final("errors", "crm_rejected")
    assert read(HUBSPOT, 200, {"errors": []}) == OK


def test_hubspot_daily_limit_is_a_quota_until_midnight_utc() -> None:
    body = {"status": "error", "errorType": "RATE_LIMIT", "policyName": "DAILY", "message": "daily limit"}
    assert read(HUBSPOT, 429, body) == quota(datetime(2026, 12, 4, tzinfo=UTC), "DAILY")
    # Measured in UTC whatever zone "now" is given in.
    late = NOW.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert classify_answer(HUBSPOT, 429, json.dumps(body), {}, late).quota_until == datetime(2026, 12, 4, tzinfo=UTC)


def test_hubspot_ten_second_limit_is_an_ordinary_retry() -> None:
    body = {"status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}
    assert read(HUBSPOT, 429, body, {"Retry-After": "10"}) == retry("TEN_SECONDLY_ROLLING")
    assert read(HUBSPOT, 401, {"category": "INVALID_AUTHENTICATION", "message": "x"}) == final("INVALID_AUTHENTICATION")


def test_zoho_reads_the_record_status() -> None:
    ok = {"data": [{"code": "SUCCESS", "status": "success", "action": "insert", "details": {"id": "1"}}]}
    assert read(ZOHO, 200, ok) == OK
    refused = {"data": [{"code": "MANDATORY_NOT_FOUND", "status": "error", "details": {"api_name": "Last_Name"}}]}
    assert read(ZOHO, 200, refused) == final("MANDATORY_NOT_FOUND", "crm_rejected")
    assert read(ZOHO, 200, {"data": []}) == final("no data[0].status", "crm_rejected")
    assert read(ZOHO, 200, "<html>") == final("the answer is not JSON", "crm_rejected")
    assert read(ZOHO, 202, {"data": [{"status": "error", "code": "has spaces and personal data"}]}) == final(
        "no data[0].status", "crm_rejected"
    )


def test_zoho_non_2xx_keeps_the_http_reading_with_its_code() -> None:
    assert read(ZOHO, 401, {"code": "INVALID_TOKEN", "status": "error"}) == final("INVALID_TOKEN")
    assert read(ZOHO, 400, {"data": [{"code": "INVALID_DATA", "status": "error"}]}) == final("INVALID_DATA")
    assert read(ZOHO, 429, {"code": "TOO_MANY_REQUESTS"}) == retry("TOO_MANY_REQUESTS")


def test_dynamics() -> None:
    assert read(DYNAMICS, 204) == OK
    assert read(DYNAMICS, 429, {"error": {"code": "0x80072322", "message": "x"}}, {"Retry-After": "30"}) == retry(
        "0x80072322"
    )
    assert read(DYNAMICS, 400, {"error": {"code": "0x80040237"}}) == final("0x80040237")
    assert read(DYNAMICS, 429, "", {"Retry-After": "3600"}) == quota(NOW + timedelta(hours=1), None)


# --- the generic reading ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_a_long_retry_after_is_a_quota_until_then(status: int) -> None:
    assert read(None, status, "", {"Retry-After": "901"}) == quota(NOW + timedelta(seconds=901), None)
    when = NOW + timedelta(hours=5)
    assert read(None, status, "", {"retry-after": format_datetime(when, usegmt=True)}) == quota(when, None)


@pytest.mark.parametrize("status", [429, 503])
def test_a_short_or_absent_retry_after_is_a_retry(status: int) -> None:
    assert read(None, status, "", {"Retry-After": "900"}) == retry()
    assert read(None, status, "", {}) == retry()
    assert read(None, status, "", {"Retry-After": "soon"}) == retry()


def test_a_quota_parks_for_a_day_at_most() -> None:
    assert read(None, 429, "", {"Retry-After": "99999999"}) == quota(NOW + timedelta(days=1), None)


def test_only_429_and_503_can_be_a_quota() -> None:
    assert read(None, 500, "", {"Retry-After": "7200"}) == retry()
    assert read(None, 403, "", {"Retry-After": "7200"}) == final()


@pytest.mark.parametrize(("status", "retryable"), [(408, True), (500, True), (599, True), (400, False), (404, False)])
def test_generic_statuses(status: int, retryable: bool) -> None:
    assert read(None, status) == AnswerReading("rejected", "http_status", retryable)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_ok_without_a_rule(status: int) -> None:
    assert read(None, status, "anything") == OK


def test_ok_when_reads_a_2xx() -> None:
    rule = parse_ok_when({"path": "result", "equals": "accepted"})
    assert read(None, 200, {"result": "accepted"}, ok_when=rule) == OK
    assert read(None, 200, {"result": "duplicate"}, ok_when=rule) == final(
        "the answer does not match ok_when (result)", "crm_rejected"
    )
    assert read(None, 500, {"result": "accepted"}, ok_when=rule) == retry()


def test_ok_when_applies_after_a_presets_own_reading() -> None:
    rule = parse_ok_when({"path": "0.success", "equals": True})
    assert read(SALESFORCE, 200, [{"success": True}], ok_when=rule) == OK
    assert read(SALESFORCE, 200, [{"success": False}], ok_when=rule).error_kind == "crm_rejected"
    assert read(SALESFORCE, 300, [], ok_when=rule) == final("several records have this external id (300)")


def test_a_naive_now_is_taken_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert classify_answer(None, 429, "", {"Retry-After": "1000"}, naive).quota_until == NOW + timedelta(seconds=1000)


def test_error_never_carries_the_body() -> None:
    secret_body = [{"errorCode": "Asha +15550100 said no", "message": "Asha +15550100"}]
    assert read(SALESFORCE, 400, secret_body).error is None
    zoho = {"data": [{"code": "x" * 200, "status": "error"}]}
    assert read(ZOHO, 200, zoho).error == "no data[0].status"


# --- lint ------------------------------------------------------------------------------------

SCHEMA = {
    "$defs": {
        "Lead": {"type": "object", "properties": {"LastName": {}, "Call_Id__c": {}, "Phone": {}}},
        "Contact": {"type": "object", "properties": {"LastName": {}}},
    }
}


def test_a_clean_preset_has_no_findings() -> None:
    assert preset_findings(SALESFORCE, SCHEMA, mapped_keys=["LastName"], auth_type="oauth2_client_credentials") == []
    assert preset_findings(HUBSPOT, auth_type="token") == []
    assert preset_findings(ZOHO) == []
    scope = "https://acme.crm.dynamics.com/.default"
    assert preset_findings(DYNAMICS, auth_type="oauth2_client_credentials", auth_scope=scope) == []


def test_a_misspelt_object_is_flagged_with_the_closest_name() -> None:
    preset = parse_preset({"name": "salesforce", "object": "Laed", "external_id_field": "Call_Id__c"})
    findings = preset_findings(preset, SCHEMA)
    assert findings[0] == "preset salesforce: object 'Laed' is not an object in the schema; did you mean 'Lead'?"


def test_a_missing_key_field_is_flagged() -> None:
    preset = parse_preset({"name": "salesforce", "object": "Lead", "external_id_field": "CallId__c"})
    assert preset_findings(preset, SCHEMA) == [
        "preset salesforce: field 'CallId__c' is not on 'Lead' in the schema; did you mean 'Call_Id__c'?"
    ]


def test_a_single_object_schema_is_read_by_its_title_and_properties() -> None:
    schema = {"title": "Leads", "type": "object", "properties": {"Last_Name": {}, "Call_Id": {}}}
    assert preset_findings(ZOHO, schema) == ["preset zoho: field 'Email' is not on 'Leads' in the schema"]
    untitled = {"type": "object", "properties": {"email": {}}}
    assert preset_findings(HUBSPOT, untitled) == [
        "preset hubspot: field 'call_id' is not on 'contacts' in the schema",
    ]


def test_lint_without_a_schema() -> None:
    old = parse_preset({"name": "salesforce", "object": "Lead", "external_id_field": "Email", "api_version": "30.0"})
    findings = preset_findings(old, mapped_keys=["Email", "LastName"], auth_type="token")
    assert any("is not a custom field" in f for f in findings)
    assert any("30.0 is retired" in f for f in findings)
    assert any("the key_mapper sends 'Email'" in f for f in findings)
    assert any("authenticates with oauth2_client_credentials or oauth2_jwt_bearer, not token" in f for f in findings)
    aging = parse_preset({"name": "salesforce", "object": "Lead", "external_id_field": "X__c", "api_version": "40.0"})
    assert preset_findings(aging) == ["preset salesforce: api_version 40.0 retires in Summer '28 (then 410 Gone)"]


def test_lint_other_presets() -> None:
    assert preset_findings(ZOHO, mapped_keys=["Call_Id"]) == [
        "preset zoho: the key_mapper sets 'Call_Id', which the preset overwrites with the call id: remove it"
    ]
    assert preset_findings(
        DYNAMICS, mapped_keys=["new_callid"], auth_scope="https://other.crm.dynamics.com/.default"
    ) == [
        "preset dynamics: the key_mapper sends 'new_callid', the alternate key already in the url: remove it",
        "preset dynamics: auth.scope should be https://acme.crm.dynamics.com/.default for this environment",
    ]
    local = parse_preset({"name": "hubspot", "object": "contacts", "id_property": "call_id", "base_url": "http://h"})
    assert preset_findings(local) == ["preset hubspot: base_url is not https"]
