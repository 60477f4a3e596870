"""``preview``: the exact request a push would send, and why each field holds what it holds.

Built on the core's own ``prepare_push``: the preview is the request the
function would send, not a re-implementation of it. Nothing is sent and
nothing is written.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from crm_push.config import BotConfig, SecretRef
from crm_push.errors import ConfigError
from crm_push.jsonvalues import to_json, to_text
from crm_push.ports import PushDeps, SecretResolver
from crm_push.preset_config import AnyPreset, HubspotPreset, SalesforcePreset, ZohoPreset
from crm_push.presets import PRESETS
from crm_push.recording import (
    DescribedPresigner,
    parse_recording_location,
    presigned_link_lifetime,
    public_recording_link,
)
from crm_push.request import prepare_push
from crm_push.secrets import SecretUnavailable
from crm_push.signing import SIGNATURE_HEADERS
from crm_push.templates import Placeholder, Resolution, compile_template, explain_placeholder
from crm_push.variables import QC_SEEDED_KEYS
from push_cli.display import (
    VALUE_WIDTH,
    Redactor,
    json_type,
    mask_secret,
    print_json,
    row,
    shorten_strings,
    shown,
    table,
)
from push_cli.lint import brace_problems


@dataclass
class PlaceholderUse:
    """One ``{{...}}`` of a field: which variable filled it, by which rule, with what."""

    placeholder: str
    how: str
    variable: str | None
    value: str  # the text substituted (redacted, truncated)


@dataclass
class FieldExplanation:
    path: str
    template: str  # the key_mapper value as written (redacted, truncated)
    placeholders: list[PlaceholderUse]
    sent: str  # the final value (redacted, truncated)
    sent_as: str  # its JSON type after coerce_json_like
    notes: list[str] = field(default_factory=list)


@dataclass
class HeaderLine:
    name: str
    value: str  # masked when it can hold a credential
    source: str
    notes: list[str] = field(default_factory=list)


@dataclass
class RecordingCheck:
    mode: str
    how: str
    link: str
    problems: list[str] = field(default_factory=list)


@dataclass
class Preview:
    call_id: str
    bot_id: str
    would_send: bool
    reason: str = ""  # why nothing would be sent
    method: str = ""
    url: str = ""
    headers: list[HeaderLine] = field(default_factory=list)
    fields: list[FieldExplanation] = field(default_factory=list)
    body: Any = None  # POST: the JSON body (long strings shortened unless --full)
    body_bytes: int = 0
    query: list[tuple[str, str]] = field(default_factory=list)  # GET: the parameters added to the URL
    recording: RecordingCheck | None = None
    preset: PresetLines | None = None
    # OAuth (contract §13): the grant, token endpoint and client id; no token is fetched or shown.
    auth: str = ""
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PresetLines:
    """What a preset makes of the push (contract §14): where it goes, the envelope, what each answer becomes."""

    name: str
    url_pattern: str
    keyed_on: str  # where the call id goes: the record is created once and updated by every later push
    envelope: str
    answers: list[str]


# --- explaining -------------------------------------------------------------------------


def build_preview(
    call_doc: Mapping[str, Any],
    bot: BotConfig,
    deps: PushDeps,
    *,
    width: int | None = VALUE_WIDTH,
    recording_ttl_seconds: int = 604800,
    check_recording: Any = None,
) -> Preview:
    """Everything the push would do for this call and bot, short of sending.

    ``check_recording`` is an optional ``(bucket, key) -> str | None`` that
    says what is wrong with a stored recording object (None when it is fine).
    """
    call_id = str(call_doc.get("call_id", ""))
    preview = Preview(call_id=call_id, bot_id=bot.bot_id, would_send=False)
    config = bot.push
    if call_doc.get("skip_post_push") is True:
        preview.warnings.append(
            "the call is flagged skip_post_push: the function never pushes it; only a replay with --force does"
        )
    if not bot.has_push_config:
        preview.reason = f"bot {bot.bot_id} has no post_call_push config: the function leaves its calls untouched"
        return preview
    if config is None:
        preview.reason = bot.push_error or "invalid post_call_push config"
        return preview
    if not config.has_destination:
        preview.reason = "post_call_push has no url: the push would be recorded as skipped"
        return preview

    redactor = Redactor(_secrets_of(call_doc, bot))
    if config.oauth is not None:
        # No token is fetched: a stand-in grant marks where the token and its answer's origin go.
        deps = dataclasses.replace(deps, tokens=_PreviewTokens())
    try:
        # References are not read here: the preview shows where each value comes from, never the value.
        prepared = prepare_push(call_doc, _references_as_markers(bot), deps)
    except (ConfigError, SecretUnavailable) as exc:
        preview.reason = f"the push would fail and be recorded as failed: {exc}"
        return preview

    request = prepared.request
    preview.would_send = True
    preview.method = request.method
    preview.url = request.recorded_url
    if config.preset is not None:
        # A preset's url is its CRM's origin, API names and the call id: nothing in it is a credential.
        preview.url = _with_auth_origin(request.url)
        preview.preset = preset_lines(config.preset)
    if config.oauth is not None:
        from push_cli.auth import auth_in_words

        preview.auth = f"{auth_in_words(config.oauth)}; the token is fetched at push time, never shown"
        preview.url = _with_auth_origin(preview.url)
        if preview.url.startswith("{{auth."):
            preview.auth += "; the url's origin comes from the token answer"
    preview.headers = _header_lines(request.headers, bot, prepared.variables, request.method)
    preview.fields = list(
        _explain_fields(config.key_mapper, prepared.payload, prepared.variables, call_doc, bot, redactor, width)
    )
    if request.method == "GET":
        preview.query = [
            (key, shown(to_json(v) if isinstance(v, (dict, list)) else to_text(v), redactor, width))
            for key, v in prepared.payload.items()
        ]
    else:
        preview.body = shorten_strings(redactor.value(json.loads(request.body or b"{}")), width)
        preview.body_bytes = len(request.body or b"")
    preview.recording = _recording_check(
        call_doc, deps, prepared.recording_link, redactor, recording_ttl_seconds, check_recording
    )
    preview.warnings.extend(_warnings(preview, config.key_mapper))
    return preview


# --- presets -----------------------------------------------------------------------------------

# Stand-in origins for a token answer's instance_url / api_domain (RFC 2606 .invalid: never resolvable).
_AUTH_ORIGINS = {
    "instance_url": "https://instance-url.token-answer.invalid",
    "api_domain": "https://api-domain.token-answer.invalid",
}
_TOKEN_MARKER = "(OAuth access token, fetched at push time)"  # noqa: S105 - a label, not a credential

# What each preset's answers become (contract §14); the classifier is crm_push.presets.classify_answer.
PRESET_ANSWERS: dict[str, list[str]] = {
    "salesforce": [
        "200/201/204: ok (201 created the record, 200/204 updated it)",
        "300 (several records have this external id), 400 and other 4xx: rejected, final",
        "403 REQUEST_LIMIT_EXCEEDED: quota - the destination's calls wait 1 h (or the Retry-After), no attempt spent",
        "408, 429, 5xx, no answer: retried on the ladder",
    ],
    "hubspot": [
        "2xx without errors: ok (results[0].new says created or updated)",
        "2xx with errors (e.g. 207, an unknown property): rejected crm_rejected, final",
        "429 policyName DAILY: quota until the next 00:00 UTC, no attempt spent",
        "429 TEN_SECONDLY_ROLLING, 408, 5xx, no answer: retried on the ladder; other 4xx: rejected, final",
    ],
    "zoho": [
        'data[0].status "success": ok (action insert or update)',
        'data[0].status "error" (in a 200): rejected crm_rejected, final, data[0].code in error',
        "429/503 with Retry-After over 15 min: quota; 408, 429, 5xx, no answer: retried; other 4xx: final",
    ],
    "dynamics": [
        "204: ok (created or updated by the alternate key)",
        "429 with Retry-After: retried after it (over 15 min: quota); 408, 5xx, no answer: retried",
        "other 4xx: rejected, final",
    ],
}


def preset_lines(preset: AnyPreset) -> PresetLines:
    """The preset's part of the preview: its url pattern, where the call id goes, the body's envelope, the answers."""
    spec = PRESETS[preset.name]
    if isinstance(preset, SalesforcePreset):
        keyed = f"the url: {preset.object}'s External ID field {preset.external_id_field} = the call id"
        envelope = "the key_mapper's fields as they are (the external id field must not be among them)"
    elif isinstance(preset, HubspotPreset):
        keyed = f"inputs[0].id with idProperty {preset.id_property!r} (a unique property) = the call id"
        envelope = '{"inputs": [{"idProperty": ..., "id": <call id>, "properties": <the key_mapper\'s fields>}]}'
    elif isinstance(preset, ZohoPreset):
        first = preset.duplicate_check_fields[0]
        keyed = f"data[0].{first}, the first of duplicate_check_fields, set to the call id"
        envelope = '{"data": [<the key_mapper\'s fields + the call id>], "duplicate_check_fields": [...]}'
    else:
        keyed = f"the url: alternate key {preset.alternate_key} = the call id"
        envelope = "the key_mapper's fields as they are, with OData-Version: 4.0"
    return PresetLines(preset.name, f"{spec.method} {spec.url_pattern}", keyed, envelope, PRESET_ANSWERS[preset.name])


class _PreviewGrant:
    def __init__(self) -> None:
        self.access_token = _TOKEN_MARKER
        self.token_type = "Bearer"  # noqa: S105 - the scheme's name

    def template_values(self) -> dict[str, str]:
        return dict(_AUTH_ORIGINS)


class _PreviewTokens:
    """Stands in for the token source: nothing is fetched, the token and its answer's origin are shown as markers."""

    def token(
        self,
        auth: Any,
        scope: str,
        *,
        secrets: SecretResolver | None,
        rejected: str | None = None,
        deadline: float | None = None,
        bot_id: str | None = None,
    ) -> _PreviewGrant:
        return _PreviewGrant()


