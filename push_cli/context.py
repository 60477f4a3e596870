"""Where the CLI reads from: global options over the Lambda's own environment variables.

Every table, bucket, queue and URL is resolved the way the function resolves it
(``crm_push.config.Settings``), so what the CLI shows is what the function
would do; the AWS options (endpoint, profile, region) behave as in the AWS CLI:
``--endpoint-url`` sends every service (DynamoDB, SQS, S3) to one address, and
without it botocore reads ``AWS_ENDPOINT_URL`` and the per-service
``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL_SQS``, ... as the function
does (the local stack serves DynamoDB and the rest at different addresses).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

from crm_push.adapters.dynamodb import CallsTable, from_item
from crm_push.adapters.recordings import make_presigner
from crm_push.adapters.retry_queue import SqsRetryQueue
from crm_push.adapters.state import DeliveryStateTable
from crm_push.config import Settings
from crm_push.errors import ConfigError
from crm_push.ports import DeliveryState, DeliveryUpdate, GateKey, PushDeps, PushRequest, SendOutcome
from crm_push.recording import Presigner

# Exit statuses, the same for every command (documented in docs/runbook.md).
EXIT_OK = 0
EXIT_PROBLEM = 1  # the thing examined has a problem: lint errors, failed replays, an invalid config
EXIT_USAGE = 2  # the command cannot run: bad arguments, unknown call or bot, unreadable file
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """Stops a command with a message for the operator and an exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_USAGE) -> NoReturn:
    raise CliError(message, exit_code)


