"""A moto server that applies one request at a time, like DynamoDB's per-item atomicity.

    python -m scripts.serial_moto     # prints its port, serves until terminated

Real DynamoDB applies a conditional write atomically per item: of N racing
conditional claims exactly one wins. moto does not: its ``update_item`` reads
the item, evaluates the condition and mutates it in place with no lock, and
its threaded server runs each request on its own thread, so two racing claims
can both pass (measured: 8 threads racing for one item, 200 trials, 22 to 29
trials had more than one winner). Serialising every request is strictly
stronger than DynamoDB's guarantee, and nothing weaker: tests of "pushed at
most once" then test our claim, not moto's luck. Run in a process of its own,
its CPU does not compete with the code under test for one GIL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


class OneRequestAtATime:
    """WSGI middleware: the app serves one request at a time, start to end (body included)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            response = self.app(environ, start_response)
            try:
                return list(response)
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
