"""Presigned GET URLs for recordings in S3 or an S3-compatible store (MinIO).

A presigned URL carries the rights, and the lifetime, of the credentials that
signed it: signed with the function's role it stops working when the role's
session ends, within hours (audit #11). So links are signed either with a
dedicated IAM user's long-term keys (``RECORDINGS_SIGNER_SECRET`` names the
Secrets Manager secret holding them) or, without one, with the role's
credentials and a lifetime capped to what they can honour
(``recording.presigned_link_lifetime``), the link marked so preview can warn.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

from crm_push.config import SecretRef
from crm_push.ports import SecretResolver
from crm_push.recording import PresignCredentials, PresignedLink, presigned_link_lifetime
from crm_push.secrets import SecretUnavailable

log = logging.getLogger(__name__)

# The signer secret's JSON keys (a SecretString such as {"access_key_id": "AKIA...", "secret_access_key": "..."}).
SIGNER_ACCESS_KEY_ID = "access_key_id"
SIGNER_SECRET_ACCESS_KEY = "secret_access_key"  # noqa: S105 - the name of a JSON key, not a secret

_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")
# STS hands out access key ids starting ASIA; their links would die with the session, as the role's do.
_TEMPORARY_KEY_PREFIX = "ASIA"


class RecordingPresigner:
    """(bucket, key) -> URL, as ``recording.Presigner``; ``link`` also says how the URL is signed.

    SigV4 and path-style so MinIO accepts it too. S3 clients are made on first
    use (most calls carry a public token link and never need one), one for the
    role's credentials and one per signer key pair; a rotated key pair in the
    secret is in use within the resolver's cache age (5 minutes at most).
    Thread-safe: pushes of one batch presign from worker threads.
    """

    def __init__(
        self,
        endpoint_url: str | None,
        ttl_seconds: int,
        *,
        session: Any = None,
        signer_secret: str | None = None,
        secrets: SecretResolver | None = None,
    ) -> None:
        self._endpoint_url = endpoint_url
        self._ttl_seconds = ttl_seconds
        self._session = session
        self._signer_secret = signer_secret
        self._secrets = secrets
        self._lock = threading.Lock()
        self._own_client: Any = None
        # The signer's client and the key pair it was made with: a different pair in the secret means a rotation.
        self._signer_client: Any = None
        self._signer_keys: tuple[str, str] | None = None
        self._warned_session = False

    @property
    def signer_secret(self) -> str | None:
        """The secret whose keys sign every link, or None (links are signed with the process's own credentials)."""
        return self._signer_secret

    def __call__(self, bucket: str, key: str) -> str:
        return self.link(bucket, key).url

    def link(self, bucket: str, key: str) -> PresignedLink:
        """The presigned GET of (bucket, key) and its terms.

        With a signer secret configured, an unreadable or unusable secret raises
        SecretUnavailable (naming the secret, never a value) rather than falling
        back to the role: a role-signed link would look fine and die within
        hours, the very trap the signer exists to avoid.
        """
        signed_with: PresignCredentials
        if self._signer_secret is not None:
            client, signed_with = self._client_of_signer(self._signer_secret), "signer"
        else:
            client = self._client_of_own_credentials()
            signed_with = _credentials_kind(self._session_or_default())
        expires_in = presigned_link_lifetime(self._ttl_seconds, signed_with)
        url: str = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
        )
        if signed_with == "session" and not self._warned_session:
            self._warned_session = True  # once per container: the setting, not the call, is the problem
            log.warning(
                "recording links are presigned with temporary (role session) credentials: S3 refuses them "
                "once that session ends, within hours; set RECORDINGS_SIGNER_SECRET or use the public token link",
                extra={"expires_in_seconds": expires_in},
            )
        return PresignedLink(url, expires_in, signed_with)

    # --- clients -------------------------------------------------------------------------

    def _session_or_default(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import boto3

                    self._session = boto3.session.Session()
        return self._session

    def _new_client(self, **credentials: str) -> Any:
        from botocore.config import Config

        return self._session_or_default().client(
            "s3",
            endpoint_url=self._endpoint_url,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            **credentials,
        )

    def _client_of_own_credentials(self) -> Any:
        if self._own_client is None:
            client = self._new_client()
            with self._lock:
                if self._own_client is None:
                    self._own_client = client
        return self._own_client

    def _client_of_signer(self, secret: str) -> Any:
        keys = _signer_keys(self._resolver(), secret)
        with self._lock:
            if self._signer_keys == keys:
                return self._signer_client
        # Explicit keys and no session token: the environment's role credentials play no part.
        client = self._new_client(aws_access_key_id=keys[0], aws_secret_access_key=keys[1])
        with self._lock:
            if self._signer_keys != keys:
                rotated = self._signer_keys is not None
                self._signer_client, self._signer_keys = client, keys
                log.info("recordings signer keys loaded", extra={"secret": secret, "rotated": rotated})
            return self._signer_client

    def _resolver(self) -> SecretResolver:
        if self._secrets is None:
            from botocore.config import Config

            from crm_push.secrets import StoreSecretResolver

            # The same short timeouts as references: a slow store costs the link, not the Lambda's budget.
            config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=3, read_timeout=5)
            client = self._session_or_default().client("secretsmanager", config=config)
            with self._lock:
                if self._secrets is None:
                    self._secrets = StoreSecretResolver(secrets_client=client)
        return self._secrets


