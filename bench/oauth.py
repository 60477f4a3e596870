"""One OAuth token for a fleet: token requests made by ten execution environments at once (contract §13).

Ten OS processes (``tests/integration/oauth_environment.py``: each its own
memory and token source, only the state table and KMS in common, as Lambda
execution environments have) each push 20 calls, all starting at the same
moment, to the CRM of ``scripts/oauth_server.py`` (Authlib), which accepts
only its own tokens and counts every token request. AWS is
scripts/local_stack.py: DynamoDB Local for the shared cache, moto for KMS.

Figures:

* ``oauth_token_requests_10_envs`` - token requests the endpoint received
  (goal: 1; the 199 other calls use the cached token, fetched under one lease);
* ``oauth_calls_ok_10_envs``        - calls the CRM accepted (of 200);
* ``oauth_10_envs_s``              - wall time from the common start to the
  last environment's last call.

    .venv/bin/python -m bench.run oauth
"""

from __future__ import annotations

import uuid

ENVIRONMENTS = 10
CALLS = 20
GOAL_TOKEN_REQUESTS = 1
_SECRET = "bench-" + uuid.uuid4().hex


def measure() -> dict[str, float]:
    from scripts.local_stack import LocalStack
    from tests.integration.oauth_environment import launch
    from tests.integration.oauth_support import OAuthServer, create_kms_key

    server_config = {
        "clients": [{"client_id": "fleet", "client_secret": _SECRET, "grant_types": ["client_credentials"]}],
        "expires_in": 3600,
    }
    with LocalStack(suffix=f"oauth{uuid.uuid4().hex[:6]}") as stack, OAuthServer(server_config) as server:
        endpoints = stack.endpoints
        job = {
            "dynamodb": endpoints.dynamodb,
            "moto": endpoints.moto,
            "state_table": stack.resources.state_table,
            "kms_key_id": create_kms_key(endpoints.moto),
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": server.token_url,
                "client_id": "fleet",
                "client_secret": _SECRET,
                "scope": "crm",
            },
            "scope": "tenant-bench",
            "crm_url": server.crm_url,
            "calls": CALLS,
        }
        summaries, wall = launch(ENVIRONMENTS, job, start_delay=0.5, timeout=300)
        stats = server.stats()
    failed = sum(s["failed"] for s in summaries)
    if failed:
        raise RuntimeError(f"{failed} call(s) failed: {[e for s in summaries for e in s['errors']][:3]}")
    return {
        "oauth_token_requests_10_envs": float(stats["token_requests"]),
        "oauth_calls_ok_10_envs": float(stats["crm_accepted"]),
        "oauth_10_envs_s": round(wall, 2),
    }


def run() -> dict[str, float]:
    figures = measure()
    notes = {
        "oauth_token_requests_10_envs": f"goal {GOAL_TOKEN_REQUESTS}: {ENVIRONMENTS} processes x {CALLS} calls at once",
        "oauth_calls_ok_10_envs": f"of {ENVIRONMENTS * CALLS}",
        "oauth_10_envs_s": "common start to the last call",
    }
    print(f"{'figure':<30} {'value':>8}  note")
    for name, value in figures.items():
        print(f"{name:<30} {value:>8g}  {notes[name]}")
    if figures["oauth_token_requests_10_envs"] > GOAL_TOKEN_REQUESTS:
        print(f"  ! more than {GOAL_TOKEN_REQUESTS} token request: the shared cache's lease did not hold")
    return figures


if __name__ == "__main__":
    print(run())
