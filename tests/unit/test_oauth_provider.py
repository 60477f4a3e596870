"""TokenSource decisions with a fake clock: when a token is reused, renewed, dropped, waited for.

The shared cache here is an in-memory stand-in with the same contract as
``SharedTokenCache`` (conditional lease on the generation); the real one runs
against DynamoDB Local in tests/integration/test_oauth_shared_cache.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from crm_push.oauth.cache import CachedToken
from crm_push.oauth.config import parse_auth_config
from crm_push.oauth.provider import TokenSource
from crm_push.oauth.tokens import AccessToken, AuthFailed
from crm_push.ports import PushRequest, SendOutcome

AUTH = parse_auth_config(
    {
        "type": "oauth2_client_credentials",
        "token_url": "https://login.example.com/token",
        "client_id": "c",
        "client_secret": "s",
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.mono = 100.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class Endpoint:
    def __init__(self, expires_in: int = 3600) -> None:
        self.requests: list[PushRequest] = []
        self.expires_in = expires_in
        self.answers: list[SendOutcome] = []

    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)
        body = {"access_token": f"at-{len(self.requests)}", "expires_in": self.expires_in}
        return SendOutcome(200, json.dumps(body))


class MemoryCache:
    """Same contract as SharedTokenCache; ``decrypt`` counts KMS calls."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.decrypts = 0
        self.releases = 0

    def read(self, key: str) -> CachedToken | None:
        item = self.items.get(key)
        if item is None:
            return None
        token: AccessToken | None = item.get("token")
        return CachedToken(
            gen=item.get("gen", 0),
            fingerprint=token.fingerprint if token else None,
            ciphertext=b"x" if token else None,
            data_key=b"k" if token else None,
            token_type="Bearer",
            issued_at=token.issued_at if token else 0,
            expires_at=token.expires_at if token else 0,
            instance_url=None,
            api_domain=None,
            scope=None,
            lease_id=item.get("lease_id"),
            lease_until=item.get("lease_until"),
        )

    def decrypt(self, key: str, cached: CachedToken) -> AccessToken:
        self.decrypts += 1
        token: AccessToken = self.items[key]["token"]
        return token

    def acquire(self, key: str, lease_id: str, seen_gen: int, now: float, lease_seconds: float) -> bool:
        item = self.items.setdefault(key, {})
        if item.get("lease_until") is not None and item["lease_until"] >= now:
            return False
        if item.get("gen", 0) != seen_gen:
            return False
        item.update(lease_id=lease_id, lease_until=now + lease_seconds)
        return True

    def release(self, key: str, lease_id: str) -> None:
        self.releases += 1
        item = self.items[key]
        if item.get("lease_id") == lease_id:
            item.pop("lease_id")
            item.pop("lease_until")

    def store(self, key: str, lease_id: str, token: AccessToken) -> int | None:
        item = self.items[key]
        if item.get("lease_id") != lease_id:
            return None
        item.pop("lease_id")
        item.pop("lease_until")
        item["token"] = token
        item["gen"] = item.get("gen", 0) + 1
        return int(item["gen"])


def source_for(endpoint: Endpoint, clock: Clock, cache: MemoryCache | None = None) -> TokenSource:
    return TokenSource(
        endpoint,
        cache=cache,  # type: ignore[arg-type]
        clock=clock.time,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )


def test_a_token_is_reused_until_its_renewal_window() -> None:
    clock, endpoint, cache = Clock(), Endpoint(expires_in=3600), MemoryCache()
    source = source_for(endpoint, clock, cache)
    first = source.token(AUTH, "t", secrets=None)
    assert first.authorization == "Bearer at-1"
    clock.now += 3600 - 61  # 61 s left: min(60 s, 360 s) not yet reached
    assert source.token(AUTH, "t", secrets=None) is first
    assert cache.decrypts == 0  # this process's copy served it
    clock.now += 2  # 59 s left
    renewed = source.token(AUTH, "t", secrets=None)
    assert renewed.access_token == "at-2"
    assert len(endpoint.requests) == 2


def test_a_short_token_is_renewed_at_ten_percent_of_its_life() -> None:
    clock, endpoint = Clock(), Endpoint(expires_in=100)
    source = source_for(endpoint, clock, MemoryCache())
    source.token(AUTH, "t", secrets=None)
    clock.now += 89  # 11 s left of 100: more than 10 %
    assert source.token(AUTH, "t", secrets=None).access_token == "at-1"
    clock.now += 2  # 9 s left
    assert source.token(AUTH, "t", secrets=None).access_token == "at-2"


def test_a_rejected_token_is_dropped_once_and_a_stale_rejection_is_ignored() -> None:
    clock, endpoint = Clock(), Endpoint()
    source = source_for(endpoint, clock, MemoryCache())
    first = source.token(AUTH, "t", secrets=None)
    second = source.token(AUTH, "t", secrets=None, rejected=first.access_token)
    assert second.access_token == "at-2"
    # Another request rejected with the old token (it was in flight): the new token is used, no fetch.
    assert source.token(AUTH, "t", secrets=None, rejected=first.access_token) is second
    assert len(endpoint.requests) == 2


