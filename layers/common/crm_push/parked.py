"""A destination's waiting calls (contract §14): one chain of wake-ups per (destination, scope), no polling.

While a (destination, scope) holds calls (its circuit is open, or its quota is
spent), each waiting call sleeps on its own ladder, at most one wake-up a
step. The destination itself has one chain: a probe a minute while its
circuit is open (a real request carrying one waiting call, not an attempt),
then, when the probe closes the circuit or the quota resets, one release
that brings every call waiting on it forward, spread over a minute.

A release that dies half way loses nothing: each call it did not reach still
has its own ladder wake-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal

from crm_push.clock import iso_utc
from crm_push.messages import DestinationChain, chain_message, wake_up_message
from crm_push.ports import GateKey, PushDeps, PushOutcome

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 60.0  # an open circuit is probed at least once a minute
# Every waiting call goes out within a minute of the recovery: the release spreads them over 50 s,
# leaving the rest of the minute to the queue and the handler.
RELEASE_WINDOW_SECONDS = 50.0
RELEASE_GAP_SECONDS = 0.5  # and no closer than needed: a few calls go at once, a crowd is spread over the minute
_CLOCK_SLACK_SECONDS = 1.0


def arrange_chain(
    deps: PushDeps, key: GateKey, action: Literal["probe", "release"], due: datetime, bot_id: str | None
) -> bool:
    """Start the key's chain at ``due`` unless one is already arranged (one chain per key, however many wait)."""
    if deps.retry_queue is None or not deps.parking.arrange(key, action, due):
        return False
    message = chain_message(DestinationChain(key, action, bot_id, due))
    deps.retry_queue.schedule(message, max(0.0, (due - deps.clock()).total_seconds()))
    log.info(
        "destination chain arranged", extra={"destination": key.destination, "action": action, "due": iso_utc(due)}
    )
    return True


def run_chain(chain: DestinationChain, deps: PushDeps, carry: Callable[[str], PushOutcome]) -> PushOutcome:
    """One link of a destination's chain. ``carry(call_id)`` pushes one waiting call as a probe."""
    now = deps.clock()
    if chain.due is not None and chain.due > now + timedelta(seconds=_CLOCK_SLACK_SECONDS):
        assert deps.retry_queue is not None
        deps.retry_queue.schedule(chain_message(chain), (chain.due - now).total_seconds())
        return PushOutcome("", "put_back")
    if chain.action == "release":
        return release_waiting(chain.key, deps, chain.bot_id)
    return _probe(chain, deps, carry)


def _probe(chain: DestinationChain, deps: PushDeps, carry: Callable[[str], PushOutcome]) -> PushOutcome:
    key = chain.key
    if deps.parking.quota_until(key) is not None:
        deps.parking.finish(key)  # the quota's own release chain comes at its reset
        return PushOutcome("", "held_back")
    held = deps.gate.held_until(key)
    if held is not None and held > deps.clock() + timedelta(seconds=_CLOCK_SLACK_SECONDS):
        _next_probe(deps, key, held, chain.bot_id)
        return PushOutcome("", "held_back")
    waiting = deps.parking.waiting(key, limit=1)
    if not waiting:
        deps.parking.finish(key)  # nobody waits: the next hold starts a new chain
        return PushOutcome("", "released")
    outcome = carry(waiting[0])
    if deps.gate.held_until(key) is None:
        # The probe closed the circuit (or found it closed): everyone waiting goes now.
        release_waiting(key, deps, chain.bot_id)
    else:
        _next_probe(deps, key, deps.gate.held_until(key), chain.bot_id)
    return outcome


def _next_probe(deps: PushDeps, key: GateKey, held_until: datetime | None, bot_id: str | None) -> None:
    now = deps.clock()
    due = max(held_until or now, now + timedelta(seconds=1))
    due = min(due, now + timedelta(seconds=PROBE_INTERVAL_SECONDS))
    deps.parking.finish(key)
    arrange_chain(deps, key, "probe", due, bot_id)


def release_waiting(key: GateKey, deps: PushDeps, bot_id: str | None) -> PushOutcome:
    """Bring every call waiting on ``key`` forward, spread over the release window (at the bot's rate limit)."""
    waiting = deps.parking.waiting(key)
    now = deps.clock()
    rate = _rate_limit(deps, bot_id)
    gap = min(RELEASE_GAP_SECONDS, RELEASE_WINDOW_SECONDS / max(1, len(waiting)))
    if rate:
        gap = max(gap, 1.0 / rate)
    released = 0
    assert deps.retry_queue is not None or not waiting
    for index, call_id in enumerate(waiting):
        due = now + timedelta(seconds=index * gap)
        if deps.state.release_parked(call_id, key, due):
            assert deps.retry_queue is not None
            deps.retry_queue.schedule(wake_up_message(call_id, None, due), index * gap)
            released += 1
    deps.parking.finish(key)
    log.info(
        "destination recovered: waiting calls released",
        extra={"destination": key.destination, "calls": released, "over_seconds": round(gap * len(waiting))},
    )
    return PushOutcome("", "released")


def _rate_limit(deps: PushDeps, bot_id: str | None) -> float | None:
    bot = deps.bots.get_bot(bot_id) if bot_id else None
    return bot.push.rate_limit_per_second if bot is not None and bot.push is not None else None
