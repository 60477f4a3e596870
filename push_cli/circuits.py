"""``post-call-push circuits``: each (destination, scope) circuit breaker, and closing one by hand.

A circuit belongs to a CRM destination (scheme://host:port) within one
tenant's scope (the bot's ``tenant_id``, else its ``bot_id``; contract §12):
a SaaS CRM serves every tenant from one host, and one tenant's failures
never hold back another's calls. The circuits live in the delivery-state
table (``PUSH_STATE_TABLE``) as ``circuit#<scope>#<destination>`` items,
written by Powertools' circuit breaker only when a circuit changes state: a
key that never failed has no item and is closed. Listing them is a Scan of
that table (it reads the delivery items too; a few cents for a million
items), so it is an operator's command, never the function's.

The same listing shows each *parked* destination (contract §14): a
``park#<scope>#<destination>`` item says its quota is spent until a reset
time (the CRM said the tenant's allowance is gone) or a chain of wake-ups
is arranged for it (a probe of its open circuit, or the release at the
reset), and the state table's ``waits_on-due-index`` says how many calls
wait on it. Those calls spend no attempt while they wait and go out within
a minute of the reset or of the probe that closes the circuit.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from crm_push.adapters.destination_gate import CircuitSettings, CircuitView, close_circuit, list_circuits
from crm_push.adapters.dynamodb import from_item
from crm_push.adapters.parking import PARK_PREFIX, ParkingTable
from crm_push.clock import from_epoch, iso_utc
from crm_push.errors import ConfigError
from crm_push.ports import GateKey
from crm_push.push_url import parse_push_url
from push_cli.context import EXIT_OK, Context, fail
from push_cli.display import print_json, row, table

STATE_WORDS = {"OPEN": "open", "HALF_OPEN": "half-open (probing)", "CLOSED": "closed"}


def add_parser(commands: Any, parents: list[argparse.ArgumentParser], epilog: str) -> argparse.ArgumentParser:
    settings = CircuitSettings()
    parser: argparse.ArgumentParser = commands.add_parser(
        "circuits",
        parents=parents,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="each (CRM destination, scope) circuit breaker: state, failures, next probe; close one by hand",
        description="List the circuits that have ever opened, one per CRM destination and scope (the bot's "
        "tenant_id, else its bot_id: one tenant's failures never hold back another's calls to the same host), "
        "with their state, the consecutive failures that opened them (as counted by the container that tripped "
        "them) and when the next probe goes. An open circuit holds that scope's calls to that destination (no "
        f"attempt spent) and lets one call through as a probe every {settings.recovery_timeout_seconds} s; the "
        "probe's success closes it. --close closes one by hand, e.g. when the CRM's owner says it is back.",
    )
    parser.add_argument(
        "--close",
        metavar="DESTINATION",
        help="close this destination's circuit for --scope: scheme://host:port as listed, or any url of it "
        "(the bot's url will do)",
    )
    parser.add_argument(
        "--scope",
        metavar="SCOPE",
        help="the tenant_id (else bot_id) whose circuit --close closes; without --close, list only its circuits",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def cmd_circuits(args: argparse.Namespace, ctx: Context, console: Console, clock: Any = None) -> int:
    state_table = ctx.state_table
    if not state_table:
        fail("no delivery-state table: pass --state-table or set PUSH_STATE_TABLE")
    scope = _scope(args.scope)
    if args.close:
        if scope is None:
            fail("--close needs --scope: circuits are per (destination, scope); `circuits` lists both")
        return _close(_destination(str(args.close)), scope, args, ctx, console, state_table)
    circuits = list_circuits(ctx.dynamodb(), state_table, scope=scope)
    parked = list_parked(ctx.dynamodb(), state_table, scope=scope)
    render_circuits(console, circuits, now=datetime.now(UTC), as_json=args.json, scope=scope, parked=parked)
    return EXIT_OK


# --- parked destinations (contract §14) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParkedView:
    """A (destination, scope) whose calls wait: its quota's reset, the chain arranged for it, how many wait."""

    destination: str
    scope: str
    quota_until: datetime | None  # the quota's reset, while it is spent
    chain: str | None  # "probe" (its circuit is open) or "release" (at the reset), when one is arranged
    chain_due: datetime | None
    waiting: int  # calls whose delivery waits on it (the state table's waits_on-due-index)

    def as_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "scope": self.scope,
            "quota_until": iso_utc(self.quota_until) if self.quota_until else None,
            "chain": self.chain,
            "chain_due": iso_utc(self.chain_due) if self.chain_due else None,
            "waiting": self.waiting,
        }

    def spent(self, now: datetime) -> bool:
        return self.quota_until is not None and self.quota_until > now