def _credentials_kind(session: Any) -> PresignCredentials:
    """``session`` when the process's credentials carry a session token (the function's role always does)."""
    credentials = session.get_credentials()
    if credentials is None:
        return "long_term"  # nothing to sign with: the presign itself raises NoCredentialsError
    return "session" if credentials.get_frozen_credentials().token else "long_term"


def _signer_keys(resolver: SecretResolver, secret: str) -> tuple[str, str]:
    """(access key id, secret access key) from the signer secret, read through the resolver's cache.

    The whole secret is read once and both keys taken from that one value, so
    a rotation can never pair one key pair's id with another's secret.
    Errors name the secret and the problem, never a value.
    """
    ref = SecretRef(secret=secret)
    text = resolver.resolve(ref)
    where = f"recordings signer {ref.describe()}"
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SecretUnavailable(
            f'{where}: not a JSON object {{"{SIGNER_ACCESS_KEY_ID}": ..., "{SIGNER_SECRET_ACCESS_KEY}": ...}}',
            False,
            "unusable",
        )
    access_key_id = document.get(SIGNER_ACCESS_KEY_ID)
    secret_access_key = document.get(SIGNER_SECRET_ACCESS_KEY)
    if (
        not isinstance(access_key_id, str)
        or not isinstance(secret_access_key, str)
        or not (access_key_id and secret_access_key)
    ):
        raise SecretUnavailable(
            f"{where}: needs text under both {SIGNER_ACCESS_KEY_ID} and {SIGNER_SECRET_ACCESS_KEY}", False, "unusable"
        )
    if not _ACCESS_KEY_ID.fullmatch(access_key_id):
        raise SecretUnavailable(
            f"{where}: {SIGNER_ACCESS_KEY_ID} is not an AWS access key id (16+ capital letters and digits)",
            False,
            "unusable",
        )
    if access_key_id.startswith(_TEMPORARY_KEY_PREFIX):
        raise SecretUnavailable(
            f"{where}: {SIGNER_ACCESS_KEY_ID} is a temporary (STS) key, whose links die with its session; "
            "store an IAM user's access key",
            False,
            "unusable",
        )
    return access_key_id, secret_access_key


def make_presigner(
    endpoint_url: str | None,
    ttl_seconds: int,
    session: Any = None,
    *,
    signer_secret: str | None = None,
    secrets: SecretResolver | None = None,
) -> RecordingPresigner:
    """The recordings presigner for a Settings' ``recordings_endpoint_url``, ``recording_url_ttl_seconds`` and
    ``recordings_signer_secret``.

    ``secrets`` reads the signer secret (cached at most 5 minutes); without it
    one is made from ``session`` on first use.
    """
    return RecordingPresigner(endpoint_url, ttl_seconds, session=session, signer_secret=signer_secret, secrets=secrets)
