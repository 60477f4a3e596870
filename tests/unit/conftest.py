"""The unit tier runs with the network switched off (pytest-socket).

A unit test that opens a socket or asks DNS is an integration test in
disguise: it belongs in tests/integration, where the real parts run. Blocking
both here makes that mistake fail loudly instead of passing slowly, or
flakily when the machine's resolver is slow or absent.

Name resolution stays for what never leaves the process: numeric spellings
of an address (the SSRF guard's tests feed ``0x7f.1`` and ``2130706433`` to
the OS parser on purpose) and ``localhost``, which RFC 6761 fixes to the
loopback addresses. Any other name raises, as a socket would.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_socket import SocketBlockedError, _true_getaddrinfo, disable_socket, enable_socket

_LOOPBACK = ("127.0.0.1", "::1")


def _is_localhost(name: str) -> bool:
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _resolve_without_dns(
    host: bytes | str | None,
    port: bytes | str | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[Any]:
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if name is not None and _is_localhost(name):
        answers: list[Any] = []
        for address in _LOOPBACK:
            try:
                answers += _true_getaddrinfo(address, port, family, type, proto, flags | socket.AI_NUMERICHOST)
            except socket.gaierror:  # the other family than the one asked for
                continue
        if answers:
            return answers
    try:
        # AI_NUMERICHOST: the C library parses the spelling itself and never asks a resolver.
        result: list[Any] = _true_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise SocketBlockedError(f"A unit test tried to resolve the host name {str(name)[:60]!r} (DNS).") from None
    return result


@pytest.fixture(autouse=True)
def _network_blocked() -> Iterator[None]:
    disable_socket(allow_unix_socket=False)
    socket.getaddrinfo = _resolve_without_dns
    try:
        yield
    finally:
        enable_socket()
        socket.getaddrinfo = _true_getaddrinfo


# --- the sample call and bot of events/, fresh for each test ---------------------------------

EVENTS = Path(__file__).resolve().parents[2] / "events"


@pytest.fixture
def call() -> dict[str, Any]:
    """events/sample_call.json as plain JSON (numbers as int/float)."""
    item: dict[str, Any] = json.loads((EVENTS / "sample_call.json").read_text())
    return item


@pytest.fixture
def bot() -> dict[str, Any]:
    """events/sample_bot.json as plain JSON."""
    item: dict[str, Any] = json.loads((EVENTS / "sample_bot.json").read_text())
    return item
