"""``auth``: a bot's OAuth 2.0 config in words, and with ``--test`` a token fetched with it (contract §13).

    post-call-push auth --bot-id BOT [--test] [--json]

Shows the grant, the token endpoint's origin, the client id (or its
reference), every reference and any secret still held as plaintext. With
``--test`` it resolves the references in the bot's scope, asks the token
endpoint for a token exactly as the function would (same SSRF guard, same
timeouts, a rotated refresh token written back) and reports its lifetime,
scope, ``instance_url`` and ``api_domain``; never the token. A test costs one
token request (Zoho allows 10 per 10 minutes) and bypasses the shared cache,
so it proves the credentials work now.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from crm_push.config import SecretRef
from push_cli.context import EXIT_OK, EXIT_PROBLEM, Context, fail
from push_cli.display import print_json, row, table


def add_parser(commands: Any, parents: Sequence[argparse.ArgumentParser], epilog: str) -> None:
    """The ``auth`` command, on main's subparsers."""
    parser = commands.add_parser(
        "auth",
        parents=list(parents),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a bot's OAuth 2.0 config; --test fetches a token with it (never shown)",
        description="Show a bot's post_call_push.auth: grant, token endpoint, client id, references. With --test, "
        "fetch a token with the deployed config (references resolved in the bot's scope, the same guard and "
        "timeouts as the function) and report its lifetime, scope and instance_url. The token is never shown.",
    )
    parser.add_argument("--bot-id", required=True, help="the bot whose auth config to show")
    parser.add_argument("--test", action="store_true", help="fetch a token now (one token request)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def describe_auth(raw: Any) -> dict[str, Any]:
    """The auth config as an operator may see it: names and references, never a secret value.

    Raises ValueError (pydantic's, naming fields, never values) when it is invalid.
    """
    from crm_push.oauth.config import ClientCredentialsAuth, JwtBearerAuth, RefreshTokenAuth, parse_auth_config

    auth = parse_auth_config(raw)
    client_id = auth.client_id
    view: dict[str, Any] = {
        "grant": auth.type,
        "token_endpoint": auth.origin,
        "client_id": client_id.describe() if isinstance(client_id, SecretRef) else client_id,
        "references": [ref.describe() for ref in auth.references],
        "plaintext_secrets": list(auth.plaintext_credentials),
    }
    if isinstance(auth, (ClientCredentialsAuth, RefreshTokenAuth)):
        view["client_auth"] = auth.client_auth
        view["scope"] = auth.scope
    if isinstance(auth, ClientCredentialsAuth):
        view.update(audience=auth.audience, resource=auth.resource, extra_fields=sorted(auth.extra or {}))
    if isinstance(auth, JwtBearerAuth):
        view.update(subject=auth.subject, audience=auth.audience, key_id=auth.key_id)
    return view


def auth_in_words(auth: Any) -> str:
    """One line naming an auth config for ``status`` and ``preview``: grant, token endpoint, client id; no secret."""
    client_id = auth.client_id
    client = client_id.describe() if isinstance(client_id, SecretRef) else client_id
    return f"grant {auth.type}, token endpoint {auth.origin}, client_id {client}"


# What a token endpoint's final refusal (RFC 6749 §5.2, and ours) asks of an operator.
_REFUSALS = {
    "invalid_grant": "the refresh token or assertion was refused: revoked, expired, issued to another client, "
    "or (JWT bearer) the user is not pre-authorised for the app or the certificate changed",
    "invalid_client": "the client id or secret is wrong, or the app was deleted or its secret rotated",
    "unauthorized_client": "the app may not use this grant (enable it in the app's settings)",
    "invalid_scope": "the scope asked for is not granted to the app",
    "unsupported_grant_type": "the endpoint does not offer this grant",
    "refresh_token_not_kept": "the endpoint rotated the refresh token and the new one could not be stored",
}
_ANSWERED = re.compile(r"answered (\d{3})(?: ([\x21\x23-\x5b\x5d-\x7e]{1,64}))?")


def refusal_in_words(error: str) -> tuple[str | None, str]:
    """The token endpoint's ``error`` code out of a result's error text, and what it usually means."""
    if "refresh_token_not_kept" in error or "could not be written to" in error:
        return "refresh_token_not_kept", _REFUSALS["refresh_token_not_kept"]
    found = _ANSWERED.search(error)
    code = found.group(2) if found else None
    if code is None:
        status = found.group(1) if found else None
        return None, f"the endpoint answered HTTP {status} without an error code" if status else "no token was granted"
    return code, _REFUSALS.get(code, "see the identity provider's documentation for this code")


def cmd_auth(args: argparse.Namespace, ctx: Context, console: Console, clock: Any = None) -> int:
    from pydantic import ValidationError

    item = ctx.bot_item(args.bot_id)
    if item is None:
        fail(f"bot {args.bot_id} is not in the Bots table {ctx.bots_table}")
    push = item.get("post_call_push")
    raw = push.get("auth") if isinstance(push, dict) else None
    if raw is None:
        fail(f"bot {args.bot_id} has no post_call_push.auth: it authenticates with a static token or headers")
    try:
        view = describe_auth(raw)
    except ValidationError as exc:
        fail(f"bot {args.bot_id}: invalid post_call_push.auth: {_plain(exc)}", EXIT_PROBLEM)
    code = EXIT_OK
    if args.test:
        tenant = item.get("tenant_id")
        scope = tenant.strip() if isinstance(tenant, str) and tenant.strip() else args.bot_id
        view["test"] = _test(ctx, raw, scope, args.bot_id)
        code = EXIT_OK if view["test"]["ok"] else EXIT_PROBLEM
    _render(console, args.bot_id, view, as_json=args.json)
    return code


def _test(ctx: Context, raw: Any, scope: str, bot_id: str) -> dict[str, Any]:
    """One token request with the deployed config; what came of it, never the token."""
    from crm_push.adapters.crm_http import CrmHttpSender
    from crm_push.oauth.config import parse_auth_config
    from crm_push.oauth.provider import TokenSource
    from crm_push.oauth.rotation import AwsRefreshTokenStore
    from crm_push.oauth.tokens import AuthFailed
    from crm_push.secrets import SecretUnavailable, scoped_resolver
    from push_cli.secrets import store_resolver

    settings = ctx.settings_values()
    resolver = scoped_resolver(
        store_resolver(ctx), scope, settings.secrets_name_prefix, settings.parameters_path_prefix
    )
    session = ctx.session()
    store = AwsRefreshTokenStore(
        secretsmanager=session.client("secretsmanager", endpoint_url=ctx.endpoint_url),
        ssm=session.client("ssm", endpoint_url=ctx.endpoint_url),
        dynamodb=ctx.dynamodb(),
        bots_table=ctx.bots_table,
    )
    allow_private = settings.push_allow_private_networks
    source = TokenSource(
        CrmHttpSender(allow_private_networks=allow_private), refresh_tokens=store, allow_private_networks=allow_private
    )
    started = time.monotonic()
    try:
        token = source.token(
            parse_auth_config(raw), scope, secrets=resolver, bot_id=bot_id, deadline=time.monotonic() + 15
        )
    except (AuthFailed, SecretUnavailable) as exc:
        return {
            "ok": False,
            "error": str(exc),
            "error_code": getattr(exc, "error_code", None),
            "retryable": bool(getattr(exc, "transient", False)),
        }
    return {
        "ok": True,
        "token_type": token.token_type,
        "lifetime_seconds": int(token.lifetime),
        "scope": token.scope,
        "instance_url": token.instance_url,
        "api_domain": token.api_domain,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


def _plain(exc: Any) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "auth"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _render(console: Console, bot_id: str, view: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(console, {"bot_id": bot_id, **view})
        return
    grid = table(f"bot {bot_id}: OAuth 2.0", "field", "value")
    for name, value in view.items():
        if name == "test":
            continue
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        row(grid, name, "-" if value is None else str(value))
    console.print(grid)
    if view["plaintext_secrets"]:
        console.print(
            f"plaintext in the bot item: {', '.join(view['plaintext_secrets'])} - "
            f"move them into the bot's scope: post-call-push secrets migrate --bot-id {bot_id}"
        )
    test = view.get("test")
    if test is None:
        return
    if test["ok"]:
        console.print(
            f"token fetched in {test['duration_ms']} ms: {test['token_type']}, lives "
            f"{test['lifetime_seconds']} s, scope {test['scope'] or '-'}, instance_url {test['instance_url'] or '-'}, "
            f"api_domain {test['api_domain'] or '-'}"
        )
    else:
        retry = "retryable: the endpoint did not answer or was busy" if test["retryable"] else "final"
        console.print(f"no token: {test['error']} ({retry})")
