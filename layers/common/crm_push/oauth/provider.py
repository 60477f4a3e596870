"""``TokenSource``: the access token a push to an OAuth destination sends (contract §13).

One token per auth config for all execution environments: a per-process
memory copy in front of the shared, encrypted cache (``cache.py``). When the
token is missing, expiring (less left than min(60 s, 10 % of its life)) or was
just rejected by the CRM, exactly one environment fetches the next one, under
a conditional lease on the cache item; the others use the still-valid token
or poll briefly for the new one, within the caller's deadline.

The token request goes through the caller's ``CrmSender`` (the same SSRF
guard, DNS pinning and time budget as a push) as a form POST, 10 s at most.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm_push.config import Credential, SecretRef
from crm_push.oauth.config import ClientCredentialsAuth, JwtBearerAuth, RefreshTokenAuth, cache_key, token_url_origin
from crm_push.oauth.tokens import AccessToken, AuthFailed, token_fingerprint
from crm_push.ports import CrmSender, PushRequest, SecretResolver

if TYPE_CHECKING:
    from crm_push.oauth.cache import SharedTokenCache
    from crm_push.oauth.grants import Credentials, TokenAnswer
    from crm_push.oauth.rotation import RefreshTokenStore

log = logging.getLogger(__name__)

Auth = ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth

TOKEN_REQUEST_SECONDS = 10.0  # contract §13: the token request's own timeout, inside the attempt's
LEASE_SECONDS = 30.0  # outlives one token request (10 s) plus KMS and DynamoDB calls
DEFAULT_WAIT_SECONDS = 15.0  # how long a caller without a deadline waits for another environment's fetch
POLL_SECONDS = 0.1


@dataclass(slots=True)
class _Held:
    token: AccessToken
    gen: int  # the shared cache's generation it came from (0: not from the shared cache)


class TokenSource:
    """Access tokens for OAuth destinations; safe to share between threads, one per container.

    ``sender``: the core's CrmSender. ``cache``: the shared cache, or None for a
    per-process cache only (the CLI's ``auth --test``; or no state table or KMS
    key configured). ``refresh_tokens``: where rotated refresh tokens are kept.
    ``allow_private_networks``: ``Settings.push_allow_private_networks``, which
    also allows an ``http`` token url. Clocks are injectable for tests.
    """

    def __init__(
        self,
        sender: CrmSender,
        *,
        cache: SharedTokenCache | None = None,
        refresh_tokens: RefreshTokenStore | None = None,
        allow_private_networks: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._sender = sender
        self._cache = cache
        self._refresh_tokens = refresh_tokens
        self._allow_private_networks = allow_private_networks
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.token_requests = 0  # sent by this process: for tests and the CLI

    def token(
        self,
        auth: Auth,
        scope: str,
        *,
        secrets: SecretResolver | None,
        rejected: str | None = None,
        deadline: float | None = None,
        bot_id: str | None = None,
    ) -> AccessToken:
        """A usable access token for ``auth`` in ``scope``. Raises AuthFailed, or SecretUnavailable.

        ``secrets``: the bot's scope-checked resolver (None when it references
        nothing). ``rejected``: the token a CRM just answered 401 to; when it is
        still the cached one it is dropped and exactly one new token is fetched
        (by whichever environment gets there first). ``deadline``: monotonic
        time by which this must be done (the attempt's). ``bot_id``: the bot
        whose item holds a plaintext refresh token (needed only for that).
        """
        key = cache_key(auth, scope, bot_id)
        rejected_fp = token_fingerprint(rejected) if rejected else None
        stop = deadline if deadline is not None else self._monotonic() + DEFAULT_WAIT_SECONDS
        # Threads of one environment queue here: one of them reads, leases or fetches; the rest reuse it.
        with self._lock_for(key):
            held = self._held.get(key)
            now = self._clock()
            if held is not None and _usable(held.token, now, rejected_fp) and not held.token.needs_renewal(now):
                return held.token
            if self._cache is None:
                return self._fetch_unshared(auth, key, scope, secrets, bot_id, stop)
            return self._through_cache(auth, key, secrets, bot_id, rejected_fp, stop)

    def forget(self, auth: Auth, scope: str, bot_id: str | None = None) -> None:
        """Drop this process's copy (tests; the CLI)."""
        self._held.pop(cache_key(auth, scope, bot_id), None)

    # --- the shared cache --------------------------------------------------------------

    def _through_cache(
        self,
        auth: Auth,
        key: str,
        secrets: SecretResolver | None,
        bot_id: str | None,
        rejected_fp: str | None,
        stop: float,
    ) -> AccessToken:
        cache = self._cache
        assert cache is not None
        lease_id = uuid.uuid4().hex
        waited = False
        while True:
            now = self._clock()
            cached = cache.read(key)
            still_valid: AccessToken | None = None
            seen_gen = cached.gen if cached is not None else 0
            if cached is not None and cached.has_token and cached.fingerprint != rejected_fp:
                token = self._open(key, cached)
                if not token.needs_renewal(now):
                    self._held[key] = _Held(token, cached.gen)
                    return token
                still_valid = token if token.is_valid(now) else None
            if cache.acquire(key, lease_id, seen_gen, now, self._lease_seconds):
                try:
                    token = self._fetch(auth, key, secrets, bot_id, stop)
                except BaseException:
                    cache.release(key, lease_id)
                    raise
                gen = cache.store(key, lease_id, token)
                if gen is None:
                    log.warning("token lease ran out before the token was stored", extra={"cache_key": key[:12]})
                self._held[key] = _Held(token, gen or 0)
                return token
            if still_valid is not None:
                # Another environment is renewing it: this one is good for a while yet.
                self._held[key] = _Held(still_valid, seen_gen)
                return still_valid
            if self._monotonic() + self._poll_seconds >= stop:
                raise AuthFailed(
                    "another execution environment is fetching this auth config's token and it was not ready "
                    "before this attempt's deadline",
                    transient=True,
                )
            if not waited:
                log.info("waiting for another environment's token fetch", extra={"cache_key": key[:12]})
                waited = True
            self._sleep(self._poll_seconds * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret

    def _open(self, key: str, cached: Any) -> AccessToken:
        """The cached token in clear: this process's copy when it is the same generation, else a KMS decrypt."""
        held = self._held.get(key)
        if held is not None and held.gen == cached.gen and held.token.fingerprint == cached.fingerprint:
            return held.token
        assert self._cache is not None
        return self._cache.decrypt(key, cached)

    def _fetch_unshared(
        self, auth: Auth, key: str, scope: str, secrets: SecretResolver | None, bot_id: str | None, stop: float
    ) -> AccessToken:
        token = self._fetch(auth, key, secrets, bot_id, stop)
        self._held[key] = _Held(token, 0)
        return token

    # --- one token request -------------------------------------------------------------

    def _fetch(
        self, auth: Auth, key: str, secrets: SecretResolver | None, bot_id: str | None, stop: float
    ) -> AccessToken:
        from crm_push.oauth.grants import build_token_request, read_token_answer

        origin = token_url_origin(auth.token_url)
        if not auth.token_url.lower().startswith("https://") and not self._allow_private_networks:
            raise AuthFailed(
                f"token_url {origin} must be https (http only where private networks are allowed)",
                transient=False,
                error_kind="config",
            )
        creds = self._credentials(auth, secrets, bot_id)
        issued_at = self._clock()
        request = build_token_request(auth, creds, issued_at)
        limit = min(stop, self._monotonic() + TOKEN_REQUEST_SECONDS)
        started = self._monotonic()
        self.token_requests += 1
        outcome = self._sender.send(_push_request(request.url, request.body, request.headers, origin), deadline=limit)
        log.info(
            "token request answered",
            extra={
                "cache_key": key[:12],
                "grant": auth.type,
                "token_endpoint": origin,
                "http_status": outcome.http_status,
                "error_kind": outcome.error_kind,
                "duration_ms": int((self._monotonic() - started) * 1000),
            },
        )
        answer = read_token_answer(outcome, auth.token_url)
        if isinstance(auth, RefreshTokenAuth) and answer.refresh_token and answer.refresh_token != creds.refresh_token:
            self._keep_rotated(auth, bot_id, creds, answer)
        return AccessToken(
            access_token=answer.access_token,
            token_type=answer.token_type,
            issued_at=issued_at,
            expires_at=issued_at + answer.expires_in,
            instance_url=answer.instance_url,
            api_domain=answer.api_domain,
            scope=answer.scope,
        )

    def _credentials(self, auth: Auth, secrets: SecretResolver | None, bot_id: str | None) -> Credentials:
        from crm_push.oauth.grants import Credentials

        def value(credential: Credential, *, fresh: bool = False) -> str:
            if not isinstance(credential, SecretRef):
                return credential
            if secrets is None:
                raise AuthFailed("the auth config references a secret, but no resolver was given", transient=False)
            return secrets.resolve(credential, fresh=fresh)

        client_id = value(auth.client_id)
        if isinstance(auth, JwtBearerAuth):
            return Credentials(client_id, private_key=value(auth.private_key))
        if isinstance(auth, ClientCredentialsAuth):
            return Credentials(client_id, client_secret=value(auth.client_secret))
        # A rotated refresh token may have been written by another environment minutes ago:
        # read it past any cache (one store read per token lifetime).
        if isinstance(auth.refresh_token, SecretRef):
            refresh = value(auth.refresh_token, fresh=True)
        else:
            refresh = auth.refresh_token
            if bot_id is not None and self._refresh_tokens is not None:
                refresh = self._refresh_tokens.current_in_bot(bot_id) or refresh
        return Credentials(client_id, client_secret=value(auth.client_secret), refresh_token=refresh)

    def _keep_rotated(
        self, auth: RefreshTokenAuth, bot_id: str | None, creds: Credentials, answer: TokenAnswer
    ) -> None:
        """Write the new refresh token where the old one lives, before the new access token is used."""
        assert answer.refresh_token is not None
        if self._refresh_tokens is None:
            raise AuthFailed(
                "the token endpoint rotated the refresh_token and there is nowhere to keep it",
                transient=False,
                error_code="refresh_token_not_kept",
            )
        if isinstance(auth.refresh_token, SecretRef):
            self._refresh_tokens.save_reference(auth.refresh_token, answer.refresh_token)
        else:
            if bot_id is None:
                raise AuthFailed(
                    "the token endpoint rotated a plaintext refresh_token and no bot was named to keep it in",
                    transient=False,
                    error_code="refresh_token_not_kept",
                )
            self._refresh_tokens.save_in_bot(bot_id, creds.refresh_token or "", answer.refresh_token)
        log.info("rotated refresh token kept", extra={"grant": auth.type})

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_lock:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock


def _usable(token: AccessToken, now: float, rejected_fp: str | None) -> bool:
    return token.is_valid(now) and (rejected_fp is None or token.fingerprint != rejected_fp)


def _push_request(url: str, body: bytes, headers: dict[str, str], origin: str) -> PushRequest:
    """The token request as the sender's PushRequest (the sender reads answers whole up to 64 KB)."""
    return PushRequest(call_id="oauth-token", method="POST", url=url, headers=headers, body=body, recorded_url=origin)
