"""``post-call-push circuits``: each CRM destination's circuit breaker, and closing one by hand.

The circuits live in the delivery-state table (``PUSH_STATE_TABLE``) as
``circuit#<destination>`` items, written by Powertools' circuit breaker only
when a circuit changes state: a destination that never failed has no item
and is closed. Listing them is a Scan of that table (it reads the delivery
items too; a few cents for a million items), so it is an operator's command,
never the function's.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from crm_push.adapters.destination_gate import CircuitSettings, CircuitView, close_circuit, list_circuits
from crm_push.push import destination_of
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
        help="each CRM destination's circuit breaker: state, failures, next probe; close one by hand",
        description="List the destinations whose circuit breaker has ever opened, with their state, the "
        "consecutive failures that opened it (as counted by the container that tripped it) and when the next "
        f"probe goes. An open circuit holds that destination's calls (no attempt spent) and lets one call through "
        f"as a probe every {settings.recovery_timeout_seconds} s; the probe's success closes it. --close closes "
        "one by hand, e.g. when the CRM's owner says it is back.",
    )
    parser.add_argument(
        "--close",
        metavar="DESTINATION",
        help="close this destination's circuit: scheme://host:port, or any url of it (the bot's url will do)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def cmd_circuits(args: argparse.Namespace, ctx: Context, console: Console, clock: Any = None) -> int:
    state_table = ctx.state_table
    if not state_table:
        fail("no delivery-state table: pass --state-table or set PUSH_STATE_TABLE")
    if args.close:
        return _close(args, ctx, console, state_table)
    circuits = list_circuits(ctx.dynamodb(), state_table)
    render_circuits(console, circuits, now=datetime.now(UTC), as_json=args.json)
    return EXIT_OK


def _close(args: argparse.Namespace, ctx: Context, console: Console, state_table: str) -> int:
    given = str(args.close).strip()
    if not given.lower().startswith(("http://", "https://")):
        fail("--close takes a destination like https://crm.example.com:443 (or a url of it)")
    destination = destination_of(given)  # drops credentials, path and query: never printed
    if not close_circuit(ctx.dynamodb(), state_table, destination):
        fail(f"{destination} has no circuit in {state_table}: it has never opened, so there is nothing to close")
    settings = CircuitSettings()
    if args.json:
        print_json(console, {"closed": destination})
    else:
        console.print(
            f"Closed the circuit of {destination}. Containers notice within {settings.state_cache_seconds} s; calls "
            f"already held come back at their scheduled time (at most {settings.recovery_timeout_seconds} s away)."
        )
    return EXIT_OK


def render_circuits(console: Console, circuits: list[CircuitView], *, now: datetime, as_json: bool) -> None:
    settings = CircuitSettings()
    if as_json:
        print_json(
            console,
            {
                "circuits": [c.as_json() for c in circuits],
                "failure_threshold": settings.failure_threshold,
                "recovery_timeout_seconds": settings.recovery_timeout_seconds,
            },
        )
        return
    if not circuits:
        console.print("No circuit has opened: every destination is called normally.")
        return
    grid = table("Circuits by destination", "destination", "state", "failures", "opened at", "next probe")
    for circuit in circuits:
        row(
            grid,
            circuit.destination,
            STATE_WORDS.get(circuit.state, circuit.state),
            circuit.failure_count if circuit.state != "CLOSED" else "-",
            _when(circuit.opened_at, now),
            _when(circuit.next_probe_at, now),
        )
    console.print(grid)
    not_closed = [c for c in circuits if c.state != "CLOSED"]
    if not_closed:
        console.print(
            f"{len(not_closed)} destination(s) spared: their calls are held without spending an attempt and go "
            "out once a probe succeeds. Usually nothing to do but tell the CRM's owner (docs/runbook.md, "
            '"A CRM is down"). To close one by hand: post-call-push circuits --close DESTINATION'
        )


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = round((moment - now).total_seconds())
    relative = f"in {seconds} s" if seconds >= 0 else f"{-seconds} s ago"
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S')}Z ({relative})"