def _with_auth_origin(url: str) -> str:
    for name, origin in _AUTH_ORIGINS.items():
        if url.startswith(origin):
            return "{{auth." + name + "}}" + url[len(origin) :]
    return url


def _secrets_of(call_doc: Mapping[str, Any], bot: BotConfig) -> list[str]:
    secrets = [str(call_doc.get("recording_access_token") or "")]
    if bot.push is not None:
        credentials = [bot.push.token, *(bot.push.headers or {}).values(), *(bot.push.signing_secret or ())]
        secrets.extend(value for value in credentials if isinstance(value, str))
    return secrets


_STAND_IN_SIGNING_KEY = "whsec_" + base64.b64encode(b"preview-stand-in-not-a-secret").decode()


def _marker(ref: SecretRef) -> str:
    return f"(from {ref.describe()} at push time)"


def _references_as_markers(bot: BotConfig) -> BotConfig:
    """The bot with each referenced credential replaced by a stand-in: a marker naming the reference for a
    token or header value, a fixed key for a signing secret. Nothing is read from a store."""
    config = bot.push
    if config is None or not config.references:
        return bot
    token = _marker(config.token) if isinstance(config.token, SecretRef) else config.token
    headers = {
        name: _marker(value) if isinstance(value, SecretRef) else value
        for name, value in (config.headers or {}).items()
    }
    # The request is signed with a stand-in key; its signature is never shown (see _signature_lines).
    signing = tuple(_STAND_IN_SIGNING_KEY if isinstance(s, SecretRef) else s for s in config.signing_secret or ())
    changes = {"token": token, "headers": headers or None, "signing_secret": signing or None}
    return dataclasses.replace(bot, push=config.model_copy(update=changes))


