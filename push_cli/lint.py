"""``lint``: a bot's ``post_call_push`` config checked before it costs a customer a push.

Pure functions over the bot item as written (not the validated model, so an
invalid config is still linted), a few sample calls, and an optional JSON
Schema of the CRM payload. Errors make the command exit non-zero, so it can
gate a config change.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from rich.console import Console

from crm_push.config import BotConfig, SecretRef, check_push_url, load_bot_config
from crm_push.errors import ConfigError
from crm_push.presets import preset_findings
from crm_push.secrets import (
    ReferencePrefixes,
    SecretProblem,
    SecretResolver,
    SecretUnavailable,
    credential_slots,
    resolve_credential,
)
from crm_push.templates import PLACEHOLDER, compile_key_mapper, compile_template, lookup_candidates
from crm_push.variables import NAMESPACES, build_push_variables
from push_cli.display import json_type, print_json, row, table, truncate

Severity = Literal["error", "warning"]

# The namespaces whose names are fixed by the contract, whatever the call holds.
_FIXED_NAMESPACES = ("result", "system")
_DATA_NAMESPACES = ("call", "crm", "analysis", "qc")
_SINGLE_BRACE = re.compile(r"(?<!\{)\{\s*([A-Za-z_][\w.\-]*)\s*\}(?!\})")
# A template always renders a string (contract §7): only these JSON types can come out of one.
_TEMPLATE_TYPES = frozenset({"string", "object", "array"})
_STRUCTURAL = frozenset(
    {
        "required",
        "additionalProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependencies",
    }
)


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    where: str
    problem: str
    suggestion: str = ""


@dataclass
class LintReport:
    bot_id: str
    findings: list[Finding] = field(default_factory=list)
    templates: int = 0
    placeholders: int = 0
    samples: int = 0
    schema_checked: bool = False

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == "warning")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors, "warnings": self.warnings}


# --- braces -------------------------------------------------------------------------------


def brace_findings(template: str) -> list[tuple[Severity, str]]:
    """Braces the renderer does not read as a placeholder: they reach the CRM as written."""
    problems: list[tuple[Severity, str]] = []
    leftover_parts: list[str] = []
    position = 0
    for match in PLACEHOLDER.finditer(template):
        leftover_parts.append(template[position : match.start()])
        position = match.end()
        if not match.group(1).strip():
            problems.append(("error", f'empty placeholder {match.group(0)} names nothing: the field gets "" there'))
            continue
        before = template[match.start() - 1 : match.start()]
        after = template[match.end() : match.end() + 1]
        if before == "{" and after == "}":
            problems.append(
                ("warning", f"triple braces around {match.group(0)}: the CRM gets the value wrapped in single braces")
            )
        leftover_parts.append(" ")  # a placeholder separates what is around it
    leftover_parts.append(template[position:])
    leftover = "".join(leftover_parts)
    for token in ("{{", "}}"):
        index = leftover.find(token)
        if index >= 0:
            snippet = leftover[max(0, index - 12) : index + 14].strip()
            problems.append(("error", f"unbalanced braces near {snippet!r}: not a placeholder, sent literally"))
            break
    else:
        if leftover.count("{") != leftover.count("}") and not _json_text(template):
            problems.append(("warning", "unbalanced single braces: if a placeholder was meant, write {{ name }}"))
    for match in _SINGLE_BRACE.finditer(leftover):
        problems.append(("warning", f"{match.group(0)} has single braces: did you mean {{{{{match.group(1)}}}}}?"))
    return problems


def brace_problems(template: str) -> list[str]:
    return [message for _, message in brace_findings(template)]


def _json_text(template: str) -> bool:
    return template.lstrip()[:1] in ("{", "[")


# --- names ---------------------------------------------------------------------------------


def edit_distance(a: str, b: str, limit: int = 3) -> int:
    """Levenshtein distance, giving up (returning ``limit + 1``) once it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def suggest_name(key: str, known: Iterable[str]) -> str | None:
    """The known variable an unresolvable ``{{key}}`` most likely meant, or None.

    Tried in order: the same name in another case; the same name without
    ``_``/``-``/spaces; the same field in another namespace; a name at most
    two edits away (one for short names).
    """
    names = sorted(set(known))
    head, dot, rest = key.partition(".")
    namespaced = bool(dot) and head in NAMESPACES
    field_name = rest if namespaced else key

    def field_of(name: str) -> str:
        return name.partition(".")[2]

    def same_namespace_first(matches: list[str]) -> str | None:
        if not matches:
            return None
        preferred = [m for m in matches if namespaced and m.startswith(head + ".")]
        return (preferred or matches)[0]

    for compare in (str.lower, _squash):
        target = compare(key) if namespaced else compare(field_name)
        found = [n for n in names if (compare(n) if namespaced else compare(field_of(n))) == target and n != key]
        if found:
            return same_namespace_first(found)
    elsewhere = [n for n in names if field_of(n) == field_name and n != key]
    if elsewhere:
        return same_namespace_first(elsewhere)
    allowed = 1 if len(field_name) < 6 else 2
    scored = sorted((edit_distance(_squash(field_name), _squash(field_of(n)), allowed), n) for n in names if n != key)
    if scored and scored[0][0] <= allowed:
        best = [n for d, n in scored if d == scored[0][0]]
        return same_namespace_first(best)
    return None


