"""In-memory stand-ins for the core's ports, so the core is tested without AWS or sockets.

Each follows its real adapter's conditions (adapters/dynamodb.py, adapters/state.py,
adapters/retry_queue.py); tests/integration/test_port_contracts.py runs the same
scenarios against both, so the two cannot drift apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_push.config import BotConfig, load_bot_config
from crm_push.errors import AlreadyPushed, ClaimHeld, NotDue
from crm_push.ports import DeliveryState, DeliveryUpdate, GateKey, PushDeps, PushRequest, SendOutcome
from crm_push.result_log import entries_after, moves_forward, shown_position


class InMemoryCalls:
    """The Calls table's conditional outcome writes, as adapters/dynamodb.py implements them."""

    def __init__(self, *calls: dict[str, Any]) -> None:
        self.items: dict[str, dict[str, Any]] = {c["call_id"]: copy.deepcopy(c) for c in calls}
        self.writes = 0

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        item = self.items.get(call_id)
        return copy.deepcopy(item) if item else None

    def append_entries(self, call_id: str, entries: list[dict[str, Any]]) -> bool:
        item = self.items.get(call_id)
        if item is None:
            return False
        item.setdefault("integration_log", []).extend(copy.deepcopy(entries))
        return True

    def write_outcome(
        self,
        call_id: str,
        result: dict[str, Any],
        entries: list[dict[str, Any]],
        event: dict[str, Any],
        force: bool = False,
    ) -> bool:
        item = self.items.get(call_id)
        if item is None:
            return False
        stored = item.get("post_call_push_result")
        if not force:
            if not moves_forward(stored, result):
                return False
            entries = entries_after(entries, *shown_position(stored))
        self.writes += 1
        item["post_call_push_result"] = copy.deepcopy(result)
        item.setdefault("integration_log", []).extend(copy.deepcopy(entries))
        item.setdefault("events", []).append(copy.deepcopy(event))
        return True


class InMemoryDelivery:
    """The delivery-state table's claim/save/release, as adapters/state.py implements them."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def claim(
        self,
        call_id: str,
        claim_id: str,
        trigger: str,
        now: datetime,
        lease_seconds: int,
        force: bool = False,
        *,
        probe: bool = False,
    ) -> DeliveryState:
        epoch = int(now.timestamp())
        old = self.items.get(call_id)
        if old is not None:
            lease = old.get("lease_until")
            free = lease is None or lease < epoch or old.get("claim_id") == claim_id
            done = old.get("st") == "done"
            pending = tuple(copy.deepcopy(old.get("log", ()))) if done or not old.get("written") else ()
            attempts = old.get("attempts", 0)
            if not force and done:
                raise AlreadyPushed(call_id, pending=pending, attempts=attempts)
            if not free:
                raise ClaimHeld(call_id, until=lease)
            if not force and not probe and old.get("due") is not None and old["due"] > epoch:
                raise NotDue(call_id, due=old["due"], scheduled_by=old.get("by"), pending=pending, attempts=attempts)
        before = copy.deepcopy(old or {})
        item = self.items.setdefault(call_id, {"attempts": 0})
        item.update({"claim_id": claim_id, "lease_until": epoch + lease_seconds, "claim_trigger": trigger})
        holder = before.get("claim_id")
        return DeliveryState(
            attempts=before.get("attempts", 0),
            status=before.get("st", "new"),
            call_written=bool(before.get("written")),
            unwritten=tuple(before.get("log", ())),
            taken_over=holder is not None and holder != claim_id,
            holds=before.get("holds", 0),
        )

    def save(self, call_id: str, claim_id: str | None, update: DeliveryUpdate, now: datetime) -> bool:
        item = self.items.get(call_id)
        held = item is not None and claim_id is not None and item.get("claim_id") == claim_id
        behind = item is None or item.get("attempts") is None or item["attempts"] < update.attempts
        if not held and not behind:
            return False
        item = self.items.setdefault(call_id, {})
        for key in ("claim_id", "lease_until", "claim_trigger"):
            item.pop(key, None)
        item.update(
            {
                "attempts": update.attempts,
                "st": update.status,
                "written": update.call_written,
                "log": [copy.deepcopy(e) for e in update.unwritten],
            }
        )
        if update.trigger is not None:
            item["by"] = update.trigger
        if update.due is not None:
            item["due"] = int(update.due.timestamp())
        else:
            item.pop("due", None)
        if update.waits_on is not None and update.status == "scheduled":
            item.update({"waits_on": update.waits_on.label, "holds": update.holds})
        else:
            item.pop("waits_on", None)
            item.pop("holds", None)
        return True

    def release_parked(self, call_id: str, waits_on: GateKey, due: datetime) -> bool:
        item = self.items.get(call_id)
        if item is None or item.get("waits_on") != waits_on.label or item.get("st") != "scheduled":
            return False
        item["due"] = int(due.timestamp())
        item.pop("waits_on", None)
        return True

    def waiting(self, key: GateKey) -> list[str]:
        """What the state table's waits_on index answers, earliest due first."""
        found = [(item.get("due", 0), cid) for cid, item in self.items.items() if item.get("waits_on") == key.label]
        return [cid for _, cid in sorted(found)]

    def mark_written(self, call_id: str, attempts: int) -> bool:
        item = self.items.get(call_id)
        if item is None or item.get("attempts") != attempts:
            return False
        item.update({"written": True, "log": []})
        return True

    def release(self, call_id: str, claim_id: str) -> None:
        item = self.items.get(call_id)
        if item is not None and item.get("claim_id") == claim_id:
            for key in ("claim_id", "lease_until", "claim_trigger"):
                item.pop(key, None)


