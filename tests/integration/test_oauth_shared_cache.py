"""The shared token cache with OS processes as separate execution environments, against DynamoDB Local.

Each environment is its own Python process (``oauth_environment.py``): its
own memory, its own token source, only the state table and KMS in common, as
Lambda execution environments have. The token endpoint is the Authlib server,
which counts every token request.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from crm_push.oauth.config import cache_key, parse_auth_config
from scripts.local_stack import AwsEndpoints, create_state_table
from tests.integration.oauth_environment import launch
from tests.integration.oauth_support import OAuthServer, create_kms_key, make_token_source

SECRET = "cs-" + uuid.uuid4().hex
pytestmark = pytest.mark.slow


def server_config(**extra: Any) -> dict[str, Any]:
    return {
        "clients": [{"client_id": "fleet", "client_secret": SECRET, "grant_types": ["client_credentials"]}],
        "expires_in": 3600,
        **extra,
    }


@pytest.fixture
def stack(aws: AwsEndpoints, dynamodb: Any) -> dict[str, str]:
    return {
        "dynamodb": aws.dynamodb,
        "moto": aws.moto,
        "state_table": create_state_table(dynamodb, uuid.uuid4().hex[:10]),
        "kms_key_id": create_kms_key(aws.moto),
    }


def auth_for(server: OAuthServer) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": server.token_url,
        "client_id": "fleet",
        "client_secret": SECRET,
        "scope": "crm",
    }


def run_environments(count: int, stack: dict[str, str], server: OAuthServer, **job: Any) -> list[dict[str, Any]]:
    """Start ``count`` environments together, once every one has imported what it needs."""
    body = {**stack, "auth": auth_for(server), "scope": "tenant-a", "crm_url": server.crm_url, **job}
    summaries, _ = launch(count, body, start_delay=0.3, timeout=120)
    return summaries


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer(server_config()) as running:
        yield running


def test_ten_environments_twenty_calls_each_make_one_token_request(server: OAuthServer, stack: dict[str, str]) -> None:
    results = run_environments(10, stack, server, calls=20, interval=0.01)
    assert sum(r["ok"] for r in results) == 200
    assert sum(r["failed"] for r in results) == 0
    assert server.stats()["token_requests"] == 1
    assert sum(r["token_requests"] for r in results) == 1

    # New environments (cold memory) find the token in the table: no request at all.
    again = run_environments(3, stack, server, calls=5)
    assert sum(r["ok"] for r in again) == 15
    assert server.stats()["token_requests"] == 1


def test_a_revoked_token_costs_exactly_one_more_request_across_the_fleet(
    server: OAuthServer, stack: dict[str, str]
) -> None:
    run_environments(2, stack, server, calls=2)
    assert server.stats()["token_requests"] == 1
    server.revoke()  # the CRM now answers 401 to the cached token
    results = run_environments(10, stack, server, calls=5, interval=0.01)
    assert sum(r["ok"] for r in results) == 50
    assert 1 <= sum(r["resent"] for r in results) <= 10  # each environment at most once: then it has the new one
    assert server.stats()["token_requests"] == 2


def test_an_expiring_token_is_renewed_once(stack: dict[str, str]) -> None:
    # A 3 s token is renewed when less than 0.3 s remains (10 % of its life): within 4 s of calls, once.
    with OAuthServer(server_config(expires_in=3)) as server:
        results = run_environments(6, stack, server, duration=4.0, interval=0.05)
        assert sum(r["failed"] for r in results) == 0
        assert all(r["ok"] == r["calls"] > 0 for r in results), results
        assert server.stats()["token_requests"] == 2


def test_a_zoho_like_endpoint_never_refuses_twenty_environments_for_a_simulated_hour(stack: dict[str, str]) -> None:
    """Zoho: 1 h tokens, at most 10 new tokens per 10 minutes per refresh token, then blocked.

    Time is scaled 600:1 (1 real second = 10 minutes): tokens live 6 s, the endpoint refuses the
    11th token within any 1 s window; 20 environments call every 50 ms for 9 s (1.5 simulated hours).
    """
    limit = {"max_tokens": 10, "window_seconds": 1.0}
    with OAuthServer(server_config(expires_in=6, rate_limit=limit)) as server:
        results = run_environments(20, stack, server, duration=9.0, interval=0.05)
        stats = server.stats()
        assert stats["refused_rate_limited"] == 0
        assert sum(r["failed"] for r in results) == 0
        assert stats["token_requests"] == 2  # the first, and the renewal after 5.4 s


def test_the_token_at_rest_is_encrypted(server: OAuthServer, stack: dict[str, str], aws: AwsEndpoints) -> None:
    source = make_token_source(
        dynamodb_endpoint=stack["dynamodb"],
        moto_endpoint=stack["moto"],
        state_table=stack["state_table"],
        kms_key_id=stack["kms_key_id"],
    )
    auth = parse_auth_config(auth_for(server))
    token = source.token(auth, "tenant-a", secrets=None)
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=aws.dynamodb)
    items = client.scan(TableName=stack["state_table"])["Items"]
    assert [item["pk"]["S"] for item in items] == [f"token#{cache_key(auth, 'tenant-a', None)}"]
    dumped = repr(items)
    assert token.access_token not in dumped
    assert SECRET not in dumped
    assert set(items[0]) >= {"ct", "dk", "fp", "exp", "gen"}
    # The ciphertext is bound to its item: moved under another key it does not decrypt.
    from crm_push.oauth.cache import SharedTokenCache
    from crm_push.oauth.tokens import AuthFailed

    cache = SharedTokenCache(
        client,
        stack["state_table"],
        boto3.client("kms", region_name="us-east-1", endpoint_url=aws.moto),
        stack["kms_key_id"],
    )
    cached = cache.read(cache_key(auth, "tenant-a", None))
    assert cached is not None
    assert cache.decrypt(cache_key(auth, "tenant-a", None), cached).access_token == token.access_token
    with pytest.raises(AuthFailed):
        cache.decrypt(cache_key(auth, "tenant-b", None), cached)
