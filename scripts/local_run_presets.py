"""`make run`'s preset scene (contract §14): a HubSpot preset bot, its batch upsert, one record however often.

The CRM is the HubSpot stand-in (scripts/crm_standins.py), which keeps
records as HubSpot does: matched on the ``idProperty`` value, created once,
updated after. The call is delivered by the stream, delivered again by a
redelivery of the same record (nothing is sent: it is already pushed), then
replayed by an operator after a mapping fix: the CRM still holds one record,
updated by the replay.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"


def play_presets(stack: Any, app: Any) -> bool:
    """Play the scene against ``stack`` (a running LocalStack) through ``app`` (the handler module)."""
    from crm_push.adapters.dynamodb import BotsTable
    from crm_push.flow import push_call
    from crm_push.ports import Replay
    from scripts.crm_standins import DEFAULT_TOKEN, CrmStandins
    from scripts.local_stack import LambdaContextStub, masked_headers
    from scripts.make_events import stream_record

    print("\n== a HubSpot preset: batch upsert keyed on the call id, pushed twice, one record")
    with CrmStandins(token=DEFAULT_TOKEN) as hubspot:
        push: dict[str, Any] = {
            "preset": {"name": "hubspot", "object": "contacts", "id_property": "call_id", "base_url": hubspot.url},
            "token": f"Bearer {DEFAULT_TOKEN}",
            "key_mapper": {"lastname": "{{CUSTOMERNAME}}", "disposition": "{{analysis.DISPOSITION}}"},
        }
        bot: dict[str, Any] = {
            "bot_id": "bot-hubspot-preset",
            "timezone": "Asia/Kolkata",
            "analysis_keys": ["DISPOSITION"],
        }
        bot["post_call_push"] = push
        stack.put_bot(bot)
        call = json.loads((EVENTS / "sample_call.json").read_text())
        call["call_id"] += "-hubspot"
        call["bot_id"] = bot["bot_id"]
        stack.put_call(call)
        print(f"bot {bot['bot_id']}: {json.dumps(push['preset'])}")

        image = json.loads(json.dumps(call), parse_float=Decimal)
        record = stream_record(image, None, event_name="INSERT", sequence_number="7".rjust(21, "0"), event_id="hs")
        for delivery in ("stream", "stream redelivery"):
            response = app.lambda_handler({"Records": [record]}, LambdaContextStub())
            print(f"{delivery}: handler returned {json.dumps(response)}; CRM requests so far {len(hubspot.requests)}")

        # The operator fixes the mapping and replays; the CLI's replay reads the bot afresh, as here.
        push["key_mapper"]["hs_lead_status"] = "CONNECTED"
        stack.put_bot(bot)
        deps, _ = app._runtime()
        fresh = replace(deps, bots=BotsTable(stack.dynamodb, stack.resources.bots_table, ttl_seconds=0))
        outcome = push_call(call["call_id"], fresh, replay=Replay("make run", "mapping fix: hs_lead_status"))
        print(f"replay: {outcome.outcome}")

        for request in hubspot.requests_for("hubspot"):
            hidden = masked_headers(request.headers)
            print(f"{request.method} {request.path}  Authorization: {hidden.get('Authorization', '-')}")
            print(f"  {json.dumps(request.json(), ensure_ascii=False)}")
        records = [r for table in hubspot.records("hubspot").values() for r in table]
        for stored in records:
            print(f"record {stored['id']}: {json.dumps(stored['properties'], ensure_ascii=False)}")
        result = stack.get_call(call["call_id"]).get("post_call_push_result", {})
        print(
            f"CRM requests: {len(hubspot.requests)}; records: {len(records)}; result {result.get('status')}, "
            f"replay {json.dumps(result.get('replay'))}"
        )
        return (
            len(hubspot.requests) == 2
            and len(records) == 1
            and records[0]["properties"].get("hs_lead_status") == "CONNECTED"
            and result.get("status") == "ok"
        )