def _how(
    placeholder: Placeholder, variables: Mapping[str, Any], call_doc: Mapping[str, Any], bot: BotConfig
) -> tuple[str, str | None]:
    """The core's rule, with "pre-seeded" kept for the seeded keys the call really lacks.

    ``explain_placeholder`` calls any exact ``""`` pre-seeded; an empty
    ``result.transfer_target`` was sent as stored, and an operator must not
    be sent looking for an analysis key that is not involved.
    """
    resolution, name = explain_placeholder(placeholder, variables)
    if resolution is Resolution.PRESEEDED and name is not None:
        namespace, _, key = name.partition(".")
        analysis = _mapping(call_doc.get("analysis"))
        qc = _mapping(call_doc.get("qc"))
        seeded = (namespace == "analysis" and key in bot.analysis_keys and key not in analysis) or (
            namespace == "qc" and key in QC_SEEDED_KEYS and key not in qc
        )
        if not seeded:
            resolution = Resolution.EXACT
    return str(resolution), name


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _explain_fields(
    key_mapper: Mapping[str, Any],
    payload: Mapping[str, Any],
    variables: Mapping[str, Any],
    call_doc: Mapping[str, Any],
    bot: BotConfig,
    redactor: Redactor,
    width: int | None,
) -> Iterator[FieldExplanation]:
    def walk(raw: Any, sent: Any, path: str) -> Iterator[FieldExplanation]:
        if isinstance(raw, Mapping):
            for key, value in raw.items():
                yield from walk(value, sent.get(str(key)) if isinstance(sent, Mapping) else None, f"{path}.{key}")
            return
        if isinstance(raw, (list, tuple)):
            for index, value in enumerate(raw):
                yield from walk(value, sent[index] if isinstance(sent, list) else None, f"{path}[{index}]")
            return
        if not isinstance(raw, str):
            yield FieldExplanation(
                path,
                shown(raw, redactor, width),
                [],
                shown(sent, redactor, width),
                json_type(sent),
                [],
            )
            return
        template = compile_template(raw)
        uses: list[PlaceholderUse] = []
        notes: list[str] = []
        for placeholder in template.placeholders:
            how, name = _how(placeholder, variables, call_doc, bot)
            value = to_text(variables[name]) if name is not None else ""
            uses.append(PlaceholderUse(placeholder.source, how, name, shown(value, redactor, width)))
            if name is None:
                notes.append(f'{placeholder.source} resolved from nothing: sent as ""')
        template_braces = brace_problems(raw)
        notes.extend(template_braces)
        if not template_braces and isinstance(sent, str) and ("{{" in sent or "}}" in sent):
            holders = [u.placeholder for u in uses if "{{" in u.value or "}}" in u.value]
            notes.append(
                f"the value of {holders[0] if holders else 'a placeholder'} itself contains braces: "
                "fix the stored value, not the template"
            )
        if not template_braces:  # braces the renderer left alone are the story; "not JSON" would only repeat it
            notes.extend(_why_string(raw, template.placeholders, variables, sent))
        yield FieldExplanation(
            path, shown(raw, redactor, width), uses, shown(sent, redactor, width), json_type(sent), notes
        )

    for key, raw in key_mapper.items():
        yield from walk(raw, payload.get(str(key)), str(key))


