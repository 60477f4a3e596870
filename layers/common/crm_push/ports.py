"""What crosses the core's ports: the values it exchanges with its adapters, and the adapters' shapes.

Adapters import only this module (and the pure helpers beside it), never the
delivery flow: ``flow.py`` -> ``attempt.py`` -> ``request.py`` -> ``ports.py``
is the reading order, and the arrows never point back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from crm_push.config import BotConfig, SecretRef
    from crm_push.recording import Presigner

PushStatus = Literal["ok", "rejected", "skipped", "failed"]
MAX_PAYLOAD_BYTES = 1_000_000
MAX_RESPONSE_BODY_CHARS = 2_000
USER_AGENT = "post-call-push/1.0"


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One HTTP request to a CRM. ``headers`` may hold credentials: never log or store them.

    ``url`` is the request target as sent (the query string included for
    GET), rebuilt from the one parse of the configured url (``push_url.py``)
    and without user info (Basic auth from the url is already a header), so
    the sender's own parse of it finds the host that ``recorded_url`` and the
    gate name.
    """

    call_id: str
    method: Literal["POST", "GET", "PUT", "PATCH"]
    url: str
    headers: dict[str, str]
    body: bytes | None
    recorded_url: str


# Why an attempt did not end in a 2xx (contract §10, §13, §14); None when it did.
# What each one means (retryable, counts against the circuit, runbook check) is error_kinds.py.
ErrorKind = Literal[
    "timeout",
    "connection",
    "dns",
    "tls",
    "destination_refused",
    "http_status",
    "config",
    "secret",
    "circuit_open",
    "payload_too_large",
    "internal",
    "auth",
    "crm_rejected",
    "quota",
]


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one attempt to reach the CRM came to: an HTTP answer (``http_status``) or none (``error``).

    ``attempts`` is 1 when the CRM was tried (a refused connection or a failed
    DNS lookup included) and 0 when nothing was tried (the destination was
    refused by the guard). ``retry_after`` is the CRM's ``Retry-After`` header
    as it came, for the core's schedule. ``response_body`` is the CRM's body
    decoded, *not yet cut* to ``MAX_RESPONSE_BODY_CHARS``: the core scrubs
    credentials from it first, then cuts (a secret straddling the cut would
    otherwise be stored in part).
    """

    http_status: int | None
    response_body: str = ""
    error: str | None = None
    attempts: int = 1
    duration_ms: int = 0
    error_kind: ErrorKind | None = None
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """An operator's explicit re-push: who asked, and why.

    ``force`` (the default) pushes a call already delivered. Without it the
    replay only pushes a call whose delivery has not ended (a reconciliation
    sweep: a call delivered since it was selected is left alone).
    """

    by: str
    reason: str
    force: bool = True


@dataclass(frozen=True, slots=True)
class PushResult:
    """``post_call_push_result`` (contract §9 and §10), plus which recording link and, for replays, who asked.

    ``status`` describes the latest attempt; ``attempts`` counts every attempt
    of the delivery; ``next_attempt_at`` is set while another is scheduled.
    """

    status: PushStatus
    http_status: int | None
    response_body: str
    error: str | None
    url: str
    method: str
    pushed_at: str
    duration_ms: int
    attempts: int = 0
    error_kind: ErrorKind | None = None
    next_attempt_at: str | None = None
    exhausted: bool = False
    recording_link: str = "none"
    replay: dict[str, str] | None = None

    def as_item(self) -> dict[str, Any]:
        item = asdict(self)
        if item["replay"] is None:
            del item["replay"]
        return item

    @property
    def is_final(self) -> bool:
        return self.next_attempt_at is None


def is_final_result(stored: Any) -> bool:
    """Whether a result found on a call item (of any version, with or without ``attempts``) ends its delivery.

    Only a result that names a next attempt leaves the delivery open (contract §12).
    """
    return isinstance(stored, dict) and bool(stored.get("status")) and not stored.get("next_attempt_at")


def stored_attempts(stored: Any) -> int:
    """``attempts`` of a stored result; a result from before durable delivery (none) made one."""
    if not isinstance(stored, dict):
        return 0
    value = stored.get("attempts")
    return 1 if value is None else int(value)


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """A call's delivery as the state table had it when this push claimed it."""

    attempts: int = 0
    status: Literal["new", "scheduled", "done"] = "new"
    call_written: bool = False  # the call item carries every attempt of this delivery so far
    unwritten: tuple[dict[str, Any], ...] = ()  # attempt entries not yet on the call's integration_log
    taken_over: bool = False  # the previous holder's lease ran out: it may have died mid-attempt
    holds: int = 0  # times the call was held back (open circuit, quota) without an attempt: its own wake-up ladder


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """What the state table keeps after an attempt (or a hold, or the end of a delivery).

    Saves are monotonic: an update with fewer ``attempts`` than the stored
    ones changes nothing, so a late copy (a record message applied after a
    newer attempt) can never take the delivery backwards.
    """

    attempts: int
    status: Literal["scheduled", "done"]
    due: datetime | None
    call_written: bool
    unwritten: tuple[dict[str, Any], ...]
    trigger: str | None
    waits_on: GateKey | None = None
    """The (destination, scope) a scheduled delivery waits on: released with it when it recovers (contract §14)."""
    holds: int = 0


