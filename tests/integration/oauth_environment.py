"""One execution environment in its own OS process: a token source of its own, pushes to the test CRM.

    python -m tests.integration.oauth_environment < job.json

The job (one JSON line) names the local stack, the auth config, and either a
number of calls or a duration. The process prints ``READY`` once imported and
waits for a second line: the epoch at which every environment starts. Each
call asks the token source for a token, POSTs to the CRM with it and, on a
401, asks for a new one with the rejected token and sends once more (as the
core does inside one attempt). Prints a JSON summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crm_push.oauth.config import parse_auth_config
from crm_push.oauth.tokens import AuthFailed
from crm_push.ports import PushRequest, SendOutcome
from tests.integration.oauth_support import make_token_source, wait_until

ROOT = Path(__file__).resolve().parents[2]


def launch(
    count: int, job: dict[str, Any], *, start_delay: float, timeout: float
) -> tuple[list[dict[str, Any]], float]:
    """Run ``count`` environments on ``job``, released together once every one has imported what it needs.

    Returns each environment's summary and the seconds from the common start to the last one's end;
    RuntimeError when one does not start or fails. Used by the shared-cache tests and ``bench.oauth``.
    """
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
        for _ in range(count)
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
    start_at = time.time() + start_delay
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start_at}\n")
        process.stdin.close()
    summaries = []
    for process in processes:
        assert process.stdout is not None
        assert process.stderr is not None
        out, err = process.stdout.read(), process.stderr.read()  # an environment writes little: no pipe fills up
        if process.wait(timeout=timeout) != 0:
            raise RuntimeError(f"an environment failed: {err[-2000:]}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return summaries, time.time() - start_at


def main() -> int:
    job = json.loads(sys.stdin.readline())
    auth = parse_auth_config(job["auth"])
    source = make_token_source(
        dynamodb_endpoint=job["dynamodb"],
        moto_endpoint=job["moto"],
        state_table=job["state_table"],
        kms_key_id=job["kms_key_id"],
    )
    sender = source._sender  # the same sender the tokens came through
    summary: dict[str, Any] = {"calls": 0, "ok": 0, "resent": 0, "failed": 0, "errors": []}
    # Imports take seconds when many processes start at once: say so, then start when told.
    print("READY", flush=True)
    start_at = float(sys.stdin.readline())
    wait_until(start_at)
    stop_at = start_at + job.get("duration", 0)
    while summary["calls"] < job.get("calls", 10**9) and (not job.get("duration") or time.time() < stop_at):
        summary["calls"] += 1
        try:
            token = source.token(auth, job["scope"], secrets=None, deadline=time.monotonic() + 10)
            status = _push(sender, job["crm_url"], token.authorization)
            if status == 401:
                summary["resent"] += 1
                token = source.token(
                    auth, job["scope"], secrets=None, rejected=token.access_token, deadline=time.monotonic() + 10
                )
                status = _push(sender, job["crm_url"], token.authorization)
            summary["ok" if status == 200 else "failed"] += 1
        except AuthFailed as exc:
            summary["failed"] += 1
            summary["errors"].append(str(exc))
        time.sleep(job.get("interval", 0.0))
    summary["token_requests"] = source.token_requests
    print(json.dumps(summary))
    return 0


def _push(sender: object, url: str, authorization: str) -> int | None:
    request = PushRequest(
        "call-x", "POST", url, {"Authorization": authorization, "Content-Type": "application/json"}, b"{}", url
    )
    outcome: SendOutcome = sender.send(request)  # type: ignore[attr-defined]
    return outcome.http_status


if __name__ == "__main__":
    sys.exit(main())
