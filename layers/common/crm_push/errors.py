"""The service's own errors: each says what went wrong in words an operator can act on."""

from __future__ import annotations


class PushError(Exception):
    """Base of every error the push raises on purpose."""


class ConfigError(PushError, ValueError):
    """The bot's ``post_call_push`` config cannot be used (recorded as ``failed``).

    A ValueError too, so pydantic validators report it as a field error.
    """


class PayloadTooLarge(ConfigError):
    """The rendered payload is over the size limit: never sent (``error_kind`` ``payload_too_large``)."""


class CallNotFound(PushError):
    """No call item with that id."""


class AlreadyPushed(PushError):
    """The call already has a push result: redelivery or a lost race, nothing to do."""


class ClaimHeld(PushError):
    """Another invocation holds a live claim on the call; retry after its lease (epoch ``until``)."""

    def __init__(self, message: str, until: int | None = None) -> None:
        super().__init__(message)
        self.until = until


class NotDue(PushError):
    """The call's next attempt is scheduled for later (epoch ``due``): attempting now would knock early.

    ``scheduled_by`` names the trigger whose attempt wrote that schedule.
    """

    def __init__(self, message: str, due: int, scheduled_by: str | None = None) -> None:
        super().__init__(message)
        self.due = due
        self.scheduled_by = scheduled_by


class ResultsNotStored(PushError):
    """The call item has no ``results_stored_at`` yet: an early event, to retry or leave to the stream."""


class StorageError(PushError):
    """DynamoDB or S3 failed in a way a retry may fix."""


class QueueError(PushError):
    """The retry queue refused a message; the trigger must be retried so nothing is lost."""
