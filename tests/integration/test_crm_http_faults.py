"""CrmHttpSender against real local servers: every fault ends in the right outcome, in bounded time.

Well-behaved answers come from scripts/local_crm.py; misbehaviour (silence,
drips, resets, endless bodies, TLS) from small raw-socket servers below.
Timeouts use a 0.5 s budget and retries a tiny backoff, so the file runs fast.
"""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import urllib3

from crm_push.adapters import crm_http
from crm_push.adapters.crm_http import (
    TOTAL_TIMEOUT_SECONDS,
    CrmHttpSender,
    RetryPolicy,
    parse_retry_after,
    retry_delay,
)
from crm_push.push import PushRequest, SendOutcome, status_for
from scripts.local_crm import CrmAnswer, LocalCrm, ReceivedRequest

FAST_RETRIES = RetryPolicy(base_seconds=0.01, cap_seconds=0.02)
QUICK_TIMEOUT = 0.5
IDEMPOTENCY_KEY = "call-7f3a"


def make_sender(**kwargs: Any) -> CrmHttpSender:
    kwargs.setdefault("allow_private_networks", True)
    kwargs.setdefault("total_timeout", QUICK_TIMEOUT)
    kwargs.setdefault("retry_policy", FAST_RETRIES)
    return CrmHttpSender(**kwargs)


def push_request(url: str, *, method: str = "POST", headers: dict[str, str] | None = None) -> PushRequest:
    all_headers = {"User-Agent": "post-call-push/1.0", "Idempotency-Key": IDEMPOTENCY_KEY}
    if method == "POST":
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    body = b'{"customer":"Asha"}' if method == "POST" else None
    return PushRequest(IDEMPOTENCY_KEY, method, url, all_headers, body, url)  # type: ignore[arg-type]


def timed_send(sender: CrmHttpSender, request: PushRequest, deadline: float | None = None) -> tuple[SendOutcome, float]:
    started = time.monotonic()
    outcome = sender.send(request, deadline)
    return outcome, time.monotonic() - started


# --- a raw-socket server for misbehaviour ------------------------------------------------


class RawServer:
    """Each connection goes to ``handle(conn, server)`` on its own thread; the server counts what it saw."""

    def __init__(self, handle: Callable[[socket.socket, RawServer], None], tls: ssl.SSLContext | None = None) -> None:
        self.handle, self.tls = handle, tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.bytes_sent = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> RawServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handle(conn, self)
        except OSError:  # the client went away (or failed TLS): that is what these tests provoke
            pass
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        with self._lock:
            self.requests.append(head)
        return head

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self._lock:
            self.bytes_sent += len(data)

    def drip(self, conn: socket.socket, byte: bytes, every: float) -> None:
        while not self.stopped.wait(every):
            self.send(conn, byte)


def silent(conn: socket.socket, server: RawServer) -> None:
    server.read_request(conn)
    server.stopped.wait(5)


def closes_without_answering(conn: socket.socket, server: RawServer) -> None:
    server.read_request(conn)


def resets_mid_body(conn: socket.socket, server: RawServer) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    time.sleep(0.05)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close -> RST


def drips_headers(conn: socket.socket, server: RawServer) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nX-Slow: ")
    server.drip(conn, b"a", 0.02)


def drips_body(conn: socket.socket, server: RawServer) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    server.drip(conn, b"a", 0.02)