def _why_string(raw: str, placeholders: tuple[Placeholder, ...], variables: Mapping[str, Any], sent: Any) -> list[str]:
    """Why a field that looks like it should be an object went out as a string."""
    if not isinstance(sent, str):
        return []
    notes = []
    values = {p.source: variables.get(explain_placeholder(p, variables)[1] or "", None) for p in placeholders}
    structured = [source for source, value in values.items() if isinstance(value, (Mapping, list))]
    if structured and sent.strip()[:1] not in ("{", "["):
        notes.append(
            f"text around {structured[0]} makes the whole field a string; "
            "put the placeholder alone in the template to send an object"
        )
    if sent[:1] in ("{", "["):
        try:
            json.loads(sent)
        except json.JSONDecodeError as exc:
            notes.append(
                f"starts like JSON but is not valid JSON ({exc.msg} at char {exc.pos}), so it is sent "
                "as a string; fix the stored value or the template"
            )
    elif any(isinstance(v, str) and v.lstrip()[:1] in ("{", "[") for v in values.values()) and raw.strip() != sent:
        notes.append("a placeholder's value is JSON text, but other text in the template keeps it a string")
    return notes


def _header_lines(
    headers: Mapping[str, str], bot: BotConfig, variables: Mapping[str, Any], method: str = "POST"
) -> list[HeaderLine]:
    config = bot.push
    configured = dict(config.headers or {}) if config else {}
    lines = []
    for name, value in headers.items():
        if name.lower() in SIGNATURE_HEADERS:
            continue  # shown below, with what is signed
        if name in configured:
            credential = configured[name]
            if isinstance(credential, SecretRef):
                lines.append(HeaderLine(name, _marker(credential), "secret reference in config"))
                continue
            notes = [
                f"{p.source} resolved from nothing: the header is sent without it"
                for p in compile_template(credential).placeholders
                if explain_placeholder(p, variables)[0] is Resolution.UNRESOLVED
            ]
            lines.append(HeaderLine(name, mask_secret(value) if value else '""', "headers in config", notes))
        elif name == "Authorization" and config is not None and config.oauth is not None:
            scheme = value.split(" ", 1)[0]
            source = f"auth: {config.oauth.type} at {config.oauth.origin}"
            lines.append(HeaderLine(name, f"{scheme} {_TOKEN_MARKER}", source))
        elif name == "Authorization" and config is not None and isinstance(config.token, SecretRef):
            lines.append(HeaderLine(name, _marker(config.token), "token: secret reference in config"))
        elif name == "Authorization" and config is not None and config.token:
            lines.append(HeaderLine(name, mask_secret(value), "token in config"))
        else:
            lines.append(HeaderLine(name, value, "always sent"))
    if config is not None and config.signing_secret:
        lines.extend(_signature_lines(headers, config.signing_secret, method))
    return lines


