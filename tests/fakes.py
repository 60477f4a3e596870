"""In-memory stand-ins for the core's ports, so the core is tested without AWS or sockets."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crm_push.config import BotConfig, load_bot_config
from crm_push.errors import AlreadyPushed, CallNotFound, ClaimHeld
from crm_push.push import PushDeps, PushRequest, SendOutcome


class InMemoryCalls:
    """The Calls table's claim/record semantics, as adapters/dynamodb.py implements them."""

    def __init__(self, *calls: dict[str, Any]) -> None:
        self.items: dict[str, dict[str, Any]] = {c["call_id"]: copy.deepcopy(c) for c in calls}

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        item = self.items.get(call_id)
        return copy.deepcopy(item) if item else None

    def claim(self, call_id: str, claim_id: str, now: datetime, lease_seconds: int, force: bool = False) -> None:
        item = self.items.get(call_id)
        if item is None:
            raise CallNotFound(call_id)
        if not force and "post_call_push_result" in item:
            raise AlreadyPushed(call_id)
        claim = item.get("post_call_push_claim")
        if claim and claim["expires_at"] >= int(now.timestamp()):
            raise ClaimHeld(call_id)
        item["post_call_push_claim"] = {"claim_id": claim_id, "expires_at": int(now.timestamp()) + lease_seconds}

    def record_result(self, call_id: str, claim_id: str, result: dict[str, Any], event: dict[str, Any]) -> bool:
        item = self.items[call_id]
        if item.get("post_call_push_claim", {}).get("claim_id") != claim_id:
            return False
        item["post_call_push_result"] = result
        item.setdefault("integration_log", []).append({"type": "post_call_push", **result})
        item.setdefault("events", []).append(event)
        del item["post_call_push_claim"]
        return True


class StaticBots:
    def __init__(self, *bots: dict[str, Any]) -> None:
        self.bots = {b["bot_id"]: b for b in bots}
        self.reads = 0

    def get_bot(self, bot_id: str) -> BotConfig | None:
        self.reads += 1
        item = self.bots.get(bot_id)
        return load_bot_config(item, bot_id) if item else None


@dataclass
class ScriptedCrm:
    """Answers every send with ``outcome`` and keeps the requests it was given."""

    outcome: SendOutcome = field(default_factory=lambda: SendOutcome(200, '{"ok":true}', None, 1, 12))
    requests: list[PushRequest] = field(default_factory=list)

    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        self.requests.append(request)
        return self.outcome


FIXED_NOW = datetime(2026, 11, 25, 9, 33, 0, tzinfo=UTC)


def make_deps(calls: InMemoryCalls, bots: StaticBots, crm: ScriptedCrm, **overrides: Any) -> PushDeps:
    values: dict[str, Any] = {
        "calls": calls,
        "bots": bots,
        "crm": crm,
        "presign": lambda bucket, key: f"https://s3.example.com/{bucket}/{key}?X-Amz-Signature=abc",
        "public_base_url": "https://api.example.com",
        "recordings_bucket": "voicebot-recordings",
        "clock": lambda: FIXED_NOW,
    }
    values.update(overrides)
    return PushDeps(**values)
