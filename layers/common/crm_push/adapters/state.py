"""The delivery-state table (``PUSH_STATE_TABLE``): claims, attempts and schedule of each call's delivery.

Kept off the call item so that bookkeeping never rewrites a 50 KB call. Attempt
entries awaiting the call item are stored with short keys and the CRM's body cut
to ``PENDING_BODY_CHARS``: a delivery's item stays a few write units even with
an HTML error page on every attempt (the full body of the latest attempt is on
the call item's result).

Item ``delivery#<call_id>``:

==============  ===========================================================
``claim_id``    the push holding the call for one attempt (absent when free)
``lease_until`` epoch seconds the claim lasts; after it another push may take over
``attempts``    attempts made so far, across invocations
``st``          ``scheduled`` (another attempt is due at ``due``) or ``done``
``due``         epoch seconds of the next attempt
``written``     the call item already carries a result of this delivery
``log``         attempt entries not yet appended to the call's ``integration_log``;
                with ``written`` false, attempts the CRM answered whose call
                write failed ("answered, not yet written")
``by``          the trigger whose attempt wrote this state (see ``flow.push_call``)
``waits_on``    ``<scope>#<destination>`` while scheduled behind that destination (sparse index
                ``waits_on-due-index``: the calls a recovery releases, contract §14)
``holds``       times the call was held without an attempt (its own wake-up ladder)
``expires_at``  TTL: the item goes a month after its last write
==============  ===========================================================
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crm_push.adapters.dynamodb import aws_error, conditional_update, from_item, to_item
from crm_push.clock import lease_is_live
from crm_push.errors import AlreadyPushed, ClaimHeld, NotDue, StorageError
from crm_push.ports import DeliveryState, DeliveryUpdate, GateKey

RETENTION_SECONDS = 30 * 86400
PENDING_BODY_CHARS = 200

# Attempt entries kept here until the call item is next written: short keys keep the item small.
_SHORT_KEYS = {
    "type": "ty",
    "status": "s",
    "http_status": "h",
    "response_body": "b",
    "error": "e",
    "url": "u",
    "method": "m",
    "pushed_at": "p",
    "duration_ms": "d",
    "attempts": "n",
    "error_kind": "k",
    "next_attempt_at": "x",
    "exhausted": "z",
    "recording_link": "r",
    "replay": "rp",
}
_LONG_KEYS = {short: long for long, short in _SHORT_KEYS.items()}
_FULL_ENTRY_DEFAULTS: dict[str, Any] = {
    "http_status": None,
    "error": None,
    "error_kind": None,
    "next_attempt_at": None,
    "exhausted": False,
}


def compact_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as kept here. Each keeps its own url, method and recording link: an operator may change
    the config mid-ladder, and the log must say where each attempt really went (audit #19)."""
    compact = {_SHORT_KEYS.get(k, k): v for k, v in entry.items() if v is not None and v is not False}
    if isinstance(compact.get("b"), str):
        compact["b"] = compact["b"][:PENDING_BODY_CHARS]
    return compact


def expand_entry(stored: dict[str, Any]) -> dict[str, Any]:
    entry = {"type": "post_call_push", **_FULL_ENTRY_DEFAULTS, **{_LONG_KEYS.get(k, k): v for k, v in stored.items()}}
    for key in ("http_status", "duration_ms", "attempts"):
        if entry.get(key) is not None:
            entry[key] = int(entry[key])
    return entry


def delivery_key(call_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"delivery#{call_id}"}}


