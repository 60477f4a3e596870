"""``post_call_push.auth``: the three OAuth 2.0 grants a bot may use (contract §13), validated at the edge.

Every credential field (``client_id``, ``client_secret``, ``refresh_token``,
``private_key``) is the value itself or a section 11 reference
(``{"secret": ..., "key": ...}`` / ``{"parameter": ...}``). Nothing here
imports oauthlib or PyJWT: a config is validated without them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from crm_push.config import Credential, SecretRef, check_push_url
from crm_push.errors import ConfigError

GrantType = Literal["oauth2_client_credentials", "oauth2_refresh_token", "oauth2_jwt_bearer"]
ClientAuth = Literal["basic", "body"]

# Form fields the grant itself sets: ``extra`` may not override them (a second grant_type or
# client_secret would change what the request means, depending on the server's parser).
RESERVED_FORM_FIELDS = frozenset(
    {"grant_type", "client_id", "client_secret", "refresh_token", "assertion", "scope", "audience", "resource"}
)
MAX_EXTRA_FIELDS = 10
_FORM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_token_url(url: str) -> str:
    """Refuse a token url the push cannot use; the message never quotes it (``check_push_url``'s rule).

    Beyond a push url's rules (section 12's one reading of a URL): no user info
    (client credentials go in ``client_id``/``client_secret``), no fragment.
    Whether ``http`` is allowed depends on the environment, so the token source
    checks the scheme again when it sends.
    """
    url = url.strip()
    check_push_url(url)
    if "\\" in url or _CONTROL.search(url):
        raise ConfigError("token_url has a backslash or a control character")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError("token_url may not carry a user name or password: use client_id and client_secret")
    if parts.fragment or url.endswith("#"):
        raise ConfigError("token_url may not have a #fragment")
    return url


def token_url_origin(url: str) -> str:
    """``scheme://host[:port]`` of a token url: what errors, logs and the CLI name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _check_credential(value: Any, where: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where} is empty")
        if where != "private_key" and _CONTROL.search(value):
            raise ValueError(f"{where} has a control character (CR, LF or other)")
        return value
    if isinstance(value, Mapping):
        try:
            return SecretRef.model_validate(dict(value))
        except ValueError as exc:
            raise ValueError(f"{where} is a reference map, but it is malformed: {_first_error(exc)}") from None
    if isinstance(value, SecretRef):
        return value
    raise ValueError(f"{where} must be text or a reference map")


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            return str(found[0].get("msg", "invalid")).removeprefix("Value error, ")
    return "invalid"


class _OAuthBase(BaseModel):
    # hide_input_in_errors: a ValidationError's str() would otherwise print the rejected secret.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    token_url: str
    client_id: Credential = Field(repr=False)

    @field_validator("token_url", mode="before")
    @classmethod
    def _token_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("token_url must be text")
        return check_token_url(value)

    @field_validator("client_id", "client_secret", "refresh_token", "private_key", mode="before", check_fields=False)
    @classmethod
    def _credential(cls, value: Any, info: Any) -> Any:
        return _check_credential(value, str(info.field_name))

    @property
    def references(self) -> tuple[SecretRef, ...]:
        """Every credential kept in a store, in config order (for lint, the CLI and secrets migrate)."""
        found: list[SecretRef] = []
        for name in ("client_id", "client_secret", "refresh_token", "private_key"):
            value = getattr(self, name, None)
            if isinstance(value, SecretRef) and value not in found:
                found.append(value)
        return tuple(found)

    @property
    def plaintext_credentials(self) -> tuple[str, ...]:
        """Names of the secret fields held as plaintext in the bot item (``secrets migrate`` moves them)."""
        names = ("client_secret", "refresh_token", "private_key")
        return tuple(name for name in names if isinstance(getattr(self, name, None), str))

    @property
    def origin(self) -> str:
        return token_url_origin(self.token_url)

    def identity(self) -> dict[str, Any]:
        """What tells one token apart from another (no secret value): the cache key's material."""
        return {"token_url": self.token_url, "client_id": _credential_identity(self.client_id)}


def _credential_identity(value: Credential) -> str:
    """A credential as cache-key material: a reference by what it names, plaintext only through a hash."""
    if isinstance(value, SecretRef):
        return "ref:" + value.describe()
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def _optional_text(value: Any, where: str) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or _CONTROL.search(value):
        raise ValueError(f"{where} must be text without control characters")
    return value.strip() or None


