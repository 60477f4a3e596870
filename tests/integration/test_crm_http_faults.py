"""CrmHttpSender against real local servers: every fault ends in one attempt, classified, in bounded time.

Well-behaved answers come from scripts/local_crm.py; misbehaviour (silence,
drips, resets, stalled or cut-short bodies, endless bodies, TLS) from small
raw-socket servers below. Timeouts use a 0.5 s budget, so the file runs fast.
Retrying is the core's job: here every send must reach the CRM at most once.
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
from crm_push.adapters.crm_http import MAX_BODY_BYTES, CrmHttpSender
from crm_push.attempt import status_for
from crm_push.ports import ATTEMPT_SECONDS, MAX_RESPONSE_BODY_CHARS, PushRequest, SendOutcome
from crm_push.push_url import parse_push_url
from crm_push.redaction import scrub
from crm_push.retry_after import parse_retry_after
from scripts.local_crm import CrmAnswer, LocalCrm, ReceivedRequest

QUICK_TIMEOUT = 0.5
IDEMPOTENCY_KEY = "call-7f3a"


def make_sender(**kwargs: Any) -> CrmHttpSender:
    kwargs.setdefault("allow_private_networks", True)
    kwargs.setdefault("total_timeout", QUICK_TIMEOUT)
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


def stalls_mid_body(status_line: bytes, extra_headers: bytes = b"") -> Callable[[socket.socket, RawServer], None]:
    """Sends the status, headers and 10 of the 100 bytes it announced, then nothing more."""

    def handle(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        server.send(conn, status_line + b"\r\nContent-Length: 100\r\n" + extra_headers + b"\r\n0123456789")
        server.stopped.wait(5)

    return handle


def closes_mid_body(conn: socket.socket, server: RawServer) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    conn.shutdown(socket.SHUT_WR)  # a clean close (FIN), 90 bytes short


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
def crm_answers() -> Iterator[tuple[LocalCrm, list[CrmAnswer]]]:
    """A LocalCrm that answers from a script (the last answer repeats)."""
    script: list[CrmAnswer] = []

    def responder(_request: ReceivedRequest) -> CrmAnswer:
        return script.pop(0) if len(script) > 1 else script[0]

    with LocalCrm(responder) as crm:
        yield crm, script


# --- well-behaved answers ------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_ok(status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    # A Retry-After on a success means nothing to the schedule, so it is not passed on.
    script.append(CrmAnswer(status, b"" if status == 204 else b'{"id":42}', {"Retry-After": "60"}))

    outcome = make_sender().send(push_request(f"{crm.url}/hook"))

    assert status_for(outcome) == "ok"
    assert outcome.http_status == status
    assert outcome.response_body == ("" if status == 204 else '{"id":42}')
    assert (outcome.error, outcome.error_kind, outcome.retry_after, outcome.attempts) == (None, None, None, 1)
    assert len(crm.requests) == 1
    assert crm.requests[0].json() == {"customer": "Asha"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_4xx_is_rejected_with_the_body_in_one_request(
    status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]
) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(status, b'{"error":"customer_id is required"}'))

    outcome = make_sender().send(push_request(f"{crm.url}/hook"))

    assert status_for(outcome) == "rejected"
    assert outcome.http_status == status
    assert outcome.response_body == '{"error":"customer_id is required"}'
    assert (outcome.error, outcome.error_kind, outcome.retry_after, outcome.attempts) == (None, "http_status", None, 1)
    assert len(crm.requests) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_rejected_and_never_followed(status: int, crm: LocalCrm) -> None:
    with LocalCrm(lambda _r: CrmAnswer(status, b"moved", {"Location": f"{crm.url}/elsewhere"})) as redirector:
        outcome = make_sender().send(push_request(f"{redirector.url}/hook"))

        assert status_for(outcome) == "rejected"
        assert (outcome.http_status, outcome.response_body, outcome.attempts) == (status, "moved", 1)
        assert outcome.error_kind == "http_status"
        assert len(redirector.requests) == 1
    assert crm.requests == []  # the Location target got nothing


def test_non_utf8_body_is_stored_with_replacement_characters(crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    script.append(CrmAnswer(400, b"caf\xe9 \xff\xfe bad"))

    outcome = make_sender().send(push_request(crm.url))

    assert outcome.response_body == "caf\ufffd \ufffd\ufffd bad"


def test_get_sends_the_query_and_the_basic_auth_the_core_made_of_the_url(crm: LocalCrm) -> None:
    host_port = crm.url.removeprefix("http://").replace("127.0.0.1", "LocalHost")
    configured = parse_push_url(f"http://crm%40user:p%3Ass@{host_port}/lookup?phone=%2B919800000000")
    basic = configured.basic_auth
    assert basic is not None
    request = push_request(configured.request_url("attempt=1"), method="GET", headers={"Authorization": basic})

    outcome = make_sender().send(request)

    assert outcome.http_status == 200
    received = crm.requests[0]
    assert (received.method, received.path) == ("GET", "/lookup")
    assert received.query == {"phone": "+919800000000", "attempt": "1"}
    assert received.headers["Host"] == host_port.lower()  # the name as read, though we connected to 127.0.0.1
    assert received.headers["Authorization"] == "Basic Y3JtQHVzZXI6cDpzcw=="  # crm@user:p:ss, once


def test_a_request_url_with_user_info_is_not_sent(crm: LocalCrm) -> None:
    # The core sends user info as the Authorization header; the sender is never a second source of it.
    url = crm.url.replace("http://", "http://crm-user:pw-4242@")

    outcome = make_sender().send(push_request(url, headers={"Authorization": "Bearer tok"}))

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (None, "internal", 0)
    assert outcome.error is not None
    assert "user info" in outcome.error
    assert "pw-4242" not in outcome.error
    assert crm.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://attacker.example\\@127.0.0.1/x", "http://a@b@127.0.0.1/", "http://127.0.0.1/ x", "ftp://127.0.0.1/"],
    ids=["backslash", "two-at-signs", "space", "scheme"],
)
def test_a_url_the_one_parser_refuses_is_a_config_failure_and_nothing_is_tried(url: str, crm: LocalCrm) -> None:
    outcome = make_sender().send(push_request(url))

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (None, "config", 0)
    assert outcome.error is not None
    assert outcome.error.startswith("url ")
    assert "attacker" not in outcome.error


def test_connections_are_reused_between_sends() -> None:
    with RawServer(keep_alive_ok) as server:
        sender = make_sender()
        outcomes = [sender.send(push_request(server.url)) for _ in range(3)]

    assert [o.http_status for o in outcomes] == [200, 200, 200]
    assert len(server.requests) == 3
    assert server.connections == 1


def test_sixteen_threads_share_one_sender(crm: LocalCrm) -> None:
    # What is under test is sharing, not timing: a loaded 2-core machine may take longer than QUICK_TIMEOUT.
    sender = make_sender(pool_size=16, total_timeout=10.0)
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
    assert {(o.http_status, o.error_kind, o.attempts) for o in results} == {(200, None, 1)}
    assert len(crm.requests) == 64


# --- transient answers: one request, classified; the core decides when to try again -------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_a_transient_status_is_one_request_classified_for_the_core(
    status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]
) -> None:
    crm, script = crm_answers
    script.extend([CrmAnswer(status, b"busy"), CrmAnswer(200)])  # a retry in the sender would get the 200

    outcome = make_sender().send(push_request(f"{crm.url}/hook"))

    assert (outcome.http_status, outcome.response_body, outcome.attempts) == (status, "busy", 1)
    assert (outcome.error, outcome.error_kind, outcome.retry_after) == (None, "http_status", None)
    assert status_for(outcome) == "rejected"
    assert len(crm.requests) == 1
    assert crm.requests[0].headers["Idempotency-Key"] == IDEMPOTENCY_KEY


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_passed_on_raw_and_not_waited_for(
    status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]
) -> None:
    crm, script = crm_answers
    script.extend([CrmAnswer(status, b"slow down", {"Retry-After": "120"}), CrmAnswer(200)])

    outcome, elapsed = timed_send(make_sender(), push_request(crm.url))

    assert (outcome.http_status, outcome.response_body, outcome.attempts) == (status, "slow down", 1)
    assert (outcome.error_kind, outcome.retry_after) == ("http_status", "120")
    assert len(crm.requests) == 1
    assert elapsed < 5.0  # far below the 120 s asked for: the sender never sleeps on it


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_as_http_date_is_passed_on_raw(status: int, crm_answers: tuple[LocalCrm, list[CrmAnswer]]) -> None:
    crm, script = crm_answers
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    http_date = format_datetime(when, usegmt=True)
    script.append(CrmAnswer(status, b"", {"Retry-After": http_date}))

    outcome = make_sender().send(push_request(crm.url))

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (status, "http_status", 1)
    assert outcome.retry_after == http_date
    waited = parse_retry_after(outcome.retry_after, time.time())
    assert waited is not None
    assert 3500 < waited <= 3600
    assert len(crm.requests) == 1


def test_an_unreadable_or_oversized_retry_after_is_passed_on_cut_to_64_characters(
    crm_answers: tuple[LocalCrm, list[CrmAnswer]],
) -> None:
    crm, script = crm_answers
    script.extend([CrmAnswer(503, b"", {"Retry-After": "soon"}), CrmAnswer(503, b"", {"Retry-After": "9" * 500})])
    sender = make_sender()

    unreadable = sender.send(push_request(crm.url))
    oversized = sender.send(push_request(crm.url))

    assert unreadable.retry_after == "soon"  # the core's parser says None to it, not the sender
    assert oversized.retry_after == "9" * 64


def test_nothing_is_sent_once_the_deadline_has_passed(crm: LocalCrm) -> None:
    outcome = make_sender().send(push_request(crm.url), deadline=time.monotonic() - 1)

    assert outcome.http_status is None
    assert (outcome.attempts, outcome.error_kind) == (0, None)  # not attempted: the core reschedules it
    assert outcome.error == "not sent: no time left before the Lambda's deadline"
    assert crm.requests == []


def test_the_attempt_budget_shrinks_to_the_deadline() -> None:
    with RawServer(silent) as server:
        outcome, elapsed = timed_send(
            make_sender(total_timeout=10.0), push_request(server.url), deadline=time.monotonic() + 0.4
        )

    assert outcome.http_status is None
    assert (outcome.error_kind, outcome.attempts) == ("timeout", 1)
    assert outcome.error == "timed out after 0.4s without a complete answer"
    assert elapsed < 3.0


def test_connection_refused_is_one_attempt_of_kind_connection(closed_port: int) -> None:
    outcome = make_sender().send(push_request(f"http://127.0.0.1:{closed_port}/hook"))

    assert status_for(outcome) == "failed"
    assert outcome.error == "could not connect: connection refused"
    assert (outcome.error_kind, outcome.attempts) == ("connection", 1)


def test_connect_timeout_is_one_attempt_of_kind_connection() -> None:
    # A listener that never accepts, with its one-slot backlog taken: further SYNs go unanswered.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            sender = make_sender(total_timeout=0.2)
            outcome, elapsed = timed_send(sender, push_request(f"http://127.0.0.1:{port}/"))

    assert outcome.http_status is None
    assert outcome.error == "could not connect: timed out after 0.2s"
    # "connection", not "timeout": nothing of the request left us.
    assert (outcome.error_kind, outcome.attempts) == ("connection", 1)
    assert 0.15 < elapsed < 3.0  # one 0.2 s wait, not three


def test_dns_failure_is_one_attempt_of_kind_dns() -> None:
    outcome = make_sender().send(push_request("https://crm.invalid/hook"))

    assert status_for(outcome) == "failed"
    assert outcome.error == "could not resolve host crm.invalid"
    assert (outcome.error_kind, outcome.attempts) == ("dns", 1)


# --- no answer after sending -----------------------------------------------------------------


def test_silent_server_times_out_once() -> None:
    with RawServer(silent) as server:
        outcome, elapsed = timed_send(make_sender(), push_request(server.url))

    assert status_for(outcome) == "failed"
    assert outcome.error == "timed out after 0.5s without a complete answer"
    assert (outcome.error_kind, outcome.attempts) == ("timeout", 1)
    assert len(server.requests) == 1
    assert elapsed < 3.0


def test_dripping_headers_are_cut_off_at_the_total_timeout() -> None:
    # One byte every 20 ms never trips a per-read timeout; the total budget still ends it.
    with RawServer(drips_headers) as server:
        outcome, elapsed = timed_send(make_sender(), push_request(server.url))

    assert outcome.http_status is None  # a status line without its headers is no answer yet
    assert outcome.error == "timed out after 0.5s without a complete answer"
    assert (outcome.error_kind, outcome.attempts) == ("timeout", 1)
    assert server.bytes_sent > 5  # it really was dripping
    assert 0.45 < elapsed < 3.0


def test_a_dripping_2xx_body_is_cut_off_and_the_status_stands() -> None:
    with RawServer(drips_body) as server:
        outcome, elapsed = timed_send(make_sender(), push_request(server.url))

    assert (outcome.http_status, outcome.error, outcome.error_kind, outcome.attempts) == (200, None, None, 1)
    assert status_for(outcome) == "ok"
    assert 0 < len(outcome.response_body) < 100_000
    assert set(outcome.response_body) == {"a"}  # what had arrived when the time ran out
    assert 0.45 < elapsed < 3.0


def test_the_default_total_timeout_is_the_attempt_budget() -> None:
    assert ATTEMPT_SECONDS == 10.0  # contract §8
    assert CrmHttpSender().total_timeout == ATTEMPT_SECONDS


def blocking_resolver(release: threading.Event, calls: list[str]) -> Callable[[str, int], list[str]]:
    """A resolver like getaddrinfo on a black-holed nameserver: it answers only once released."""

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        release.wait(30)
        return ["127.0.0.1"]

    return resolve


def test_a_dns_lookup_that_hangs_ends_within_the_attempt_budget(crm: LocalCrm) -> None:
    release, calls = threading.Event(), list[str]()
    sender = make_sender(resolve=blocking_resolver(release, calls))
    url = crm.url.replace("127.0.0.1", "blackholed.example")
    try:
        outcome, elapsed = timed_send(sender, push_request(url))
    finally:
        release.set()

    assert calls == ["blackholed.example"]
    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (None, "dns", 1)  # a lookup is a try
    assert outcome.error == "could not resolve host blackholed.example: the lookup took over 0.5s"
    assert elapsed < 3.0  # the budget (0.5 s), not the resolver's 30 s
    assert crm.requests == []


def test_a_hanging_dns_lookup_stops_at_the_lambda_deadline_too(crm: LocalCrm) -> None:
    release, calls = threading.Event(), list[str]()
    sender = make_sender(resolve=blocking_resolver(release, calls), total_timeout=30.0)
    try:
        outcome, elapsed = timed_send(sender, push_request(crm.url), deadline=time.monotonic() + 0.3)
    finally:
        release.set()

    assert (outcome.error_kind, outcome.attempts) == ("dns", 1)
    assert elapsed < 3.0


def test_the_sender_connects_by_its_resolver(crm: LocalCrm) -> None:
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(f"{host}:{port}")
        return ["127.0.0.1"]

    port = crm.url.rsplit(":", 1)[1]
    outcome = make_sender(resolve=resolve).send(push_request(f"http://crm.example:{port}/in"))

    assert (outcome.http_status, outcome.error_kind) == (200, None)
    assert calls == [f"crm.example:{port}"]
    assert crm.requests[0].headers["Host"] == f"crm.example:{port}"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_50mb_body_is_read_only_up_to_the_byte_limit(chunked: bool) -> None:
    with RawServer(huge_body(chunked)) as server:
        sender = make_sender(total_timeout=5.0)
        tracemalloc.start()
        try:
            outcome, elapsed = timed_send(sender, push_request(server.url))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        time.sleep(0.1)  # let the server notice the closed connection

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (200, None, 1)
    assert outcome.response_body == "x" * MAX_BODY_BYTES  # not cut to the stored length: the core does that
    assert elapsed < 4.0
    assert peak < 2_000_000  # bytes: nothing like 50 MB was buffered
    assert server.bytes_sent < 20 * 1024 * 1024  # we closed rather than drained


@pytest.mark.parametrize("filler", ["x", "\N{GRINNING FACE}"], ids=["ascii", "four-byte-characters"])
def test_a_credential_echoed_across_the_stored_length_comes_back_whole_for_the_core_to_scrub(filler: str) -> None:
    # Audit #8: cut first, and a credential straddling the cut is stored in part. The sender cuts nothing
    # at the stored length, so the core's scrub sees the whole credential before it cuts.
    secret = "sk_live_0123456789abcdef"
    before = filler * (MAX_RESPONSE_BODY_CHARS - 10)  # the secret starts 4 characters before the cut
    body = (before + f"token {secret} rejected").encode()
    answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    def echo(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        server.send(conn, answer)

    with RawServer(echo) as server:
        outcome = make_sender().send(push_request(server.url))

    assert outcome.response_body == body.decode()
    assert "sk_l" in outcome.response_body[:MAX_RESPONSE_BODY_CHARS]  # cutting first would keep this prefix
    stored = scrub(outcome.response_body, [secret])[:MAX_RESPONSE_BODY_CHARS]
    assert "sk_l" not in stored
    assert stored.endswith("token *** ")


# --- the status line arrived, the body did not: the status stands -----------------------------


@pytest.mark.parametrize(
    ("handler", "problem"),
    [
        (stalls_mid_body(b"HTTP/1.1 200 OK"), "timed out after 0.5s"),
        (closes_mid_body, "connection closed mid-body"),
        (resets_mid_body, "connection reset by the CRM"),
    ],
    ids=["stalls", "closes", "resets"],
)
def test_a_2xx_whose_body_is_cut_short_is_ok_with_what_arrived(
    handler: Callable[[socket.socket, RawServer], None], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crm_push")
    with RawServer(handler) as server:
        outcome, elapsed = timed_send(make_sender(), push_request(f"{server.url}/hook?token=q-secret"))

    assert status_for(outcome) == "ok"  # the CRM took it: calling it failed would have it pushed again
    assert (outcome.http_status, outcome.response_body) == (200, "0123456789")
    assert (outcome.error, outcome.error_kind, outcome.attempts) == (None, None, 1)
    assert len(server.requests) == 1
    assert elapsed < 3.0
    warnings = [r for r in caplog.records if r.name == crm_http.__name__]
    assert [(r.levelno, r.http_status, r.body_problem) for r in warnings] == [  # type: ignore[attr-defined]
        (logging.WARNING, 200, problem)
    ]
    assert "q-secret" not in caplog.text
    assert "/hook" not in caplog.text
    assert "0123456789" not in caplog.text


def test_a_non_2xx_whose_body_stalls_keeps_its_status_and_retry_after() -> None:
    with RawServer(stalls_mid_body(b"HTTP/1.1 503 Service Unavailable", b"Retry-After: 30\r\n")) as server:
        outcome = make_sender().send(push_request(server.url))

    assert status_for(outcome) == "rejected"
    assert (outcome.http_status, outcome.response_body) == (503, "0123456789")
    assert outcome.error == "answer body incomplete: timed out after 0.5s"
    assert (outcome.error_kind, outcome.retry_after, outcome.attempts) == ("http_status", "30", 1)


def test_a_connection_cut_short_mid_body_is_not_reused() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]

    def cut_then_answer(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        server.send(conn, answers.pop(0))
        server.stopped.wait(5)

    with RawServer(cut_then_answer) as server:
        sender = make_sender()
        first = sender.send(push_request(server.url))
        second = sender.send(push_request(server.url))

    assert (first.http_status, first.response_body) == (200, "0123456789")
    assert (second.http_status, second.response_body, second.error_kind) == (200, "ok", None)
    assert server.connections == 2  # the half-read connection was closed, not handed to the next send


# --- no answer: the connection broke ------------------------------------------------------------


def test_a_close_without_answer_fails_clearly() -> None:
    with RawServer(closes_without_answering) as server:
        outcome = make_sender().send(push_request(server.url))

    assert outcome.http_status is None
    assert outcome.error == "the CRM closed the connection without answering"
    assert (outcome.error_kind, outcome.attempts) == ("connection", 1)
    assert len(server.requests) == 1


def test_a_reset_before_the_answer_fails_clearly() -> None:
    def resets_before_answering(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close -> RST

    with RawServer(resets_before_answering) as server:
        outcome = make_sender().send(push_request(server.url))

    assert outcome.http_status is None
    assert outcome.error is not None
    assert outcome.error in {
        "connection reset by the CRM before it answered",
        "the CRM closed the connection without answering",  # when the RST reads as an empty status line
    }
    assert (outcome.error_kind, outcome.attempts) == ("connection", 1)
    assert len(server.requests) == 1


def test_a_garbled_status_line_is_a_connection_failure() -> None:
    def garbles(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        server.send(conn, b"SMTP ready\r\n\r\n")

    with RawServer(garbles) as server:
        outcome = make_sender().send(push_request(server.url))

    assert outcome.http_status is None
    assert (outcome.error_kind, outcome.attempts) == ("connection", 1)
    assert outcome.error == "connection broken (BadStatusLine)"


def test_send_never_raises(crm: LocalCrm, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(crm_http, "resolve_destination", broken)
    outcome = make_sender().send(push_request(crm.url))

    assert outcome.http_status is None
    assert outcome.error == "internal error while sending: RuntimeError"
    assert (outcome.error_kind, outcome.attempts) == ("internal", 0)  # it failed before the CRM was tried
    assert crm.requests == []


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
    assert (outcome.error_kind, outcome.attempts) == ("tls", 1)
    assert server.requests == []


def test_trusted_certificate_is_checked_against_the_name_not_the_address(tmp_path: Path) -> None:
    certs = issue_certs(tmp_path, ["localhost"])
    seen_names: list[str | None] = []
    with RawServer(answer_ok, tls=tls_server_context(certs, seen_names)) as server:
        sender = make_sender(pool=urllib3.PoolManager(ca_certs=str(certs.ca)))
        outcome = sender.send(push_request(f"https://localhost:{server.port}/hook"))

    assert (outcome.http_status, outcome.response_body, outcome.error_kind) == (200, "secured", None)
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
    assert (outcome.error_kind, outcome.attempts) == ("tls", 1)
    assert server.requests == []


def test_plain_http_spoken_to_a_tls_port_fails_clearly(tmp_path: Path) -> None:
    certs = issue_certs(tmp_path, ["localhost"])
    with RawServer(answer_ok, tls=tls_server_context(certs, [])) as server:
        outcome = make_sender().send(push_request(f"http://127.0.0.1:{server.port}/"))

    assert outcome.http_status is None
    assert outcome.error is not None
    # The TLS server drops a client that does not speak TLS: to us, a connection that broke.
    assert (outcome.error_kind, outcome.attempts) == ("connection", 1)


# --- credentials never reach the error or the logs ----------------------------------------------

SECRETS = ("s3cr3t-pw", "k123", "tok-ABC", "hdr-XYZ", "crm-admin")


@pytest.mark.parametrize(
    ("scenario", "kind"),
    [
        ("refused", "connection"),
        ("dns", "dns"),
        ("tls", "tls"),
        ("timeout", "timeout"),
        ("cut-short", None),
        ("no-answer", "connection"),
        ("guard", "destination_refused"),
        ("503", "http_status"),
        ("bad-scheme", "config"),
        ("userinfo", "internal"),
    ],
)
def test_errors_and_logs_never_hold_credentials(
    scenario: str, kind: str | None, closed_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
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
        elif scenario == "cut-short":
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
        userinfo = "crm-admin:s3cr3t-pw@" if scenario == "userinfo" else ""
        url = f"{scheme}://{userinfo}{where}/v1/leads?api_key=k123&x=1"
        headers = {"Authorization": "Bearer tok-ABC", "X-Api-Key": "hdr-XYZ", "X-User": "crm-admin s3cr3t-pw"}

        outcome = sender.send(push_request(url, method="GET", headers=headers))

    assert outcome.error_kind == kind
    text = f"{outcome.error} {outcome.response_body} {caplog.text}"
    for secret in SECRETS:
        assert secret not in text, (scenario, outcome.error)
    assert "/v1/leads" not in text
