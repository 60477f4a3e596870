"""Terminal output: one console, tables, and the rules that keep secrets and transcripts off screen."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from crm_push.errors import ConfigError
from crm_push.jsonvalues import to_json, to_plain
from crm_push.push_url import parse_push_url

VALUE_WIDTH = 60  # characters of a value shown by default; --full shows all
_AUTH_SCHEMES = ("bearer", "basic", "token", "apikey", "api-key", "digest")


def make_console(stream: TextIO | None = None) -> Console:
    """Plain text when piped (no colour codes), wide enough that a log keeps a row on one line.

    Markup, emoji codes and highlighting are off: values come from calls and
    configs, and ``[bold]`` or ``:phone:`` in a transcript must print as written.
    """
    stream = stream or sys.stdout
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(file=stream, width=width, markup=False, emoji=False, highlight=False, soft_wrap=False)


def err_console() -> Console:
    return make_console(sys.stderr)


def table(title: str | None, *columns: str, wrap: tuple[str, ...] = ()) -> Table:
    """A plain table; only the ``wrap`` columns (long free text) wrap, names and ids stay on one line."""
    grid = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_lines=False, pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold", no_wrap=bool(wrap) and column not in wrap)
    return grid


def row(grid: Table, *cells: Any) -> None:
    grid.add_row(*(Text(str(c)) if not isinstance(c, Text) else c for c in cells))


def print_json(console: Console, document: Any) -> None:
    """Machine-readable output: plain JSON (Decimals as numbers), no wrapping or colour."""
    console.file.write(json.dumps(to_plain(document), indent=2, ensure_ascii=False, default=str) + "\n")


# --- what may be shown ---------------------------------------------------------------


MASK_MARK = "(masked)"
MAX_LIST_ITEMS = 5  # items of a list shown by default (a transcript has hundreds of turns)


def truncate(text: str, width: int | None = VALUE_WIDTH) -> str:
    """``text`` cut to ``width`` characters, saying how much was left out; a mask is never cut in half."""
    if width is None or len(text) <= width:
        return text
    # A cut inside "rec_…(masked)" (its shown prefix, the ellipsis or the mark) moves past the mark.
    mark = text.find(MASK_MARK, max(0, width - len(MASK_MARK) + 1))
    if 0 <= mark <= width + len("rec_…"):
        width = mark + len(MASK_MARK)
        if len(text) <= width:
            return text
    return f"{text[:width]}…(+{len(text) - width} chars)"


def mask_secret(value: str) -> str:
    """A credential shown only as its scheme and first characters: enough to tell live from test keys."""
    scheme, space, secret = value.partition(" ")
    if not space or scheme.lower() not in _AUTH_SCHEMES:
        scheme, secret = "", value
    prefix = secret[:4] if len(secret) >= 16 else ""
    masked = f"{prefix}…{MASK_MARK}" if prefix else f"***{MASK_MARK}"
    return f"{scheme} {masked}" if scheme else masked


class Redactor:
    """Hides credentials inside values before they are shown.

    The call's recording access token and the config's token and header
    values are secrets wherever they appear; a URL loses its userinfo and query
    values (a presigned link carries a signature and key id there).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 6}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, mask_secret(secret))
        if value.startswith(("http://", "https://")) and " " not in value:
            # The one reading of a url (push_url): no user info, no query values, capability paths masked.
            try:
                value = parse_push_url(value).recorded
            except ConfigError:
                value = "(a url that cannot be read safely: hidden)"
        return value

    def value(self, value: Any) -> Any:
        """A JSON value with every string in it redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


def shown(value: Any, redactor: Redactor, width: int | None = VALUE_WIDTH) -> str:
    """One value as an operator sees it: redacted, JSON for objects, quoted when empty, truncated."""
    if isinstance(value, str):
        text = redactor.text(value)
        return '""' if text == "" else truncate(text, width)
    return truncate(to_json(redactor.value(value)), width)


def shorten_strings(value: Any, width: int | None) -> Any:
    """A copy of a JSON value with long strings truncated (a transcript must not fill the screen)."""
    if width is None:
        return value
    if isinstance(value, str):
        return truncate(value, width)
    if isinstance(value, Mapping):
        return {k: shorten_strings(v, width) for k, v in value.items()}
    if isinstance(value, list):
        shortened = [shorten_strings(v, width) for v in value[:MAX_LIST_ITEMS]]
        if len(value) > MAX_LIST_ITEMS:
            shortened.append(f"…(+{len(value) - MAX_LIST_ITEMS} more items)")
        return shortened
    return value


def json_type(value: Any) -> str:
    """The JSON type a value is sent as."""
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"