def _signature_lines(headers: Mapping[str, str], secrets: tuple[str | SecretRef, ...], method: str) -> list[HeaderLine]:
    """The Standard Webhooks headers and what they sign; the secrets only by where they come from."""
    call_id = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), "")
    signed = "the query string as sent (after ?)" if method == "GET" else "the JSON body as sent"
    sources = [s.describe() if isinstance(s, SecretRef) else "a plaintext whsec_ secret in config" for s in secrets]
    source = f"signing_secret ({len(secrets)} secret{'s' if len(secrets) > 1 else ''})"
    return [
        HeaderLine("webhook-id", call_id, source, ["the Idempotency-Key: the same on every attempt"]),
        HeaderLine("webhook-timestamp", "(Unix seconds of each attempt)", source, ["fresh on every attempt"]),
        HeaderLine(
            "webhook-signature",
            " ".join(["v1,…(computed per attempt)"] * len(secrets)),
            source,
            [f"HMAC-SHA256 of webhook-id.webhook-timestamp.{signed}", "signed with: " + "; ".join(sources)],
        ),
    ]


ROLE_SIGNED_LINK_WARNING = (
    "the link is presigned with the function's role credentials (RECORDINGS_SIGNER_SECRET is not set): "
    "it expires with the function's role session, within hours; configure RECORDINGS_SIGNER_SECRET "
    "or use the public token link"
)


