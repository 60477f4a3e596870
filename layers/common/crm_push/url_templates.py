"""Templated urls (contract §13, §14): values in the path and query, never in the origin.

A url like ``https://crm.example.com/leads/{{call.id}}?source={{crm.source}}``
is compiled once: the origin (scheme, host, port) is literal text, or comes
whole from a leading ``{{auth.instance_url}}`` / ``{{auth.api_domain}}``
(the token answer names the tenant's API host). Every other placeholder is
rendered with the key_mapper's rules (exact key, then the suffix fallback of
``templates.py``) and percent-encoded with no safe characters, so a value is
always exactly one path segment or one query value: whatever a call holds,
it cannot add a segment, add a parameter or reach another host.

Errors never quote the url: its text may hold a password (see
``config.check_push_url``); they name the placeholder key instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from crm_push.errors import ConfigError
from crm_push.jsonvalues import to_text
from crm_push.templates import PLACEHOLDER, UNRESOLVED, Placeholder, compile_template

AUTH_ORIGINS = ("instance_url", "api_domain")
"""The token answer's fields (contract §13) that may stand for a url's origin."""

_SCHEMES = ("http", "https")
_FORBIDDEN_TEXT = re.compile(r"[\s\x00-\x1f\x7f]")
# Segments that a client or server may collapse: a rendered value must never form one on its own.
_COLLAPSING_SEGMENTS = frozenset({"", ".", ".."})


def encode_component(value: str) -> str:
    """``value`` percent-encoded as one path segment or one query value: ``/ ? # & = %`` and all else encoded."""
    return quote(value, safe="")


def path_segment(value: str, what: str) -> str:
    """``value`` as one whole path segment; ``""``, ``.`` and ``..`` would collapse, so they are refused."""
    if value in _COLLAPSING_SEGMENTS:
        raise ConfigError(f"{what} would be an empty or dot path segment ({value!r}): it cannot name a record")
    return encode_component(value)


def check_origin(origin: str, what: str) -> str:
    """``origin`` as ``scheme://host[:port]`` (no trailing slash); ConfigError unless it is exactly that.

    Used for a preset's ``base_url`` / ``org_url`` and for the value a
    token answer gives for ``{{auth.*}}``. The message never quotes it.
    """
    if not isinstance(origin, str) or not origin.strip():
        raise ConfigError(f"{what} is empty")
    origin = origin.strip()
    if _FORBIDDEN_TEXT.search(origin):
        raise ConfigError(f"{what} contains whitespace or control characters")
    try:
        parts = urlsplit(origin)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(f"{what} is not a url of the form https://host[:port]") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigError(f"{what} must start with https:// (or http://)")
    if not host:
        raise ConfigError(f"{what} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{what} may not carry a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in origin or "#" in origin:
        raise ConfigError(f"{what} must be only scheme://host[:port], with no path, query or fragment")
    return origin.rstrip("/")


@dataclass(frozen=True, slots=True)
class _Segment:
    """One path segment or query component that holds at least one placeholder."""

    parts: tuple[str | Placeholder, ...]
    whole_path_segment: bool


_Piece = str | _Segment


@dataclass(frozen=True, slots=True)
class UrlTemplate:
    """A compiled url: an origin (literal, or ``{{auth.<auth_origin>}}``) and the pieces after it."""

    source: str
    origin: str
    """The literal ``scheme://host[:port]`` (user info kept as written); "" when ``auth_origin`` is set."""
    auth_origin: str | None
    """``instance_url`` or ``api_domain`` when the origin comes from the token answer, else None."""
    pieces: tuple[_Piece, ...]

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        """The value placeholders, in order (not the origin's ``{{auth.*}}``)."""
        found: list[Placeholder] = []
        for piece in self.pieces:
            if isinstance(piece, _Segment):
                found.extend(part for part in piece.parts if isinstance(part, Placeholder))
        return tuple(found)

    @property
    def is_static(self) -> bool:
        """Nothing to render: the url is sent as written."""
        return self.auth_origin is None and not self.placeholders

    def render(self, variables: Mapping[str, Any], auth_values: Mapping[str, Any] | None = None) -> str:
        """The url for one call; ConfigError when a placeholder does not resolve (never rendered as "")."""
        if self.auth_origin is not None:
            value = (auth_values or {}).get(self.auth_origin)
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"url begins with {{{{auth.{self.auth_origin}}}}}, but the token answer gave no {self.auth_origin}"
                )
            origin = check_origin(value, f"the token answer's {self.auth_origin}")
        else:
            origin = self.origin
        out = [origin]
        for piece in self.pieces:
            out.append(piece if isinstance(piece, str) else _render_segment(piece, variables))
        return "".join(out)


def _render_segment(segment: _Segment, variables: Mapping[str, Any]) -> str:
    out: list[str] = []
    for part in segment.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = part.resolve(variables)
        if value is UNRESOLVED:
            raise ConfigError(f"url placeholder {part.source} does not resolve: a url never sends an empty value")
        out.append(encode_component(to_text(value)))
    text = "".join(out)
    if segment.whole_path_segment and text in _COLLAPSING_SEGMENTS:
        key = next(p.key for p in segment.parts if isinstance(p, Placeholder))
        raise ConfigError(
            f"url placeholder {{{{{key}}}}} renders an empty or dot path segment ({text!r}): the path would change"
        )
    return text


