"""The service's own errors: each says what went wrong in words an operator can act on."""

from __future__ import annotations


class PushError(Exception):
    """Base of every error the push raises on purpose."""


class ConfigError(PushError, ValueError):
    """The bot's ``post_call_push`` config cannot be used (recorded as ``failed``).

    A ValueError too, so pydantic validators report it as a field error.
    """


class CallNotFound(PushError):
    """No call item with that id."""


class AlreadyPushed(PushError):
    """The call already has a push result: redelivery or a lost race, nothing to do."""


class ClaimHeld(PushError):
    """Another invocation holds a live claim on the call; retry after its lease."""


class StorageError(PushError):
    """DynamoDB or S3 failed in a way a retry may fix."""
