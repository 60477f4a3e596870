"""The rules of the call item's result and ``integration_log`` (contract §9, §12), shared by every writer.

* A result only moves forward: more attempts, or as many and a later
  ``pushed_at`` (ISO-8601 UTC with milliseconds sorts as text). A result
  without ``attempts`` was written before durable delivery: it is final, and
  only a replay overwrites it.
* Each attempt is logged once: a write appends only the entries after the
  attempt the stored result names, however many writers (a late record
  message, the next attempt, a trigger finishing a pending write) carry
  the same entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def entry_attempts(entry: Mapping[str, Any]) -> int | None:
    value = entry.get("attempts")
    return None if value is None else int(value)


def attempts_before(entries: Sequence[Mapping[str, Any]]) -> int | None:
    """The attempt a writer believes the call already shows: the one before its first entry (None: no entries)."""
    counted = [n for n in (entry_attempts(e) for e in entries) if n is not None]
    return max(0, min(counted) - 1) if counted else None


def entries_after(entries: Sequence[Mapping[str, Any]], attempts: int, pushed_at: str = "") -> list[dict[str, Any]]:
    """The entries a call whose result names (``attempts``, ``pushed_at``) does not carry yet.

    Entries sort as results do: by attempts, then time (a successful probe is
    not an attempt: it comes after the attempt it follows). Entries without
    a count always stay.
    """
    kept = []
    for entry in entries:
        counted = entry_attempts(entry)
        if counted is None or (counted, str(entry.get("pushed_at") or "")) > (attempts, pushed_at):
            kept.append(dict(entry))
    return kept


def moves_forward(stored: Any, result: Mapping[str, Any]) -> bool:
    """Whether ``result`` may replace ``stored`` without a replay."""
    if not isinstance(stored, Mapping):
        return True
    if stored.get("attempts") is None:
        return False
    stored_attempts, attempts = int(stored["attempts"]), int(result.get("attempts") or 0)
    if stored_attempts != attempts:
        return stored_attempts < attempts
    return str(stored.get("pushed_at") or "") < str(result.get("pushed_at") or "")


def shown_attempts(stored: Any) -> int:
    """The attempt a stored result names (0 without one)."""
    if not isinstance(stored, Mapping) or stored.get("attempts") is None:
        return 0
    return int(stored["attempts"])


def shown_position(stored: Any) -> tuple[int, str]:
    """Where a stored result stands: its attempts and its time ("" without a result)."""
    if not isinstance(stored, Mapping):
        return 0, ""
    return shown_attempts(stored), str(stored.get("pushed_at") or "")
