"""The one reading of a push URL (contract §8, §12): validation, the gate key, logs, results, signing, the socket.

Two parsers that disagree about a URL's host let a request go to one host
while the circuit, the rate limit and the stored result name another (audit
#5: ``https://attacker.example\\@victim.example/x`` was ``victim.example`` to
``urlsplit`` and ``attacker.example`` to urllib3). So every reader asks
``parse_push_url``, and what it cannot read one way only it refuses:

* a backslash anywhere, more than one ``@`` anywhere, whitespace or a control
  or format character anywhere (no surrounding spaces either);
* a scheme other than http or https, no ``//``, no host, a host that is not
  ``letters digits - _ .`` or a bracketed IPv6 address (no zone), a port that
  is not 1 to 65535, a ``%`` that does not start a ``%XX`` escape.

The request line is built from this parse (``request_url``), already in the
form urllib3 writes it, so the sender connects to ``host``:``port`` and signs
the query exactly as it goes on the wire. User info (``user:password@``)
stays a credential: it is only ever ``basic_auth``, never part of the request
url, ``recorded``, ``origin``, ``destination`` or a ``repr``.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

from crm_push.errors import ConfigError
from crm_push.redaction import MIN_SECRET_CHARS, REDACTED

DEFAULT_PORTS = {"http": 80, "https": 443}
HIDDEN_PATH = "/…"
"""What stands for the path and query of a url that came from a secret reference (contract §12)."""

# Schemes an operator may plausibly write by mistake: named in the error, since they are no part of a
# credential. Any other text before ":" is not quoted: in "user:password@host" it is a user name.
_KNOWN_SCHEMES = frozenset({"ftp", "ftps", "sftp", "ws", "wss", "file", "s3", "mailto", "tcp", "grpc", "arn"})
_MALFORMED_AUTHORITY = (
    "url is malformed: the part after // is not host[:port] - a port must be a number from 1 to 65535, "
    "and a user name or password in the url must have / ? # @ and : percent-encoded"
)
_MALFORMED_IPV6 = "url is malformed: unbalanced [ ] around an IPv6 host, or characters not allowed in it"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_ASCII_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_LOWER_ESCAPE = re.compile(r"%(?:[a-f][0-9A-Fa-f]|[0-9A-F][a-f])")
_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 3986 characters a path or query may hold as they are, as urllib3 lets them through (util/url.py),
# and % (every % left starts an escape by then). str.translate deletes them in C: what is left needs encoding.
_PATH_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~!$&'()*+,;=:@/%-"
_QUERY_SAFE = _PATH_SAFE + "?"
_VISIBLE_ASCII = dict.fromkeys(range(0x21, 0x7F))

# Path segments an operator may read in ``recorded`` (see PushUrl.recorded).
_WORD = re.compile(r"[A-Za-z]+(?:[-_.][A-Za-z]+)*")
_VERSION = re.compile(r"[vV][0-9]{1,3}(?:\.[0-9]{1,3})*|[0-9]{4}-[0-9]{2}(?:-[0-9]{2})?")
_MAX_WORD_CHARS = 20
_CAPABILITY_MARKERS = frozenset(
    {
        "hook",
        "hooks",
        "webhook",
        "webhooks",
        "webhookb2",
        "incomingwebhook",
        "catch",
        "trigger",
        "triggers",
        "key",
        "keys",
        "token",
        "tokens",
        "secret",
        "secrets",
    }
)


@dataclass(frozen=True, slots=True, repr=False)
class PushUrl:
    """A push url as read once by ``parse_push_url``; build it only through that function.

    ``path`` and ``query`` are in their canonical, percent-encoded form (the
    form urllib3 sends unchanged); ``query`` has no ``?``. ``from_reference``:
    the url came from a secret reference, so none of its path or query is shown.
    """

    scheme: str
    host: str  # lower-case; an IPv6 address without brackets
    port: int  # as written, else the scheme's default
    path: str  # "" or starting with "/"
    query: str
    from_reference: bool = False
    explicit_port: bool = False
    _user: str | None = None  # percent-encoded as written; only ever read by basic_auth and credential_values
    _password: str | None = None

    def __repr__(self) -> str:
        return f"PushUrl({self.recorded!r})"

    @property
    def _bracketed_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def destination(self) -> str:
        """``scheme://host:port``: what a circuit and a rate counter belong to (contract §10, §12)."""
        return f"{self.scheme}://{self._bracketed_host}:{self.port}"

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, the port only when the url wrote one; never user info."""
        port = f":{self.port}" if self.explicit_port else ""
        return f"{self.scheme}://{self._bracketed_host}{port}"

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the host as read, and the port unless it is the scheme's default."""
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self._bracketed_host}{port}"

    @property
    def target(self) -> str:
        """The request line's target: path (at least ``/``) and the query; no fragment, ever."""
        return (self.path or "/") + (f"?{self.query}" if self.query else "")

    def request_url(self, extra_query: str = "") -> str:
        """The url to send: ``origin``, path, the url's own query, then ``extra_query`` (a GET's payload).

        No user info (``basic_auth`` carries it). ``extra_query`` is encoded
        the way urllib3 would encode it, so what is signed is what is sent,
        and an ``@`` in it as ``%40`` (same meaning), so that the sender's
        own ``parse_push_url`` of the result never sees a second ``@``.
        """
        extra = _encode(extra_query, _QUERY_SAFE).replace("@", "%40")
        query = "&".join(q for q in (self.query, extra) if q)
        return self.origin + (self.path or "/") + (f"?{query}" if query else "")

    @property
    def recorded(self) -> str:
        """What results, logs, queue messages and the CLI show: never a credential.

        * no user info; a url from a secret reference is ``origin`` + ``/…``;
        * every query value becomes ``***`` (``key=***``), and an item with no
          ``=`` becomes ``***`` whole;
        * a path segment is shown only when it reads as a word (letters,
          joined by ``-``, ``_`` or ``.``, at most 20 characters), an API
          version (``v2``, ``v59.0``) or a date version (``2026-03``), and no
          capability marker (``hooks``, ``webhook``, ``catch``, ``trigger``,
          ``key``, ``token``, ``secret`` ...) came before it in the path;
          after a marker only other markers are shown. Every other segment
          (ids, tokens, anything with a digit or an escape) becomes ``***``.

        So ``/hooks/catch/123/abcdef/`` (Zapier) is ``/hooks/catch/***/***/``,
        ``/services/T0AB/B0CD/XXXX...`` (Slack) is ``/services/***/***/***``,
        and ``/services/data/v59.0/sobjects/Lead`` stays as it is. A url
        whose path is a credential that reads as a plain word must be kept
        as a secret reference.
        """
        if self.from_reference:
            return self.origin + HIDDEN_PATH
        path = "/".join(segment if shown else REDACTED for segment, shown in _path_segments(self.path))
        query = "&".join(
            f"{name}={REDACTED}" if equals else REDACTED
            for name, equals, _ in (item.partition("=") for item in self.query.split("&") if item)
        )
        return self.origin + path + (f"?{query}" if query else "")

    @property
    def basic_auth(self) -> str | None:
        """The ``Authorization`` value for user info written in the url (as curl and browsers send it), or None."""
        if self._user is None:
            return None
        token = f"{unquote(self._user)}:{unquote(self._password or '')}".encode()
        return "Basic " + base64.b64encode(token).decode("ascii")

    def credential_values(self) -> frozenset[str]:
        """What a CRM's echo must be scrubbed of: every part of the url that ``recorded`` hides.

        The user name, password and ``user:password`` (as written and
        decoded), the Basic header, every query value, every masked path
        segment; for a url from a secret reference, its whole path and query
        too. Values shorter than ``MIN_SECRET_CHARS`` are left out.
        """
        values: set[str] = set()
        if self._user is not None:
            user, password = self._user, self._password or ""
            values.update({user, password, f"{user}:{password}", unquote(user), unquote(password)})
            values.add(f"{unquote(user)}:{unquote(password)}")
            values.add(self.basic_auth or "")
        for item in (i for i in self.query.split("&") if i):
            name, equals, value = item.partition("=")
            secret = value if equals else name
            values.update({secret, unquote_plus(secret), unquote(secret)})
        hide_all = self.from_reference
        for segment, shown in _path_segments(self.path):
            if hide_all or not shown:
                values.update({segment, unquote(segment)})
        if hide_all:
            values.update({self.path, unquote(self.path), self.target, self.query, unquote_plus(self.query)})
        return frozenset(v for v in values if len(v) >= MIN_SECRET_CHARS)


