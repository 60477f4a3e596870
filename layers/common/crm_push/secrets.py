"""Credentials kept in Secrets Manager or SSM Parameter Store, resolved at push time (contract §11, §12).

A bot config may name where its token, header values and signing secrets live
(``SecretRef``) instead of holding them. A reference resolves only inside the
bot's scope (its tenant, else the bot): a Secrets Manager name under
``<secrets prefix><scope>/`` or an SSM name under ``<parameters prefix><scope>/``.
The function's role may read everything under the prefixes, for every tenant:
IAM cannot know which tenant a push is for, so ``scoped_resolver`` checks each
reference before any read. Values are fetched with Powertools Parameters,
cached per container for at most ``max_age`` seconds, and used verbatim: a
resolved value is never rendered as a template. Errors name the reference
(secret id, key, parameter name), never a value.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from crm_push.config import Credential, PostCallPushConfig, SecretRef, check_header
from crm_push.errors import ConfigError, PushError
from crm_push.ports import SecretResolver as SecretResolver  # the port; re-exported for older imports
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

SecretProblem = Literal[
    "out_of_scope",  # the reference names an entry outside the bot's scope: never read
    "not_found",  # the store has no such entry (or version)
    "denied",  # the reader's credentials may not read it
    "kms",  # its KMS key cannot decrypt it for the reader
    "unavailable",  # the store throttled, failed or could not be reached: transient
    "unusable",  # read, but the value cannot be used here (no such key, not text, a control character)
    "unreadable",  # anything else: no credentials or region, a name the store refuses, an unknown error
]


class SecretUnavailable(PushError):
    """A referenced credential could not be had; ``transient`` when the store itself was the trouble.

    The message names the reference and what went wrong, never a value, so it
    may be stored as the result's ``error`` (``error_kind`` ``secret``).
    ``problem`` classifies it for advice (lint), so nobody parses the message.
    """

    def __init__(self, message: str, transient: bool, problem: SecretProblem = "unreadable") -> None:
        super().__init__(message)
        self.transient = transient
        self.problem: SecretProblem = problem


# --- scope (contract §12) ---------------------------------------------------------------------

# What a reference's ARN carries: the name is judged, the partition, region and account are IAM's.
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]*:[0-9]*:secret:(?P<name>.+)")
_PARAMETER_ARN = re.compile(r"arn:aws[a-z-]*:ssm:[a-z0-9-]*:[0-9]*:parameter(?P<name>/.+)")
# A complete secret ARN ends in "-" and 6 random characters that are not part of the name.
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")
_DOT_SEGMENTS = frozenset({".", ".."})


def check_reference_scope(ref: SecretRef, scope: str, secrets_name_prefix: str, parameters_path_prefix: str) -> None:
    """Nothing when ``ref`` names an entry under ``<prefix><scope>/``; else SecretUnavailable, final.

    Pure and cheap (string checks only), run before any read. An ARN is judged by
    the name it carries. A secret ARN may be complete (the name, then ``-`` and 6
    random characters) or partial (the name alone), and a name may itself end like
    a suffix: both readings must be in scope, so no reading reaches another scope.
    """
    if not scope or "/" in scope or scope in _DOT_SEGMENTS:
        raise SecretUnavailable(
            f"{ref.describe()}: this bot's scope {scope!r} is not a usable tenant or bot id "
            "(empty, '.', '..' or containing '/'), so it may reference nothing; not read",
            False,
            "out_of_scope",
        )
    names: tuple[str, ...]
    if ref.parameter is not None:
        store, base, given = "parameter", parameters_path_prefix + scope + "/", ref.parameter
        if given.startswith("arn:"):
            match = _PARAMETER_ARN.fullmatch(given)
            names = (match.group("name"),) if match else ()
        else:
            names = (given,)
    else:
        assert ref.secret is not None  # SecretRef names exactly one store
        store, base, given = "secret", secrets_name_prefix + scope + "/", ref.secret
        if given.startswith("arn:"):
            match = _SECRET_ARN.fullmatch(given)
            names = (match.group("name"), _ARN_SUFFIX.sub("", match.group("name"))) if match else ()
        else:
            names = (given,)
    if not names:
        raise SecretUnavailable(
            f"{ref.describe()}: not an ARN of a {'Secrets Manager secret' if store == 'secret' else 'SSM parameter'} "
            "in this partition, so its name cannot be checked against this bot's scope; not read",
            False,
            "out_of_scope",
        )
    for name in names:
        if not name.startswith(base) or len(name) == len(base) or _DOT_SEGMENTS.intersection(name.split("/")):
            raise SecretUnavailable(
                f"{ref.describe()}: outside this bot's scope; a bot may reference only {store}s named "
                f"{base}... (no '.' or '..' segments); not read",
                False,
                "out_of_scope",
            )


@dataclass(frozen=True, slots=True)
class ReferencePrefixes:
    """Where the deployed stack lets references point: ``SECRETS_NAME_PREFIX`` and ``PARAMETERS_PATH_PREFIX``."""

    secrets_name: str
    parameters_path: str

    def check(self, ref: SecretRef, scope: str) -> None:
        """``check_reference_scope`` with these prefixes."""
        check_reference_scope(ref, scope, self.secrets_name, self.parameters_path)

    def secret_base(self, scope: str) -> str:
        """The name every secret of ``scope`` starts with."""
        return f"{self.secrets_name}{scope}/"


class _ScopedResolver:
    """A resolver that reads only what ``check_reference_scope`` admits for one scope."""

    __slots__ = ("_inner", "_parameters_path_prefix", "_scope", "_secrets_name_prefix")

    def __init__(
        self, inner: SecretResolver, scope: str, secrets_name_prefix: str, parameters_path_prefix: str
    ) -> None:
        self._inner = inner
        self._scope = scope
        self._secrets_name_prefix = secrets_name_prefix
        self._parameters_path_prefix = parameters_path_prefix

    def resolve(self, ref: SecretRef, *, fresh: bool = False) -> str:
        check_reference_scope(ref, self._scope, self._secrets_name_prefix, self._parameters_path_prefix)
        return self._inner.resolve(ref, fresh=True) if fresh else self._inner.resolve(ref)


def scoped_resolver(
    resolver: SecretResolver, scope: str, secrets_name_prefix: str, parameters_path_prefix: str
) -> SecretResolver:
    """``resolver`` restricted to ``scope``: each reference is checked before it is read.

    Made per push (a wrapper of four attributes, no I/O); an unusable scope is
    reported by ``resolve`` for each reference, so a bot without references is
    never failed for it.
    """
    return _ScopedResolver(resolver, scope, secrets_name_prefix, parameters_path_prefix)


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


def resolve_credential(slot: CredentialSlot, resolver: SecretResolver, *, fresh: bool = False) -> str:
    """The slot's value: plaintext as configured, a reference resolved and checked like plaintext would be.

    ``fresh`` reads a reference from the store again, past the cache (after the CRM refused the cached one).
    """
    credential = slot.credential
    if not isinstance(credential, SecretRef):
        return credential  # plaintext: validated with the config
    value = resolver.resolve(credential, fresh=True) if fresh else resolver.resolve(credential)
    if not value:
        raise SecretUnavailable(f"{slot.where}: {credential.describe()} is empty", False, "unusable")
    try:
        slot.check(value)
    except ConfigError as exc:
        # Checked like a plaintext value (a stored trailing newline would split the request),
        # but reported as the store's problem: the config itself is fine.
        raise SecretUnavailable(
            f"{slot.where}: the value of {credential.describe()} is unusable: {exc}", False, "unusable"
        ) from None
    return value


def resolve_push_credentials(
    config: PostCallPushConfig, resolver: SecretResolver, *, fresh: bool = False
) -> PushCredentials:
    """Every credential of ``config`` as text. Raises SecretUnavailable naming the first that failed.

    ``fresh``: every reference read from the store again (once per attempt, after a 401/403, contract §11).
    """
    headers: dict[str, str] | None = {} if config.headers else None
    verbatim: set[str] = set()
    token: str | None = None
    signing: list[str] = []
    refreshed: set[tuple[str | None, str | None]] = set()  # one fresh read per store entry, not per key of it
    for slot in credential_slots(config):
        credential = slot.credential
        again = False
        if fresh and isinstance(credential, SecretRef):
            entry = (credential.secret, credential.parameter)
            again = entry not in refreshed
            refreshed.add(entry)
        value = resolve_credential(slot, resolver, fresh=again)
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


_Entry = tuple[Literal["secretsmanager", "ssm"], str]  # a store and a name in it: what one read fetches


class StoreSecretResolver:
    """Secrets Manager and SSM through Powertools Parameters, cached per container.

    Powertools keeps the values; this class decides when they are stale by its
    own clock (injectable, monotonic by default), so the bound holds even if the
    wall clock jumps, and tests can move time without sleeping. Clients are
    created on first use: a config without references costs no AWS client.

    Pushes of one batch resolve in threads. Each store entry has its own lock,
    held across its read, so threads wanting the same stale entry make one read
    between them, while a slow read of one entry never holds up another's.
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
        self._fetched_at: dict[_Entry, float] = {}
        # Reads of an entry are numbered as they begin; ``_last_good`` is the number of the last that
        # succeeded. A fresh resolve is served by a read that began after it was asked, or makes one.
        self._begun: dict[_Entry, int] = {}
        self._last_good: dict[_Entry, int] = {}
        self._entry_locks: dict[_Entry, threading.Lock] = {}
        self._guard = threading.Lock()  # for the dicts of locks and providers; never held across a read

    def resolve(self, ref: SecretRef, *, fresh: bool = False) -> str:
        if ref.parameter is not None:
            return self._fetch(("ssm", ref.parameter), ref, fresh)
        assert ref.secret is not None  # SecretRef names exactly one store
        text = self._fetch(("secretsmanager", ref.secret), ref, fresh)
        if ref.key is None:
            return text
        try:
            document = json.loads(text)
        except ValueError:
            raise SecretUnavailable(
                f"{ref.describe()}: the secret is not a JSON object, so it has no key {ref.key}", False, "unusable"
            ) from None
        if not isinstance(document, dict):
            raise SecretUnavailable(
                f"{ref.describe()}: the secret is JSON but not an object, so it has no key {ref.key}",
                False,
                "unusable",
            )
        if ref.key not in document:
            raise SecretUnavailable(
                f"{ref.describe()}: the secret's JSON object has no key {ref.key}", False, "unusable"
            )
        value = document[ref.key]
        if not isinstance(value, str):
            raise SecretUnavailable(f"{ref.describe()}: the value under key {ref.key} is not text", False, "unusable")
        return value

    def _fetch(self, entry: _Entry, ref: SecretRef, fresh: bool) -> str:
        from aws_lambda_powertools.utilities.parameters import GetParameterError

        asked_after = self._begun.get(entry, 0)  # reads numbered above this began after this call
        provider = self._provider(entry[0])
        with self._lock_for(entry):
            now = self._clock()
            fetched_at = self._fetched_at.get(entry)
            stale = fetched_at is None or now - fetched_at >= self._max_age
            if fresh and self._last_good.get(entry, 0) <= asked_after:
                stale = True  # no read begun since the caller asked: the cached value is the one it doubts
            options: dict[str, Any] = {"max_age": self._max_age, "force_fetch": stale}
            if entry[0] == "ssm":
                options["decrypt"] = True
            if stale:
                self._begun[entry] = self._begun.get(entry, 0) + 1
            try:
                value = provider.get(entry[1], **options)
            except GetParameterError as exc:
                # Powertools wraps every SDK error; the original is the context it was raised in.
                raise _unavailable(ref, exc.__context__ or exc) from None
            if stale:
                self._fetched_at[entry] = now
                self._last_good[entry] = self._begun[entry]
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise SecretUnavailable(
                    f"{ref.describe()}: the secret is binary, not text", False, "unusable"
                ) from None
        if not isinstance(value, str):
            raise SecretUnavailable(f"{ref.describe()}: the store returned no text", False, "unusable")
        return value

    def _lock_for(self, entry: _Entry) -> threading.Lock:
        with self._guard:
            lock = self._entry_locks.get(entry)
            if lock is None:
                lock = self._entry_locks[entry] = threading.Lock()
            return lock

    def _provider(self, store: Literal["secretsmanager", "ssm"]) -> Any:
        provider = self._providers.get(store)
        if provider is not None:
            return provider
        from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider

        with self._guard:  # building a client reads no network: cheap enough to hold the guard
            provider = self._providers.get(store)
            if provider is None:
                client = self._clients[store] or _default_client(store)
                provider = (
                    SecretsProvider(boto3_client=client)
                    if store == "secretsmanager"
                    else SSMProvider(boto3_client=client)
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
            return SecretUnavailable(
                f"{what}: the store is throttling or unavailable ({code or status})", True, "unavailable"
            )
        if code in _NOT_FOUND_CODES:
            return SecretUnavailable(f"{what} does not exist ({code})", False, "not_found")
        if code in _DENIED_CODES:
            return SecretUnavailable(f"{what}: access denied to this function ({code})", False, "denied")
        if code in _KMS_CODES:
            return SecretUnavailable(f"{what}: its KMS key cannot decrypt it for this function ({code})", False, "kms")
        return SecretUnavailable(f"{what} cannot be read ({code or status})", False)
    if isinstance(error, (StoreConnectionError, HTTPClientError)):
        return SecretUnavailable(
            f"{what}: the store could not be reached ({type(error).__name__})", True, "unavailable"
        )
    if isinstance(error, NoCredentialsError):
        return SecretUnavailable(f"{what}: no AWS credentials to read it with", False)
    if isinstance(error, NoRegionError):
        return SecretUnavailable(f"{what}: no AWS region to read it in", False)
    if isinstance(error, ParamValidationError):
        return SecretUnavailable(f"{what}: not a valid name for the store", False)
    return SecretUnavailable(f"{what} cannot be read ({type(error).__name__})", False)
