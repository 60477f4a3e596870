"""Properties of the mapping engine over generated input: it never raises, and it never leaks a placeholder."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_push.jsonvalues import to_json
from crm_push.templates import PLACEHOLDER, coerce_json_like, compile_key_mapper, compile_template, render_template
from crm_push.variables import QC_SEEDED_KEYS, build_push_variables

# Modest example counts keep the whole file at a few seconds; no example database is written.
PROPERTY = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")

# Keys that templates and variables share, so that generated placeholders often resolve.
FIELDS = ("NAME", "EMI", "call_id", "X-Lead-Id", "a.b", "DISPOSITION", "")
NAMESPACES = ("call", "crm", "result", "system", "analysis", "qc", "other")
variable_names = st.builds(
    lambda ns, field: f"{ns}.{field}" if ns != "other" else field, st.sampled_from(NAMESPACES), st.sampled_from(FIELDS)
) | st.text(max_size=12)


def values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Variable values as a call item holds them: text, numbers (Decimals too), bools, None, nested maps and lists."""
    scalars = (
        text
        | st.decimals(allow_nan=True, allow_infinity=True)
        | st.decimals(allow_nan=False, allow_infinity=False, places=3)
        | st.integers()
        | st.floats()
        | st.booleans()
        | st.none()
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=6,
    )


any_values = values(st.text(max_size=20))
brace_free_text = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=20)
brace_free_values = values(brace_free_text)

# Templates biased towards braces and placeholder-like fragments.
template_text = st.lists(
    st.sampled_from(["{{", "}}", "{", "}", " ", ".", "crm", "call.", "NAME", "X-Lead-Id", "{{ crm.NAME }}", "{{}}"])
    | st.text(max_size=6),
    max_size=12,
).map("".join)