def read_parked(client: Any, table_name: str, key: GateKey) -> ParkedView | None:
    """One (destination, scope)'s parking, for ``status``: None when nothing is parked there."""
    item = client.get_item(TableName=table_name, Key={"pk": {"S": f"{PARK_PREFIX}{key.label}"}}, ConsistentRead=True)
    found = item.get("Item")
    waiting = len(ParkingTable(client, table_name).waiting(key))
    if not found and not waiting:
        return None
    return _parked_view(key, from_item(found or {}), waiting)


def list_parked(client: Any, table_name: str, *, scope: str | None = None) -> list[ParkedView]:
    """Every ``park#`` item of the state table (or of one scope), with the calls waiting on each.

    A Scan, like ``list_circuits``: an operator's command. The waiting calls
    are a Query of the sparse index per destination.
    """
    prefix = PARK_PREFIX if scope is None else f"{PARK_PREFIX}{scope}#"
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "FilterExpression": "begins_with(pk, :prefix)",
        "ExpressionAttributeValues": {":prefix": {"S": prefix}},
    }
    parking = ParkingTable(client, table_name)
    views: list[ParkedView] = []
    while True:
        page = client.scan(**kwargs)
        for raw in page.get("Items", []):
            item = from_item(raw)
            key = GateKey.from_label(str(item["pk"]).removeprefix(PARK_PREFIX))
            if scope is not None and key.scope != scope:
                continue  # the prefix of scope "a" also matches scope "a#b"
            views.append(_parked_view(key, item, len(parking.waiting(key))))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return sorted(views, key=lambda v: (-v.waiting, v.destination, v.scope))


def _parked_view(key: GateKey, item: dict[str, Any], waiting: int) -> ParkedView:
    quota = item.get("quota_until")
    due = item.get("chain_due")
    chain = item.get("chain")
    return ParkedView(
        key.destination,
        key.scope,
        from_epoch(int(quota)) if quota is not None else None,
        str(chain) if chain else None,
        from_epoch(int(due)) if due is not None else None,
        waiting,
    )


def parked_line(parked: ParkedView, now: datetime) -> str:
    """One sentence for ``status``: why the destination's calls wait and until when."""
    waiting = f"{parked.waiting} call(s) wait on it"
    if parked.spent(now):
        assert parked.quota_until is not None
        return (
            f"Quota of {parked.destination} spent until {_when(parked.quota_until, now)}: {waiting}, no attempt "
            'spent; they go out within a minute of the reset (docs/runbook.md, "A CRM\'s quota is spent")'
        )
    if parked.chain == "probe":
        probe = _when(parked.chain_due, now)
        return f"{parked.destination} is being probed (its circuit is open; next probe {probe}): {waiting}"
    return f"{parked.destination}: {waiting}; they go out at their next wake-up or the destination's recovery"


def render_parked(console: Console, parked: list[ParkedView], now: datetime) -> None:
    if not parked:
        return
    grid = table(
        "Parked destinations (calls waiting on them)", "destination", "scope", "why", "until", "waiting", "next"
    )
    for view in parked:
        if view.spent(now):
            why, until = "quota spent", _when(view.quota_until, now)
        elif view.chain == "probe":
            why, until = "circuit open", "-"
        else:
            why, until = "recovering", "-"
        chain = f"{view.chain} {_when(view.chain_due, now)}" if view.chain else "-"
        row(grid, view.destination, view.scope, why, until, view.waiting, chain)
    console.print(grid)
    if any(v.spent(now) for v in parked):
        console.print(
            "A spent quota is the CRM saying the tenant's allowance is gone (Salesforce REQUEST_LIMIT_EXCEEDED, "
            "HubSpot DAILY, a Retry-After over 15 min): its calls wait without spending attempts and go out within "
            'a minute of the reset. Nothing to do unless the reset is far (docs/runbook.md, "A CRM\'s quota is spent").'
        )