class ClientCredentialsAuth(_OAuthBase):
    """Salesforce (External Client App), Dynamics 365 / Entra ID, Zoho self client (``soid`` in ``extra``)."""

    type: Literal["oauth2_client_credentials"]
    client_secret: Credential = Field(repr=False)
    scope: str | None = None
    audience: str | None = None
    resource: str | None = None
    client_auth: ClientAuth = "basic"
    extra: dict[str, str] | None = None

    @field_validator("scope", "audience", "resource", mode="before")
    @classmethod
    def _text(cls, value: Any, info: Any) -> Any:
        return _optional_text(value, str(info.field_name))

    @field_validator("extra", mode="before")
    @classmethod
    def _extra(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError("extra must be a map of form field to text")
        if len(value) > MAX_EXTRA_FIELDS:
            raise ValueError(f"extra has at most {MAX_EXTRA_FIELDS} fields")
        fields: dict[str, str] = {}
        for name, field_value in value.items():
            if not isinstance(name, str) or not _FORM_NAME.match(name):
                raise ValueError("extra field names are letters, digits, '_', '.' or '-' (at most 64)")
            if name in RESERVED_FORM_FIELDS:
                raise ValueError(f"extra may not set {name}: the grant sets it")
            if not isinstance(field_value, str) or _CONTROL.search(field_value):
                raise ValueError(f"extra.{name} must be text without control characters")
            fields[name] = field_value
        return fields or None

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "grant": self.type,
            "scope": self.scope,
            "audience": self.audience,
            "resource": self.resource,
            "extra": sorted((self.extra or {}).items()),
        }


class RefreshTokenAuth(_OAuthBase):
    """Zoho (self client), HubSpot and Pipedrive OAuth apps: a long-lived refresh token, maybe rotated."""

    type: Literal["oauth2_refresh_token"]
    client_secret: Credential = Field(repr=False)
    refresh_token: Credential = Field(repr=False)
    scope: str | None = None
    client_auth: ClientAuth = "basic"

    @field_validator("scope", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _optional_text(value, "scope")

    def identity(self) -> dict[str, Any]:
        # A referenced refresh token is named by its reference, which stays put across rotations.
        # A plaintext one changes with every rotation: the token source keys it by its bot instead.
        refresh = self.refresh_token
        return {
            **super().identity(),
            "grant": self.type,
            "scope": self.scope,
            "refresh_token": ("ref:" + refresh.describe()) if isinstance(refresh, SecretRef) else "plaintext",
        }


class JwtBearerAuth(_OAuthBase):
    """Salesforce JWT bearer flow (RFC 7523): an RS256 assertion signed with the app's private key."""

    type: Literal["oauth2_jwt_bearer"]
    subject: str
    audience: str
    private_key: Credential = Field(repr=False)
    key_id: str | None = None

    @field_validator("subject", "audience", mode="before")
    @classmethod
    def _required_text(cls, value: Any, info: Any) -> Any:
        text = _optional_text(value, str(info.field_name))
        if text is None:
            raise ValueError(f"{info.field_name} is required")
        return text

    @field_validator("key_id", mode="before")
    @classmethod
    def _key_id(cls, value: Any) -> Any:
        return _optional_text(value, "key_id")

    @field_validator("private_key", mode="after")
    @classmethod
    def _pem(cls, value: Credential) -> Credential:
        if isinstance(value, str) and "PRIVATE KEY-----" not in value:
            raise ValueError("private_key must be a PEM private key (-----BEGIN ... PRIVATE KEY-----)")
        return value

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "grant": self.type, "subject": self.subject, "audience": self.audience}


AuthConfig = Annotated[
    ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth,
    Field(discriminator="type"),
]
"""``post_call_push.auth``: the field definition for ``PostCallPushConfig``."""

# The models hide inputs in their own errors, but a union's errors are the adapter's to hide.
_ADAPTER: TypeAdapter[ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth] = TypeAdapter(
    AuthConfig, config=ConfigDict(hide_input_in_errors=True)
)


def parse_auth_config(raw: Any) -> ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth:
    """``raw`` validated (a ValidationError names fields and problems, never values)."""
    return _ADAPTER.validate_python(raw)


def cache_key(auth: ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth, scope: str, bot_id: str | None) -> str:
    """One token per auth config per scope, shared by every environment (contract §13).

    A hash of the config's identity and the bot's scope (a tenant's token is
    never another tenant's, whatever their configs share). No secret enters it
    in plaintext form. A plaintext refresh token lives in its bot's item and
    changes with each rotation, so such a config is keyed by that bot instead.
    """
    # Under its own name: the config's OAuth "scope" must never overwrite the tenant's.
    material: dict[str, Any] = {"identity": auth.identity(), "tenant_scope": scope}
    if isinstance(auth, RefreshTokenAuth) and not isinstance(auth.refresh_token, SecretRef):
        material["bot_id"] = bot_id
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return digest.hexdigest()
