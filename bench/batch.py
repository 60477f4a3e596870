"""One stream batch of 100 eligible records through the real handler: worker pool vs one at a time.

Set-up: AWS is a moto server in its own process (its CPU does not share a
GIL with the handler), the CRM is ``LocalCrm`` answering every request after
50 ms, and the handler runs in a fresh subprocess that imports only what the
function imports, so its peak RSS is the function's own (no moto, no test
tooling, no Jinja from other sections). One warm container per mode: the
wiring (``app._runtime()``) is built before the clock starts; each batch has
fresh calls.

Figures:

* ``batch_100_s``        - ``lambda_handler`` wall time for one 100-record
  INSERT batch with the default worker pool; median of ``RUNS`` batches;
* ``batch_sequential_s`` - the same with ``PUSH_CONCURRENCY=1`` (one batch);
* ``batch_speedup``      - ``batch_sequential_s / batch_100_s``;
* ``peak_rss_mb``        - ``ru_maxrss`` of the default-pool handler process
  after its batches: interpreter, boto3, Powertools, pydantic, our code and
  the batches in flight;
* ``moto_cpu_s``         - CPU seconds the moto process spent per pooled
  batch. moto serves DynamoDB one request at a time under its GIL, so no
  batch through it can take less wall time than this;
* ``handler_cpu_s``      - CPU seconds the handler process spent per pooled
  batch (botocore, rendering, HTTP, logging): the budget to size Lambda's
  memory (hence CPU share) by;
* ``batch_100_dynamodb_5ms_s`` - the pooled batch again with the Calls, Bots
  and delivery-state tables replaced by in-process stand-ins that answer after 5 ms (about
  DynamoDB's in-region latency) and cost no CPU: what the handler, its pool,
  the rendering and the CRM round trips do without moto as the floor. No
  botocore work is done for those calls, so it flatters a little;
* ``batch_speedup_dynamodb_5ms`` - its sequential time over its pooled time.

    .venv/bin/python -m bench.run batch
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 100
RUNS = 3
CRM_DELAY_SECONDS = 0.05
STAND_IN_LATENCY_SECONDS = 0.005

GOAL_BATCH_S = 0.6
GOAL_SPEEDUP = 8.0
GOAL_RSS_MB = 128.0

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_SESSION_TOKEN": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

_MOTO_SERVER = r"""
import logging, threading
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
threading.Event().wait()
"""


class MotoProcess:
    """A moto server in a process of its own; ``cpu_seconds()`` is what it has burnt so far."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER], stdout=subprocess.PIPE, text=True, env={**os.environ, **_AWS_ENV}
        )
        assert self._proc.stdout is not None
        port = self._proc.stdout.readline().strip()
        if not port.isdigit():
            self.stop()
            raise RuntimeError("the moto server did not start")
        self.endpoint = f"http://127.0.0.1:{port}"

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")  # not Linux: the figure is unavailable
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def _seed(
    endpoint: str, crm_url: str, batches: int
) -> tuple[str, str, str, dict[str, Any], list[list[dict[str, Any]]]]:
    """Tables, a bot pointing at the CRM, and ``batches`` x 100 fresh calls (each is pushed once)."""
    import boto3

    from scripts.local_stack import create_state_table
    from tests.conftest import create_tables, to_dynamodb

    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    suffix = uuid.uuid4().hex[:8]
    calls_table, bots_table = create_tables(dynamodb, suffix)
    state_table = create_state_table(dynamodb, suffix)
    bot = json.loads((ROOT / "events" / "sample_bot.json").read_text())
    bot["post_call_push"]["url"] = f"{crm_url}/api/v2/call-outcomes"
    dynamodb.put_item(TableName=bots_table, Item=to_dynamodb(bot))
    template = json.loads((ROOT / "events" / "sample_call.json").read_text())
    groups = []
    for b in range(batches):
        group = [{**template, "call_id": f"bench-{b}-{i:03d}-{uuid.uuid4().hex[:6]}"} for i in range(RECORDS)]
        for call in group:
            dynamodb.put_item(TableName=calls_table, Item=to_dynamodb(call))
        groups.append(group)
    return calls_table, bots_table, state_table, bot, groups