def parse_push_url(text: str, *, from_reference: bool = False) -> PushUrl:
    """Read a push url once, or refuse it (ConfigError) in words that never quote it.

    A url's text may be a password (``user:password@``, a capability path),
    so no message carries any part of it, and no exception is chained (a
    logged traceback would print the cause's message). ``from_reference``:
    the url is itself a credential (contract §12).
    """
    if not isinstance(text, str):
        raise ConfigError("url must be text")
    _refuse_ambiguous(text)
    scheme_match = _SCHEME.match(text)
    if scheme_match is None:
        raise ConfigError("url must start with http:// or https://")
    scheme = scheme_match.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        named = f" (not {scheme})" if scheme in _KNOWN_SCHEMES else ""
        raise ConfigError(f"url scheme must be http or https{named}")
    rest = text[scheme_match.end() :]
    if not rest.startswith("//"):
        raise ConfigError("url must start with http:// or https://")
    rest = rest[2:]
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, rest = rest[:authority_end], rest[authority_end:]
    rest = rest.partition("#")[0]  # a fragment is never sent
    path, _, query = rest.partition("?")
    userinfo, at, host_port = authority.rpartition("@")
    if at and not userinfo:
        raise ConfigError("url has an @ with no user name or password before it")
    host, written_port = _host_and_port(host_port)
    user: str | None = None
    password: str | None = None
    if at:
        user, colon, password_text = userinfo.partition(":")
        password = password_text if colon else None
        for part in (user, password_text):
            try:
                unquote(part, errors="strict")
            except UnicodeDecodeError:
                raise ConfigError("url user name or password is not UTF-8 once its %XX escapes are decoded") from None
    return PushUrl(
        scheme,
        host,
        DEFAULT_PORTS[scheme] if written_port is None else written_port,
        _encode(path, _PATH_SAFE),
        _encode(query, _QUERY_SAFE),
        from_reference=from_reference,
        explicit_port=written_port is not None,
        _user=user,
        _password=password,
    )


