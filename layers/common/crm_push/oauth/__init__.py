"""OAuth 2.0 destinations (contract §13): auth configs, token requests, the shared token cache.

Importing this package costs nothing beyond pydantic: oauthlib, PyJWT,
cryptography and boto3 are imported by the functions that use them, so a push
without OAuth never loads them. ``crm_push.config`` is imported first on
purpose: it defines the reference types the auth models are built from, and
it may in turn import ``crm_push.oauth.config`` for its ``auth`` field.
"""

from __future__ import annotations

import crm_push.config  # noqa: F401 - first, see above
from crm_push.oauth.config import (
    AuthConfig,
    ClientCredentialsAuth,
    JwtBearerAuth,
    RefreshTokenAuth,
    cache_key,
    parse_auth_config,
)
from crm_push.oauth.tokens import AccessToken, AuthFailed

__all__ = [
    "AccessToken",
    "AuthConfig",
    "AuthFailed",
    "ClientCredentialsAuth",
    "JwtBearerAuth",
    "RefreshTokenAuth",
    "cache_key",
    "parse_auth_config",
]