def huge_body(chunked: bool) -> Callable[[socket.socket, RawServer], None]:
    def handle(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        total, piece = 50 * 1024 * 1024, b"x" * 65536
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
        server.send(conn, b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n")
        for _ in range(total // len(piece)):
            server.send(conn, b"10000\r\n" + piece + b"\r\n" if chunked else piece)
        if chunked:
            server.send(conn, b"0\r\n\r\n")

    return handle


def keep_alive_ok(conn: socket.socket, server: RawServer) -> None:
    while True:
        server.read_request(conn)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@pytest.fixture
def crm_answers() -> Iterator[tuple[LocalCrm, list[CrmAnswer]]]:
    """A LocalCrm that answers from a script (the last answer repeats)."""
    script: list[CrmAnswer] = []

    def responder(_request: ReceivedRequest) -> CrmAnswer:
        return script.pop(0) if len(script) > 1 else script[0]

    with LocalCrm(responder) as crm:
        yield crm, script


# --- the retry policy (pure) ---------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10)
    assert retry_delay(1, None, now=0, deadline=None, policy=policy, jitter=0.0) == pytest.approx(0.1)
    assert retry_delay(1, None, now=0, deadline=None, policy=policy, jitter=0.999) == pytest.approx(0.2, abs=1e-3)
    assert retry_delay(2, None, now=0, deadline=None, policy=policy, jitter=0.0) == pytest.approx(0.2)
    assert retry_delay(3, None, now=0, deadline=None, policy=policy, jitter=0.0) == pytest.approx(0.4)
    assert retry_delay(8, None, now=0, deadline=None, policy=policy, jitter=0.999) == pytest.approx(2.0, abs=1e-2)


def test_at_most_three_attempts() -> None:
    assert retry_delay(1, None, now=0, deadline=None) is not None
    assert retry_delay(2, None, now=0, deadline=None) is not None
    assert retry_delay(3, None, now=0, deadline=None) is None


def test_retry_after_replaces_backoff_up_to_its_cap() -> None:
    assert retry_delay(1, 3.0, now=0, deadline=None) == 3.0
    assert retry_delay(1, 0.0, now=0, deadline=None) == 0.0
    assert retry_delay(1, 5.0, now=0, deadline=None) == 5.0
    assert retry_delay(1, 6.0, now=0, deadline=None) is None  # a longer wait than we can afford: give up


def test_never_sleeps_or_sends_past_the_deadline() -> None:
    # 0.2 s of sleep plus a useful 0.5 s attempt must fit before the deadline.
    assert retry_delay(1, 0.2, now=100.0, deadline=100.71) == 0.2
    assert retry_delay(1, 0.2, now=100.0, deadline=100.69) is None
    assert retry_delay(1, 3.0, now=100.0, deadline=102.0) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("120", 120.0),
        ("Wed, 21 Oct 2015 07:28:04 GMT", 4.0),  # HTTP-date, 4 s after "now"
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
        ("Wed, 21 Oct 2015 07:28:02 -0000", 2.0),
        (None, None),
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("\u0663", None),  # a non-ASCII digit is not delta-seconds
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    now = datetime.datetime(2015, 10, 21, 7, 28, 0, tzinfo=datetime.UTC).timestamp()
    assert parse_retry_after(value, now) == seconds


# --- well-behaved answers ------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_ok(status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(status, b"" if status == 204 else b'{"id":42}'))

    outcome = make_sender().send(push_request(f"{crm.url}/hook"))

    assert status_for(outcome) == "ok"
    assert outcome.http_status == status
    assert outcome.response_body == ("" if status == 204 else '{"id":42}')
    assert (outcome.error, outcome.attempts) == (None, 1)
    assert len(crm.requests) == 1
    assert crm.requests[0].json() == {"customer": "Asha"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_4xx_is_rejected_with_the_body_and_not_retried(
    status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]
) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(status, b'{"error":"customer_id is required"}'))

    outcome = make_sender().send(push_request(f"{crm.url}/hook"))

    assert status_for(outcome) == "rejected"
    assert outcome.http_status == status
    assert outcome.response_body == '{"error":"customer_id is required"}'
    assert outcome.attempts == 1
    assert len(crm.requests) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_rejected_and_never_followed(status: int, crm: LocalCrm) -> None:
    with LocalCrm(lambda _r: CrmAnswer(status, b"moved", {"Location": f"{crm.url}/elsewhere"})) as redirector:
        outcome = make_sender().send(push_request(f"{redirector.url}/hook"))

        assert status_for(outcome) == "rejected"
        assert (outcome.http_status, outcome.response_body, outcome.attempts) == (status, "moved", 1)
        assert len(redirector.requests) == 1
    assert crm.requests == []  # the Location target got nothing


def test_non_utf8_body_is_stored_with_replacement_characters(crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(400, b"caf\xe9 \xff\xfe bad"))

    outcome = make_sender().send(push_request(crm.url))

    assert outcome.response_body == "caf\ufffd \ufffd\ufffd bad"


def test_get_sends_the_query_and_url_credentials_as_basic_auth(crm: LocalCrm) -> None:
    host_port = crm.url.removeprefix("http://").replace("127.0.0.1", "localhost")
    url = f"http://crm%40user:p%3Ass@{host_port}/lookup?phone=%2B919800000000&attempt=1"

    outcome = make_sender().send(push_request(url, method="GET"))

    assert outcome.http_status == 200
    received = crm.requests[0]
    assert (received.method, received.path) == ("GET", "/lookup")
    assert received.query == {"phone": "+919800000000", "attempt": "1"}
    assert received.headers["Host"] == host_port  # the name as written, though we connected to 127.0.0.1
    assert received.headers["Authorization"] == "Basic Y3JtQHVzZXI6cDpzcw=="  # crm@user:p:ss


def test_an_explicit_authorization_header_wins_over_url_credentials(crm: LocalCrm) -> None:
    url = crm.url.replace("http://", "http://user:pw@")
    make_sender().send(push_request(url, headers={"Authorization": "Bearer tok"}))
    assert crm.requests[0].headers["Authorization"] == "Bearer tok"


def test_connections_are_reused_between_sends() -> None:
    with RawServer(keep_alive_ok) as server:
        sender = make_sender()
        outcomes = [sender.send(push_request(server.url)) for _ in range(3)]

    assert [o.http_status for o in outcomes] == [200, 200, 200]
    assert len(server.requests) == 3
    assert server.connections == 1


def test_sixteen_threads_share_one_sender(crm: LocalCrm) -> None:
    sender = make_sender(pool_size=16)
    results: list[SendOutcome] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4):
            outcome = sender.send(push_request(f"{crm.url}/hook"))
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert len(results) == 64
    assert {o.http_status for o in results} == {200}
    assert len(crm.requests) == 64


# --- transient failures: retried ------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_status_is_tried_three_times_with_the_same_idempotency_key(
    status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]
) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(status, b"busy"))

    outcome = make_sender().send(push_request(f"{crm.url}/hook"))

    assert (outcome.http_status, outcome.response_body, outcome.attempts) == (status, "busy", 3)
    assert status_for(outcome) == "rejected"
    assert [r.headers["Idempotency-Key"] for r in crm.requests] == [IDEMPOTENCY_KEY] * 3
    assert [r.body for r in crm.requests] == [b'{"customer":"Asha"}'] * 3


