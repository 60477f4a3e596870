"""The Calls and Bots tables.

Low-level client plus the type (de)serialiser rather than the boto3 resource
API: clients are thread-safe, so one serves every push worker.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.utilities.parameters import BaseProvider
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from crm_push.config import BotConfig, load_bot_config
from crm_push.errors import StorageError
from crm_push.result_log import attempts_before, entries_after, moves_forward, shown_position

log = logging.getLogger(__name__)

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
    """The Calls table: read a call, record a delivery's outcomes on it."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        try:
            response = self._client.get_item(
                TableName=self._table, Key={"call_id": {"S": call_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"reading call {call_id} failed: {aws_error(exc)}") from exc
        item = response.get("Item")
        return from_item(item) if item else None

    def append_entries(self, call_id: str, entries: list[dict[str, Any]]) -> bool:
        """Append to ``integration_log`` alone (a failed probe: not an attempt, so the result stays)."""
        return conditional_update(
            self._client,
            f"logging on call {call_id}",
            TableName=self._table,
            Key={"call_id": {"S": call_id}},
            UpdateExpression="SET integration_log = list_append(if_not_exists(integration_log, :empty), :log)",
            ConditionExpression="attribute_exists(call_id)",
            ExpressionAttributeValues=to_item({":log": entries, ":empty": []}),
        )

    def write_outcome(
        self,
        call_id: str,
        result: dict[str, Any],
        entries: list[dict[str, Any]],
        event: dict[str, Any],
        force: bool = False,
    ) -> bool:
        """Set the result, append the attempts to ``integration_log`` and one event to ``events``.

        ``list_append`` on the server keeps entries other writers add
        meanwhile. The write follows ``result_log``: it is conditional on the
        stored result moving forward, and on the stored result naming the
        attempt just before the first entry, so that each attempt is appended
        once. When the call shows another attempt than that, the item as it
        was (returned by the refused write) says which entries it lacks, and
        the write is made again with only those. Returns False when the
        result would not move forward (already written, older, or a result
        from before durable delivery) or the call is gone.
        """
        before = None if force else attempts_before(entries)
        known: tuple[int, str] | None = None if before is None else (before, "")
        for _ in range(3):
            appended = entries if known is None else entries_after(entries, *known)
            written = self._write_outcome(call_id, result, appended, event, force, known)
            if isinstance(written, bool):
                return written
            stored = written.get(RESULT_ATTRIBUTE)
            if not written or not moves_forward(stored, result):
                log.info("call outcome already recorded (or call gone)", extra={"call_id": call_id})
                return False
            known = shown_position(stored)
        return False  # three concurrent writers moved it on under us: theirs are newer

    def _write_outcome(
        self,
        call_id: str,
        result: dict[str, Any],
        entries: list[dict[str, Any]],
        event: dict[str, Any],
        force: bool,
        known: tuple[int, str] | None,
    ) -> bool | dict[str, Any]:
        """One conditional write; the item as it was (a dict) when the condition refused it."""
        condition = "attribute_exists(call_id)"
        values: dict[str, Any] = {}
        if not force:
            forward = (
                "(#result.attempts < :attempts OR (#result.attempts = :attempts AND #result.pushed_at < :pushed_at))"
            )
            # The stored result must be the one the appended entries follow: else they may repeat some.
            if known is None:
                condition += f" AND (attribute_not_exists(#result) OR {forward})"
            else:
                stands = "#result.attempts = :known" + (" AND #result.pushed_at = :known_at" if known[1] else "")
                extends = f"{stands} AND {forward}"
                # DynamoDB refuses redundant parentheses: only wrap what an OR needs wrapped.
                if known == (0, ""):
                    condition += f" AND (attribute_not_exists(#result) OR ({extends}))"
                else:
                    condition += f" AND {extends}"
            values = {":attempts": result.get("attempts", 0), ":pushed_at": result.get("pushed_at", "")}
            if known is not None:
                values[":known"] = known[0]
                if known[1]:
                    values[":known_at"] = known[1]
        updates: list[tuple[str, dict[str, Any]]] = [
            (
                "SET #result = :result,"
                " integration_log = list_append(if_not_exists(integration_log, :empty), :log),"
                " events = list_append(if_not_exists(events, :empty), :event)",
                {":result": result, ":log": entries, ":event": [event], ":empty": []},
            ),
            # The appends cannot apply (integration_log or events is not a list, or the item would
            # pass 400 KB): the result alone, then a reduced one without the CRM's body, so that
            # whatever fitted before still says what happened.
            ("SET #result = :result", {":result": result}),
            ("SET #result = :result", {":result": reduced_result(result)}),
        ]
        for step, (update, update_values) in enumerate(updates):
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key={"call_id": {"S": call_id}},
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#result": RESULT_ATTRIBUTE},
                    ExpressionAttributeValues=to_item({**update_values, **values}),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "ConditionalCheckFailedException":
                    return from_item(exc.response.get("Item") or {})
                if code == "ValidationException" and step + 1 < len(updates):
                    log.error(
                        "call outcome does not fit as a whole; recording less of it",
                        extra={"call_id": call_id, "step": step + 1, "error": aws_error(exc)},
                    )
                    continue
                raise StorageError(f"recording the push of call {call_id} failed: {aws_error(exc)}") from exc
            except BotoCoreError as exc:
                raise StorageError(f"recording the push of call {call_id} failed: {aws_error(exc)}") from exc
            return True
        return False  # unreachable: the last step either returned or raised

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
                raise StorageError(f"listing the calls of bot {bot_id} failed: {aws_error(exc)}") from exc
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
        # Concurrent workers asking for the same cold bot must cost one read, not one each; a lock per
        # bot, so that a slow read of one bot never holds up the workers pushing another's calls.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def get_bot(self, bot_id: str) -> BotConfig | None:
        with self._locks_guard:
            lock = self._locks.setdefault(bot_id, threading.Lock())
        with lock:
            try:
                item = self._provider.get(bot_id, max_age=self._ttl)
            except Exception as exc:  # Powertools wraps every provider error in GetParameterError
                raise StorageError(f"reading bot {bot_id} failed: {exc}") from exc
        if not isinstance(item, dict) or not item:
            return None
        return load_bot_config(item, bot_id)


def reduced_result(result: dict[str, Any]) -> dict[str, Any]:
    """What must still fit on a call item at DynamoDB's size limit: the outcome without the CRM's body."""
    kept = ("status", "http_status", "error_kind", "attempts", "next_attempt_at", "exhausted", "pushed_at")
    return {**{k: result.get(k) for k in kept}, "reduced": True}


def conditional_update(client: Any, what: str, **request: Any) -> bool:
    """One conditional UpdateItem: False when its condition refused it, StorageError (naming ``what``) on failure."""
    try:
        client.update_item(**request)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise StorageError(f"{what} failed: {aws_error(exc)}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"{what} failed: {aws_error(exc)}") from exc
    return True


def aws_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}"[:300]
    return type(exc).__name__
