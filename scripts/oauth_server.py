"""A real OAuth 2.0 authorization server (Authlib) plus a CRM that accepts only its tokens, for tests and `make run`.

Why Authlib: it is a complete, maintained RFC 6749 / RFC 7523 server whose
grants (client credentials, refresh token with rotation, JWT bearer) check
client authentication, assertions and refresh tokens the way a real
authorization server does, in Python, in one process we control: the tests
can count token requests, revoke tokens and make the endpoint fail.
(npm ``oauth2-mock-server`` has no JWT bearer grant and no rate limit hooks.)

    python -m scripts.oauth_server --config server.json [--port 0]

prints ``READY http://127.0.0.1:<port>`` once it listens. The config (JSON)::

    {"clients": [{"client_id": "...", "client_secret": "...", "grant_types": [...],
                  "auth_method": "client_secret_basic" | "client_secret_post",
                  "public_key": "<PEM, for jwt-bearer>"}],
     "refresh_tokens": [{"token": "...", "client_id": "...", "scope": "..."}],
     "expires_in": 3600, "rotate_refresh_tokens": true, "audience": "https://login.example",
     "answer_extra": {"instance_url": "...", "api_domain": "..."},  # "{server}" stands for this server's origin
     "rate_limit": {"max_tokens": 10, "window_seconds": 600}}

Endpoints: ``POST /token``; the CRM ``POST /crm/records`` (200 with a valid
Bearer token, else 401); ``GET /admin/stats``; ``POST /admin/revoke``
(``{"access_token": ...}`` or ``{}`` for all); ``POST /admin/fail``
(``{"status": 503, "count": 2}`` or ``{"hang_seconds": 12, "count": 1}``,
or ``{"error": "invalid_grant", "count": 1}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import threading
import time
from collections import deque
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7523 import JWTBearerGrant
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server


class Client(ClientMixin):  # type: ignore[misc]  # authlib ships no type hints
    def __init__(self, spec: dict[str, Any]) -> None:
        self.client_id: str = spec["client_id"]
        self.client_secret: str = spec.get("client_secret", "")
        self.grant_types: list[str] = spec.get("grant_types", ["client_credentials"])
        self.auth_method: str = spec.get("auth_method", "client_secret_basic")
        self.public_key: str | None = spec.get("public_key")
        self.scope: str = spec.get("scope", "")

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class Token(TokenMixin):  # type: ignore[misc]  # authlib ships no type hints
    def __init__(self, client_id: str, scope: str, access_token: str, refresh_token: str | None, expires_in: int):
        self.client_id = client_id
        self.scope = scope
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.expires_in = expires_in
        self.issued_at = time.time()
        self.revoked = False
        self.refresh_revoked = False

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str:
        return self.client_id

    def get_client(self) -> ClientMixin:
        return STATE.clients[self.client_id]


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: dict[str, Client] = {}
        self.by_access: dict[str, Token] = {}
        self.by_refresh: dict[str, Token] = {}
        self.token_requests = 0
        self.by_grant: dict[str, int] = {}
        self.issued = 0
        self.refused_rate_limited = 0
        self.crm_accepted = 0
        self.crm_rejected = 0
        self.issued_times: deque[float] = deque()
        self.issued_secrets: list[str] = []  # every access and refresh token issued: for the tests' leak checks
        self.failures: list[dict[str, Any]] = []
        self.last_assertion: dict[str, Any] = {}
        self.last_token_request: dict[str, Any] = {}
        self.config: dict[str, Any] = {}


STATE = State()


def _save_token(token: dict[str, Any], req: Any) -> None:
    client_id = req.client.get_client_id()
    record = Token(
        client_id,
        token.get("scope", ""),
        token["access_token"],
        token.get("refresh_token"),
        int(token.get("expires_in", 3600)),
    )
    # "{server}": this server's own origin, so a url built from instance_url can reach its CRM endpoint.
    origin = request.host_url.rstrip("/")
    extra = STATE.config.get("answer_extra", {})
    token.update({name: value.replace("{server}", origin) for name, value in extra.items()})
    with STATE.lock:
        STATE.issued_secrets.append(record.access_token)
        if record.refresh_token:
            STATE.issued_secrets.append(record.refresh_token)
        STATE.by_access[record.access_token] = record
        if record.refresh_token:
            STATE.by_refresh[record.refresh_token] = record
        STATE.issued += 1
        STATE.issued_times.append(time.monotonic())


class RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]  # authlib ships no type hints
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        token = STATE.by_refresh.get(refresh_token)
        return token if token is not None and not token.refresh_revoked else None

    def authenticate_user(self, refresh_token: Token) -> str:
        return refresh_token.client_id

    def revoke_old_credential(self, refresh_token: Token) -> None:
        if self.INCLUDE_NEW_REFRESH_TOKEN:
            refresh_token.refresh_revoked = True


class ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]  # authlib ships no type hints
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class JwtBearer(JWTBearerGrant):  # type: ignore[misc]  # authlib ships no type hints
    def resolve_issuer_client(self, issuer: str) -> Client | None:
        return STATE.clients.get(issuer)

    def resolve_client_public_key(self, client: Client) -> Any:
        return client.public_key

    def authenticate_user(self, subject: str) -> str:
        return subject

    def get_audiences(self) -> list[str]:
        return [STATE.config.get("audience", "https://login.example.test")]

    def has_granted_permission(self, client: Client, user: str) -> bool:
        return True

    def extract_assertion(self, assertion: str) -> Any:
        headers, claims = super().extract_assertion(assertion)
        STATE.last_assertion = {"headers": dict(headers), "claims": dict(claims)}
        return headers, claims


class Validator(BearerTokenValidator):  # type: ignore[misc]  # authlib ships no type hints
    def authenticate_token(self, token_string: str) -> Token | None:
        return STATE.by_access.get(token_string)


def create_app(config: dict[str, Any]) -> Flask:
    STATE.config = config
    for spec in config.get("clients", []):
        STATE.clients[spec["client_id"]] = Client(spec)
    for spec in config.get("refresh_tokens", []):
        record = Token(spec["client_id"], spec.get("scope", ""), "seed-" + secrets.token_hex(8), spec["token"], 0)
        STATE.by_refresh[spec["token"]] = record
    app = Flask("oauth_server")
    expires_in = int(config.get("expires_in", 3600))
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
        "client_credentials": expires_in,
        "refresh_token": expires_in,
        JWTBearerGrant.GRANT_TYPE: expires_in,
    }
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    server = AuthorizationServer(app, query_client=STATE.clients.get, save_token=_save_token)
    RefreshTokenGrant.INCLUDE_NEW_REFRESH_TOKEN = bool(config.get("rotate_refresh_tokens", False))
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(RefreshTokenGrant)
    server.register_grant(JwtBearer)
    protect = ResourceProtector()
    protect.register_token_validator(Validator())

    @app.post("/token")
    def token() -> Response:
        with STATE.lock:
            STATE.token_requests += 1
            grant = request.form.get("grant_type", "")
            STATE.by_grant[grant] = STATE.by_grant.get(grant, 0) + 1
            STATE.last_token_request = {
                "form_keys": sorted(request.form.keys()),
                "authorization_scheme": (request.headers.get("Authorization") or " ").split(" ")[0],
                "content_type": request.headers.get("Content-Type"),
            }
            failure = STATE.failures[0] if STATE.failures else None
            if failure is not None:
                failure["count"] -= 1
                if failure["count"] <= 0:
                    STATE.failures.pop(0)
            limit = config.get("rate_limit")
            if limit and failure is None:
                now = time.monotonic()
                while STATE.issued_times and STATE.issued_times[0] < now - float(limit["window_seconds"]):
                    STATE.issued_times.popleft()
                if len(STATE.issued_times) >= int(limit["max_tokens"]):
                    STATE.refused_rate_limited += 1
                    # As Zoho answers: an error, and the description a human would read.
                    return Response(
                        json.dumps({"error": "Access Denied", "error_description": "too many requests"}),
                        400,
                        {"Content-Type": "application/json"},
                    )
        if failure is not None:
            if failure.get("hang_seconds"):
                time.sleep(float(failure["hang_seconds"]))
            if failure.get("error"):
                # Like servers that echo what they got: the description quotes the request body.
                body = {
                    "error": failure["error"],
                    "error_description": f"bad request: {request.get_data(as_text=True)}",
                }
                return Response(json.dumps(body), int(failure.get("status", 400)), {"Content-Type": "application/json"})
            return Response("<html>unavailable</html>", int(failure.get("status", 503)), {"Content-Type": "text/html"})
        response: Response = server.create_token_response()
        return response

    @app.post("/crm/records")
    def crm_records() -> Response:
        header = request.headers.get("Authorization", "")
        record = STATE.by_access.get(header[7:]) if header.startswith("Bearer ") else None
        if record is None or record.is_revoked() or record.is_expired():
            with STATE.lock:
                STATE.crm_rejected += 1
            return Response(json.dumps({"error": "INVALID_SESSION_ID"}), 401, {"Content-Type": "application/json"})
        with STATE.lock:
            STATE.crm_accepted += 1
        return jsonify({"ok": True, "client_id": record.client_id})

    @app.get("/admin/stats")
    def stats() -> Response:
        with STATE.lock:
            return jsonify(
                token_requests=STATE.token_requests,
                by_grant=STATE.by_grant,
                issued=STATE.issued,
                refused_rate_limited=STATE.refused_rate_limited,
                crm_accepted=STATE.crm_accepted,
                crm_rejected=STATE.crm_rejected,
                last_assertion=STATE.last_assertion,
                last_token_request=STATE.last_token_request,
                live_refresh_tokens=sorted(t for t, r in STATE.by_refresh.items() if not r.refresh_revoked),
                issued_secrets=STATE.issued_secrets,
            )

    @app.post("/admin/revoke")
    def revoke() -> Response:
        wanted = (request.get_json(silent=True) or {}).get("access_token")
        with STATE.lock:
            for value, record in STATE.by_access.items():
                if wanted is None or value == wanted:
                    record.revoked = True
        return jsonify(ok=True)

    @app.post("/admin/fail")
    def fail() -> Response:
        with STATE.lock:
            STATE.failures.append(dict(request.get_json(force=True)))
        return jsonify(ok=True)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        config = json.load(handle)
    server = make_server(args.host, args.port, create_app(config), threaded=True)
    print(f"READY http://{args.host}:{server.server_port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