class DeliveryStateTable:
    """Claims and schedule of each call's delivery, with conditional writes only."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

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
        """Take the call for one attempt; the old item (returned by the same write) says what came before.

        The claim recognises its own id, so a claim whose answer was lost and
        that botocore sends again is not blocked by itself.
        """
        epoch = int(now.timestamp())
        free = "(attribute_not_exists(#lease) OR #lease < :now OR #claim = :me)"
        if force:
            condition = f"attribute_not_exists(pk) OR {free}"
        elif probe:
            condition = f"attribute_not_exists(pk) OR ((attribute_not_exists(#st) OR #st <> :done) AND {free})"
        else:
            condition = (
                "attribute_not_exists(pk) OR ((attribute_not_exists(#st) OR #st <> :done)"
                f" AND (attribute_not_exists(#due) OR #due <= :now) AND {free})"
            )
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=delivery_key(call_id),
                UpdateExpression=(
                    "SET #claim = :me, #lease = :lease, #trigger = :trigger,"
                    " #attempts = if_not_exists(#attempts, :zero), #ttl = :ttl"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={
                    "#claim": "claim_id",
                    "#lease": "lease_until",
                    "#trigger": "claim_trigger",
                    "#attempts": "attempts",
                    "#ttl": "expires_at",
                    **({} if force else {"#st": "st"}),
                    **({} if force or probe else {"#due": "due"}),
                },
                ExpressionAttributeValues=to_item(
                    {
                        ":me": claim_id,
                        ":lease": epoch + lease_seconds,
                        ":trigger": trigger,
                        ":zero": 0,
                        ":ttl": epoch + RETENTION_SECONDS,
                        ":now": epoch,
                        **({} if force else {":done": "done"}),
                    }
                ),
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise StorageError(f"claiming call {call_id} failed: {aws_error(exc)}") from exc
            old_item = from_item(exc.response.get("Item") or {})
            raise self._refusal(call_id, claim_id, old_item, epoch, force, probe) from exc
        except BotoCoreError as exc:
            raise StorageError(f"claiming call {call_id} failed: {aws_error(exc)}") from exc
        old = from_item(response.get("Attributes") or {})
        holder = old.get("claim_id")
        return DeliveryState(
            attempts=int(old.get("attempts") or 0),
            status="done" if old.get("st") == "done" else "scheduled" if old.get("st") == "scheduled" else "new",
            call_written=bool(old.get("written")),
            unwritten=_entries(old),
            taken_over=holder is not None and holder != claim_id,
            holds=int(old.get("holds") or 0),
        )

    @staticmethod
    def _refusal(call_id: str, claim_id: str, old: dict[str, Any], now: int, force: bool, probe: bool) -> Exception:
        """Why the claim's condition failed, read from the item as it was."""
        attempts = int(old.get("attempts") or 0)
        done = old.get("st") == "done"
        # Entries the call item never got: all of them once the delivery ended, and before that
        # only while its first outcome is missing (later ones wait for the end by design).
        pending = _entries(old) if done or not old.get("written") else ()
        if not force and done:
            return AlreadyPushed(f"call {call_id} was already delivered", pending=pending, attempts=attempts)
        lease = old.get("lease_until")
        if lease is not None and lease_is_live(lease, now) and old.get("claim_id") != claim_id:
            return ClaimHeld(f"call {call_id} is being pushed by another invocation", until=int(lease))
        due = old.get("due")
        if due is not None and not probe:
            return NotDue(
                f"call {call_id} has its next attempt scheduled",
                due=int(due),
                scheduled_by=old.get("by"),
                pending=pending,
                attempts=attempts,
            )
        return ClaimHeld(f"call {call_id} could not be claimed", until=None)

    def save(self, call_id: str, claim_id: str | None, update: DeliveryUpdate, now: datetime) -> bool:
        """Record the attempt and release the claim.

        While this push holds its claim, or whenever the update carries more
        attempts than the item (an answered attempt is recorded even after its
        lease ran out, and a late copy with fewer changes nothing).
        """
        epoch = int(now.timestamp())
        values: dict[str, Any] = {
            ":attempts": update.attempts,
            ":st": update.status,
            ":written": update.call_written,
            ":log": [compact_entry(e) for e in update.unwritten],
            ":ttl": (int(update.due.timestamp()) if update.due else epoch) + RETENTION_SECONDS,
        }
        sets = "#attempts = :attempts, #st = :st, #written = :written, #log = :log, #ttl = :ttl"
        removes = "#claim, #lease, #trigger"
        if update.trigger is not None:
            sets += ", #by = :by"
            values[":by"] = update.trigger
        if update.due is not None:
            sets += ", #due = :due"
            values[":due"] = int(update.due.timestamp())
        else:
            removes += ", #due"
        if update.waits_on is not None and update.status == "scheduled":
            sets += ", #waits = :waits, #holds = :holds"
            values[":waits"] = update.waits_on.label
            values[":holds"] = update.holds
        else:
            removes += ", #waits, #holds"
        condition = "attribute_not_exists(#attempts) OR #attempts < :attempts"
        if claim_id is not None:
            condition = f"#claim = :me OR {condition}"
            values[":me"] = claim_id
        return conditional_update(
            self._client,
            f"recording the delivery of call {call_id}",
            TableName=self._table,
            Key=delivery_key(call_id),
            UpdateExpression=f"SET {sets} REMOVE {removes}",
            ConditionExpression=condition,
            ExpressionAttributeNames={
                "#claim": "claim_id",
                "#lease": "lease_until",
                "#trigger": "claim_trigger",
                "#attempts": "attempts",
                "#st": "st",
                "#written": "written",
                "#log": "log",
                "#ttl": "expires_at",
                "#due": "due",
                "#waits": "waits_on",
                "#holds": "holds",
                **({"#by": "by"} if update.trigger is not None else {}),
            },
            ExpressionAttributeValues=to_item(values),
        )

    def mark_written(self, call_id: str, attempts: int) -> bool:
        """The call item now carries the delivery's attempts up to ``attempts``: nothing is pending.

        Only while the delivery is still at that attempt: a later attempt's own
        call write carried everything pending before it.
        """
        return conditional_update(
            self._client,
            f"recording the delivery of call {call_id}",
            TableName=self._table,
            Key=delivery_key(call_id),
            UpdateExpression="SET #written = :true, #log = :empty",
            ConditionExpression="#attempts = :attempts",
            ExpressionAttributeNames={"#written": "written", "#log": "log", "#attempts": "attempts"},
            ExpressionAttributeValues=to_item({":true": True, ":empty": [], ":attempts": attempts}),
        )

    def release_parked(self, call_id: str, waits_on: GateKey, due: datetime) -> bool:
        """Bring a delivery waiting on ``waits_on`` forward to ``due``, if it still waits there."""
        return conditional_update(
            self._client,
            f"releasing call {call_id}",
            TableName=self._table,
            Key=delivery_key(call_id),
            UpdateExpression="SET #due = :due REMOVE #waits",
            ConditionExpression="#waits = :waits AND #st = :scheduled",
            ExpressionAttributeNames={"#due": "due", "#waits": "waits_on", "#st": "st"},
            ExpressionAttributeValues=to_item(
                {":due": int(due.timestamp()), ":waits": waits_on.label, ":scheduled": "scheduled"}
            ),
        )

    def release(self, call_id: str, claim_id: str) -> None:
        """Give the claim back unused; a claim already lost is nobody's to release."""
        conditional_update(
            self._client,
            f"releasing call {call_id}",
            TableName=self._table,
            Key=delivery_key(call_id),
            UpdateExpression="REMOVE #claim, #lease, #trigger",
            ConditionExpression="#claim = :me",
            ExpressionAttributeNames={"#claim": "claim_id", "#lease": "lease_until", "#trigger": "claim_trigger"},
            ExpressionAttributeValues=to_item({":me": claim_id}),
        )

    def get(self, call_id: str) -> dict[str, Any] | None:
        """The delivery item as plain values (attempt entries expanded), for operators."""
        try:
            response = self._client.get_item(TableName=self._table, Key=delivery_key(call_id), ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"reading the delivery of call {call_id} failed: {aws_error(exc)}") from exc
        item = response.get("Item")
        if not item:
            return None
        state = from_item(item)
        state["log"] = [expand_entry(e) for e in state.get("log") or () if isinstance(e, dict)]
        return state


def _entries(item: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return tuple(expand_entry(e) for e in item.get("log") or () if isinstance(e, dict))
