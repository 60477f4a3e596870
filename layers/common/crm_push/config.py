"""Settings and bot config: validated once at the edge, plain values inside."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from crm_push.errors import ConfigError
from crm_push.templates import CompiledKeyMapper, compile_key_mapper

MAX_RETRY_SCHEDULE_ENTRIES = 10
MAX_RETRY_SCHEDULE_TOTAL_SECONDS = 259_200

# RFC 7230 token characters for names; visible ASCII, space and tab for values.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Settings(BaseModel):
    """The function's environment (contract §4), read once per container."""

    model_config = ConfigDict(frozen=True)

    calls_table: str = Field(min_length=1)
    bots_table: str = Field(min_length=1)
    public_base_url: str | None = None
    recordings_bucket: str | None = None
    recordings_endpoint_url: str | None = None
    recording_url_ttl_seconds: int = Field(default=604800, ge=1, le=604800)
    push_allow_private_networks: bool = False
    push_concurrency: int = Field(default=16, ge=1, le=64)
    claim_lease_seconds: int = Field(default=900, ge=30)
    claim_wait_seconds: float = Field(default=15.0, ge=0, le=60)
    bot_config_ttl_seconds: int = Field(default=60, ge=0)
    # Durable delivery (contract §10): where its state lives and which queue carries delayed attempts.
    push_state_table: str | None = None
    retry_queue_url: str | None = None

    @field_validator(
        "public_base_url",
        "recordings_bucket",
        "recordings_endpoint_url",
        "push_state_table",
        "retry_queue_url",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        names = cls.model_fields.keys()
        raw = {name: env[name.upper()] for name in names if name.upper() in env}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"invalid environment: {_plain_errors(exc)}") from exc


def _plain_errors(exc: ValidationError) -> str:
    """Pydantic's errors as one line an operator can read: ``field: problem; ...``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "config"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# Headers that frame or route the request are ours to set: a config that set them could
# smuggle a second request (Content-Length vs Transfer-Encoding) or misroute it.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "trailer"})


def check_header(name: str, value: str) -> None:
    """Refuse a header that could split the request (CR/LF), is not a valid token, or frames the request."""
    if not _HEADER_NAME.match(name):
        raise ConfigError(f"header name {name[:40]!r} has characters not allowed in a header name")
    if name.lower() in _RESERVED_HEADERS:
        raise ConfigError(f"header {name} is set by the push itself and may not be configured")
    if _HEADER_VALUE_FORBIDDEN.search(value):
        raise ConfigError(f"header {name} has a control character (CR, LF or other) in its value")


def check_push_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"url scheme must be http or https, not {parts.scheme or 'none'!r}")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ConfigError(f"url is malformed: {exc}") from exc
    if not host:
        raise ConfigError("url has no host")
    if any(c.isspace() for c in url):
        raise ConfigError("url contains whitespace")


class PostCallPushConfig(BaseModel):
    """The bot's ``post_call_push`` map (contract §8)."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    url: str | None = None
    method: Literal["POST", "GET"] = "POST"
    token: str | None = Field(default=None, repr=False)
    headers: dict[str, str] | None = Field(default=None, repr=False)
    key_mapper: dict[str, Any] = Field(default_factory=dict)
    # Delays between attempts (contract §10); None = the default ladder, [] = a single attempt.
    retry_schedule_seconds: tuple[int, ...] | None = None
    rate_limit_per_second: float | None = Field(default=None, gt=0)

    @field_validator("retry_schedule_seconds", mode="before")
    @classmethod
    def _retry_schedule(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of seconds, not {type(value).__name__}")
        delays = []
        for delay in value:
            # DynamoDB numbers arrive as Decimal: accept whole numbers of any numeric type, never bools.
            if isinstance(delay, bool) or not isinstance(delay, (int, float, Decimal)) or delay != int(delay):
                raise ValueError("every delay must be a whole number of seconds")
            if delay <= 0:
                raise ValueError("every delay must be positive")
            delays.append(int(delay))
        if len(delays) > MAX_RETRY_SCHEDULE_ENTRIES:
            raise ValueError(f"at most {MAX_RETRY_SCHEDULE_ENTRIES} delays, not {len(delays)}")
        if sum(delays) > MAX_RETRY_SCHEDULE_TOTAL_SECONDS:
            raise ValueError(f"delays add up to {sum(delays)} s; at most {MAX_RETRY_SCHEDULE_TOTAL_SECONDS} s (3 days)")
        return tuple(delays)

    @field_validator("method", mode="before")
    @classmethod
    def _method_upper(cls, value: Any) -> Any:
        if value is None or value == "":
            return "POST"
        return value.upper() if isinstance(value, str) else value

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value:
                check_push_url(value)
        return value or None

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name, header_value in value.items():
                if not isinstance(header_value, str):
                    raise ValueError(f"header {name} must be text")
                check_header(str(name), header_value)
        return value or None

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            check_header("Authorization", value)
        return value or None

    @field_validator("key_mapper", mode="before")
    @classmethod
    def _key_mapper(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"must be a map of external key to template, not {type(value).__name__}")
        compile_key_mapper(value)  # size and depth limits
        return value

    # Compiled when the config is loaded, so a cached bot config renders with no re-encoding per push.
    _compiled_key_mapper: CompiledKeyMapper = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._compiled_key_mapper = compile_key_mapper(self.key_mapper)

    @property
    def compiled_key_mapper(self) -> CompiledKeyMapper:
        return self._compiled_key_mapper


@dataclass(frozen=True, slots=True)
class BotConfig:
    """What the push needs of a bot item. ``push`` is None when the config is absent or invalid."""

    bot_id: str
    timezone: str
    analysis_keys: tuple[str, ...]
    has_push_config: bool
    push: PostCallPushConfig | None
    push_error: str | None = None


def load_bot_config(item: Mapping[str, Any], bot_id: str) -> BotConfig:
    """Validate a Bots-table item; an invalid ``post_call_push`` is kept as an error to record."""
    timezone = item.get("timezone")
    keys = item.get("analysis_keys")
    analysis_keys = tuple(k for k in keys if isinstance(k, str)) if isinstance(keys, (list, tuple, set)) else ()
    raw = item.get("post_call_push")
    if raw is None:
        return BotConfig(bot_id, timezone if isinstance(timezone, str) else "UTC", analysis_keys, False, None)
    push: PostCallPushConfig | None = None
    error: str | None = None
    if not isinstance(raw, Mapping):
        error = f"bot {bot_id}: post_call_push must be a map, not {type(raw).__name__}"
    else:
        try:
            push = PostCallPushConfig.model_validate(dict(raw))
        except ValidationError as exc:
            error = f"bot {bot_id}: invalid post_call_push config: {_plain_errors(exc)}"
        except ConfigError as exc:
            error = f"bot {bot_id}: invalid post_call_push config: {exc}"
    return BotConfig(
        bot_id,
        timezone if isinstance(timezone, str) and timezone else "UTC",
        analysis_keys,
        True,
        push,
        error,
    )