@dataclass
class Context:
    """The global options, each already defaulted from its environment variable."""

    endpoint_url: str | None = None  # --endpoint-url only: the environment's endpoints are botocore's to read
    profile: str | None = None
    region: str | None = None
    calls_table: str | None = None
    bots_table: str | None = None
    state_table: str | None = None
    retry_queue_url: str | None = None
    public_base_url: str | None = None
    recordings_bucket: str | None = None
    recordings_endpoint_url: str | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    _session: Any = None
    _dynamodb: Any = None
    _sqs: Any = None

    @classmethod
    def from_options(cls, options: Any, environ: Mapping[str, str] | None = None) -> Context:
        env = dict(os.environ if environ is None else environ)

        def pick(option: str, variable: str) -> str | None:
            value = getattr(options, option, None)
            return value if value else (env.get(variable) or None)

        # Not defaulted from AWS_ENDPOINT_URL here: botocore resolves it per service, and
        # AWS_ENDPOINT_URL_DYNAMODB must win over it as it does for the function.
        endpoint_url = getattr(options, "endpoint_url", None) or None
        return cls(
            endpoint_url=endpoint_url,
            profile=pick("profile", "AWS_PROFILE"),
            region=pick("region", "AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            calls_table=pick("calls_table", "CALLS_TABLE"),
            bots_table=pick("bots_table", "BOTS_TABLE"),
            state_table=pick("state_table", "PUSH_STATE_TABLE"),
            retry_queue_url=pick("retry_queue_url", "RETRY_QUEUE_URL"),
            public_base_url=pick("public_base_url", "PUBLIC_BASE_URL"),
            recordings_bucket=pick("recordings_bucket", "RECORDINGS_BUCKET"),
            # An --endpoint-url covers S3 too, as AWS_ENDPOINT_URL does for the function.
            recordings_endpoint_url=pick("recordings_endpoint_url", "RECORDINGS_ENDPOINT_URL") or endpoint_url,
            environ=env,
        )

    # --- AWS ---------------------------------------------------------------------------

    def session(self) -> Any:
        if self._session is None:
            import boto3
            from botocore.exceptions import ProfileNotFound

            try:
                self._session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            except ProfileNotFound as exc:
                fail(f"AWS profile {self.profile!r} is not configured ({exc})")
        return self._session

    def _client(self, service: str) -> Any:
        from botocore.config import Config
        from botocore.exceptions import NoRegionError

        try:
            return self.session().client(
                service,
                endpoint_url=self.endpoint_url,
                config=Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=10),
            )
        except NoRegionError:
            fail("no AWS region: pass --region or set AWS_REGION")

    def dynamodb(self) -> Any:
        if self._dynamodb is None:
            self._dynamodb = self._client("dynamodb")
        return self._dynamodb

    def sqs(self) -> Any:
        if self._sqs is None:
            self._sqs = self._client("sqs")
        return self._sqs

    def calls(self) -> CallsTable:
        if not self.calls_table:
            fail("no Calls table: pass --calls-table or set CALLS_TABLE")
        return CallsTable(self.dynamodb(), self.calls_table)

    def delivery_store(self) -> DeliveryStateTable:
        if not self.state_table:
            fail(
                "no state table: pass --state-table or set PUSH_STATE_TABLE (the function's delivery-state "
                "table: each call's claim, attempts and next attempt live there, contract §10)"
            )
        return DeliveryStateTable(self.dynamodb(), self.state_table)

    def delivery_state(self, call_id: str) -> dict[str, Any] | None:
        """The call's delivery item (attempts, schedule, claim, attempts not yet on the call), or None.

        Raises StorageError when the table cannot be read.
        """
        return self.delivery_store().get(call_id)

    def retry_queue(self) -> SqsRetryQueue | None:
        if not self.retry_queue_url:
            return None
        return SqsRetryQueue(self.retry_queue_url, client=self.sqs())

    def bot_item(self, bot_id: str) -> dict[str, Any] | None:
        """The raw Bots-table item: lint needs the config as written, even when it is invalid."""
        if not self.bots_table:
            fail("no Bots table: pass --bots-table or set BOTS_TABLE")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.dynamodb().get_item(
                TableName=self.bots_table, Key={"bot_id": {"S": bot_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            fail(f"reading bot {bot_id} from {self.bots_table} failed: {exc}", EXIT_PROBLEM)
        item = response.get("Item")
        return from_item(item) if item else None

    def presigner(self) -> Presigner:
        settings = self.settings_values()
        return make_presigner(
            self.recordings_endpoint_url,
            settings.recording_url_ttl_seconds,
            session=self.session(),
            signer_secret=settings.recordings_signer_secret,
        )

    def settings_values(self) -> Settings:
        """The function's Settings, with the tables and URLs as resolved here."""
        overrides = {
            "CALLS_TABLE": self.calls_table or "-",  # not every command needs the tables
            "BOTS_TABLE": self.bots_table or "-",
            "PUSH_STATE_TABLE": self.state_table or "",
            "RETRY_QUEUE_URL": self.retry_queue_url or "",
            "PUBLIC_BASE_URL": self.public_base_url or "",
            "RECORDINGS_BUCKET": self.recordings_bucket or "",
            "RECORDINGS_ENDPOINT_URL": self.recordings_endpoint_url or "",
        }
        try:
            return Settings.from_env({**self.environ, **overrides})
        except ConfigError as exc:
            fail(str(exc))

    def preview_deps(self) -> PushDeps:
        """Deps that can render a push but can neither send it, claim it nor write anything."""
        settings = self.settings_values()
        return PushDeps(
            calls=_NoCallStore(),
            bots=_NoBotDirectory(),
            crm=_NeverSend(),
            state=_NoDelivery(),
            presign=self.presigner(),
            public_base_url=settings.public_base_url,
            recordings_bucket=settings.recordings_bucket,
        )

    def push_deps(self) -> PushDeps:
        """The function's own adapters, for a replay that really sends.

        The retry queue is optional, as for the function: without it a replay
        the CRM does not answer has no later attempt (see ``replay``).
        """
        from crm_push.wiring import build_deps

        self.calls()  # the table names are required from here on: say so before anything runs
        if not self.bots_table:
            fail("no Bots table: pass --bots-table or set BOTS_TABLE")
        self.delivery_store()
        settings = self.settings_values()
        deps = build_deps(settings, session=self.session(), dynamodb_client=self.dynamodb())
        # build_deps resolves S3 and SQS endpoints from the environment only; --endpoint-url covers them too.
        deps = replace(deps, presign=self.presigner())
        if self.endpoint_url and deps.retry_queue is not None:
            deps = replace(deps, retry_queue=self.retry_queue())
        return deps


class _NoCallStore:
    def get_call(self, call_id: str) -> dict[str, Any] | None:
        raise AssertionError("preview must not read calls through the push")

    def write_outcome(
        self, call_id: str, result: dict[str, Any], entries: list[dict[str, Any]], event: dict[str, Any], force: bool
    ) -> bool:
        raise AssertionError("preview must not write a result")

    def append_entries(self, call_id: str, entries: list[dict[str, Any]]) -> bool:
        raise AssertionError("preview must not write a result")


class _NoDelivery:
    def claim(
        self,
        call_id: str,
        claim_id: str,
        trigger: str,
        now: datetime,
        lease_seconds: int,
        force: bool,
        *,
        probe: bool = False,
    ) -> DeliveryState:
        raise AssertionError("preview must not claim a call")

    def release_parked(self, call_id: str, waits_on: GateKey, due: datetime) -> bool:
        raise AssertionError("preview must not release a call")

    def save(self, call_id: str, claim_id: str | None, update: DeliveryUpdate, now: datetime) -> bool:
        raise AssertionError("preview must not record an attempt")

    def mark_written(self, call_id: str, attempts: int) -> bool:
        raise AssertionError("preview must not record an attempt")

    def release(self, call_id: str, claim_id: str) -> None:
        raise AssertionError("preview must not hold a claim")


class _NoBotDirectory:
    def get_bot(self, bot_id: str) -> Any:
        raise AssertionError("preview reads the bot itself")


class _NeverSend:
    def send(self, request: PushRequest, deadline: float | None = None) -> SendOutcome:
        raise AssertionError("preview must not send")


# --- plain JSON files ------------------------------------------------------------------


def load_json_file(path: str, what: str) -> Any:
    """A JSON file with every number as Decimal, as DynamoDB hands numbers over."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {what} file {path}: {exc.strerror or exc}")
    try:
        return json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as exc:
        fail(f"{what} file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")


def load_call_file(path: str) -> dict[str, Any]:
    call = load_json_file(path, "call")
    if not isinstance(call, dict):
        fail(f"call file {path} must hold one JSON object (a call item), not {_json_kind(call)}")
    return call


def load_bot_file(path: str) -> dict[str, Any]:
    """A bot item like events/sample_bot.json; a bare ``post_call_push`` map is accepted too."""
    bot = load_json_file(path, "bot")
    if not isinstance(bot, dict):
        fail(f"bot file {path} must hold one JSON object (a bot item), not {_json_kind(bot)}")
    if "post_call_push" not in bot and ("key_mapper" in bot or "url" in bot):
        bot = {"bot_id": Path(path).stem, "post_call_push": bot}
    return bot


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number" if isinstance(value, Decimal) else type(value).__name__
