"""A real HTTP server standing in for a customer's CRM, for `make run` and the tests.

It records every request it receives (method, path, query, headers, raw body)
and answers with a scripted response, so a test can assert the exact bytes
the push sent and make the CRM misbehave on purpose.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CrmAnswer:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay_seconds: float = 0.0


Responder = Callable[[ReceivedRequest], CrmAnswer]


class LocalCrm:
    """``with LocalCrm() as crm: ... crm.url ... crm.requests``"""

    def __init__(self, responder: Responder | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[ReceivedRequest] = []
        self.responder: Responder = responder or (lambda _req: CrmAnswer())
        self._lock = threading.Lock()
        crm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK and every request costs ~40 ms more than the responder asks.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                received = ReceivedRequest(
                    self.command,
                    parts.path,
                    dict(parse_qsl(parts.query, keep_blank_values=True)),
                    dict(self.headers.items()),
                    body,
                )
                with crm._lock:
                    crm.requests.append(received)
                answer = crm.responder(received)
                if answer.delay_seconds:
                    time.sleep(answer.delay_seconds)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    # The push gave up first (its 10 s budget, a hanging-CRM scene): nothing to answer to.
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        # A short poll interval: stop() (every test's teardown) waits up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-crm", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        return f"http://{host}:{port}"

    def start(self) -> LocalCrm:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalCrm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
