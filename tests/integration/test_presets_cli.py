"""Operators and presets (contract §14): ``preview`` shows a preset's request, ``lint`` checks a preset config,
``circuits`` shows a parked destination with its reset and the calls waiting on it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crm_push.adapters.parking import ParkingTable
from crm_push.adapters.state import DeliveryStateTable
from crm_push.clock import iso_utc
from crm_push.ports import DeliveryUpdate, GateKey
from push_cli.circuits import list_parked, parked_line, read_parked
from push_cli.main import main
from tests.conftest import Stack
from tests.integration.test_presets_push import mapped_fields, preset_bot

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CALL = ROOT / "events" / "sample_call.json"
ORIGIN = "https://crm.example.com"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert out, err
    return code, json.loads(out), out


def bot_file(tmp_path: Path, bot: dict[str, Any]) -> str:
    path = tmp_path / "bot.json"
    path.write_text(json.dumps(bot))
    return str(path)


def sample_call() -> dict[str, Any]:
    call: dict[str, Any] = json.loads(SAMPLE_CALL.read_text())
    return call


# --- preview ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["salesforce", "hubspot", "zoho", "dynamics"])
def test_preview_shows_the_request_a_preset_makes_without_credentials(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    call = sample_call()
    bot = preset_bot(name, ORIGIN, call["bot_id"])

    code, preview, out = run_json(
        capsys, "preview", "--call-file", str(SAMPLE_CALL), "--bot-file", bot_file(tmp_path, bot)
    )

    assert code == 0, preview
    call_id = call["call_id"]
    fields = mapped_fields(name, call)
    expected = {
        "salesforce": ("PATCH", f"{{{{auth.instance_url}}}}/services/data/v62.0/sobjects/Lead/Call_Id__c/{call_id}"),
        "hubspot": ("POST", f"{ORIGIN}/crm/v3/objects/contacts/batch/upsert"),
        "zoho": ("POST", "{{auth.api_domain}}/crm/v8/Leads/upsert"),
        "dynamics": ("PATCH", f"{ORIGIN}/api/data/v9.2/contacts(new_callid='{call_id}')"),
    }[name]
    assert (preview["method"], preview["url"]) == expected
    envelope = {
        "salesforce": fields,
        "hubspot": {"inputs": [{"idProperty": "call_id", "id": call_id, "properties": fields}]},
        "zoho": {"data": [{**fields, "Call_Id": call_id}], "duplicate_check_fields": ["Call_Id"]},
        "dynamics": fields,
    }[name]
    assert preview["body"] == envelope
    # field by field: each key_mapper field, what it was rendered from and what is sent
    assert {f["path"]: f["sent"] for f in preview["fields"]} == {k: str(v) for k, v in fields.items()}
    headers = {h["name"]: h for h in preview["headers"]}
    scheme = "Zoho-oauthtoken" if name == "zoho" else "Bearer"
    assert headers["Authorization"]["value"].startswith(scheme)
    assert headers["Content-Type"]["value"] == "application/json"
    assert ("OData-Version" in headers) == (name == "dynamics")
    # and no credential anywhere: not the static token, not a client secret
    assert "standin-token" not in out
    assert "standin-secret" not in out
    assert preview["preset"]["name"] == name
    assert "call id" in preview["preset"]["keyed_on"]


def test_preview_text_names_the_preset_its_key_and_its_answers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bot = preset_bot("salesforce", ORIGIN, "bot-1")

    code = main(["preview", "--call-file", str(SAMPLE_CALL), "--bot-file", bot_file(tmp_path, bot)])
    out = capsys.readouterr().out

    assert code == 0
    assert "Preset salesforce" in out
    assert "REQUEST_LIMIT_EXCEEDED" in out
    assert "Call_Id__c" in out
    assert "standin-secret" not in out


# --- lint ---------------------------------------------------------------------------------------------


def lint(capsys: pytest.CaptureFixture[str], tmp_path: Path, bot: dict[str, Any], *extra: str) -> tuple[int, Any]:
    code, report, _ = run_json(
        capsys, "lint", "--bot-file", bot_file(tmp_path, bot), "--call-file", str(SAMPLE_CALL), "--skip-secrets", *extra
    )
    return code, report


def test_lint_passes_a_good_preset_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, report = lint(capsys, tmp_path, preset_bot("hubspot", ORIGIN, "bot-1"))

    assert (code, report["errors"]) == (0, 0), report["findings"]
    assert not any(f["where"] == "post_call_push.url" for f in report["findings"])


def test_lint_says_a_preset_without_its_key_field_cannot_push(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bot = preset_bot("salesforce", ORIGIN, "bot-1")
    del bot["post_call_push"]["preset"]["external_id_field"]

    code, report = lint(capsys, tmp_path, bot)

    assert code == 1
    [finding] = [f for f in report["findings"] if f["severity"] == "error"]
    assert "needs external_id_field" in finding["problem"]
    assert "External ID" in finding["problem"]


def test_lint_finds_a_module_name_with_a_typo_against_the_schema(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bot = preset_bot("zoho", ORIGIN, "bot-1")
    bot["post_call_push"]["preset"]["module"] = "Lead"
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {
            "Leads": {"type": "object", "properties": {"Call_Id": {"type": "string"}, "Last_Name": {"type": "string"}}},
            "Contacts": {"type": "object", "properties": {"Call_Id": {"type": "string"}}},
        },
    }
    schema_file = tmp_path / "zoho-schema.json"
    schema_file.write_text(json.dumps(schema))

    code, report = lint(capsys, tmp_path, bot, "--schema", str(schema_file))

    assert code == 1
    problems = [f["problem"] for f in report["findings"] if f["where"] == "post_call_push.preset"]
    assert any("module 'Lead' is not an object in the schema; did you mean 'Leads'?" in p for p in problems)


def test_lint_finds_the_wrong_auth_and_a_key_sent_twice(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bot = preset_bot("salesforce", ORIGIN, "bot-1")
    del bot["post_call_push"]["auth"]
    bot["post_call_push"]["token"] = "Bearer abc"
    bot["post_call_push"]["key_mapper"]["Call_Id__c"] = "{{result.call_id}}"

    code, report = lint(capsys, tmp_path, bot)

    assert code == 1
    errors = [f["problem"] for f in report["findings"] if f["severity"] == "error"]
    assert any("authenticates with oauth2_client_credentials or oauth2_jwt_bearer, not token" in p for p in errors)
    assert any("Salesforce refuses it in the body" in p for p in errors)


# --- the parked destination -----------------------------------------------------------------------------


def park(stack: Stack, key: GateKey, until: datetime, call_ids: list[str]) -> None:
    """A spent quota and calls waiting on it, as the push leaves them."""
    ParkingTable(stack.dynamodb, stack.state_table).spend_quota(key, until)
    state = DeliveryStateTable(stack.dynamodb, stack.state_table)
    now = datetime.now(UTC)
    for index, call_id in enumerate(call_ids):
        update = DeliveryUpdate(
            0, "scheduled", until + timedelta(seconds=index), True, (), "test", waits_on=key, holds=1
        )
        assert state.save(call_id, None, update, now)


def test_circuits_shows_a_parked_destination_its_reset_and_how_many_calls_wait(
    capsys: pytest.CaptureFixture[str], stack: Stack
) -> None:
    key = GateKey("https://api.hubapi.com:443", "tenant-a")
    other = GateKey("https://api.hubapi.com:443", "tenant-b")
    until = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    park(stack, key, until, ["c1", "c2", "c3"])
    park(stack, other, until, ["c4"])

    code, report, _ = run_json(capsys, "circuits", "--state-table", stack.state_table, "--scope", "tenant-a")

    assert code == 0
    assert report["parked"] == [
        {
            "destination": key.destination,
            "scope": "tenant-a",
            "quota_until": iso_utc(until),
            "chain": None,
            "chain_due": None,
            "waiting": 3,
        }
    ]
    code = main(["circuits", "--state-table", stack.state_table])
    out = capsys.readouterr().out
    assert code == 0
    assert "quota spent" in out
    assert "A CRM's quota is spent" in out


def test_status_line_of_a_parked_destination(stack: Stack) -> None:
    key = GateKey("https://api.hubapi.com:443", "tenant-a")
    now = datetime.now(UTC)
    until = (now + timedelta(hours=2)).replace(microsecond=0)
    assert read_parked(stack.dynamodb, stack.state_table, key) is None
    park(stack, key, until, ["c1", "c2"])

    parked = read_parked(stack.dynamodb, stack.state_table, key)

    assert parked is not None
    assert (parked.quota_until, parked.waiting) == (until, 2)
    line = parked_line(parked, now)
    assert line.startswith(f"Quota of {key.destination} spent until {until.strftime('%Y-%m-%d %H:%M:%S')}Z")
    assert "2 call(s) wait on it" in line
    assert [p.scope for p in list_parked(stack.dynamodb, stack.state_table)] == ["tenant-a"]
