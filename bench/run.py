"""`make bench`: run every benchmark section, print its table, write bench/results.json.

Each section is a module in bench/ with ``run() -> dict[str, float]`` that
prints its own table; their figures are merged into one results file.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

SECTIONS = (
    "bench.engine",
    "bench.batch",
    "bench.cold_import",
    "bench.dynamodb_local",
    "bench.hanging_crm",
    "bench.outage",
    "bench.oauth",
)
RESULTS = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str]) -> int:
    wanted = [s for s in SECTIONS if not argv or s.rsplit(".", 1)[-1] in argv]
    figures: dict[str, float | str] = {}
    for name in wanted:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"[{name}] not present, skipped")
                continue
            raise
        print(f"\n== {name} ==", flush=True)
        started = time.perf_counter()
        figures.update(module.run())
        print(f"[{name}] done in {time.perf_counter() - started:.1f}s", flush=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous.update(figures)
    previous["machine"] = f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}"
    RESULTS.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