class CallStore(Protocol):
    def get_call(self, call_id: str) -> dict[str, Any] | None: ...

    def append_entries(self, call_id: str, entries: list[dict[str, Any]]) -> bool:
        """Append to ``integration_log`` only: a failed probe is no attempt, the result stays. Raises StorageError."""
        ...

    def write_outcome(
        self, call_id: str, result: dict[str, Any], entries: list[dict[str, Any]], event: dict[str, Any], force: bool
    ) -> bool:
        """Set the result, append ``entries`` to ``integration_log`` and ``event`` to ``events``.

        Conditional and monotonic (contract §12): only over no result, or one
        with fewer attempts, or as many and an earlier ``pushed_at``
        (``force``, for replays: over any result). False when the write
        would not move the result forward (already made, or older).
        Raises StorageError.
        """
        ...


class DeliveryStore(Protocol):
    def claim(
        self,
        call_id: str,
        claim_id: str,
        trigger: str,
        now: datetime,
        lease_seconds: int,
        force: bool,
        *,
        probe: bool = False,
    ) -> DeliveryState:
        """Take the call's delivery for one attempt.

        Raises AlreadyPushed (delivered, unless ``force``), NotDue (the next
        attempt is scheduled later, unless ``force`` or ``probe``: a probe
        carries a parked call before its time), ClaimHeld (another push holds
        a live lease) or StorageError.
        """
        ...

    def release_parked(self, call_id: str, waits_on: GateKey, due: datetime) -> bool:
        """Bring a delivery waiting on ``waits_on`` forward to ``due`` (its destination recovered).

        Only while it still waits there and is scheduled: a call delivered or
        moved on meanwhile is left alone. False then.
        """
        ...

    def save(self, call_id: str, claim_id: str | None, update: DeliveryUpdate, now: datetime) -> bool:
        """Record the attempt and release the claim.

        With ``claim_id``: only while that claim is held, or when the stored
        delivery has fewer attempts than ``update`` (an answered attempt is
        recorded even after its lease ran out). Without: only the monotonic
        rule (a record message applied late). False when nothing changed.
        """
        ...

    def mark_written(self, call_id: str, attempts: int) -> bool:
        """The call item now carries every attempt up to ``attempts``: clear the pending entries."""
        ...

    def release(self, call_id: str, claim_id: str) -> None:
        """Give the claim back without an attempt."""
        ...


class RetryQueue(Protocol):
    def schedule(self, message: dict[str, Any], delay_seconds: float) -> None:
        """Deliver ``message`` to the handler after ``delay_seconds`` (the queue caps one hop). Raises QueueError."""
        ...


@dataclass(frozen=True, slots=True)
class GateKey:
    """What a circuit and a rate counter belong to (contract §12): a destination within one tenant's scope."""

    destination: str  # scheme://host:port, from the one parse of the url
    scope: str  # the bot's tenant_id, else its bot_id

    @property
    def label(self) -> str:
        """``<scope>#<destination>``: how tables name it (a destination has no ``#``)."""
        return f"{self.scope}#{self.destination}"

    @classmethod
    def from_label(cls, label: str) -> GateKey:
        scope, _, destination = label.rpartition("#")
        return cls(destination, scope)


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Not sent and not an attempt: the destination's circuit is open, its rate limit reached, or its quota spent."""

    reason: Literal["circuit_open", "rate_limited", "quota"]
    until: datetime


class DestinationGate(Protocol):
    def send(
        self, key: GateKey, rate_limit_per_second: float | None, send: Callable[[], SendOutcome]
    ) -> SendOutcome | HeldBack:
        """Run ``send`` unless the destination must be spared (contract §10: circuit breaker, rate limit)."""
        ...

    def held_until(self, key: GateKey) -> datetime | None:
        """When calls to ``key`` may next go, if its circuit holds them now; None when they may go.

        A cheap, cached read: asked before a held call is read or rendered.
        """
        ...


class ParkingLot(Protocol):
    """Calls parked on a (destination, scope), and that destination's quota (contract §14).

    One wake-up chain per (destination, scope): a probe while its circuit is
    open, a release when it recovers or its quota resets. Nothing polls per call.
    """

    def quota_until(self, key: GateKey) -> datetime | None:
        """The end of the spent quota, when one is spent now (a cached read)."""
        ...

    def spend_quota(self, key: GateKey, until: datetime) -> None: ...

    def probing(self, key: GateKey) -> datetime | None:
        """When the key's probe chain next runs, while one is arranged (its circuit is being probed)."""
        ...

    def arrange(self, key: GateKey, action: Literal["probe", "release"], due: datetime) -> bool:
        """Take the key's chain for ``action`` at ``due``; False when a chain is already arranged."""
        ...

    def finish(self, key: GateKey) -> None:
        """The chain is done: the next hold arranges a new one."""
        ...

    def waiting(self, key: GateKey, limit: int | None = None) -> list[str]:
        """Call ids of deliveries waiting on ``key``, the earliest due first."""
        ...


