"""The service's own errors: each says what went wrong in words an operator can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crm_push.ports import ErrorKind


class PushError(Exception):
    """Base of every error the push raises on purpose."""


class ConfigError(PushError, ValueError):
    """The bot's ``post_call_push`` config cannot be used (recorded as ``failed``).

    A ValueError too, so pydantic validators report it as a field error.
    """


class PayloadTooLarge(ConfigError):
    """The rendered payload is over the size limit: never sent (``error_kind`` ``payload_too_large``)."""


class AlreadyPushed(PushError):
    """The call's delivery has ended: redelivery or a lost race, nothing to send.

    ``pending`` holds attempt entries the state kept that never reached the
    call item (its write failed and nothing carried it): the refused trigger
    writes them (``attempts`` is the state's count).
    """

    def __init__(self, message: str, pending: tuple[dict[str, Any], ...] = (), attempts: int = 0) -> None:
        super().__init__(message)
        self.pending = pending
        self.attempts = attempts


class ClaimHeld(PushError):
    """Another invocation holds a live claim on the call; retry after its lease (epoch ``until``)."""

    def __init__(self, message: str, until: int | None = None) -> None:
        super().__init__(message)
        self.until = until


class NotDue(PushError):
    """The call's next attempt is scheduled for later (epoch ``due``): attempting now would knock early.

    ``scheduled_by`` names the trigger whose attempt wrote that schedule.
    """

    def __init__(
        self,
        message: str,
        due: int,
        scheduled_by: str | None = None,
        pending: tuple[dict[str, Any], ...] = (),
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.due = due
        self.scheduled_by = scheduled_by
        self.pending = pending  # as AlreadyPushed's: a first outcome the call item never got
        self.attempts = attempts


class ResultsNotStored(PushError):
    """The call item has no ``results_stored_at`` yet: an early event, to retry or leave to the stream."""


class StorageError(PushError):
    """DynamoDB or S3 failed in a way a retry may fix."""


class QueueError(PushError):
    """The retry queue refused a message; the trigger must be retried so nothing is lost."""


class AuthFailed(PushError):
    """No access token could be had for an auth config.

    ``error_kind`` is ``auth`` for the token endpoint's own failures
    (``transient`` when it did not answer, or answered 408, 429 or 5xx), and
    ``config`` / ``destination_refused`` when the token url itself is not
    usable (final). ``error_code`` is the endpoint's ``error`` (``invalid_grant``
    ...) when it gave one. The message names the endpoint's origin, the HTTP
    status and that code, never a credential and never the endpoint's
    ``error_description`` (servers echo what they were sent).
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        error_code: str | None = None,
        http_status: int | None = None,
        error_kind: ErrorKind = "auth",
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.error_code = error_code
        self.http_status = http_status
        self.error_kind: ErrorKind = error_kind
