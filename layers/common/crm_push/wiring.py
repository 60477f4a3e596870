"""The real adapters for a Settings: built once per container (or per CLI run)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

import boto3
from botocore.config import Config

from crm_push import logsafety
from crm_push.adapters.crm_http import CrmHttpSender
from crm_push.adapters.destination_gate import state_table_gate
from crm_push.adapters.dynamodb import BotsTable, CallsTable
from crm_push.adapters.parking import ParkingTable
from crm_push.adapters.recordings import make_presigner
from crm_push.adapters.retry_queue import SqsRetryQueue
from crm_push.adapters.state import DeliveryStateTable
from crm_push.config import Settings
from crm_push.errors import ConfigError
from crm_push.ports import AccessGrant, AccessTokens, PushDeps
from crm_push.secrets import StoreSecretResolver

log = logging.getLogger(__name__)

# Standard retry mode backs off on throttling; the short timeouts keep one slow DynamoDB or SQS
# request from eating the Lambda's budget after a CRM has answered (audit #12).
_AWS_TRIES = 3
_AWS_CONNECT_SECONDS = 1
_AWS_READ_SECONDS = 2
_AWS_CONFIG = Config(
    # total_max_attempts counts the first try too (botocore reads a bare max_attempts as retries after it)
    retries={"mode": "standard", "total_max_attempts": _AWS_TRIES},
    connect_timeout=_AWS_CONNECT_SECONDS,
    read_timeout=_AWS_READ_SECONDS,
)
# After the CRM answers, at most three requests record it: the call item, the state, and (when
# either fails) the record message on the retry queue.
_WRITES_AFTER_AN_ANSWER = 3


def write_back_reserve_seconds() -> float:
    """How long recording an answer can take at worst with the SDK settings above.

    Each request: every try may wait out its connect and read timeouts, with
    the standard mode's backoff between tries (at most 2^n s before try n+1).
    No attempt starts unless this much remains after it, so a slow table
    delays the record but never turns into a Lambda timeout after the CRM
    answered.
    """
    per_request = _AWS_TRIES * (_AWS_CONNECT_SECONDS + _AWS_READ_SECONDS) + sum(2**n for n in range(_AWS_TRIES - 1))
    return float(per_request * _WRITES_AFTER_AN_ANSWER)


def build_deps(
    settings: Settings,
    *,
    session: Any = None,
    dynamodb_client: Any = None,
    count_metric: Callable[[str], None] | None = None,
) -> PushDeps:
    """``count_metric`` counts the destination gate's events (``CircuitOpened``, ``RateLimited``, ...) by name."""
    if not settings.push_state_table:
        raise ConfigError("PUSH_STATE_TABLE is not set: the push keeps its delivery state there (contract §10)")
    logsafety.install()  # before any client exists: the SDK's DEBUG lines carry bot configs and secrets
    session = session or boto3.session.Session()
    dynamodb = dynamodb_client or session.client(
        "dynamodb", config=_AWS_CONFIG.merge(Config(max_pool_connections=settings.push_concurrency + 4))
    )
    # Clients are made on the first reference; most bots have none.
    secrets = StoreSecretResolver()
    presign = make_presigner(
        settings.recordings_endpoint_url,
        settings.recording_url_ttl_seconds,
        session=session,
        signer_secret=settings.recordings_signer_secret,
        secrets=secrets,
    )
    crm = CrmHttpSender(
        pool_size=settings.push_concurrency, allow_private_networks=settings.push_allow_private_networks
    )
    return PushDeps(
        calls=CallsTable(dynamodb, settings.calls_table),
        bots=BotsTable(dynamodb, settings.bots_table, settings.bot_config_ttl_seconds),
        crm=crm,
        state=DeliveryStateTable(dynamodb, settings.push_state_table),
        retry_queue=SqsRetryQueue(
            settings.retry_queue_url,
            session=session,
            config=_AWS_CONFIG,
            max_delay_seconds=settings.retry_max_delay_seconds,
        )
        if settings.retry_queue_url
        else None,
        presign=presign,
        public_base_url=settings.public_base_url,
        recordings_bucket=settings.recordings_bucket,
        claim_lease_seconds=settings.claim_lease_seconds,
        secrets=secrets,
        tokens=OnFirstUseTokens(lambda: _token_source(settings, session, dynamodb, crm)),
        secrets_name_prefix=settings.secrets_name_prefix,
        parameters_path_prefix=settings.parameters_path_prefix,
        # Circuit breaker and rate limit per destination (contract §10), in the delivery-state table.
        gate=state_table_gate(dynamodb, settings.push_state_table, count_metric=count_metric),
        parking=ParkingTable(dynamodb, settings.push_state_table),
    )


class OnFirstUseTokens:
    """The OAuth token source, built by the first push that needs one: a bot without ``auth`` loads nothing of it."""

    def __init__(self, build: Callable[[], AccessTokens]) -> None:
        self._build = build
        self._source: AccessTokens | None = None
        self._lock = threading.Lock()

    def token(self, auth: Any, scope: str, **kwargs: Any) -> AccessGrant:
        if self._source is None:
            with self._lock:
                if self._source is None:
                    self._source = self._build()
        return self._source.token(auth, scope, **kwargs)


def _token_source(settings: Settings, session: Any, dynamodb: Any, crm: CrmHttpSender) -> AccessTokens:
    """One token per auth config for every environment (contract §13): cached encrypted in the state table."""
    from crm_push.oauth.cache import SharedTokenCache
    from crm_push.oauth.provider import TokenSource
    from crm_push.oauth.rotation import AwsRefreshTokenStore

    cache = None
    if settings.push_state_table and settings.push_kms_key_id:
        kms = session.client("kms", config=_AWS_CONFIG)
        cache = SharedTokenCache(dynamodb, settings.push_state_table, kms, settings.push_kms_key_id)
    else:
        log.warning("no PUSH_KMS_KEY_ID: OAuth tokens are cached per environment only, never shared or stored")
    refresh_tokens = AwsRefreshTokenStore(dynamodb=dynamodb, bots_table=settings.bots_table, session=session)
    source = TokenSource(
        crm, cache=cache, refresh_tokens=refresh_tokens, allow_private_networks=settings.push_allow_private_networks
    )
    return cast(AccessTokens, source)  # it takes the auth models the config holds (typed Any at the port)