class InMemoryParking:
    """Quotas and wake-up chains, as adapters/parking.py keeps them; waiting calls read from the fake state."""

    def __init__(self, state: InMemoryDelivery, clock: Callable[[], datetime]) -> None:
        self.state, self.clock = state, clock
        self.quotas: dict[str, datetime] = {}
        self.chains: dict[str, tuple[str, datetime]] = {}

    def quota_until(self, key: GateKey) -> datetime | None:
        until = self.quotas.get(key.label)
        return until if until is not None and until > self.clock() else None

    def spend_quota(self, key: GateKey, until: datetime) -> None:
        if key.label not in self.quotas or self.quotas[key.label] < until:
            self.quotas[key.label] = until

    def probing(self, key: GateKey) -> datetime | None:
        chain = self.chains.get(key.label)
        return chain[1] if chain is not None and chain[0] == "probe" else None

    def arrange(self, key: GateKey, action: str, due: datetime) -> bool:
        chain = self.chains.get(key.label)
        stale = chain is not None and chain[1] < self.clock() - timedelta(seconds=120)
        if chain is None or stale or (action == "release" and chain[0] == "probe"):
            self.chains[key.label] = (action, due)
            return True
        return False

    def finish(self, key: GateKey) -> None:
        self.chains.pop(key.label, None)

    def waiting(self, key: GateKey, limit: int | None = None) -> list[str]:
        found = self.state.waiting(key)
        return found if limit is None else found[:limit]


@dataclass
class QueuedMessage:
    message: dict[str, Any]
    delay_seconds: float


class InMemoryQueue:
    """The retry queue: keeps what was scheduled, in order."""

    def __init__(self) -> None:
        self.messages: list[QueuedMessage] = []

    def schedule(self, message: dict[str, Any], delay_seconds: float) -> None:
        self.messages.append(QueuedMessage(copy.deepcopy(message), delay_seconds))

    def take(self) -> list[QueuedMessage]:
        taken, self.messages = self.messages, []
        return taken


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
    """Answers each send with the next of ``outcomes`` (the last one repeats) and keeps the requests."""

    outcome: SendOutcome = field(default_factory=lambda: SendOutcome(200, '{"ok":true}', None, 1, 12))
    requests: list[PushRequest] = field(default_factory=list)
    outcomes: list[SendOutcome] = field(default_factory=list)

    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        self.requests.append(request)
        if self.outcomes:
            return self.outcomes[min(len(self.requests), len(self.outcomes)) - 1]
        return self.outcome


FIXED_NOW = datetime(2026, 11, 25, 9, 33, 0, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when told (or when the core sleeps)."""

    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_deps(calls: InMemoryCalls, bots: StaticBots, crm: ScriptedCrm, **overrides: Any) -> PushDeps:
    clock = overrides.pop("clock", None) or FakeClock()
    sleep: Callable[[float], None] = overrides.pop(
        "sleep", clock.advance if isinstance(clock, FakeClock) else (lambda _s: None)
    )
    # ``delivery=`` is the state store's name before the core was split (the audit's repro scripts use it).
    if "delivery" in overrides:
        overrides["state"] = overrides.pop("delivery")
    values: dict[str, Any] = {
        "calls": calls,
        "bots": bots,
        "crm": crm,
        "state": InMemoryDelivery(),
        "retry_queue": InMemoryQueue(),
        "presign": lambda bucket, key: f"https://s3.example.com/{bucket}/{key}?X-Amz-Signature=abc",
        "public_base_url": "https://api.example.com",
        "recordings_bucket": "voicebot-recordings",
        "clock": clock,
        "sleep": sleep,
        "jitter": lambda: 0.5,
    }
    values.update(overrides)
    if "parking" not in values:
        values["parking"] = InMemoryParking(values["state"], clock)
    return PushDeps(**values)