def test_transient_then_success_is_ok(crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    script.extend([CrmAnswer(503, b""), CrmAnswer(502, b""), CrmAnswer(201, b"created")])

    outcome = make_sender().send(push_request(crm.url))

    assert (outcome.http_status, outcome.response_body, outcome.attempts) == (201, "created", 3)
    assert status_for(outcome) == "ok"
    assert outcome.duration_ms >= 0
    assert len(crm.requests) == 3


def test_retry_after_is_honoured(crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    script.extend([CrmAnswer(503, b"", {"Retry-After": "1"}), CrmAnswer(200, b"ok")])

    outcome, elapsed = timed_send(make_sender(), push_request(crm.url))

    assert (outcome.http_status, outcome.attempts) == (200, 2)
    assert 1.0 <= elapsed < 2.0
    assert outcome.duration_ms >= 1000  # the total across attempts, sleep included


def test_retry_after_as_http_date_is_honoured(crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1.2)
    script.extend([CrmAnswer(429, b"", {"Retry-After": format_datetime(when, usegmt=True)}), CrmAnswer(200)])

    outcome, elapsed = timed_send(make_sender(), push_request(crm.url))

    assert (outcome.http_status, outcome.attempts) == (200, 2)
    assert 0.1 < elapsed < 2.5  # the date has whole seconds, so the wait is 0.2-1.2 s


def test_retry_after_beyond_the_cap_is_not_waited_for(crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(429, b"slow down", {"Retry-After": "120"}))

    outcome, elapsed = timed_send(make_sender(), push_request(crm.url))

    assert (outcome.http_status, outcome.response_body, outcome.attempts) == (429, "slow down", 1)
    assert elapsed < 0.5


def test_no_retry_when_the_deadline_is_near(crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(503, b""))

    outcome, elapsed = timed_send(make_sender(), push_request(crm.url), deadline=time.monotonic() + 0.3)

    assert (outcome.http_status, outcome.attempts) == (503, 1)
    assert elapsed < 0.3


def test_nothing_is_sent_once_the_deadline_has_passed(crm: LocalCrm) -> None:
    outcome = make_sender().send(push_request(crm.url), deadline=time.monotonic() - 1)

    assert outcome.http_status is None
    assert outcome.attempts == 0
    assert outcome.error == "not sent: no time left before the Lambda's deadline"
    assert crm.requests == []


def test_the_attempt_budget_shrinks_to_the_deadline() -> None:
    with RawServer(silent) as server:
        outcome, elapsed = timed_send(
            make_sender(total_timeout=10.0), push_request(server.url), deadline=time.monotonic() + 0.4
        )

    assert outcome.http_status is None
    assert outcome.error == "timed out after 0.4s without a complete answer"
    assert elapsed < 1.0


def test_connection_refused_is_retried_then_failed(closed_port: int) -> None:
    outcome, elapsed = timed_send(make_sender(), push_request(f"http://127.0.0.1:{closed_port}/hook"))

    assert status_for(outcome) == "failed"
    assert outcome.error == "could not connect: connection refused"
    assert outcome.attempts == 3
    assert elapsed < 1.0


def test_connect_timeout_is_retried_then_failed() -> None:
    # A listener that never accepts, with its one-slot backlog taken: further SYNs go unanswered.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            sender = make_sender(total_timeout=0.2)
            outcome, elapsed = timed_send(sender, push_request(f"http://127.0.0.1:{port}/"))

    assert outcome.http_status is None
    assert outcome.error == "could not connect: timed out after 0.2s"
    assert outcome.attempts == 3
    assert 0.55 < elapsed < 1.5


def test_dns_failure_is_retried_then_failed() -> None:
    outcome, elapsed = timed_send(make_sender(), push_request("https://crm.invalid/hook"))

    assert status_for(outcome) == "failed"
    assert outcome.error == "could not resolve host crm.invalid"
    assert outcome.attempts == 3
    assert elapsed < 5.0


def test_retries_are_logged_without_url_headers_or_body(
    crm_answers: tuple[LocalCrm, list[CrmAnswer]], caplog: pytest.LogCaptureFixture
) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(503, b"busy"))
    caplog.set_level(logging.INFO, logger="crm_push")

    make_sender().send(push_request(f"{crm.url}/hook?token=q-secret", headers={"Authorization": "Bearer h-secret"}))

    retries = [r for r in caplog.records if r.name == crm_http.__name__]
    assert [(r.attempt, r.outcome) for r in retries] == [(1, "http_503"), (2, "http_503")]  # type: ignore[attr-defined]
    assert all(0 <= r.sleep_seconds <= 0.02 for r in retries)  # type: ignore[attr-defined]
    assert "secret" not in caplog.text
    assert "/hook" not in caplog.text
    assert "Asha" not in caplog.text


# --- no answer after sending: not retried -------------------------------------------------------


def test_silent_server_times_out_once() -> None:
    with RawServer(silent) as server:
        outcome, elapsed = timed_send(make_sender(), push_request(server.url))

    assert status_for(outcome) == "failed"
    assert outcome.error == "timed out after 0.5s without a complete answer"
    assert outcome.attempts == 1
    assert len(server.requests) == 1  # a request the CRM may have processed is never sent again
    assert elapsed < 1.0


@pytest.mark.parametrize("handler", [drips_headers, drips_body], ids=["headers", "body"])
def test_a_drip_is_cut_off_at_the_total_timeout(handler: Callable[[socket.socket, RawServer], None]) -> None:
    # One byte every 20 ms never trips a per-read timeout; the total budget still ends it.
    with RawServer(handler) as server:
        outcome, elapsed = timed_send(make_sender(), push_request(server.url))

    assert outcome.http_status is None
    assert outcome.error == "timed out after 0.5s without a complete answer"
    assert outcome.attempts == 1
    assert server.bytes_sent > 5  # it really was dripping
    assert 0.45 < elapsed < 1.0


def test_the_default_total_timeout_is_ten_seconds() -> None:
    assert TOTAL_TIMEOUT_SECONDS == 10.0
    assert CrmHttpSender().total_timeout == 10.0
    assert CrmHttpSender().retry_policy == RetryPolicy(3, 0.2, 2.0, 5.0, 0.5)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_50mb_body_is_read_only_as_far_as_stored(chunked: bool) -> None:
    with RawServer(huge_body(chunked)) as server:
        sender = make_sender(total_timeout=5.0)
        tracemalloc.start()
        try:
            outcome, elapsed = timed_send(sender, push_request(server.url))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        time.sleep(0.1)  # let the server notice the closed connection

    assert (outcome.http_status, outcome.attempts) == (200, 1)
    assert outcome.response_body == "x" * 2000
    assert elapsed < 2.0
    assert peak < 2_000_000  # bytes: nothing like 50 MB was buffered
    assert server.bytes_sent < 20 * 1024 * 1024  # we closed rather than drained


def test_a_reset_mid_answer_fails_clearly() -> None:
    with RawServer(resets_mid_body) as server:
        outcome = make_sender().send(push_request(server.url))

    assert status_for(outcome) == "failed"
    assert outcome.error == "connection reset by the CRM before the answer was complete"
    assert outcome.attempts == 1
    assert len(server.requests) == 1


def test_a_close_without_answer_fails_clearly() -> None:
    with RawServer(closes_without_answering) as server:
        outcome = make_sender().send(push_request(server.url))

    assert outcome.http_status is None
    assert outcome.error == "the CRM closed the connection without answering"
    assert outcome.attempts == 1
    assert len(server.requests) == 1


def test_send_never_raises(crm: LocalCrm, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(crm_http, "resolve_destination", broken)
    outcome = make_sender().send(push_request(crm.url))

    assert outcome.http_status is None
    assert outcome.error == "internal error while sending: RuntimeError"


# --- TLS ---------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path  # the CA that signed ``cert``
    cert: Path
    key: Path


def issue_certs(directory: Path, names: list[str], *, self_signed: bool = False) -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Local Test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ca_key if self_signed else ec.generate_private_key(ec.SECP256R1())
    subject = ca_name if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    san = x509.SubjectAlternativeName([x509.DNSName(name) for name in names])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    certs = Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    certs.ca.write_bytes(ca.public_bytes(pem))
    certs.cert.write_bytes(leaf.public_bytes(pem))
    certs.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return certs


def tls_server_context(certs: Certs, seen_names: list[str | None]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.cert, certs.key)
    context.sni_callback = lambda _sock, name, _ctx: seen_names.append(name)
    return context


def answer_ok(conn: socket.socket, server: RawServer) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsecured")


def test_untrusted_self_signed_certificate_fails_clearly(tmp_path: Path) -> None:
    certs = issue_certs(tmp_path, ["localhost"], self_signed=True)
    with RawServer(answer_ok, tls=tls_server_context(certs, [])) as server:
        outcome = make_sender().send(push_request(f"https://localhost:{server.port}/hook"))

    assert status_for(outcome) == "failed"
    assert outcome.error == "TLS failed: certificate verify failed (self-signed certificate)"
    assert outcome.attempts == 1  # not retried: a certificate does not fix itself
    assert server.requests == []


def test_trusted_certificate_is_checked_against_the_name_not_the_address(tmp_path: Path) -> None:
    certs = issue_certs(tmp_path, ["localhost"])
    seen_names: list[str | None] = []
    with RawServer(answer_ok, tls=tls_server_context(certs, seen_names)) as server:
        sender = make_sender(pool=urllib3.PoolManager(ca_certs=str(certs.ca)))
        outcome = sender.send(push_request(f"https://localhost:{server.port}/hook"))

    assert (outcome.http_status, outcome.response_body) == (200, "secured")
    assert seen_names == ["localhost"]  # SNI carries the name, though the socket went to 127.0.0.1
    assert b"Host: localhost:%d" % server.port in server.requests[0]


def test_certificate_for_another_name_fails_clearly(tmp_path: Path) -> None:
    certs = issue_certs(tmp_path, ["crm.example.com"])
    with RawServer(answer_ok, tls=tls_server_context(certs, [])) as server:
        sender = make_sender(pool=urllib3.PoolManager(ca_certs=str(certs.ca)))
        outcome = sender.send(push_request(f"https://localhost:{server.port}/hook"))

    assert outcome.http_status is None
    assert outcome.error is not None
    assert outcome.error.startswith("TLS failed: certificate")
    assert "localhost" in outcome.error
    assert server.requests == []


def test_plain_http_spoken_to_a_tls_port_fails_clearly(tmp_path: Path) -> None:
    certs = issue_certs(tmp_path, ["localhost"])
    with RawServer(answer_ok, tls=tls_server_context(certs, [])) as server:
        outcome = make_sender().send(push_request(f"http://127.0.0.1:{server.port}/"))

    assert outcome.http_status is None
    assert outcome.error is not None
    assert outcome.attempts == 1


# --- credentials never reach the error or the logs ----------------------------------------------

SECRETS = ("s3cr3t-pw", "k123", "tok-ABC", "hdr-XYZ", "crm-admin")


@pytest.mark.parametrize(
    "scenario", ["refused", "dns", "tls", "timeout", "reset", "no-answer", "guard", "retried-503", "bad-scheme"]
)
def test_errors_and_logs_never_hold_credentials(
    scenario: str, closed_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3's own DEBUG lines included
    sender = make_sender()
    with ExitStack() as stack:
        if scenario == "refused":
            where = f"127.0.0.1:{closed_port}"
        elif scenario == "dns":
            where = "crm.invalid"
        elif scenario == "tls":
            context = tls_server_context(issue_certs(tmp_path, ["localhost"], self_signed=True), [])
            where = f"localhost:{stack.enter_context(RawServer(answer_ok, tls=context)).port}"
        elif scenario == "timeout":
            where = f"127.0.0.1:{stack.enter_context(RawServer(silent)).port}"
        elif scenario == "reset":
            where = f"127.0.0.1:{stack.enter_context(RawServer(resets_mid_body)).port}"
        elif scenario == "no-answer":
            where = f"127.0.0.1:{stack.enter_context(RawServer(closes_without_answering)).port}"
        elif scenario == "guard":
            sender = make_sender(allow_private_networks=False)
            where = "127.0.0.1:9"
        else:
            crm = stack.enter_context(LocalCrm(lambda _r: CrmAnswer(503, b"busy")))
            where = crm.url.removeprefix("http://")
        scheme = "https" if scenario == "tls" else "ftp" if scenario == "bad-scheme" else "http"
        url = f"{scheme}://crm-admin:s3cr3t-pw@{where}/v1/leads?api_key=k123&x=1"
        headers = {"Authorization": "Bearer tok-ABC", "X-Api-Key": "hdr-XYZ"}

        outcome = sender.send(push_request(url, method="GET", headers=headers))

    assert outcome.http_status in (None, 503)
    text = f"{outcome.error} {outcome.response_body} {caplog.text}"
    for secret in SECRETS:
        assert secret not in text, (scenario, outcome.error)
    assert "/v1/leads" not in text
