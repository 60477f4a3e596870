"""A signed GET verifies against the query string as it arrives on the wire, sent by urllib3 as the push sends."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import urllib3
from standardwebhooks import Webhook

from crm_push.signing import signed_content, webhook_headers

SECRET = "whsec_" + base64.b64encode(b"wire-secret-bytes-0123456789").decode()


class RawReceiver:
    """Keeps the request line's target exactly as the client wrote it (LocalCrm parses it)."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                receiver.targets.append(self.path)
                receiver.headers.append(dict(self.headers.items()))
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(self.rfile.read(length) if length else b"")
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def receiver() -> Iterator[RawReceiver]:
    server = RawReceiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.mark.parametrize(
    "query",
    ["api=v2&lead_id=L-1&name=Asha+K", "city=Zürich&note=a%2fb&empty=", "raw=a|b&quote=%22x%22"],
    ids=["plain", "non-ascii-and-lowercase-escape", "characters-urllib3-encodes"],
)
def test_a_get_verifies_with_the_query_the_receiver_saw(receiver: RawReceiver, query: str) -> None:
    url = f"{receiver.url}/hook?{query}"
    content = signed_content("GET", url, None)
    headers = webhook_headers("call-wire-1", int(time.time()), content, [SECRET])

    with urllib3.PoolManager() as http:
        http.request("GET", url, headers=headers, retries=False, timeout=5)

    seen_query = receiver.targets[0].partition("?")[2]
    Webhook(SECRET).verify(seen_query, receiver.headers[0], json_parse=False)


def test_a_post_verifies_with_the_body_the_receiver_saw(receiver: RawReceiver) -> None:
    body = '{"customer_name":"Asha K","note":"ünïcode"}'.encode()
    headers = webhook_headers("call-wire-2", int(time.time()), signed_content("POST", receiver.url, body), [SECRET])

    with urllib3.PoolManager() as http:
        http.request("POST", f"{receiver.url}/hook", body=body, headers=headers, retries=False, timeout=5)

    assert Webhook(SECRET).verify(receiver.bodies[0], receiver.headers[0])["note"] == "ünïcode"
