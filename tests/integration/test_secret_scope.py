"""Secrets stay in their scope (contract §12), through one real attempt: moto's stores, the core's run_attempt.

Both tenants' secrets exist in the store and the store would hand either over:
only the scope check stands between a bot and another tenant's credential. The
clients count every GetSecretValue / GetParameter that reaches the wire, so
"never read" is observed, not assumed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from crm_push.attempt import run_attempt
from crm_push.config import load_bot_config
from crm_push.secrets import StoreSecretResolver
from tests.fakes import InMemoryCalls, ScriptedCrm, StaticBots, make_deps

SECRETS = "post-call-push/"
PARAMETERS = "/post-call-push/"
THEIR_TOKEN = "Bearer sk_live_tenant_b_31337"
OUR_TOKEN = "Bearer sk_live_tenant_a_4242"


class Reads:
    """Every read request a client sends, by operation name (botocore's before-call hook: nothing is faked)."""

    def __init__(self, *clients: Any) -> None:
        self.operations: list[str] = []
        for client in clients:
            client.meta.events.register("before-call.*.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        if model.name in {"GetSecretValue", "GetParameter"}:
            self.operations.append(model.name)


@pytest.fixture
def tenants(secretsmanager: Any, ssm: Any) -> dict[str, str]:
    """Two tenants' secrets and parameters, each under its own scope, and their ARNs as AWS reports them."""
    run = uuid.uuid4().hex[:8]
    a, b = f"tenant-a-{run}", f"tenant-b-{run}"
    names = {"a": a, "b": b}
    for scope, token in ((a, OUR_TOKEN), (b, THEIR_TOKEN)):
        created = secretsmanager.create_secret(
            Name=f"{SECRETS}{scope}/bot-1/credentials", SecretString=json.dumps({"token": token})
        )
        ssm.put_parameter(Name=f"{PARAMETERS}{scope}/bot-1/token", Value=token, Type="SecureString")
        names[f"{scope}-arn"] = created["ARN"]
        names[f"{scope}-ssm-arn"] = ssm.get_parameter(Name=f"{PARAMETERS}{scope}/bot-1/token")["Parameter"]["ARN"]
    return names


def attempt_with(
    token_ref: dict[str, Any], tenant_id: str | None, secretsmanager: Any, ssm: Any, bot_id: str = "bot-1"
):
    item: dict[str, Any] = {
        "bot_id": bot_id,
        "post_call_push": {
            "url": "https://crm.example.com/in",
            "token": token_ref,
            "key_mapper": {"id": "{{result.call_id}}"},
        },
    }
    if tenant_id is not None:
        item["tenant_id"] = tenant_id
    bot = load_bot_config(item, bot_id)
    crm = ScriptedCrm()
    calls = InMemoryCalls()
    deps = make_deps(
        calls,
        StaticBots(item),
        crm,
        secrets=StoreSecretResolver(secretsmanager, ssm),
        secrets_name_prefix=SECRETS,
        parameters_path_prefix=PARAMETERS,
    )
    call = {"call_id": f"call-{uuid.uuid4().hex[:8]}", "bot_id": bot_id, "start_time": "2026-11-25T09:30:00Z"}
    return run_attempt(call, bot, deps, 0), crm


@pytest.mark.parametrize(
    "reference",
    [
        lambda t: {"secret": f"{SECRETS}{t['b']}/bot-1/credentials", "key": "token"},
        lambda t: {"parameter": f"{PARAMETERS}{t['b']}/bot-1/token"},
        lambda t: {"secret": t[f"{t['b']}-arn"], "key": "token"},  # complete ARN, with its random suffix
        lambda t: {"secret": t[f"{t['b']}-arn"][:-7], "key": "token"},  # partial ARN
        lambda t: {"parameter": t[f"{t['b']}-ssm-arn"]},
        lambda t: {"secret": f"{SECRETS}{t['a']}/../{t['b']}/bot-1/credentials", "key": "token"},
    ],
    ids=["secret-name", "parameter-name", "secret-arn", "partial-arn", "parameter-arn", "dotdot"],
)
def test_a_bot_of_tenant_a_cannot_read_tenant_bs_credential(reference, tenants, secretsmanager, ssm):
    reads = Reads(secretsmanager, ssm)

    outcome, crm = attempt_with(reference(tenants), tenants["a"], secretsmanager, ssm)

    assert outcome.result.status == "failed"
    assert outcome.result.error_kind == "secret"
    assert outcome.retryable is False  # final: no retry can make it right
    assert "outside this bot's scope" in (outcome.result.error or "")
    assert reads.operations == []  # refused before any read
    assert crm.requests == []
    assert THEIR_TOKEN not in json.dumps(outcome.result.as_item(), default=str)


@pytest.mark.parametrize(
    "reference",
    [
        lambda t: {"secret": f"{SECRETS}{t['a']}/bot-1/credentials", "key": "token"},
        lambda t: {"parameter": f"{PARAMETERS}{t['a']}/bot-1/token"},
        lambda t: {"secret": t[f"{t['a']}-arn"], "key": "token"},
        lambda t: {"parameter": t[f"{t['a']}-ssm-arn"]},
    ],
    ids=["secret-name", "parameter-name", "secret-arn", "parameter-arn"],
)
def test_a_bot_reads_its_own_tenants_credential(reference, tenants, secretsmanager, ssm):
    reads = Reads(secretsmanager, ssm)

    outcome, crm = attempt_with(reference(tenants), tenants["a"], secretsmanager, ssm)

    assert outcome.result.status == "ok", outcome.result.error
    assert len(reads.operations) == 1  # the counter sees reads: the refusals above are real
    assert [r.headers["Authorization"] for r in crm.requests] == [OUR_TOKEN]


def test_a_bot_without_a_tenant_is_scoped_to_its_own_id(tenants, secretsmanager, ssm):
    bot_id = f"bot-{uuid.uuid4().hex[:8]}"
    secretsmanager.create_secret(
        Name=f"{SECRETS}{bot_id}/{bot_id}/credentials", SecretString=json.dumps({"token": OUR_TOKEN})
    )
    reads = Reads(secretsmanager, ssm)

    own, crm = attempt_with(
        {"secret": f"{SECRETS}{bot_id}/{bot_id}/credentials", "key": "token"}, None, secretsmanager, ssm, bot_id
    )
    tenants_secret, other_crm = attempt_with(
        {"secret": f"{SECRETS}{tenants['a']}/bot-1/credentials", "key": "token"}, None, secretsmanager, ssm, bot_id
    )

    assert own.result.status == "ok"
    assert [r.headers["Authorization"] for r in crm.requests] == [OUR_TOKEN]
    assert tenants_secret.result.error_kind == "secret"
    assert tenants_secret.retryable is False
    assert other_crm.requests == []
    assert reads.operations == ["GetSecretValue"]  # the bot's own secret only


def test_a_tenant_id_that_is_a_path_reaches_nothing(tenants, secretsmanager, ssm):
    # tenant_id "a/bot-1" would otherwise make "post-call-push/a/bot-1/..." its own.
    reads = Reads(secretsmanager, ssm)

    outcome, crm = attempt_with(
        {"secret": f"{SECRETS}{tenants['b']}/bot-1/credentials", "key": "token"},
        f"{tenants['b']}/bot-1",
        secretsmanager,
        ssm,
    )

    assert outcome.result.error_kind == "secret"
    assert outcome.retryable is False
    assert "not a usable tenant or bot id" in (outcome.result.error or "")
    assert reads.operations == []
    assert crm.requests == []