def suggest_namespace(head: str) -> str | None:
    scored = sorted((edit_distance(head.lower(), ns, 2), ns) for ns in NAMESPACES)
    return scored[0][1] if scored[0][0] <= 2 else None


def static_variables(bot: BotConfig) -> dict[str, Any]:
    """The variables every call has, whatever it holds: result/system, seeded analysis and qc keys."""
    return build_push_variables({}, {"analysis_keys": list(bot.analysis_keys)}, bot.timezone)


def sample_variables(calls: Sequence[Mapping[str, Any]], bot: BotConfig) -> list[dict[str, Any]]:
    """The variables of each sample call, built by the function's own ``build_push_variables``."""
    return [
        build_push_variables(call, {"recording_url": "", "analysis_keys": list(bot.analysis_keys)}, bot.timezone)
        for call in calls
    ]


# --- the lint ---------------------------------------------------------------------------------


def lint_bot(
    item: Mapping[str, Any],
    bot_id: str,
    *,
    sample_calls: Sequence[Mapping[str, Any]] = (),
    schema: Mapping[str, Any] | None = None,
    secret_resolver: Callable[[], SecretResolver] | None = None,
    reference_prefixes: ReferencePrefixes | None = None,
) -> LintReport:
    """Findings for one bot item. ``secret_resolver`` builds the resolver that checks each reference
    (with the operator's credentials); it is called only when the config has references, and None
    skips that check with a warning. ``reference_prefixes`` are the deployed stack's: a reference
    outside ``<prefix><scope>/`` is an error and is not read (the function would not read it either);
    None skips the scope rule (the CLI always passes them)."""
    report = LintReport(bot_id=bot_id, samples=len(sample_calls))
    report.findings.extend(_config_findings(item, bot_id))
    raw = item.get("post_call_push")
    if not isinstance(raw, Mapping):
        return report
    bot = load_bot_config(item, bot_id)
    report.findings.extend(plaintext_credential_findings(raw, bot_id))
    report.findings.extend(reference_findings(bot, secret_resolver, reference_prefixes))
    report.findings.extend(auth_findings(raw, bot, secret_resolver, reference_prefixes))
    key_mapper = raw.get("key_mapper")
    raw_headers = raw.get("headers")
    headers: Mapping[str, Any] = raw_headers if isinstance(raw_headers, Mapping) else {}
    templates = list(_templates(key_mapper, "key_mapper")) if isinstance(key_mapper, Mapping) else []
    templates += [(f"headers.{name}", value) for name, value in headers.items() if isinstance(value, str)]
    report.templates = len(templates)

    static = static_variables(bot)
    samples = sample_variables(sample_calls, bot)
    known = set(static).union(*samples) if samples else set(static)
    unchecked: list[str] = []
    for where, template in templates:
        for severity, message in brace_findings(template):
            report.findings.append(Finding(severity, where, message, _brace_fix(message)))
        for placeholder in compile_template(template).placeholders:
            if not placeholder.key:
                continue  # "{{}}": reported by the brace check above
            report.placeholders += 1
            finding = _placeholder_finding(where, placeholder.key, placeholder.source, static, samples, known, bot)
            if finding is None:
                continue
            if finding == "unchecked":
                unchecked.append(placeholder.source)
            else:
                report.findings.append(finding)
    if unchecked:
        report.findings.append(
            Finding(
                "warning",
                "samples",
                f"{len(unchecked)} placeholder(s) depend on call data and no sample call was read: "
                + ", ".join(sorted(set(unchecked))[:6]),
                "run with --bot-id (reads recent calls) or --call-file to check them",
            )
        )
    if schema is not None and isinstance(key_mapper, Mapping):
        report.schema_checked = True
        report.findings.extend(schema_findings(schema, key_mapper, static, samples))
    report.findings.extend(preset_lint(bot, raw, schema))
    return report


