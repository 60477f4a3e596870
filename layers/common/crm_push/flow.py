"""The delivery of one call: eligibility, claim, attempt, record, and when the next attempt goes.

Reading order: ``push_call`` -> ``Delivery.run`` -> ``attempt.run_attempt``
-> ``request.prepare_push`` -> the ports. Everything outside the process (the
tables, the queue, the CRM, the clock) comes in through ``PushDeps``.

Exactly once (contract §9, §10, §12) rests on three rules kept here:

* A final result on the call item ends the delivery, whatever the state
  table says (it may have expired or been recreated): only a replay pushes
  such a call again.
* Once the CRM has answered, that answer is written before anything else is
  tried: the call item, then the state table, and the state is saved even
  when the call write fails (its pending entries ride along). What cannot be
  written goes on the retry queue as a ``record`` message, which writes and
  never sends; a takeover after a lease reads the call item again first.
* Writes are monotonic: a late copy of a result or of a state update never
  takes the delivery backwards.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal

from crm_push.attempt import AttemptOutcome, run_attempt
from crm_push.clock import first_second_after_lease, from_epoch, iso_utc, whole_second_after
from crm_push.config import BotConfig
from crm_push.errors import AlreadyPushed, ClaimHeld, NotDue, QueueError, ResultsNotStored, StorageError
from crm_push.messages import (
    CallWrite,
    DestinationChain,
    Record,
    RetryMessage,
    parse,
    record_message,
    wake_up_message,
)
from crm_push.parked import arrange_chain, run_chain
from crm_push.ports import (
    DeliveryState,
    DeliveryUpdate,
    GateKey,
    HeldBack,
    PushDeps,
    PushOutcome,
    PushOutcomeKind,
    PushResult,
    Replay,
    is_final_result,
    stored_attempts,
)
from crm_push.request import gate_key_of, seconds_since_start
from crm_push.retry_after import parse_retry_after
from crm_push.retry_policy import DEFAULT_RETRY_SCHEDULE, JITTER, next_attempt, schedule_for
from crm_push.variables import parse_utc_timestamp

log = logging.getLogger(__name__)

RESULT_ATTRIBUTE = "post_call_push_result"
MAX_WAIT_IN_INVOCATION_SECONDS = 10.0  # longer delays ride the retry queue (contract §10)
MAX_RATE_LIMIT_WAIT_SECONDS = 1.0  # a call over the rate limit waits for the next second, no longer
# Calls held by one circuit wake spread over this long after its probe time, not in the same second.
HELD_WAKE_SPREAD_SECONDS = 30.0
# A record message that cannot be applied yet comes back after these delays (then every 15 min),
# well inside a claim's lease, instead of waiting out the queue's visibility timeout.
RECORD_RETRY_DELAYS_SECONDS = (5, 30, 60, 120, 300, 900)
# The state table keeps due times in whole seconds; waking this much after one makes it due for sure.
_CLOCK_SLACK_SECONDS = 0.05


def push_call(
    call_id: str,
    deps: PushDeps,
    *,
    call_doc: Mapping[str, Any] | None = None,
    replay: Replay | None = None,
    trigger: str | None = None,
    bot_id: str | None = None,
    woken: bool = False,
    probe: bool = False,
) -> PushOutcome:
    """Deliver one call whose results were stored (or replay it), attempt by attempt, recording what happened.

    ``call_doc`` is the item as the trigger saw it (a stream image); without
    it the item is read. ``trigger`` names the delivery that brought us here
    (stable across its redeliveries: a stream event id, an SQS message id).
    ``woken``: a retry-queue wake-up for ``bot_id``'s call, whose gate is
    asked before the call is read. Raises ResultsNotStored for an early
    event, and StorageError or QueueError when a retry of the trigger is
    needed; every other failure is recorded on the call. ``probe``: this call
    carries a probe of its destination's open circuit (contract §14): sent
    before its own time, and not an attempt.
    """
    trigger = trigger or f"direct:{uuid.uuid4().hex}"
    delivery = Delivery(call_id, deps, trigger, replay=replay, woken=woken, probe=probe)
    return delivery.run(call_doc, bot_id)


def handle_retry_message(message: Mapping[str, Any] | RetryMessage, deps: PushDeps, message_id: str) -> PushOutcome:
    """One message from the retry queue: a wake-up for a call's next attempt, or writes left to finish.

    A wake-up that arrives before its due time (SQS delays one hop by at most
    15 minutes) goes back on the queue for the rest, and nothing is attempted.
    """
    parsed = parse(message) if isinstance(message, Mapping) else message
    if isinstance(parsed, Record):
        return apply_record(parsed, deps)
    if isinstance(parsed, DestinationChain):
        trigger = f"probe:{message_id}"
        return run_chain(parsed, deps, lambda call_id: push_call(call_id, deps, trigger=trigger, probe=True))
    now = deps.clock()
    if parsed.due is not None and parsed.due > now:
        if deps.retry_queue is None:
            raise QueueError(f"call {parsed.call_id} has a wake-up for later and no retry queue to put it back on")
        deps.retry_queue.schedule(wake_up_message(parsed.call_id, parsed.bot_id, parsed.due), _seconds(parsed.due, now))
        return PushOutcome(parsed.call_id, "put_back")
    return push_call(parsed.call_id, deps, trigger=f"sqs:{message_id}", bot_id=parsed.bot_id, woken=True)


def apply_record(record: Record, deps: PushDeps) -> PushOutcome:
    """Write what an earlier invocation could not, after the CRM answered. Sends nothing; idempotent.

    While the tables still refuse, the message comes back after a short delay
    (``RECORD_RETRY_DELAYS_SECONDS``) rather than the queue's visibility timeout,
    so the answer is recorded long before any claim's lease runs out.
    """
    try:
        saved = False
        if record.state is not None:
            saved = deps.state.save(record.call_id, record.claim_id, record.state, deps.clock())
        if record.call is not None:
            call = record.call
            deps.calls.write_outcome(record.call_id, call.result, call.entries, call.event, call.force)
            deps.state.mark_written(record.call_id, int(call.result.get("attempts") or 0))
    except StorageError as exc:
        if deps.retry_queue is None:
            raise
        delay = RECORD_RETRY_DELAYS_SECONDS[min(record.tries, len(RECORD_RETRY_DELAYS_SECONDS) - 1)]
        log.warning(
            "recording an answered attempt failed again; retrying soon",
            extra={"call_id": record.call_id, "tries": record.tries + 1, "delay_seconds": delay, "error": str(exc)},
        )
        deps.retry_queue.schedule(record_message(replace(record, tries=record.tries + 1)), delay)
        return PushOutcome(record.call_id, "record_deferred")
    log.info("deferred attempt record written", extra={"call_id": record.call_id, "state_saved": saved})
    update = record.state
    if saved and update is not None and update.status == "scheduled" and update.due is not None:
        _wake_up(deps, record.call_id, record.bot_id, update.due, "next attempt scheduled")
    return PushOutcome(record.call_id, "recorded")


class Delivery:
    """One trigger's work on one call's delivery. Its state is its fields, set as the run goes."""

    def __init__(
        self, call_id: str, deps: PushDeps, trigger: str, *, replay: Replay | None, woken: bool, probe: bool = False
    ) -> None:
        self.call_id = call_id
        self.deps = deps
        self.trigger = trigger
        self.replay = replay
        self.woken = woken
        self.probe = probe
        self.doc: Mapping[str, Any] = {}
        self.bot: BotConfig | None = None
        self.claim_id = ""
        self.state = DeliveryState()

    # --- eligibility ------------------------------------------------------------------

    def run(self, call_doc: Mapping[str, Any] | None, bot_id: str | None) -> PushOutcome:
        if self.woken and self.replay is None and not self.probe and bot_id:
            held = self._hold_before_reading(bot_id)
            if held is not None:
                return held
        doc = call_doc if call_doc is not None else self.deps.calls.get_call(self.call_id)
        if doc is None:
            return self._outcome("call_not_found")
        self.doc = doc
        if self.replay is None and "results_stored_at" not in doc:
            raise ResultsNotStored(f"call {self.call_id} has no results_stored_at yet")
        if not self._forced and is_final_result(doc.get(RESULT_ATTRIBUTE)):
            return self._outcome("already_pushed")
        found_bot_id = doc.get("bot_id")
        bot = self.deps.bots.get_bot(found_bot_id) if isinstance(found_bot_id, str) and found_bot_id else None
        if self.replay is None and doc.get("skip_post_push") is True:
            return self._stop("not_eligible", "skip_post_push was set on the call")
        if bot is None or not bot.has_push_config:
            return self._stop("no_config", "the bot has no post_call_push config any more")
        self.bot = bot
        return self._deliver()

    # --- the attempt loop ---------------------------------------------------------------

    def _deliver(self) -> PushOutcome:
        while True:
            if not self._time_for_attempt(0.0):
                self._wake_up(self.deps.clock(), "deadline near, not attempted")
                return self._outcome("deferred")
            refused = self._claim()
            if refused is not None:
                return refused
            if not self._forced:
                adopted = self._adopt_recorded_outcome()
                if adopted == "done":
                    return self._outcome("already_pushed")
                if adopted == "scheduled":
                    continue  # claim again: due now, or NotDue re-sends the schedule's message
            attempt = run_attempt(self.doc, self._bot, self.deps, self.state.attempts)
            if self.probe:
                return self._after_probe(attempt)
            if attempt.deferred:
                self.deps.state.release(self.call_id, self.claim_id)
                self._wake_up(self.deps.clock(), "deadline near, not attempted")
                return self._outcome("deferred")
            if attempt.held is not None:
                wait = _seconds(attempt.held.until, self.deps.clock())
                if attempt.held.reason == "rate_limited" and wait <= MAX_RATE_LIMIT_WAIT_SECONDS:
                    self.deps.state.release(self.call_id, self.claim_id)
                    self.deps.sleep(max(0.0, wait))
                    continue
                return self._hold(attempt)
            if self.replay is not None:
                replayed = {"by": self.replay.by, "reason": self.replay.reason}
                attempt = replace(attempt, result=replace(attempt.result, replay=replayed))
            outcome, due = self._record(attempt)
            if due is None or outcome.outcome != "pushed":
                return outcome
            if self._worth_waiting_for(due):
                self.deps.sleep(max(0.0, _seconds(due, self.deps.clock())) + _CLOCK_SLACK_SECONDS)
                self.replay = None  # a replay's own retries are ordinary scheduled attempts
                continue
            self._wake_up(due, "next attempt scheduled")
            return outcome

    def _claim(self) -> PushOutcome | None:
        """Take the call for one attempt; the outcome to return when it cannot be taken now."""
        claim_id = uuid.uuid4().hex
        try:
            self.state = self.deps.state.claim(
                self.call_id,
                claim_id,
                self.trigger,
                self.deps.clock(),
                self.deps.claim_lease_seconds,
                force=self._forced,
                probe=self.probe,
            )
        except AlreadyPushed as exc:
            self._finish_pending_write(exc.pending, exc.attempts)
            return self._outcome("already_pushed")
        except NotDue as exc:
            self._finish_pending_write(exc.pending, exc.attempts)
            if exc.scheduled_by == self.trigger:
                # This trigger wrote that schedule and is being retried: its message may never have been sent.
                self._wake_up(from_epoch(exc.due), "schedule re-sent after a retried trigger")
            return self._outcome("scheduled")
        except ClaimHeld as exc:
            # The holder is usually alive and done in seconds; if it died, this check takes over after its lease.
            if exc.until is not None:
                when = first_second_after_lease(exc.until)
            else:
                when = self.deps.clock() + timedelta(seconds=1)
            self._wake_up(when, "another invocation holds the call")
            return self._outcome("claim_held")
        self.claim_id = claim_id
        return None

    def _adopt_recorded_outcome(self) -> str | None:
        """What the call item shows beyond the state table: adopt it rather than attempt again.

        A final result (of any version) means the call is delivered. More
        attempts than the state knows of come from a holder that died (or was
        throttled) between writing the call and saving the state, or from a
        state item that expired or was recreated.
        """
        doc = self.doc
        if self.state.taken_over:
            doc = self.deps.calls.get_call(self.call_id) or doc
        stored = doc.get(RESULT_ATTRIBUTE)
        final = is_final_result(stored)
        recorded_attempts = stored_attempts(stored) if isinstance(stored, dict) else 0
        if not final and recorded_attempts <= self.state.attempts:
            return None
        due = None
        if not final and isinstance(stored, dict):
            due = _parse_due(stored.get("next_attempt_at"))
        update = DeliveryUpdate(
            attempts=max(recorded_attempts, self.state.attempts),
            status="scheduled" if due is not None else "done",
            due=due,
            call_written=True,
            unwritten=(),
            trigger=self.trigger,
        )
        self.deps.state.save(self.call_id, self.claim_id, update, self.deps.clock())
        log.warning(
            "adopted an outcome the call item already records",
            extra={
                "call_id": self.call_id,
                "attempts": update.attempts,
                "final": final,
                "taken_over": self.state.taken_over,
            },
        )
        return "scheduled" if due is not None else "done"

    # --- recording ------------------------------------------------------------------------

    def _record(self, attempt: AttemptOutcome) -> tuple[PushOutcome, datetime | None]:
        """Decide what follows the attempt, then write the call (first outcome, or the end) and the state."""
        now = self.deps.clock()
        result, due, ended_why = self._next_step(attempt, now)
        entry = {"type": "post_call_push", **result.as_item()}
        if self.probe:
            entry["probe"] = True  # carried by its destination's probe: delivered, and not an attempt
        pending = [*self.state.unwritten, entry]
        write_call = due is None or not self.state.call_written
        call_written = False
        call_error: StorageError | None = None
        if write_call:
            try:
                self.deps.calls.write_outcome(
                    self.call_id, result.as_item(), pending, self._event(result, now), self._forced
                )
                call_written = True
            except StorageError as exc:
                call_error = exc
                log.error(
                    "writing the answered attempt to the call failed; the state keeps it",
                    extra={"call_id": self.call_id, "attempts": result.attempts, "error": str(exc)},
                )
        update = DeliveryUpdate(
            attempts=result.attempts,
            status="scheduled" if due is not None else "done",
            due=due,
            call_written=self.state.call_written or call_written,
            unwritten=() if call_written else tuple(pending),
            trigger=self.trigger,
            # A later attempt waits on its destination: its recovery brings it forward (contract §14).
            waits_on=attempt.gate_key if due is not None else None,
        )
        call_write = None
        if write_call and not call_written:
            call_write = CallWrite(result.as_item(), pending, self._event(result, now), self._forced)
        kind: PushOutcomeKind = "pushed"
        try:
            saved = self.deps.state.save(self.call_id, self.claim_id, update, now)
        except StorageError as exc:
            log.error("saving the delivery state failed", extra={"call_id": self.call_id, "error": str(exc)})
            self._defer(Record(self.call_id, self._bot.bot_id, self.claim_id, update, call_write), exc)
            kind = "record_deferred"  # the record message sends the wake-up once the state is saved
        else:
            if call_write is not None:
                # The state keeps the answer; if the queue cannot carry the call write either, the
                # trigger's retry finds it pending and writes it (never re-sends it).
                self._defer(Record(self.call_id, self._bot.bot_id, None, None, call_write), call_error)
            if not saved:
                kind = "claim_lost"
        self._log_recorded(result, ended_why, write_call, call_written, kind)
        if attempt.quota_until is not None and attempt.gate_key is not None:
            # The tenant's allowance is spent: every call of this (destination, scope) waits for its reset.
            self.deps.parking.spend_quota(attempt.gate_key, attempt.quota_until)
            arrange_chain(self.deps, attempt.gate_key, "release", attempt.quota_until, self._bot.bot_id)
        return PushOutcome(self.call_id, kind, result), due

    def _next_step(self, attempt: AttemptOutcome, now: datetime) -> tuple[PushResult, datetime | None, str]:
        result = attempt.result
        if attempt.quota_until is not None and self.deps.retry_queue is not None:
            # A spent quota is not a failing CRM: the next attempt goes at its reset, whatever the ladder says.
            due = whole_second_after(attempt.quota_until)
            return replace(result, next_attempt_at=iso_utc(due)), due, ""
        if not attempt.retryable:
            return result, None, ""
        nxt = next_attempt(
            result.attempts,
            schedule_for(self._bot.push.retry_schedule_seconds if self._bot.push else None),
            retry_after_seconds=_retry_after_seconds(attempt.retry_after, now),
            jitter=self.deps.jitter(),
        )
        reason = nxt.reason
        if nxt.delay_seconds is not None and self.deps.retry_queue is None:
            reason = "no retry queue is configured"
        if nxt.delay_seconds is None or self.deps.retry_queue is None:
            return replace(result, exhausted=True), None, reason
        due = whole_second_after(now + timedelta(seconds=nxt.delay_seconds))
        return replace(result, next_attempt_at=iso_utc(due)), due, ""

    def _hold(self, attempt: AttemptOutcome) -> PushOutcome:
        """A call its destination holds back (open circuit, spent quota, rate limit) waits, spending no attempt.

        A hold before the delivery's first outcome is that outcome (contract
        §10, §14): the call item says ``failed``, why, and when the next try
        goes. Held by a circuit or a quota, the call waits on its own ladder
        (one wake-up a step) and on its destination's chain, which releases it
        as soon as the destination recovers: nothing polls.
        """
        held = attempt.held
        assert held is not None
        if self.deps.retry_queue is None:
            # Nothing to wake it later (an operator's replay without a queue): change nothing.
            self.deps.state.release(self.call_id, self.claim_id)
            return self._outcome("held_no_queue", attempt.result)
        now = self.deps.clock()
        key = attempt.gate_key
        holds = self.state.holds
        if held.reason == "rate_limited" or key is None:
            until = held.until
            waits_on = None
        else:
            holds += 1
            until = max(self._hold_step(holds, now), self._spread(held.until))
            waits_on = key
            self._arrange(key, held)
        result = replace(attempt.result, next_attempt_at=iso_utc(until))
        write_call = held.reason != "rate_limited" and not self.state.call_written
        if write_call:
            self.deps.calls.write_outcome(
                self.call_id, result.as_item(), list(self.state.unwritten), self._event(result, now), False
            )
        update = DeliveryUpdate(
            attempts=self.state.attempts,
            status="scheduled",
            due=until,
            call_written=self.state.call_written or write_call,
            unwritten=() if write_call else self.state.unwritten,
            trigger=self.trigger,
            waits_on=waits_on,
            holds=holds,
        )
        self.deps.state.save(self.call_id, self.claim_id, update, now)
        self._wake_up(until, held.reason)
        log.info(
            "call held back",
            extra={"call_id": self.call_id, "reason": held.reason, "next_attempt_at": result.next_attempt_at},
        )
        return self._outcome("held_back", result)

    def _hold_before_reading(self, bot_id: str) -> PushOutcome | None:
        """A woken call whose destination still holds calls waits again without reading or rendering the call.

        Only a delivery whose first outcome is already on the call item: the
        state alone is moved on (to the call's next ladder step), and
        duplicated wake-ups collapse on its claim.
        """
        bot = self.deps.bots.get_bot(bot_id)
        key = gate_key_of(bot, self.deps) if bot is not None and bot.push is not None else None
        held = self._held(key) if key is not None else None
        if held is None or key is None:
            return None
        self.bot = bot
        refused = self._claim()
        if refused is not None:
            return refused
        if not self.state.call_written or self.deps.retry_queue is None:
            self.deps.state.release(self.call_id, self.claim_id)
            return None
        now = self.deps.clock()
        holds = self.state.holds + 1
        due = max(self._hold_step(holds, now), self._spread(held.until))
        self._arrange(key, held)
        update = DeliveryUpdate(
            self.state.attempts,
            "scheduled",
            due,
            self.state.call_written,
            self.state.unwritten,
            self.trigger,
            waits_on=key,
            holds=holds,
        )
        self.deps.state.save(self.call_id, self.claim_id, update, now)
        self._wake_up(due, held.reason)
        return self._outcome("held_back")

    def _held(self, key: GateKey) -> HeldBack | None:
        quota = self.deps.parking.quota_until(key)
        if quota is not None:
            return HeldBack("quota", quota)
        until = self.deps.gate.held_until(key)
        if until is None:
            # A probe is due: the destination's chain carries one call; a woken call does not race it.
            until = self.deps.parking.probing(key)
        return HeldBack("circuit_open", until) if until is not None else None

    def _arrange(self, key: GateKey, held: HeldBack) -> None:
        """Make sure the destination has its one chain: a probe of its circuit, or the release at its quota's reset."""
        action: Literal["probe", "release"] = "release" if held.reason == "quota" else "probe"
        arrange_chain(self.deps, key, action, held.until, self._bot.bot_id)

    def _hold_step(self, holds: int, now: datetime) -> datetime:
        """The n-th hold's own wake-up: the bot's ladder, step by step (the default one for a single-attempt bot)."""
        configured = self._bot.push.retry_schedule_seconds if self._bot.push else None
        ladder = schedule_for(configured) or DEFAULT_RETRY_SCHEDULE
        delay = ladder[min(holds, len(ladder)) - 1] * (1 - JITTER + 2 * JITTER * self.deps.jitter())
        return whole_second_after(now + timedelta(seconds=delay))

    def _spread(self, moment: datetime) -> datetime:
        return whole_second_after(moment + timedelta(seconds=self.deps.jitter() * HELD_WAKE_SPREAD_SECONDS))

    def _after_probe(self, attempt: AttemptOutcome) -> PushOutcome:
        """A probe carried this call (contract §14), not an attempt: success delivers it, the rest spends nothing."""
        if attempt.held is not None or attempt.deferred:
            self.deps.state.release(self.call_id, self.claim_id)
            return self._outcome("held_back")
        result = replace(attempt.result, attempts=self.state.attempts)
        if result.status == "ok":
            outcome, _ = self._record(replace(attempt, result=result, retryable=False))
            return outcome
        entry = {
            "type": "post_call_push_probe",
            **{k: v for k, v in result.as_item().items() if k not in ("attempts", "next_attempt_at", "exhausted")},
        }
        try:
            self.deps.calls.append_entries(self.call_id, [entry])
        finally:
            self.deps.state.release(self.call_id, self.claim_id)
        log.info(
            "probe failed: nothing spent",
            extra={"call_id": self.call_id, "http_status": result.http_status, "error_kind": result.error_kind},
        )
        return self._outcome("probe_failed", result)

    def _stop(self, kind: PushOutcomeKind, why: str) -> PushOutcome:
        """A call or bot no longer eligible: a delivery still scheduled ends visibly, anything else is left alone."""
        if not self.woken:
            return self._outcome(kind)
        refused = self._claim()
        if refused is not None:
            return refused
        if self.state.status != "scheduled":
            self.deps.state.release(self.call_id, self.claim_id)
            return self._outcome(kind)
        now = self.deps.clock()
        last = self._latest_result()
        error = f"delivery stopped after {self.state.attempts} attempt(s): {why}"
        if last.get("error"):
            error += f" (latest attempt: {last['error']})"
        result = {**last, "next_attempt_at": None, "pushed_at": iso_utc(now), "error": error}
        entries = [*self.state.unwritten, {"type": "post_call_push_stopped", "reason": why, "at": iso_utc(now)}]
        event = {"type": "post_call_push", "t": seconds_since_start(self.doc, now), "status": result.get("status")}
        self.deps.calls.write_outcome(self.call_id, result, entries, event, False)
        update = DeliveryUpdate(self.state.attempts, "done", None, True, (), self.trigger)
        self.deps.state.save(self.call_id, self.claim_id, update, now)
        log.warning("scheduled delivery stopped", extra={"call_id": self.call_id, "why": why})
        return self._outcome("stopped")

    def _latest_result(self) -> dict[str, Any]:
        if self.state.unwritten:
            latest = dict(self.state.unwritten[-1])
            latest.pop("type", None)
            return latest
        stored = self.doc.get(RESULT_ATTRIBUTE)
        return dict(stored) if isinstance(stored, Mapping) else {"status": "failed", "attempts": self.state.attempts}

    def _finish_pending_write(self, pending: tuple[dict[str, Any], ...], attempts: int) -> None:
        """Attempts the state holds that never reached the call item: write them now (contract §12)."""
        if not pending or not self.doc:
            return
        latest = dict(pending[-1])
        latest.pop("type", None)
        now = self.deps.clock()
        event = {"type": "post_call_push", "t": seconds_since_start(self.doc, now), "status": latest.get("status")}
        try:
            self.deps.calls.write_outcome(self.call_id, latest, list(pending), event, False)
            self.deps.state.mark_written(self.call_id, attempts)
        except StorageError as exc:
            log.warning("pending attempts still not written", extra={"call_id": self.call_id, "error": str(exc)})
            return
        log.info("pending attempts written to the call", extra={"call_id": self.call_id, "attempts": attempts})

    def _defer(self, record: Record, cause: StorageError | None) -> None:
        """Hand writes the tables refused to the retry queue; when that fails too, the trigger must be retried."""
        if self.deps.retry_queue is None:
            if cause is not None:
                raise cause
            return  # the state keeps the pending entries: the next trigger or attempt writes them
        try:
            self.deps.retry_queue.schedule(record_message(record), 0)
        except QueueError:
            if cause is not None:
                raise cause from None
            log.error("record message could not be queued; the state keeps the pending entries")

    # --- small parts ------------------------------------------------------------------------

    @property
    def _forced(self) -> bool:
        """An operator's replay pushes whatever the call and the state say (unless it asked not to force)."""
        return self.replay is not None and self.replay.force

    @property
    def _bot(self) -> BotConfig:
        assert self.bot is not None
        return self.bot

    def _outcome(self, kind: PushOutcomeKind, result: PushResult | None = None) -> PushOutcome:
        return PushOutcome(self.call_id, kind, result)

    def _event(self, result: PushResult, now: datetime) -> dict[str, Any]:
        return {"type": "post_call_push", "t": seconds_since_start(self.doc, now), "status": result.status}

    def _worth_waiting_for(self, due: datetime) -> bool:
        """A short wait is worth it for a blip, not for a destination whose circuit has just opened."""
        delay = _seconds(due, self.deps.clock())
        if delay > MAX_WAIT_IN_INVOCATION_SECONDS or not self._time_for_attempt(delay):
            return False
        key = gate_key_of(self._bot, self.deps)
        return key is None or self.deps.gate.held_until(key) is None

    def _time_for_attempt(self, after_seconds: float) -> bool:
        deadline = self.deps.deadline()
        return deadline is None or time.monotonic() + after_seconds + self.deps.attempt_seconds <= deadline

    def _wake_up(self, when: datetime, why: str) -> None:
        bot_id = self.bot.bot_id if self.bot else self.doc.get("bot_id")
        _wake_up(self.deps, self.call_id, bot_id if isinstance(bot_id, str) else None, when, why)

    def _log_recorded(
        self, result: PushResult, ended_why: str, write_call: bool, call_written: bool, kind: PushOutcomeKind
    ) -> None:
        log.info(
            "post-call push attempt recorded",
            extra={
                "call_id": self.call_id,
                "bot_id": self._bot.bot_id,
                "status": result.status,
                "http_status": result.http_status,
                "error_kind": result.error_kind,
                "attempts": result.attempts,
                "next_attempt_at": result.next_attempt_at,
                "exhausted": result.exhausted,
                "ended_why": ended_why or None,
                "duration_ms": result.duration_ms,
                "call_write_due": write_call,
                "call_written": call_written,
                "outcome": kind,
                "error": result.error,
            },
        )


def _wake_up(deps: PushDeps, call_id: str, bot_id: str | None, when: datetime, why: str) -> None:
    """Put a message on the retry queue that brings this call back to the handler at ``when``."""
    if deps.retry_queue is None:
        raise QueueError(f"call {call_id} needs the retry queue ({why}), and none is configured")
    deps.retry_queue.schedule(wake_up_message(call_id, bot_id, when), _seconds(when, deps.clock()))
    log.info("call scheduled", extra={"call_id": call_id, "due": iso_utc(when), "why": why})


def _seconds(later: datetime, now: datetime) -> float:
    return max(0.0, (later - now).total_seconds())


def _parse_due(text: Any) -> datetime | None:
    return parse_utc_timestamp(text) if isinstance(text, str) and text else None


def _retry_after_seconds(header: str | None, now: datetime) -> float | None:
    return parse_retry_after(header, now.timestamp())
