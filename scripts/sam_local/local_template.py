"""The copy of template.yaml that `make sam-local` builds and runs.

`sam local --env-vars` only overrides variables the function's Environment
declares (SAM drops the others without a word), and the local stack needs a
few that a deployed function does not (the endpoint overrides,
AWS_ENDPOINT_URL and friends). This writes template.yaml as JSON with every
such variable declared empty, and reports which ones it had to add, so the
run can say what template.yaml is missing. Nothing else changes: the code,
the layer and the architecture parameter are the deployed template's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

FUNCTION_ID = "PostCallPushFunction"
# SAM hands the container these itself, from the credentials and region it runs with;
# Lambda reserves the region names, so no template may declare them.
SET_BY_SAM = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"}
)


# YAML with CloudFormation's short forms (!Ref, !GetAtt, !If, ...) read as their long forms.
_CloudFormationLoader: Any = type("_CloudFormationLoader", (yaml.SafeLoader,), {})
# CloudFormation reads an unquoted 2012-10-17 as a string; YAML 1.1 would make it a date.
_CloudFormationLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _long_form(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        value = [resource, attribute]
    return {f"Fn::{tag_suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _long_form)


def load_template(path: Path) -> dict[str, Any]:
    template: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=_CloudFormationLoader)
    return template


def declared_variables(template: Mapping[str, Any], function_id: str = FUNCTION_ID) -> set[str]:
    """Names the function's environment declares, its own and those from Globals."""
    function_env = template["Resources"][function_id].get("Properties", {}).get("Environment", {})
    global_env = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    return set(function_env.get("Variables", {})) | set(global_env.get("Variables", {}))


def with_variables_declared(
    template: Mapping[str, Any], names: Iterable[str], function_id: str = FUNCTION_ID
) -> tuple[dict[str, Any], list[str]]:
    """A copy of the template whose function declares every name in ``names``; and the names it had to add."""
    local: dict[str, Any] = json.loads(json.dumps(template))
    missing = sorted(set(names) - declared_variables(local, function_id) - SET_BY_SAM)
    properties = local["Resources"][function_id].setdefault("Properties", {})
    variables = properties.setdefault("Environment", {}).setdefault("Variables", {})
    for name in missing:
        variables[name] = ""
    return local, missing


def write_local_template(source: Path, destination: Path, names: Iterable[str]) -> list[str]:
    """Write the local copy; return the variable names template.yaml does not declare."""
    local, missing = with_variables_declared(load_template(source), names)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(local, indent=1) + "\n", encoding="utf-8")
    return missing
