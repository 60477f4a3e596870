"""In-memory stand-ins for the destination gate's two stores, with the semantics of the real ones.

``MemoryCircuits`` is a Powertools persistence layer over a dict that keeps
Powertools' record semantics, the conditional probe election included;
``MemoryRateCounter`` is the conditional ``ADD`` of ``RateCounterTable``.
The DynamoDB side is tested in tests/integration (test_gate_tenancy.py,
test_circuit_breaker.py, test_rate_limit.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta

from aws_lambda_powertools.utilities.circuit_breaker import CircuitState
from aws_lambda_powertools.utilities.circuit_breaker.persistence import (
    CircuitBreakerPersistenceLayer,
    CircuitStateRecord,
)
from aws_lambda_powertools.utilities.circuit_breaker.persistence.base import CircuitBreakerExistingLockError
from botocore.exceptions import EndpointConnectionError

from crm_push.ports import GateKey, SendOutcome

OK = SendOutcome(200, '{"ok":true}', None, 1, 12)
BAD_REQUEST = SendOutcome(400, "missing field", None, 1, 5, "http_status")
DOWN = SendOutcome(503, "down", None, 1, 8, "http_status")
SLOW_DOWN = SendOutcome(429, "slow down", None, 1, 4, "http_status", retry_after="30")
HUNG = SendOutcome(None, "", "timed out after 10.0s without a complete answer", 1, 10_000, "timeout")
NOT_TRIED = SendOutcome(None, "", "not sent: no time left before the Lambda's deadline", 0, 0, None)


class MemoryCircuits(CircuitBreakerPersistenceLayer):
    """Circuit records in a dict, with the conditional probe election Powertools' DynamoDB layer makes."""

    def __init__(self, records: dict[str, CircuitStateRecord] | None = None) -> None:
        super().__init__()
        self.records: dict[str, CircuitStateRecord] = {} if records is None else records
        self.reads = 0
        self._store_lock = threading.Lock()

    def _get_record(self, name: str) -> CircuitStateRecord | None:
        with self._store_lock:
            self.reads += 1
            return self.records.get(name)

    def _put_record(
        self, record: CircuitStateRecord, condition: str | None = None, expected_opened_at: int | None = None
    ) -> None:
        with self._store_lock:
            if condition == "half_open":
                now = int(time.time())
                current = self.records.get(record.name)
                electable = current is not None and (
                    (
                        current.state == CircuitState.OPEN
                        and current.half_open_owner is None
                        and (expected_opened_at is None or current.opened_at == expected_opened_at)
                    )
                    or (
                        current.state == CircuitState.HALF_OPEN
                        and current.probe_lease_expiry is not None
                        and current.probe_lease_expiry <= now
                    )
                )
                if not electable:
                    raise CircuitBreakerExistingLockError
            self.records[record.name] = record

    def _update_record(self, record: CircuitStateRecord) -> None:
        with self._store_lock:
            self.records[record.name] = record


class MemoryRateCounter:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.takes = 0
        self.down = False
        self._lock = threading.Lock()

    def take(self, key: str, capacity: int, expires_at: int) -> int | None:
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://dynamodb")
        with self._lock:
            self.takes += 1
            if self.counts[key] >= capacity:
                return None
            self.counts[key] += 1
            return self.counts[key]


class ScriptedSends:
    """The CRM behind the gate: each send returns the next scripted outcome and is counted."""

    def __init__(self, *outcomes: SendOutcome) -> None:
        self.outcomes = list(outcomes)
        self.sent = 0

    def __call__(self) -> SendOutcome:
        self.sent += 1
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]


def fresh_destination() -> str:
    # Powertools counts failures per circuit name in module state: every test gets its own destination.
    return f"https://crm-{uuid.uuid4().hex[:8]}.example.com:443"


def gate_key(scope: str = "tenant-a", destination: str | None = None) -> GateKey:
    return GateKey(destination=destination or fresh_destination(), scope=scope)


class FakeClock:
    """The gate's clock, moved only when told (or when the gate sleeps, with ``sleep=clock.advance``)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
