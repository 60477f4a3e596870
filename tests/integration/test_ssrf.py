"""The SSRF guard end to end: a real local server is refused unless private networks are allowed,
and the connection goes to the address that was checked (no second DNS lookup)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from crm_push.adapters.crm_http import CrmHttpSender
from crm_push.attempt import status_for
from crm_push.ports import PushRequest
from scripts.local_crm import CrmAnswer, LocalCrm

# Each spelling means 127.0.0.1 to the OS resolver.
LOOPBACK_SPELLINGS = ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]"]


def port_of(crm: LocalCrm) -> int:
    return int(crm.url.rsplit(":", 1)[1])


def push_request(url: str) -> PushRequest:
    headers = {"Idempotency-Key": "call-1", "Content-Type": "application/json"}
    return PushRequest("call-1", "POST", url, headers, b"{}", url)


def sender(allow_private_networks: bool) -> CrmHttpSender:
    return CrmHttpSender(allow_private_networks=allow_private_networks, total_timeout=0.5)


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_local_server_is_refused_and_receives_nothing(host: str, crm: LocalCrm) -> None:
    outcome = sender(allow_private_networks=False).send(push_request(f"http://{host}:{port_of(crm)}/hook"))

    assert status_for(outcome) == "failed"
    assert outcome.http_status is None
    assert outcome.error is not None
    assert outcome.error.startswith("destination refused: ")
    assert "a loopback address" in outcome.error
    assert (outcome.error_kind, outcome.attempts) == ("destination_refused", 0)  # nothing was tried
    assert crm.requests == []


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_local_server_is_reached_when_private_networks_are_allowed(host: str, crm: LocalCrm) -> None:
    outcome = sender(allow_private_networks=True).send(push_request(f"http://{host}:{port_of(crm)}/hook"))

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (200, None, 1)
    assert len(crm.requests) == 1
    assert crm.requests[0].headers["Host"] == f"{host}:{port_of(crm)}"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.0.10:8080/",
        "http://100.64.1.1/",
        "http://[::1]/",
        "http://0.0.0.0:80/",
        "http://[::]/",
        "http://224.0.0.1/",
    ],
)
def test_internal_destinations_are_refused_without_a_connection(url: str) -> None:
    outcome = sender(allow_private_networks=False).send(push_request(url))

    assert outcome.http_status is None
    assert outcome.error is not None
    assert outcome.error.startswith("destination refused: ")
    assert (outcome.error_kind, outcome.attempts) == ("destination_refused", 0)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "file:///etc/passwd", "gopher://127.0.0.1:70/_x", "//x/"])
def test_only_http_and_https_even_when_private_networks_are_allowed(url: str) -> None:
    outcome = sender(allow_private_networks=True).send(push_request(url))

    assert outcome.http_status is None
    assert outcome.error is not None
    assert "http://" in outcome.error or "must be http or https" in outcome.error
    assert (outcome.error_kind, outcome.attempts) == ("config", 0)  # final, and nothing was tried


def test_the_host_a_backslash_hides_is_never_reached(crm: LocalCrm) -> None:
    # Audit #5: urlsplit read victim.example, urllib3 connected to the host before the backslash.
    outcome = sender(allow_private_networks=True).send(
        push_request(f"http://127.0.0.1:{port_of(crm)}\\@victim.example/x")
    )

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (None, "config", 0)
    assert crm.requests == []


class FakeDns:
    """socket.getaddrinfo with scripted answers for some names; numeric hosts go to the real one."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers  # name -> one list of addresses per lookup (the last repeats)
        self.lookups: list[str] = []
        self._real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        self.lookups.append(host)
        if host not in self.answers:
            return self._real(host, port, *args, **kwargs)
        script = self.answers[host]
        addresses = script.pop(0) if len(script) > 1 else script[0]
        if not addresses:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in addresses]


def test_connection_goes_to_the_checked_address_not_a_second_lookup(
    crm: LocalCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the first answer is the one checked; any later lookup would say 10.9.9.9.
    dns = FakeDns({"rebind.example": [["127.0.0.1"], ["10.9.9.9"]]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)

    outcome = sender(allow_private_networks=True).send(push_request(f"http://rebind.example:{port_of(crm)}/hook"))

    assert outcome.http_status == 200
    assert crm.requests[0].headers["Host"] == f"rebind.example:{port_of(crm)}"
    assert dns.lookups.count("rebind.example") == 1  # the connection itself only used the number
    assert "127.0.0.1" in dns.lookups


def test_every_attempt_checks_the_destination_again(crm: LocalCrm, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first lookup fails; by the core's next attempt the name resolves to loopback, which is refused.
    dns = FakeDns({"flaky.example": [[], ["127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    guarded = sender(allow_private_networks=False)
    request = push_request(f"http://flaky.example:{port_of(crm)}/")

    first = guarded.send(request)
    second = guarded.send(request)

    assert (first.http_status, first.error_kind, first.attempts) == (None, "dns", 1)  # a lookup is a try
    assert first.error == "could not resolve host flaky.example"
    assert (second.http_status, second.error_kind, second.attempts) == (None, "destination_refused", 0)
    assert second.error == "destination refused: flaky.example resolves to a loopback address (127.0.0.1)"
    assert dns.lookups.count("flaky.example") == 2
    assert crm.requests == []


def test_a_host_with_any_private_address_is_refused(crm: LocalCrm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDns({"mixed.example": [["93.184.216.34", "127.0.0.1"]]}))

    outcome = sender(allow_private_networks=False).send(push_request(f"http://mixed.example:{port_of(crm)}/"))

    assert outcome.error == "destination refused: mixed.example resolves to a loopback address (127.0.0.1)"
    assert (outcome.error_kind, outcome.attempts) == ("destination_refused", 0)
    assert crm.requests == []


def test_a_redirect_to_an_internal_address_is_not_followed() -> None:
    metadata = "http://169.254.169.254/latest/meta-data/"
    with LocalCrm(lambda _r: CrmAnswer(302, b"", {"Location": metadata})) as redirector:
        outcome = sender(allow_private_networks=True).send(push_request(redirector.url))

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (302, "http_status", 1)
    assert status_for(outcome) == "rejected"


def test_a_refused_address_falls_through_to_the_next_checked_one(
    crm: LocalCrm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 127.0.0.2 is loopback too, but nothing listens there: the next checked address is tried.
    dns = FakeDns({"two.example": [["127.0.0.2", "127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)

    outcome = sender(allow_private_networks=True).send(push_request(f"http://two.example:{port_of(crm)}/"))

    assert (outcome.http_status, outcome.error_kind, outcome.attempts) == (200, None, 1)  # still one attempt
    assert dns.lookups.count("two.example") == 1


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        host = self.headers.get("Host", "").encode()  # echoed back, to check what we sent
        self.send_response(200)
        self.send_header("Content-Length", str(len(host)))
        self.end_headers()
        self.wfile.write(host)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_ipv6_loopback_is_refused_or_reached_by_the_flag() -> None:
    server = _V6Server(("::1", 0), _Ok)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        port = server.server_address[1]
        url = f"http://[::1]:{port}/hook"
        refused = sender(allow_private_networks=False).send(push_request(url))
        reached = sender(allow_private_networks=True).send(push_request(url))
    finally:
        server.shutdown()
        server.server_close()

    assert refused.error == "destination refused: ::1 is a loopback address (::1)"
    assert (refused.error_kind, refused.attempts) == ("destination_refused", 0)
    assert (reached.http_status, reached.response_body, reached.error_kind) == (200, f"[::1]:{port}", None)
