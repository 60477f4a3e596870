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

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = 10
CALLS = 20
GOAL_TOKEN_REQUESTS = 1
_SECRET = "bench-" + uuid.uuid4().hex


def _environments(job: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """Start every environment, let each import what it needs, then release them together."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "common"), str(ROOT)])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.oauth_environment"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(ENVIRONMENTS)
    ]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(json.dumps(job) + "\n")
        process.stdin.flush()
    for process in processes:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "READY":
            why = process.stderr.read()[-2000:] if process.stderr else ""
            raise RuntimeError(f"an environment did not start: {why}")
    start_at = time.time() + 0.5
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start_at}\n")
        process.stdin.close()
    summaries = []
    for process in processes:
        assert process.stdout is not None
        assert process.stderr is not None
        out, err = process.stdout.read(), process.stderr.read()  # an environment writes little: no pipe fills up
        if process.wait(timeout=300) != 0:
            raise RuntimeError(f"an environment failed: {err[-2000:]}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return summaries, time.time() - start_at


def measure() -> dict[str, float]:
    from scripts.local_stack import LocalStack
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
        summaries, wall = _environments(job)
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
