"""The bot config of CRM-native delivery (contract §14): ``post_call_push.preset`` and ``.response``.

Validated once when the bot config is loaded, like the rest of
``PostCallPushConfig``; what a preset *does* with these values is
``presets.py``. Every name here ends up in a url path, so names are held to
the characters each CRM allows in an API name, and base urls to a bare origin.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crm_push.errors import ConfigError
from crm_push.response_reading import OkWhen, parse_ok_when
from crm_push.url_templates import check_origin

# API names as each CRM spells them (Salesforce "Call_Id__c", "ns__Thing__c"; HubSpot "contacts",
# "2-1234567", "p_cars"; Zoho "Leads", "Call_Id"; Dataverse "contacts", "new_callid").
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
_HUBSPOT_OBJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
_HUBSPOT_PROPERTY = re.compile(r"^[A-Za-z0-9_]{1,100}$")
_DATAVERSE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_SALESFORCE_VERSION = re.compile(r"^\d{2,3}\.\d$")
MAX_DUPLICATE_CHECK_FIELDS = 10
DEFAULT_SALESFORCE_API_VERSION = "62.0"
DEFAULT_HUBSPOT_BASE_URL = "https://api.hubapi.com"


def _name(value: Any, pattern: re.Pattern[str], example: str) -> str:
    if not isinstance(value, str) or not pattern.match(value.strip()):
        raise ValueError(f"must be an API name such as {example} (letters, digits and _)")
    return value.strip()


class _Preset(BaseModel):
    # extra="forbid": a misspelt key ("external_id") must fail loudly, not leave the default in place.
    # The name is matched as written here (a discriminator takes no before-validator); parse_preset,
    # the validator PostCallPushConfig uses, lower-cases it first.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class SalesforcePreset(_Preset):
    """``PATCH {{auth.instance_url}}/services/data/v<api_version>/sobjects/<object>/<external_id_field>/<call_id>``."""

    name: Literal["salesforce"]
    object: str
    external_id_field: str
    api_version: str = DEFAULT_SALESFORCE_API_VERSION

    @field_validator("object", mode="before")
    @classmethod
    def _object(cls, value: Any) -> str:
        return _name(value, _API_NAME, '"Lead" or "Call__c"')

    @field_validator("external_id_field", mode="before")
    @classmethod
    def _external_id_field(cls, value: Any) -> str:
        return _name(value, _API_NAME, '"Call_Id__c"')

    @field_validator("api_version", mode="before")
    @classmethod
    def _api_version(cls, value: Any) -> str:
        if isinstance(value, bool):
            raise ValueError('must be a version such as "62.0"')
        if isinstance(value, (int, float, Decimal)):
            value = f"{Decimal(str(value)):.1f}"
        if not isinstance(value, str) or not _SALESFORCE_VERSION.match(value.strip().removeprefix("v")):
            raise ValueError('must be a version such as "62.0"')
        return value.strip().removeprefix("v")


class HubspotPreset(_Preset):
    """``POST <base_url>/crm/v3/objects/<object>/batch/upsert`` with ``idProperty`` = ``id_property``."""

    name: Literal["hubspot"]
    object: str
    id_property: str
    base_url: str = DEFAULT_HUBSPOT_BASE_URL

    @field_validator("object", mode="before")
    @classmethod
    def _object(cls, value: Any) -> str:
        return _name(value, _HUBSPOT_OBJECT, '"contacts" or a custom object type id like "2-1234567"')

    @field_validator("id_property", mode="before")
    @classmethod
    def _id_property(cls, value: Any) -> str:
        return _name(value, _HUBSPOT_PROPERTY, '"call_id"')

    @field_validator("base_url", mode="before")
    @classmethod
    def _base_url(cls, value: Any) -> str:
        return check_origin(value, "base_url")


class ZohoPreset(_Preset):
    """``POST {{auth.api_domain}}/crm/v8/<module>/upsert``; the first duplicate check field holds the call id."""

    name: Literal["zoho"]
    module: str
    duplicate_check_fields: tuple[str, ...]

    @field_validator("module", mode="before")
    @classmethod
    def _module(cls, value: Any) -> str:
        return _name(value, _API_NAME, '"Leads"')

    @field_validator("duplicate_check_fields", mode="before")
    @classmethod
    def _duplicate_check_fields(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        # A set (DynamoDB's string set) has no order, and which field comes first matters.
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of field API names; the first one holds the call id")
        if not value:
            raise ValueError("needs at least one field: the unique field that holds the call id")
        if len(value) > MAX_DUPLICATE_CHECK_FIELDS:
            raise ValueError(f"at most {MAX_DUPLICATE_CHECK_FIELDS} fields")
        fields = tuple(_name(field, _API_NAME, '"Call_Id"') for field in value)
        if len(set(fields)) != len(fields):
            raise ValueError("names a field twice")
        return fields


class DynamicsPreset(_Preset):
    """``PATCH <org_url>/api/data/v9.2/<entity_set>(<alternate_key>='<call_id>')``."""

    name: Literal["dynamics"]
    org_url: str
    entity_set: str
    alternate_key: str

    @field_validator("org_url", mode="before")
    @classmethod
    def _org_url(cls, value: Any) -> str:
        return check_origin(value, "org_url")

    @field_validator("entity_set", mode="before")
    @classmethod
    def _entity_set(cls, value: Any) -> str:
        return _name(value, _DATAVERSE_NAME, '"contacts"')

    @field_validator("alternate_key", mode="before")
    @classmethod
    def _alternate_key(cls, value: Any) -> str:
        return _name(value, _DATAVERSE_NAME, '"new_callid"')


AnyPreset = SalesforcePreset | HubspotPreset | ZohoPreset | DynamicsPreset
PresetConfig = Annotated[AnyPreset, Field(discriminator="name")]
"""The type of ``PostCallPushConfig.preset`` (with ``parse_preset`` as its before-validator)."""

PRESET_MODELS: dict[str, type[AnyPreset]] = {
    "salesforce": SalesforcePreset,
    "hubspot": HubspotPreset,
    "zoho": ZohoPreset,
    "dynamics": DynamicsPreset,
}

# What each key is, for the message when it is missing: the operator learns what to write.
_KEY_HINTS: dict[tuple[str, str], str] = {
    ("salesforce", "object"): 'the object\'s API name, e.g. "Lead"',
    ("salesforce", "external_id_field"): (
        'the External ID field on the object that holds the call id, e.g. "Call_Id__c" '
        "(Setup > Object Manager > Fields: External ID and Unique)"
    ),
    ("hubspot", "object"): 'the object type, e.g. "contacts"',
    ("hubspot", "id_property"): 'a property with unique values that holds the call id, e.g. "call_id"',
    ("zoho", "module"): 'the module\'s API name, e.g. "Leads"',
    ("zoho", "duplicate_check_fields"): 'a unique field holding the call id first, e.g. ["Call_Id"]',
    ("dynamics", "org_url"): "the environment url, https://<org>.crm.dynamics.com",
    ("dynamics", "entity_set"): 'the table\'s entity set name, e.g. "contacts"',
    ("dynamics", "alternate_key"): 'the column of an alternate key that holds the call id, e.g. "new_callid"',
}


def _closest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def parse_preset(value: Any) -> AnyPreset:
    """``post_call_push.preset`` as its model; ConfigError in words that say what to write."""
    if isinstance(value, AnyPreset):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError('preset must be a map such as {"name": "salesforce", ...}')
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"preset needs a name: one of {', '.join(PRESET_MODELS)}")
    name = name.strip().lower()
    model = PRESET_MODELS.get(name)
    if model is None:
        raise ConfigError(
            f"preset {name[:40]!r} is not known: one of {', '.join(PRESET_MODELS)}{_closest(name, list(PRESET_MODELS))}"
        )
    try:
        return model.model_validate({**value, "name": name})
    except ValidationError as exc:
        raise ConfigError(_preset_problems(name, model, exc)) from None


def _preset_problems(name: str, model: type[AnyPreset], exc: ValidationError) -> str:
    keys = [key for key in model.model_fields if key != "name"]
    problems: list[str] = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "missing":
            hint = _KEY_HINTS.get((name, field))
            problems.append(f"needs {field}" + (f": {hint}" if hint else ""))
        elif error["type"] == "extra_forbidden":
            problems.append(f"has no key {field[:40]!r}{_closest(field, keys)} (keys: {', '.join(keys)})")
        else:
            problems.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
    return f"preset {name} " + "; ".join(problems)


class ResponseConfig(BaseModel):
    """``post_call_push.response``: how to read a 2xx (contract §14)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True)

    ok_when: OkWhen | None = None

    @field_validator("ok_when", mode="before")
    @classmethod
    def _ok_when(cls, value: Any) -> OkWhen | None:
        return None if value is None else parse_ok_when(value)


def parse_response(value: Any) -> ResponseConfig:
    """``post_call_push.response`` as its model; ConfigError in plain words."""
    if isinstance(value, ResponseConfig):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError('response must be a map such as {"ok_when": {"path": ..., "equals": ...}}')
    unknown = sorted(str(key) for key in value if key != "ok_when")
    if unknown:
        raise ConfigError(f"response has no key {unknown[0][:40]!r}; it takes ok_when")
    try:
        return ResponseConfig.model_validate(dict(value))
    except ValidationError as exc:
        messages = [error["msg"].removeprefix("Value error, ") for error in exc.errors()]
        raise ConfigError("; ".join(messages)) from None
