"""The retry queue (``RETRY_QUEUE_URL``): SQS carries delayed attempts back to the same handler.

SQS delays one message by at most 15 minutes; a longer wait is carried in
hops: the handler puts a message that arrives before its due time back for
the rest of it (``flow.py`` decides, this only sends). What a message holds is
``messages.py``.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crm_push.adapters.dynamodb import aws_error
from crm_push.errors import QueueError
from crm_push.messages import encode

MAX_DELAY_SECONDS = 900


class SqsRetryQueue:
    """Sends retry messages; the SQS client is made on first use (most calls never need it)."""

    def __init__(
        self,
        queue_url: str,
        *,
        client: Any = None,
        session: Any = None,
        config: Any = None,
        max_delay_seconds: int = MAX_DELAY_SECONDS,
    ) -> None:
        self._url = queue_url
        self._max_delay = max_delay_seconds
        self._client = client
        self._session = session
        self._config = config
        self._lock = threading.Lock()

    def _sqs(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3

                    self._client = (self._session or boto3.session.Session()).client("sqs", config=self._config)
        return self._client

    def schedule(self, message: dict[str, Any], delay_seconds: float) -> None:
        delay = min(self._max_delay, max(0, math.ceil(delay_seconds)))
        body = encode(message)
        try:
            self._sqs().send_message(QueueUrl=self._url, MessageBody=body, DelaySeconds=delay)
        except (ClientError, BotoCoreError) as exc:
            raise QueueError(f"scheduling call {message.get('call_id')} failed: {aws_error(exc)}") from exc
