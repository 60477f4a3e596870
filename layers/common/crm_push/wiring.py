"""The real adapters for a Settings: built once per container (or per CLI run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from crm_push import logsafety
from crm_push.adapters.crm_http import CrmHttpSender
from crm_push.adapters.destination_gate import state_table_gate
from crm_push.adapters.dynamodb import BotsTable, CallsTable
from crm_push.adapters.recordings import make_presigner
from crm_push.adapters.retry_queue import SqsRetryQueue
from crm_push.adapters.state import DeliveryStateTable
from crm_push.config import Settings
from crm_push.errors import ConfigError
from crm_push.push import PushDeps
from crm_push.secrets import StoreSecretResolver

# Standard retry mode backs off on throttling; the short timeouts keep one slow
# DynamoDB call from eating the whole Lambda budget.
_AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=5)


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
    presign = make_presigner(settings.recordings_endpoint_url, settings.recording_url_ttl_seconds, session=session)
    return PushDeps(
        calls=CallsTable(dynamodb, settings.calls_table),
        bots=BotsTable(dynamodb, settings.bots_table, settings.bot_config_ttl_seconds),
        crm=CrmHttpSender(
            pool_size=settings.push_concurrency, allow_private_networks=settings.push_allow_private_networks
        ),
        delivery=DeliveryStateTable(dynamodb, settings.push_state_table),
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
        # Clients are made on the first reference; most bots have none.
        secrets=StoreSecretResolver(),
        # Circuit breaker and rate limit per destination (contract §10), in the delivery-state table.
        gate=state_table_gate(dynamodb, settings.push_state_table, count_metric=count_metric),
    )