def _mask(url: str) -> str:
    """``url`` with every placeholder blanked out, same length: delimiters inside a key are not delimiters."""
    return PLACEHOLDER.sub(lambda match: "\x00" * len(match.group(0)), url)


def _origin_end(masked: str) -> int:
    """Where the origin of a ``scheme://authority`` url ends: its first ``/``, ``?`` or ``#`` after ``//``."""
    start = masked.find("://")
    if start < 0:
        raise ConfigError("url must start with http:// or https://")
    authority = start + 3
    ends = [i for i in (masked.find(c, authority) for c in "/?#") if i >= 0]
    return min(ends) if ends else len(masked)


def _split_pieces(rest: str, masked_rest: str) -> tuple[_Piece, ...]:
    """Cut the text after the origin at ``/``, ``?``, ``&``, ``=`` and ``#``, outside placeholders.

    A stretch between delimiters that holds a placeholder becomes a
    ``_Segment`` (rendered per call); the rest stays literal text.
    """
    pieces: list[_Piece] = []
    in_query = False
    in_fragment = False
    start = 0
    index = 0

    def flush(end: int) -> None:
        text = rest[start:end]
        if not text:
            return
        if "\x00" not in masked_rest[start:end]:
            pieces.append(text)
            return
        if in_fragment:
            raise ConfigError("templates are allowed in the url's path and query, not in its #fragment")
        parts = compile_template(text).parts
        before = rest[start - 1] if start > 0 else "/"
        # Every stretch ends at a delimiter or the end, so one that starts after "/" is a whole segment.
        whole = not in_query and before == "/"
        pieces.append(_Segment(parts, whole))

    while index < len(rest):
        char = masked_rest[index]
        if char in "/?&=#" and not in_fragment:
            if char == "?" and in_query:
                index += 1  # a literal "?" inside a query is data, as RFC 3986 allows
                continue
            if char in "&=" and not in_query:
                index += 1
                continue
            flush(index)
            pieces.append(char)
            if char == "?":
                in_query = True
            elif char == "#":
                in_fragment = True
            start = index + 1
        index += 1
    flush(len(rest))
    return tuple(pieces)


@lru_cache(maxsize=1024)
def compile_url_template(url: str) -> UrlTemplate:
    """Compile a url for rendering per call; ConfigError when its origin is templated or it is malformed.

    Allowed: a literal ``http(s)://host[:port]`` or a leading
    ``{{auth.instance_url}}`` / ``{{auth.api_domain}}``, then a path and
    query whose placeholders each render as one encoded segment or value.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("url is empty")
    url = url.strip()
    literal_text = PLACEHOLDER.sub("", url)
    if _FORBIDDEN_TEXT.search(literal_text):
        raise ConfigError("url contains whitespace or control characters outside its {{placeholders}}")
    if "{{" in literal_text or "}}" in literal_text:
        raise ConfigError("url has an unbalanced {{ or }}: a placeholder is {{ key }}")
    compiled = compile_template(url)
    for placeholder in compiled.placeholders:
        if not placeholder.key:
            raise ConfigError("url has an empty placeholder {{}}, which names nothing")
    first = compiled.parts[0] if compiled.parts else ""
    auth_origin: str | None = None
    if isinstance(first, Placeholder) and first.key.startswith("auth."):
        name = first.key.removeprefix("auth.")
        if name not in AUTH_ORIGINS:
            raise ConfigError(
                f"url begins with {first.source}; only {{{{auth.instance_url}}}} or {{{{auth.api_domain}}}} "
                "may stand for its origin"
            )
        auth_origin = name
        rest = url[len(first.source) :]
        if rest and rest[0] not in "/?":
            raise ConfigError(f"url must continue with / or ? after {first.source}: it stands for the whole origin")
        origin = ""
    elif isinstance(first, Placeholder):
        raise ConfigError(
            f"url begins with {first.source}: its scheme, host and port must be literal, or come whole from "
            "{{auth.instance_url}} or {{auth.api_domain}}"
        )
    else:
        masked = _mask(url)
        end = _origin_end(masked)
        if "\x00" in masked[:end]:
            raise ConfigError(
                "url's scheme, host and port must be literal, or come whole from a leading "
                "{{auth.instance_url}} or {{auth.api_domain}}"
            )
        origin = url[:end]
        _check_literal_origin(origin)
        rest = url[end:]
    masked_rest = _mask(rest)
    for placeholder in compile_template(rest).placeholders:
        if placeholder.key.startswith("auth."):
            raise ConfigError(f"url placeholder {placeholder.source}: {{{{auth.*}}}} may only begin the url")
    return UrlTemplate(url, origin, auth_origin, _split_pieces(rest, masked_rest))


def _check_literal_origin(origin: str) -> None:
    try:
        parts = urlsplit(origin)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(
            "url is malformed: the part after // is not host[:port] - a port must be a number from 0 to 65535"
        ) from None
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigError("url scheme must be http or https")
    if not host:
        raise ConfigError("url has no host")


def render_url(url: str, variables: Mapping[str, Any], auth_values: Mapping[str, Any] | None = None) -> str:
    """Compile (cached) and render ``url`` in one go."""
    return compile_url_template(url).render(variables, auth_values)
