"""The retry queue's messages, in one place: what each kind carries, encoded and checked.

Two kinds reach the handler from the retry queue (contract §10):

``attempt``
    a wake-up: the call's next attempt (or a check on a held or claimed call)
    is due at ``due``. It carries no result: the state table decides.
``record``
    writes an invocation could not make after the CRM answered: the state
    update (when the state table refused it) and/or the call item's write.
    Applying one never sends anything (contract §12: an answered attempt
    is recorded, never re-sent); applying it twice changes nothing.
``destination``
    one (destination, scope)'s chain (contract §14): a ``probe`` of its open
    circuit carrying one waiting call, or the ``release`` of every call
    waiting on it once it recovers or its quota resets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from crm_push.clock import iso_utc
from crm_push.jsonvalues import to_json
from crm_push.ports import DeliveryUpdate, GateKey
from crm_push.variables import parse_utc_timestamp

MESSAGE_VERSION = 2
# Version 1 messages (before 2026-12-03) are attempts and records of the same shape, minus the split
# between the state and the call writes: still read, so an upgrade strands nothing in flight.
READABLE_VERSIONS = frozenset({1, 2})


@dataclass(frozen=True, slots=True)
class CallWrite:
    """The call item's write: the result, the attempt entries for ``integration_log`` and one event."""

    result: dict[str, Any]
    entries: list[dict[str, Any]]
    event: dict[str, Any]
    force: bool = False


@dataclass(frozen=True, slots=True)
class WakeUp:
    call_id: str
    bot_id: str | None
    due: datetime | None


@dataclass(frozen=True, slots=True)
class Record:
    call_id: str
    bot_id: str | None
    claim_id: str | None
    state: DeliveryUpdate | None
    call: CallWrite | None
    tries: int = 0


@dataclass(frozen=True, slots=True)
class DestinationChain:
    key: GateKey
    action: Literal["probe", "release"]
    bot_id: str | None
    due: datetime | None

    @property
    def call_id(self) -> str:
        """A chain belongs to a destination, not to one call."""
        return ""


RetryMessage = WakeUp | Record | DestinationChain


def wake_up_message(call_id: str, bot_id: str | None, due: datetime) -> dict[str, Any]:
    return {"v": MESSAGE_VERSION, "kind": "attempt", "call_id": call_id, "bot_id": bot_id, "due": iso_utc(due)}


def chain_message(chain: DestinationChain) -> dict[str, Any]:
    return {
        "v": MESSAGE_VERSION,
        "kind": "destination",
        "call_id": "",
        "destination": chain.key.destination,
        "scope": chain.key.scope,
        "action": chain.action,
        "bot_id": chain.bot_id,
        "due": iso_utc(chain.due) if chain.due else None,
    }


def record_message(record: Record) -> dict[str, Any]:
    return {
        "v": MESSAGE_VERSION,
        "kind": "record",
        "call_id": record.call_id,
        "bot_id": record.bot_id,
        "claim_id": record.claim_id,
        "state": _update_to_json(record.state) if record.state else None,
        "call": (
            {
                "result": record.call.result,
                "entries": record.call.entries,
                "event": record.call.event,
                "force": record.call.force,
            }
            if record.call
            else None
        ),
        "tries": record.tries,
    }


def encode(message: Mapping[str, Any]) -> str:
    return to_json(dict(message))


def decode(body: str) -> RetryMessage:
    """A message body as the queue carries it; ValueError (naming no content) when it is not one of ours."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise ValueError("retry message is not JSON") from exc
    if not isinstance(raw, dict):
        raise ValueError("retry message is not a JSON object")
    return parse(raw)


def parse(raw: Mapping[str, Any]) -> RetryMessage:
    version = raw.get("v", 1)
    if version not in READABLE_VERSIONS:
        raise ValueError(f"retry message version {version!r} is not one this code reads")
    bot_id = raw.get("bot_id") if isinstance(raw.get("bot_id"), str) else None
    kind: Literal["attempt", "record", "destination"] | Any = raw.get("kind", "attempt")
    if kind == "destination":
        return _chain(raw, bot_id)
    call_id = raw.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise ValueError("retry message has no call_id")
    if kind == "attempt":
        due = parse_utc_timestamp(raw.get("due")) if raw.get("due") else None
        return WakeUp(call_id, bot_id, due)
    if kind != "record":
        raise ValueError(f"retry message kind {kind!r} is unknown")
    if version == 1:
        return _record_v1(raw, call_id, bot_id)
    state = raw.get("state")
    call = raw.get("call")
    return Record(
        call_id,
        bot_id,
        raw.get("claim_id") if isinstance(raw.get("claim_id"), str) else None,
        _update_from_json(state) if isinstance(state, Mapping) else None,
        _call_write(call) if isinstance(call, Mapping) else None,
        int(raw.get("tries") or 0),
    )


def _chain(raw: Mapping[str, Any], bot_id: str | None) -> DestinationChain:
    destination, scope, action = raw.get("destination"), raw.get("scope"), raw.get("action")
    if not isinstance(destination, str) or not destination or not isinstance(scope, str) or not scope:
        raise ValueError("destination message has no destination or scope")
    if action not in ("probe", "release"):
        raise ValueError(f"destination message action {action!r} is unknown")
    due = parse_utc_timestamp(raw.get("due")) if raw.get("due") else None
    return DestinationChain(GateKey(destination, scope), action, bot_id, due)


def _record_v1(raw: Mapping[str, Any], call_id: str, bot_id: str | None) -> Record:
    entries = raw.get("entries")
    call = (
        CallWrite(dict(raw["result"]), list(entries), dict(raw.get("event") or {}), bool(raw.get("force")))
        if entries is not None and isinstance(raw.get("result"), Mapping)
        else None
    )
    update = raw.get("update")
    return Record(
        call_id,
        bot_id,
        raw.get("claim_id") if isinstance(raw.get("claim_id"), str) else None,
        _update_from_json(update) if isinstance(update, Mapping) else None,
        call,
    )


def _call_write(raw: Mapping[str, Any]) -> CallWrite:
    return CallWrite(
        dict(raw.get("result") or {}),
        list(raw.get("entries") or []),
        dict(raw.get("event") or {}),
        bool(raw.get("force")),
    )


def _update_to_json(update: DeliveryUpdate) -> dict[str, Any]:
    return {
        "attempts": update.attempts,
        "status": update.status,
        "due": iso_utc(update.due) if update.due else None,
        "call_written": update.call_written,
        "unwritten": list(update.unwritten),
        "trigger": update.trigger,
    }


def _update_from_json(raw: Mapping[str, Any]) -> DeliveryUpdate:
    due = parse_utc_timestamp(raw.get("due")) if raw.get("due") else None
    return DeliveryUpdate(
        attempts=int(raw["attempts"]),
        status="scheduled" if raw.get("status") == "scheduled" else "done",
        due=due,
        call_written=bool(raw.get("call_written")),
        unwritten=tuple(raw.get("unwritten") or ()),
        trigger=raw.get("trigger"),
    )
