"""The Calls and Bots tables.

Low-level client plus the type (de)serialiser rather than the boto3 resource
API: clients are thread-safe, so one serves every push worker.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.utilities.parameters import BaseProvider
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from crm_push.config import BotConfig, load_bot_config
from crm_push.errors import AlreadyPushed, CallNotFound, ClaimHeld, StorageError

log = logging.getLogger(__name__)

CLAIM_ATTRIBUTE = "post_call_push_claim"
RESULT_ATTRIBUTE = "post_call_push_result"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(_dynamo_safe(v)) for k, v in values.items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _dynamo_safe(value: Any) -> Any:
    """Floats become Decimals (DynamoDB refuses floats); strings may be empty."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _dynamo_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dynamo_safe(v) for v in value]
    return value


class CallsTable:
    """The Calls table: read a call, claim it for a push, record the result."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        try:
            response = self._client.get_item(
                TableName=self._table, Key={"call_id": {"S": call_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"reading call {call_id} failed: {_aws_error(exc)}") from exc
        item = response.get("Item")
        return from_item(item) if item else None

    def claim(self, call_id: str, claim_id: str, now: datetime, lease_seconds: int, force: bool = False) -> None:
        """Conditional claim: only one push holds a call, and only until its lease ends.

        The lease lets a later delivery take over a call whose pusher died
        between claim and write-back, instead of stranding it forever.
        """
        condition = "attribute_exists(call_id) AND (attribute_not_exists(#claim) OR #claim.expires_at < :now)"
        if not force:
            condition += " AND attribute_not_exists(#result)"
        epoch = int(now.timestamp())
        claim = {"claim_id": claim_id, "claimed_at": now.isoformat(), "expires_at": epoch + lease_seconds}
        names = {"#claim": CLAIM_ATTRIBUTE}
        if not force:
            names["#result"] = RESULT_ATTRIBUTE
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"call_id": {"S": call_id}},
                UpdateExpression="SET #claim = :claim",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_item({":claim": claim, ":now": epoch}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise StorageError(f"claiming call {call_id} failed: {_aws_error(exc)}") from exc
            old = from_item(exc.response.get("Item") or {})
            if not old:
                raise CallNotFound(f"call {call_id} does not exist") from exc
            if not force and RESULT_ATTRIBUTE in old:
                raise AlreadyPushed(f"call {call_id} was already pushed") from exc
            raise ClaimHeld(f"call {call_id} is being pushed by another invocation") from exc
        except BotoCoreError as exc:
            raise StorageError(f"claiming call {call_id} failed: {_aws_error(exc)}") from exc

    def record_result(self, call_id: str, claim_id: str, result: dict[str, Any], event: dict[str, Any]) -> bool:
        """Write the result, append to ``integration_log`` and ``events``, release the claim.

        ``list_append`` on the server keeps entries other writers add meanwhile.
        """
        try:
            try:
                return self._write_back(
                    call_id,
                    claim_id,
                    "SET #result = :result,"
                    " integration_log = list_append(if_not_exists(integration_log, :empty), :log),"
                    " events = list_append(if_not_exists(events, :empty), :event)"
                    " REMOVE #claim",
                    {
                        ":result": result,
                        ":log": [{"type": "post_call_push", **result}],
                        ":event": [event],
                        ":empty": [],
                    },
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ValidationException":
                    raise
                # The appends cannot apply (integration_log or events is not a list, or the item
                # would pass 400 KB). The CRM already has the push: record the result alone rather
                # than leave the record to retries that would push it again after the lease.
                log.error(
                    "push recorded without its integration_log and events entries",
                    extra={"call_id": call_id, "error": _aws_error(exc)},
                )
                return self._write_back(call_id, claim_id, "SET #result = :result REMOVE #claim", {":result": result})
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"recording the push of call {call_id} failed: {_aws_error(exc)}") from exc

    def _write_back(self, call_id: str, claim_id: str, update: str, values: dict[str, Any]) -> bool:
        """One update made only while this push still holds the claim; False when the claim was lost."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"call_id": {"S": call_id}},
                UpdateExpression=update,
                ConditionExpression="#claim.claim_id = :claim_id",
                ExpressionAttributeNames={"#result": RESULT_ATTRIBUTE, "#claim": CLAIM_ATTRIBUTE},
                ExpressionAttributeValues=to_item({**values, ":claim_id": claim_id}),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            log.warning("claim lost before write-back; result not recorded", extra={"call_id": call_id})
            return False
        return True

    def call_ids_by_bot(
        self,
        bot_id: str,
        *,
        stored_from: str | None = None,
        stored_before: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
        index_name: str = "bot_id-results_stored_at-index",
    ) -> list[tuple[str, str]]:
        """``(call_id, results_stored_at)`` of a bot's calls whose results were stored in a window.

        For operator tooling (replays, lint samples). ``stored_from`` is
        inclusive, ``stored_before`` exclusive; both are ISO-8601 UTC text,
        compared as stored. The index is KEYS_ONLY: read a call with
        ``get_call`` for anything else.
        """
        values: dict[str, Any] = {":bot": bot_id}
        condition = "bot_id = :bot"
        if stored_from and stored_before:
            # BETWEEN is inclusive at both ends; the exclusive end is dropped below.
            condition += " AND #stored BETWEEN :from AND :before"
            values.update({":from": stored_from, ":before": stored_before})
        elif stored_from:
            condition += " AND #stored >= :from"
            values[":from"] = stored_from
        elif stored_before:
            condition += " AND #stored < :before"
            values[":before"] = stored_before
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index_name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": to_item(values),
            "ScanIndexForward": not newest_first,
        }
        if stored_from or stored_before:
            request["ExpressionAttributeNames"] = {"#stored": "results_stored_at"}
        found: list[tuple[str, str]] = []
        while True:
            if limit is not None:
                request["Limit"] = max(1, limit - len(found))
            try:
                response = self._client.query(**request)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"listing the calls of bot {bot_id} failed: {_aws_error(exc)}") from exc
            for item in response.get("Items", []):
                keys = from_item(item)
                stored_at = str(keys.get("results_stored_at", ""))
                if stored_before and stored_at >= stored_before:
                    continue
                found.append((str(keys["call_id"]), stored_at))
                if limit is not None and len(found) >= limit:
                    return found
            last_key = response.get("LastEvaluatedKey")
            if not last_key:
                return found
            request["ExclusiveStartKey"] = last_key


