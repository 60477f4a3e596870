"""The local copy of template.yaml that `make sam-local` runs: the deployed template plus declarations only."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.sam_local.local_template import (
    FUNCTION_ID,
    SET_BY_SAM,
    declared_variables,
    load_template,
    with_variables_declared,
    write_local_template,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


def test_short_forms_read_as_the_long_forms_sam_and_cloudformation_accept(tmp_path: Path) -> None:
    source = tmp_path / "template.yaml"
    source.write_text(
        "Resources:\n"
        "  F:\n"
        "    Properties:\n"
        "      A: !Ref Thing\n"
        "      B: !GetAtt Table.StreamArn\n"
        "      C: !If [HasThing, !Sub '${AWS::Region}-x', !Ref AWS::NoValue]\n"
        "      D: 2012-10-17\n"
    )

    properties = load_template(source)["Resources"]["F"]["Properties"]

    assert properties == {
        "A": {"Ref": "Thing"},
        "B": {"Fn::GetAtt": ["Table", "StreamArn"]},
        "C": {"Fn::If": ["HasThing", {"Fn::Sub": "${AWS::Region}-x"}, {"Ref": "AWS::NoValue"}]},
        "D": "2012-10-17",  # a policy version, not a date
    }


def test_undeclared_names_are_declared_empty_and_reported() -> None:
    template = load_template(TEMPLATE)
    declared = declared_variables(template)
    already = sorted(declared)[0]

    local, missing = with_variables_declared(template, [already, "AWS_ENDPOINT_URL_TEST_ONLY"])

    assert missing == ["AWS_ENDPOINT_URL_TEST_ONLY"]
    variables = local["Resources"][FUNCTION_ID]["Properties"]["Environment"]["Variables"]
    assert variables["AWS_ENDPOINT_URL_TEST_ONLY"] == ""
    assert declared_variables(local) == declared | {"AWS_ENDPOINT_URL_TEST_ONLY"}
    assert "AWS_ENDPOINT_URL_TEST_ONLY" not in declared_variables(template)  # the source is left as it was


def test_credentials_and_region_are_never_declared() -> None:
    local, missing = with_variables_declared(load_template(TEMPLATE), SET_BY_SAM)

    assert missing == []
    assert not SET_BY_SAM & declared_variables(local)


def test_only_the_environment_differs_from_template_yaml(tmp_path: Path) -> None:
    destination = tmp_path / "sam-local" / "template.json"

    write_local_template(TEMPLATE, destination, ["AWS_ENDPOINT_URL_TEST_ONLY"])

    local = json.loads(destination.read_text())
    source = load_template(TEMPLATE)
    local["Resources"][FUNCTION_ID]["Properties"]["Environment"]["Variables"].pop("AWS_ENDPOINT_URL_TEST_ONLY")
    assert local == source
    # The architecture stays a parameter: make sam-local overrides it, the deployed default is arm64.
    assert local["Parameters"]["Architecture"]["Default"] == "arm64"
    assert local["Globals"]["Function"]["Architectures"] == [{"Ref": "Architecture"}]