# --- presets (contract §14) ------------------------------------------------------------------

# Findings that do not stop a push today: a version that retires later, a key_mapper value the preset overwrites.
_ADVISORY_PRESET_FINDINGS = ("retires in", "which the preset overwrites", "is not a custom field")


def preset_lint(bot: BotConfig, raw: Mapping[str, Any], schema: Mapping[str, Any] | None) -> Iterator[Finding]:
    """A preset config checked against its CRM: object and key field names (against ``--schema``), the auth
    it takes, fields the CRM refuses in the body. A missing or misspelt preset key is already a config error."""
    config = bot.push
    if config is None or config.preset is None:
        return
    key_mapper = raw.get("key_mapper")
    mapped = [str(key) for key in key_mapper] if isinstance(key_mapper, Mapping) else None
    authorization = any(name.lower() == "authorization" for name in config.headers or ())
    if config.oauth is not None:
        auth_type: str = config.oauth.type
    else:
        auth_type = "token" if config.token or authorization else "none"
    scope = getattr(config.oauth, "scope", None)
    for problem in preset_findings(config.preset, schema, mapped_keys=mapped, auth_type=auth_type, auth_scope=scope):
        severity: Severity = "warning" if any(m in problem for m in _ADVISORY_PRESET_FINDINGS) else "error"
        yield Finding(severity, "post_call_push.preset", problem)


def _config_findings(item: Mapping[str, Any], bot_id: str) -> Iterator[Finding]:
    raw = item.get("post_call_push")
    if raw is None:
        yield Finding(
            "error",
            "post_call_push",
            "the bot has no post_call_push config: its calls are never pushed",
            "add a post_call_push map with url, method, token or headers, and key_mapper",
        )
        return
    bot = load_bot_config(item, bot_id)
    if bot.push_error:
        yield Finding(
            "error",
            "post_call_push",
            _without_bot_prefix(bot.push_error, bot_id),
            "every push of this bot is recorded as failed until this is fixed",
        )
    if not isinstance(raw, Mapping):
        return
    if not raw.get("url") and not raw.get("preset"):
        yield Finding("warning", "post_call_push.url", "no url: every push is recorded as skipped, nothing is sent")
    elif isinstance(raw.get("url"), str) and raw["url"].strip().lower().startswith("http://"):
        yield Finding(
            "warning",
            "post_call_push.url",
            "plain http: the token and customer data travel unencrypted",
            "use the CRM's https URL",
        )
    if raw.get("token") and raw.get("headers"):
        yield Finding(
            "warning",
            "post_call_push.token",
            "token is ignored because headers is set (contract §8)",
            "put the Authorization header in headers, or drop headers",
        )
    key_mapper = raw.get("key_mapper")
    if isinstance(key_mapper, Mapping) and not key_mapper:
        yield Finding("warning", "post_call_push.key_mapper", "key_mapper is empty: the CRM gets {}")
    timezone = item.get("timezone")
    if isinstance(timezone, str) and timezone:
        try:
            ZoneInfo(timezone)
        except (ValueError, KeyError, OSError):
            yield Finding(
                "warning",
                "timezone",
                f"unknown timezone {timezone!r}: call times are sent in UTC",
                "use an IANA name such as Asia/Kolkata",
            )


# --- credentials -------------------------------------------------------------------------------

# Header names whose values are credentials whatever the CRM calls them.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "apikey", "cookie"})
_CREDENTIAL_WORDS = ("token", "secret", "key", "password", "passwd", "auth", "signature", "credential")


