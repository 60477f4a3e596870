"""A CRM that hangs: what one stream batch costs, and what ten containers send before they all stop.

The CRM is ``LocalCrm`` made to accept every request and never answer (it
holds each one until the section ends). AWS is scripts/local_stack.py:
DynamoDB Local for the tables (the circuit state included), moto for the
SQS retry queue. The handler is the real one with the function's own
numbers: 10 s per attempt, 3 s to connect, 16 calls at once, circuit open
after 5 consecutive failures for 60 s.

Figures:

* ``batch_100_crm_hanging_s``        - ``lambda_handler`` wall time for one
  100-record INSERT batch (warm container: the wiring is built before the
  clock starts). Goal <= 25 s, with no record in ``batchItemFailures``,
  every call with an attempt scheduled or held back, and at most 20
  requests reaching the CRM (all checked: the section fails otherwise);
* ``batch_100_crm_hanging_requests`` - requests the CRM received in it;
* ``circuit_10_containers_requests`` - ten containers (separate processes:
  Powertools counts failures in module state, which module copies in one
  process would share) each given a 20-record batch at the same moment:
  requests the CRM received before every one of them held its calls back;
* ``circuit_10_containers_openings`` - ``CircuitOpened`` transitions they
  reported (one per container that tripped on its own failures);
* ``circuit_late_container_requests`` - requests from an eleventh container
  started after the circuit opened (its first read of the state finds it open);
* ``rate_limited_extra_wcu_per_call`` - write units a call costs more when
  its bot has ``rate_limit_per_second: 5`` and 30 calls arrive at once
  (counter updates, and the claim given back and taken again for each wait),
  measured with bench/dynamodb_local.py's meter against the same batch
  without a limit, CRM answering at once.

    .venv/bin/python -m bench.run hanging_crm
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scripts.local_stack import MetricCounter, small_calls

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 100
CONTAINERS = 10
CONTAINER_RECORDS = 20
RATE_CALLS = 30
RATE_LIMIT = 5

GOAL_BATCH_S = 25.0
GOAL_REQUESTS = 20
# The CRM never answers while the bench runs: answering later would only write to sockets the push
# closed long ago (a BrokenPipe traceback in the middle of another section's table).
HANG_SECONDS = 3600.0


class _Context:
    function_name = "post-call-push"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:post-call-push"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _import_paths() -> None:
    for path in (str(ROOT / "layers" / "common"), str(ROOT / "functions" / "post_call_push")):
        if path not in sys.path:
            sys.path.insert(0, path)


def _warm_handler(counts: MetricCounter) -> Any:
    """The handler module, wired (a warm container), its gate counting transitions into ``counts``."""
    _import_paths()
    sys.modules.pop("app", None)
    app: Any = importlib.import_module("app")
    deps, _ = app._runtime()
    import boto3

    from crm_push.adapters.destination_gate import CircuitAndRateGate, state_table_gate

    if not isinstance(deps.gate, CircuitAndRateGate):
        raise RuntimeError("the function is not wired with the destination gate")
    # The function's own gate (same table, same numbers), with a metric callback the bench can read.
    dynamodb = boto3.session.Session().client("dynamodb")
    app._deps = replace(deps, gate=state_table_gate(dynamodb, os.environ["PUSH_STATE_TABLE"], count_metric=counts))
    return app


def _seed(stack: Any, bot: dict[str, Any], count: int, prefix: str) -> list[dict[str, Any]]:
    calls = small_calls(bot["bot_id"], count, f"{prefix}-{uuid.uuid4().hex[:6]}")  # fresh ids every run
    for call in calls:
        stack.put_call(call)
    return calls


def _event(calls: list[dict[str, Any]], start: int = 1) -> dict[str, Any]:
    from tests.conftest import insert_event

    event: dict[str, Any] = json.loads(json.dumps(insert_event(*calls, start_sequence=start), default=str))
    return event


def _unscheduled(stack: Any, calls: list[dict[str, Any]]) -> list[str]:
    """Calls left without a next attempt: each should have one (tried and failed, or held back).

    A call the deadline kept from its attempt has no outcome on its item yet: its wake-up
    on the retry queue is its next attempt.
    """
    from tests.retry_queue import queued

    queue = SimpleNamespace(sqs=stack.sqs, retry_queue_url=stack.resources.retry_queue_url)
    woken = {json.loads(record["body"]).get("call_id") for record in queued(queue)}
    left = []
    for call in calls:
        result = stack.get_call(call["call_id"]).get("post_call_push_result") or {}
        if not result.get("next_attempt_at") and call["call_id"] not in woken:
            left.append(call["call_id"])
    return left


# --- one container per process --------------------------------------------------------------------


def _container(path: str) -> None:
    """In a fresh process: wire the handler, say "ready", wait for "go", run the batch, print what happened."""
    work = json.loads(Path(path).read_text())
    counts = MetricCounter()
    app = _warm_handler(counts)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    response = app.lambda_handler(work["event"], _Context())
    seconds = time.perf_counter() - started
    app._executor.shutdown(wait=True)
    print(json.dumps({"seconds": seconds, "failures": len(response["batchItemFailures"]), "counts": counts.counts}))


def _run_containers(stack: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start one process per event, release them together, and collect their reports."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "PUSH_", "CLAIM_"))},
        **stack.function_env(),
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    files, procs = [], []
    try:
        for event in events:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump({"event": event}, f)
                files.append(f.name)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.hanging_crm", "--container", f.name],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a container did not start")
        for proc in procs:  # as close together as one loop gets them
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, _ = proc.communicate(timeout=180)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for name in files:
            os.unlink(name)


# --- the measurements -----------------------------------------------------------------------------


def _hanging() -> Callable[[Any], Any]:
    from scripts.local_crm import CrmAnswer

    never = threading.Event()

    def respond(_request: Any) -> Any:
        never.wait(timeout=HANG_SECONDS)
        return CrmAnswer(503)

    return respond


def measure_hanging() -> dict[str, float]:
    from scripts.local_stack import LocalStack

    figures: dict[str, float] = {}
    with LocalStack(suffix=f"hang{uuid.uuid4().hex[:6]}", crm_responder=_hanging()) as stack:
        bot = stack.sample_bot()
        stack.put_bot(bot)

        # One batch in this process.
        calls = _seed(stack, bot, RECORDS, "hang")
        counts = MetricCounter()
        app = _warm_handler(counts)
        started = time.perf_counter()
        response = app.lambda_handler(_event(calls), _Context())
        seconds = time.perf_counter() - started
        requests = len(stack.crm.requests)
        app._executor.shutdown(wait=True)
        unscheduled = _unscheduled(stack, calls)
        if response["batchItemFailures"] or unscheduled or requests > GOAL_REQUESTS or seconds > GOAL_BATCH_S:
            raise RuntimeError(
                f"hanging CRM batch: {seconds:.1f} s, {requests} requests, "
                f"{len(response['batchItemFailures'])} reported for retry, {len(unscheduled)} left unscheduled"
            )
        figures["batch_100_crm_hanging_s"] = round(seconds, 2)
        figures["batch_100_crm_hanging_requests"] = requests
        print(f"one batch: {dict(counts.counts)}")

    # Ten containers at once need a closed circuit: a stack of their own, whose CRM has another port.
    with LocalStack(suffix=f"hang10{uuid.uuid4().hex[:6]}", crm_responder=_hanging()) as stack:
        bot = stack.sample_bot()
        stack.put_bot(bot)
        batches = [_seed(stack, bot, CONTAINER_RECORDS, f"c{i}") for i in range(CONTAINERS)]
        reports = _run_containers(stack, [_event(b) for b in batches])
        together = len(stack.crm.requests)
        openings = sum(r["counts"].get("CircuitOpened", 0) for r in reports)
        slowest = max(r["seconds"] for r in reports)
        if any(r["failures"] for r in reports):
            raise RuntimeError("a container reported records for retry")
        late_calls = _seed(stack, bot, CONTAINER_RECORDS, "late")
        late = _run_containers(stack, [_event(late_calls)])
        late_requests = len(stack.crm.requests) - together
        if late[0]["failures"] or _unscheduled(stack, late_calls):
            raise RuntimeError("the late container did not hold its calls back")
        figures["circuit_10_containers_requests"] = together
        figures["circuit_10_containers_openings"] = openings
        figures["circuit_late_container_requests"] = late_requests
        print(
            f"{CONTAINERS} containers x {CONTAINER_RECORDS} calls: {together} requests, {openings} openings, "
            f"slowest batch {slowest:.1f} s; a container started after: {late_requests} requests"
        )
    return figures


def _rate_batch_wcu(limit: float | None) -> tuple[float, int, float]:
    """30 calls in one batch through the handler, the CRM answering at once: (WCU, refused writes, seconds)."""
    from bench.dynamodb_local import WriteCapacityMeter
    from scripts.local_stack import LocalStack

    meter = WriteCapacityMeter()
    with LocalStack(suffix=f"rate{uuid.uuid4().hex[:6]}") as stack:
        bot = stack.sample_bot()
        if limit is not None:
            bot["post_call_push"]["rate_limit_per_second"] = limit
        stack.put_bot(bot)
        calls = _seed(stack, bot, RATE_CALLS, "rate")
        with meter.installed():
            app = _warm_handler(MetricCounter())
        meter.reset()
        started = time.perf_counter()
        response = app.lambda_handler(_event(calls), _Context())
        seconds = time.perf_counter() - started
        app._executor.shutdown(wait=True)
        if response["batchItemFailures"] or len(stack.crm.requests) != RATE_CALLS:
            raise RuntimeError(f"the rate batch did not push cleanly: {len(stack.crm.requests)} of {RATE_CALLS}")
    return meter.total, meter.refused_writes, seconds


def measure_rate_cost() -> dict[str, float]:
    plain_wcu, plain_refused, plain_s = _rate_batch_wcu(None)
    limited_wcu, limited_refused, limited_s = _rate_batch_wcu(RATE_LIMIT)
    extra = (limited_wcu - plain_wcu + limited_refused - plain_refused) / RATE_CALLS
    print(
        f"{RATE_CALLS} calls: unlimited {plain_wcu:g} WCU + {plain_refused} refused writes in {plain_s:.1f} s; "
        f"at {RATE_LIMIT}/s {limited_wcu:g} WCU + {limited_refused} refused writes in {limited_s:.1f} s "
        "(a refused conditional write is billed 1 WCU)"
    )
    return {"rate_limited_extra_wcu_per_call": round(extra, 2)}


def run() -> dict[str, float]:
    figures = {**measure_hanging(), **measure_rate_cost()}
    notes = {
        "batch_100_crm_hanging_s": f"<= {GOAL_BATCH_S}",
        "batch_100_crm_hanging_requests": f"<= {GOAL_REQUESTS}",
        "circuit_10_containers_requests": f"{CONTAINERS} containers x {CONTAINER_RECORDS} calls at once",
        "circuit_10_containers_openings": "one per container that tripped",
        "circuit_late_container_requests": "a container started after the opening",
        "rate_limited_extra_wcu_per_call": f"{RATE_CALLS} calls at {RATE_LIMIT}/s vs no limit",
    }
    print(f"{'figure':<34} {'value':>8}  note")
    for name, value in figures.items():
        print(f"{name:<34} {value:>8g}  {notes[name]}")
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--container":
        _container(sys.argv[2])
    else:
        print(run())
