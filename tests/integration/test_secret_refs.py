"""References resolved against real stores: moto's Secrets Manager and SSM; a real HTTP server as a failing store."""

from __future__ import annotations

import base64
import json
import socket
import threading
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from crm_push.config import PostCallPushConfig, SecretRef
from crm_push.secrets import (
    MAX_CACHE_SECONDS,
    SecretUnavailable,
    StoreSecretResolver,
    resolve_push_credentials,
    secret_values,
)
from scripts.local_crm import CrmAnswer, LocalCrm, ReceivedRequest

REGION = "us-east-1"
TOKEN = "Bearer sk_live_ref_0a1b2c3d4e"
API_KEY = "ak-ref-5f6e7d8c9b"
SIGNING = "whsec_" + base64.b64encode(b"ref-signing-key-0123456789").decode()
ONE_TRY = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=5)


class ManualClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def names() -> str:
    return f"post-call-push/test-{uuid.uuid4().hex[:10]}"


def resolver_for(secretsmanager: Any, ssm: Any, clock: ManualClock | None = None) -> StoreSecretResolver:
    return StoreSecretResolver(secretsmanager, ssm, clock=clock or ManualClock())


def unavailable(resolver: StoreSecretResolver, ref: SecretRef) -> SecretUnavailable:
    with pytest.raises(SecretUnavailable) as raised:
        resolver.resolve(ref)
    return raised.value


# --- values --------------------------------------------------------------------------------


def test_a_push_gets_every_referenced_value(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString=json.dumps({"token": TOKEN, "whsec": SIGNING}))
    ssm.put_parameter(Name=f"/{names}/api-key", Value=API_KEY, Type="SecureString")
    config = PostCallPushConfig.model_validate(
        {
            "url": "https://crm.example.com/in",
            "headers": {
                "Authorization": {"secret": names, "key": "token"},
                "X-Api-Key": {"parameter": f"/{names}/api-key"},
                "X-Tenant": "{{crm.TENANT}}",
            },
            "signing_secret": [{"secret": names, "key": "whsec"}, SIGNING],
        }
    )

    creds = resolve_push_credentials(config, resolver_for(secretsmanager, ssm))

    assert creds.headers == {"Authorization": TOKEN, "X-Api-Key": API_KEY, "X-Tenant": "{{crm.TENANT}}"}
    assert creds.verbatim_headers == {"Authorization", "X-Api-Key"}
    assert creds.token is None  # headers win (contract §8)
    assert creds.signing_secrets == (SIGNING, SIGNING)
    assert {TOKEN, API_KEY, SIGNING} <= secret_values(creds)
    assert TOKEN not in repr(creds)
    assert API_KEY not in repr(creds)


def test_a_whole_secret_string_is_the_token_when_no_key_is_given(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString=TOKEN)
    config = PostCallPushConfig.model_validate({"url": "https://crm.example.com/in", "token": {"secret": names}})

    creds = resolve_push_credentials(config, resolver_for(secretsmanager, ssm))

    assert creds.token == TOKEN
    assert creds.headers is None


def test_a_value_rotated_in_the_store_is_used_only_after_the_cache_age(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString=json.dumps({"token": "Bearer old-token-1111"}))
    ssm.put_parameter(Name=f"/{names}/key", Value="old-key-2222", Type="SecureString")
    clock = ManualClock()
    resolver = resolver_for(secretsmanager, ssm, clock)
    token, parameter = SecretRef(secret=names, key="token"), SecretRef(parameter=f"/{names}/key")
    assert resolver.resolve(token) == "Bearer old-token-1111"
    assert resolver.resolve(parameter) == "old-key-2222"

    secretsmanager.put_secret_value(SecretId=names, SecretString=json.dumps({"token": "Bearer new-token-3333"}))
    ssm.put_parameter(Name=f"/{names}/key", Value="new-key-4444", Type="SecureString", Overwrite=True)
    clock.now += MAX_CACHE_SECONDS - 1
    assert resolver.resolve(token) == "Bearer old-token-1111"
    assert resolver.resolve(parameter) == "old-key-2222"

    clock.now += 1
    assert resolver.resolve(token) == "Bearer new-token-3333"
    assert resolver.resolve(parameter) == "new-key-4444"


def test_the_cache_age_cannot_exceed_five_minutes():
    with pytest.raises(ValueError, match="0 to 300"):
        StoreSecretResolver(max_age=301)


# --- references that cannot be resolved -------------------------------------------------------


