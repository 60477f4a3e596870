"""Sending a push to a CRM over HTTP with urllib3: one attempt per ``send()``.

One attempt: read the request's url with the one parser (``push_url.py``),
check the destination (``destination.py``: every resolved address public
unless private networks are allowed), connect to the very address that was
checked (no second DNS lookup; when one address refuses the connection the
next checked one is tried, within the same attempt), send, and read at most
``MAX_BODY_BYTES`` of the answer, all within one wall-clock budget
(``ports.ATTEMPT_SECONDS``, or less when the Lambda's deadline is nearer):
the DNS lookup included, and the TCP connection taking at most 3 s of it.
3xx is never followed. Retrying is the core's job (contract §10), decided
from the returned SendOutcome's ``error_kind``, ``http_status`` and
``retry_after``.

How an attempt is classified (``error_kind``):

* 2xx: None. Any other status: ``http_status``, with the CRM's raw
  ``Retry-After`` passed on.
* Once the status line and headers have arrived, the status stands: a body
  that then stalls, is reset or ends early keeps what arrived (a 2xx stays
  ok, with a warning logged; a non-2xx gets a short note in ``error``).
* No answer: ``timeout`` when no complete status line and headers came back
  in time; ``connection`` when the connection could not be made or broke
  before an answer (refused, reset, closed without answering, a closed pool,
  an unreadable answer). A connect timeout is ``connection`` too: nothing of
  the request left us, which is what sets it apart from ``timeout``.
* ``dns`` (an attempt; also a lookup that outlasts the budget), ``tls``,
  ``destination_refused`` (the SSRF guard: nothing tried, ``attempts=0``),
  ``config`` (a url the one parser refuses: nothing tried), ``internal``
  (a bug of ours, or a request url still holding user info: nothing tried).

The answer's body comes back decoded but *not* cut to the stored length:
the core scrubs credentials from it first, then cuts (audit #8).

Credentials are the request's headers only: a url carrying user info is
refused (the core sends it as ``Authorization: Basic``, from
``PushUrl.basic_auth``), so there is one place that sets that header.

Nothing here raises: every failure is a SendOutcome whose short ``error``
never holds the URL's userinfo, path or query, nor any header value.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
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
    Resolver,
    resolve_destination,
    resolve_with_os,
)
from crm_push.errors import ConfigError
from crm_push.ports import ATTEMPT_SECONDS, ErrorKind, PushRequest, SendOutcome
from crm_push.push_url import parse_push_url

log = logging.getLogger(__name__)

# A TCP handshake takes one round trip (well under 0.5 s between continents), and a lost SYN
# is sent again after 1 s: a CRM that has not accepted the connection in 3 s is down or drowning,
# and would not answer within the 10 s anyway. Failing then frees the worker for the next call.
CONNECT_TIMEOUT_SECONDS = 3.0
# A valid Retry-After is at most 29 characters; a longer one is passed on cut, never whole.
_MAX_RETRY_AFTER_CHARS = 64
# How much of an answer's body is read (and handed to the core, which scrubs, then cuts to
# MAX_RESPONSE_BODY_CHARS). Far beyond the stored length on purpose: a credential echoed across
# this read limit is cut there unscrubbed, and only text within the first MAX_RESPONSE_BODY_CHARS
# (at most 4 bytes each in UTF-8, 8,000 bytes) is stored, so that prefix is stored only if the
# echoed credential is longer than 56 KiB. Reading stops here: a hostile server cannot make us hold more.
MAX_BODY_BYTES = 64 * 1024
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
    """How one attempt ended: an HTTP answer (``status``) or none (``error``)."""

    status: int | None
    body: str = ""
    error: str | None = None
    kind: ErrorKind | None = None
    retry_after: str | None = None
    tried: bool = True  # False when the guard refused the destination: the CRM was not tried
    next_address: bool = False  # the connection failed outright: another checked address may answer


class CrmHttpSender:
    """Makes one attempt per ``send()``; safe to share between threads (pools are per destination address).

    ``pool``: only its TLS trust settings (``ca_certs``, ``ssl_context``, ...)
    are used, for the per-address pools; certificate checks always stay on.
    ``total_timeout`` bounds the attempt, DNS lookup to last byte; ``connect_timeout``
    bounds the TCP connection within it. Tests shorten them, and give a
    ``resolve`` that stands in for the OS resolver.
    """

    def __init__(
        self,
        pool: urllib3.PoolManager | None = None,
        pool_size: int = 16,
        allow_private_networks: bool = False,
        *,
        total_timeout: float = ATTEMPT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        resolve: Resolver = resolve_with_os,
    ) -> None:
        inherited = pool.connection_pool_kw if pool is not None else {}
        self._tls_settings = {k: v for k, v in inherited.items() if k in _INHERITED_TLS_SETTINGS}
        self._pool_size = pool_size
        self._allow_private_networks = allow_private_networks
        self.total_timeout = total_timeout
        self.connect_timeout = connect_timeout
        self._resolve = resolve
        self._pools: OrderedDict[tuple[str, str, int, str], HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        """One attempt to deliver ``request``, ending by ``deadline`` (monotonic). Never raises.

        With no time left before ``deadline`` nothing is tried: ``attempts=0``
        and ``error_kind=None``, which the core takes as "reschedule".
        """
        started = time.monotonic()
        budget = self.total_timeout
        if deadline is not None:
            budget = min(budget, deadline - started)
            if budget <= 0:
                error = "not sent: no time left before the Lambda's deadline"
                return SendOutcome(None, "", error, attempts=0, duration_ms=0, error_kind=None)
        try:
            result = self._attempt(request, budget)
        except Exception as exc:  # a bug must still leave a readable record on the call
            # Whatever reaches the CRM is caught in _request, so this failed before the CRM was tried.
            log.error("CRM push send failed unexpectedly", extra={"error_class": type(exc).__name__})
            error = f"internal error while sending: {type(exc).__name__}"
            return SendOutcome(None, "", error, attempts=0, duration_ms=_ms_since(started), error_kind="internal")
        return SendOutcome(
            result.status,
            result.body,
            result.error,
            attempts=1 if result.tried else 0,
            duration_ms=_ms_since(started),
            error_kind=result.kind,
            retry_after=result.retry_after,
        )

    def _attempt(self, request: PushRequest, budget: float) -> _Try:
        """Read the url, check the destination, then try its addresses in turn until one connects."""
        attempt_deadline = time.monotonic() + budget
        try:
            url = parse_push_url(request.url)
        except ConfigError as exc:  # the core sends only urls it read the same way: a config fault all the same
            return _Try(None, error=str(exc), kind="config", tried=False)
        if url.basic_auth is not None:
            # The core turns user info into the Authorization header; sending it from here too would be a
            # second, competing source of that header.
            error = "internal error: the request url still carries user info (it belongs in the headers)"
            return _Try(None, error=error, kind="internal", tried=False)
        try:
            destination = resolve_destination(
                url,
                allow_private_networks=self._allow_private_networks,
                resolve=self._resolve,
                timeout=attempt_deadline - time.monotonic(),
            )
        except DestinationError as exc:
            # A DNS lookup is a try to reach the CRM; a refusal by the guard is not.
            return _Try(None, error=str(exc), kind=exc.error_kind, tried=exc.error_kind == "dns")
        headers = _headers_for(request, destination)
        result = _Try(None, error="no address to connect to", kind="dns")  # resolve_destination never gives none
        for address in destination.addresses:
            result = self._request(address, destination, request, headers, attempt_deadline, budget)
            # Only a connection that failed outright moves on to the next address (like any client).
            if not result.next_address or time.monotonic() >= attempt_deadline:
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
        connect_wait = min(self.connect_timeout, remaining)
        _current.deadline = attempt_deadline
        try:
            response = pool.urlopen(
                request.method,
                destination.url.target,
                body=request.body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=urllib3.Timeout(connect=connect_wait, read=remaining),
                preload_content=False,
                release_conn=False,
            )
        except Exception as exc:
            return _failure(exc, budget, connect_wait)
        finally:
            # The response keeps its own deadline: it was built inside urlopen.
            _current.deadline = None
        return _answer(response, attempt_deadline, budget)

    def _pool_for(self, destination: Destination, address: str) -> HTTPConnectionPool:
        """The pool for this checked address: connections are reused, and always go where we checked."""
        url = destination.url
        key = (url.scheme, address, url.port, url.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            common: dict[str, Any] = {"port": url.port, "maxsize": self._pool_size, "block": False}
            if url.scheme == "https":
                name = url.host.rstrip(".")
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
                # A send holding the evicted pool gets ClosedPoolError: nothing sent, a "connection" failure.
                self._pools.popitem(last=False)[1].close()
            return pool


def _headers_for(request: PushRequest, destination: Destination) -> dict[str, str]:
    # Host names the destination as read, though we connect to its address.
    headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
    headers["Host"] = destination.url.host_header
    return headers


def _answer(response: urllib3.BaseHTTPResponse, deadline: float, budget: float) -> _Try:
    """The CRM's answer, whose status stands whatever then happens to its body.

    The CRM has decided once it sends its status: a 2xx whose body stalls or
    is cut short still means it took the push, and calling that a failure
    would have the core send it again.
    """
    status = response.status
    body = bytearray()
    complete = False
    cut_short: str | None = None
    try:
        complete = _read_limited(response, body, MAX_BODY_BYTES, deadline)
    except Exception as exc:
        cut_short = _body_problem(exc, budget)
    finally:
        if not complete:
            response.close()  # never drain a body we will not store: it may be huge, endless or broken
        response.release_conn()
    if cut_short is not None:
        log.warning(
            "CRM answered %d but its body was incomplete (%s); the status stands",
            status,
            cut_short,
            extra={"http_status": status, "body_problem": cut_short},
        )
    text = body.decode("utf-8", errors="replace")  # not cut: the core scrubs, then cuts
    if 200 <= status < 300:
        return _Try(status, text)
    retry_after = response.headers.get("Retry-After")
    return _Try(
        status,
        text,
        error=None if cut_short is None else f"answer body incomplete: {cut_short}",
        kind="http_status",
        retry_after=None if retry_after is None else retry_after[:_MAX_RETRY_AFTER_CHARS],
    )


def _read_limited(response: urllib3.BaseHTTPResponse, body: bytearray, limit: int, deadline: float) -> bool:
    """Append the body to ``body`` up to ``limit`` bytes, by ``deadline``; whether that was all of it.

    Chunks land in ``body`` as they arrive, so a read that fails keeps what came before it.
    """
    while len(body) < limit:
        if time.monotonic() >= deadline:
            raise TimeoutError("the attempt's time ran out")
        chunk = response.read1(limit - len(body))
        if not chunk:
            return True
        body += chunk
    return False


def _body_problem(exc: Exception, budget: float) -> str:
    """Why an answer's body did not arrive whole, in a few credential-free words."""
    causes = _causes(exc)
    if any(isinstance(c, (ReadTimeoutError, TimeoutError)) for c in causes):
        return f"timed out after {budget:.1f}s"
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return "connection reset by the CRM"
    if any(isinstance(c, http.client.IncompleteRead) for c in causes):  # urllib3's IncompleteRead subclasses it
        return "connection closed mid-body"
    return f"{type(causes[-1]).__name__} while reading it"