def looks_like_credential(name: str) -> bool:
    """A header or query parameter name under which a CRM expects a credential."""
    lowered = name.lower()
    return lowered in _CREDENTIAL_HEADERS or any(word in lowered for word in _CREDENTIAL_WORDS)


def plaintext_credential_findings(raw: Mapping[str, Any], bot_id: str) -> Iterator[Finding]:
    """Credentials written into the bot item itself: readable by anyone who can read bot configs."""
    migrate = f"post-call-push secrets migrate --bot-id {bot_id}"
    exposure = "stored in plain text in the bot config: anyone who can read bot configs can read it"
    token = raw.get("token")
    if isinstance(token, str) and token:
        yield Finding("warning", "post_call_push.token", f"the token is {exposure}", migrate)
    headers = raw.get("headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            # A templated value is filled from call data at push time: no credential sits in the config.
            if isinstance(value, str) and value and "{{" not in value and looks_like_credential(str(name)):
                yield Finding("warning", f"post_call_push.headers.{name}", f"header {name} is {exposure}", migrate)
    signing = raw.get("signing_secret")
    entries = signing if isinstance(signing, (list, tuple)) else [signing]
    if any(isinstance(entry, str) and entry for entry in entries):
        yield Finding("warning", "post_call_push.signing_secret", f"the signing secret is {exposure}", migrate)
    url = raw.get("url")
    if isinstance(url, str) and url:
        yield from _url_credential_findings(url)


def _url_credential_findings(url: str) -> Iterator[Finding]:
    try:
        parts = urlsplit(url.strip())
        password = parts.password
    except ValueError:
        return  # the config error already says the url is malformed
    if password:
        yield Finding(
            "warning",
            "post_call_push.url",
            "the url carries a password in plain text (and the CRM may log it with the URL)",
            "send it as an Authorization header kept in Secrets Manager instead",
        )
    names = sorted({name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if looks_like_credential(name)})
    if names:
        yield Finding(
            "warning",
            "post_call_push.url",
            f"the url's query parameter(s) {', '.join(names)} look like credentials, in plain text",
            "if the CRM accepts it as a header, send it as one kept in Secrets Manager",
        )


_REFERENCE_HINTS: dict[SecretProblem, str] = {
    "unavailable": "the store was throttling or unreachable: run the lint again",
    "denied": "check that both your credentials and the function's role can read it",
    "kms": "check that both your credentials and the function's role may decrypt it with its KMS key",
    "not_found": "create it (post-call-push secrets migrate) or fix the reference",
    "unusable": "fix the value in the store (post-call-push secrets migrate writes one that works)",
    "unreadable": "create it (post-call-push secrets migrate) or fix the reference; check your AWS credentials",
}


def reference_findings(
    bot: BotConfig,
    secret_resolver: Callable[[], SecretResolver] | None,
    prefixes: ReferencePrefixes | None = None,
) -> Iterator[Finding]:
    """Each reference checked as a push would check it: in the bot's scope, then resolved.

    A failure is an error naming the reference and why; a reference outside the
    scope is never read, as the function would never read it.
    """
    config = bot.push
    if config is None or not config.references:
        return
    slots = [slot for slot in credential_slots(config) if isinstance(slot.credential, SecretRef)]
    if prefixes is not None:
        in_scope = []
        for slot in slots:
            assert isinstance(slot.credential, SecretRef)
            try:
                prefixes.check(slot.credential, bot.scope)
            except SecretUnavailable as exc:
                yield Finding("error", f"post_call_push.{slot.where}", str(exc), _scope_hint(bot, prefixes))
            else:
                in_scope.append(slot)
        slots = in_scope
    if not slots:
        return
    if secret_resolver is None:
        yield Finding(
            "warning",
            "post_call_push",
            f"{len(slots)} secret reference(s) not checked",
            "run without --skip-secrets, with credentials that can read them",
        )
        return
    resolver = secret_resolver()
    for slot in slots:
        try:
            resolve_credential(slot, resolver)
        except SecretUnavailable as exc:
            hint = _REFERENCE_HINTS["unavailable" if exc.transient else exc.problem]
            yield Finding(
                "error",
                f"post_call_push.{slot.where}",
                str(exc),
                f"{hint}; until then pushes fail with error_kind secret",
            )


# --- OAuth 2.0 (contract §13) ----------------------------------------------------------------

_AUTH_ORIGIN = re.compile(r"^\{\{\s*auth\.(\w+)\s*\}\}")


def auth_findings(
    raw: Mapping[str, Any],
    bot: BotConfig,
    secret_resolver: Callable[[], SecretResolver] | None,
    prefixes: ReferencePrefixes | None = None,
) -> Iterator[Finding]:
    """The auth config as the token source will use it, and the url reference; shape errors are config errors.

    Each credential reference of ``auth`` (and a ``url`` kept in a store) is
    checked as a push checks it: in the bot's scope, then resolved; a
    ``private_key`` must be a PEM private key. Plaintext secrets are warnings
    (``secrets migrate`` moves them), as is a token url in plain http.
    """
    config = bot.push
    url = raw.get("url")
    auth = config.oauth if config is not None else None
    if isinstance(url, str) and (origin := _AUTH_ORIGIN.match(url.strip())) and auth is None and "auth" not in raw:
        yield Finding(
            "error",
            "post_call_push.url",
            f"url begins with {{{{auth.{origin.group(1)}}}}} but the bot has no auth: it never renders",
            "add post_call_push.auth, or write the CRM's https origin",
        )
    if config is None:
        return
    slots: list[tuple[str, SecretRef]] = []
    if isinstance(config.url, SecretRef):
        slots.append(("url", config.url))
    if auth is not None:
        yield from _auth_shape_findings(auth, bot.bot_id)
        for name in ("client_id", "client_secret", "refresh_token", "private_key"):
            value = getattr(auth, name, None)
            if isinstance(value, SecretRef):
                slots.append((f"auth.{name}", value))
    if prefixes is not None:
        in_scope = []
        for where, ref in slots:
            try:
                prefixes.check(ref, bot.scope)
            except SecretUnavailable as exc:
                yield Finding("error", f"post_call_push.{where}", str(exc), _scope_hint(bot, prefixes))
            else:
                in_scope.append((where, ref))
        slots = in_scope
    if not slots:
        return
    if secret_resolver is None:
        yield Finding(
            "warning",
            "post_call_push.auth",
            f"{len(slots)} auth or url reference(s) not checked",
            "run without --skip-secrets, with credentials that can read them",
        )
        return
    resolver = secret_resolver()
    for where, ref in slots:
        try:
            value = resolver.resolve(ref)
        except SecretUnavailable as exc:
            hint = _REFERENCE_HINTS["unavailable" if exc.transient else exc.problem]
            kind = "auth" if where.startswith("auth.") else "secret"
            yield Finding("error", f"post_call_push.{where}", str(exc), f"{hint}; until then pushes fail ({kind})")
            continue
        problem = _unusable_credential(where, value)
        if problem:
            yield Finding(
                "error",
                f"post_call_push.{where}",
                f"the value of {ref.describe()} {problem}",
                _REFERENCE_HINTS["unusable"],
            )


def _auth_shape_findings(auth: Any, bot_id: str) -> Iterator[Finding]:
    if auth.token_url.lower().startswith("http://"):
        yield Finding(
            "warning",
            "post_call_push.auth.token_url",
            "plain http: credentials and tokens travel unencrypted; the function refuses it unless private "
            "networks are allowed (PUSH_ALLOW_PRIVATE_NETWORKS, local stacks only)",
            "use the identity provider's https token endpoint",
        )
    exposure = "stored in plain text in the bot config: anyone who can read bot configs can read it"
    for name in auth.plaintext_credentials:
        yield Finding(
            "warning",
            f"post_call_push.auth.{name}",
            f"{name} is {exposure}",
            f"post-call-push secrets migrate --bot-id {bot_id}",
        )
    key = getattr(auth, "private_key", None)
    if isinstance(key, str):
        problem = _unusable_credential("auth.private_key", key)
        if problem:
            yield Finding("error", "post_call_push.auth.private_key", f"private_key {problem}")


def _unusable_credential(where: str, value: str) -> str:
    """Why a resolved credential cannot be used where it goes ('' when it can); never quotes it."""
    if not value.strip():
        return "is empty"
    if where == "auth.private_key":
        return _private_key_problem(value)
    if where == "url":
        try:
            check_push_url(value)
        except ConfigError as exc:
            return f"is not a usable url: {exc}"
        return ""
    if re.search(r"[\x00-\x1f\x7f]", value):
        return "has a control character (a stored trailing newline?)"
    return ""


def _private_key_problem(pem: str) -> str:
    """RS256 needs an RSA private key in PEM; loaded here (cryptography) only when a bot uses the JWT grant."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        return "is not an unencrypted PEM private key"
    except Exception as exc:  # cryptography raises its own types for unsupported keys; none may quote the key
        return f"cannot be loaded ({type(exc).__name__})"
    if not isinstance(key, rsa.RSAPrivateKey):
        return "is not an RSA key: the JWT bearer grant signs with RS256"
    return ""


def _scope_hint(bot: BotConfig, prefixes: ReferencePrefixes) -> str:
    whose = f"tenant {bot.tenant_id}" if bot.tenant_id else f"bot {bot.bot_id} (it has no tenant_id)"
    return (
        f"keep {whose}'s credentials in a secret under {prefixes.secret_base(bot.scope)} or a parameter under "
        f"{prefixes.parameters_path}{bot.scope}/ and point the reference there; until then pushes fail with "
        "error_kind secret, final"
    )


def _without_bot_prefix(message: str, bot_id: str) -> str:
    prefix = f"bot {bot_id}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _templates(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _templates(value, f"{path}.{key}")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _templates(value, f"{path}[{index}]")


def _brace_fix(message: str) -> str:
    if message.startswith("empty placeholder"):
        return "name a variable, e.g. {{crm.CUSTOMERNAME}}, or remove the braces"
    if message.startswith("unbalanced braces"):
        return "write every placeholder as {{ namespace.field }}"
    return ""


def _resolves(key: str, variables: Mapping[str, Any]) -> str | None:
    return next((name for name in lookup_candidates(key) if name in variables), None)


def _placeholder_finding(
    where: str,
    key: str,
    source: str,
    static: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]],
    known: set[str],
    bot: BotConfig,
) -> Finding | Literal["unchecked"] | None:
    head, dot, _ = key.partition(".")
    namespaced = bool(dot) and head in NAMESPACES
    if _resolves(key, static) is not None and (not namespaced or key in static or head in _FIXED_NAMESPACES):
        return None  # every call has it (result.*, system.*, seeded keys)

    if samples:
        used = [_resolves(key, variables) for variables in samples]
        hits = sum(1 for name in used if name is not None)
        if hits == len(samples):
            via = Counter(name for name in used if name != key)
            if namespaced and via and key not in known:
                other = via.most_common(1)[0][0]
                return Finding(
                    "warning",
                    where,
                    f"{source} is not in {head}.*; it resolves from {other} by the suffix fallback",
                    f"write {{{{{other}}}}} to say so",
                )
            return None
        if hits:
            return Finding(
                "warning",
                where,
                f'{source} resolved in {hits} of {len(samples)} sampled calls; the others get ""',
                "check the calls that lack it",
            )
        return _never_resolves(where, key, source, head, namespaced, known, f"in the {len(samples)} sampled calls")

    transfer = namespaced and head in _FIXED_NAMESPACES and key.partition(".")[2].startswith("transfer_")
    if not dot or transfer or (namespaced and head in _DATA_NAMESPACES):
        if namespaced and head == "analysis" and bot.analysis_keys:
            suggestion = suggest_name(key, [f"analysis.{k}" for k in bot.analysis_keys])
            if suggestion:
                return Finding(
                    "error",
                    where,
                    f"{source} is not one of the bot's analysis_keys",
                    f"did you mean {{{{{suggestion}}}}}?",
                )
        return "unchecked"
    return _never_resolves(where, key, source, head, namespaced, known, "for any call")


def _never_resolves(
    where: str, key: str, source: str, head: str, namespaced: bool, known: set[str], scope: str
) -> Finding:
    suggestion = suggest_name(key, known)
    hint = f"did you mean {{{{{suggestion}}}}}?" if suggestion else ""
    if "." in key and not namespaced and suggestion is None:
        near = suggest_namespace(head)
        namespaces = ", ".join(NAMESPACES)
        return Finding(
            "error",
            where,
            f"{source}: {head!r} is not a namespace ({namespaces}) and {key!r} resolves from nothing {scope}",
            f"did you mean {near}.{key.partition('.')[2]}?" if near else "",
        )
    return Finding("error", where, f'{source} resolves from nothing {scope}: always sent as ""', hint)


# --- JSON Schema ---------------------------------------------------------------------------------


def check_schema(schema: Any) -> Any:
    """The validator class for ``schema``; ConfigError in plain words when the schema itself is broken."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, Mapping):
        raise ConfigError("the schema must be a JSON object")
    validator_class = validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(f"the schema is not a valid JSON Schema: {truncate(exc.message, 200)}") from exc
    return validator_class


def schema_findings(
    schema: Mapping[str, Any],
    key_mapper: Mapping[str, Any],
    static: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]],
) -> list[Finding]:
    """What the CRM's schema would reject in the payloads this key_mapper renders.

    With sample calls every rejection counts. Without, the payload is
    rendered against the variables every call has, so only what no call
    data can change is reported: missing or extra keys, literals, and types
    a template can never produce (it always renders a string).
    """
    validator = check_schema(schema)(schema)
    mapper = compile_key_mapper(key_mapper)
    payloads = [mapper.render(variables) for variables in samples] or [mapper.render(static)]
    seen: Counter[tuple[str, str]] = Counter()
    for payload in payloads:
        for error in validator.iter_errors(_plain(payload)):
            path = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
            path = path.replace(".[", "[")
            if not samples and not _independent_of_data(error, key_mapper):
                continue
            seen[(path, _schema_message(error))] += 1
    findings = []
    for (path, message), count in seen.items():
        scope = f" (in {count} of {len(samples)} sampled calls)" if samples else ""
        findings.append(
            Finding(
                "error",
                f"key_mapper.{path}" if path else "key_mapper",
                message + scope,
                "change the key_mapper, or agree the schema with the CRM",
            )
        )
    return findings