@st.composite
def structured_templates(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A template of brace-free literal text and well-formed placeholders; also returns the placeholders."""
    pieces: list[str] = []
    placeholders: list[str] = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        if draw(st.booleans()):
            pieces.append(draw(brace_free_text))
        else:
            name = draw(variable_names.filter(lambda n: n.strip() and "{" not in n and "}" not in n))
            spaces = draw(st.sampled_from(["", " ", "  "]))
            placeholder = "{{" + spaces + name + spaces + "}}"
            placeholders.append(placeholder)
            pieces.append(placeholder)
    return "".join(pieces), placeholders


# --- render_template ---------------------------------------------------------------------------


@PROPERTY
@given(
    template=template_text | st.text(),
    variables=st.dictionaries(variable_names, any_values, max_size=6),
    drop=st.booleans(),
)
def test_render_template_never_raises_and_always_returns_text(
    template: str, variables: dict[str, Any], drop: bool
) -> None:
    assert isinstance(render_template(template, variables, drop), str)


@PROPERTY
@given(
    case=structured_templates(),
    variables=st.dictionaries(variable_names, brace_free_values, max_size=6),
)
def test_dropping_unresolved_leaves_no_placeholder_in_the_output(
    case: tuple[str, list[str]], variables: dict[str, Any]
) -> None:
    # Literal text and values are brace-free here, and compact JSON never holds "{{", so any "{{" in the
    # output could only be a placeholder of the template that was neither filled nor dropped.
    template, placeholders = case

    output = render_template(template, variables, drop_unresolved=True)

    assert "{{" not in output
    assert PLACEHOLDER.search(output) is None
    assert len(compile_template(template).placeholders) == len(placeholders)


@PROPERTY
@given(case=structured_templates())
def test_with_nothing_resolved_and_no_dropping_the_template_comes_back_unchanged(case: tuple[str, list[str]]) -> None:
    template, _ = case

    assert render_template(template, {}, drop_unresolved=False) == template


@PROPERTY
@given(case=structured_templates())
def test_with_nothing_resolved_dropping_removes_exactly_the_placeholders(case: tuple[str, list[str]]) -> None:
    template, placeholders = case
    expected = template
    for placeholder in placeholders:
        expected = expected.replace(placeholder, "", 1)

    assert render_template(template, {}, drop_unresolved=True) == expected


@PROPERTY
@given(
    template=st.text().filter(lambda t: not compile_template(t).placeholders),
    variables=st.dictionaries(variable_names, any_values, max_size=6),
    drop=st.booleans(),
)
def test_template_without_placeholders_renders_to_itself(template: str, variables: dict[str, Any], drop: bool) -> None:
    assert render_template(template, variables, drop) == template


@PROPERTY
@given(case=structured_templates(), variables=st.dictionaries(variable_names, brace_free_values, max_size=6))
def test_rendering_is_idempotent(case: tuple[str, list[str]], variables: dict[str, Any]) -> None:
    template, _ = case

    once = render_template(template, variables, drop_unresolved=True)

    assert render_template(once, variables, drop_unresolved=True) == once


# --- the compiled key_mapper -------------------------------------------------------------------


def reference_payload(mapper: Any, variables: dict[str, Any], drop: bool) -> Any:
    """Contract §7 spelled out with the public single-template functions."""
    if isinstance(mapper, str):
        return coerce_json_like(render_template(mapper, variables, drop))
    if isinstance(mapper, dict):
        return {key: reference_payload(value, variables, drop) for key, value in mapper.items()}
    if isinstance(mapper, list):
        return [reference_payload(value, variables, drop) for value in mapper]
    return mapper


mapper_values = st.recursive(
    structured_templates().map(lambda case: case[0]) | template_text | st.integers() | st.booleans() | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# NaN never equals itself, so the comparison below uses values without it.
comparable_values = st.recursive(
    st.text(max_size=20)
    | st.sampled_from(["[1, 2]", '{"a": 1}', "{not json", "[]"])
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@PROPERTY
@given(
    mapper=st.dictionaries(st.text(max_size=6), mapper_values, min_size=1, max_size=5),
    variables=st.dictionaries(variable_names, comparable_values, max_size=6),
    drop=st.booleans(),
)
def test_compiled_key_mapper_renders_what_the_per_template_rules_give(
    mapper: dict[str, Any], variables: dict[str, Any], drop: bool
) -> None:
    assert compile_key_mapper(mapper).render(variables, drop) == reference_payload(mapper, variables, drop)


@PROPERTY
@given(value=comparable_values)
def test_object_valued_placeholder_sends_what_its_json_text_parses_back_to(value: Any) -> None:
    payload = compile_key_mapper({"v": "{{crm.V}}"}).render({"crm.V": value})

    assert payload == {"v": coerce_json_like(render_template("{{crm.V}}", {"crm.V": value}))}


# --- build_push_variables -----------------------------------------------------------------------

timestamps = st.sampled_from(
    ["2026-11-25T09:30:02Z", "2026-11-25T09:30:02+05:30", "2026-11-25T09:30:02", "0001-01-01T00:00:00Z", "x"]
) | st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat())
json_ish = values(st.text(max_size=12))
call_docs = st.fixed_dictionaries(
    {},
    optional={
        "call_id": json_ish,
        "transport": st.sampled_from(["sip", "websocket"]) | json_ish,
        "connected_event": json_ish,
        "sip_headers": st.dictionaries(
            st.sampled_from(["X-Lead-Id", "x-a", "From", "X-"]) | st.text(max_size=6), json_ish
        )
        | json_ish,
        "crm_data": json_ish,
        "start_time": timestamps | json_ish,
        "answer_time": timestamps | json_ish,
        "end_time": timestamps | json_ish,
        "disconnected_by": st.sampled_from(["customer", "bot", "timeout", "error"]) | json_ish,
        "transcript": st.lists(st.dictionaries(st.sampled_from(["role", "text", "t"]), json_ish)) | json_ish,
        "transfer_status": json_ish,
        "transfer_target": json_ish,
        "analysis": json_ish,
        "qc": json_ish,
        "recording_url": json_ish,
    },
)
payloads = st.fixed_dictionaries(
    {}, optional={"recording_url": json_ish, "analysis_keys": st.lists(st.text(max_size=6) | json_ish) | json_ish}
)
zones = st.none() | st.sampled_from(["Asia/Kolkata", "UTC", "America/New_York", "Not/AZone"]) | st.text(max_size=12)


@PROPERTY
@given(call_doc=call_docs, payload=payloads, tz=zones)
def test_build_push_variables_never_raises_and_keeps_its_guarantees(
    call_doc: dict[str, Any], payload: dict[str, Any], tz: str | None
) -> None:
    variables = build_push_variables(call_doc, payload, tz)

    assert {name.split(".", 1)[0] for name in variables} <= {"call", "crm", "result", "system", "analysis", "qc"}
    assert variables["result.disposition"] in {"Connected", "Failed", "Unknown"}
    for field in ("call_start_time", "call_end_time", "call_answer_time"):
        assert variables[f"result.{field}"] == "" or LOCAL_TIME.fullmatch(variables[f"result.{field}"])
    duration = variables["result.call_duration_seconds"]
    assert duration == "" or (type(duration) is int and duration >= 0)
    assert isinstance(variables["result.transcript"], str)
    assert isinstance(variables["call.sip_headers_json"], str)
    for key in QC_SEEDED_KEYS:
        assert f"qc.{key}" in variables
    result = {k.removeprefix("result."): v for k, v in variables.items() if k.startswith("result.")}
    system = {k.removeprefix("system."): v for k, v in variables.items() if k.startswith("system.")}
    assert result == system or _has_nan(result)


@PROPERTY
@given(turns=st.lists(st.dictionaries(st.sampled_from(["role", "text", "t"]), json_ish), max_size=5))
def test_transcript_variable_is_the_transcripts_json_whenever_it_can_be_json(turns: list[Any]) -> None:
    try:
        expected = to_json(turns)
    except (TypeError, ValueError):
        expected = ""

    assert build_push_variables({"transcript": turns}, {}, None)["result.transcript"] == expected


def _has_nan(value: Any) -> bool:
    """NaN != NaN, so a result holding one cannot be compared with its alias by equality."""
    if isinstance(value, float | Decimal):
        return value != value
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False
