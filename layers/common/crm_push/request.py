"""Building one push's HTTP request: credentials, recording link, variables, render, headers, body.

Everything short of sending, and what ``preview`` shows. The url is parsed
once (``push_url``): the request, the gate key, the stored ``url`` and the
signature all come from that one parse (contract §12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_push.config import BotConfig, PostCallPushConfig, SecretRef, check_header
from crm_push.errors import ConfigError, PayloadTooLarge
from crm_push.jsonvalues import to_json, to_text
from crm_push.ports import (
    MAX_PAYLOAD_BYTES,
    USER_AGENT,
    AccessGrant,
    GateKey,
    PushDeps,
    PushRequest,
    SecretResolver,
)
from crm_push.presets import build_preset_request
from crm_push.push_url import PushUrl, parse_push_url
from crm_push.recording import RecordingLinkMode, select_recording_url
from crm_push.secrets import (
    PushCredentials,
    SecretUnavailable,
    resolve_push_credentials,
    scoped_resolver,
    secret_values,
)
from crm_push.signing import signed_content, webhook_headers
from crm_push.templates import compile_template
from crm_push.url_templates import compile_url_template
from crm_push.variables import build_push_variables, parse_utc_timestamp


class NoSecretStore:
    """For deps without a secret store: a config that references one cannot be pushed."""

    def resolve(self, ref: SecretRef, *, fresh: bool = False) -> str:
        raise SecretUnavailable(f"{ref.describe()}: no secret store is configured here", transient=False)


def resolver_for(bot: BotConfig, deps: PushDeps) -> SecretResolver:
    """The bot's view of the secret stores: only references under its own scope resolve (contract §12)."""
    return scoped_resolver(
        deps.secrets or NoSecretStore(), bot.scope, deps.secrets_name_prefix, deps.parameters_path_prefix
    )


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one push goes and in what shape: the url parsed once, the method, the body, the preset's headers."""

    target: PushUrl
    method: str
    body: Any
    extra_headers: Mapping[str, str]
    auth_scheme: str | None = None  # a preset's own scheme for the access token (Zoho: Zoho-oauthtoken)


def destination_for(
    config: PostCallPushConfig,
    resolver: SecretResolver,
    *,
    call_id: str,
    payload: dict[str, Any],
    variables: Mapping[str, Any],
    auth_values: Mapping[str, str] | None = None,
    fresh: bool = False,
) -> Destination:
    """The destination of one call's push: a preset's, a url template rendered, a url from a store, or as written.

    Raises ConfigError (no url, an unresolved template, not a usable url) or SecretUnavailable.
    """
    if config.preset is not None:
        preset = build_preset_request(config.preset, call_id, payload)
        url = compile_url_template(preset.url_template).render({}, auth_values)
        return Destination(parse_push_url(url), preset.method, preset.body, preset.extra_headers, preset.auth_scheme)
    if config.url is None:
        raise ConfigError("post_call_push has no url")
    if isinstance(config.url, SecretRef):
        target = parse_push_url(resolver.resolve(config.url, fresh=fresh), from_reference=True)
    elif "{{" in config.url:
        target = parse_push_url(compile_url_template(config.url).render(variables, auth_values))
    else:
        target = parse_push_url(config.url)
    return Destination(target, config.method, payload, {})


def gate_key_of(bot: BotConfig, deps: PushDeps) -> GateKey | None:
    """The (destination, scope) whose circuit and rate limit the bot's pushes go through, known without a call.

    None when it depends on the call or on a token answer: the call is then read and its push prepared first.
    """
    config = bot.push
    if config is None or not config.has_destination:
        return None
    try:
        if config.preset is not None:
            origin = compile_url_template(build_preset_request(config.preset, "-", {}).url_template).origin
        elif isinstance(config.url, SecretRef):
            text = resolver_for(bot, deps).resolve(config.url)
            return GateKey(parse_push_url(text, from_reference=True).destination, bot.scope)
        else:
            assert config.url is not None
            origin = compile_url_template(config.url).origin if "{{" in config.url else config.url
        return GateKey(parse_push_url(origin).destination, bot.scope) if origin else None
    except (ConfigError, SecretUnavailable):
        return None


def recorded_url_of(config: PostCallPushConfig | None) -> str:
    """What a result names as the url when the push could not be prepared: no credential, no call data."""
    if config is None or config.url is None or isinstance(config.url, SecretRef):
        return ""
    try:
        if "{{" in config.url:
            origin = compile_url_template(config.url).origin
            return f"{parse_push_url(origin).origin}/…" if origin else ""
        return parse_push_url(config.url).recorded
    except ConfigError:
        return ""


def build_headers(
    config: PostCallPushConfig,
    credentials: PushCredentials,
    variables: Mapping[str, Any],
    call_id: str,
    destination: Destination,
) -> tuple[dict[str, str], frozenset[str]]:
    """Our headers, then the config's: ``headers`` if set (plaintext ones are templates), else the token.

    Returns the headers and the values rendered into them from call data: a
    header is a credential by contract (§9), whatever filled it, so those
    values are scrubbed from the CRM's echo too (contract §12).
    """
    headers = {"User-Agent": USER_AGENT, "Idempotency-Key": call_id}
    rendered: set[str] = set()
    if destination.method != "GET":
        headers["Content-Type"] = "application/json"
    headers.update(destination.extra_headers)
    configured_names = {name.lower() for name in credentials.headers or ()}
    basic = destination.target.basic_auth
    # One Authorization header, whoever sets it: a configured one (any spelling) wins over the url's user info.
    if basic is not None and "authorization" not in configured_names:
        headers["Authorization"] = basic
    if credentials.headers is not None:
        for name, configured in credentials.headers.items():
            # A value from a secret store is used verbatim: never rendered as a template (contract §11).
            if name in credentials.verbatim_headers:
                value = configured
            else:
                value = compile_template(configured).render(variables, drop_unresolved=True)
                check_header(name, value)  # a templated value must not smuggle CR/LF in either
                if value != configured:
                    rendered.add(value)
            check_latin1_header(name, value)
            headers[name] = value
    elif credentials.token:
        headers["Authorization"] = credentials.token
    return headers, frozenset(rendered)


