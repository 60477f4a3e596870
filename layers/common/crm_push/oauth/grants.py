"""Token requests built and token answers read (RFC 6749 §4.4 and §6, RFC 7523), HTTP left to the sender.

oauthlib builds the form bodies (its client classes and ``prepare_token_request``)
and reads successful answers (``parse_token_response``: JSON, or the form
encoding some old servers use); PyJWT signs the RS256 assertion. Both are
imported inside the functions that need them, so a push without OAuth never
loads them.

Error answers are read here, not by oauthlib: its exceptions carry the
endpoint's ``error_description``, which servers fill with what they were sent.
Only the ``error`` code is kept, and only when it looks like one.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

from crm_push.config import check_push_url
from crm_push.errors import ConfigError
from crm_push.oauth.config import ClientCredentialsAuth, JwtBearerAuth, RefreshTokenAuth, token_url_origin
from crm_push.oauth.tokens import DEFAULT_LIFETIME_SECONDS, AuthFailed
from crm_push.ports import SendOutcome

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 180  # contract §13; Salesforce refuses an assertion that lives longer than 3 minutes
# RFC 6749 §5.2: error codes are printable ASCII without '"' and '\'; ours are shorter than 64.
_ERROR_CODE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$")
_MAX_LIFETIME_SECONDS = 366 * 86400  # a longer expires_in is a server's mistake: cap what we believe
_TRANSIENT_STATUSES = frozenset({408, 429})

Auth = ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth


@dataclass(frozen=True, slots=True)
class Credentials:
    """The credential fields of one auth config, references resolved. Never log an instance's values."""

    client_id: str = field(repr=False)
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)

    def values(self) -> frozenset[str]:
        """For scrubbing: every credential value this request carries."""
        found = (self.client_id, self.client_secret, self.refresh_token, self.private_key)
        return frozenset(value for value in found if value)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A form POST to the token endpoint. ``body`` and ``headers`` hold credentials."""

    url: str
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """What a token endpoint granted. ``access_token`` and ``refresh_token`` are credentials."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    refresh_token: str | None = field(default=None, repr=False)
    instance_url: str | None = None
    api_domain: str | None = None
    scope: str | None = None


