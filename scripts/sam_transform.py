"""Expand a SAM template into plain CloudFormation, offline, for `make cfn` to lint.

    .sam-venv/bin/python scripts/sam_transform.py template.yaml > .aws-sam/transformed.json

cfn-lint and `sam validate --lint` check a SAM template without expanding it, so a
`!GetAtt` to a missing or misspelt resource (including the ones SAM generates, such
as the EventBridge rule) passes both. Linting the expansion catches it. Runs with the
SAM CLI's own venv, which has samtranslator; no AWS credentials or network needed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class _NoManagedPolicies:
    """Managed policies named in Policies would be looked up in IAM; this template names none."""

    def load(self) -> dict[str, str]:
        return {}


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        template: dict[str, Any] = yaml_parse(f.read())
    # `sam package` uploads local code and rewrites these to S3 URIs before the transform runs.
    for resource in template.get("Resources", {}).values():
        properties = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://placeholder-bucket/{properties[key]}"
    json.dump(transform(template, {}, _NoManagedPolicies()), sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
