"""What each ``error_kind`` means, in one place: retryable or final, whether it counts against the circuit.

The retry ladder (``retry_policy``), the destination gate, ``status`` and
``lint`` all ask this table instead of keeping their own lists (contract §10,
§13, §14).
"""

from __future__ import annotations

from dataclasses import dataclass

from crm_push.ports import ErrorKind

RETRYABLE_HTTP = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class KindMeaning:
    retryable: bool | None
    """True: always worth another attempt; False: final; None: it depends (the HTTP status, a transient store)."""
    against_circuit: bool
    """A failure of the CRM itself: it counts towards opening the destination's circuit."""
    no_answer: bool = False
    """The CRM never answered the request."""


MEANINGS: dict[str, KindMeaning] = {
    "timeout": KindMeaning(True, True, no_answer=True),
    "connection": KindMeaning(True, True, no_answer=True),
    "dns": KindMeaning(True, True, no_answer=True),
    "tls": KindMeaning(True, True, no_answer=True),
    "http_status": KindMeaning(None, True),  # 408, 429 and 5xx retry and count; any other status is final
    "destination_refused": KindMeaning(False, False),
    "config": KindMeaning(False, False),
    "payload_too_large": KindMeaning(False, False),
    "secret": KindMeaning(None, False),  # retryable only when the store was throttled or unavailable
    "auth": KindMeaning(None, False),  # the token endpoint: retryable when it did not answer, 429 or 5xx
    "circuit_open": KindMeaning(True, False),  # not an attempt: the call waits for the probe
    "crm_rejected": KindMeaning(False, False),  # a 2xx the CRM's own body says was refused
    "quota": KindMeaning(True, False),  # the tenant's allowance is spent: parked until it resets
    "internal": KindMeaning(False, False),
}

NO_ANSWER_KINDS = frozenset(kind for kind, meaning in MEANINGS.items() if meaning.no_answer)


def is_retryable(http_status: int | None, error_kind: ErrorKind | str | None, *, transient: bool = False) -> bool:
    """Whether an attempt's outcome is worth another attempt on the ladder (contract §10).

    An answered attempt retries on 408, 429 and 5xx, unless its kind says
    otherwise (a preset's ``crm_rejected`` on a 2xx, a ``quota`` that parks).
    ``transient`` is for a secret store or token endpoint that was
    throttled, unavailable or silent.
    """
    meaning = MEANINGS.get(error_kind or "")
    if meaning is not None and meaning.retryable is not None and error_kind != "http_status":
        return meaning.retryable
    if error_kind in ("secret", "auth"):
        return transient
    if http_status is not None:
        return http_status in RETRYABLE_HTTP or 500 <= http_status <= 599
    return False


def counts_against_circuit(http_status: int | None, error_kind: ErrorKind | str | None) -> bool:
    """Whether an outcome says the CRM itself is failing (what the circuit breaker counts)."""
    meaning = MEANINGS.get(error_kind or "")
    if meaning is None or not meaning.against_circuit:
        return False
    if error_kind == "http_status":
        return http_status is not None and (http_status in RETRYABLE_HTTP or 500 <= http_status <= 599)
    return True