def check_latin1_header(name: str, value: str) -> None:
    """HTTP/1.1 carries header values as Latin-1 bytes; anything else cannot be sent faithfully.

    RFC 8187 encoding is defined only for parameters of particular headers,
    and a CRM would not decode it on an arbitrary one: such a value belongs in
    the payload, so the config is at fault.
    """
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(
            f"header {name} has characters HTTP headers cannot carry (outside Latin-1); map that value into the"
            " payload instead"
        ) from None


def encode_body(destination: Destination) -> tuple[str, bytes | None]:
    """The request target and body: JSON body, or query parameters for GET."""
    target = destination.target
    if destination.method == "GET":
        from urllib.parse import urlencode

        payload = destination.body if isinstance(destination.body, dict) else {}
        params = [(k, to_json(v) if isinstance(v, (dict, list)) else to_text(v)) for k, v in payload.items()]
        url = target.request_url(urlencode(params))
        size = len(url)
        body = None
    else:
        url, body = target.request_url(), to_json(destination.body).encode("utf-8")
        size = len(body)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes, so it was not sent")
    return url, body


@dataclass(frozen=True, slots=True)
class PreparedPush:
    request: PushRequest
    payload: dict[str, Any]
    variables: dict[str, Any]
    recording_link: RecordingLinkMode
    destination: Destination
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)
    """Every credential of this push (resolved ones, url ones, rendered header values, the token): scrubbed."""
    uses_references: bool = False
    """Some credential came from a store: a 401/403 is worth one fresh read (a rotation) before giving up."""
    access_token: str | None = field(default=None, repr=False)
    """The OAuth access token sent: a 401 drops it and fetches one new token (contract §13)."""


def prepare_push(
    call_doc: Mapping[str, Any],
    bot: BotConfig,
    deps: PushDeps,
    *,
    fresh: bool = False,
    rejected_token: str | None = None,
) -> PreparedPush:
    """Credentials, token, recording URL, variables, render, request: everything short of sending.

    ``fresh`` reads every reference from its store again, past the cache;
    ``rejected_token`` is a token the CRM just refused (a new one is fetched).
    Raises ConfigError, SecretUnavailable, or AuthFailed when no access token can be had.
    """
    config = bot.push
    if config is None or not config.has_destination:
        raise ConfigError(bot.push_error or "no push config")
    resolver = resolver_for(bot, deps)
    credentials = resolve_push_credentials(config, resolver, fresh=fresh)
    recording_url, link_mode = select_recording_url(
        call_doc, public_base_url=deps.public_base_url, recordings_bucket=deps.recordings_bucket, presign=deps.presign
    )
    variables = build_push_variables(
        call_doc, {"recording_url": recording_url, "analysis_keys": list(bot.analysis_keys)}, bot.timezone
    )
    payload = config.compiled_key_mapper.render(variables, drop_unresolved=True)
    call_id = str(call_doc.get("call_id", ""))
    grant = access_grant(bot, deps, resolver, rejected_token)
    auth_values = grant.template_values() if grant is not None else None
    destination = destination_for(
        config, resolver, call_id=call_id, payload=payload, variables=variables, auth_values=auth_values, fresh=fresh
    )
    headers, rendered_headers = build_headers(config, credentials, variables, call_id, destination)
    if grant is not None:
        scheme = destination.auth_scheme or ("Bearer" if grant.token_type.lower() == "bearer" else grant.token_type)
        headers["Authorization"] = f"{scheme} {grant.access_token}"
    url, body = encode_body(destination)
    if credentials.signing_secrets:
        signed_at = int(deps.clock().timestamp())
        content = signed_content(destination.method, url, body)
        headers.update(webhook_headers(call_id, signed_at, content, credentials.signing_secrets))
    method: Any = destination.method
    request = PushRequest(call_id, method, url, headers, body, destination.target.recorded)
    known = secret_values(credentials) | destination.target.credential_values() | rendered_headers
    token = grant.access_token if grant is not None else None
    if token:
        known |= {token}
    uses_references = bool(config.references) or isinstance(config.url, SecretRef)
    return PreparedPush(request, payload, variables, link_mode, destination, known, uses_references, token)


def access_grant(
    bot: BotConfig, deps: PushDeps, resolver: SecretResolver, rejected_token: str | None
) -> AccessGrant | None:
    """The bot's OAuth access token (contract §13), None without ``auth``. Raises AuthFailed or SecretUnavailable."""
    config = bot.push
    if config is None or config.oauth is None:
        return None
    if deps.tokens is None:
        raise ConfigError("the bot's config has auth, and this deployment has no OAuth token source")
    return deps.tokens.token(
        config.oauth,
        bot.scope,
        secrets=resolver,
        rejected=rejected_token,
        deadline=deps.deadline(),
        bot_id=bot.bot_id,
    )


def seconds_since_start(call_doc: Mapping[str, Any], now: datetime) -> Decimal:
    start = parse_utc_timestamp(call_doc.get("start_time"))
    if start is None:
        return Decimal(0)
    return Decimal(str(round((now - start).total_seconds(), 3)))
