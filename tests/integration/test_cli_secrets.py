"""The CLI's secret handling end to end: lint resolving references, secrets migrate, preview of signed pushes.

moto's Secrets Manager and SSM, the test DynamoDB, ``main(argv)`` in-process. No output may show a secret value.
"""

from __future__ import annotations

import argparse
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from crm_push.adapters.dynamodb import from_item
from crm_push.config import SecretRef
from crm_push.secrets import ReferencePrefixes
from push_cli import secrets as secrets_cli
from push_cli.context import Context
from push_cli.lint import lint_bot
from push_cli.main import main
from scripts.local_crm import CrmAnswer, LocalCrm
from tests.conftest import Stack

TOKEN = "Bearer sk_live_cli_0a1b2c3d4e5f"
API_KEY = "ak-cli-31337-9f8e7d"
SIGNING = "whsec_" + base64.b64encode(b"cli-signing-key-0123456789").decode()
NEXT_SIGNING = "whsec_" + base64.b64encode(b"cli-next-signing-key-0123456789").decode()
VALUES = (TOKEN, "sk_live_cli_0a1b2c3d4e5f", API_KEY, SIGNING, NEXT_SIGNING, SIGNING.removeprefix("whsec_"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    shown = out + err
    for value in VALUES:
        assert value not in shown, f"a secret value was printed: {value[:6]}…"
    return code, shown


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    for value in VALUES:
        assert value not in out + err, f"a secret value was printed: {value[:6]}…"
    assert out, err
    return code, json.loads(out)


@pytest.fixture
def bot(stack: Stack, sample_bot: dict[str, Any]) -> dict[str, Any]:
    sample_bot["bot_id"] = f"bot-{uuid.uuid4().hex[:10]}"
    return sample_bot


def stored_push(stack: Stack, bot_id: str) -> dict[str, Any]:
    item = stack.dynamodb.get_item(TableName=stack.bots_table, Key={"bot_id": {"S": bot_id}}, ConsistentRead=True)
    push: dict[str, Any] = from_item(item["Item"])["post_call_push"]
    return push


def secret_document(secretsmanager: Any, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(secretsmanager.get_secret_value(SecretId=name)["SecretString"])
    return document


# --- lint ------------------------------------------------------------------------------------


def test_lint_warns_about_a_plaintext_token_and_names_the_migration(capsys, stack, bot):
    stack.put_bot(bot)

    code, out = run(capsys, "lint", "--bot-id", bot["bot_id"], "--sample", "0")

    assert code == 0  # a warning, not an error: configs like this work today
    assert "the token is stored in plain text in the bot config" in out
    assert f"post-call-push secrets migrate --bot-id {bot['bot_id']}" in out


def test_lint_resolves_every_reference_with_the_operators_credentials(capsys, stack, bot, secretsmanager, ssm):
    name = f"post-call-push/{bot['bot_id']}/crm"
    secretsmanager.create_secret(Name=name, SecretString=json.dumps({"token": TOKEN, "whsec": SIGNING}))
    ssm.put_parameter(Name=f"/{name}/key", Value=API_KEY, Type="SecureString")
    bot["post_call_push"].pop("token")
    bot["post_call_push"]["headers"] = {
        "Authorization": {"secret": name, "key": "token"},
        "X-Api-Key": {"parameter": f"/{name}/key"},
    }
    bot["post_call_push"]["signing_secret"] = [{"secret": name, "key": "whsec"}]
    stack.put_bot(bot)

    code, report = run_json(capsys, "lint", "--bot-id", bot["bot_id"], "--sample", "0")

    assert code == 0
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
    assert not any("plain text" in f["problem"] for f in report["findings"])


def test_lint_names_each_reference_that_does_not_resolve_and_why(capsys, stack, bot, secretsmanager):
    name = f"post-call-push/{bot['bot_id']}/crm"
    secretsmanager.create_secret(Name=name, SecretString=json.dumps({"token": TOKEN}))
    bot["post_call_push"].pop("token")
    bot["post_call_push"]["headers"] = {
        "Authorization": {"secret": name, "key": "token"},
        "X-Api-Key": {"secret": name, "key": "api_key"},
        "X-Other": {"parameter": f"/{name}/missing"},
    }
    stack.put_bot(bot)

    code, report = run_json(capsys, "lint", "--bot-id", bot["bot_id"], "--sample", "0")

    assert code == 1
    errors = {f["where"]: f for f in report["findings"] if f["severity"] == "error"}
    assert set(errors) == {"post_call_push.headers.X-Api-Key", "post_call_push.headers.X-Other"}
    assert errors["post_call_push.headers.X-Api-Key"]["problem"] == (
        f"secret {name} key api_key: the secret's JSON object has no key api_key"
    )
    assert "does not exist (ParameterNotFound)" in errors["post_call_push.headers.X-Other"]["problem"]
    assert "error_kind secret" in errors["post_call_push.headers.X-Other"]["suggestion"]

    code, report = run_json(capsys, "lint", "--bot-id", bot["bot_id"], "--sample", "0", "--skip-secrets")
    assert code == 0
    assert any("3 secret reference(s) not checked" in f["problem"] for f in report["findings"])


def test_lint_rejects_a_malformed_signing_secret_without_showing_it(capsys, stack, bot):
    bot["post_call_push"]["signing_secret"] = [SIGNING, "whsec_" + "A" * 30 + "-_"]
    stack.put_bot(bot)

    code, report = run_json(capsys, "lint", "--bot-id", bot["bot_id"], "--sample", "0")

    assert code == 1
    errors = [f["problem"] for f in report["findings"] if f["severity"] == "error"]
    assert len(errors) == 1
    assert "entry 1: signing_secret after whsec_ must be standard base64" in errors[0]
    assert "AAAAAAAA" not in json.dumps(report)


# --- secrets migrate ----------------------------------------------------------------------------


@pytest.fixture
def plaintext_bot(stack: Stack, bot: dict[str, Any]) -> dict[str, Any]:
    bot["post_call_push"]["headers"] = {
        "Authorization": TOKEN,
        "X-Api-Key": API_KEY,
        "X-Session": "{{crm.SESSION_ID}}",
    }
    bot["post_call_push"]["signing_secret"] = [SIGNING, NEXT_SIGNING]
    stack.put_bot(bot)
    return bot


def test_a_dry_run_shows_what_would_move_masked_and_writes_nothing(capsys, stack, plaintext_bot, secretsmanager):
    bot_id = plaintext_bot["bot_id"]
    before = stored_push(stack, bot_id)

    code, out = run(capsys, "secrets", "migrate", "--bot-id", bot_id, "--dry-run")

    assert code == 0
    assert f"would move to secret post-call-push/{bot_id}/{bot_id}/credentials" in out
    for where in ("token", "headers.Authorization", "headers.X-Api-Key", "signing_secret[0]", "signing_secret[1]"):
        assert f"post_call_push.{where}" in out
    assert "Bearer ***(29 chars)" in out  # the scheme and the length, not one character of the token
    assert "headers.X-Session: a template" in out
    assert "wrote nothing" in out
    assert "after the migration, rotate the moved credentials" in out
    assert stored_push(stack, bot_id) == before
    with pytest.raises(secretsmanager.exceptions.ResourceNotFoundException):
        secretsmanager.get_secret_value(SecretId=f"post-call-push/{bot_id}/{bot_id}/credentials")


def test_migrate_moves_plaintext_into_one_secret_and_leaves_references(capsys, stack, plaintext_bot, secretsmanager):
    bot_id = plaintext_bot["bot_id"]
    name = f"post-call-push/{bot_id}/{bot_id}/credentials"  # a bot without tenant_id is its own scope

    code, out = run(capsys, "secrets", "migrate", "--bot-id", bot_id)

    assert code == 0, out
    assert f"secret {name} created; read back; bot {bot_id}'s config rewritten" in out
    assert "next: rotate the moved credentials at the CRM now" in out
    assert "point-in-time-recovery backups for 35 days" in out
    assert secret_document(secretsmanager, name) == {
        "token": "Bearer sk_live_sample_token_not_real",
        "headers.Authorization": TOKEN,
        "headers.X-Api-Key": API_KEY,
        "signing_secret[0]": SIGNING,
        "signing_secret[1]": NEXT_SIGNING,
    }
    push = stored_push(stack, bot_id)
    assert push["token"] == {"secret": name, "key": "token"}
    assert push["headers"] == {
        "Authorization": {"secret": name, "key": "headers.Authorization"},
        "X-Api-Key": {"secret": name, "key": "headers.X-Api-Key"},
        "X-Session": "{{crm.SESSION_ID}}",
    }
    assert push["signing_secret"] == [
        {"secret": name, "key": "signing_secret[0]"},
        {"secret": name, "key": "signing_secret[1]"},
    ]
    # Everything else is as it was, numbers included.
    assert push["key_mapper"] == plaintext_bot["post_call_push"]["key_mapper"]

    code, report = run_json(capsys, "lint", "--bot-id", bot_id, "--sample", "0")
    assert code == 0
    assert not any("plain text" in f["problem"] for f in report["findings"])

    code, out = run(capsys, "secrets", "migrate", "--bot-id", bot_id)
    assert code == 0
    assert "no plaintext credentials in post_call_push, nothing to migrate" in out


def test_migrate_into_an_existing_secret_keeps_its_other_keys(capsys, stack, plaintext_bot, secretsmanager):
    name = f"post-call-push/{plaintext_bot['bot_id']}/shared"
    secretsmanager.create_secret(Name=name, SecretString=json.dumps({"other_system": "kept-as-is-7777"}))

    code, out = run(capsys, "secrets", "migrate", "--bot-id", plaintext_bot["bot_id"], "--secret-name", name)

    assert code == 0, out
    assert "updated, keeping its 1 other key(s)" in out
    document = secret_document(secretsmanager, name)
    assert document["other_system"] == "kept-as-is-7777"
    assert document["headers.X-Api-Key"] == API_KEY


def test_migrate_refuses_a_secret_that_is_not_a_json_object(capsys, stack, plaintext_bot, secretsmanager):
    name = f"post-call-push/{plaintext_bot['bot_id']}/plain"
    secretsmanager.create_secret(Name=name, SecretString="not json at all")
    before = stored_push(stack, plaintext_bot["bot_id"])

    code, out = run(capsys, "secrets", "migrate", "--bot-id", plaintext_bot["bot_id"], "--secret-name", name)

    assert code == 1
    assert f"secret {name} exists and is not a JSON object" in out
    assert stored_push(stack, plaintext_bot["bot_id"]) == before


def test_a_config_changed_during_the_migration_is_not_overwritten(
    capsys, stack, plaintext_bot, secretsmanager, monkeypatch
):
    bot_id = plaintext_bot["bot_id"]
    read_back = secrets_cli._read_back

    def someone_edits_the_bot_meanwhile(*args: Any) -> None:
        read_back(*args)
        edited = json.loads(json.dumps(plaintext_bot))
        edited["post_call_push"]["headers"]["X-Api-Key"] = "ak-rotated-by-someone-else"
        stack.put_bot(edited)

    monkeypatch.setattr(secrets_cli, "_read_back", someone_edits_the_bot_meanwhile)

    code, out = run(capsys, "secrets", "migrate", "--bot-id", bot_id)

    assert code == 1
    assert f"bot {bot_id}'s post_call_push changed while migrating: its config is untouched" in out
    assert stored_push(stack, bot_id)["headers"]["X-Api-Key"] == "ak-rotated-by-someone-else"


def test_migrate_refuses_an_invalid_config(capsys, stack, bot):
    bot["post_call_push"]["signing_secret"] = "whsec_dG9vLXNob3J0"
    stack.put_bot(bot)

    code, out = run(capsys, "secrets", "migrate", "--bot-id", bot["bot_id"])

    assert code == 1
    assert "the config is invalid, fix it first" in out
    assert "signing_secret decodes to 9 bytes" in out
    assert "dG9vLXNob3J0" not in out


def test_migrate_of_an_unknown_bot_exits_2(capsys, stack):
    code, out = run(capsys, "secrets", "migrate", "--bot-id", "bot-nope")

    assert code == 2
    assert "bot bot-nope is not in the Bots table" in out


def test_migrate_writes_under_the_bots_tenant(capsys, stack, plaintext_bot, secretsmanager):
    bot_id = plaintext_bot["bot_id"]
    plaintext_bot["tenant_id"] = f"tenant-{bot_id}"
    stack.put_bot(plaintext_bot)
    name = f"post-call-push/tenant-{bot_id}/{bot_id}/credentials"

    code, report = run_json(capsys, "secrets", "migrate", "--bot-id", bot_id)

    assert code == 0, report
    assert report["scope"] == f"tenant-{bot_id}"
    assert report["secret_name"] == name
    assert report["config_rewritten"] is True
    assert "rotate the moved credentials" in report["rotate"]
    assert secret_document(secretsmanager, name)["headers.X-Api-Key"] == API_KEY
    assert stored_push(stack, bot_id)["headers"]["X-Api-Key"] == {"secret": name, "key": "headers.X-Api-Key"}


@pytest.mark.parametrize(
    "secret_name",
    [
        "shared/{bot_id}",  # outside the prefix
        "post-call-push/other-tenant/{bot_id}",  # another scope
        "post-call-push/{bot_id}/../other-tenant/x",
    ],
)
def test_migrate_refuses_a_secret_name_outside_the_bots_scope(
    capsys, stack, plaintext_bot, secretsmanager, secret_name
):
    bot_id = plaintext_bot["bot_id"]
    name = secret_name.format(bot_id=bot_id)
    before = stored_push(stack, bot_id)

    code, out = run(capsys, "secrets", "migrate", "--bot-id", bot_id, "--secret-name", name)

    said = " ".join(out.split())  # the console wraps long lines
    assert code == 2
    assert f"secret {name} is outside the scope of bot {bot_id}, which has no tenant_id" in said
    assert f"Pass a --secret-name under post-call-push/{bot_id}/ (no '.' or '..' segments)" in said
    assert stored_push(stack, bot_id) == before
    with pytest.raises(secretsmanager.exceptions.ResourceNotFoundException):
        secretsmanager.get_secret_value(SecretId=name)


def test_migrate_uses_the_deployed_prefix_from_the_environment_or_the_option(
    capsys, stack, plaintext_bot, secretsmanager, monkeypatch
):
    # Audit #14: a stack deployed with another prefix must not get secrets its function cannot read.
    bot_id = plaintext_bot["bot_id"]
    monkeypatch.setenv("SECRETS_NAME_PREFIX", "crm/")

    code, report = run_json(capsys, "secrets", "migrate", "--bot-id", bot_id, "--dry-run")
    assert code == 0
    assert report["secret_name"] == f"crm/{bot_id}/{bot_id}/credentials"

    code, out = run(capsys, "secrets", "migrate", "--bot-id", bot_id, "--secret-name", f"post-call-push/{bot_id}/x")
    assert code == 2
    assert f"Pass a --secret-name under crm/{bot_id}/" in " ".join(out.split())

    code, report = run_json(
        capsys, "secrets", "migrate", "--bot-id", bot_id, "--secrets-name-prefix", "tenants/crm/", "--dry-run"
    )
    assert code == 0
    assert report["secret_name"] == f"tenants/crm/{bot_id}/{bot_id}/credentials"


def test_the_deployed_prefixes_come_from_the_options_then_the_environment_then_the_functions_defaults():
    parser = argparse.ArgumentParser()
    secrets_cli.add_prefix_options(parser)

    def prefixes(argv: list[str], environ: dict[str, str]) -> tuple[str, str]:
        args = parser.parse_args(argv)
        found = secrets_cli.deployed_prefixes(args, Context.from_options(args, environ))
        return found.secrets_name, found.parameters_path

    assert prefixes([], {}) == ("post-call-push/", "/post-call-push/")
    env = {"SECRETS_NAME_PREFIX": "crm/", "PARAMETERS_PATH_PREFIX": "/crm/"}
    assert prefixes([], env) == ("crm/", "/crm/")
    assert prefixes(["--secrets-name-prefix", "x/", "--parameters-path-prefix", "/x/"], env) == ("x/", "/x/")


def test_lint_refuses_a_reference_outside_the_scope_without_reading_it(stack, bot, secretsmanager, ssm):
    # Both exist and the operator may read both: only the scope rule makes the second an error.
    ours, theirs = f"post-call-push/{bot['bot_id']}/crm", "post-call-push/other-tenant/crm"
    for name in (ours, theirs):
        secretsmanager.create_secret(Name=name, SecretString=json.dumps({"token": TOKEN}))
    bot["post_call_push"].pop("token")
    bot["post_call_push"]["headers"] = {
        "Authorization": {"secret": ours, "key": "token"},
        "X-Api-Key": {"secret": theirs, "key": "token"},
        "X-Other": {"parameter": "/post-call-push/other-tenant/key"},
    }
    read: list[str] = []
    ctx = Context.from_options(argparse.Namespace(), {})
    resolver = secrets_cli.store_resolver(ctx)
    original = resolver.resolve

    def counted(ref: SecretRef, *, fresh: bool = False) -> str:
        read.append(ref.describe())
        return original(ref, fresh=fresh)

    resolver.resolve = counted  # type: ignore[method-assign]
    prefixes = ReferencePrefixes("post-call-push/", "/post-call-push/")

    report = lint_bot(bot, bot["bot_id"], secret_resolver=lambda: resolver, reference_prefixes=prefixes)

    errors = {f.where: f for f in report.findings if f.severity == "error"}
    assert set(errors) == {"post_call_push.headers.X-Api-Key", "post_call_push.headers.X-Other"}
    assert "outside this bot's scope" in errors["post_call_push.headers.X-Api-Key"].problem
    assert f"bot {bot['bot_id']} (it has no tenant_id)" in errors["post_call_push.headers.X-Api-Key"].suggestion
    assert "error_kind secret, final" in errors["post_call_push.headers.X-Other"].suggestion
    assert read == [f"secret {ours} key token"]

    # --skip-secrets reads nothing, and the scope rule still holds.
    unread = lint_bot(bot, bot["bot_id"], reference_prefixes=prefixes)
    assert {f.where for f in unread.findings if f.severity == "error"} == set(errors)
    assert any("1 secret reference(s) not checked" in f.problem for f in unread.findings)


def test_lint_advice_follows_the_stores_error_code(stack, bot):
    # A store that denies access: the advice is chosen by the code, whatever the message says.
    body = json.dumps({"__type": "AccessDeniedException", "message": "resource not found, try creating it"})
    with LocalCrm(lambda _req: CrmAnswer(400, body.encode(), {"Content-Type": "application/x-amz-json-1.1"})) as store:
        ctx = Context.from_options(argparse.Namespace(endpoint_url=store.url, region="us-east-1"), {})
        bot["post_call_push"]["token"] = {"secret": f"post-call-push/{bot['bot_id']}/crm", "key": "token"}

        report = lint_bot(
            bot,
            bot["bot_id"],
            secret_resolver=lambda: secrets_cli.store_resolver(ctx),
            reference_prefixes=ReferencePrefixes("post-call-push/", "/post-call-push/"),
        )

    [error] = [f for f in report.findings if f.severity == "error"]
    assert "access denied to this function (AccessDeniedException)" in error.problem
    assert error.suggestion.startswith("check that both your credentials and the function's role can read it")


# --- preview -------------------------------------------------------------------------------------


def test_preview_shows_what_is_signed_and_where_each_credential_comes_from(
    capsys, stack, bot, sample_call, secretsmanager, tmp_path: Path
):
    name = f"post-call-push/{bot['bot_id']}/crm"
    bot["post_call_push"].pop("token")
    bot["post_call_push"]["headers"] = {"Authorization": {"secret": name, "key": "token"}, "X-Api-Key": API_KEY}
    bot["post_call_push"]["signing_secret"] = [SIGNING, {"secret": name, "key": "whsec"}]
    stack.put_bot(bot)
    stack.put_call(sample_call)

    code, preview = run_json(capsys, "preview", "--call-id", sample_call["call_id"], "--bot-id", bot["bot_id"])

    assert code == 0
    headers = {line["name"]: line for line in preview["headers"]}
    assert headers["Authorization"]["value"] == f"(from secret {name} key token at push time)"
    assert headers["Authorization"]["source"] == "secret reference in config"
    assert headers["X-Api-Key"]["value"].endswith("(masked)")
    assert headers["webhook-id"]["value"] == sample_call["call_id"]
    signature = headers["webhook-signature"]
    assert signature["value"].count("v1,") == 2
    assert "HMAC-SHA256 of webhook-id.webhook-timestamp.the JSON body as sent" in signature["notes"][0]
    assert f"a plaintext whsec_ secret in config; secret {name} key whsec" in signature["notes"][1]
