"""Templates of the key_mapper (contract §7), compiled once and rendered per call.

A template is split into literal text and placeholders when it is compiled;
rendering is then a walk over those parts with dictionary look-ups, which is
what keeps a 30-field mapper at a few microseconds per call.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any

from crm_push.errors import ConfigError
from crm_push.jsonvalues import plain_number, to_json, to_text
from crm_push.variables import NAMESPACES

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
MAX_KEY_MAPPER_KEYS = 500
MAX_KEY_MAPPER_DEPTH = 10
_FALLBACK_NAMESPACES = ("system", "crm", "call")
_NAMESPACE_SET = frozenset(NAMESPACES)


class Resolution(StrEnum):
    EXACT = "exact"
    FALLBACK = "suffix fallback"
    PRESEEDED = "pre-seeded"
    UNRESOLVED = "unresolved"


def lookup_candidates(key: str) -> tuple[str, ...]:
    """The variable names tried for ``{{key}}``, in order: exact, then the suffix fallback."""
    head, dot, rest = key.partition(".")
    suffix = rest if dot and head in _NAMESPACE_SET else key
    candidates = [key]
    for namespace in _FALLBACK_NAMESPACES:
        name = f"{namespace}.{suffix}"
        if name not in candidates:
            candidates.append(name)
    return tuple(candidates)


@dataclass(frozen=True, slots=True)
class Placeholder:
    source: str  # the literal "{{ ... }}" as written
    key: str
    candidates: tuple[str, ...]

    def resolve(self, variables: Mapping[str, Any]) -> Any:
        """The value of the first candidate present (the suffix fallback, behaviour §7), else ``UNRESOLVED``."""
        for name in self.candidates:
            value = variables.get(name, _MISSING)
            if value is not _MISSING:
                return value
        return UNRESOLVED


_MISSING = object()
UNRESOLVED: Any = _MISSING
"""What ``Placeholder.resolve`` answers when no candidate is present (a pre-seeded "" counts as present)."""


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    parts: tuple[str | Placeholder, ...]
    # The placeholder when the template is exactly one ``{{ key }}`` (the common case): rendered without a join.
    single: Placeholder | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        only = self.parts[0] if len(self.parts) == 1 else None
        is_single = isinstance(only, Placeholder) and bool(only.candidates)
        object.__setattr__(self, "single", only if is_single else None)

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(p for p in self.parts if isinstance(p, Placeholder))

    def render(self, variables: Mapping[str, Any], drop_unresolved: bool = True) -> str:
        single = self.single
        if single is not None:
            value = single.resolve(variables)
            if value is not UNRESOLVED:
                return to_text(value)
            return "" if drop_unresolved else single.source
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.resolve(variables)
            if value is not UNRESOLVED:
                out.append(to_text(value))
            elif not drop_unresolved:
                out.append(part.source)
        return "".join(out)


@lru_cache(maxsize=4096)
def compile_template(template: str) -> CompiledTemplate:
    parts: list[str | Placeholder] = []
    position = 0
    for match in PLACEHOLDER.finditer(template):
        key = match.group(1)
        if match.start() > position:
            parts.append(template[position : match.start()])
        # "{{}}" names nothing: it never resolves, so like any unresolved placeholder it is
        # dropped before the CRM sees it.
        parts.append(Placeholder(match.group(0), key, lookup_candidates(key) if key else ()))
        position = match.end()
    if position < len(template):
        parts.append(template[position:])
    return CompiledTemplate(tuple(parts))


def render_template(template: str, variables: Mapping[str, Any], drop_unresolved: bool = True) -> str:
    """Fill every ``{{ key }}`` in ``template`` from ``variables`` (contract §7)."""
    return compile_template(template).render(variables, drop_unresolved)


def explain_placeholder(placeholder: Placeholder, variables: Mapping[str, Any]) -> tuple[Resolution, str | None]:
    """How ``placeholder`` resolves against ``variables``: the rule and the variable used."""
    for index, name in enumerate(placeholder.candidates):
        if name in variables:
            if variables[name] == "" and index == 0:
                return Resolution.PRESEEDED, name
            return (Resolution.EXACT if index == 0 else Resolution.FALLBACK), name
    return Resolution.UNRESOLVED, None


_JSON_STARTS = frozenset("{[")


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: coercing "[NaN]" would make the request body invalid.
    raise ValueError(f"{name} is not JSON")


def coerce_json_like(value: Any) -> Any:
    """A rendered string that is a JSON object or array becomes that object; all else is kept."""
    if isinstance(value, str) and value[:1] in _JSON_STARTS:
        try:
            parsed = json.loads(value, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return value
        if isinstance(parsed, (dict, list)):
            return parsed
    return value


# --- key_mapper -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any


_Node = CompiledTemplate | _Literal | dict[str, "_Node"] | list["_Node"]


def _compile_node(value: Any, depth: int, path: str) -> _Node:
    if depth > MAX_KEY_MAPPER_DEPTH:
        raise ConfigError(f"key_mapper is nested deeper than {MAX_KEY_MAPPER_DEPTH} levels at {path}")
    if isinstance(value, str):
        return compile_template(value)
    if isinstance(value, Mapping):
        return {str(k): _compile_node(v, depth + 1, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_compile_node(v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value)]
    return _Literal(value)


_MAX_INT_DIGITS = 4300  # sys.get_int_max_str_digits() default; json cannot write longer ints


class _NotPlainJson(Exception):
    """A value ``_json_copy`` leaves to the general (encode, then parse) path."""


def _json_copy(value: Any) -> Any:
    """``json.loads(to_json(value))`` for the plain JSON shapes, without the text round trip."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is Decimal:
        if not value.is_finite() or value.adjusted() >= _MAX_INT_DIGITS:
            raise _NotPlainJson  # not a JSON number / an int too long for json to write
        return plain_number(value)
    if kind is float:
        if not math.isfinite(value):
            raise _NotPlainJson
        return value
    if kind is dict:
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlainJson
            copy[key] = _json_copy(item)
        return copy
    if kind is list:
        return [_json_copy(item) for item in value]
    raise _NotPlainJson


