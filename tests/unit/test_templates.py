"""Contract §7: placeholders, resolution, formatting, coerce_json_like and the key_mapper."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crm_push.errors import ConfigError
from crm_push.templates import (
    MAX_KEY_MAPPER_DEPTH,
    MAX_KEY_MAPPER_KEYS,
    Resolution,
    coerce_json_like,
    compile_key_mapper,
    compile_template,
    explain_placeholder,
    lookup_candidates,
    render_template,
)
from crm_push.variables import build_push_variables

ROOT = Path(__file__).resolve().parents[2]


def render(template: str, variables: dict[str, Any], drop_unresolved: bool = True) -> str:
    return render_template(template, variables, drop_unresolved)


# --- placeholders -------------------------------------------------------------------


@pytest.mark.parametrize("template", ["{{crm.NAME}}", "{{ crm.NAME }}", "{{crm.NAME  }}", "{{\tcrm.NAME\n}}"])
def test_spaces_inside_the_braces_are_allowed(template: str) -> None:
    assert render(template, {"crm.NAME": "Asha"}) == "Asha"


def test_text_around_placeholders_is_kept() -> None:
    variables = {"crm.NAME": "Asha", "crm.EMI": Decimal("1499")}

    assert render("Dear {{crm.NAME}}, EMI {{crm.EMI}} due.", variables) == "Dear Asha, EMI 1499 due."


def test_same_placeholder_twice_is_filled_twice() -> None:
    assert render("{{crm.A}}-{{ crm.A }}", {"crm.A": "x"}) == "x-x"


def test_single_braces_are_plain_text() -> None:
    assert render('{"name": "{crm.NAME}"}', {"crm.NAME": "Asha"}) == '{"name": "{crm.NAME}"}'


def test_placeholder_inside_extra_braces_keeps_the_extra_braces() -> None:
    assert render("{{{crm.NAME}}}", {"crm.NAME": "Asha"}) == "{Asha}"


# --- resolution -----------------------------------------------------------------------


def test_exact_key_wins_over_the_suffix_fallback() -> None:
    variables = {"crm.X": "exact", "system.X": "system", "call.X": "call"}

    assert render("{{crm.X}}", variables) == "exact"


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ({"system.X": "system", "crm.X": "crm", "call.X": "call"}, "system"),
        ({"crm.X": "crm", "call.X": "call"}, "crm"),
        ({"call.X": "call"}, "call"),
    ],
)
def test_suffix_fallback_tries_system_then_crm_then_call(present: dict[str, str], expected: str) -> None:
    assert render("{{X}}", present) == expected


def test_bare_key_resolves_from_crm() -> None:
    assert render("{{CUSTOMERNAME}}", {"crm.CUSTOMERNAME": "Asha Verma"}) == "Asha Verma"


def test_crm_key_falls_back_to_the_call_variable() -> None:
    assert render("{{crm.campaign_id}}", {"call.campaign_id": "CMP-7"}) == "CMP-7"


def test_crm_key_falls_back_to_system_before_call() -> None:
    assert render("{{crm.call_id}}", {"system.call_id": "from-system", "call.call_id": "from-call"}) == "from-system"


def test_bare_key_resolves_from_system_as_the_result_alias() -> None:
    assert render("{{disposition}}", {"system.disposition": "Connected", "crm.disposition": "crm"}) == "Connected"


@pytest.mark.parametrize("namespace", ["call", "crm", "result", "system", "analysis", "qc"])
def test_every_known_namespace_is_removed_for_the_fallback(namespace: str) -> None:
    assert render(f"{{{{{namespace}.LEAD}}}}", {"call.LEAD": "L-1"}) == "L-1"


def test_unknown_first_segment_is_part_of_the_key_for_the_fallback() -> None:
    variables = {"crm.lead.id": "whole key", "crm.id": "suffix only"}

    assert render("{{lead.id}}", variables) == "whole key"


def test_fallback_never_looks_in_analysis_or_qc() -> None:
    assert render("{{SCORE}}", {"analysis.SCORE": "a", "qc.SCORE": "q"}) == ""


def test_pre_seeded_empty_string_counts_as_resolved_and_does_not_fall_back() -> None:
    variables = {"analysis.CALLBACK_TIME": "", "system.CALLBACK_TIME": "s", "call.CALLBACK_TIME": "c"}

    assert render("{{analysis.CALLBACK_TIME}}", variables, drop_unresolved=False) == ""


def test_pre_seeded_empty_string_found_by_fallback_counts_as_resolved() -> None:
    variables = {"crm.NOTE": "", "call.NOTE": "from call"}

    assert render("{{NOTE}}", variables, drop_unresolved=False) == ""


def test_none_value_counts_as_resolved_and_renders_empty() -> None:
    assert render("{{crm.X}}", {"crm.X": None, "call.X": "fallback"}, drop_unresolved=False) == ""


def test_lookup_candidates_are_exact_then_system_crm_call_without_repeats() -> None:
    assert lookup_candidates("crm.X") == ("crm.X", "system.X", "call.X")
    assert lookup_candidates("X") == ("X", "system.X", "crm.X", "call.X")
    assert lookup_candidates("analysis.X") == ("analysis.X", "system.X", "crm.X", "call.X")


# --- unresolved placeholders ----------------------------------------------------------


def test_unresolved_placeholder_becomes_empty_when_dropped() -> None:
    assert render("Hi {{crm.MISSING}}!", {}, drop_unresolved=True) == "Hi !"


def test_unresolved_placeholder_stays_literal_as_written_when_not_dropped() -> None:
    assert render("Hi {{ crm.MISSING }}!", {}, drop_unresolved=False) == "Hi {{ crm.MISSING }}!"


def test_drop_unresolved_is_the_default() -> None:
    assert render_template("{{crm.MISSING}}", {}) == ""


def test_only_the_unresolved_placeholder_is_dropped() -> None:
    assert render("{{crm.A}}/{{crm.B}}", {"crm.A": "a"}) == "a/"


# --- formatting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1499"), "1499"),
        (Decimal("1499.0"), "1499"),
        (Decimal("8.50"), "8.5"),
        (Decimal("7.0"), "7"),
        (Decimal("1.5"), "1.5"),
        (Decimal("-2.250"), "-2.25"),
        (Decimal("0"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1.499E+3"), "1499"),
        (Decimal("1E-7"), "0.0000001"),
        (1499, "1499"),
        (1499.0, "1499"),
        (8.5, "8.5"),
    ],
)
def test_numbers_render_in_plain_decimal_form(value: Any, text: str) -> None:
    assert render("{{crm.N}}", {"crm.N": value}) == text


def test_decimal_keeps_all_38_digits_dynamodb_stores() -> None:
    digits = "3.1415926535897932384626433832795028841"

    assert render("{{crm.PI}}", {"crm.PI": Decimal(digits)}) == digits


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("12345678901234567890123456789012345678E+2", "1234567890123456789012345678901234567800"),
        ("1.234567890123456789012345678901234567E-10", "0.0000000001234567890123456789012345678901234567"),
    ],
)
def test_decimal_in_exponent_form_keeps_all_its_digits(value: str, text: str) -> None:
    assert render("{{crm.N}}", {"crm.N": Decimal(value)}) == text


def test_number_inside_text_is_never_written_with_a_trailing_zero() -> None:
    assert render("EMI {{crm.EMI}} at {{crm.RATE}}%", {"crm.EMI": Decimal("1499"), "crm.RATE": Decimal("8.50")}) == (
        "EMI 1499 at 8.5%"
    )


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false"), (None, "")])
def test_booleans_and_none_render_as_json_words_or_empty(value: Any, text: str) -> None:
    assert render("{{crm.B}}", {"crm.B": value}) == text


def test_map_renders_as_compact_json() -> None:
    address = {"city": "Pune", "pin": Decimal("411001"), "geo": [Decimal("18.52"), Decimal("73.85")]}

    assert render("{{crm.ADDRESS}}", {"crm.ADDRESS": address}) == '{"city":"Pune","pin":411001,"geo":[18.52,73.85]}'


def test_list_renders_as_compact_json() -> None:
    assert render("{{crm.TAGS}}", {"crm.TAGS": ["vip", Decimal("2"), True, None]}) == '["vip",2,true,null]'


def test_rendered_map_comes_back_as_the_object_through_coerce_json_like() -> None:
    address = {"city": "Pune", "pin": Decimal("411001"), "rate": Decimal("8.50")}

    rendered = render("{{crm.ADDRESS}}", {"crm.ADDRESS": address})

    assert coerce_json_like(rendered) == {"city": "Pune", "pin": 411001, "rate": 8.5}


def test_map_keys_that_are_not_strings_are_sent_as_json_keys() -> None:
    payload = compile_key_mapper({"m": "{{crm.M}}"}).render({"crm.M": {7: "seven", False: "no", None: "none"}})

    assert payload == {"m": {"7": "seven", "false": "no", "null": "none"}}


def test_non_ascii_text_in_a_map_is_kept_as_is() -> None:
    assert render("{{crm.M}}", {"crm.M": {"name": "आशा"}}) == '{"name":"आशा"}'


def test_variable_value_that_looks_like_a_placeholder_is_not_rescanned() -> None:
    variables = {"crm.NOTE": "{{crm.SECRET}}", "crm.SECRET": "leaked"}

    assert render("{{crm.NOTE}}", variables) == "{{crm.SECRET}}"


# --- coerce_json_like ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"city":"Pune"}', {"city": "Pune"}),
        ('[1,2.5,"x"]', [1, 2.5, "x"]),
        ("{}", {}),
        ("[]", []),
        ('{ "nested": {"a": [true, null]} }', {"nested": {"a": [True, None]}}),
    ],
)
def test_coerce_turns_a_json_object_or_array_string_into_the_object(text: str, value: Any) -> None:
    assert coerce_json_like(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2",
        "[1] trailing",
        "{{crm.X}}",
        ' {"a": 1}',  # does not start with { or [
        "123",
        "true",
        "null",
        '"quoted"',
        "",
        "Pune",
    ],
)
def test_coerce_keeps_every_other_string_as_it_is(text: str) -> None:
    assert coerce_json_like(text) == text


@pytest.mark.parametrize("value", [5, Decimal("1.5"), None, True, {"a": "[1]"}, ["{}"]])
def test_coerce_passes_non_strings_through_unchanged(value: Any) -> None:
    assert coerce_json_like(value) is value


def test_coerce_keeps_json_nested_deeper_than_the_parser_goes_as_a_string() -> None:
    deep = "[" * 100_000 + "]" * 100_000

    assert coerce_json_like(deep) == deep


# --- key_mapper ------------------------------------------------------------------------------

VARIABLES: dict[str, Any] = {
    "crm.CUSTOMERNAME": "Asha Verma",
    "crm.EMI_AMOUNT": Decimal("1499"),
    "crm.RATE": Decimal("8.50"),
    "crm.ADDRESS": {"city": "Pune", "pin": Decimal("411001")},
    "crm.TIER": "gold",
    "call.X-Lead-Id": "LD-558201",
    "result.transcript": '[{"role":"bot","t":1.2}]',
    "system.transcript": '[{"role":"bot","t":1.2}]',
    "analysis.CALLBACK_TIME": "",
}


def render_mapper(mapper: Any, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return compile_key_mapper(mapper).render(VARIABLES if variables is None else variables, drop_unresolved=True)


def test_key_mapper_renders_every_external_key() -> None:
    payload = render_mapper({"lead_id": "{{call.X-Lead-Id}}", "name": "{{CUSTOMERNAME}}", "emi": "{{crm.EMI_AMOUNT}}"})

    assert payload == {"lead_id": "LD-558201", "name": "Asha Verma", "emi": "1499"}


def test_key_mapper_object_valued_placeholder_is_sent_as_the_object() -> None:
    assert render_mapper({"address": "{{crm.ADDRESS}}"}) == {"address": {"city": "Pune", "pin": 411001}}


def test_key_mapper_transcript_string_is_sent_as_the_array() -> None:
    assert render_mapper({"transcript": "{{result.transcript}}"}) == {"transcript": [{"role": "bot", "t": 1.2}]}


def test_key_mapper_object_inside_text_stays_a_string() -> None:
    payload = render_mapper({"note": "Address: {{crm.ADDRESS}}"})

    assert payload == {"note": 'Address: {"city":"Pune","pin":411001}'}


def test_key_mapper_unresolved_placeholder_is_sent_empty() -> None:
    assert render_mapper({"x": "{{crm.NOT_THERE}}", "y": "n/a: {{NOT_THERE}}"}) == {"x": "", "y": "n/a: "}


def test_key_mapper_pre_seeded_analysis_key_is_sent_empty() -> None:
    assert render_mapper({"callback": "{{analysis.CALLBACK_TIME}}"}) == {"callback": ""}


def test_key_mapper_empty_value_counts_as_resolved_and_does_not_fall_back() -> None:
    variables = {"analysis.NOTE": "", "system.NOTE": "system", "call.NOTE": "call"}

    assert compile_key_mapper({"note": "{{analysis.NOTE}}"}).render(variables, drop_unresolved=False) == {"note": ""}


@pytest.mark.parametrize("literal", [1, 0, -7, 2.5, True, False, None])
def test_key_mapper_literal_non_string_is_sent_as_is(literal: Any) -> None:
    value = render_mapper({"v": literal})["v"]

    assert value == literal
    assert type(value) is type(literal)


@pytest.mark.parametrize(("literal", "sent"), [(Decimal("1"), 1), (Decimal("3.0"), 3), (Decimal("2.50"), 2.5)])
def test_key_mapper_decimal_literal_is_sent_as_a_json_number(literal: Decimal, sent: int | float) -> None:
    value = render_mapper({"v": literal})["v"]

    assert value == sent
    assert type(value) is type(sent)
    assert json.dumps(value) == str(sent)


def test_key_mapper_literal_text_without_placeholders_is_sent_as_is() -> None:
    assert render_mapper({"source": "voicebot"}) == {"source": "voicebot"}


def test_key_mapper_renders_strings_inside_objects_and_lists_recursively() -> None:
    mapper = {
        "customer": {"name": "{{CUSTOMERNAME}}", "tags": ["{{crm.TIER}}", "fixed", Decimal("3")], "vip": True},
    }

    assert render_mapper(mapper) == {"customer": {"name": "Asha Verma", "tags": ["gold", "fixed", 3], "vip": True}}


def test_key_mapper_nested_object_valued_placeholder_is_sent_as_the_object() -> None:
    payload = render_mapper({"customer": {"address": "{{crm.ADDRESS}}"}})

    assert payload == {"customer": {"address": {"city": "Pune", "pin": 411001}}}


def test_key_mapper_string_value_that_is_json_text_is_sent_as_the_object() -> None:
    assert render_mapper({"meta": '{"channel": "voice"}'}) == {"meta": {"channel": "voice"}}


def test_key_mapper_renders_fresh_objects_for_every_call() -> None:
    compiled = compile_key_mapper({"address": "{{crm.ADDRESS}}", "nested": {"a": "{{crm.TIER}}"}})

    first = compiled.render(VARIABLES)
    first["address"]["city"] = "changed"
    first["nested"]["a"] = "changed"

    assert compiled.render(VARIABLES) == {"address": {"city": "Pune", "pin": 411001}, "nested": {"a": "gold"}}
    assert VARIABLES["crm.ADDRESS"]["city"] == "Pune"


def test_key_mapper_keeps_unresolved_literal_when_not_dropping() -> None:
    compiled = compile_key_mapper({"x": "{{ crm.NOT_THERE }}"})

    assert compiled.render({}, drop_unresolved=False) == {"x": "{{ crm.NOT_THERE }}"}


def dynamodb_json(name: str) -> dict[str, Any]:
    """An event file as boto3 reads it from DynamoDB: every number a Decimal."""
    loaded: dict[str, Any] = json.loads((ROOT / "events" / name).read_text(), parse_float=Decimal, parse_int=Decimal)
    return loaded


def test_sample_bot_key_mapper_renders_the_expected_payload() -> None:
    call, bot = dynamodb_json("sample_call.json"), dynamodb_json("sample_bot.json")
    variables = build_push_variables(
        call, {"recording_url": "https://rec", "analysis_keys": bot["analysis_keys"]}, "Asia/Kolkata"
    )

    payload = compile_key_mapper(bot["post_call_push"]["key_mapper"]).render(variables)

    assert payload["lead_id"] == "LD-558201"
    assert payload["customer_name"] == "Asha Verma"
    assert payload["emi_amount"] == "1499"
    assert payload["address"] == {"city": "Pune", "pin": "411001"}
    assert payload["call_status"] == "Connected"
    assert payload["outcome"] == "PROMISE_TO_PAY"
    assert payload["callback_time"] == ""
    assert payload["qc_score"] == "9"
    assert payload["duration_sec"] == "156"
    assert payload["started_at"] == "2026-11-25 15:00:02"
    assert payload["answered_at"] == "2026-11-25 15:00:09"
    assert payload["recording"] == "https://rec"
    assert payload["transcript"][3] == {"role": "customer", "text": "Yes, I will pay on the 27th.", "t": 11.5}
    assert payload["source"] == "voicebot"
    assert payload["attempt"] == 1
    assert type(payload["attempt"]) is int


# --- compiled once ------------------------------------------------------------------------------


def test_equal_key_mappers_compile_to_the_same_object() -> None:
    mapper = {"name": "{{CUSTOMERNAME}}", "nested": {"tier": "{{crm.TIER}}"}, "n": Decimal("1")}

    assert compile_key_mapper(mapper) is compile_key_mapper(copy.deepcopy(mapper))


def test_different_key_mappers_compile_to_different_objects() -> None:
    assert compile_key_mapper({"a": "{{crm.A}}"}) is not compile_key_mapper({"a": "{{crm.B}}"})


def test_rendering_a_compiled_key_mapper_never_compiles_a_template_again() -> None:
    compiled = compile_key_mapper({"name": "{{CUSTOMERNAME}} #3", "tier": "{{crm.TIER}}", "x": ["{{crm.RATE}}"]})
    before = compile_template.cache_info()

    for _ in range(5):
        compiled.render(VARIABLES)

    after = compile_template.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)


def test_a_template_is_parsed_once_and_looked_up_afterwards() -> None:
    template = "{{crm.TIER}} / compiled-once probe"
    render(template, VARIABLES)
    before = compile_template.cache_info()

    render(template, VARIABLES)
    render(template, VARIABLES)

    after = compile_template.cache_info()
    assert after.misses == before.misses
    assert after.hits == before.hits + 2


# --- config errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapper", "type_name"), [("{{x}}", "str"), (["{{x}}"], "list"), (None, "NoneType"), (5, "int")]
)
def test_key_mapper_that_is_not_a_map_is_a_config_error_naming_the_type(mapper: Any, type_name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        compile_key_mapper(mapper)

    message = str(raised.value)
    assert "key_mapper must be a map" in message
    assert type_name in message


def test_key_mapper_with_too_many_keys_is_a_config_error() -> None:
    mapper = {f"k{i}": "{{crm.A}}" for i in range(MAX_KEY_MAPPER_KEYS + 1)}

    with pytest.raises(ConfigError, match=f"at most {MAX_KEY_MAPPER_KEYS}"):
        compile_key_mapper(mapper)


def test_key_mapper_nested_too_deep_is_a_config_error_naming_the_path() -> None:
    mapper: dict[str, Any] = {"leaf": "{{crm.A}}"}
    for _ in range(MAX_KEY_MAPPER_DEPTH):
        mapper = {"level": mapper}

    with pytest.raises(ConfigError, match=r"deeper than .* at level\.level"):
        compile_key_mapper(mapper)


def test_key_mapper_nested_exactly_to_the_depth_limit_compiles_and_renders() -> None:
    mapper: dict[str, Any] = {"leaf": "{{crm.A}}"}
    expected: dict[str, Any] = {"leaf": "a"}
    for _ in range(MAX_KEY_MAPPER_DEPTH - 1):
        mapper, expected = {"level": mapper}, {"level": expected}

    assert compile_key_mapper(mapper).render({"crm.A": "a"}) == expected


def test_key_mapper_holding_a_non_json_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        compile_key_mapper({"x": object()})


def test_config_error_is_a_value_error_for_pydantic() -> None:
    with pytest.raises(ValueError, match="key_mapper"):
        compile_key_mapper("nope")


# --- explain_placeholder ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "variables", "resolution", "name"),
    [
        ("{{crm.A}}", {"crm.A": "x"}, Resolution.EXACT, "crm.A"),
        ("{{A}}", {"crm.A": "x"}, Resolution.FALLBACK, "crm.A"),
        ("{{analysis.A}}", {"analysis.A": ""}, Resolution.PRESEEDED, "analysis.A"),
        ("{{crm.A}}", {}, Resolution.UNRESOLVED, None),
    ],
)
def test_explain_placeholder_names_the_rule_and_variable_used(
    template: str, variables: dict[str, Any], resolution: Resolution, name: str | None
) -> None:
    (placeholder,) = compile_template(template).placeholders

    assert explain_placeholder(placeholder, variables) == (resolution, name)


def test_an_empty_placeholder_is_dropped_like_any_unresolved_one() -> None:
    assert render_template("a{{}}b{{ }}c", {"": "never"}, drop_unresolved=True) == "abc"
    assert render_template("a{{}}b", {}, drop_unresolved=False) == "a{{}}b"


def test_json_constants_are_not_coerced_into_an_invalid_body() -> None:
    assert coerce_json_like("[NaN]") == "[NaN]"
    assert coerce_json_like('{"x": Infinity}') == '{"x": Infinity}'