def _scope(given: str | None) -> str | None:
    if given is None:
        return None
    scope = given.strip()
    if not scope:
        fail("--scope is a tenant_id or bot_id; it cannot be empty")
    return scope


def _destination(given: str) -> str:
    """The url's destination, read as the push reads it; credentials, path and query are dropped, never printed."""
    try:
        return parse_push_url(given.strip()).destination
    except ConfigError as exc:  # its message never quotes the url
        fail(f"--close takes a destination like https://crm.example.com:443 (or a url of it): {exc}")


def _close(
    destination: str, scope: str, args: argparse.Namespace, ctx: Context, console: Console, state_table: str
) -> int:
    key = GateKey(destination=destination, scope=scope)
    if not close_circuit(ctx.dynamodb(), state_table, key):
        fail(
            f"{destination} has no circuit for scope {scope} in {state_table}: it has never opened, "
            "so there is nothing to close (`circuits` lists the ones that have)"
        )
    settings = CircuitSettings()
    if args.json:
        print_json(console, {"closed": {"destination": destination, "scope": scope}})
    else:
        console.print(
            f"Closed the circuit of {destination} for scope {scope}; other scopes' circuits on it are unchanged. "
            f"Containers notice within {settings.state_cache_seconds} s; calls already held come back at their "
            f"scheduled time (at most {settings.recovery_timeout_seconds} s away)."
        )
    return EXIT_OK


def render_circuits(
    console: Console,
    circuits: list[CircuitView],
    *,
    now: datetime,
    as_json: bool,
    scope: str | None = None,
    parked: list[ParkedView] | None = None,
) -> None:
    settings = CircuitSettings()
    if as_json:
        print_json(
            console,
            {
                "circuits": [c.as_json() for c in circuits],
                "parked": [p.as_json() for p in parked or []],
                "scope": scope,
                "failure_threshold": settings.failure_threshold,
                "recovery_timeout_seconds": settings.recovery_timeout_seconds,
            },
        )
        return
    render_parked(console, parked or [], now)
    if not circuits:
        whose = f"for scope {scope}" if scope is not None else "for any scope"
        console.print(f"No circuit has opened {whose}: every destination is called normally.")
        return
    grid = table(
        "Circuits by destination and scope", "destination", "scope", "state", "failures", "opened at", "next probe"
    )
    for circuit in circuits:
        row(
            grid,
            circuit.destination,
            circuit.scope,
            STATE_WORDS.get(circuit.state, circuit.state),
            circuit.failure_count if circuit.state != "CLOSED" else "-",
            _when(circuit.opened_at, now),
            _when(circuit.next_probe_at, now),
        )
    console.print(grid)
    not_closed = [c for c in circuits if c.state != "CLOSED"]
    if not not_closed:
        return
    console.print(
        f"{len(not_closed)} circuit(s) not closed: those scopes' calls to those destinations are held without "
        "spending an attempt and go out once a probe succeeds. Usually nothing to do but tell the CRM's owner "
        '(docs/runbook.md, "A CRM is down"). To close one by hand: '
        "post-call-push circuits --close DESTINATION --scope SCOPE"
    )
    scopes_per_destination = Counter(c.destination for c in not_closed)
    shared = sorted(d for d, n in scopes_per_destination.items() if n > 1)
    for destination in shared:
        # Several tenants failing on one host at once points at the CRM itself, not one tenant's account.
        console.print(
            f"{destination} is failing for {scopes_per_destination[destination]} scopes: likely the CRM itself."
        )


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = round((moment - now).total_seconds())
    relative = f"in {seconds} s" if seconds >= 0 else f"{-seconds} s ago"
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S')}Z ({relative})"