def _refuse_ambiguous(text: str) -> None:
    """Refuse what parsers read differently (contract §12), and a stray ``%``."""
    if "\\" in text:
        raise ConfigError("url contains a backslash, which parsers read differently: write it as %5C")
    if text.count("@") > 1:
        raise ConfigError(
            "url has more than one @, which parsers read differently: write an @ in a user name, password, "
            "path or query as %40"
        )
    # Printable ASCII only is the usual case, checked in C: a GET's request url can be a megabyte.
    clean = text.isascii() and not text.translate(_VISIBLE_ASCII)
    if not clean and (_ASCII_UNSAFE.search(text) or any(_is_unsafe(c) for c in set(text) if not c.isascii())):
        raise ConfigError("url contains whitespace or a control character")
    if "%" in text and _STRAY_PERCENT.search(text):
        raise ConfigError("url has a % that does not start a %XX escape: write a literal % as %25")


def _is_unsafe(char: str) -> bool:
    # C*: control, format (zero-width, bidi), surrogate, private, unassigned; Z*: every kind of space.
    return unicodedata.category(char)[0] in "CZ"


def _host_and_port(host_port: str) -> tuple[str, int | None]:
    """The host (lower-case, an IPv6 address unbracketed) and the port written after it, if any."""
    if host_port.startswith("["):
        inner, closed, after = host_port[1:].partition("]")
        if not closed or "%" in inner or "[" in inner:
            raise ConfigError(_MALFORMED_IPV6)  # a zone (%) names a local interface, never a CRM
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ConfigError(_MALFORMED_IPV6) from None
        # As written, not compressed: Python's own spelling of IPv4-mapped addresses changed in 3.13.
        host = inner.lower()
        if after and not after.startswith(":"):
            raise ConfigError(_MALFORMED_IPV6)
        port_text: str | None = after[1:] if after else None
    else:
        if "[" in host_port or "]" in host_port:
            raise ConfigError(_MALFORMED_IPV6)
        host_text, colon, port_part = host_port.partition(":")
        port_text = port_part if colon else None
        host = host_text.lower()
        if not host:
            raise ConfigError("url has no host")
        if port_text is not None and not _PORT.fullmatch(port_text):
            raise ConfigError(_MALFORMED_AUTHORITY)
        if not host.isascii():
            raise ConfigError("url host has non-ASCII characters: write an international name in its xn-- form")
        if len(host) > 253 or not _HOST.fullmatch(host):
            raise ConfigError("url host may hold only letters, digits, - _ and dots, or be an [IPv6] address")
    if port_text is None:
        return host, None
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(_MALFORMED_AUTHORITY)
    return host, int(port_text)


def _path_segments(path: str) -> list[tuple[str, bool]]:
    """Each segment of ``path`` and whether ``recorded`` may show it (the rule is in PushUrl.recorded)."""
    segments: list[tuple[str, bool]] = []
    after_marker = False
    for segment in path.split("/"):
        marker = segment.lower() in _CAPABILITY_MARKERS
        readable = not segment or (
            len(segment) <= _MAX_WORD_CHARS and bool(_WORD.fullmatch(segment) or _VERSION.fullmatch(segment))
        )
        segments.append((segment, marker or (readable and not after_marker) or not segment))
        after_marker = after_marker or marker
    return segments


def _encode(component: str, safe: str) -> str:
    """``component`` percent-encoded as urllib3 encodes a path or query (``_encode_invalid_chars``).

    Escapes are upper-cased; characters outside ``safe`` (the component's
    RFC 3986 set) are encoded as UTF-8 escapes. When every ``%`` starts an
    escape they are kept, else every ``%`` is encoded too (``parse_push_url``
    refuses stray ones, so only an extra query can have them). The result is
    a fixed point: urllib3 sends it byte for byte.
    """
    if not component:
        return component
    if "%" in component:
        if _LOWER_ESCAPE.search(component):
            component = _ESCAPE.sub(lambda m: m.group(0).upper(), component)
        if _STRAY_PERCENT.search(component):
            component = component.replace("%", "%25")
    if component.isascii() and not component.translate(_SAFE_TABLES[safe]):
        return component
    return quote(component, safe=safe)


_SAFE_TABLES = {safe: dict.fromkeys(map(ord, safe)) for safe in (_PATH_SAFE, _QUERY_SAFE)}