def _events(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    from tests.conftest import insert_event

    return [
        json.loads(json.dumps(insert_event(*group, start_sequence=1 + b * RECORDS), default=str))
        for b, group in enumerate(groups)
    ]


def _run_worker(env: dict[str, str], work: dict[str, Any]) -> dict[str, Any]:
    """Run the handler over ``work["events"]`` in a fresh process; its timings and peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(work, f)
        path = f.name
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.batch", "--worker", path],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.unlink(path)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- in the worker process ----------------------------------------------------------------------


class _StandInCalls:
    """The Calls table as DynamoDB treats these fresh calls (every write applies), ``latency`` per call."""

    def __init__(self, items: dict[str, dict[str, Any]], latency: float) -> None:
        self._items, self._latency = items, latency

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        time.sleep(self._latency)
        item = self._items.get(call_id)
        return dict(item) if item else None

    def write_outcome(
        self,
        call_id: str,
        result: dict[str, Any],
        entries: list[dict[str, Any]],
        event: dict[str, Any],
        force: bool = False,
    ) -> bool:
        time.sleep(self._latency)
        return True

    def append_entries(self, call_id: str, entries: list[dict[str, Any]]) -> bool:
        time.sleep(self._latency)
        return True


class _StandInDelivery:
    """The delivery-state table for fresh calls: every claim wins, every save applies."""

    def __init__(self, latency: float) -> None:
        self._latency = latency

    def claim(
        self, call_id: str, claim_id: str, trigger: str, now: Any, lease_seconds: int, force: bool, **_: Any
    ) -> Any:
        from crm_push.ports import DeliveryState

        time.sleep(self._latency)
        return DeliveryState()

    def save(self, call_id: str, claim_id: str | None, update: Any, now: Any) -> bool:
        time.sleep(self._latency)
        return True

    def mark_written(self, call_id: str, attempts: int) -> bool:
        time.sleep(self._latency)
        return True

    def release_parked(self, call_id: str, waits_on: Any, due: Any) -> bool:
        time.sleep(self._latency)
        return True

    def release(self, call_id: str, claim_id: str) -> None:
        time.sleep(self._latency)


class _StandInBots:
    def __init__(self, bot: dict[str, Any], latency: float) -> None:
        from crm_push.config import load_bot_config

        self._bot, self._latency, self._read = load_bot_config(bot, bot["bot_id"]), latency, False

    def get_bot(self, bot_id: str) -> Any:
        if not self._read:  # cached per container, like the real one
            time.sleep(self._latency)
            self._read = True
        return self._bot


def _worker(path: str) -> None:
    """In the fresh process: the handler as Lambda would run it, one warm container."""
    import resource
    from dataclasses import replace

    sys.path[:0] = [str(ROOT / "layers" / "common"), str(ROOT / "functions" / "post_call_push")]
    work = json.loads(Path(path).read_text())
    import app

    deps, _ = app._runtime()  # the container's init: clients and pools
    latency = work.get("stand_in_latency")
    if latency is not None:
        from boto3.dynamodb.types import TypeDeserializer

        plain = TypeDeserializer().deserialize
        items = {}
        for event in work["events"]:
            for record in event["Records"]:
                item = {k: plain(v) for k, v in record["dynamodb"]["NewImage"].items()}
                items[item["call_id"]] = item
        app._deps = replace(
            deps,
            calls=_StandInCalls(items, latency),
            bots=_StandInBots(work["bot"], latency),
            state=_StandInDelivery(latency),
        )
    seconds, cpu, failures = [], [], []
    for event in work["events"]:
        used = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        response = app.lambda_handler(event, _Context())
        seconds.append(time.perf_counter() - started)
        now = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
        failures.append(len(response["batchItemFailures"]))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "failures": failures, "rss_mb": rss_mb}))


class _Context:
    function_name = "post-call-push"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:post-call-push"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


# --- the section ------------------------------------------------------------------------------


def run() -> dict[str, float]:
    from scripts.local_crm import CrmAnswer, LocalCrm

    moto = MotoProcess()
    try:
        with LocalCrm(lambda _req: CrmAnswer(200, delay_seconds=CRM_DELAY_SECONDS)) as crm:
            calls_table, bots_table, state_table, bot, groups = _seed(moto.endpoint, crm.url, RUNS + 1)
            events = _events(groups)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "PUSH_", "CLAIM_"))},
                **_AWS_ENV,
                "AWS_ENDPOINT_URL": moto.endpoint,
                "CALLS_TABLE": calls_table,
                "BOTS_TABLE": bots_table,
                "PUSH_STATE_TABLE": state_table,
                "PUBLIC_BASE_URL": "https://api.example.com",
                "PUSH_ALLOW_PRIVATE_NETWORKS": "true",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_NAMESPACE": "PostCallPushBench",
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
            cpu_before = moto.cpu_seconds()
            pooled = _run_worker(env, {"events": events[:RUNS]})
            moto_cpu_s = (moto.cpu_seconds() - cpu_before) / RUNS
            sequential = _run_worker({**env, "PUSH_CONCURRENCY": "1"}, {"events": events[RUNS:]})
            stand_in_work = {"bot": bot, "stand_in_latency": STAND_IN_LATENCY_SECONDS}
            stand_in = _run_worker(env, {**stand_in_work, "events": events[:RUNS]})
            stand_in_sequential = _run_worker(
                {**env, "PUSH_CONCURRENCY": "1"}, {**stand_in_work, "events": events[RUNS:]}
            )
            sent = len(crm.requests)
    finally:
        moto.stop()

    expected = RECORDS * (2 * RUNS + 2)
    runs = (pooled, sequential, stand_in, stand_in_sequential)
    if sent != expected or any(n for r in runs for n in r["failures"]):
        raise RuntimeError(f"the batches did not push cleanly: {sent} of {expected} sent")
    batch_s = statistics.median(pooled["seconds"])
    sequential_s = sequential["seconds"][0]
    figures = {
        "batch_100_s": round(batch_s, 3),
        "batch_sequential_s": round(sequential_s, 3),
        "batch_speedup": round(sequential_s / batch_s, 1),
        "peak_rss_mb": round(pooled["rss_mb"], 1),
        "moto_cpu_s": round(moto_cpu_s, 3),
        "handler_cpu_s": round(statistics.median(pooled["cpu"]), 3),
        "batch_100_dynamodb_5ms_s": round(statistics.median(stand_in["seconds"]), 3),
    }
    figures["batch_speedup_dynamodb_5ms"] = round(
        stand_in_sequential["seconds"][0] / figures["batch_100_dynamodb_5ms_s"], 1
    )
    rows = [
        ("batch_100_s", f"{figures['batch_100_s']:.3f}", f"<= {GOAL_BATCH_S}"),
        ("batch_sequential_s", f"{figures['batch_sequential_s']:.3f}", ""),
        ("batch_speedup", f"{figures['batch_speedup']:.1f}", f">= {GOAL_SPEEDUP}"),
        ("peak_rss_mb", f"{figures['peak_rss_mb']:.1f}", f"< {GOAL_RSS_MB}"),
        ("moto_cpu_s", f"{figures['moto_cpu_s']:.3f}", "floor of batch_100_s here"),
        ("handler_cpu_s", f"{figures['handler_cpu_s']:.3f}", "one core; Lambda at 256 MB has a fraction"),
        ("batch_100_dynamodb_5ms_s", f"{figures['batch_100_dynamodb_5ms_s']:.3f}", "tables 5 ms, no moto"),
        ("batch_speedup_dynamodb_5ms", f"{figures['batch_speedup_dynamodb_5ms']:.1f}", "the same, vs sequential"),
    ]
    print(f"{'figure':<26} {'value':>8}  goal")
    for name, value, goal in rows:
        print(f"{name:<26} {value:>8}  {goal}")
    print(
        f"pooled batches: {', '.join(f'{s:.3f}' for s in pooled['seconds'])} s; "
        f"with 5 ms tables: {', '.join(f'{s:.3f}' for s in stand_in['seconds'])} s, "
        f"sequential {stand_in_sequential['seconds'][0]:.3f} s, "
        f"handler CPU {statistics.median(stand_in['cpu']):.3f} s per batch (no botocore for the tables)"
    )
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        print(run())
