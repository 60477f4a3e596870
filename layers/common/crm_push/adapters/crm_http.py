"""Sending a push to a CRM over HTTP with urllib3.

One attempt: check the destination (``destination.py``: http/https only, and
every resolved address public unless private networks are allowed), connect
to the very address that was checked (no second DNS lookup), send, and read
the answer only as far as we store it, all within one wall-clock budget
(10 s, or less when the Lambda's deadline is nearer). 3xx is never followed.

At most 3 attempts (``retry_delay``): 429/502/503/504, and failures before
the request left us (DNS, refused, connect timeout). Never after it was sent
(see ``_failure``). ``attempts`` counts tries to reach the CRM, a failed DNS
lookup included; a destination the guard refuses is not a try, so a push
refused outright reports ``attempts=0``.

Nothing here raises: every failure is a SendOutcome whose short ``error``
never holds the URL's userinfo or query, nor any header value.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import logging
import random
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from crm_push.adapters.destination import (
    Destination,
    DestinationError,
    UnresolvableHost,
    resolve_destination,
)
from crm_push.push import MAX_RESPONSE_BODY_CHARS, PushRequest, SendOutcome

log = logging.getLogger(__name__)

TOTAL_TIMEOUT_SECONDS = 10.0
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# UTF-8 needs at most 4 bytes a character: this is enough to fill the stored body.
_MAX_BODY_BYTES = MAX_RESPONSE_BODY_CHARS * 4
_MAX_POOLS = 64  # one per (scheme, address, port, host); the least recently used is closed beyond this
# Settings a caller's PoolManager may pass on to our HTTPS pools (which CAs to trust, client certs).
_INHERITED_TLS_SETTINGS = (
    "ca_certs",
    "ca_cert_dir",
    "ca_cert_data",
    "ssl_context",
    "ssl_minimum_version",
    "ssl_maximum_version",
    "cert_file",
    "key_file",
    "key_password",
)


class _NoUrlsFromUrllib3(logging.Filter):
    """Keeps URLs out of the logs: urllib3 logs the request line, query string included, at DEBUG.

    A GET push carries its whole payload, and often an API key, in that query
    string. So urllib3's DEBUG records are dropped, and its few warnings (some
    name the URL) keep only their level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        record.msg, record.args = "urllib3 reported a problem (details withheld: they may hold the URL)", ()
        return True


for _name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.response", "urllib3.util.retry"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _NoUrlsFromUrllib3) for f in _logger.filters):
        _logger.addFilter(_NoUrlsFromUrllib3())


# --- retry policy (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_seconds: float = 0.2  # backoff before the 2nd attempt; doubled each time after
    cap_seconds: float = 2.0
    retry_after_cap_seconds: float = 5.0  # a CRM asking for a longer wait is not retried at all
    min_attempt_seconds: float = 0.5  # no retry unless this much time is left after the sleep


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None if absent or unreadable.

    ``now`` is the wall-clock time (``time.time()``) an HTTP-date is measured from.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retry_delay(
    attempts_made: int,
    retry_after: float | None,
    *,
    now: float,
    deadline: float | None,
    policy: RetryPolicy = RetryPolicy(),
    jitter: float = 0.5,
) -> float | None:
    """Seconds to sleep before the next attempt, or None to stop trying.

    Exponential backoff (``base * 2**(n-1)``, capped) scaled by a jitter in
    [0.5, 1) so that pushes failing together do not retry together; a CRM's
    ``Retry-After`` replaces the backoff. Stops after ``max_attempts``, when
    Retry-After exceeds its cap, or when the sleep plus a useful attempt would
    pass ``deadline`` (monotonic, like ``now``). ``jitter`` is a random number
    in [0, 1) from the caller, so this stays a pure function.
    """
    if attempts_made >= policy.max_attempts:
        return None
    if retry_after is not None:
        if retry_after > policy.retry_after_cap_seconds:
            return None
        delay = retry_after
    else:
        backoff = min(policy.cap_seconds, policy.base_seconds * 2 ** max(0, attempts_made - 1))
        delay = backoff * (0.5 + jitter / 2)
    if deadline is not None and now + delay + policy.min_attempt_seconds > deadline:
        return None
    return delay


# --- a wall-clock bound on reading the answer ------------------------------------------

_current = threading.local()  # .deadline: the monotonic instant this thread's attempt must end by


class _DeadlineReader(io.RawIOBase):
    """Reads a socket so that the whole read stops at a wall-clock deadline.

    urllib3's timeouts bound each socket operation, so a server dripping a
    byte a second would hold us forever; here every ``recv`` may wait only the
    time left, which bounds the status line, the headers and the body together.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the attempt's time ran out")
        self._sock.settimeout(remaining)
        return self._raw.readinto(buffer)

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _BoundedResponse(http.client.HTTPResponse):
    """http.client's response, reading through a _DeadlineReader while an attempt runs on this thread."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _HTTPConnection(HTTPConnection):
    response_class = _BoundedResponse


