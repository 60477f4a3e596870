"""Where a push may go: the scheme and address checks that keep it off internal networks (SSRF).

The host is resolved once, through the OS (so odd spellings such as
``2130706433``, ``0x7f.1`` or ``0177.0.0.1`` come back as the numeric address
they really mean), every address is checked, and the caller connects to one
of those checked addresses: there is no second lookup that DNS rebinding
could answer differently.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from crm_push.push import ErrorKind

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are IPv4
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, ...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}


class DestinationError(Exception):
    """Why a push cannot go to a URL. The message is safe to store: no userinfo, query or headers.

    ``error_kind`` is the contract's name for it (§10), which the core's
    retry schedule reads to tell a final refusal from a passing DNS failure.
    """

    error_kind: ErrorKind = "destination_refused"


class DestinationRefused(DestinationError):
    """Not an allowed destination (scheme, malformed URL, or an internal address): final."""


class UnresolvableHost(DestinationError):
    """DNS gave no address: possibly transient. A lookup is a try to reach the CRM, unlike a refusal."""

    error_kind: ErrorKind = "dns"


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked destination: connect to one of ``addresses``, speak to ``host``."""

    scheme: str  # "http" or "https"
    host: str  # the name as written (lower-case, IDNA, IPv6 without brackets): SNI, certificate, Host
    port: int
    addresses: tuple[str, ...]  # checked numeric addresses, IPv4 first
    target: str  # path and query, as sent in the request line
    userinfo: str | None  # "user:password" from the URL, percent-encoded as written

    @property
    def host_header(self) -> str:
        host = self.host.split("%", 1)[0]  # an IPv6 zone id is local to this machine
        host = f"[{host}]" if ":" in host else host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def basic_auth(self) -> str | None:
        """``Authorization`` value for credentials written in the URL, as curl and browsers send them."""
        if not self.userinfo:
            return None
        user, _, password = self.userinfo.partition(":")
        token = f"{unquote(user)}:{unquote(password)}".encode()
        return "Basic " + base64.b64encode(token).decode("ascii")


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public internet address ("loopback", "private", ...), or None when it is.

    Addresses that carry an IPv4 address inside (IPv4-mapped ``::ffff:a.b.c.d``,
    NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by that IPv4 address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return blocked_reason(embedded)
    if ip in _METADATA:
        return "cloud metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared (CGNAT)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        return "non-public"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def resolve_with_os(host: str, port: int) -> list[str]:
    """The host's addresses as the OS resolves them (numeric spellings included), without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_destination(
    url: str, *, allow_private_networks: bool = False, resolve: Resolver = resolve_with_os
) -> Destination:
    """Check ``url`` and resolve its host. Raises DestinationRefused or UnresolvableHost.

    Only http and https; every resolved address must be public unless
    ``allow_private_networks`` (which lifts the address check, not the scheme check).
    """
    try:
        parts = parse_url(url)
    except LocationParseError:
        raise DestinationRefused("destination refused: the url could not be parsed") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise DestinationRefused(f"destination refused: only http and https urls are allowed, not {scheme[:20]!r}")
    host = (parts.host or "").strip("[]")
    if not host:
        raise DestinationRefused("destination refused: the url has no host")
    shown = host[:100]
    port = parts.port or DEFAULT_PORTS[scheme]
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise UnresolvableHost(f"could not resolve host {shown}")
    checked = [ipaddress.ip_address(address) for address in addresses]
    if not allow_private_networks:
        for ip in checked:
            reason = blocked_reason(ip)
            if reason is not None:
                where = f"{shown} is" if host == str(ip) else f"{shown} resolves to"
                raise DestinationRefused(f"destination refused: {where} a {reason} address ({ip})")
    # IPv4 first: a Lambda outside a dual-stack VPC has no IPv6 route out.
    ordered = sorted(addresses, key=lambda a: ":" in a)
    return Destination(scheme, host, port, tuple(ordered), parts.request_uri, parts.auth)