def test_another_environments_token_is_decrypted_once_then_held() -> None:
    clock, cache = Clock(), MemoryCache()
    one, two = Endpoint(), Endpoint()
    token = source_for(one, clock, cache).token(AUTH, "t", secrets=None)
    other = source_for(two, clock, cache)
    assert other.token(AUTH, "t", secrets=None).access_token == token.access_token
    assert other.token(AUTH, "t", secrets=None).access_token == token.access_token
    assert (len(two.requests), cache.decrypts) == (0, 1)


def test_during_another_environments_renewal_the_still_valid_token_is_used() -> None:
    clock, cache = Clock(), MemoryCache()
    source_for(Endpoint(), clock, cache).token(AUTH, "t", secrets=None)
    clock.now += 3600 - 30  # in the renewal window, still valid
    key = next(iter(cache.items))
    cache.items[key].update(lease_id="someone-else", lease_until=clock.now + 30)
    endpoint = Endpoint()
    token = source_for(endpoint, clock, cache).token(AUTH, "t", secrets=None)
    assert token.access_token == "at-1"
    assert endpoint.requests == []


def test_with_no_valid_token_it_waits_for_the_fetch_in_flight_and_gives_up_at_the_deadline() -> None:
    clock, cache = Clock(), MemoryCache()
    key_source = source_for(Endpoint(), clock, cache)
    key_source.token(AUTH, "t", secrets=None)
    key = next(iter(cache.items))
    clock.now += 4000  # expired
    cache.items[key].update(lease_id="someone-else", lease_until=clock.now + 30)
    endpoint = Endpoint()
    waiting = source_for(endpoint, clock, cache)
    started = clock.mono
    with pytest.raises(AuthFailed) as failure:
        waiting.token(AUTH, "t", secrets=None, deadline=clock.mono + 2)
    assert failure.value.transient
    assert 1.5 < clock.mono - started <= 2.1
    assert endpoint.requests == []


def test_waiting_ends_when_the_other_environment_stores_its_token() -> None:
    clock, cache = Clock(), MemoryCache()
    source_for(Endpoint(), clock, cache).token(AUTH, "t", secrets=None)
    key = next(iter(cache.items))
    clock.now += 4000
    cache.items[key].update(lease_id="other", lease_until=clock.now + 30)
    polls = 0

    def sleep(seconds: float) -> None:
        nonlocal polls
        polls += 1
        clock.sleep(seconds)
        if polls == 3:  # the other environment finishes its fetch
            cache.store(
                key,
                "other",
                replace(
                    cache.items[key]["token"], access_token="at-new", issued_at=clock.now, expires_at=clock.now + 3600
                ),
            )

    endpoint = Endpoint()
    waiting = TokenSource(endpoint, cache=cache, clock=clock.time, monotonic=clock.monotonic, sleep=sleep)  # type: ignore[arg-type]
    assert waiting.token(AUTH, "t", secrets=None, deadline=clock.mono + 5).access_token == "at-new"
    assert endpoint.requests == []


def test_a_failed_fetch_gives_the_lease_back_and_raises() -> None:
    clock, cache, endpoint = Clock(), MemoryCache(), Endpoint()
    endpoint.answers.append(SendOutcome(400, json.dumps({"error": "invalid_client"})))
    source = source_for(endpoint, clock, cache)
    with pytest.raises(AuthFailed) as failure:
        source.token(AUTH, "t", secrets=None)
    assert failure.value.error_code == "invalid_client"
    assert cache.releases == 1
    assert "lease_id" not in next(iter(cache.items.values()))
    assert source.token(AUTH, "t", secrets=None).access_token == "at-2"  # the next try is not blocked


def test_without_a_shared_cache_the_process_keeps_its_own() -> None:
    clock, endpoint = Clock(), Endpoint()
    source = source_for(endpoint, clock, None)
    first = source.token(AUTH, "t", secrets=None)
    assert source.token(AUTH, "t", secrets=None) is first
    assert source.token(AUTH, "other-tenant", secrets=None).access_token == "at-2"


def test_the_token_request_is_a_form_post_with_its_own_time_budget() -> None:
    clock, endpoint = Clock(), Endpoint()
    deadlines: list[float | None] = []
    original = endpoint.send

    def send(request: PushRequest, deadline: float | None = None) -> SendOutcome:
        deadlines.append(deadline)
        return original(request, deadline)

    endpoint.send = send  # type: ignore[method-assign]
    source_for(endpoint, clock, None).token(AUTH, "t", secrets=None, deadline=clock.mono + 60)
    request = endpoint.requests[0]
    assert (request.method, request.url) == ("POST", "https://login.example.com/token")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert deadlines == [clock.mono + 10]  # 10 s, inside the attempt's 60
    source_for(endpoint, clock, None).token(AUTH, "t", secrets=None, deadline=clock.mono + 3)
    assert deadlines[-1] == clock.mono + 3


def test_access_token_repr_and_renewal_rule() -> None:
    token = AccessToken("secret-at", "bearer", 0, 1000)
    assert "secret-at" not in repr(token)
    assert not token.needs_renewal(940)
    assert token.needs_renewal(941)
    assert token.template_values() == {}
