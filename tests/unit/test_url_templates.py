"""Templated urls (contract §13, §14): values land in one segment or one query value, never in the origin."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

from crm_push.errors import ConfigError
from crm_push.url_templates import check_origin, compile_url_template, path_segment, render_url

TEMPLATE = "https://crm.example.com:8443/v1/leads/{{call.id}}/notes-{{crm.tag}}?phone={{ call.phone }}&src=bot"
SF = "{{auth.instance_url}}/services/data/v62.0/sobjects/Lead/Call_Id__c/{{call.id}}"


def test_values_are_encoded_as_one_segment_and_one_query_value() -> None:
    url = render_url(TEMPLATE, {"call.id": "a/b?c#d", "crm.tag": "x y%", "call.phone": "+1 555&x=1"})
    assert url == (
        "https://crm.example.com:8443/v1/leads/a%2Fb%3Fc%23d/notes-x%20y%25?phone=%2B1%20555%26x%3D1&src=bot"
    )


def test_values_resolve_with_the_key_mappers_rules() -> None:
    # {{crm.tag}} falls back to call.tag; numbers render in plain decimal form, as in the key_mapper.
    url = render_url(TEMPLATE, {"call.id": Decimal("1499.0"), "call.tag": True, "crm.phone": 8.5})
    assert url.endswith("/leads/1499/notes-true?phone=8.5&src=bot")


def test_an_unresolved_placeholder_is_invalid_config_never_empty() -> None:
    with pytest.raises(ConfigError, match=r"\{\{crm.tag\}\} does not resolve"):
        render_url(TEMPLATE, {"call.id": "c1", "call.phone": "1"})


def test_a_preseeded_empty_value_still_fills_a_query_value() -> None:
    assert render_url("https://h/x?q={{crm.q}}", {"crm.q": ""}) == "https://h/x?q="


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_a_value_that_would_collapse_a_whole_segment_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="empty or dot path segment"):
        render_url("https://h/leads/{{call.id}}/x", {"call.id": value})


def test_a_dot_inside_a_longer_segment_is_fine() -> None:
    assert render_url("https://h/leads/id-{{call.id}}", {"call.id": ".."}) == "https://h/leads/id-.."


def test_the_origin_comes_from_the_token_answer() -> None:
    url = render_url(SF, {"call.id": "c/1"}, {"instance_url": "https://acme.my.salesforce.com/"})
    assert url == "https://acme.my.salesforce.com/services/data/v62.0/sobjects/Lead/Call_Id__c/c%2F1"
    zoho = render_url("{{ auth.api_domain }}/crm/v8/Leads/upsert", {}, {"api_domain": "https://www.zohoapis.eu"})
    assert zoho == "https://www.zohoapis.eu/crm/v8/Leads/upsert"


@pytest.mark.parametrize("auth_values", [None, {}, {"instance_url": ""}, {"api_domain": "https://x"}])
def test_a_missing_auth_origin_is_invalid_config(auth_values: dict[str, str] | None) -> None:
    with pytest.raises(ConfigError, match="gave no instance_url"):
        render_url(SF, {"call.id": "c1"}, auth_values)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example/x",
        "https://evil.example?x=1",
        "https://user:pw@evil.example",
        "ftp://evil.example",
        "evil.example",
        "https://",
        "https://h:99999",
        "https://h /x",
    ],
)
def test_an_auth_origin_that_is_more_than_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ConfigError) as caught:
        render_url(SF, {"call.id": "c1"}, {"instance_url": origin})
    assert "evil" not in str(caught.value)  # the value is never quoted back


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://{{crm.host}}/leads", "scheme, host and port must be literal"),
        ("https://crm.{{crm.tenant}}.com/leads", "scheme, host and port must be literal"),
        ("https://crm.example.com:{{crm.port}}/leads", "scheme, host and port must be literal"),
        ("{{crm.base}}/leads", "begins with {{crm.base}}"),
        ("{{auth.access_token}}/leads", "only {{auth.instance_url}} or {{auth.api_domain}}"),
        ("{{auth.instance_url}}.evil.example/x", "must continue with / or ?"),
        ("https://h/x/{{auth.instance_url}}", "may only begin the url"),
        ("https://h/x?token={{auth.access_token}}", "may only begin the url"),
        ("https://h/x#{{call.id}}", "not in its #fragment"),
        ("https://h/x/{{}}", "names nothing"),
        ("https://h/x/{{call.id", "unbalanced"),
        ("https://h/x/call.id}}", "unbalanced"),
        ("https://h/x y/{{call.id}}", "whitespace"),
        ("ftp://h/{{call.id}}", "scheme must be http or https"),
        ("h/{{call.id}}", "must start with http"),
        ("https:///x/{{call.id}}", "no host"),
        ("https://h:port/x", "malformed"),
        ("", "empty"),
    ],
)
def test_invalid_templates_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        compile_url_template(url)


def test_spaces_inside_the_braces_are_allowed() -> None:
    template = compile_url_template("https://h/a/{{ call.id }}?q={{  crm.q  }}")
    assert [p.key for p in template.placeholders] == ["call.id", "crm.q"]
    assert not template.is_static
    assert compile_url_template("https://h/a?b=c").is_static


def test_error_messages_never_quote_a_literal_origin_password() -> None:
    with pytest.raises(ConfigError) as caught:
        compile_url_template("https://user:s3cret@{{crm.host}}/x")
    assert "s3cret" not in str(caught.value)


def test_check_origin() -> None:
    assert check_origin(" https://api.hubapi.com/ ", "base_url") == "https://api.hubapi.com"
    assert check_origin("http://127.0.0.1:8080", "base_url") == "http://127.0.0.1:8080"
    with pytest.raises(ConfigError, match="base_url is empty"):
        check_origin("", "base_url")
    with pytest.raises(ConfigError, match="base_url must be only scheme"):
        check_origin("https://api.hubapi.com/crm", "base_url")


def test_path_segment() -> None:
    assert path_segment("a/b c", "the call id") == "a%2Fb%20c"
    with pytest.raises(ConfigError, match="the call id would be an empty or dot path segment"):
        path_segment("..", "the call id")


# --- properties: a value can never change the url's shape ------------------------------------


def _shape(url: str) -> tuple[str | None, int | None, int, list[str]]:
    parsed = parse_url(url)  # what urllib3 (the sender) will send
    split = urlsplit(url)
    assert (parsed.host, parsed.port) == (split.hostname, split.port)
    path = parsed.path or ""
    query_names = [pair.split("=", 1)[0] for pair in (parsed.query or "").split("&")]
    return parsed.host, parsed.port, len(path.split("/")), query_names


# No deadline: speed is a benchmark's business, and a loaded machine must not fail a shape property.
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.text(min_size=1) | st.sampled_from(["..", ".", "/", "?", "#", "&", "=", "%2F", "@evil.example", "\\"])


@PROPERTY
@given(call_id=values, tag=st.text(), phone=st.text())
def test_no_value_adds_a_segment_or_parameter_or_changes_the_host(call_id: str, tag: str, phone: str) -> None:
    assume(call_id not in (".", ".."))
    url = render_url(TEMPLATE, {"call.id": call_id, "crm.tag": tag, "call.phone": phone})
    assert _shape(url) == ("crm.example.com", 8443, 5, ["phone", "src"])  # "", v1, leads, <id>, notes-<tag>
    split = urlsplit(url)
    segments = split.path.split("/")
    assert unquote(segments[3]) == call_id
    assert unquote(segments[4]) == f"notes-{tag}"
    assert parse_qsl(split.query, keep_blank_values=True) == [("phone", phone), ("src", "bot")]
    assert split.fragment == ""


@PROPERTY
@given(call_id=values)
def test_with_an_auth_origin_the_host_is_the_token_answers(call_id: str) -> None:
    assume(call_id not in (".", ".."))
    url = render_url(SF, {"call.id": call_id}, {"instance_url": "https://acme.my.salesforce.com"})
    assert _shape(url) == ("acme.my.salesforce.com", None, 8, [""])
    assert unquote(urlsplit(url).path.split("/")[-1]) == call_id


@st.composite
def templates(draw: st.DrawFn) -> tuple[str, dict[str, str], int, int]:
    """A random url of literal and templated segments and query pairs, values for it, and its shape."""
    literal = st.text(alphabet="abcxyz019-_.~", min_size=1, max_size=5).filter(lambda t: t not in (".", ".."))
    segment_count = draw(st.integers(1, 5))
    segments, variables = [], {}
    for index in range(segment_count):
        if draw(st.booleans()):
            variables[f"call.s{index}"] = draw(values.filter(lambda v: v not in (".", "..")))
            segments.append(draw(st.sampled_from(["", "id-"])) + f"{{{{call.s{index}}}}}")
        else:
            segments.append(draw(literal))
    pairs = []
    query_count = draw(st.integers(0, 3))
    for index in range(query_count):
        variables[f"call.q{index}"] = draw(values)
        pairs.append(f"k{index}={{{{call.q{index}}}}}")
    url = "https://h.example/" + "/".join(segments) + ("?" + "&".join(pairs) if pairs else "")
    return url, variables, segment_count, query_count


@PROPERTY
@given(templates())
def test_random_templates_keep_their_shape(case: tuple[str, dict[str, str], int, int]) -> None:
    url, variables, segment_count, query_count = case
    rendered = render_url(url, variables)
    host, port, parts, names = _shape(rendered)
    assert (host, port, parts) == ("h.example", None, segment_count + 1)
    assert names == ([f"k{i}" for i in range(query_count)] or [""])
