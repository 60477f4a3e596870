"""Cold start of the handler module against the bare boto3 client it cannot do without.

Each figure is the median of ``RUNS`` fresh interpreters, timed inside the
child from before its first import (interpreter start-up excluded):

* ``cold_import_ms``    - ``import app`` plus ``app._runtime()`` (settings, the
  DynamoDB client, the CRM pool, the worker pool): the container's init, with
  table names, a fake region and credentials in the environment, no network;
* ``boto3_client_ms``   - ``import boto3; boto3.client("dynamodb")`` alone;
* ``cold_import_ratio`` - ``cold_import_ms / boto3_client_ms``.

Our own modules are compiled from source at import, as in Lambda where the
function and layer ship without ``.pyc`` files (the children never write
bytecode); ``own_compile_ms`` is how much of ``cold_import_ms`` that is (best
of 5, in process). A step table then shows where the time over the bare
client goes.

    .venv/bin/python -m bench.run cold_import
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7
GOAL_RATIO = 1.3

_PATHS = f"sys.path[:0] = [{str(ROOT / 'layers' / 'common')!r}, {str(ROOT / 'functions' / 'post_call_push')!r}]"
_APP = "import app\napp._runtime()"
_BOTO3 = "import boto3\nboto3.client('dynamodb')"
_TIMED = (
    "import sys, time\n{paths}\nstarted = time.perf_counter()\n{body}\nprint((time.perf_counter() - started) * 1000)\n"
)

# Where the time goes, step by step in app.py's own import order, in one fresh process (each
# step after the ones before). The order matters: Powertools' batch utility imports its
# pydantic parser models only when pydantic is already loaded, and app.py imports it first.
_STEPS = (
    ("import boto3", "import boto3"),
    ("asyncio, concurrent.futures", "import asyncio, concurrent.futures"),
    ("Powertools Logger, Metrics", "from aws_lambda_powertools import Logger, Metrics"),
    ("Powertools batch, stream data classes", "from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor"),
    ("crm_push.config (pydantic, templates)", "import crm_push.config"),
    ("crm_push.models (EventBridge model)", "import crm_push.models"),
    ("crm_push.push, adapters, wiring", "import crm_push.push, crm_push.wiring"),
    ("app module body", "import app"),
    ("app._runtime() (DynamoDB client, pools)", "app._runtime()"),
)
_STEPPED = (
    "import sys, time\n{paths}\nrows = []\n"
    "for name, code in {steps!r}:\n"
    "    started = time.perf_counter()\n"
    "    exec(code, globals())\n"
    "    rows.append(f'{{name}}\\t{{(time.perf_counter() - started) * 1000:.1f}}')\n"
    "print('\\n'.join(rows))\n"
)


def _env() -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "POWERTOOLS_", "PUSH_", "CLAIM_", "PYTHON"))
        and k not in ("CALLS_TABLE", "BOTS_TABLE", "PUSH_STATE_TABLE", "PUBLIC_BASE_URL", "RECORDINGS_BUCKET")
    }
    return {
        **keep,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_SESSION_TOKEN": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "CALLS_TABLE": "Calls",
        "BOTS_TABLE": "Bots",
        "PUSH_STATE_TABLE": "PushState",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _child(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tempfile.gettempdir(),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cold-import child failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


def _medians() -> tuple[float, float]:
    app_code = _TIMED.format(paths=_PATHS, body=_APP)
    boto3_code = _TIMED.format(paths=_PATHS, body=_BOTO3)
    _child(app_code)  # warm the OS file cache first
    _child(boto3_code)
    app_ms, boto3_ms = [], []
    for _ in range(RUNS):  # interleaved, so a busy moment on the machine hits both
        app_ms.append(float(_child(app_code)))
        boto3_ms.append(float(_child(boto3_code)))
    return statistics.median(app_ms), statistics.median(boto3_ms)


def _own_compile_ms() -> float:
    """Compiling our sources (the function and the layer) to bytecode: paid on every cold start."""
    sources = [ROOT / "functions" / "post_call_push" / "app.py", *sorted((ROOT / "layers" / "common").rglob("*.py"))]
    texts = [(str(path), path.read_text()) for path in sources]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for name, text in texts:
            compile(text, name, "exec", dont_inherit=True)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _own_bytecode_present() -> bool:
    return any((ROOT / d / "__pycache__").is_dir() for d in ("layers/common/crm_push", "functions/post_call_push"))


def run() -> dict[str, float]:
    app_ms, boto3_ms = _medians()
    steps = _child(_STEPPED.format(paths=_PATHS, steps=_STEPS))
    compile_ms = _own_compile_ms()

    figures = {
        "cold_import_ms": round(app_ms, 1),
        "boto3_client_ms": round(boto3_ms, 1),
        "cold_import_ratio": round(app_ms / boto3_ms, 2),
        "own_compile_ms": round(compile_ms, 1),
    }
    print(f"{'figure':<24} {'value':>8}  goal")
    print(f"{'cold_import_ms':<24} {figures['cold_import_ms']:>8.1f}")
    print(f"{'boto3_client_ms':<24} {figures['boto3_client_ms']:>8.1f}")
    print(f"{'cold_import_ratio':<24} {figures['cold_import_ratio']:>8.2f}  <= {GOAL_RATIO}")
    print(f"{'own_compile_ms':<24} {compile_ms:>8.1f}  (part of cold_import_ms: no .pyc is shipped)")
    if _own_bytecode_present():
        print("  note: __pycache__ exists for our modules, so cold_import_ms did not compile them")
    print("\n  where the time goes (one fresh process, each step after those above, ms):")
    for line in steps.splitlines():
        name, ms = line.split("\t")
        print(f"    {name:<44} {float(ms):>7.1f}")
    return figures


if __name__ == "__main__":
    print(run())