def _recording_check(
    call_doc: Mapping[str, Any],
    deps: PushDeps,
    mode: str,
    redactor: Redactor,
    ttl_seconds: int,
    check_object: Any,
) -> RecordingCheck:
    """Which of the contract's three recording rules applied, and what could break the link."""
    key = call_doc.get("recording_key")
    token = call_doc.get("recording_access_token")
    stored = call_doc.get("recording_url")
    missing = [
        name
        for name, present in (
            ("recording_key", key),
            ("recording_access_token", token),
            ("PUBLIC_BASE_URL", deps.public_base_url),
        )
        if not present
    ]
    if mode == "public_token":
        base = str(deps.public_base_url).rstrip("/")
        link = redactor.text(public_recording_link(base, str(token)))
        problems = _unreachable_from_crm(base, "PUBLIC_BASE_URL")
        if base.startswith("http://"):
            problems.append("PUBLIC_BASE_URL is plain http: many CRMs and browsers refuse to open it")
        return RecordingCheck(
            mode, "public proxy link: PUBLIC_BASE_URL + the call's recording_access_token", link, problems
        )

    why_not_public = f"no public link because {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    location = parse_recording_location(stored, deps.recordings_bucket) if isinstance(stored, str) else None
    if mode == "presigned" and location is not None:
        bucket, object_key = location
        problems = []
        link, lasts = "", ""
        if isinstance(deps.presign, DescribedPresigner):
            presigned = deps.presign.link(bucket, object_key)
            link = redactor.text(presigned.url)
            if presigned.signed_with == "signer":
                ttl_seconds = presigned.expires_in_seconds
            else:
                # The function signs with its role whatever credentials this CLI runs with: its terms, not ours.
                ttl_seconds = presigned_link_lifetime(ttl_seconds, "session")
                problems.append(ROLE_SIGNED_LINK_WARNING)
                lasts = " at most, and only while the function's role session lasts"
        elif deps.presign is not None:
            link = redactor.text(deps.presign(bucket, object_key))
        ttl = str(timedelta(seconds=ttl_seconds))
        problems.extend(_unreachable_from_crm(link, "the S3 endpoint (RECORDINGS_ENDPOINT_URL)"))
        if check_object is not None:
            trouble = check_object(bucket, object_key)
            if trouble:
                problems.append(trouble)
        return RecordingCheck(
            mode,
            f"presigned GET of s3://{bucket}/{object_key}, valid {ttl} from the push{lasts} ({why_not_public})",
            link,
            problems,
        )

    problems = [why_not_public]
    if not isinstance(stored, str) or not stored:
        problems.append("the call has no recording_url either")
    elif location is None:
        problems.append(
            f"recording_url {redactor.text(stored)!r} names no bucket and key (a bare key needs RECORDINGS_BUCKET)"
        )
    elif deps.presign is not None:
        try:
            deps.presign(*location)
        except Exception as exc:  # the function swallows this; the operator needs to see it
            problems.append(f"presigning s3://{location[0]}/{location[1]} failed: {type(exc).__name__}: {exc}")
    return RecordingCheck("none", 'the CRM gets an empty recording URL ("")', "", problems)


