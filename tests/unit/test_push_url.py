"""The one reading of a push url (contract §12): what it refuses, what it shows, and that the socket agrees."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url
from urllib3.util.url import _encode_target  # what urllib3 writes on the request line

from crm_push.config import PostCallPushConfig, check_push_url
from crm_push.errors import ConfigError
from crm_push.push_url import PushUrl, parse_push_url
from crm_push.redaction import scrub

PASSWORD = "pw/4242?x"
URL_WITH_EVERYTHING = (
    f"https://crm-user:{quote(PASSWORD, safe='')}@CRM.Example.com:8443/hooks/catch/123/abcdef/"
    "?api_key=qs-secret-5151&sig=a%2Bb%3Dc&v=2#frag"
)


# --- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://attacker.example\\@victim.example/x", "backslash"),  # audit #5
        ("https://crm.example/a\\b", "backslash"),
        ("https://a@attacker.example@victim.example/", "more than one @"),
        ("https://u:p@crm.example/in?owner=ops@corp.example", "more than one @"),
        ("https://crm.example/ in", "whitespace or a control character"),
        (" https://crm.example/in", "whitespace or a control character"),
        ("https://crm.example/in\n", "whitespace or a control character"),
        ("https://crm.example/in\tx", "whitespace or a control character"),
        ("https://crm.example/in\x00", "whitespace or a control character"),
        ("https://crm.example/in\x7f", "whitespace or a control character"),
        ("https://crm.example\u200b/in", "whitespace or a control character"),  # zero-width space
        ("https://crm.example/in\u00a0x", "whitespace or a control character"),  # no-break space
        ("https://crm.example/\u202eni", "whitespace or a control character"),  # right-to-left override
        ("ftp://crm.example/in", "url scheme must be http or https (not ftp)"),
        ("javascript:alert(1)", "url scheme must be http or https"),
        ("crm.example/in", "url must start with http:// or https://"),
        ("https:crm.example/in", "url must start with http:// or https://"),
        ("//crm.example/in", "url must start with http:// or https://"),
        ("https:///in", "url has no host"),
        ("https://user:pw@/in", "url has no host"),
        ("https://@crm.example/in", "no user name or password before it"),
        ("https://crm.example:99999/in", "a port must be a number from 1 to 65535"),
        ("https://crm.example:0/in", "a port must be a number from 1 to 65535"),
        ("https://crm.example:/in", "a port must be a number from 1 to 65535"),
        ("https://crm.example:8o8o/in", "a port must be a number from 1 to 65535"),
        ("https://crm-user:pw/4242@crm.example.com/in", "percent-encoded"),  # unencoded / in a password
        ("https://[::1/in", "unbalanced [ ]"),
        ("https://[fe80::1%25eth0]/in", "unbalanced [ ]"),  # a zone names a local interface
        ("https://[not-v6]/in", "unbalanced [ ]"),
        ("https://[::1]x/in", "unbalanced [ ]"),
        ("https://crm]example/in", "unbalanced [ ]"),
        ("https://crm%2Eexample/in", "only letters, digits"),
        ("https://crm..example/in", "only letters, digits"),
        ("https://crm.example!/in", "only letters, digits"),
        ("https://bücher.example/in", "xn-- form"),
        ("https://crm.example/50%off", "does not start a %XX escape"),
        ("https://crm.example/in?discount=5%", "does not start a %XX escape"),
        ("https://us%ZZer:pw@crm.example/in", "does not start a %XX escape"),
        ("https://%FF%FE:pw@crm.example/in", "not UTF-8"),
    ],
)
def test_ambiguous_or_unusable_urls_are_refused_without_quoting_them(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_push_url(url)

    message = str(raised.value)
    assert says in message
    for part in ("attacker", "victim", "crm.example", "crm-user", "4242", "alert", "ops@", "bücher", "eth0"):
        assert part not in message, f"{part!r} quoted"
    error = raised.value
    assert error.__cause__ is None  # nothing chained for a logged traceback to print
    assert error.__context__ is None or error.__suppress_context__


def test_the_config_refuses_what_the_parser_refuses() -> None:
    with pytest.raises(ConfigError, match="backslash"):
        check_push_url("https://attacker.example\\@victim.example/x")
    with pytest.raises(ValueError, match="whitespace"):
        PostCallPushConfig.model_validate({"url": " https://crm.example/in"})
    assert PostCallPushConfig.model_validate({"url": "   "}).url is None  # blank: no url, skipped
    assert PostCallPushConfig.model_validate({"url": "https://crm.example/in"}).url == "https://crm.example/in"


def test_a_reference_map_as_url_is_read_as_a_reference() -> None:
    with pytest.raises(ValueError) as raised:
        PostCallPushConfig.model_validate({"url": {"secret": "post-call-push/t1/crm", "parameter": "/x"}})
    assert "url is a reference map, but" in str(raised.value)
    assert "names exactly one store" in str(raised.value)


# --- how it reads an accepted url -----------------------------------------------------------------


def test_the_parts_of_a_url() -> None:
    url = parse_push_url(URL_WITH_EVERYTHING)

    assert (url.scheme, url.host, url.port) == ("https", "crm.example.com", 8443)
    assert url.destination == "https://crm.example.com:8443"
    assert url.origin == "https://crm.example.com:8443"
    assert url.path == "/hooks/catch/123/abcdef/"
    assert url.query == "api_key=qs-secret-5151&sig=a%2Bb%3Dc&v=2"
    assert url.target == "/hooks/catch/123/abcdef/?api_key=qs-secret-5151&sig=a%2Bb%3Dc&v=2"  # no fragment
    assert url.request_url() == "https://crm.example.com:8443" + url.target


@pytest.mark.parametrize(
    ("text", "destination", "origin", "host_header"),
    [
        ("http://crm.example", "http://crm.example:80", "http://crm.example", "crm.example"),
        ("HTTPS://CRM.example/in", "https://crm.example:443", "https://crm.example", "crm.example"),
        ("https://crm.example:443/in", "https://crm.example:443", "https://crm.example:443", "crm.example"),
        ("http://crm.example:0080/in", "http://crm.example:80", "http://crm.example:80", "crm.example"),
        ("https://crm.example:8443", "https://crm.example:8443", "https://crm.example:8443", "crm.example:8443"),
        (
            "http://[2001:DB8::1]:8080/in",
            "http://[2001:db8::1]:8080",
            "http://[2001:db8::1]:8080",
            "[2001:db8::1]:8080",
        ),
        ("http://10.0.0.1/in", "http://10.0.0.1:80", "http://10.0.0.1", "10.0.0.1"),
        ("http://0X7F.1/in", "http://0x7f.1:80", "http://0x7f.1", "0x7f.1"),
        ("https://crm_1.example./in", "https://crm_1.example.:443", "https://crm_1.example.", "crm_1.example."),
    ],
)
def test_destination_origin_and_host_header(text: str, destination: str, origin: str, host_header: str) -> None:
    url = parse_push_url(text)
    assert (url.destination, url.origin, url.host_header) == (destination, origin, host_header)


def test_a_request_url_carries_the_urls_own_query_then_the_extra_one() -> None:
    url = parse_push_url("https://crm.example/lookup?source=bot#frag")

    assert url.request_url("phone=%2B91&name=Asha+K") == "https://crm.example/lookup?source=bot&phone=%2B91&name=Asha+K"
    assert parse_push_url("https://crm.example").request_url("a=1") == "https://crm.example/?a=1"
    assert parse_push_url("https://crm.example/in").request_url() == "https://crm.example/in"


def test_a_request_url_is_in_the_form_urllib3_sends() -> None:
    url = parse_push_url("https://crm.example/caf%c3%a9/Zürich|x?q=a|b&c=%7e&d=Zürich&e='q'")

    assert url.path == "/caf%C3%A9/Z%C3%BCrich%7Cx"
    assert url.query == "q=a%7Cb&c=%7E&d=Z%C3%BCrich&e='q'"
    assert url.request_url("x=a b@c#d\\e") == url.origin + url.target + "&x=a%20b%40c%23d%5Ce"
    # A stray % in an extra query makes urllib3 encode every % of it: so does request_url.
    assert url.request_url("x=5%&y=%41").endswith("&x=5%25&y=%2541")


# --- user info is a credential ------------------------------------------------------------------------


def test_user_info_is_only_ever_basic_auth() -> None:
    url = parse_push_url(URL_WITH_EVERYTHING)

    expected = "Basic " + base64.b64encode(f"crm-user:{PASSWORD}".encode()).decode()
    assert url.basic_auth == expected
    shown = [url.destination, url.origin, url.host_header, url.target, url.request_url("a=1"), url.recorded]
    shown += [repr(url), str(url), url.path, url.query]
    for text in shown:
        assert "crm-user" not in text
        assert "4242" not in text
        assert "pw" not in text


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("http://us%40er:p%3Ass@crm.example/", "us@er:p:ss"),
        ("http://apikey-only@crm.example/", "apikey-only:"),
        ("http://:token-only@crm.example/", ":token-only"),
        ("http://%C3%BCser:p%C3%A4ss@crm.example/", "üser:päss"),
    ],
)
def test_basic_auth_is_the_decoded_user_info(text: str, decoded: str) -> None:
    assert parse_push_url(text).basic_auth == "Basic " + base64.b64encode(decoded.encode()).decode()


def test_a_url_without_user_info_has_no_basic_auth() -> None:
    assert parse_push_url("https://crm.example/in").basic_auth is None


# --- what results and logs show ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "recorded"),
    [
        (URL_WITH_EVERYTHING, "https://crm.example.com:8443/hooks/catch/***/***/?api_key=***&sig=***&v=***"),
        ("https://hooks.zapier.com/hooks/catch/123/abcdef/", "https://hooks.zapier.com/hooks/catch/***/***/"),
        (
            "https://hooks.slack.com/services/T0AB12CDE/B0FG34HIJ/abcdefghijklmnopqrstuvwx",
            "https://hooks.slack.com/services/***/***/***",
        ),
        ("https://hook.eu1.make.com/abcdefghijklmnopqrstuvwxyz123456", "https://hook.eu1.make.com/***"),
        ("https://n8n.example/webhook/new-lead", "https://n8n.example/webhook/***"),
        ("https://n8n.example/webhook-test/3f2a9c4e-1b2d", "https://n8n.example/webhook-test/***"),
        ("https://discord.com/api/webhooks/1234/tok-en_x", "https://discord.com/api/webhooks/***/***"),
        ("https://maker.ifttt.com/trigger/lead/with/key/kEy123", "https://maker.ifttt.com/trigger/***/***/key/***"),
        (
            "https://acme.my.salesforce.com/services/data/v59.0/sobjects/Lead",
            "https://acme.my.salesforce.com/services/data/v59.0/sobjects/Lead",
        ),
        ("https://org.crm.dynamics.com/api/data/v9.2/leads", "https://org.crm.dynamics.com/api/data/v9.2/leads"),
        ("https://api.hubapi.com/crm/objects/2026-03/contacts", "https://api.hubapi.com/crm/objects/2026-03/contacts"),
        ("https://crm.example/api/leads/8812", "https://crm.example/api/leads/***"),
        ("https://crm.example/in/averyveryverylongword", "https://crm.example/in/***"),
        ("https://crm.example/in/caf%C3%A9", "https://crm.example/in/***"),
        ("https://crm.example/in?sometoken", "https://crm.example/in?***"),
        ("https://crm.example/in?a=1&&b", "https://crm.example/in?a=***&***"),
        ("https://u:p@crm.example", "https://crm.example"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ],
)
def test_recorded_hides_user_info_query_values_and_capability_segments(text: str, recorded: str) -> None:
    url = parse_push_url(text)
    assert url.recorded == recorded
    assert repr(url) == f"PushUrl({recorded!r})"


def test_a_url_from_a_reference_shows_only_its_origin() -> None:
    url = parse_push_url("https://u:p@crm.example:8443/api/leads?key=k1", from_reference=True)

    assert url.recorded == "https://crm.example:8443/…"
    assert url.from_reference
    assert url.request_url() == "https://crm.example:8443/api/leads?key=k1"  # it is still sent whole
    assert {"/api/leads", "leads", "/api/leads?key=k1", "key=k1"} <= url.credential_values()


def test_credential_values_are_everything_recorded_hides() -> None:
    url = parse_push_url(URL_WITH_EVERYTHING)

    values = url.credential_values()

    assert {"crm-user", PASSWORD, quote(PASSWORD, safe=""), f"crm-user:{PASSWORD}"} <= values
    assert {"qs-secret-5151", "a%2Bb%3Dc", "a+b=c", "abcdef"} <= values
    assert url.basic_auth in values
    assert not {"2", "123"} & values  # too short to scrub without blanking ordinary text
    assert not {"hooks", "catch"} & values  # shown, so not secret
    basic = url.basic_auth or ""
    echo = f"you sent {basic} for crm-user:{PASSWORD} to /hooks/catch/123/abcdef/ with key qs-secret-5151"
    assert scrub(echo, values) == "you sent *** for *** to /hooks/catch/123/***/ with key ***"


def test_a_url_without_credentials_has_none() -> None:
    assert parse_push_url("https://crm.example.com/api/v2/leads").credential_values() == frozenset()


# --- one reading: the socket agrees --------------------------------------------------------------------

_ANY_CHAR = st.characters(codec="utf-8")  # no lone surrogates: they are not text a bot item can hold
_URL_CHAR = st.sampled_from(list("aZ09-._~!$&'()*+,;=:@/?#[]%\\ \t\"<>^`{|}é€😀\u200b\x00\x7f"))
_FRAGMENT = st.text(st.one_of(_URL_CHAR, _ANY_CHAR), max_size=12)
_LABEL = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)
_HOST = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip.exploded.upper()}]"),
    _FRAGMENT,
)
_PORT = st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}"), _FRAGMENT.map(lambda t: f":{t}"))
_USERINFO = st.one_of(st.just(""), _FRAGMENT.map(lambda t: f"{t}@"), st.just("user:pa%2Fss@"))
URLS = st.builds(
    lambda scheme, userinfo, host, port, rest: f"{scheme}://{userinfo}{host}{port}{rest}",
    st.sampled_from(["http", "https", "HTTPS"]),
    _USERINFO,
    _HOST,
    _PORT,
    st.one_of(st.just(""), _FRAGMENT.map(lambda t: "/" + t), _FRAGMENT.map(lambda t: "?" + t)),
)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(URLS, st.text(st.one_of(_URL_CHAR, _ANY_CHAR), max_size=40).map(lambda t: "https://" + t)))
@example(text="https://attacker.example\\@victim.example/x")
@example(text="https://victim.example#@attacker.example/")
@example(text="https://victim.example?@attacker.example/")
@example(text="https://u@victim.example:80@attacker.example/")
@example(text="https://[::ffff:127.0.0.1]:8080/x")
@example(text="http://0X7F.1/x")
def test_urllib3_connects_where_the_one_reading_says(text: str) -> None:
    try:
        url = parse_push_url(text)
    except ConfigError:
        return  # refused: nothing is sent, keyed or recorded
    _assert_one_reading(url, text)


@settings(max_examples=200, deadline=None)
@given(text=URLS, extra=st.text(st.one_of(_URL_CHAR, _ANY_CHAR), max_size=30))
def test_the_sender_reads_a_request_url_as_the_core_built_it(text: str, extra: str) -> None:
    try:
        url = parse_push_url(text)
    except ConfigError:
        return
    request_url = url.request_url(extra)

    sent = parse_push_url(request_url)  # the sender's reading of PushRequest.url

    assert (sent.destination, sent.path or "/", sent.basic_auth) == (url.destination, url.path or "/", None)
    assert sent.query == request_url.partition("?")[2]
    assert sent.query.startswith(url.query)
    assert _encode_target(sent.target) == sent.target
    assert (parse_url(request_url).host or "").strip("[]") == url.host


def _assert_one_reading(url: PushUrl, text: str) -> None:
    request_url = url.request_url()
    seen = parse_url(request_url)
    assert (seen.host or "").strip("[]") == url.host
    assert (seen.port or {"http": 80, "https": 443}[url.scheme]) == url.port
    assert seen.scheme == url.scheme
    assert seen.auth is None
    assert _encode_target(url.target) == url.target  # urllib3 sends the target byte for byte
    assert seen.request_uri.partition("?")[2] == url.query  # what signing reads is what goes out
    # urllib3 reading the configured text itself finds the same host (urllib3 keeps an IPv4-like host's case).
    assert (parse_url(text).host or "").strip("[]").lower() == url.host
    assert url.recorded.startswith(url.origin)
    assert "@" not in url.origin
