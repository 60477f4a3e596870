"""A destination down for 6 hours: how often each waiting call wakes, and how fast the backlog goes once it is back.

Contract §14: a call held by an open circuit or a quota wakes at most once
per ladder step plus once at its destination's recovery (at most the
schedule's length + 2 times, however long the outage), the destination is
probed about once a minute by one waiting call (not by every call), and
when a probe closes the circuit every waiting call goes out within 60 s.

The core is the real one (``flow.py``, ``parked.py``, ``attempt.py``); the
tables, the queue and the CRM are the in-memory fakes of tests/fakes.py, on
a simulated clock, because the claim is about wake-ups, not about DynamoDB.
The retry queue is simulated as SQS behaves: a message is delivered after
its delay, capped at 15 minutes per hop (a longer wait is a chain of hops
the handler puts back without reading anything). The circuit is a model of
the function's gate with its numbers on the simulated clock (5 consecutive
failures open it for 60 s; one probe then goes through; success closes it),
judging each answer with the gate's own ``verdict_on``.

200 calls arrive evenly over the 6 hours the CRM answers 503; then it answers 200.

Figures:

* ``outage_6h_wakeups_per_call`` - the most any call was woken: retry-queue
  ``attempt`` messages that reached the call's delivery (put-back hops of a
  long delay excluded, see ``outage_6h_queue_hops_per_call``). Goal <= the
  schedule's length + 2 = 9 for the default ladder;
* ``outage_6h_wakeups_per_call_mean`` - the same, averaged over the calls;
* ``outage_6h_queue_hops_per_call`` - every ``attempt`` message the handler
  processed per call on average, the 15-minute put-back hops included (SQS's
  cap on one delay: each is a receive and a re-send, nothing is read);
* ``outage_6h_probe_wakeups`` - the destination's own chain: probe and
  release messages processed over the whole outage (one chain per
  destination and scope, not per call);
* ``outage_6h_crm_requests`` - requests the CRM received (probes and
  attempts), outage and recovery together;
* ``outage_release_s`` - from the recovery (the probe that finds the CRM
  back and closes the circuit: the system cannot know sooner) until the last
  waiting call is delivered. Goal <= 60 s;
* ``outage_back_to_last_delivery_s`` - from the moment the CRM really came
  back until the last call is delivered: the release plus the wait for the
  next probe (at most a minute).

    .venv/bin/python -m bench.run outage
"""

from __future__ import annotations

import heapq
import itertools
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "layers" / "common"))

from crm_push.adapters.destination_gate import verdict_on  # noqa: E402
from crm_push.flow import handle_retry_message, push_call  # noqa: E402
from crm_push.ports import GateKey, HeldBack, PushRequest, SendOutcome  # noqa: E402
from crm_push.retry_policy import DEFAULT_RETRY_SCHEDULE  # noqa: E402
from tests.fakes import FakeClock, InMemoryCalls, InMemoryDelivery, InMemoryParking, StaticBots, make_deps  # noqa: E402

OUTAGE_SECONDS = 6 * 3600
CALLS = 200
SQS_MAX_DELAY_SECONDS = 900
FAILURES_TO_OPEN = 5  # CircuitSettings' numbers
RECOVERY_SECONDS = 60
CRM = "https://crm.example.com"
DOWN = SendOutcome(503, "down", None, 1, 8, "http_status")
OK = SendOutcome(200, '{"ok":true}', None, 1, 12)


class OutageCrm:
    """Answers 503 until ``back_at``, then 200; notes when each call was delivered."""

    def __init__(self, clock: FakeClock, back_at: datetime) -> None:
        self.clock, self.back_at = clock, back_at
        self.requests = 0
        self.delivered: dict[str, datetime] = {}

    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        self.requests += 1
        if self.clock() < self.back_at:
            return DOWN
        self.delivered.setdefault(request.call_id, self.clock())
        return OK


class CircuitModel:
    """The function's circuit, on the simulated clock: 5 consecutive failures open it; 60 s later one probe goes."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.failures = 0
        self.opened_at: datetime | None = None
        self.openings = 0

    def held_until(self, key: GateKey) -> datetime | None:
        if self.opened_at is None:
            return None
        until = self.opened_at + timedelta(seconds=RECOVERY_SECONDS)
        return until if self.clock() < until else None

    def send(self, key: GateKey, rate_limit_per_second: float | None, send: Any) -> SendOutcome | HeldBack:
        until = self.held_until(key)
        if until is not None:
            return HeldBack("circuit_open", until)
        probing = self.opened_at is not None
        outcome: SendOutcome = send()
        verdict = verdict_on(outcome)
        if verdict == "failure":
            self.failures += 1
            if probing or self.failures >= FAILURES_TO_OPEN:
                if not probing:
                    self.openings += 1
                self.opened_at = self.clock()
        elif verdict == "healthy":
            self.failures, self.opened_at = 0, None
        return outcome


@dataclass(order=True)
class Delivery:
    at: datetime
    seq: int
    message: dict[str, Any] = field(compare=False)


class SimulatedSqs:
    """The retry queue as SQS carries it: each message after its delay, at most 15 minutes a hop."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.heap: list[Delivery] = []
        self._seq = itertools.count()

    def schedule(self, message: dict[str, Any], delay_seconds: float) -> None:
        delay = min(SQS_MAX_DELAY_SECONDS, max(0.0, delay_seconds))
        heapq.heappush(self.heap, Delivery(self.clock() + timedelta(seconds=delay), next(self._seq), message))