def _unreachable_from_crm(url: str, what: str) -> list[str]:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith((".local", ".internal")):
        return [f"{what} is {host}: a CRM outside this network cannot open the link"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    if address.is_private or address.is_loopback or address.is_link_local:
        return [f"{what} is {host}, a private address: a CRM outside this network cannot open the link"]
    return []


def _warnings(preview: Preview, key_mapper: Mapping[str, Any]) -> list[str]:
    warnings = []
    unresolved = [u.placeholder for f in preview.fields for u in f.placeholders if u.variable is None]
    if unresolved:
        warnings.append(
            f'{len(unresolved)} placeholder(s) resolved from nothing and are sent as "": ' + ", ".join(unresolved[:8])
        )
    literal = [f.path for f in preview.fields if "{{" in f.sent or "}}" in f.sent]
    if literal:
        warnings.append("literal braces reach the CRM in: " + ", ".join(literal) + " (runbook check 3)")
    uses_recording = any(
        u.variable and u.variable.endswith(".recording_url") for f in preview.fields for u in f.placeholders
    )
    if preview.recording is not None:
        if preview.recording.mode == "none" and uses_recording:
            warnings.append("the recording field is sent empty: " + "; ".join(preview.recording.problems))
        elif preview.recording.problems and uses_recording:
            warnings.append("the recording link may not open: " + "; ".join(preview.recording.problems))
        if not uses_recording and "recording_url" not in to_json(key_mapper):
            warnings.append("no key_mapper field uses {{result.recording_url}}: the CRM gets no recording link")
    return warnings


# --- showing -----------------------------------------------------------------------------


def render_preview(console: Console, preview: Preview, *, as_json: bool) -> None:
    if as_json:
        print_json(console, preview.as_json())
        return
    console.print(f"Preview of call {preview.call_id} for bot {preview.bot_id} - nothing sent, nothing written")
    if not preview.would_send:
        console.print(f"Nothing would be sent: {preview.reason}")
        for warning in preview.warnings:
            console.print(f"  ! {warning}")
        return
    console.print(f"\n{preview.method} {preview.url}")
    if preview.auth:
        console.print(f"OAuth 2.0: {preview.auth}")
    if preview.preset is not None:
        _render_preset(console, preview.preset)
    headers = table("Headers", "header", "value", "source", "note")
    for line in preview.headers:
        row(headers, line.name, line.value, line.source, "; ".join(line.notes))
    console.print(headers)

    fields = table(
        "Fields (key_mapper)",
        "field",
        "template",
        "resolved from",
        "how",
        "sent as",
        "value",
        "note",
        wrap=("template", "value", "note"),
    )
    for explanation in preview.fields:
        notes = "; ".join(explanation.notes)
        uses = explanation.placeholders
        if not uses:
            row(
                fields,
                explanation.path,
                explanation.template,
                "-",
                "literal",
                explanation.sent_as,
                explanation.sent,
                notes,
            )
            continue
        if len(uses) == 1 and explanation.template == uses[0].placeholder:
            use = uses[0]
            row(
                fields,
                explanation.path,
                use.placeholder,
                use.variable or "-",
                use.how,
                explanation.sent_as,
                explanation.sent,
                notes,
            )
            continue
        # Several placeholders (or text around one): the field, then each placeholder's own part.
        row(fields, explanation.path, explanation.template, "", "", explanation.sent_as, explanation.sent, notes)
        for use in uses:
            row(fields, "", f"  {use.placeholder}", use.variable or "-", use.how, "", use.value, "")
    console.print(fields)

    if preview.method == "GET":
        query = table("Query parameters (added to the URL)", "parameter", "value")
        for key, value in preview.query:
            row(query, key, value)
        console.print(query)
    else:
        console.print(f"Body ({preview.body_bytes} bytes; long values shortened, --full shows them whole)")
        console.print(json.dumps(preview.body, indent=2, ensure_ascii=False, default=str))

    if preview.recording is not None:
        console.print(f"\nRecording link: {preview.recording.mode} - {preview.recording.how}")
        if preview.recording.link:
            console.print(f"  {preview.recording.link}")
        for problem in preview.recording.problems:
            console.print(f"  ! {problem}")
    if preview.warnings:
        console.print("\nWarnings")
        for warning in preview.warnings:
            console.print(f"  ! {warning}")


def _render_preset(console: Console, preset: PresetLines) -> None:
    lines = table(f"Preset {preset.name}", "what", "value", wrap=("value",))
    row(lines, "request", preset.url_pattern)
    row(lines, "keyed on", preset.keyed_on)
    row(lines, "body", preset.envelope)
    for index, answer in enumerate(preset.answers):
        row(lines, "answers" if index == 0 else "", answer)
    console.print(lines)
