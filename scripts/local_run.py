"""`make run`: the whole post-call push on this machine, no AWS account, no Docker.

Starts the local stack (scripts/local_stack.py: AWS's DynamoDB Local, a moto
server for the rest of AWS, a local CRM that prints what it receives),
creates the tables, the recordings bucket and the retry queue, seeds the
sample bot and call from events/, invokes the real handler with the sample stream
INSERT, then shows the payload the CRM got and the result written back. It
then replays the push's own write-back record to show it is ignored, and
finally plays a short outage: a CRM that fails three times and recovers,
its attempts carried by the retry queue on a simulated clock, and a CRM
that hangs: its circuit opens and later calls are held back at once.
"""

from __future__ import annotations

import base64
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"


def _say(title: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {title}{plain}", flush=True)


def main() -> int:
    from scripts.local_stack import LambdaContextStub, LocalStack, masked_headers

    with LocalStack() as stack:
        endpoints, resources = stack.endpoints, stack.resources
        _say(
            f"DynamoDB Local at {endpoints.dynamodb}; embedded AWS (moto) at {endpoints.moto};"
            f" local CRM at {stack.crm.url}"
        )
        print(
            f"tables {resources.calls_table}, {resources.bots_table}, {resources.state_table};"
            f" bucket {resources.bucket}; retry queue {resources.retry_queue_url.rsplit('/', 1)[-1]}"
        )
        bot, call = stack.seed_sample()
        # Signed pushes (contract §11): the CRM below checks them as a receiver would.
        bot["post_call_push"]["signing_secret"] = DEMO_SIGNING_SECRET
        stack.put_bot(bot)
        print(
            f"seeded bot {bot['bot_id']} ({len(bot['post_call_push']['key_mapper'])} mapped fields)"
            f" and call {call['call_id']}"
        )

        sys.path.insert(0, str(ROOT / "functions" / "post_call_push"))
        import app
        from crm_push.jsonvalues import to_plain

        _say("invoking lambda_handler with events/stream_insert.json")
        insert = json.loads((EVENTS / "stream_insert.json").read_text())
        response = app.lambda_handler(insert, LambdaContextStub())
        print(f"handler returned {json.dumps(response)}")

        _say("what the CRM received")
        crm = stack.crm
        if not crm.requests:
            print("nothing: the push did not reach the CRM (see the result below)")
        for request in crm.requests:
            print(f"{request.method} {request.path}")
            hidden = masked_headers(request.headers)
            for name, value in request.headers.items():
                print(f"  {name}: {hidden.get(name, value)}")
            print(json.dumps(request.json(), indent=2, ensure_ascii=False))
            print(f"signature: {_verify_signature(request)}")

        _say("post_call_push_result written back on the call")
        stored = stack.get_call(call["call_id"])
        print(json.dumps(to_plain(stored.get("post_call_push_result")), indent=2))
        print(
            f"integration_log entries: {len(stored.get('integration_log', []))}; last event: "
            f"{json.dumps(to_plain(stored.get('events', [])[-1:]))}"
        )

        _say("invoking again with events/stream_modify_writeback.json (our own write-back)")
        before = len(crm.requests)
        response = app.lambda_handler(
            json.loads((EVENTS / "stream_modify_writeback.json").read_text()), LambdaContextStub()
        )
        print(
            f"handler returned {json.dumps(response)};"
            f" CRM requests since: {len(crm.requests) - before} (ignored, as it must be)"
        )
        first_ok = stored.get("post_call_push_result", {}).get("status") == "ok"
        deps, _ = app._runtime()
        real = (deps.clock, deps.sleep, deps.gate, deps.retry_queue)
        outage_ok = _play_outage(stack, app)
        deps.clock, deps.sleep, deps.gate, deps.retry_queue = real
        circuit_ok = _play_hanging_crm(stack, app)
        from scripts.local_run_oauth import play_oauth

        oauth_ok = play_oauth(stack, app)
        from scripts.local_run_presets import play_presets

        presets_ok = play_presets(stack, app)
        return 0 if first_ok and outage_ok and circuit_ok and oauth_ok and presets_ok else 1


DEMO_SIGNING_SECRET = "whsec_" + base64.b64encode(b"make-run-demo-signing-key-32byte").decode()


def _verify_signature(request: Any) -> str:
    """What a receiver built on the Standard Webhooks reference library makes of the request."""
    from standardwebhooks import Webhook

    try:
        Webhook(DEMO_SIGNING_SECRET).verify(request.body, request.headers)
    except Exception as exc:
        return f"REJECTED by the standardwebhooks receiver ({type(exc).__name__})"
    return f"verified by the standardwebhooks receiver (webhook-id {request.headers.get('webhook-id')})"


def _play_outage(stack: Any, app: Any) -> bool:
    """A CRM down for the first attempts, then back: the retry ladder on a simulated clock.

    The attempts ride the real retry queue (moto SQS) back into the real
    handler; the clock jumps to each attempt's due time instead of waiting
    hours, exactly as the tests drive it.
    """
    from types import SimpleNamespace

    from crm_push.adapters.retry_queue import SqsRetryQueue
    from crm_push.jsonvalues import to_plain
    from crm_push.ports import UnguardedGate
    from scripts.local_crm import CrmAnswer
    from scripts.local_stack import LambdaContextStub
    from scripts.make_events import stream_record
    from tests.fakes import FakeClock
    from tests.retry_queue import drain

    _say("a short outage: the CRM answers 503, 503, 502, then recovers (simulated clock)")
    call = json.loads((EVENTS / "sample_call.json").read_text())
    call["call_id"] += "-outage"
    stack.put_call(call)
    answers = iter([503, 503, 502])
    stack.crm.responder = lambda _req: CrmAnswer(next(answers, 200))
    before = len(stack.crm.requests)
    deps, _ = app._runtime()
    clock = FakeClock()
    # The simulated clock moves hours in a moment; the circuit breaker keeps wall-clock time.
    deps.clock, deps.sleep, deps.gate = clock, clock.advance, UnguardedGate()
    # Every hop comes back at once; the handler itself checks whether it is due.
    deps.retry_queue = SqsRetryQueue(stack.resources.retry_queue_url, client=stack.sqs, max_delay_seconds=0)
    started = clock.now
    image = json.loads(json.dumps(call), parse_float=Decimal)
    record = stream_record(image, None, event_name="INSERT", sequence_number="2".rjust(21, "0"), event_id="outage")
    app.lambda_handler({"Records": [record]}, LambdaContextStub())
    queue = SimpleNamespace(sqs=stack.sqs, retry_queue_url=stack.resources.retry_queue_url)
    hops = drain(queue, lambda event, ctx=None: app.lambda_handler(event, ctx or LambdaContextStub()), clock)

    stored = stack.get_call(call["call_id"])
    print(f"{'attempt':>7}  {'at (+h:mm:ss)':>13}  {'status':<9} {'http':>4}  {'error_kind':<12} next attempt")
    for entry in (e for e in stored.get("integration_log", []) if e.get("type") == "post_call_push"):
        at = _since(started, entry["pushed_at"])
        print(
            f"{int(entry['attempts']):>7}  {at:>13}  {entry['status']:<9} {int(entry['http_status'] or 0):>4}  "
            f"{entry['error_kind'] or '-':<12} {entry['next_attempt_at'] or '-'}"
        )
    result = to_plain(stored.get("post_call_push_result", {}))
    print(
        f"CRM requests: {len(stack.crm.requests) - before}; queue deliveries: {hops}; "
        f"call item written {sum(1 for e in stored.get('events', []) if e.get('type') == 'post_call_push')} times"
    )
    print(json.dumps({k: result.get(k) for k in ("status", "attempts", "next_attempt_at", "exhausted")}))
    return bool(result.get("status") == "ok" and result.get("attempts") == 4)


def _play_hanging_crm(stack: Any, app: Any) -> bool:
    """A CRM that accepts connections and never answers: its circuit opens, later calls are held back at once."""
    import time

    from crm_push.adapters.destination_gate import read_circuit
    from crm_push.ports import GateKey
    from crm_push.push import destination_of
    from scripts.local_crm import CrmAnswer
    from scripts.local_stack import LambdaContextStub
    from scripts.make_events import stream_record

    _say("a CRM that hangs: 8 calls time out (10 s each, in parallel), the circuit opens, 4 more are held back")
    bot = stack.sample_bot()
    bot["bot_id"] = "bot-hanging-crm"
    bot["post_call_push"]["url"] = f"{stack.crm_url}/hang"
    bot["post_call_push"]["retry_schedule_seconds"] = [600]  # the next attempt rides the queue, not the batch
    stack.put_bot(bot)
    stack.crm.responder = lambda req: CrmAnswer(delay_seconds=12) if req.path.endswith("/hang") else CrmAnswer()
    template = json.loads((EVENTS / "sample_call.json").read_text())

    def batch(prefix: str, count: int) -> dict[str, Any]:
        records = []
        for i in range(count):
            call = {**template, "call_id": f"{template['call_id']}-{prefix}-{i}", "bot_id": bot["bot_id"]}
            stack.put_call(call)
            image = json.loads(json.dumps(call), parse_float=Decimal)
            records.append(
                stream_record(image, None, event_name="INSERT", sequence_number=str(100 + i), event_id=f"{prefix}{i}")
            )
        return {"Records": records}

    started = time.monotonic()
    first = app.lambda_handler(batch("hang", 8), LambdaContextStub())
    print(f"first batch: {time.monotonic() - started:.1f} s, handler returned {json.dumps(first)}")
    started = time.monotonic()
    second = app.lambda_handler(batch("held", 4), LambdaContextStub())
    print(f"second batch: {time.monotonic() - started:.1f} s, handler returned {json.dumps(second)}")

    kinds: dict[str, int] = {}
    for prefix, count in (("hang", 8), ("held", 4)):
        for i in range(count):
            result = stack.get_call(f"{template['call_id']}-{prefix}-{i}").get("post_call_push_result", {})
            key = (
                f"{prefix}: {result.get('status')}/{result.get('error_kind')}/attempts {int(result.get('attempts', 0))}"
            )
            kinds[key] = kinds.get(key, 0) + 1
    for key, count in sorted(kinds.items()):
        print(f"  {count} x {key}")
    gate_key = GateKey(destination_of(bot["post_call_push"]["url"]), bot.get("tenant_id") or bot["bot_id"])
    circuit = read_circuit(stack.dynamodb, stack.resources.state_table, gate_key)
    print(f"circuit: {json.dumps(circuit.as_json() if circuit else None)}")
    stack.crm.responder = lambda _req: CrmAnswer()
    return circuit is not None and circuit.state == "OPEN" and "held: failed/circuit_open/attempts 0" in " ".join(kinds)


def _since(started: Any, stamp: str) -> str:
    from crm_push.variables import parse_utc_timestamp

    moment = parse_utc_timestamp(stamp)
    seconds = int((moment - started).total_seconds()) if moment else 0
    return f"+{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


if __name__ == "__main__":
    sys.exit(main())
