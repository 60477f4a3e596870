"""A rotated refresh token written back where its bot keeps it, before the new access token is used (§13).

* Secrets Manager reference: the secret's JSON gets the new value under the
  reference's ``key``, every other key kept (``PutSecretValue``: a new version,
  labelled AWSCURRENT). Without ``key`` the whole secret string is replaced.
* SSM reference: ``PutParameter`` (``SecureString``, ``Overwrite``), with the
  stack's key for referenced parameters when one is configured.
* Plaintext in the bot item: a conditional ``UpdateItem`` of the Bots table,
  ``SET post_call_push.auth.refresh_token = :new`` only if it still holds
  ``:old`` (an operator's edit in the meantime is never overwritten).

Only the environment holding the token lease ever rotates, so there is one
writer at a time per refresh token.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from crm_push.config import SecretRef
from crm_push.oauth.tokens import AuthFailed

log = logging.getLogger(__name__)


class RefreshTokenStore(Protocol):
    def save_reference(self, ref: SecretRef, value: str) -> None:
        """Write ``value`` where ``ref`` points. Raises AuthFailed (naming the reference, never the value)."""
        ...

    def current_in_bot(self, bot_id: str) -> str | None:
        """The plaintext refresh token the bot item holds now (a consistent read), or None."""
        ...

    def save_in_bot(self, bot_id: str, old: str, new: str) -> None:
        """Replace ``old`` by ``new`` in the bot item, only if it still holds ``old``. Raises AuthFailed."""
        ...


class AwsRefreshTokenStore:
    """The three places a refresh token may live. Clients are created on first use."""

    def __init__(
        self,
        *,
        secretsmanager: Any = None,
        ssm: Any = None,
        dynamodb: Any = None,
        bots_table: str | None = None,
        parameter_kms_key_id: str | None = None,
        session: Any = None,
    ) -> None:
        self._clients: dict[str, Any] = {"secretsmanager": secretsmanager, "ssm": ssm, "dynamodb": dynamodb}
        self._bots_table = bots_table
        self._parameter_kms_key_id = parameter_kms_key_id
        self._session = session

    def _client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            import boto3

            client = (self._session or boto3.session.Session()).client(service)
            self._clients[service] = client
        return client

    def save_reference(self, ref: SecretRef, value: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if ref.parameter is not None:
                options: dict[str, Any] = {"Type": "SecureString", "Overwrite": True}
                if self._parameter_kms_key_id:
                    options["KeyId"] = self._parameter_kms_key_id
                self._client("ssm").put_parameter(Name=ref.parameter, Value=value, **options)
                return
            assert ref.secret is not None
            client = self._client("secretsmanager")
            if ref.key is None:
                client.put_secret_value(SecretId=ref.secret, SecretString=value)
                return
            document = json.loads(client.get_secret_value(SecretId=ref.secret)["SecretString"])
            if not isinstance(document, dict):
                raise AuthFailed(
                    f"the rotated refresh_token cannot be kept: {ref.describe()} is not a JSON object", transient=False
                )
            document[ref.key] = value
            client.put_secret_value(SecretId=ref.secret, SecretString=json.dumps(document))
        except (ClientError, BotoCoreError, ValueError, KeyError) as exc:
            raise _lost(ref.describe(), exc) from None

    def current_in_bot(self, bot_id: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client("dynamodb").get_item(
                TableName=self._require_table(),
                Key={"bot_id": {"S": bot_id}},
                ConsistentRead=True,
                ProjectionExpression="#p.#a.#rt",
                ExpressionAttributeNames={"#p": "post_call_push", "#a": "auth", "#rt": "refresh_token"},
            )
        except (ClientError, BotoCoreError) as exc:
            raise AuthFailed(f"reading bot {bot_id}'s refresh_token failed ({_code(exc)})", transient=True) from None
        value = response.get("Item", {}).get("post_call_push", {}).get("M", {}).get("auth", {}).get("M", {})
        found = value.get("refresh_token", {}).get("S")
        return found if isinstance(found, str) else None

    def save_in_bot(self, bot_id: str, old: str, new: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client("dynamodb").update_item(
                TableName=self._require_table(),
                Key={"bot_id": {"S": bot_id}},
                UpdateExpression="SET #p.#a.#rt = :new",
                ConditionExpression="#p.#a.#rt = :old",
                ExpressionAttributeNames={"#p": "post_call_push", "#a": "auth", "#rt": "refresh_token"},
                ExpressionAttributeValues={":new": {"S": new}, ":old": {"S": old}},
            )
        except (ClientError, BotoCoreError) as exc:
            raise _lost(f"bot {bot_id}'s post_call_push.auth.refresh_token", exc) from None

    def _require_table(self) -> str:
        if not self._bots_table:
            raise AuthFailed("no Bots table to keep a plaintext refresh_token in", transient=False, error_kind="config")
        return self._bots_table


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or type(exc).__name__)
    return type(exc).__name__


def _lost(where: str, exc: Exception) -> AuthFailed:
    """The endpoint rotated the refresh token and the new one could not be kept: an operator must act.

    Final: the old refresh token is likely revoked by now, and retrying with it
    would only earn invalid_grant. The message says where, and what the store said.
    """
    code = _code(exc)
    if code == "ConditionalCheckFailedException":
        code = "the bot's refresh_token changed meanwhile"
    log.error("rotated refresh token not kept", extra={"where": where, "error_code": code})
    return AuthFailed(
        f"the token endpoint rotated the refresh_token but it could not be written to {where} ({code}): "
        "authorise the app again and store the new refresh token there",
        transient=False,
        error_code="refresh_token_not_kept",
    )
