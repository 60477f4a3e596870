"""Expand a SAM template into plain CloudFormation, offline, for `make cfn` to lint and scan.

    .sam-venv/bin/python scripts/sam_transform.py template.yaml > .aws-sam/transformed.json
    .sam-venv/bin/python scripts/sam_transform.py template.yaml \\
        --parameter-overrides ExistingCallsTableName=calls ExistingBotsTableName=bots ...

cfn-lint and `sam validate --lint` check a SAM template without expanding it, so a
`!GetAtt` to a missing or misspelt resource (including the ones SAM generates, such
as the EventBridge rule) passes both. Linting the expansion catches it. Runs with the
SAM CLI's own venv, which has samtranslator; no AWS credentials or network needed.

SAM keeps `Conditions` and `Fn::If` as they are, so one expansion holds every deploy
mode. A parameter override becomes that parameter's `Default` in the output as well as
a value the translator may resolve, so cfn-lint, checkov and the template tests read
the expansion as deployed with those values.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class _NoManagedPolicies:
    """Managed policies named in Policies would be looked up in IAM; this template names none."""

    def load(self) -> dict[str, str]:
        return {}


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``Name=Value`` pairs, as `sam deploy --parameter-overrides` takes them; a value may be empty."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"parameter override {pair!r} is not Name=Value")
        overrides[name] = value
    return overrides


def expand(template: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    parameters: dict[str, Any] = template.get("Parameters", {})
    unknown = sorted(set(overrides) - set(parameters))
    if unknown:
        raise SystemExit(f"the template has no parameter {', '.join(unknown)}")
    for name, value in overrides.items():
        parameters[name]["Default"] = value
    # `sam package` uploads local code and rewrites these to S3 URIs before the transform runs.
    for resource in template.get("Resources", {}).values():
        properties = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://placeholder-bucket/{properties[key]}"
    expanded: dict[str, Any] = transform(template, overrides, _NoManagedPolicies())
    return expanded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("template")
    parser.add_argument("--parameter-overrides", nargs="*", default=[], metavar="Name=Value")
    args = parser.parse_args(argv)
    with open(args.template, encoding="utf-8") as f:
        template: dict[str, Any] = yaml_parse(f.read())
    expanded = expand(template, parse_overrides(args.parameter_overrides))
    json.dump(expanded, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
