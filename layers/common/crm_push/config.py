"""Settings and bot config: validated once at the edge, plain values inside."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from crm_push.errors import ConfigError
from crm_push.preset_config import PresetConfig, ResponseConfig, parse_preset, parse_response
from crm_push.push_url import parse_push_url
from crm_push.signing import SIGNATURE_HEADERS, parse_signing_secret
from crm_push.templates import CompiledKeyMapper, compile_key_mapper
from crm_push.url_templates import compile_url_template

if TYPE_CHECKING:
    from typing import TypeAlias

    from crm_push.oauth.config import ClientCredentialsAuth, JwtBearerAuth, RefreshTokenAuth

    OAuthConfig: TypeAlias = ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth

MAX_RETRY_SCHEDULE_ENTRIES = 10
MAX_RETRY_SCHEDULE_TOTAL_SECONDS = 259_200
# Two during a rotation; a few more leave room for a slow one, and each adds ~50 bytes to every request.
MAX_SIGNING_SECRETS = 5
MIN_RATE_LIMIT_PER_SECOND = 1 / 3600

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
    # A Secrets Manager secret with a dedicated IAM user's keys: presigned recording links that outlive
    # the function's role session (audit #11). Without it, links are signed with the role's credentials.
    recordings_signer_secret: str | None = None
    push_allow_private_networks: bool = False
    push_concurrency: int = Field(default=16, ge=1, le=64)
    claim_lease_seconds: int = Field(default=900, ge=30)
    bot_config_ttl_seconds: int = Field(default=60, ge=0)
    # Durable delivery (contract §10): where its state lives and which queue carries delayed attempts.
    push_state_table: str | None = None
    retry_queue_url: str | None = None
    # SQS delays one message by 900 s at most; a longer wait hops. Lower only to hop sooner (tests).
    retry_max_delay_seconds: int = Field(default=900, ge=0, le=900)
    # Tenancy (contract §12): a bot's references resolve only under <prefix><scope>/.
    secrets_name_prefix: str = "post-call-push/"
    parameters_path_prefix: str = "/post-call-push/"
    # OAuth access tokens at rest (contract §13) are encrypted with this key.
    push_kms_key_id: str | None = None

    @field_validator(
        "public_base_url",
        "recordings_bucket",
        "recordings_endpoint_url",
        "push_state_table",
        "retry_queue_url",
        "push_kms_key_id",
        "recordings_signer_secret",
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
    """Refuse a URL the push cannot use, in words that never quote the URL (``push_url.parse_push_url``).

    The same one reading the request, the gate key and the stored result use
    (contract §12), so a url accepted here is the url that is sent.
    """
    parse_push_url(url)


class SecretRef(BaseModel):
    """Where a credential lives instead of the bot item (contract §11).

    ``{"secret": "<Secrets Manager id or ARN>", "key": "<JSON key>"}`` (``key``
    optional: without it the whole secret string is the value) or
    ``{"parameter": "<SSM parameter name>"}``. It names the store entry, never
    the value, so it may be shown and logged.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    secret: str | None = Field(default=None, min_length=1, max_length=2048)
    key: str | None = Field(default=None, min_length=1, max_length=1024)
    parameter: str | None = Field(default=None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _one_store(self) -> SecretRef:
        if (self.secret is None) == (self.parameter is None):
            raise ValueError('a reference names exactly one store: {"secret": ..., "key": ...} or {"parameter": ...}')
        if self.key is not None and self.secret is None:
            raise ValueError("key picks a field of a Secrets Manager secret's JSON; a parameter has no keys")
        for name in (self.secret, self.key, self.parameter):
            if name is not None and (_HEADER_VALUE_FORBIDDEN.search(name) or name != name.strip()):
                raise ValueError("a secret id, key or parameter name has no surrounding spaces or control characters")
        return self

    def describe(self) -> str:
        """The reference in words for errors and CLI output: which store entry, never its value."""
        if self.parameter is not None:
            return f"parameter {self.parameter}"
        return f"secret {self.secret} key {self.key}" if self.key is not None else f"secret {self.secret}"


Credential = str | SecretRef
"""A credential as configured: the value itself (plaintext, legacy) or a reference to it."""


def _reference(value: Mapping[str, Any], where: str) -> SecretRef:
    try:
        return SecretRef.model_validate(dict(value))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            problem = error["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {problem}" if field else problem)
        raise ValueError(f"{where} is a reference map, but {'; '.join(problems)}") from None


class PostCallPushConfig(BaseModel):
    """The bot's ``post_call_push`` map (contract §8)."""

    # hide_input_in_errors: str() of a ValidationError would otherwise print the rejected token or header value.
    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True, hide_input_in_errors=True)

    url: Credential | None = None
    method: Literal["POST", "GET", "PUT", "PATCH"] = "POST"
    # A CRM's native create-or-update (contract §14): fills url, method, body envelope and answer reading.
    preset: PresetConfig | None = None
    # How a 2xx is read (contract §14): ok only when the body's value at a path equals a JSON value.
    response: ResponseConfig | None = None
    # OAuth 2.0 (contract §13): validated by crm_push.oauth.config, imported only when a bot has it, so a
    # push without OAuth pays nothing for it at cold start. Read it through ``oauth``.
    auth: Any = Field(default=None, repr=False)
    token: Credential | None = Field(default=None, repr=False)
    headers: dict[str, Credential] | None = Field(default=None, repr=False)
    # Standard Webhooks secrets (contract §11): every attempt is signed with each one (rotation).
    signing_secret: tuple[Credential, ...] | None = Field(default=None, repr=False)
    key_mapper: dict[str, Any] = Field(default_factory=dict)
    # Delays between attempts (contract §10); None = the default ladder, [] = a single attempt.
    retry_schedule_seconds: tuple[int, ...] | None = None
    # At least one request an hour: below that a typo (1e-9) would hold calls for years (audit #18).
    rate_limit_per_second: float | None = Field(default=None, ge=MIN_RATE_LIMIT_PER_SECOND)

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
        # Surrounding spaces are refused like any other (contract §12); only a blank url means "none".
        if isinstance(value, str):
            if not value.strip():
                return None
            if "{{" in value:
                # A url template (contract §13, §14): its origin literal or a leading {{auth.*}}, values in the
                # path and query only; the rendered url is parsed like any other before it is sent.
                compile_url_template(value)
            else:
                check_push_url(value)
        elif isinstance(value, Mapping):
            return _reference(value, "url")  # a url that is itself a credential (contract §12)
        return value or None

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value or None
        headers: dict[Any, Any] = {}
        for name, header_value in value.items():
            if isinstance(header_value, str):
                check_header(str(name), header_value)
                headers[name] = header_value
            elif isinstance(header_value, Mapping):
                check_header(str(name), "")
                headers[name] = _reference(header_value, f"header {name}")
            elif isinstance(header_value, SecretRef):
                headers[name] = header_value
            else:
                raise ValueError(f"header {name} must be text or a reference map")
        return headers or None

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            check_header("Authorization", value)
        elif isinstance(value, Mapping):
            return _reference(value, "token")
        return value or None

    @field_validator("signing_secret", mode="before")
    @classmethod
    def _signing_secret(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        entries = list(value) if isinstance(value, (list, tuple)) else [value]
        if not entries:
            return None
        if len(entries) > MAX_SIGNING_SECRETS:
            raise ValueError(f"at most {MAX_SIGNING_SECRETS} secrets at once, not {len(entries)}")
        secrets: list[Credential] = []
        for index, entry in enumerate(entries):
            where = f"signing_secret[{index}]" if len(entries) > 1 else "signing_secret"
            if isinstance(entry, str):
                try:
                    parse_signing_secret(entry)
                except ConfigError as exc:
                    # The error names the problem, never the secret; say which entry of a rotation list.
                    raise ValueError(f"entry {index}: {exc}" if len(entries) > 1 else str(exc)) from None
                secrets.append(entry)
            elif isinstance(entry, Mapping):
                secrets.append(_reference(entry, where))
            elif isinstance(entry, SecretRef):
                secrets.append(entry)
            else:
                raise ValueError(f"{where} must be text (whsec_<base64>) or a reference map")
        return tuple(secrets)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> Any:
        if value is None:
            return None
        from crm_push.oauth.config import parse_auth_config

        return parse_auth_config(value)

    @model_validator(mode="after")
    def _one_authorization(self) -> PostCallPushConfig:
        if self.auth is None:
            return self
        if self.token is not None:
            raise ValueError("auth and token are both set: an OAuth destination's Authorization is its access token")
        if any(name.lower() == "authorization" for name in self.headers or ()):
            raise ValueError("auth and an Authorization header are both set: the access token is the Authorization")
        return self

    @property
    def oauth(self) -> OAuthConfig | None:
        """``auth`` as its validated model (None without OAuth)."""
        return cast("OAuthConfig | None", self.auth)

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        return None if value is None else parse_preset(value)

    @field_validator("response", mode="before")
    @classmethod
    def _response(cls, value: Any) -> Any:
        return None if value is None else parse_response(value)

    @model_validator(mode="after")
    def _preset_owns_url_and_method(self) -> PostCallPushConfig:
        if self.preset is not None and (self.url is not None or "method" in self.model_fields_set):
            raise ValueError(f"a bot with preset {self.preset.name} sets no url or method: the preset gives them")
        return self

    @property
    def has_destination(self) -> bool:
        """Whether a push of this config has somewhere to go: a url, or a preset that makes one."""
        return self.url is not None or self.preset is not None

    @model_validator(mode="after")
    def _signing_headers_are_ours(self) -> PostCallPushConfig:
        if self.signing_secret and self.headers:
            clash = sorted(name for name in self.headers if name.lower() in SIGNATURE_HEADERS)
            if clash:
                raise ValueError(f"header {clash[0]} is set by signing (signing_secret) and may not be configured")
        return self

    @property
    def references(self) -> tuple[SecretRef, ...]:
        """Every credential kept in a store, in config order: what a push must resolve."""
        found: list[SecretRef] = []
        candidates: list[Credential | None] = [
            self.url,
            self.token,
            *(self.headers or {}).values(),
            *(self.signing_secret or ()),
            *(self.oauth.references if self.oauth is not None else ()),
        ]
        for credential in candidates:
            if isinstance(credential, SecretRef) and credential not in found:
                found.append(credential)
        return tuple(found)

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
    tenant_id: str | None = None

    @property
    def scope(self) -> str:
        """Everything this bot may reach or affect is its scope's (contract §12): its tenant, else itself."""
        return self.tenant_id or self.bot_id


def load_bot_config(item: Mapping[str, Any], bot_id: str) -> BotConfig:
    """Validate a Bots-table item; an invalid ``post_call_push`` is kept as an error to record."""
    timezone = item.get("timezone")
    tenant = item.get("tenant_id")
    tenant_id = tenant.strip() if isinstance(tenant, str) and tenant.strip() else None
    keys = item.get("analysis_keys")
    analysis_keys = tuple(k for k in keys if isinstance(k, str)) if isinstance(keys, (list, tuple, set)) else ()
    raw = item.get("post_call_push")
    if raw is None:
        return BotConfig(
            bot_id, timezone if isinstance(timezone, str) else "UTC", analysis_keys, False, None, tenant_id=tenant_id
        )
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
        tenant_id=tenant_id,
    )