def test_a_missing_secret_or_parameter_is_not_transient_and_names_the_reference(secretsmanager, ssm, names):
    resolver = resolver_for(secretsmanager, ssm)

    missing_secret = unavailable(resolver, SecretRef(secret=names, key="token"))
    missing_parameter = unavailable(resolver, SecretRef(parameter=f"/{names}/nope"))

    assert missing_secret.transient is False
    assert str(missing_secret) == f"secret {names} key token does not exist (ResourceNotFoundException)"
    assert missing_parameter.transient is False
    assert str(missing_parameter) == f"parameter /{names}/nope does not exist (ParameterNotFound)"


def test_a_missing_key_or_a_secret_that_is_not_json_is_not_transient_and_quotes_no_value(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString=json.dumps({"token": TOKEN}))
    secretsmanager.create_secret(Name=f"{names}-plain", SecretString="plain-secret-text-7777")
    secretsmanager.create_secret(Name=f"{names}-list", SecretString=json.dumps(["list-secret-8888"]))
    secretsmanager.create_secret(Name=f"{names}-number", SecretString=json.dumps({"token": 12345678}))
    resolver = resolver_for(secretsmanager, ssm)

    no_key = unavailable(resolver, SecretRef(secret=names, key="api_key"))
    not_json = unavailable(resolver, SecretRef(secret=f"{names}-plain", key="token"))
    not_object = unavailable(resolver, SecretRef(secret=f"{names}-list", key="token"))
    not_text = unavailable(resolver, SecretRef(secret=f"{names}-number", key="token"))

    assert str(no_key) == f"secret {names} key api_key: the secret's JSON object has no key api_key"
    assert "is not a JSON object" in str(not_json)
    assert "JSON but not an object" in str(not_object)
    assert "is not text" in str(not_text)
    for error in (no_key, not_json, not_object, not_text):
        assert error.transient is False
        for value in (TOKEN, "plain-secret", "list-secret", "12345678"):
            assert value not in str(error)
        # A logged traceback shows no chained error (a JSONDecodeError keeps the whole document).
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__


def test_a_stored_value_that_would_split_the_request_is_refused_without_quoting_it(secretsmanager, ssm, names):
    # A secret created from a file often ends in a newline.
    secretsmanager.create_secret(Name=names, SecretString="Bearer sk_live_newline_9999\n")
    config = PostCallPushConfig.model_validate({"url": "https://crm.example.com/in", "token": {"secret": names}})

    with pytest.raises(SecretUnavailable) as raised:
        resolve_push_credentials(config, resolver_for(secretsmanager, ssm))

    assert raised.value.transient is False
    assert f"token: the value of secret {names} is unusable: header Authorization has a control character" in str(
        raised.value
    )
    assert "sk_live_newline" not in str(raised.value)


def test_a_stored_signing_secret_that_is_malformed_is_refused_without_quoting_it(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString="whsec_not-standard-base64_value")
    config = PostCallPushConfig.model_validate(
        {"url": "https://crm.example.com/in", "signing_secret": {"secret": names}}
    )

    with pytest.raises(SecretUnavailable) as raised:
        resolve_push_credentials(config, resolver_for(secretsmanager, ssm))

    assert "signing_secret: the value of secret" in str(raised.value)
    assert "must be standard base64" in str(raised.value)
    assert "not-standard" not in str(raised.value)


def test_a_throttled_store_is_transient(aws):
    # moto cannot throttle: a stubbed client answers as Secrets Manager does when it throttles.
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws.moto)
    with Stubber(client) as stub:
        stub.add_client_error("get_secret_value", service_error_code="ThrottlingException", http_status_code=400)
        error = unavailable(StoreSecretResolver(client), SecretRef(secret="post-call-push/bot-1"))

    assert error.transient is True
    assert str(error) == "secret post-call-push/bot-1: the store is throttling or unavailable (ThrottlingException)"


def store_answering(status: int, error_type: str) -> LocalCrm:
    body = json.dumps({"__type": error_type, "message": "scripted"}).encode()
    return LocalCrm(lambda _req: CrmAnswer(status, body, {"Content-Type": "application/x-amz-json-1.1"}))


@pytest.mark.parametrize(
    ("status", "error_type", "transient", "says"),
    [
        (500, "InternalServiceError", True, "throttling or unavailable (InternalServiceError)"),
        (503, "SomethingNew", True, "throttling or unavailable (SomethingNew)"),
        (400, "AccessDeniedException", False, "access denied to this function (AccessDeniedException)"),
        (400, "DecryptionFailure", False, "its KMS key cannot decrypt it"),
    ],
)
def test_what_a_real_store_answers_decides_whether_a_retry_can_help(status, error_type, transient, says):
    with store_answering(status, error_type) as store:
        client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=store.url, config=ONE_TRY)
        error = unavailable(StoreSecretResolver(client), SecretRef(secret="post-call-push/bot-1", key="token"))

    assert error.transient is transient
    assert says in str(error)
    assert str(error).startswith("secret post-call-push/bot-1 key token")


