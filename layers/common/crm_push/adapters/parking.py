"""The parking lot (contract §14): quotas and the one wake-up chain of each (destination, scope).

Calls held by an open circuit or a spent quota do not poll. Each waits on its
own ladder (at most one wake-up a step), with ``waits_on`` set on its delivery
item; the (destination, scope) itself has one chain of wake-ups: a probe a
minute while its circuit is open, a release when it recovers or its quota
resets. The release finds every waiting call through the state table's sparse
index ``waits_on-due-index`` and brings it forward; a release that dies half
way leaves each remaining call its own ladder wake-up, so none is lost.

Item ``park#<scope>#<destination>`` in the state table:

=================  ==========================================================
``quota_until``    epoch seconds the destination's quota is spent until
``chain``          ``probe`` or ``release``: the chain arranged for it
``chain_due``      epoch seconds that chain's message is due
``expires_at``     TTL: a day after the later of the two
=================  ==========================================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from crm_push.adapters.dynamodb import aws_error, conditional_update, from_item, to_item
from crm_push.clock import from_epoch
from crm_push.errors import StorageError
from crm_push.ports import GateKey

PARK_PREFIX = "park#"
WAITS_ON_INDEX = "waits_on-due-index"
RETENTION_SECONDS = 86400
# A chain whose message is this late has died with its invocation: another hold may arrange a new one.
CHAIN_GRACE_SECONDS = 120
QUOTA_CACHE_SECONDS = 5.0


def park_key(key: GateKey) -> dict[str, Any]:
    return {"pk": {"S": f"{PARK_PREFIX}{key.label}"}}


class ParkingTable:
    """Quotas and wake-up chains in the delivery-state table; the waiting calls through its sparse index."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._table = table_name
        self._monotonic = monotonic
        # Epoch seconds of the delivery's clock: a quota's end and a chain's age are judged by it, as
        # the core judges its due times (tests and benches run it simulated).
        self._wall_clock = wall_clock
        # Asked before every send: one read of the key's item per few seconds per container.
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _item(self, key: GateKey) -> dict[str, Any]:
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get(key.label)
        if cached is None or now - cached[0] >= QUOTA_CACHE_SECONDS:
            try:
                response = self._client.get_item(
                    TableName=self._table, Key=park_key(key), ProjectionExpression="quota_until, chain, chain_due"
                )
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"reading the parking of {key.destination} failed: {aws_error(exc)}") from exc
            cached = (now, from_item(response.get("Item") or {}))
            with self._lock:
                self._cache[key.label] = cached
        return cached[1]

    def _forget(self, key: GateKey) -> None:
        with self._lock:
            self._cache.pop(key.label, None)

    def quota_until(self, key: GateKey) -> datetime | None:
        until = self._item(key).get("quota_until")
        if until is None or int(until) <= self._wall_clock():
            return None
        return from_epoch(int(until))

    def probing(self, key: GateKey) -> datetime | None:
        item = self._item(key)
        if item.get("chain") != "probe" or item.get("chain_due") is None:
            return None
        return from_epoch(int(item["chain_due"]))

    def spend_quota(self, key: GateKey, until: datetime) -> None:
        epoch = int(until.timestamp())
        conditional_update(  # refused when a later reset is already recorded
            self._client,
            f"recording the quota of {key.destination}",
            TableName=self._table,
            Key=park_key(key),
            UpdateExpression="SET quota_until = :until, expires_at = :ttl",
            ConditionExpression="attribute_not_exists(quota_until) OR quota_until < :until",
            ExpressionAttributeValues=to_item({":until": epoch, ":ttl": epoch + RETENTION_SECONDS}),
        )
        self._forget(key)

    def arrange(self, key: GateKey, action: Literal["probe", "release"], due: datetime) -> bool:
        """Take the chain: only when none is arranged, or the one arranged is long overdue (its invocation died).

        A release may also replace a probe (the quota reset comes first).
        """
        epoch = int(due.timestamp())
        stale = int(self._wall_clock()) - CHAIN_GRACE_SECONDS
        condition = "attribute_not_exists(chain) OR chain_due < :stale"
        if action == "release":
            condition += " OR chain = :probe"
        arranged = conditional_update(
            self._client,
            f"arranging the {action} of {key.destination}",
            TableName=self._table,
            Key=park_key(key),
            UpdateExpression="SET chain = :action, chain_due = :due, expires_at = :ttl",
            ConditionExpression=condition,
            ExpressionAttributeValues=to_item(
                {
                    ":action": action,
                    ":due": epoch,
                    ":ttl": epoch + RETENTION_SECONDS,
                    ":stale": stale,
                    **({":probe": "probe"} if action == "release" else {}),
                }
            ),
        )
        if arranged:
            self._forget(key)
        return arranged

    def finish(self, key: GateKey) -> None:
        try:
            self._client.update_item(
                TableName=self._table, Key=park_key(key), UpdateExpression="REMOVE chain, chain_due"
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"ending the chain of {key.destination} failed: {aws_error(exc)}") from exc
        self._forget(key)

    def waiting(self, key: GateKey, limit: int | None = None) -> list[str]:
        found: list[str] = []
        start: dict[str, Any] | None = None
        while True:
            request: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": WAITS_ON_INDEX,
                "KeyConditionExpression": "waits_on = :waits",
                "ExpressionAttributeValues": to_item({":waits": key.label}),
                "ProjectionExpression": "pk",
            }
            if limit is not None:
                request["Limit"] = limit - len(found)
            if start is not None:
                request["ExclusiveStartKey"] = start
            try:
                response = self._client.query(**request)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"listing the calls waiting on {key.destination} failed: {aws_error(exc)}") from exc
            found.extend(item["pk"]["S"].removeprefix("delivery#") for item in response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if start is None or (limit is not None and len(found) >= limit):
                return found
