"""`make run`: the whole post-call push on this machine, no AWS account, no Docker.

Starts an embedded AWS (moto server) and a local CRM that prints what it
receives, creates the tables and the recordings bucket, seeds the sample bot
and call from events/, invokes the real handler with the sample stream
INSERT, then shows the payload the CRM got and the result written back. It
finally replays the push's own write-back record to show it is ignored.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"


def _say(title: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {title}{plain}", flush=True)


def _mask(name: str, value: str) -> str:
    return "***" if name.lower() in ("authorization", "x-api-key", "cookie") else value


def main() -> int:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    from scripts.local_crm import LocalCrm
    from tests.conftest import LambdaContextStub, create_tables, to_dynamodb

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "POWERTOOLS_SERVICE_NAME": "post-call-push",
            "POWERTOOLS_METRICS_NAMESPACE": "PostCallPush",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            "POWERTOOLS_METRICS_DISABLED": "true",
            "PUBLIC_BASE_URL": "https://api.example.com",
            "PUSH_ALLOW_PRIVATE_NETWORKS": "true",
        }
    )
    import boto3

    from crm_push.adapters.dynamodb import from_item
    from crm_push.jsonvalues import to_plain

    crm = LocalCrm().start()
    try:
        _say(f"embedded AWS (moto) at {endpoint}; local CRM at {crm.url}")
        dynamodb = boto3.client("dynamodb")
        calls_table, bots_table = create_tables(dynamodb, "local")
        boto3.client("s3").create_bucket(Bucket="voicebot-recordings")
        os.environ.update(
            {"CALLS_TABLE": calls_table, "BOTS_TABLE": bots_table, "RECORDINGS_BUCKET": "voicebot-recordings"}
        )
        print(f"tables {calls_table}, {bots_table}; bucket voicebot-recordings")

        bot = json.loads((EVENTS / "sample_bot.json").read_text())
        bot["post_call_push"]["url"] = f"{crm.url}/api/v2/call-outcomes"
        call = json.loads((EVENTS / "sample_call.json").read_text())
        dynamodb.put_item(TableName=bots_table, Item=to_dynamodb(bot))
        dynamodb.put_item(TableName=calls_table, Item=to_dynamodb(call))
        print(
            f"seeded bot {bot['bot_id']} ({len(bot['post_call_push']['key_mapper'])} mapped fields)"
            f" and call {call['call_id']}"
        )

        sys.path.insert(0, str(ROOT / "functions" / "post_call_push"))
        import app

        _say("invoking lambda_handler with events/stream_insert.json")
        insert = json.loads((EVENTS / "stream_insert.json").read_text())
        response = app.lambda_handler(insert, LambdaContextStub())
        print(f"handler returned {json.dumps(response)}")

        _say("what the CRM received")
        if not crm.requests:
            print("nothing: the push did not reach the CRM (see the result below)")
        for request in crm.requests:
            print(f"{request.method} {request.path}")
            for name, value in request.headers.items():
                print(f"  {name}: {_mask(name, value)}")
            print(json.dumps(request.json(), indent=2, ensure_ascii=False))

        _say("post_call_push_result written back on the call")
        stored = from_item(
            dynamodb.get_item(TableName=calls_table, Key={"call_id": {"S": call["call_id"]}}, ConsistentRead=True)[
                "Item"
            ]
        )
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
    finally:
        crm.stop()
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
