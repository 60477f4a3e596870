"""`make run`: the whole post-call push on this machine, no AWS account, no Docker.

Starts the local stack (scripts/local_stack.py: AWS's DynamoDB Local, a moto
server for the rest of AWS, a local CRM that prints what it receives),
creates the tables, the recordings bucket and the retry queue, seeds the
sample bot and call from events/, invokes the real handler with the sample stream
INSERT, then shows the payload the CRM got and the result written back. It
finally replays the push's own write-back record to show it is ignored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
        result = stored.get("post_call_push_result", {})
        return 0 if result.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
