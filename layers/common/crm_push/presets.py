"""CRM presets (contract §14): each is data plus a small classifier, not a fork of the push.

``build_preset_request`` says what to send for one call (method, url
template, body envelope, extra headers, auth scheme); ``classify_answer``
says what the CRM's answer means (ok, rejected final, retryable, or a quota
with its reset time). Without a preset, ``classify_answer(None, ...)`` is the
generic reading every push uses: any 2xx (optionally checked by
``response.ok_when``), and a 429/503 whose Retry-After is more than 15
minutes away is a quota.

Every preset keys the record on the call id, so a repeated delivery updates
the record the first one made.

What an answer becomes is decided from its status, a few headers and at most
a short error *code* read from the body; ``error`` never carries the body
itself (it may hold the caller's personal data).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from crm_push.errors import ConfigError
from crm_push.preset_config import AnyPreset, DynamicsPreset, HubspotPreset, SalesforcePreset, ZohoPreset
from crm_push.response_reading import OkWhen, is_missing, parse_json_body, reads_as_ok
from crm_push.retry_after import parse_retry_after
from crm_push.url_templates import encode_component, path_segment

QUOTA_RETRY_AFTER_SECONDS = 15 * 60
"""A 429/503 asking for a longer wait than this is a spent quota, not a busy CRM (contract §14)."""
DEFAULT_QUOTA_SECONDS = 3600
"""How long a quota with no reset time of its own parks its destination (contract §14: else 1 h)."""
LONGEST_QUOTA_SECONDS = 86400
"""A Retry-After further out counts as this (contract §10's cap), so a typo cannot park calls for years."""
_RETRYABLE_STATUSES = frozenset({408, 429})
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,80}$")

AnswerStatus = Literal["ok", "rejected"]
AnswerErrorKind = Literal["http_status", "crm_rejected", "quota"]


@dataclass(frozen=True, slots=True)
class PresetSpec:
    """What a preset is, as data: for ``preview``, ``lint``, the README and the classifier."""

    name: str
    method: Literal["POST", "PUT", "PATCH"]
    url_pattern: str
    auth_scheme: str
    auth_types: tuple[str, ...]
    """The ``post_call_push.auth`` types (or ``token``) that reach this CRM."""
    ok_statuses: tuple[int, ...] | None
    """The 2xx statuses the CRM documents for success; None: any 2xx."""
    extra_headers: Mapping[str, str] = field(default_factory=dict)


PRESETS: dict[str, PresetSpec] = {
    "salesforce": PresetSpec(
        "salesforce",
        "PATCH",
        "{{auth.instance_url}}/services/data/v<api_version>/sobjects/<object>/<external_id_field>/<call_id>",
        "Bearer",
        ("oauth2_client_credentials", "oauth2_jwt_bearer"),
        (200, 201, 204),
    ),
    "hubspot": PresetSpec(
        "hubspot",
        "POST",
        "<base_url>/crm/v3/objects/<object>/batch/upsert",
        "Bearer",
        ("token", "oauth2_refresh_token"),
        None,
    ),
    "zoho": PresetSpec(
        "zoho",
        "POST",
        "{{auth.api_domain}}/crm/v8/<module>/upsert",
        "Zoho-oauthtoken",
        ("oauth2_refresh_token", "oauth2_client_credentials"),
        None,
    ),
    "dynamics": PresetSpec(
        "dynamics",
        "PATCH",
        "<org_url>/api/data/v9.2/<entity_set>(<alternate_key>='<call_id>')",
        "Bearer",
        ("oauth2_client_credentials",),
        None,
        {"OData-Version": "4.0"},
    ),
}


# --- the request -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresetRequest:
    """What a preset sends for one call. ``url_template`` is literal except a leading ``{{auth.*}}``.

    Render it with ``url_templates.compile_url_template(url_template).render({}, auth_values)``;
    the call id in it is already percent-encoded. The body is JSON (the core
    sets ``Content-Type``); ``Authorization`` is ``<auth_scheme> <access token>``.
    """

    method: Literal["POST", "PUT", "PATCH"]
    url_template: str
    body: dict[str, Any]
    extra_headers: dict[str, str]
    auth_scheme: str


def _require_call_id(call_id: str) -> str:
    if not isinstance(call_id, str) or not call_id:
        raise ConfigError("a preset keys the record on the call id, and this call has none")
    return call_id


def _odata_string(value: str) -> str:
    """A value as an OData string literal's content: ``'`` doubled (OData ABNF), then percent-encoded."""
    return encode_component(value.replace("'", "''"))


