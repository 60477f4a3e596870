"""Credentials kept in Secrets Manager or SSM Parameter Store, resolved at push time (contract §11).

A bot config may name where its token, header values and signing secrets live
(``SecretRef``) instead of holding them. They are fetched with Powertools
Parameters, cached per container for at most ``max_age`` seconds, and used
verbatim: a resolved value is never rendered as a template. Errors name the
reference (secret id, key, parameter name), never a value.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from crm_push.config import Credential, PostCallPushConfig, SecretRef, check_header
from crm_push.errors import ConfigError, PushError
from crm_push.signing import parse_signing_secret

MAX_CACHE_SECONDS = 300  # contract §11: a value rotated in the store is in use within 5 minutes

# Error codes of Secrets Manager and SSM meaning "try again later", not "this reference is wrong".
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceError",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "ParameterNotFound", "ParameterVersionNotFound"})
_DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied", "UnrecognizedClientException"})
_KMS_CODES = frozenset({"DecryptionFailure", "InvalidKeyId", "KMSAccessDeniedException", "KMSDisabledException"})


class SecretUnavailable(PushError):
    """A referenced credential could not be had; ``transient`` when the store itself was the trouble.

    The message names the reference and what went wrong, never a value, so it
    may be stored as the result's ``error`` (``error_kind`` ``secret``).
    """

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class SecretResolver(Protocol):
    def resolve(self, ref: SecretRef) -> str:
        """The credential ``ref`` names; SecretUnavailable when it cannot be had."""
        ...


@dataclass(frozen=True, slots=True)
class PushCredentials:
    """The credentials of one push, every reference resolved. Never log or store an instance's values.

    ``token`` is None when ``headers`` is set (contract §8: headers win). Plaintext
    header values are still templates the core renders per call; the values named
    in ``verbatim_headers`` came from a store and are sent exactly as stored.
    """

    token: str | None = field(repr=False)
    headers: dict[str, str] | None = field(repr=False)
    signing_secrets: tuple[str, ...] = field(default=(), repr=False)
    verbatim_headers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CredentialSlot:
    """One place a config holds a credential that a push uses, and how its value is checked."""

    where: str  # "token", "headers.X-Api-Key", "signing_secret[1]": the config path, for errors
    credential: Credential = field(repr=False)
    header: str | None  # the header it is sent as; None for a signing secret

    def check(self, value: str) -> None:
        """ConfigError (naming no value) when ``value`` cannot be used here."""
        if self.header is None:
            parse_signing_secret(value)
        else:
            check_header(self.header, value)


def credential_slots(config: PostCallPushConfig) -> tuple[CredentialSlot, ...]:
    """Every credential a push of ``config`` uses: headers (else the token), then the signing secrets."""
    slots: list[CredentialSlot] = []
    if config.headers:
        slots.extend(CredentialSlot(f"headers.{name}", value, name) for name, value in config.headers.items())
    elif config.token is not None:
        slots.append(CredentialSlot("token", config.token, "Authorization"))
    secrets = config.signing_secret or ()
    for index, secret in enumerate(secrets):
        slots.append(CredentialSlot(f"signing_secret[{index}]" if len(secrets) > 1 else "signing_secret", secret, None))
    return tuple(slots)


def resolve_credential(slot: CredentialSlot, resolver: SecretResolver) -> str:
    """The slot's value: plaintext as configured, a reference resolved and checked like plaintext would be."""
    credential = slot.credential
    if not isinstance(credential, SecretRef):
        return credential  # plaintext: validated with the config
    value = resolver.resolve(credential)
    if not value:
        raise SecretUnavailable(f"{slot.where}: {credential.describe()} is empty", transient=False)
    try:
        slot.check(value)
    except ConfigError as exc:
        # Checked like a plaintext value (a stored trailing newline would split the request),
        # but reported as the store's problem: the config itself is fine.
        raise SecretUnavailable(
            f"{slot.where}: the value of {credential.describe()} is unusable: {exc}", transient=False
        ) from None
    return value


def resolve_push_credentials(config: PostCallPushConfig, resolver: SecretResolver) -> PushCredentials:
    """Every credential of ``config`` as text. Raises SecretUnavailable naming the first that failed."""
    headers: dict[str, str] | None = {} if config.headers else None
    verbatim: set[str] = set()
    token: str | None = None
    signing: list[str] = []
    for slot in credential_slots(config):
        value = resolve_credential(slot, resolver)
        if slot.header is None:
            signing.append(value)
        elif headers is not None:
            headers[slot.header] = value
            if isinstance(slot.credential, SecretRef):
                verbatim.add(slot.header)
        else:
            token = value
    return PushCredentials(token, headers, tuple(signing), frozenset(verbatim))


def secret_values(creds: PushCredentials) -> frozenset[str]:
    """Every credential value of a push, for ``redaction.scrub`` (which derives the encoded forms)."""
    values = {creds.token or "", *(creds.headers or {}).values(), *creds.signing_secrets}
    return frozenset(value for value in values if value)


# --- the stores -------------------------------------------------------------------------------