class _BotItemProvider(BaseProvider):
    """Powertools' parameter cache over the Bots table: one read per bot per TTL."""

    def __init__(self, client: Any, table_name: str) -> None:
        super().__init__(client=client)  # type: ignore[no-untyped-call]
        self._client = client
        self._table = table_name

    def _get(self, name: str, **sdk_options: Any) -> dict[str, Any]:
        response = self._client.get_item(TableName=self._table, Key={"bot_id": {"S": name}})
        # A missing bot is cached as {} too, so a batch for an unknown bot costs one read.
        return from_item(response.get("Item") or {})

    def _get_multiple(self, path: str, **sdk_options: Any) -> dict[str, str]:
        raise NotImplementedError


class BotsTable:
    """Bot configs, validated and cached per warm container for ``ttl_seconds``."""

    def __init__(self, client: Any, table_name: str, ttl_seconds: int = 60) -> None:
        self._provider = _BotItemProvider(client, table_name)
        self._ttl = ttl_seconds
        # Concurrent workers asking for the same cold bot must cost one read, not one each.
        self._lock = threading.Lock()

    def get_bot(self, bot_id: str) -> BotConfig | None:
        with self._lock:
            try:
                item = self._provider.get(bot_id, max_age=self._ttl)
            except Exception as exc:  # Powertools wraps every provider error in GetParameterError
                raise StorageError(f"reading bot {bot_id} failed: {exc}") from exc
        if not isinstance(item, dict) or not item:
            return None
        return load_bot_config(item, bot_id)

    def clear_cache(self) -> None:
        self._provider.clear_cache()  # type: ignore[no-untyped-call]


def _aws_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}"[:300]
    return type(exc).__name__