def build_preset_request(preset: AnyPreset, call_id: str, mapped_fields: Mapping[str, Any]) -> PresetRequest:
    """The request ``preset`` makes for ``call_id`` with the key_mapper's rendered ``mapped_fields``."""
    call_id = _require_call_id(call_id)
    fields = dict(mapped_fields)
    spec = PRESETS[preset.name]
    if isinstance(preset, SalesforcePreset):
        url = (
            "{{auth.instance_url}}/services/data/v"
            f"{preset.api_version}/sobjects/{path_segment(preset.object, 'object')}/"
            f"{path_segment(preset.external_id_field, 'external_id_field')}/{path_segment(call_id, 'the call id')}"
        )
        return PresetRequest(spec.method, url, fields, dict(spec.extra_headers), spec.auth_scheme)
    if isinstance(preset, HubspotPreset):
        url = f"{preset.base_url}/crm/v3/objects/{path_segment(preset.object, 'object')}/batch/upsert"
        body = {"inputs": [{"idProperty": preset.id_property, "id": call_id, "properties": fields}]}
        return PresetRequest(spec.method, url, body, dict(spec.extra_headers), spec.auth_scheme)
    if isinstance(preset, ZohoPreset):
        url = f"{{{{auth.api_domain}}}}/crm/v8/{path_segment(preset.module, 'module')}/upsert"
        # The first duplicate check field *is* the key: it holds the call id whatever the mapper said.
        record = {**fields, preset.duplicate_check_fields[0]: call_id}
        envelope: dict[str, Any] = {"data": [record], "duplicate_check_fields": list(preset.duplicate_check_fields)}
        return PresetRequest(spec.method, url, envelope, dict(spec.extra_headers), spec.auth_scheme)
    if isinstance(preset, DynamicsPreset):
        key = f"{preset.alternate_key}='{_odata_string(call_id)}'"
        url = f"{preset.org_url}/api/data/v9.2/{path_segment(preset.entity_set, 'entity_set')}({key})"
        return PresetRequest(spec.method, url, fields, dict(spec.extra_headers), spec.auth_scheme)
    raise ConfigError(f"preset {getattr(preset, 'name', '?')} is not known")  # pragma: no cover - union exhausted


# --- the answer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerReading:
    """What an HTTP answer means for the delivery.

    ``retryable`` is True for a quota too (the call is parked, not ended);
    ``quota_until`` is set exactly when ``error_kind`` is ``quota``.
    ``error`` is a short code (Zoho's ``data[0].code``, Salesforce's
    ``errorCode``, HubSpot's ``category``) or a sentence of ours, never the body.
    """

    status: AnswerStatus
    error_kind: AnswerErrorKind | None = None
    retryable: bool = False
    quota_until: datetime | None = None
    error: str | None = None


OK = AnswerReading("ok")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _code(value: Any) -> str | None:
    """A CRM's error code if it looks like one (``INVALID_DATA``, ``0x80040237``); anything else is dropped."""
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else None


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    return parse_retry_after(_header(headers, "Retry-After"), now.timestamp())


def _quota(now: datetime, seconds: float | None, error: str | None) -> AnswerReading:
    wait = DEFAULT_QUOTA_SECONDS if seconds is None else min(seconds, LONGEST_QUOTA_SECONDS)
    return AnswerReading("rejected", "quota", True, now + timedelta(seconds=wait), error)


