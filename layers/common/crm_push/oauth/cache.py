"""The shared token cache: one access token per auth config for every execution environment (contract §13).

Item ``token#<cache key>`` in the delivery-state table (``PUSH_STATE_TABLE``):

==============  ===========================================================
``gen``         how many tokens were stored here: a lease names the one it replaces
``ct``          the access token, AES-256-GCM: 12-byte nonce then ciphertext and tag
``dk``          the data key that encrypted it, itself encrypted by KMS
``fp``          the token's fingerprint (one-way): which token a CRM rejected
``tt`` ``sc``   token type and granted scope
``iu`` ``ad``   ``instance_url`` and ``api_domain`` from the answer (origins, not secrets)
``iat`` ``exp`` when the token was issued and when it expires (epoch seconds)
``lease_id``    the environment fetching the next token (absent when none is)
``lease_until`` epoch seconds the lease lasts; after it another environment may fetch
``expires_at``  TTL: the item goes a day after its token expired
==============  ===========================================================

Why an envelope (KMS ``GenerateDataKey`` once per token, AES-GCM here) and not
KMS ``Encrypt`` of the token itself: KMS ``Encrypt`` takes at most 4,096 bytes,
and Entra ID access tokens are JWTs that grow with the app's roles and claims
(several KB are common), so a direct ``Encrypt`` would fail for some Dynamics
tenants. KMS calls are the same either way: one per token stored, one
``Decrypt`` per environment per token read. The key is bound to its item by
the encryption context (``cache_key``) and the ciphertext by AES-GCM's
associated data, so an item copied onto another key does not decrypt.
The plaintext token never reaches the table, the logs or an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from crm_push.oauth.tokens import AccessToken, AuthFailed

log = logging.getLogger(__name__)

KEY_PREFIX = "token#"
RETENTION_AFTER_EXPIRY_SECONDS = 86400
_CONTEXT_PURPOSE = "post-call-push-oauth-token"
_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class CachedToken:
    """The cache item as read: the token still encrypted, plus the lease."""

    gen: int
    fingerprint: str | None
    ciphertext: bytes | None = field(repr=False)
    data_key: bytes | None = field(repr=False)
    token_type: str
    issued_at: float
    expires_at: float
    instance_url: str | None
    api_domain: str | None
    scope: str | None
    lease_id: str | None
    lease_until: float | None

    @property
    def has_token(self) -> bool:
        return self.ciphertext is not None and self.data_key is not None and self.fingerprint is not None


class SharedTokenCache:
    """Reads, leases and stores cached tokens with conditional writes only; encrypts with KMS.

    ``kms_key_id`` is env ``PUSH_KMS_KEY_ID`` (key id, ARN or alias). Clients are the caller's.
    """

    def __init__(self, dynamodb: Any, table_name: str, kms: Any, kms_key_id: str) -> None:
        self._dynamodb = dynamodb
        self._table = table_name
        self._kms = kms
        self._key_id = kms_key_id

    # --- reading ---------------------------------------------------------------------

    def read(self, key: str) -> CachedToken | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._dynamodb.get_item(TableName=self._table, Key=_item_key(key), ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_failed("reading the cached token", exc) from None
        item = response.get("Item")
        if not item:
            return None
        return CachedToken(
            gen=int(_n(item, "gen") or 0),
            fingerprint=_s(item, "fp"),
            ciphertext=_b(item, "ct"),
            data_key=_b(item, "dk"),
            token_type=_s(item, "tt") or "Bearer",
            issued_at=_n(item, "iat") or 0.0,
            expires_at=_n(item, "exp") or 0.0,
            instance_url=_s(item, "iu"),
            api_domain=_s(item, "ad"),
            scope=_s(item, "sc"),
            lease_id=_s(item, "lease_id"),
            lease_until=_n(item, "lease_until"),
        )

    def decrypt(self, key: str, cached: CachedToken) -> AccessToken:
        """The cached token in clear, for this process's memory only."""
        from botocore.exceptions import BotoCoreError, ClientError
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not cached.has_token:
            raise AuthFailed("the cached token is incomplete", transient=True)
        assert cached.ciphertext is not None
        assert cached.data_key is not None
        try:
            plain_key = self._kms.decrypt(
                CiphertextBlob=cached.data_key, KeyId=self._key_id, EncryptionContext=_context(key)
            )["Plaintext"]
        except (ClientError, BotoCoreError) as exc:
            raise _kms_failed("decrypting the cached token", exc) from None
        nonce, sealed = cached.ciphertext[:_NONCE_BYTES], cached.ciphertext[_NONCE_BYTES:]
        try:
            token = AESGCM(plain_key).decrypt(nonce, sealed, _aad(key)).decode("utf-8")
        except (InvalidTag, ValueError, UnicodeDecodeError):
            # Not ours, or tampered with: fetch a new one rather than send garbage.
            raise AuthFailed("the cached token does not decrypt (tampered with or foreign)", transient=True) from None
        return AccessToken(
            access_token=token,
            token_type=cached.token_type,
            issued_at=cached.issued_at,
            expires_at=cached.expires_at,
            instance_url=cached.instance_url,
            api_domain=cached.api_domain,
            scope=cached.scope,
        )

    # --- the lease -------------------------------------------------------------------

    def acquire(self, key: str, lease_id: str, seen_gen: int, now: float, lease_seconds: float) -> bool:
        """Take the right to fetch the next token, unless another environment holds it or a newer token is in.

        ``seen_gen``: the generation this environment judged stale (0: none yet).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        condition = "(attribute_not_exists(#lu) OR #lu < :now) AND "
        condition += "attribute_not_exists(#gen)" if seen_gen == 0 else "#gen = :gen"
        values: dict[str, Any] = {
            ":me": {"S": lease_id},
            ":until": {"N": _num(now + lease_seconds)},
            ":now": {"N": _num(now)},
            ":ttl": {"N": str(int(now + lease_seconds + RETENTION_AFTER_EXPIRY_SECONDS))},
        }
        if seen_gen:
            values[":gen"] = {"N": str(seen_gen)}
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key=_item_key(key),
                UpdateExpression="SET #li = :me, #lu = :until, #ttl = if_not_exists(#ttl, :ttl)",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#li": "lease_id", "#lu": "lease_until", "#gen": "gen", "#ttl": "expires_at"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise _storage_failed("leasing the token fetch", exc) from None
        except BotoCoreError as exc:
            raise _storage_failed("leasing the token fetch", exc) from None
        return True

    def release(self, key: str, lease_id: str) -> None:
        """Give the lease back after a failed fetch, so the next environment need not wait it out."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key=_item_key(key),
                UpdateExpression="REMOVE #li, #lu",
                ConditionExpression="#li = :me",
                ExpressionAttributeNames={"#li": "lease_id", "#lu": "lease_until"},
                ExpressionAttributeValues={":me": {"S": lease_id}},
            )
        except (ClientError, BotoCoreError) as exc:
            # The lease runs out by itself; a failed release only makes others wait for it.
            log.warning("releasing the token lease failed", extra={"error_class": type(exc).__name__})

    def store(self, key: str, lease_id: str, token: AccessToken) -> int | None:
        """Keep ``token`` (encrypted) and end the lease; its generation, or None when the lease was lost."""
        from botocore.exceptions import BotoCoreError, ClientError
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            data_key = self._kms.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=_context(key)
            )
        except (ClientError, BotoCoreError) as exc:
            raise _kms_failed("encrypting the new token", exc) from None
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + AESGCM(data_key["Plaintext"]).encrypt(nonce, token.access_token.encode("utf-8"), _aad(key))
        sets = {
            "#ct": ("ct", {"B": sealed}),
            "#dk": ("dk", {"B": data_key["CiphertextBlob"]}),
            "#fp": ("fp", {"S": token.fingerprint}),
            "#tt": ("tt", {"S": token.token_type}),
            "#iat": ("iat", {"N": _num(token.issued_at)}),
            "#exp": ("exp", {"N": _num(token.expires_at)}),
            "#ttl": ("expires_at", {"N": str(int(token.expires_at + RETENTION_AFTER_EXPIRY_SECONDS))}),
        }
        optional = {"#iu": ("iu", token.instance_url), "#ad": ("ad", token.api_domain), "#sc": ("sc", token.scope)}
        removes = ["#li", "#lu"]
        for placeholder, (name, value) in optional.items():
            if value:
                sets[placeholder] = (name, {"S": value})
            else:
                removes.append(placeholder)
        names = {placeholder: name for placeholder, (name, _) in sets.items()}
        names.update({placeholder: name for placeholder, (name, _) in optional.items()})
        names.update({"#li": "lease_id", "#lu": "lease_until", "#gen": "gen"})
        values = {f":{placeholder[1:]}": value for placeholder, (_, value) in sets.items()}
        values.update({":me": {"S": lease_id}, ":zero": {"N": "0"}, ":one": {"N": "1"}})
        expression = "SET " + ", ".join(f"{p} = :{p[1:]}" for p in sets)
        expression += ", #gen = if_not_exists(#gen, :zero) + :one REMOVE " + ", ".join(removes)
        try:
            response = self._dynamodb.update_item(
                TableName=self._table,
                Key=_item_key(key),
                UpdateExpression=expression,
                ConditionExpression="#li = :me",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="UPDATED_NEW",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise _storage_failed("storing the new token", exc) from None
        except BotoCoreError as exc:
            raise _storage_failed("storing the new token", exc) from None
        return int(response["Attributes"]["gen"]["N"])


def _item_key(key: str) -> dict[str, Any]:
    return {"pk": {"S": KEY_PREFIX + key}}


def _context(key: str) -> dict[str, str]:
    return {"purpose": _CONTEXT_PURPOSE, "cache_key": key}


def _aad(key: str) -> bytes:
    return (KEY_PREFIX + key).encode("ascii")


def _num(value: float) -> str:
    return str(Decimal(repr(round(value, 3))))


def _s(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return value if isinstance(value, str) else None


def _n(item: dict[str, Any], name: str) -> float | None:
    value = item.get(name, {}).get("N")
    return float(value) if isinstance(value, str) else None


def _b(item: dict[str, Any], name: str) -> bytes | None:
    value = item.get(name, {}).get("B")
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__


def _storage_failed(what: str, exc: Exception) -> AuthFailed:
    # The token cache is ours, not the endpoint's: a passing DynamoDB failure is worth another attempt.
    return AuthFailed(f"{what} failed: state table {_code(exc)}", transient=True)


def _kms_failed(what: str, exc: Exception) -> AuthFailed:
    code = _code(exc)
    transient = code in {"ThrottlingException", "KMSInternalException", "DependencyTimeoutException"} or not hasattr(
        exc, "response"
    )
    return AuthFailed(f"{what} failed: KMS {code} (key PUSH_KMS_KEY_ID)", transient=transient)
