"""What a call's delivery item (``PUSH_STATE_TABLE``, ``delivery#<call_id>``) says to an operator.

``status``, ``replay`` and ``reconcile`` all have to tell the same three things
apart from that item, so they read it here:

* a **live** delivery: a push holds the call (a claim whose lease has not
  run out) or its next attempt is scheduled;
* **answered, not yet written**: the CRM answered attempts that the call
  item does not carry yet (``written`` false and a non-empty ``log``). A
  ``record`` message on the retry queue, or the delivery's next write,
  carries them; when that message was dead-lettered, ``dlq redrive`` puts it
  back. Such an answer is written, never sent again (contract §12);
* **decided, not yet written**: the same, where the answer ended the
  delivery (a final result, or the state says ``done``). Pushing such a
  call again would be a second delivery, so ``replay`` holds it back and
  ``reconcile`` never counts it as stranded.

The item is the plain form ``DeliveryStateTable.get`` returns (attempt
entries already expanded to their long keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from crm_push.clock import lease_is_live
from crm_push.ports import is_final_result

# A scheduled attempt rides the retry queue in hops of at most 15 minutes; one this late lost its message.
LATE_AFTER_SECONDS = 20 * 60


def _epoch(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def claim_live(delivery: Mapping[str, Any] | None, now: datetime) -> bool:
    """A push holds the call right now: it may be sending this very moment."""
    if not delivery or not delivery.get("claim_id"):
        return False
    return lease_is_live(_epoch(delivery.get("lease_until")), now.timestamp())


def claim_expired(delivery: Mapping[str, Any] | None, now: datetime) -> bool:
    """A claim is left whose lease ran out: its holder died (or is about to be taken over)."""
    if not delivery or not delivery.get("claim_id") or delivery.get("lease_until") is None:
        return False
    return not claim_live(delivery, now)


def scheduled_due(delivery: Mapping[str, Any] | None) -> datetime | None:
    """When the delivery's next attempt is due, if one is scheduled."""
    if not delivery or delivery.get("st") != "scheduled":
        return None
    due = _epoch(delivery.get("due"))
    return datetime.fromtimestamp(due, UTC) if due is not None else None


def unwritten_answers(delivery: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Attempts the CRM answered that are not on the call item yet ("answered, not yet written").

    ``written`` false with a non-empty ``log``; also a ``log`` left on a
    delivery that ended (``st`` done), whose last write did not happen.
    """
    if not delivery:
        return []
    log = [entry for entry in delivery.get("log") or () if isinstance(entry, Mapping)]
    if not log:
        return []
    if delivery.get("written") is not True or delivery.get("st") == "done":
        return log
    return []


def decided_not_written(delivery: Mapping[str, Any] | None) -> bool:
    """The CRM's answer ended the delivery, and the call item does not show it yet.

    Only its write is missing: a record message (or ``dlq redrive`` of a
    dead-lettered one) makes it. A replay would push the call a second time.
    """
    pending = unwritten_answers(delivery)
    if not pending or delivery is None:
        return False
    if delivery.get("st") == "done":
        return True
    return delivery.get("st") != "scheduled" and is_final_result(pending[-1])
