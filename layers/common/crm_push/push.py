"""The core's public face: what the handler, the operator CLI and scripts call.

The delivery itself reads top to bottom in ``flow.py`` (delivery) ->
``attempt.py`` (one attempt) -> ``request.py`` (building the request) ->
``ports.py`` (what crosses to the adapters). This module only names the
entry points, so callers need not know that layout.
"""

from __future__ import annotations

from crm_push.attempt import status_for
from crm_push.flow import apply_record, handle_retry_message, push_call
from crm_push.ports import (
    GateKey,
    HeldBack,
    PushDeps,
    PushOutcome,
    PushRequest,
    PushResult,
    Replay,
    SendOutcome,
    UnguardedGate,
)
from crm_push.push_url import parse_push_url
from crm_push.request import prepare_push

__all__ = [
    "GateKey",
    "HeldBack",
    "PushDeps",
    "PushOutcome",
    "PushRequest",
    "PushResult",
    "Replay",
    "SendOutcome",
    "UnguardedGate",
    "apply_record",
    "destination_of",
    "handle_retry_message",
    "prepare_push",
    "push_call",
    "redact_url",
    "status_for",
]


def destination_of(url: str) -> str:
    """The circuit's and rate limit's destination (scheme://host:port) of a url, from its one parse."""
    return parse_push_url(url).destination


def redact_url(url: str) -> str:
    """A url as results, logs and the CLI show it (no credentials)."""
    return parse_push_url(url).recorded