def basic_client_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret each form-urlencoded, joined by ':', then base64."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def build_token_request(auth: Auth, creds: Credentials, now: float) -> TokenRequest:
    """The token request for ``auth``; ``now`` (epoch seconds) dates a JWT assertion."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        "Cache-Control": "no-store",
    }
    if isinstance(auth, JwtBearerAuth):
        body = _jwt_bearer_body(auth, creds, now)
    else:
        body = _client_grant_body(auth, creds)
        if auth.client_auth == "basic":
            headers["Authorization"] = basic_client_auth(creds.client_id, creds.client_secret or "")
    return TokenRequest(auth.token_url, body.encode("ascii"), headers)


def _client_grant_body(auth: ClientCredentialsAuth | RefreshTokenAuth, creds: Credentials) -> str:
    from oauthlib.oauth2 import BackendApplicationClient, WebApplicationClient

    in_body = auth.client_auth == "body"
    # Credentials in the body only for client_auth "body" (RFC 6749 §2.3.1 discourages it; some servers need it).
    secret_fields: dict[str, Any] = {"client_secret": creds.client_secret} if in_body else {}
    if isinstance(auth, ClientCredentialsAuth):
        params: dict[str, Any] = {**(auth.extra or {})}
        if auth.audience:
            params["audience"] = auth.audience
        if auth.resource:
            params["resource"] = auth.resource
        body: str = BackendApplicationClient(creds.client_id).prepare_request_body(
            scope=auth.scope, include_client_id=in_body, **secret_fields, **params
        )
        return body
    client = WebApplicationClient(creds.client_id)
    if in_body:
        secret_fields["client_id"] = creds.client_id
    refresh: str = client.prepare_refresh_body(refresh_token=creds.refresh_token, scope=auth.scope, **secret_fields)
    return refresh


def _jwt_bearer_body(auth: JwtBearerAuth, creds: Credentials, now: float) -> str:
    """RFC 7523 §2.1: grant_type and assertion only (the assertion authenticates the client)."""
    import jwt
    from oauthlib.oauth2.rfc6749.parameters import prepare_token_request

    issued = int(now)
    claims = {
        "iss": creds.client_id,
        "sub": auth.subject,
        "aud": auth.audience,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
        "jti": uuid.uuid4().hex,  # RFC 7523 §3: lets the server refuse a replayed assertion
    }
    headers = {"kid": auth.key_id} if auth.key_id else None
    try:
        assertion = jwt.encode(claims, creds.private_key or "", algorithm="RS256", headers=headers)
    except Exception as exc:  # PyJWT and cryptography raise several types; none may quote the key
        raise AuthFailed(
            f"private_key cannot sign an RS256 assertion ({type(exc).__name__}): it must be an RSA private key in PEM",
            transient=False,
            error_kind="config",
        ) from None
    body: str = prepare_token_request(JWT_BEARER_GRANT, assertion=assertion, include_client_id=False)
    return body


def read_token_answer(outcome: SendOutcome, token_url: str) -> TokenAnswer:
    """What the token endpoint's answer (or silence) comes to; AuthFailed when it is no token.

    Transient: no answer, 408, 429, 5xx. Final: any other status, a redirect
    (never followed), or a 2xx that holds no usable token.
    """
    origin = token_url_origin(token_url)
    status = outcome.http_status
    if status is None:
        if outcome.error_kind == "destination_refused":
            raise AuthFailed(
                f"token endpoint {origin} refused: {outcome.error or 'not an allowed destination'}",
                transient=False,
                error_kind="destination_refused",
            )
        if outcome.attempts == 0 and outcome.error_kind is None:
            raise AuthFailed(f"token endpoint {origin} not asked: no time left in this attempt", transient=True)
        raise AuthFailed(
            f"token endpoint {origin} did not answer: {outcome.error or outcome.error_kind or 'no answer'}",
            transient=True,
        )
    if not 200 <= status < 300:
        code = _error_code(outcome.response_body)
        transient = status in _TRANSIENT_STATUSES or status >= 500
        what = f"answered {status}" + (f" {code}" if code else "")
        if 300 <= status < 400:
            what += " (a redirect: not followed; is token_url the token endpoint itself?)"
        raise AuthFailed(f"token endpoint {origin} {what}", transient=transient, error_code=code, http_status=status)
    return _granted(outcome.response_body, origin, status)


def _error_code(body: str) -> str | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    code = document.get("error") if isinstance(document, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else None


def _granted(body: str, origin: str, status: int) -> TokenAnswer:
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error
    from oauthlib.oauth2.rfc6749.parameters import parse_token_response

    def refused(why: str, code: str | None = None) -> AuthFailed:
        return AuthFailed(
            f"token endpoint {origin} answered {status} but {why}", transient=False, error_code=code, http_status=status
        )

    try:
        # scope=None: a granted scope that differs from the asked one is the server's call, not an error.
        params = dict(parse_token_response(body, scope=None))
    except OAuth2Error:
        # oauthlib's own code ("missing_token") is not the endpoint's: only the endpoint's is reported.
        raise refused("with an error instead of a token", _error_code(body)) from None
    except (ValueError, TypeError, Warning) as exc:
        raise refused(f"with no usable token ({type(exc).__name__})") from None
    access_token = params.get("access_token")
    if not isinstance(access_token, str) or not access_token or re.search(r"[\x00-\x20\x7f]", access_token):
        raise refused("with no usable access_token")
    token_type = params.get("token_type") or "Bearer"
    if not isinstance(token_type, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,40}", token_type):
        raise refused("with an unusable token_type")
    expires_in = params.get("expires_in")
    if expires_in is None and _raw_expires_in(body) is not None:
        expires_in = 0  # oauthlib drops an expires_in of 0 as if absent; absent means an hour
    lifetime = DEFAULT_LIFETIME_SECONDS if expires_in is None else int(expires_in)
    if lifetime <= 0:
        raise refused("with a token that has already expired (expires_in <= 0)")
    refresh = params.get("refresh_token")
    scope = params.get("scope")
    return TokenAnswer(
        access_token=access_token,
        token_type=token_type,
        expires_in=min(lifetime, _MAX_LIFETIME_SECONDS),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        instance_url=_origin_field(params.get("instance_url"), "instance_url", refused),
        api_domain=_origin_field(params.get("api_domain"), "api_domain", refused),
        scope=" ".join(scope) if isinstance(scope, list) else scope if isinstance(scope, str) else None,
    )


def _raw_expires_in(body: str) -> Any:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document.get("expires_in") if isinstance(document, dict) else None


def _origin_field(value: Any, name: str, refused: Any) -> str | None:
    """``instance_url`` / ``api_domain``: an http(s) base the url template may begin with (SSRF-checked later)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise refused(f"its {name} is not text")
    try:
        check_push_url(value)
    except ConfigError:
        raise refused(f"its {name} is not an http(s) url") from None
    return value.rstrip("/")
