"""An access token as the push uses it, and why one could not be had (contract §13).

Light on purpose: the core imports these names for every push, OAuth or not,
so nothing here pulls in oauthlib, PyJWT, cryptography or boto3.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from crm_push.errors import AuthFailed

DEFAULT_LIFETIME_SECONDS = 3600  # contract §13: an answer without expires_in lives an hour
RENEW_BEFORE_SECONDS = 60.0
RENEW_BEFORE_FRACTION = 0.10


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token from a token endpoint. ``access_token`` is a credential: never log, store or show it.

    Times are epoch seconds (wall clock): a token is shared by execution
    environments whose monotonic clocks have nothing in common.
    """

    access_token: str = field(repr=False)
    token_type: str
    issued_at: float
    expires_at: float
    instance_url: str | None = None
    api_domain: str | None = None
    scope: str | None = None

    @property
    def lifetime(self) -> float:
        return max(0.0, self.expires_at - self.issued_at)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value: RFC 6750 spells the scheme ``Bearer`` whatever case the answer used."""
        scheme = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        return f"{scheme} {self.access_token}"

    @property
    def fingerprint(self) -> str:
        return token_fingerprint(self.access_token)

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def is_valid(self, now: float) -> bool:
        return self.remaining(now) > 0

    def needs_renewal(self, now: float) -> bool:
        """Less remains than the smaller of 60 s and 10 % of its lifetime (contract §13)."""
        return self.remaining(now) < min(RENEW_BEFORE_SECONDS, RENEW_BEFORE_FRACTION * self.lifetime)

    def template_values(self) -> dict[str, str]:
        """What ``{{auth.instance_url}}`` and ``{{auth.api_domain}}`` stand for: origins, never the token."""
        values: dict[str, str] = {}
        if self.instance_url:
            values["instance_url"] = self.instance_url
        if self.api_domain:
            values["api_domain"] = self.api_domain
        return values


def token_fingerprint(access_token: str) -> str:
    """A one-way name for a token: tells "the token the CRM rejected" from "a newer one" without keeping it.

    SHA-256 of a high-entropy token reveals nothing usable; 128 bits are plenty to tell two tokens apart.
    """
    return hashlib.sha256(access_token.encode("utf-8")).hexdigest()[:32]


__all__ = ["DEFAULT_LIFETIME_SECONDS", "AccessToken", "AuthFailed", "token_fingerprint"]
# AuthFailed is defined with the push's other errors (crm_push.errors), so the attempt catches it
# without importing this package; it is re-exported here for the token source.