def _next_utc_midnight(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def _not_ok(http_status: int, headers: Mapping[str, str], now: datetime, error: str | None) -> AnswerReading:
    """The generic reading of a non-2xx: a long 429/503 is a quota, then 408/429/5xx retry, the rest is final."""
    if http_status in (429, 503):
        wait = _retry_after_seconds(headers, now)
        if wait is not None and wait > QUOTA_RETRY_AFTER_SECONDS:
            return _quota(now, wait, error)
    retryable = http_status in _RETRYABLE_STATUSES or 500 <= http_status <= 599
    return AnswerReading("rejected", "http_status", retryable, None, error)


def _checked_ok(body_text: str, ok_when: OkWhen | None) -> AnswerReading:
    if ok_when is None or reads_as_ok(body_text, ok_when):
        return OK
    return AnswerReading("rejected", "crm_rejected", False, None, f"the answer does not match ok_when ({ok_when.path})")


def classify_answer(
    preset: AnyPreset | None,
    http_status: int,
    body_text: str,
    headers: Mapping[str, str],
    now: datetime,
    ok_when: OkWhen | None = None,
) -> AnswerReading:
    """What the CRM's answer means (contract §10, §14). ``now`` is the wall clock (UTC).

    ``ok_when`` (``response.ok_when``) is checked on a 2xx after the preset's
    own reading found it good.
    """
    now = _utc(now)
    if preset is None:
        if 200 <= http_status <= 299:
            return _checked_ok(body_text, ok_when)
        return _not_ok(http_status, headers, now, None)
    if isinstance(preset, SalesforcePreset):
        reading = _salesforce(http_status, body_text, headers, now)
    elif isinstance(preset, HubspotPreset):
        reading = _hubspot(http_status, body_text, headers, now)
    elif isinstance(preset, ZohoPreset):
        reading = _zoho(http_status, body_text, headers, now)
    else:
        reading = _dynamics(http_status, body_text, headers, now)
    if reading.status == "ok":
        return _checked_ok(body_text, ok_when)
    return reading


def _salesforce(http_status: int, body_text: str, headers: Mapping[str, str], now: datetime) -> AnswerReading:
    # Salesforce errors are a list of {"errorCode", "message"}; 300 lists the matching records' urls.
    document = parse_json_body(body_text)
    first = document[0] if isinstance(document, list) and document else None
    code = _code(first.get("errorCode")) if isinstance(first, dict) else None
    if 200 <= http_status <= 299:
        return OK
    if http_status == 300:
        return AnswerReading("rejected", "http_status", False, None, "several records have this external id (300)")
    if http_status == 403 and "REQUEST_LIMIT_EXCEEDED" in body_text:
        # The org's rolling 24 h allocation: no reset time is given, so the Retry-After or 1 h.
        return _quota(now, _retry_after_seconds(headers, now), "REQUEST_LIMIT_EXCEEDED")
    return _not_ok(http_status, headers, now, code)


def _hubspot(http_status: int, body_text: str, headers: Mapping[str, str], now: datetime) -> AnswerReading:
    document = parse_json_body(body_text)
    body = document if isinstance(document, dict) else {}
    if 200 <= http_status <= 299:
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            first = errors[0] if isinstance(errors[0], dict) else {}
            return AnswerReading("rejected", "crm_rejected", False, None, _code(first.get("category")) or "errors")
        return OK
    policy = _code(body.get("policyName"))
    if http_status == 429 and policy == "DAILY":
        # The portal's daily allowance, shared with every integration: back at the next midnight (UTC).
        until = _next_utc_midnight(now)
        return AnswerReading("rejected", "quota", True, until, "DAILY")
    return _not_ok(http_status, headers, now, policy or _code(body.get("category")))


def _zoho(http_status: int, body_text: str, headers: Mapping[str, str], now: datetime) -> AnswerReading:
    document = parse_json_body(body_text)
    record: Any = None
    if isinstance(document, dict):
        data = document.get("data")
        record = data[0] if isinstance(data, list) and data else None
    record = record if isinstance(record, dict) else {}
    if 200 <= http_status <= 299:
        if record.get("status") == "success":
            return OK
        if is_missing(document):
            return AnswerReading("rejected", "crm_rejected", False, None, "the answer is not JSON")
        return AnswerReading("rejected", "crm_rejected", False, None, _code(record.get("code")) or "no data[0].status")
    top = document if isinstance(document, dict) else {}
    return _not_ok(http_status, headers, now, _code(record.get("code")) or _code(top.get("code")))


def _dynamics(http_status: int, body_text: str, headers: Mapping[str, str], now: datetime) -> AnswerReading:
    if 200 <= http_status <= 299:
        return OK
    document = parse_json_body(body_text)
    error = document.get("error") if isinstance(document, dict) else None
    code = _code(error.get("code")) if isinstance(error, dict) else None
    return _not_ok(http_status, headers, now, code)


# --- lint -------------------------------------------------------------------------------------


def schema_object_names(schema: Mapping[str, Any]) -> list[str]:
    """The object names a CRM schema file knows: its ``$defs`` / ``definitions`` keys and its ``title``."""
    names: list[str] = []
    for section in ("$defs", "definitions"):
        defs = schema.get(section)
        if isinstance(defs, Mapping):
            names.extend(str(key) for key in defs)
    title = schema.get("title")
    if isinstance(title, str) and title and title not in names:
        names.append(title)
    return names


def schema_object_fields(schema: Mapping[str, Any], object_name: str) -> list[str] | None:
    """The field names of ``object_name`` in the schema (its definition, else the root); None if unknown."""
    for section in ("$defs", "definitions"):
        defs = schema.get(section)
        if isinstance(defs, Mapping) and isinstance(defs.get(object_name), Mapping):
            properties = defs[object_name].get("properties")
            return [str(key) for key in properties] if isinstance(properties, Mapping) else None
    properties = schema.get("properties")
    return [str(key) for key in properties] if isinstance(properties, Mapping) else None


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _object_and_key_fields(preset: AnyPreset) -> tuple[str, str, list[str]]:
    """(what the preset calls its object, the object's name, the fields that must exist on it)."""
    if isinstance(preset, SalesforcePreset):
        return "object", preset.object, [preset.external_id_field]
    if isinstance(preset, HubspotPreset):
        return "object", preset.object, [preset.id_property]
    if isinstance(preset, ZohoPreset):
        return "module", preset.module, list(preset.duplicate_check_fields)
    return "entity_set", preset.entity_set, [preset.alternate_key]


def preset_findings(
    preset: AnyPreset,
    schema: Mapping[str, Any] | None = None,
    *,
    mapped_keys: Collection[str] | None = None,
    auth_type: str | None = None,
    auth_scope: str | None = None,
) -> list[str]:
    """What ``lint`` should tell the operator about a preset config (empty when it looks right).

    ``schema`` is the ``--schema`` file: its ``$defs``/``definitions`` (or
    ``title``) name the CRM's objects and their ``properties`` the fields; a
    name not found there is flagged with the closest one. ``mapped_keys``
    (the key_mapper's top-level keys), ``auth_type`` (``post_call_push.auth``'s
    type, ``"token"`` for a static token, ``"none"`` for neither) and
    ``auth_scope`` add the checks that need them; None skips those.
    """
    findings: list[str] = []
    spec = PRESETS[preset.name]
    where = f"preset {preset.name}"
    label, object_name, key_fields = _object_and_key_fields(preset)
    if schema is not None:
        names = schema_object_names(schema)
        if names and object_name not in names:
            findings.append(
                f"{where}: {label} {object_name!r} is not an object in the schema{_did_you_mean(object_name, names)}"
            )
        fields = schema_object_fields(schema, object_name)
        if fields is not None:
            for key_field in key_fields:
                if key_field not in fields:
                    findings.append(
                        f"{where}: field {key_field!r} is not on {object_name!r} in the schema"
                        f"{_did_you_mean(key_field, fields)}"
                    )
    if isinstance(preset, SalesforcePreset):
        if not preset.external_id_field.endswith("__c"):
            findings.append(
                f"{where}: external_id_field {preset.external_id_field!r} is not a custom field (…__c); Salesforce "
                "upserts by a field marked External ID, so check that it is one"
            )
        major = int(preset.api_version.split(".")[0])
        if major <= 30:
            findings.append(f"{where}: api_version {preset.api_version} is retired: Salesforce answers 410 Gone")
        elif major <= 40:
            findings.append(f"{where}: api_version {preset.api_version} retires in Summer '28 (then 410 Gone)")
    if isinstance(preset, (HubspotPreset, DynamicsPreset)):
        url = preset.base_url if isinstance(preset, HubspotPreset) else preset.org_url
        if not url.lower().startswith("https://"):
            findings.append(f"{where}: {'base_url' if isinstance(preset, HubspotPreset) else 'org_url'} is not https")
    if mapped_keys is not None:
        keys = set(mapped_keys)
        if isinstance(preset, SalesforcePreset) and preset.external_id_field in keys:
            findings.append(
                f"{where}: the key_mapper sends {preset.external_id_field!r}, the external id already in the url; "
                "Salesforce refuses it in the body: remove it"
            )
        if isinstance(preset, ZohoPreset) and preset.duplicate_check_fields[0] in keys:
            findings.append(
                f"{where}: the key_mapper sets {preset.duplicate_check_fields[0]!r}, which the preset overwrites "
                "with the call id: remove it"
            )
        if isinstance(preset, DynamicsPreset) and preset.alternate_key in keys:
            findings.append(
                f"{where}: the key_mapper sends {preset.alternate_key!r}, the alternate key already in the url: "
                "remove it"
            )
    if auth_type is not None and auth_type not in spec.auth_types:
        wanted = " or ".join(spec.auth_types)
        findings.append(f"{where}: authenticates with {wanted}, not {auth_type}")
    if isinstance(preset, DynamicsPreset) and auth_scope is not None and auth_scope != f"{preset.org_url}/.default":
        findings.append(f"{where}: auth.scope should be {preset.org_url}/.default for this environment")
    return findings
