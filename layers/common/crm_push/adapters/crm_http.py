"""Sending a push to a CRM over HTTP with urllib3.

One PoolManager per container (connections reused across invocations), a
10 s total timeout, no redirects, and a response read only as far as we store.
Nothing here raises: every failure is a SendOutcome with an ``error`` that
names the cause but never the URL's credentials.
"""

from __future__ import annotations

import time

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from crm_push.push import MAX_RESPONSE_BODY_CHARS, PushRequest, SendOutcome

TOTAL_TIMEOUT_SECONDS = 10.0
# UTF-8 needs at most 4 bytes a character: this is enough to fill the stored body.
_MAX_BODY_BYTES = MAX_RESPONSE_BODY_CHARS * 4


class CrmHttpSender:
    def __init__(
        self, pool: urllib3.PoolManager | None = None, pool_size: int = 16, allow_private_networks: bool = False
    ) -> None:
        self._allow_private_networks = allow_private_networks
        self._pool = pool or urllib3.PoolManager(num_pools=64, maxsize=pool_size, block=False, retries=False)

    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        started = time.monotonic()
        timeout = TOTAL_TIMEOUT_SECONDS
        if deadline is not None:
            timeout = max(0.1, min(timeout, deadline - started))
        try:
            response = self._pool.request(
                request.method,
                request.url,
                body=request.body,
                headers=request.headers,
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                redirect=False,
                preload_content=False,
            )
            try:
                raw = response.read(_MAX_BODY_BYTES)
            finally:
                # Reuse the connection only when the body was read to its end; never drain a huge one.
                if response.length_remaining == 0:
                    response.release_conn()
                else:
                    response.close()
            body = raw.decode("utf-8", errors="replace")[:MAX_RESPONSE_BODY_CHARS]
            return SendOutcome(response.status, body, None, 1, _ms_since(started))
        except (ReadTimeoutError, Urllib3Timeout):
            return SendOutcome(None, "", f"timed out after {timeout:.1f}s", 1, _ms_since(started))
        except (NewConnectionError, MaxRetryError) as exc:
            return SendOutcome(None, "", f"connection failed: {_cause(exc)}", 1, _ms_since(started))
        except SSLError as exc:
            return SendOutcome(None, "", f"TLS failed: {_cause(exc)}", 1, _ms_since(started))
        except ProtocolError as exc:
            return SendOutcome(None, "", f"connection broken: {_cause(exc)}", 1, _ms_since(started))
        except HTTPError as exc:
            return SendOutcome(None, "", f"HTTP error: {type(exc).__name__}", 1, _ms_since(started))


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _cause(exc: BaseException) -> str:
    """The root cause's type and message, with no URL (it may carry credentials)."""
    root: BaseException = exc
    while getattr(root, "reason", None) is not None and isinstance(root.reason, BaseException):  # type: ignore[attr-defined]
        root = root.reason  # type: ignore[attr-defined]
    while root.__cause__ is not None:
        root = root.__cause__
    message = str(root)
    if "://" in message:
        message = ""
    return f"{type(root).__name__}{': ' + message[:200] if message else ''}"