def test_an_unreachable_store_is_transient():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = boto3.client("ssm", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}", config=ONE_TRY)

    error = unavailable(StoreSecretResolver(ssm_client=client), SecretRef(parameter="/crm/key"))

    assert error.transient is True
    assert "could not be reached (EndpointConnectionError)" in str(error)


def test_one_fetch_serves_every_key_of_a_secret_until_the_cache_age():
    requests: list[ReceivedRequest] = []

    def store(request: ReceivedRequest) -> CrmAnswer:
        requests.append(request)
        secret = {"Name": "bot-1", "SecretString": json.dumps({"token": TOKEN, "api_key": API_KEY})}
        return CrmAnswer(200, json.dumps(secret).encode(), {"Content-Type": "application/x-amz-json-1.1"})

    clock = ManualClock()
    with LocalCrm(store) as server:
        client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=server.url, config=ONE_TRY)
        resolver = StoreSecretResolver(client, clock=clock)
        assert resolver.resolve(SecretRef(secret="bot-1", key="token")) == TOKEN
        assert resolver.resolve(SecretRef(secret="bot-1", key="api_key")) == API_KEY
        assert len(requests) == 1
        clock.now += MAX_CACHE_SECONDS
        assert resolver.resolve(SecretRef(secret="bot-1", key="api_key")) == API_KEY
        assert len(requests) == 2

    assert all(r.headers.get("X-Amz-Target") == "secretsmanager.GetSecretValue" for r in requests)


# --- fresh reads (audit #15) ------------------------------------------------------------------


def count_reads(*clients: Any) -> list[str]:
    """Every GetSecretValue / GetParameter a client sends (botocore's before-call hook: the wire, not a fake)."""
    sent: list[str] = []

    def seen(model: Any, **_: Any) -> None:
        if model.name in {"GetSecretValue", "GetParameter"}:
            sent.append(model.name)

    for client in clients:
        client.meta.events.register("before-call.*.*", seen)
    return sent


def test_a_fresh_read_sees_a_rotation_at_once_and_refreshes_the_cache(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString=json.dumps({"token": "Bearer old-token-1111"}))
    ssm.put_parameter(Name=f"/{names}/key", Value="old-key-2222", Type="SecureString")
    resolver = resolver_for(secretsmanager, ssm)
    token, parameter = SecretRef(secret=names, key="token"), SecretRef(parameter=f"/{names}/key")
    assert resolver.resolve(token) == "Bearer old-token-1111"
    assert resolver.resolve(parameter) == "old-key-2222"
    reads = count_reads(secretsmanager, ssm)

    secretsmanager.put_secret_value(SecretId=names, SecretString=json.dumps({"token": "Bearer new-token-3333"}))
    ssm.put_parameter(Name=f"/{names}/key", Value="new-key-4444", Type="SecureString", Overwrite=True)
    assert resolver.resolve(token) == "Bearer old-token-1111"  # cached: the clock has not moved
    assert resolver.resolve(token, fresh=True) == "Bearer new-token-3333"
    assert resolver.resolve(parameter, fresh=True) == "new-key-4444"

    # The fresh value is what the cache serves from now on.
    assert resolver.resolve(token) == "Bearer new-token-3333"
    assert resolver.resolve(parameter) == "new-key-4444"
    assert reads == ["GetSecretValue", "GetParameter"]


def test_a_fresh_pass_over_a_push_reads_each_store_entry_once(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString=json.dumps({"token": TOKEN, "whsec": SIGNING}))
    config = PostCallPushConfig.model_validate(
        {
            "url": "https://crm.example.com/in",
            "headers": {"Authorization": {"secret": names, "key": "token"}},
            "signing_secret": {"secret": names, "key": "whsec"},
        }
    )
    resolver = resolver_for(secretsmanager, ssm)
    resolve_push_credentials(config, resolver)
    reads = count_reads(secretsmanager)

    fresh = resolve_push_credentials(config, resolver, fresh=True)

    assert fresh.headers == {"Authorization": TOKEN}
    assert fresh.signing_secrets == (SIGNING,)
    assert reads == ["GetSecretValue"]  # two keys of one secret: one read


def test_a_fresh_read_that_fails_is_reported_like_any_read(secretsmanager, ssm, names):
    secretsmanager.create_secret(Name=names, SecretString=TOKEN)
    resolver = resolver_for(secretsmanager, ssm)
    assert resolver.resolve(SecretRef(secret=names)) == TOKEN
    secretsmanager.delete_secret(SecretId=names, ForceDeleteWithoutRecovery=True)

    error = unavailable_fresh(resolver, SecretRef(secret=names))

    assert error.problem == "not_found"
    assert error.transient is False


