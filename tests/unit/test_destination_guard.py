"""The SSRF guard: which addresses a push may reach, and how a URL becomes a checked destination."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from crm_push.adapters.destination import (
    DestinationRefused,
    Resolver,
    UnresolvableHost,
    blocked_reason,
    resolve_destination,
)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        # public: allowed
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # IPv4-mapped public
        ("64:ff9b::808:808", None),  # NAT64 of a public address
        ("2002:808:808::1", None),  # 6to4 of a public address
        # IPv4
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.254", "shared (CGNAT)"),
        ("100.100.100.200", "cloud metadata"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to classify, not a bind
        ("0.1.2.3", "private"),  # "this network"
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "private"),  # reserved (Python also calls it private)
        ("255.255.255.255", "private"),
        ("192.0.2.10", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        # IPv6
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),  # documentation
        ("::127.0.0.1", "reserved"),  # deprecated IPv4-compatible form
        # IPv4 hidden inside IPv6
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "cloud metadata"),  # 6to4 of 169.254.169.254
    ],
)
def test_blocked_reason_classifies_addresses(address: str, reason: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost:8080/x",
        "http://2130706433/",  # decimal
        "http://0x7f.1/",  # hex, short form
        "http://0177.0.0.1/",  # octal
        "http://127.1/",  # short form
        "http://0x7f000001/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]:9000/",
        "http://0.0.0.0/",
        "http://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/api",
        "http://[fe80::1]/",
    ],
)
def test_odd_spellings_of_internal_addresses_are_refused(url: str) -> None:
    # The OS resolver reads these spellings as the address they mean; the guard checks that number.
    with pytest.raises(DestinationRefused, match=r"^destination refused: .* address \("):
        resolve_destination(url)


def test_allow_private_networks_lifts_only_the_address_check() -> None:
    destination = resolve_destination("http://0x7f.1:8080/hook?x=1", allow_private_networks=True)
    assert destination.addresses == ("127.0.0.1",)
    assert destination.host == "0x7f.1"
    assert destination.host_header == "0x7f.1:8080"
    assert destination.target == "/hook?x=1"

    for url in ("ftp://127.0.0.1/", "file:///etc/passwd", "gopher://127.0.0.1:70/", "//127.0.0.1/"):
        with pytest.raises(DestinationRefused, match="only http and https"):
            resolve_destination(url, allow_private_networks=True)


def fake_dns(answers: dict[str, Sequence[str]]) -> Resolver:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


def test_any_internal_address_refuses_the_whole_host() -> None:
    resolve = fake_dns({"crm.example": ["8.8.8.8", "10.0.0.7"]})
    with pytest.raises(DestinationRefused) as refused:
        resolve_destination("https://crm.example/x", resolve=resolve)
    assert str(refused.value) == "destination refused: crm.example resolves to a private address (10.0.0.7)"


def test_public_host_resolves_to_checked_addresses_ipv4_first() -> None:
    resolve = fake_dns({"crm.example": ["2606:4700::1", "93.184.216.34"]})
    destination = resolve_destination("https://CRM.example:443/p%20q?a=1#frag", resolve=resolve)
    assert destination.scheme == "https"
    assert destination.host == "crm.example"
    assert destination.port == 443
    assert destination.addresses == ("93.184.216.34", "2606:4700::1")
    assert destination.host_header == "crm.example"  # default port left out
    assert destination.target == "/p%20q?a=1"  # no fragment


def test_unresolvable_host_is_a_dns_failure() -> None:
    with pytest.raises(UnresolvableHost) as failed:
        resolve_destination("https://crm.invalid/x", resolve=fake_dns({}))
    assert str(failed.value) == "could not resolve host crm.invalid"
    assert failed.value.error_kind == "dns"


def test_refusals_do_not_repeat_credentials() -> None:
    with pytest.raises(DestinationRefused) as refused:
        resolve_destination("http://admin:hunter2@127.0.0.1:9/x?api_key=k123")
    assert "hunter2" not in str(refused.value)
    assert "admin" not in str(refused.value)
    assert "k123" not in str(refused.value)
    assert str(refused.value) == "destination refused: 127.0.0.1 is a loopback address (127.0.0.1)"
    assert refused.value.error_kind == "destination_refused"


def test_userinfo_becomes_basic_auth() -> None:
    destination = resolve_destination("http://us%40er:p%3Ass@127.0.0.1:81/", allow_private_networks=True)
    assert destination.basic_auth() == "Basic dXNAZXI6cDpzcw=="  # base64("us@er:p:ss")
    assert destination.host_header == "127.0.0.1:81"
    assert resolve_destination("http://127.0.0.1/", allow_private_networks=True).basic_auth() is None


def test_ipv6_host_header_is_bracketed() -> None:
    destination = resolve_destination("http://[::1]:8080/", allow_private_networks=True)
    assert destination.addresses == ("::1",)
    assert destination.host_header == "[::1]:8080"
