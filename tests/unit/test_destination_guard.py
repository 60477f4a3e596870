"""The SSRF guard: which addresses a push may reach, and how a URL becomes a checked destination."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Sequence

import pytest

from crm_push.adapters.destination import (
    DestinationRefused,
    Resolver,
    UnresolvableHost,
    blocked_reason,
    resolve_destination,
)
from crm_push.push_url import parse_push_url


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
        resolve_destination(parse_push_url(url))


def test_allow_private_networks_lifts_the_address_check() -> None:
    destination = resolve_destination(parse_push_url("http://0X7F.1:8080/hook?x=1"), allow_private_networks=True)
    assert destination.addresses == ("127.0.0.1",)
    assert destination.url.host == "0x7f.1"
    assert destination.url.host_header == "0x7f.1:8080"
    assert destination.url.target == "/hook?x=1"


def fake_dns(answers: dict[str, Sequence[str]]) -> Resolver:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


def test_any_internal_address_refuses_the_whole_host() -> None:
    resolve = fake_dns({"crm.example": ["8.8.8.8", "10.0.0.7"]})
    with pytest.raises(DestinationRefused) as refused:
        resolve_destination(parse_push_url("https://crm.example/x"), resolve=resolve)
    assert str(refused.value) == "destination refused: crm.example resolves to a private address (10.0.0.7)"


def test_public_host_resolves_to_checked_addresses_ipv4_first() -> None:
    resolve = fake_dns({"crm.example": ["2606:4700::1", "93.184.216.34"]})
    destination = resolve_destination(parse_push_url("https://CRM.example:443/p%20q?a=1#frag"), resolve=resolve)
    assert (destination.url.scheme, destination.url.host, destination.url.port) == ("https", "crm.example", 443)
    assert destination.addresses == ("93.184.216.34", "2606:4700::1")
    assert destination.url.host_header == "crm.example"  # default port left out
    assert destination.url.target == "/p%20q?a=1"  # no fragment


def test_unresolvable_host_is_a_dns_failure() -> None:
    with pytest.raises(UnresolvableHost) as failed:
        resolve_destination(parse_push_url("https://crm.invalid/x"), resolve=fake_dns({}))
    assert str(failed.value) == "could not resolve host crm.invalid"
    assert failed.value.error_kind == "dns"


def test_refusals_do_not_repeat_credentials() -> None:
    with pytest.raises(DestinationRefused) as refused:
        resolve_destination(parse_push_url("http://admin:hunter2@127.0.0.1:9/x?api_key=k123"))
    assert "hunter2" not in str(refused.value)
    assert "admin" not in str(refused.value)
    assert "k123" not in str(refused.value)
    assert str(refused.value) == "destination refused: 127.0.0.1 is a loopback address (127.0.0.1)"
    assert refused.value.error_kind == "destination_refused"


def test_ipv6_host_header_is_bracketed() -> None:
    destination = resolve_destination(parse_push_url("http://[::1]:8080/"), allow_private_networks=True)
    assert destination.addresses == ("::1",)
    assert destination.url.host_header == "[::1]:8080"


def test_the_resolver_is_asked_for_the_parsed_host_and_port() -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> Sequence[str]:
        asked.append((host, port))
        return ["93.184.216.34"]

    resolve_destination(parse_push_url("https://u:p@CRM.Example:8443/in"), resolve=resolve, timeout=5.0)
    resolve_destination(parse_push_url("http://crm.example/in"), resolve=resolve)

    assert asked == [("crm.example", 8443), ("crm.example", 80)]


def test_a_lookup_that_does_not_answer_in_time_is_a_dns_failure() -> None:
    release = threading.Event()

    def hangs(host: str, port: int) -> Sequence[str]:
        release.wait(30)  # a black-holed nameserver: getaddrinfo cannot be interrupted
        return ["93.184.216.34"]

    started = time.monotonic()
    try:
        with pytest.raises(UnresolvableHost) as failed:
            resolve_destination(parse_push_url("https://slow.example/x"), resolve=hangs, timeout=0.2)
    finally:
        release.set()

    assert str(failed.value) == "could not resolve host slow.example: the lookup took over 0.2s"
    assert failed.value.error_kind == "dns"
    assert time.monotonic() - started < 5  # bounded by the timeout, not by the resolver


def test_no_time_left_means_no_wait() -> None:
    release = threading.Event()

    def hangs(host: str, port: int) -> Sequence[str]:
        release.wait(30)
        return ["93.184.216.34"]

    try:
        with pytest.raises(UnresolvableHost, match="took over"):
            resolve_destination(parse_push_url("https://slow.example/x"), resolve=hangs, timeout=-1.0)
    finally:
        release.set()


def test_a_lookup_that_fails_within_the_time_is_unresolvable() -> None:
    with pytest.raises(UnresolvableHost, match=r"^could not resolve host crm\.invalid$"):
        resolve_destination(parse_push_url("https://crm.invalid/x"), resolve=fake_dns({}), timeout=5.0)