def unavailable_fresh(resolver: StoreSecretResolver, ref: SecretRef) -> SecretUnavailable:
    with pytest.raises(SecretUnavailable) as raised:
        resolver.resolve(ref, fresh=True)
    return raised.value


# --- threads: one slow entry holds up no other ---------------------------------------------------


class GatedStore:
    """A Secrets Manager client whose reads of ``slow`` wait for ``release``; every read is logged in order.

    Each read answers the store's current ``version`` of the secret, so a test sees which read served whom.
    """

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.entered = threading.Event()
        self.release = threading.Event()
        self.log: list[str] = []
        self.version = 1
        self._lock = threading.Lock()

    def get_secret_value(self, SecretId: str, **_: Any) -> dict[str, Any]:
        with self._lock:
            version = self.version
            self.log.append(f"read {SecretId} v{version}")
        if SecretId == self.slow and not self.release.is_set():
            self.entered.set()
            assert self.release.wait(30), "the test never released the slow read"
        return {"Name": SecretId, "SecretString": f"value-of-{SecretId}-v{version}"}


class WatchedResolver(StoreSecretResolver):
    """Signals each time a thread asks for an entry's lock: the point after which it is waiting its turn."""

    def __init__(self, store: GatedStore) -> None:
        super().__init__(store, clock=ManualClock())
        self.asking: dict[str, threading.Event] = {}

    def _lock_for(self, entry: Any) -> threading.Lock:
        event = self.asking.get(threading.current_thread().name)
        if event is not None:
            event.set()
        return super()._lock_for(entry)


def in_thread(name: str, work: Any, results: dict[str, Any], asking: dict[str, threading.Event]) -> threading.Thread:
    asking[name] = threading.Event()

    def run() -> None:
        try:
            results[name] = work()
        except BaseException as exc:  # handed to the test thread
            results[name] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def test_a_slow_read_of_one_secret_never_holds_up_another(names):
    store = GatedStore(slow=f"{names}/slow")
    resolver = WatchedResolver(store)
    results: dict[str, Any] = {}
    slow = in_thread("slow", lambda: resolver.resolve(SecretRef(secret=f"{names}/slow")), results, resolver.asking)
    assert store.entered.wait(10)

    fast = in_thread("fast", lambda: resolver.resolve(SecretRef(secret=f"{names}/fast")), results, resolver.asking)
    fast.join(10)  # a guard against a deadlock, not a time budget: the order below is the assertion

    assert not fast.is_alive(), "the fast read waited for the slow one"
    assert results["fast"] == f"value-of-{names}/fast-v1"
    assert slow.is_alive()  # the slow read is still in the store
    assert "slow" not in results
    store.release.set()
    slow.join(10)
    assert results["slow"] == f"value-of-{names}/slow-v1"
    assert store.log == [f"read {names}/slow v1", f"read {names}/fast v1"]


def test_threads_wanting_one_stale_entry_share_one_read(names):
    store = GatedStore(slow=names)
    resolver = WatchedResolver(store)
    results: dict[str, Any] = {}
    first = in_thread("first", lambda: resolver.resolve(SecretRef(secret=names)), results, resolver.asking)
    assert store.entered.wait(10)
    second = in_thread("second", lambda: resolver.resolve(SecretRef(secret=names)), results, resolver.asking)
    assert resolver.asking["second"].wait(10)  # waiting behind the first read

    store.release.set()
    for thread in (first, second):
        thread.join(10)

    assert results == {"first": f"value-of-{names}-v1", "second": f"value-of-{names}-v1"}
    assert store.log == [f"read {names} v1"]


def test_a_fresh_read_is_never_served_by_a_read_begun_before_it_was_asked(names):
    # Read 1 began before the rotation; callers asking fresh during it must get a later read. Two of them
    # asking at once share that later read rather than making one each.
    store = GatedStore(slow=names)
    resolver = WatchedResolver(store)
    results: dict[str, Any] = {}
    ref = SecretRef(secret=names)
    first = in_thread("first", lambda: resolver.resolve(ref), results, resolver.asking)
    assert store.entered.wait(10)
    store.version = 2  # rotated while read 1 is on the wire
    again = [in_thread(n, lambda: resolver.resolve(ref, fresh=True), results, resolver.asking) for n in ("b", "c")]
    assert resolver.asking["b"].wait(10)
    assert resolver.asking["c"].wait(10)

    store.release.set()
    for thread in (first, *again):
        thread.join(10)

    assert results == {"first": f"value-of-{names}-v1", "b": f"value-of-{names}-v2", "c": f"value-of-{names}-v2"}
    assert store.log == [f"read {names} v1", f"read {names} v2"]