def _failure(exc: Exception, budget: float, connect_wait: float) -> _Try:
    """An exception raised before the CRM's status and headers arrived, classified, short and credential-free.

    Whether to try again is the core's call (contract §10). ``next_address``
    is set only when no connection was made, so nothing was sent.
    """
    causes = _causes(exc)
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: it is a subclass
        return _Try(None, error=f"could not connect: {_os_reason(causes)}", kind="connection", next_address=True)
    if isinstance(exc, ConnectTimeoutError):
        return _Try(None, error=f"could not connect: timed out after {connect_wait:.1f}s", kind="connection")
    if isinstance(exc, ClosedPoolError):
        return _Try(None, error="connection pool closed before sending", kind="connection")
    if isinstance(exc, SSLError) or any(isinstance(c, ssl.SSLError) for c in causes):
        return _Try(None, error=f"TLS failed: {_tls_reason(causes)}", kind="tls")
    # Also a send that timed out: urllib3 reports it as a ProtocolError around the socket's TimeoutError.
    if any(isinstance(c, (ReadTimeoutError, TimeoutError)) for c in causes):
        return _Try(None, error=f"timed out after {budget:.1f}s without a complete answer", kind="timeout")
    if isinstance(exc, ProtocolError):
        return _Try(None, error=_broken_reason(causes), kind="connection")
    if isinstance(exc, HTTPError):  # urllib3 could not make sense of what came back
        return _Try(None, error=f"HTTP error: {type(exc).__name__}", kind="connection")
    log.error("CRM push attempt failed unexpectedly", extra={"error_class": type(exc).__name__})
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
            return "connection reset by the CRM before it answered"
        if isinstance(cause, BrokenPipeError):
            return "the CRM closed the connection while the request was being sent"
    return f"connection broken ({type(causes[-1]).__name__})"


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
