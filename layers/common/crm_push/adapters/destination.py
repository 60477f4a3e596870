"""Where a push may go: the scheme and address checks that keep it off internal networks (SSRF).

The host is resolved once, through the OS (so odd spellings such as
``2130706433``, ``0x7f.1`` or ``0177.0.0.1`` come back as the numeric address
they really mean), every address is checked, and the caller connects to one
of those checked addresses: there is no second lookup that DNS rebinding
could answer differently.

The lookup runs within the attempt's time: ``getaddrinfo`` cannot be
interrupted, and a black-holed nameserver holds it for the resolver's own
timeouts (5 s a try), so it runs on a worker thread that the attempt waits
for only as long as its budget allows (a late answer is dropped).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from crm_push.ports import ErrorKind
from crm_push.push_url import PushUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

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
    """Not an allowed destination (an internal address): final."""


class UnresolvableHost(DestinationError):
    """DNS gave no address in time: possibly transient. A lookup is a try to reach the CRM, unlike a refusal."""

    error_kind: ErrorKind = "dns"


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked destination: connect to one of ``addresses``, speak to ``url.host``."""

    url: PushUrl  # the one parse of the request's url: scheme, host (SNI, certificate, Host), port, target
    addresses: tuple[str, ...]  # checked numeric addresses, IPv4 first


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
    url: PushUrl,
    *,
    allow_private_networks: bool = False,
    resolve: Resolver = resolve_with_os,
    timeout: float | None = None,
) -> Destination:
    """Resolve the url's host and check every address. Raises DestinationRefused or UnresolvableHost.

    Every resolved address must be public unless ``allow_private_networks``.
    ``timeout``: the most the lookup may take (the attempt's remaining time);
    None waits as long as the resolver does.
    """
    shown = url.host[:100]
    addresses = _lookup(resolve, url.host, url.port, timeout)
    if not addresses:
        raise UnresolvableHost(f"could not resolve host {shown}")
    try:
        checked = [ipaddress.ip_address(address) for address in addresses]
    except ValueError:
        raise UnresolvableHost(f"could not resolve host {shown} to a numeric address") from None
    if not allow_private_networks:
        for ip in checked:
            reason = blocked_reason(ip)
            if reason is not None:
                where = f"{shown} is" if url.host == str(ip) else f"{shown} resolves to"
                raise DestinationRefused(f"destination refused: {where} a {reason} address ({ip})")
    # IPv4 first: a Lambda outside a dual-stack VPC has no IPv6 route out.
    ordered = sorted(addresses, key=lambda a: ":" in a)
    return Destination(url, tuple(ordered))


def _lookup(resolve: Resolver, host: str, port: int, timeout: float | None) -> list[str]:
    """``resolve(host, port)``, given up after ``timeout`` seconds; no addresses when it failed."""
    if timeout is None:
        try:
            return list(resolve(host, port))
        except (OSError, UnicodeError):
            return []
    answer: list[str] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            answer.extend(resolve(host, port))
        except (OSError, UnicodeError):
            pass  # no addresses: reported as unresolvable
        finally:
            done.set()

    # A thread per lookup, not a pool: lookups stuck on one tenant's dead nameserver never queue up another's.
    threading.Thread(target=look_up, name="dns-lookup", daemon=True).start()
    if not done.wait(max(0.0, timeout)):
        raise UnresolvableHost(f"could not resolve host {host[:100]}: the lookup took over {timeout:.1f}s")
    return answer
