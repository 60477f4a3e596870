"""`make run`'s OAuth scene (contract §13): a CRM that accepts only tokens from its own token endpoint.

The token endpoint and the CRM are ``scripts/oauth_server.py`` (Authlib, in
its own process), issuing tokens that live 4 s. The bot authenticates with
the client credentials grant, its secret kept in Secrets Manager (moto) under
its tenant's scope. The token source is wired as the function wires it when
``PUSH_KMS_KEY_ID`` is set: one token per auth config, cached encrypted (KMS
envelope) in the state table. Shown: one token request serves a batch of
calls, the next batch after the token expired costs exactly one renewal, and
the cached token is not readable in the table.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
TOKEN_LIFETIME_SECONDS = 4
_SCOPE = "tenant-oauth-demo"


def play_oauth(stack: Any, app: Any) -> bool:
    """Two batches to an OAuth CRM, the token expiring between them; True when it went as the contract says."""
    from crm_push.oauth.cache import SharedTokenCache
    from crm_push.oauth.provider import TokenSource
    from crm_push.oauth.rotation import AwsRefreshTokenStore
    from scripts.local_run import _say
    from tests.integration.oauth_support import OAuthServer

    _say("OAuth: a CRM that accepts only tokens from its own token endpoint (tokens live 4 s)")
    client_secret = "demo-" + uuid.uuid4().hex  # never printed: only where it is kept
    config = {
        "clients": [{"client_id": "demo-app", "client_secret": client_secret, "grant_types": ["client_credentials"]}],
        "expires_in": TOKEN_LIFETIME_SECONDS,
    }
    deps, _ = app._runtime()
    kept_tokens = deps.tokens
    with OAuthServer(config) as server:
        secret_name = f"post-call-push/{_SCOPE}/crm"
        secrets = stack.session.client("secretsmanager")
        secrets.create_secret(Name=secret_name, SecretString=json.dumps({"client_secret": client_secret}))
        kms = stack.session.client("kms")
        key_id = kms.create_key(Description="make run: OAuth token cache")["KeyMetadata"]["KeyId"]
        state_table = stack.resources.state_table
        deps.tokens = TokenSource(
            deps.crm,
            cache=SharedTokenCache(stack.dynamodb, state_table, kms, key_id),
            refresh_tokens=AwsRefreshTokenStore(dynamodb=stack.dynamodb, bots_table=stack.resources.bots_table),
            allow_private_networks=True,
        )
        bot = stack.sample_bot()
        bot["bot_id"] = "bot-oauth-demo"
        bot["tenant_id"] = _SCOPE
        push = bot["post_call_push"]
        for name in ("token", "signing_secret", "headers"):
            push.pop(name, None)
        push["url"] = server.crm_url
        push["auth"] = {
            "type": "oauth2_client_credentials",
            "token_url": server.token_url,
            "client_id": "demo-app",
            "client_secret": {"secret": secret_name, "key": "client_secret"},
            "scope": "crm.write",
        }
        stack.put_bot(bot)
        print(f"bot {bot['bot_id']}: grant oauth2_client_credentials at {server.url}, secret {secret_name}")
        try:
            first = _batch(stack, app, bot, "oauth-a", 5)
            after_first = server.stats()
            print(
                f"batch of 5 calls: {first}; token requests {after_first['token_requests']}, "
                f"CRM accepted {after_first['crm_accepted']}"
            )
            time.sleep(TOKEN_LIFETIME_SECONDS + 0.5)
            second = _batch(stack, app, bot, "oauth-b", 3)
            after_second = server.stats()
            print(
                f"{TOKEN_LIFETIME_SECONDS + 0.5:g} s later (the token expired), batch of 3 calls: {second}; token "
                f"requests {after_second['token_requests']} (one renewal), CRM accepted {after_second['crm_accepted']}"
            )
            cached = _cached_token_fields(stack.dynamodb, state_table)
            print(f"state table item token#…: {', '.join(cached)} (ct: AES-GCM ciphertext, dk: KMS-encrypted data key)")
        finally:
            deps.tokens = kept_tokens
    return bool(
        first == {"ok": 5}
        and second == {"ok": 3}
        and after_first["token_requests"] == 1
        and after_second["token_requests"] == 2
        and after_second["crm_rejected"] == 0
        and "ct" in cached
    )


def _batch(stack: Any, app: Any, bot: dict[str, Any], prefix: str, count: int) -> dict[str, int]:
    """``count`` calls of ``bot`` in one stream batch; how their results came out."""
    from scripts.local_stack import LambdaContextStub
    from scripts.make_events import stream_record

    template = json.loads((EVENTS / "sample_call.json").read_text())
    records, ids = [], []
    for i in range(count):
        call = {**template, "call_id": f"{template['call_id']}-{prefix}-{i}", "bot_id": bot["bot_id"]}
        stack.put_call(call)
        ids.append(call["call_id"])
        image = json.loads(json.dumps(call), parse_float=Decimal)
        records.append(
            stream_record(image, None, event_name="INSERT", sequence_number=str(300 + i), event_id=f"{prefix}{i}")
        )
    app.lambda_handler({"Records": records}, LambdaContextStub())
    outcomes: dict[str, int] = {}
    for call_id in ids:
        status = str(stack.get_call(call_id).get("post_call_push_result", {}).get("status"))
        outcomes[status] = outcomes.get(status, 0) + 1
    return outcomes


def _cached_token_fields(dynamodb: Any, state_table: str) -> list[str]:
    """The attribute names of the cached token's item: what an operator reading the table sees (no token)."""
    items = dynamodb.scan(
        TableName=state_table,
        FilterExpression="begins_with(pk, :token)",
        ExpressionAttributeValues={":token": {"S": "token#"}},
    )["Items"]
    return sorted(items[0]) if items else []