class StoreSecretResolver:
    """Secrets Manager and SSM through Powertools Parameters, cached per container.

    Powertools keeps the values; this class decides when they are stale by its
    own clock (injectable, monotonic by default), so the bound holds even if the
    wall clock jumps, and tests can move time without sleeping. Clients are
    created on first use: a config without references costs no AWS client.
    """

    def __init__(
        self,
        secrets_client: Any = None,
        ssm_client: Any = None,
        max_age: int = MAX_CACHE_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= max_age <= MAX_CACHE_SECONDS:
            raise ValueError(f"max_age must be 0 to {MAX_CACHE_SECONDS} seconds")
        self._clients: dict[str, Any] = {"secretsmanager": secrets_client, "ssm": ssm_client}
        self._providers: dict[str, Any] = {}
        self._max_age = max_age
        self._clock = clock
        self._fetched_at: dict[tuple[str, str], float] = {}
        # Pushes of one batch run in threads: one fetch per stale entry, not one per thread.
        self._lock = threading.Lock()

    def resolve(self, ref: SecretRef) -> str:
        if ref.parameter is not None:
            return self._fetch("ssm", ref.parameter, ref)
        assert ref.secret is not None  # SecretRef names exactly one store
        text = self._fetch("secretsmanager", ref.secret, ref)
        if ref.key is None:
            return text
        try:
            document = json.loads(text)
        except ValueError:
            raise SecretUnavailable(
                f"{ref.describe()}: the secret is not a JSON object, so it has no key {ref.key}", transient=False
            ) from None
        if not isinstance(document, dict):
            raise SecretUnavailable(
                f"{ref.describe()}: the secret is JSON but not an object, so it has no key {ref.key}", transient=False
            )
        if ref.key not in document:
            raise SecretUnavailable(f"{ref.describe()}: the secret's JSON object has no key {ref.key}", False)
        value = document[ref.key]
        if not isinstance(value, str):
            raise SecretUnavailable(f"{ref.describe()}: the value under key {ref.key} is not text", False)
        return value

    def _fetch(self, store: Literal["secretsmanager", "ssm"], name: str, ref: SecretRef) -> str:
        from aws_lambda_powertools.utilities.parameters import GetParameterError

        with self._lock:
            provider = self._provider(store)
            now = self._clock()
            fetched_at = self._fetched_at.get((store, name))
            stale = fetched_at is None or now - fetched_at >= self._max_age
            options: dict[str, Any] = {"max_age": self._max_age, "force_fetch": stale}
            if store == "ssm":
                options["decrypt"] = True
            try:
                value = provider.get(name, **options)
            except GetParameterError as exc:
                # Powertools wraps every SDK error; the original is the context it was raised in.
                raise _unavailable(ref, exc.__context__ or exc) from None
            if stale:
                self._fetched_at[(store, name)] = now
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise SecretUnavailable(f"{ref.describe()}: the secret is binary, not text", False) from None
        if not isinstance(value, str):
            raise SecretUnavailable(f"{ref.describe()}: the store returned no text", False)
        return value

    def _provider(self, store: Literal["secretsmanager", "ssm"]) -> Any:
        provider = self._providers.get(store)
        if provider is None:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider

            client = self._clients[store] or _default_client(store)
            provider = (
                SecretsProvider(boto3_client=client) if store == "secretsmanager" else SSMProvider(boto3_client=client)
            )
            self._providers[store] = provider
        return provider


def _default_client(store: str) -> Any:
    import boto3
    from botocore.config import Config

    # Short timeouts: a slow store must fail the attempt (retried later), not eat the Lambda's budget.
    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=3, read_timeout=5)
    return boto3.session.Session().client(store, config=config)


def _unavailable(ref: SecretRef, error: BaseException) -> SecretUnavailable:
    """Why ``ref`` could not be read, in words naming no value; transient only when the store was the trouble."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
    )
    from botocore.exceptions import ConnectionError as StoreConnectionError

    what = ref.describe()
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return SecretUnavailable(f"{what}: the store is throttling or unavailable ({code or status})", True)
        if code in _NOT_FOUND_CODES:
            return SecretUnavailable(f"{what} does not exist ({code})", False)
        if code in _DENIED_CODES:
            return SecretUnavailable(f"{what}: access denied to this function ({code})", False)
        if code in _KMS_CODES:
            return SecretUnavailable(f"{what}: its KMS key cannot decrypt it for this function ({code})", False)
        return SecretUnavailable(f"{what} cannot be read ({code or status})", False)
    if isinstance(error, (StoreConnectionError, HTTPClientError)):
        return SecretUnavailable(f"{what}: the store could not be reached ({type(error).__name__})", True)
    if isinstance(error, NoCredentialsError):
        return SecretUnavailable(f"{what}: no AWS credentials to read it with", False)
    if isinstance(error, NoRegionError):
        return SecretUnavailable(f"{what}: no AWS region to read it in", False)
    if isinstance(error, ParamValidationError):
        return SecretUnavailable(f"{what}: not a valid name for the store", False)
    return SecretUnavailable(f"{what} cannot be read ({type(error).__name__})", False)
