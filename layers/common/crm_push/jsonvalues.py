"""How DynamoDB values become JSON and text (contract §2, §7).

DynamoDB hands numbers over as ``Decimal``; a CRM must receive ``1499`` and
``8.5``, never ``1499.0``, ``Decimal('1499')`` or ``1.5000000001``.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any


def plain_number(value: Decimal) -> int | float:
    """An integral Decimal as int, any other as the float with the same shortest repr."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return plain_number(value)
    if isinstance(value, (set, frozenset)):
        # DynamoDB string/number sets have no order; sort so the payload is stable.
        return sorted(value, key=str)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), (bytes, bytearray)):
        # boto3's Binary wrapper
        return base64.b64encode(bytes(value.value)).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value: Any) -> str:
    """Compact JSON with DynamoDB types made plain; non-ASCII kept as is."""
    return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)


def decimal_text(value: Decimal) -> str:
    """``Decimal`` in plain positional form, every digit kept: ``1499``, ``8.5``, ``0.0000001``.

    Exact on purpose: ``normalize()`` would round to the context's 28 digits
    (DynamoDB keeps 38), and ``int()`` of a huge integral value can exceed
    Python's int-to-string digit limit.
    """
    text = str(value)
    if "E" in text:  # scientific notation; NaN and Infinity never contain "E"
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def to_text(value: Any) -> str:
    """The string a template placeholder becomes for ``value``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return repr(value)
    try:
        return to_json(value)
    except (TypeError, ValueError):
        return str(value)


def to_plain(value: Any) -> Any:
    """A JSON-ready copy of a DynamoDB value (Decimals, sets and binaries made plain)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int, float)):
        return value
    return json.loads(to_json(value))
