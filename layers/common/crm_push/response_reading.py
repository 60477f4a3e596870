"""Reading a 2xx body (contract §14 ``response.ok_when``): did the CRM take the record?

Some CRMs answer 200 and say inside the body that the record was refused.
``ok_when`` names one value of the JSON answer (``{"path": "data.0.status",
"equals": "success"}``) that a good answer holds; an answer that is not JSON,
lacks the path or holds another value is not ok. JSON values compare as JSON:
``1`` equals ``1.0`` and DynamoDB's ``Decimal("1")``; ``true`` never equals ``1``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from crm_push.errors import ConfigError
from crm_push.jsonvalues import to_json

MAX_PATH_CHARS = 256
MAX_PATH_STEPS = 32
_MISSING: Any = object()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(body_text: str) -> Any:
    """The answer as JSON with exact numbers (``Decimal``); ``_MISSING`` when it is not JSON."""
    try:
        return json.loads(body_text, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return _MISSING


def is_missing(value: Any) -> bool:
    return value is _MISSING


def json_value(value: Any, where: str = "equals") -> Any:
    """``value`` as a comparable JSON value (floats as exact ``Decimal``); ConfigError if it is not JSON."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} is not a JSON value (NaN or infinity)")
        return Decimal(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ConfigError(f"{where} is not a JSON value (NaN or infinity)")
        return value
    if isinstance(value, Mapping):
        return {str(k): json_value(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v, where) for v in value]
    raise ConfigError(f"{where} is not a JSON value ({type(value).__name__})")


def json_equal(left: Any, right: Any) -> bool:
    """JSON equality: numbers by value whatever their Python type, booleans only equal booleans."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, (int, Decimal, float)) and isinstance(right, (int, Decimal, float)):
        try:
            return Decimal(str(left)) == Decimal(str(right))
        except InvalidOperation:
            return False
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return False


def parse_path(path: Any) -> tuple[str, ...]:
    """A dotted path's steps (``"data.0.status"`` -> ``("data", "0", "status")``); ConfigError if unusable."""
    if not isinstance(path, str) or not path:
        raise ConfigError('ok_when.path must be a dotted path such as "data.0.status"')
    if len(path) > MAX_PATH_CHARS:
        raise ConfigError(f"ok_when.path is longer than {MAX_PATH_CHARS} characters")
    steps = tuple(path.split("."))
    if any(step == "" for step in steps):
        raise ConfigError('ok_when.path has an empty step (".." or a leading or trailing "."): write "a.0.b"')
    if len(steps) > MAX_PATH_STEPS:
        raise ConfigError(f"ok_when.path has more than {MAX_PATH_STEPS} steps")
    return steps


def value_at(document: Any, steps: tuple[str, ...]) -> Any:
    """The value at ``steps`` (a number step indexes a list, any step keys a map); ``_MISSING`` if absent."""
    current = document
    for step in steps:
        if isinstance(current, dict):
            current = current.get(step, _MISSING)
        elif isinstance(current, list) and step.isascii() and step.isdigit():
            index = int(step)
            current = current[index] if index < len(current) else _MISSING
        else:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


@dataclass(frozen=True, slots=True)
class OkWhen:
    """``response.ok_when``: the value a good answer holds at ``path``."""

    path: str
    equals: Any
    steps: tuple[str, ...]

    def describe(self) -> str:
        """For errors and preview: the rule, never the answer's own value (it may be personal data)."""
        return f"{self.path} == {to_json(self.equals)}"


def parse_ok_when(value: Any) -> OkWhen:
    """Validate ``{"path": ..., "equals": ...}``; ConfigError names what is wrong."""
    if isinstance(value, OkWhen):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError('ok_when must be a map {"path": "<dotted path>", "equals": <JSON value>}')
    unknown = sorted(str(key) for key in value if key not in ("path", "equals"))
    if unknown:
        raise ConfigError(f"ok_when has unknown key {unknown[0]!r}; it takes only path and equals")
    if "equals" not in value:
        raise ConfigError("ok_when needs equals: the JSON value a good answer holds at path")
    steps = parse_path(value.get("path"))
    return OkWhen(str(value["path"]), json_value(value["equals"], "ok_when.equals"), steps)


def reads_as_ok(body_text: str, ok_when: OkWhen | Mapping[str, Any]) -> bool:
    """Whether a 2xx answer's body holds ``ok_when.equals`` at ``ok_when.path`` (not JSON or no path: False)."""
    rule = parse_ok_when(ok_when)
    document = parse_json_body(body_text)
    if document is _MISSING:
        return False
    found = value_at(document, rule.steps)
    return found is not _MISSING and json_equal(found, rule.equals)
