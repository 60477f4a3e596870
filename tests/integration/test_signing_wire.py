"""Signed pushes verified by the Standard Webhooks reference receiver against what arrived on the wire."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import boto3
import pytest
import urllib3
from standardwebhooks import Webhook

from crm_push.adapters.crm_http import CrmHttpSender
from crm_push.ports import PushRequest
from crm_push.push_url import parse_push_url
from crm_push.signing import signed_content, webhook_headers
from tests.conftest import REGION, insert_event

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


@pytest.mark.parametrize("configured", ["/hook?src=bot&city=Zürich", "/hook", "/h%c3%a9?x=a|b"])
def test_a_get_the_sender_sends_verifies_with_the_query_the_receiver_saw(
    receiver: RawReceiver, configured: str
) -> None:
    # What the function does: one parse of the url, the payload appended, signed, and sent by CrmHttpSender.
    url = parse_push_url(receiver.url + configured).request_url("lead=L-1&name=Asha K&note=50% off@noon")
    headers = {"Idempotency-Key": "call-wire-3"}
    headers.update(webhook_headers("call-wire-3", int(time.time()), signed_content("GET", url, None), [SECRET]))

    outcome = CrmHttpSender(allow_private_networks=True).send(PushRequest("call-wire-3", "GET", url, headers, None, ""))

    assert outcome.http_status == 204
    seen_query = receiver.targets[0].partition("?")[2]
    assert seen_query.endswith("lead=L-1&name=Asha%20K&note=50%25%20off%40noon")
    Webhook(SECRET).verify(seen_query, receiver.headers[0], json_parse=False)


def test_a_post_verifies_with_the_body_the_receiver_saw(receiver: RawReceiver) -> None:
    body = '{"customer_name":"Asha K","note":"ünïcode"}'.encode()
    headers = webhook_headers("call-wire-2", int(time.time()), signed_content("POST", receiver.url, body), [SECRET])

    with urllib3.PoolManager() as http:
        http.request("POST", f"{receiver.url}/hook", body=body, headers=headers, retries=False, timeout=5)

    assert Webhook(SECRET).verify(receiver.bodies[0], receiver.headers[0])["note"] == "ünïcode"


def test_the_function_signs_its_push_with_every_secret_of_a_rotation(
    stack: Any, aws: Any, handler: Any, sample_call: dict[str, Any], sample_bot: dict[str, Any]
) -> None:
    # Given a bot rotating from a plaintext secret to one kept in Secrets Manager
    next_secret = "whsec_" + base64.b64encode(b"next-wire-secret-bytes-0123456789").decode()
    scope = sample_bot.get("tenant_id") or sample_bot["bot_id"]  # a reference resolves only in its scope (§12)
    name = f"post-call-push/{scope}/sign-{sample_call['call_id']}"
    boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws.moto).create_secret(
        Name=name, SecretString=next_secret
    )
    sample_bot["post_call_push"]["signing_secret"] = [SECRET, {"secret": name}]
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)

    # When the function pushes the call
    handler(insert_event(sample_call))

    # Then a receiver holding either secret verifies the body it got, keyed by the call
    received = stack.crm.requests[0]
    assert received.headers["webhook-id"] == received.headers["Idempotency-Key"] == sample_call["call_id"]
    assert Webhook(SECRET).verify(received.body, received.headers)["call_id"] == sample_call["call_id"]
    Webhook(next_secret).verify(received.body, received.headers)
    assert stack.get_call(sample_call["call_id"])["post_call_push_result"]["status"] == "ok"