class _HTTPSConnection(HTTPSConnection):
    response_class = _BoundedResponse


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


# --- the sender ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Try:
    """One attempt: an HTTP answer (``status``) or none (``error``)."""

    status: int | None
    body: str = ""
    error: str | None = None
    retryable: bool = False
    retry_after: str | None = None
    counted: bool = True  # False when the destination was refused: nothing was tried
    kind: str = ""  # for the retry log line: "http_503", "connect_failed", ... never the URL


class CrmHttpSender:
    """Sends one push per ``send()``; safe to share between threads (pools are per destination address).

    ``pool``: only its TLS trust settings (``ca_certs``, ``ssl_context``, ...)
    are used, for the per-address pools; certificate checks always stay on.
    ``total_timeout`` bounds each attempt, connect to last byte; tests shorten it.
    """

    def __init__(
        self,
        pool: urllib3.PoolManager | None = None,
        pool_size: int = 16,
        allow_private_networks: bool = False,
        *,
        total_timeout: float = TOTAL_TIMEOUT_SECONDS,
        retry_policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        inherited = pool.connection_pool_kw if pool is not None else {}
        self._tls_settings = {k: v for k, v in inherited.items() if k in _INHERITED_TLS_SETTINGS}
        self._pool_size = pool_size
        self._allow_private_networks = allow_private_networks
        self.total_timeout = total_timeout
        self.retry_policy = retry_policy
        self._pools: OrderedDict[tuple[str, str, int, str], HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        """Send ``request``, retrying transient failures; stop by ``deadline`` (monotonic). Never raises."""
        started = time.monotonic()
        attempts = 0
        try:
            while True:
                budget = self.total_timeout
                if deadline is not None:
                    budget = min(budget, deadline - time.monotonic())
                    if budget <= 0:
                        error = "not sent: no time left before the Lambda's deadline"
                        return SendOutcome(None, "", error, attempts, _ms_since(started))
                result = self._attempt(request, budget)
                if result.counted:
                    attempts += 1
                delay = None
                if result.retryable:
                    retry_after = parse_retry_after(result.retry_after, time.time())
                    jitter = random.random()  # noqa: S311 - spreading retries out, not security
                    delay = retry_delay(
                        attempts,
                        retry_after,
                        now=time.monotonic(),
                        deadline=deadline,
                        policy=self.retry_policy,
                        jitter=jitter,
                    )
                if delay is None:
                    return SendOutcome(result.status, result.body, result.error, attempts, _ms_since(started))
                log.info(
                    "CRM push attempt %d: %s; retrying in %.2fs",
                    attempts,
                    result.kind,
                    delay,
                    extra={"attempt": attempts, "outcome": result.kind, "sleep_seconds": round(delay, 3)},
                )
                time.sleep(delay)
        except Exception as exc:  # a bug must still leave a readable record on the call
            log.error("CRM push send failed unexpectedly", extra={"error_class": type(exc).__name__})
            error = f"internal error while sending: {type(exc).__name__}"
            return SendOutcome(None, "", error, attempts, _ms_since(started))

    def _attempt(self, request: PushRequest, budget: float) -> _Try:
        """Check the destination, then try its addresses in turn until one connects."""
        attempt_deadline = time.monotonic() + budget
        try:
            destination = resolve_destination(request.url, allow_private_networks=self._allow_private_networks)
        except DestinationError as exc:
            dns = isinstance(exc, UnresolvableHost)
            return _Try(None, error=str(exc), retryable=exc.retryable, counted=dns, kind="dns" if dns else "refused")
        headers = _headers_for(request, destination)
        result = _Try(None, error="no address to connect to")
        for address in destination.addresses:
            result = self._request(address, destination, request, headers, attempt_deadline, budget)
            # Only a connection that failed outright moves on to the next address (like any client).
            if result.kind != "connect_failed" or time.monotonic() >= attempt_deadline:
                break
        return result

    def _request(
        self,
        address: str,
        destination: Destination,
        request: PushRequest,
        headers: dict[str, str],
        attempt_deadline: float,
        budget: float,
    ) -> _Try:
        pool = self._pool_for(destination, address)
        remaining = max(0.001, attempt_deadline - time.monotonic())
        _current.deadline = attempt_deadline
        try:
            response = pool.urlopen(
                request.method,
                destination.target,
                body=request.body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=urllib3.Timeout(connect=remaining, read=remaining),
                preload_content=False,
                release_conn=False,
            )
            complete = False
            try:
                raw, complete = _read_limited(response, _MAX_BODY_BYTES, attempt_deadline)
            finally:
                if not complete:
                    response.close()  # never drain a body we will not store: it may be huge or endless
                response.release_conn()
        except Exception as exc:
            return _failure(exc, budget)
        finally:
            _current.deadline = None
        status = response.status
        return _Try(
            status,
            raw.decode("utf-8", errors="replace")[:MAX_RESPONSE_BODY_CHARS],
            retryable=status in RETRYABLE_STATUSES,
            retry_after=response.headers.get("Retry-After"),
            kind=f"http_{status}",
        )

    def _pool_for(self, destination: Destination, address: str) -> HTTPConnectionPool:
        """The pool for this checked address: connections are reused, and always go where we checked."""
        key = (destination.scheme, address, destination.port, destination.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            common: dict[str, Any] = {"port": destination.port, "maxsize": self._pool_size, "block": False}
            if destination.scheme == "https":
                name = destination.host.rstrip(".")
                # SNI and the certificate check use the name, while the socket goes to the checked address.
                pool = _HTTPSPool(
                    address,
                    server_hostname=name,
                    assert_hostname=name,
                    cert_reqs="CERT_REQUIRED",
                    **common,
                    **self._tls_settings,
                )
            else:
                pool = _HTTPPool(address, **common)
            self._pools[key] = pool
            if len(self._pools) > _MAX_POOLS:
                # A send holding the evicted pool gets ClosedPoolError: nothing sent, so it is retried.
                self._pools.popitem(last=False)[1].close()
            return pool


def _headers_for(request: PushRequest, destination: Destination) -> dict[str, str]:
    # Host names the destination as written, though we connect to its address.
    headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
    headers["Host"] = destination.host_header
    basic = destination.basic_auth()
    if basic and not any(name.lower() == "authorization" for name in headers):
        headers["Authorization"] = basic
    return headers


def _read_limited(response: urllib3.BaseHTTPResponse, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, in chunks, by ``deadline``; and whether that was all of it."""
    body = bytearray()
    while len(body) < limit:
        if time.monotonic() >= deadline:
            raise TimeoutError("the attempt's time ran out")
        chunk = response.read1(limit - len(body))
        if not chunk:
            return bytes(body), True
        body += chunk
    return bytes(body), False


def _failure(exc: Exception, budget: float) -> _Try:
    """An exception as a short, credential-free error, and whether to try again.

    Retried: failures before any of the request left us (could not connect,
    connect timeout, DNS, see ``_attempt``). Not retried: everything after the
    request was sent (read timeout, reset or close mid-answer): the CRM may
    already have acted on it, and a POST is not safe to repeat unless the CRM
    honours Idempotency-Key, which we cannot know. TLS failures are not
    retried either: a bad certificate does not fix itself in a second.
    """
    causes = _causes(exc)
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: it is a subclass
        return _Try(None, error=f"could not connect: {_os_reason(causes)}", retryable=True, kind="connect_failed")
    if isinstance(exc, ConnectTimeoutError):
        return _Try(
            None, error=f"could not connect: timed out after {budget:.1f}s", retryable=True, kind="connect_timeout"
        )
    if isinstance(exc, ClosedPoolError):
        return _Try(None, error="connection pool closed before sending", retryable=True, kind="pool_closed")
    if isinstance(exc, SSLError) or any(isinstance(c, ssl.SSLError) for c in causes):
        return _Try(None, error=f"TLS failed: {_tls_reason(causes)}", kind="tls")
    if isinstance(exc, (ReadTimeoutError, TimeoutError)):
        return _Try(None, error=f"timed out after {budget:.1f}s without a complete answer", kind="read_timeout")
    if isinstance(exc, ProtocolError):
        return _Try(None, error=_broken_reason(causes), kind="connection_broken")
    if isinstance(exc, HTTPError):
        return _Try(None, error=f"HTTP error: {type(exc).__name__}", kind=type(exc).__name__)
    return _Try(None, error=f"internal error while sending: {type(exc).__name__}", kind="internal")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (``__cause__``, urllib3's ``reason`` and exception args), outermost first."""
    chain: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending and len(chain) < 10:
        current = pending.pop(0)
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        reason = getattr(current, "reason", None)
        wrapped = [current.__cause__, reason, *current.args]
        pending.extend(e for e in wrapped if isinstance(e, BaseException))
    return chain


def _os_reason(causes: list[BaseException]) -> str:
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and not isinstance(cause, HTTPError) and cause.strerror:
            return cause.strerror[:100]  # the system's message ("Network is unreachable"): no URL in it
    return type(causes[-1]).__name__


def _tls_reason(causes: list[BaseException]) -> str:
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            return f"certificate verify failed ({cause.verify_message[:150]})"
        if type(cause).__name__ == "CertificateError":  # urllib3's own hostname check
            return f"certificate does not match the host ({str(cause)[:150]})"
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            return (cause.reason or type(cause).__name__)[:150]
    return "handshake failed"


def _broken_reason(causes: list[BaseException]) -> str:
    for cause in causes:
        if isinstance(cause, http.client.RemoteDisconnected):
            return "the CRM closed the connection without answering"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the CRM before the answer was complete"
        if isinstance(cause, http.client.IncompleteRead):
            return "the CRM's answer ended early (connection closed mid-body)"
        if isinstance(cause, BrokenPipeError):
            return "the CRM closed the connection while the request was being sent"
    return f"connection broken ({type(causes[-1]).__name__})"


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
