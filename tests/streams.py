"""A table's DynamoDB stream read from DynamoDB Local, handed over the way Lambda hands it to a function.

Lambda's poller reads the stream with the same ``dynamodbstreams`` API and
delivers each record as JSON, adding what the API leaves out: the stream's
ARN (``eventSourceARN``), the function's region (``awsRegion``) and
``ApproximateCreationDateTime`` as epoch seconds (the API gives a
timestamp). Records read here are therefore what the function meets in AWS,
not what a test author believes it meets.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

REGION = "us-east-1"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        seconds = value.timestamp()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, bytes | bytearray):  # B and BS attributes arrive base64-encoded
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not part of a stream record")


def as_lambda_record(record: dict[str, Any], stream_arn: str, region: str = REGION) -> dict[str, Any]:
    """One ``get_records`` record as Lambda delivers it: ARN and region added, then a JSON round trip."""
    delivered = {**record, "eventSource": "aws:dynamodb", "awsRegion": region, "eventSourceARN": stream_arn}
    plain: dict[str, Any] = json.loads(json.dumps(delivered, default=_json_value))
    return plain


class TableStream:
    """Reads one table's stream from its start; ``read_new()`` returns what arrived since the last read."""

    def __init__(self, dynamodb: Any, streams: Any, table: str, region: str = REGION) -> None:
        description = dynamodb.describe_table(TableName=table)["Table"]
        if "LatestStreamArn" not in description:
            raise ValueError(f"table {table} has no stream")
        self.arn: str = description["LatestStreamArn"]
        self._streams, self._region = streams, region
        self._next_iterator: dict[str, str | None] = {}

    def _shards(self) -> list[str]:
        shards: list[str] = []
        start: dict[str, str] = {}
        while True:
            description = self._streams.describe_stream(StreamArn=self.arn, **start)["StreamDescription"]
            shards += [shard["ShardId"] for shard in description["Shards"]]
            if not description.get("LastEvaluatedShardId"):
                return shards
            start = {"ExclusiveStartShardId": description["LastEvaluatedShardId"]}

    def read_new(self) -> list[dict[str, Any]]:
        """Every record written since the previous call, in sequence order, wrapped as Lambda delivers them."""
        records: list[dict[str, Any]] = []
        for shard in self._shards():
            if shard not in self._next_iterator:
                self._next_iterator[shard] = self._streams.get_shard_iterator(
                    StreamArn=self.arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            iterator = self._next_iterator[shard]
            while iterator is not None:
                page = self._streams.get_records(ShardIterator=iterator)
                records += page["Records"]
                # A closed shard ends without a next iterator; an open one answers empty when drained.
                self._next_iterator[shard] = iterator = page.get("NextShardIterator")
                if not page["Records"]:
                    break
        records.sort(key=lambda record: int(record["dynamodb"]["SequenceNumber"]))
        return [as_lambda_record(record, self.arn, self._region) for record in records]