def _plain(payload: Any) -> Any:
    from crm_push.jsonvalues import to_plain

    return to_plain(payload)


def _leaf(key_mapper: Mapping[str, Any], path: Sequence[Any]) -> Any:
    node: Any = key_mapper
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _independent_of_data(error: Any, key_mapper: Mapping[str, Any]) -> bool:
    if error.validator in _STRUCTURAL:
        return True
    leaf = _leaf(key_mapper, list(error.absolute_path))
    if leaf is not None and not isinstance(leaf, (str, Mapping, list)):
        return True  # a literal: the CRM gets it as written for every call
    if error.validator == "type" and isinstance(leaf, str):
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return not _TEMPLATE_TYPES.intersection(wanted)
    return False


def _schema_message(error: Any) -> str:
    if error.validator == "type":
        wanted = error.validator_value
        wanted_text = " or ".join(wanted) if isinstance(wanted, list) else str(wanted)
        why = (
            " (a template always renders a string)"
            if not _TEMPLATE_TYPES.intersection(wanted if isinstance(wanted, list) else [wanted])
            else ""
        )
        return f"sent as {json_type(error.instance)}, the schema wants {wanted_text}{why}"
    if error.validator == "required":
        missing = re.findall(r"'([^']*)' is a required property", error.message)
        name = missing[0] if missing else truncate(error.message, 80)
        return f"the schema requires {name!r}, which the key_mapper does not send"
    if error.validator == "enum":
        return f"{truncate(str(error.instance), 40)!r} is not one of {truncate(str(error.validator_value), 80)}"
    return truncate(error.message, 160)


# --- showing -------------------------------------------------------------------------------------


def render_lint(console: Console, report: LintReport, *, as_json: bool) -> None:
    if as_json:
        print_json(console, report.as_json())
        return
    if report.findings:
        grid = table(f"Lint of bot {report.bot_id}", "severity", "where", "problem", "suggestion")
        order = {"error": 0, "warning": 1}
        for finding in sorted(report.findings, key=lambda f: order[f.severity]):
            row(grid, finding.severity.upper(), finding.where, finding.problem, finding.suggestion)
        console.print(grid)
    against = f"{report.samples} sample call(s)" if report.samples else "no sample calls"
    schema = ", the CRM schema" if report.schema_checked else ""
    verdict = "FAILED" if report.errors else "passed"
    console.print(
        f"lint {verdict}: {report.errors} error(s), {report.warnings} warning(s) - "
        f"{report.templates} template(s), {report.placeholders} placeholder(s), checked against {against}{schema}"
    )