class NoParking:
    """No parking lot (tools, and tests that do not exercise it): no quotas, no chains, nobody waiting."""

    def quota_until(self, key: GateKey) -> datetime | None:
        return None

    def spend_quota(self, key: GateKey, until: datetime) -> None:
        return None

    def probing(self, key: GateKey) -> datetime | None:
        return None

    def arrange(self, key: GateKey, action: Literal["probe", "release"], due: datetime) -> bool:
        return False

    def finish(self, key: GateKey) -> None:
        return None

    def waiting(self, key: GateKey, limit: int | None = None) -> list[str]:
        return []


class UnguardedGate:
    """No circuit breaker, no rate limit: every call goes. For tools and tests that do not exercise the gate."""

    def send(
        self, key: GateKey, rate_limit_per_second: float | None, send: Callable[[], SendOutcome]
    ) -> SendOutcome | HeldBack:
        return send()

    def held_until(self, key: GateKey) -> datetime | None:
        return None


class BotDirectory(Protocol):
    def get_bot(self, bot_id: str) -> BotConfig | None: ...


class CrmSender(Protocol):
    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        """One attempt; never raises: every failure comes back as a SendOutcome with ``error``."""
        ...


class SecretResolver(Protocol):
    def resolve(self, ref: SecretRef, *, fresh: bool = False) -> str:
        """The referenced value; ``fresh`` reads the store again, past any cache. Raises SecretUnavailable."""
        ...


class AccessGrant(Protocol):
    """An OAuth access token as a push uses it (contract §13). ``access_token`` is a credential."""

    access_token: str
    token_type: str

    def template_values(self) -> dict[str, str]:
        """``instance_url`` / ``api_domain`` from the token answer, for a url's ``{{auth.*}}`` origin."""
        ...


class AccessTokens(Protocol):
    def token(
        self,
        auth: Any,
        scope: str,
        *,
        secrets: SecretResolver | None,
        rejected: str | None = None,
        deadline: float | None = None,
        bot_id: str | None = None,
    ) -> AccessGrant:
        """One usable token for ``auth`` in ``scope``, shared by every environment. Raises AuthFailed."""
        ...


ATTEMPT_SECONDS = 10.0
"""One attempt's time budget (contract §8): the sender's total timeout and the core's deadline gate."""


@dataclass
class PushDeps:
    calls: CallStore
    bots: BotDirectory
    crm: CrmSender
    state: DeliveryStore
    retry_queue: RetryQueue | None = None
    presign: Presigner | None = None
    public_base_url: str | None = None
    recordings_bucket: str | None = None
    claim_lease_seconds: int = 900
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    deadline: Callable[[], float | None] = field(default=lambda: None)
    """Monotonic time by which sending must stop (the Lambda's remaining time), or None."""
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = field(default=random.random)
    gate: DestinationGate = field(default_factory=UnguardedGate)
    parking: ParkingLot = field(default_factory=NoParking)
    secrets: SecretResolver | None = None
    tokens: AccessTokens | None = None
    secrets_name_prefix: str = ""
    parameters_path_prefix: str = ""
    """Where a bot's references may point (contract §12): ``<prefix><scope>/...``."""

    @property
    def attempt_seconds(self) -> float:
        return ATTEMPT_SECONDS


PushOutcomeKind = Literal[
    "pushed",  # an attempt was made and recorded (its result says what came of it)
    "scheduled",  # nothing due now: the next attempt is on the retry queue
    "deferred",  # not attempted (the deadline was near): on the retry queue, no attempt spent
    "claim_held",  # another invocation holds the call: a check is on the retry queue
    "held_back",  # the destination's circuit is open or its rate limit reached: scheduled, no attempt spent
    "held_no_queue",  # held back, and no retry queue to wait on: nothing saved, nothing sent (CLI without a queue)
    "stopped",  # a scheduled delivery ended because the call or bot is no longer eligible
    "not_eligible",
    "no_config",
    "already_pushed",
    "call_not_found",
    "claim_lost",  # another push took the call over while this one held it: its outcome is that push's to record
    "record_deferred",  # the CRM answered, the writes failed: a record message carries them
    "recorded",  # a record message's writes were made
    "put_back",  # a wake-up that came early went back on the queue for the rest of its wait
    "probe_failed",  # a probe carried this parked call and the destination still failed: nothing spent
    "released",  # a destination recovered: the calls waiting on it were brought forward
]


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What happened to one call; ``result`` is the attempt's result when one was made."""

    call_id: str
    outcome: PushOutcomeKind
    result: PushResult | None = None