def simulate(seed: int = 7, *, outage_seconds: int = OUTAGE_SECONDS, count: int = CALLS) -> dict[str, float]:
    clock = FakeClock()
    start = clock()
    back_at = start + timedelta(seconds=outage_seconds)
    bot = {
        "bot_id": "bot-outage",
        "timezone": "UTC",
        "post_call_push": {"url": f"{CRM}/api/calls", "token": "Bearer t", "key_mapper": {"id": "{{result.call_id}}"}},
    }
    calls: list[dict[str, Any]] = [
        {
            "call_id": f"outage-{i:03d}",
            "bot_id": bot["bot_id"],
            "results_stored_at": "2026-11-25T09:32:41.512Z",
            "start_time": "2026-11-25T09:30:02Z",
            "crm_data": {},
        }
        for i in range(count)
    ]
    crm = OutageCrm(clock, back_at)
    state = InMemoryDelivery()
    queue = SimulatedSqs(clock)
    gate = CircuitModel(clock)
    jitter = random.Random(seed)
    deps = make_deps(
        InMemoryCalls(*calls),
        StaticBots(bot),
        crm,  # type: ignore[arg-type]
        clock=clock,
        sleep=clock.advance,
        state=state,
        parking=InMemoryParking(state, clock),
        gate=gate,
        retry_queue=queue,
        jitter=jitter.random,
    )
    arrivals = [(start + timedelta(seconds=i * outage_seconds / count), c) for i, c in enumerate(calls)]
    woken: Counter[str] = Counter()
    hops: Counter[str] = Counter()
    chain_links = 0
    message_ids = itertools.count()
    pending = list(reversed(arrivals))
    while pending or queue.heap:
        next_arrival = pending[-1][0] if pending else None
        if queue.heap and (next_arrival is None or queue.heap[0].at <= next_arrival):
            delivery = heapq.heappop(queue.heap)
            clock.now = max(clock.now, delivery.at)
            message = delivery.message
            outcome = handle_retry_message(message, deps, f"m{next(message_ids)}")
            if message["kind"] == "attempt":
                hops[message["call_id"]] += 1
                if outcome.outcome != "put_back":
                    woken[message["call_id"]] += 1
            elif message["kind"] == "destination" and outcome.outcome != "put_back":
                chain_links += 1
            continue
        at, call = pending.pop()
        clock.now = max(clock.now, at)
        push_call(call["call_id"], deps, call_doc=call, trigger=f"stream:{call['call_id']}")

    undelivered = [c["call_id"] for c in calls if c["call_id"] not in crm.delivered]
    if undelivered:
        raise AssertionError(f"{len(undelivered)} call(s) never delivered, e.g. {undelivered[:3]}")
    last = max(crm.delivered.values())
    recovered = min(crm.delivered.values())  # the probe that found the CRM back and closed the circuit
    per_call = [woken[c["call_id"]] for c in calls]
    return {
        "outage_6h_wakeups_per_call": float(max(per_call)),
        "outage_6h_wakeups_per_call_mean": round(sum(per_call) / len(per_call), 2),
        "outage_6h_queue_hops_per_call": round(sum(hops.values()) / len(calls), 1),
        "outage_6h_probe_wakeups": float(chain_links),
        "outage_6h_crm_requests": float(crm.requests),
        "outage_6h_circuit_openings": float(gate.openings),
        "outage_release_s": round((last - recovered).total_seconds(), 1),
        "outage_back_to_last_delivery_s": round((last - back_at).total_seconds(), 1),
    }


def run() -> dict[str, float]:
    figures = simulate()
    limit = len(DEFAULT_RETRY_SCHEDULE) + 2
    print(
        f"{CALLS} calls over a {OUTAGE_SECONDS // 3600} h outage, default ladder ({len(DEFAULT_RETRY_SCHEDULE)} steps)"
    )
    for name, value in figures.items():
        print(f"  {name:<36} {value:>10}")
    print(f"  goal: wake-ups per call <= {limit}, release <= 60 s")
    if figures["outage_6h_wakeups_per_call"] > limit or figures["outage_release_s"] > 60:
        raise AssertionError(f"outage goals missed: {figures}")
    return figures


if __name__ == "__main__":
    run()