def _single_value(value: Any) -> Any:
    """What ``{{ key }}`` alone sends for ``value``: exactly ``coerce_json_like(to_text(value))``.

    A map or list would be encoded to JSON only to be parsed straight back;
    for plain JSON shapes the copy is made directly.
    """
    kind = type(value)
    if kind is dict or kind is list:
        try:
            return _json_copy(value)
        except (_NotPlainJson, RecursionError):
            pass
    return coerce_json_like(to_text(value))


_Renderer = Callable[[Mapping[str, Any], bool], Any]


def _renderer(node: _Node) -> _Renderer:
    """A function rendering one key_mapper value, with the dispatch on its kind done once, here.

    A template renders to text and is coerced (``coerce_json_like``); maps and
    lists render their members; anything else is sent as it is.
    """
    if isinstance(node, CompiledTemplate):
        single = node.single
        if single is None:
            template_render = node.render
            return lambda variables, drop_unresolved: coerce_json_like(template_render(variables, drop_unresolved))
        exact, fallbacks, source = single.candidates[0], single.candidates[1:], single.source

        def render_single(variables: Mapping[str, Any], drop_unresolved: bool) -> Any:
            value = variables.get(exact, _MISSING)
            if value is _MISSING:
                for name in fallbacks:
                    value = variables.get(name, _MISSING)
                    if value is not _MISSING:
                        break
                else:
                    return "" if drop_unresolved else source  # the literal "{{...}}" is never JSON
            if type(value) is str and value[:1] not in _JSON_STARTS:
                return value  # plain text: nothing to coerce
            return _single_value(value)

        return render_single
    if isinstance(node, dict):
        items = tuple((key, _renderer(value)) for key, value in node.items())
        return lambda variables, drop_unresolved: {key: render(variables, drop_unresolved) for key, render in items}
    if isinstance(node, list):
        renderers = tuple(_renderer(value) for value in node)
        return lambda variables, drop_unresolved: [render(variables, drop_unresolved) for render in renderers]
    literal = node.value
    return lambda variables, drop_unresolved: literal


@dataclass(frozen=True, slots=True)
class CompiledKeyMapper:
    fields: dict[str, _Node]
    _renderers: tuple[tuple[str, _Renderer], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_renderers", tuple((key, _renderer(node)) for key, node in self.fields.items()))

    def render(self, variables: Mapping[str, Any], drop_unresolved: bool = True) -> dict[str, Any]:
        """The payload: every external key rendered, JSON-like strings coerced, literals kept."""
        return {key: render(variables, drop_unresolved) for key, render in self._renderers}


@lru_cache(maxsize=512)
def _compile_canonical(canonical: str) -> CompiledKeyMapper:
    mapper = json.loads(canonical)
    return CompiledKeyMapper({key: _compile_node(value, 1, key) for key, value in mapper.items()})


def compile_key_mapper(key_mapper: Any) -> CompiledKeyMapper:
    """Compile a key_mapper once; the same mapper (by content) is never parsed again."""
    if not isinstance(key_mapper, Mapping):
        raise ConfigError(f"key_mapper must be a map of external key to template, not {type(key_mapper).__name__}")
    if len(key_mapper) > MAX_KEY_MAPPER_KEYS:
        raise ConfigError(f"key_mapper has {len(key_mapper)} keys; at most {MAX_KEY_MAPPER_KEYS} are allowed")
    try:
        canonical = to_json(key_mapper)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"key_mapper holds a value that is not JSON: {exc}") from exc
    return _compile_canonical(canonical)
