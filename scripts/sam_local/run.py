"""`make sam-local`: the real handler in a Lambda container, under `sam local`, against the local stack.

    .venv/bin/python -m scripts.sam_local.run [--image TAG]   # make sam-local starts Docker first

0. Picks the base image in the background while 1 and 2 run
   (build_image.sh: AWS's when it can be pulled, else the cached stand-in,
   built on the first run).
1. Starts the local stack (scripts/local_stack.py: DynamoDB Local, moto, a
   local CRM), listening on the Docker bridge address so the function's
   container can reach it, and seeds the sample bot and call from events/.
2. Writes the local copy of template.yaml (local_template.py) and runs
   `sam build` for this machine's architecture (the Architecture parameter;
   the deployed default stays arm64) into .aws-sam/sam-local/.
3. `sam local invoke -e events/stream_insert.json`: shows the request the CRM
   received and the result written back on the call.
4. `sam local start-lambda` and boto3 `lambda.invoke` of
   events/eventbridge_results_stored.json, naming a second seeded call (the
   first is already pushed), then the unmodified event again: the first call
   must not reach the CRM a second time.

The last line, ``sam-local summary: {...}``, is what scripts/sam_local/smoke.sh
checks. Exit status 0 only when each push reached the CRM exactly once with
status ok and the repeated event reached it not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.local_stack import LocalStack, masked_headers
from scripts.sam_local.local_template import FUNCTION_ID, SET_BY_SAM, write_local_template

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EVENTS = ROOT / "events"
WORK = ROOT / ".aws-sam" / "sam-local"
SAM = ROOT / ".sam-venv" / "bin" / "sam"
# sam build looks for python3.12 on PATH; pyenv answers for it only when asked to.
PYENV_VERSION = "3.11.7:3.12.1:3.13.0"
STAND_IN_NOTE = (
    "a local stand-in for AWS's image: Debian bookworm + CPython 3.12 (pyenv) + awslambdaric,"
    " not Amazon Linux 2023; SAM adds its own Runtime Interface Emulator"
)
START_LAMBDA_READY_SECONDS = 90
# A cold container plus a 10 s CRM timeout fits easily; the function's own Timeout is 120 s.
INVOKE_READ_TIMEOUT_SECONDS = 180


def _say(title: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {title}{plain}", flush=True)


@dataclass
class InvokeOutcome:
    """What one invocation did, as the CRM and the call item saw it."""

    name: str
    call_id: str
    seconds: float
    expected_crm_requests: int
    crm_requests: int
    status: str | None
    response: Any
    function_error: str | None = None

    def as_summary(self) -> dict[str, Any]:
        return {
            "invoke": self.name,
            "call_id": self.call_id,
            "seconds": round(self.seconds, 1),
            "expected_crm_requests": self.expected_crm_requests,
            "crm_requests": self.crm_requests,
            "status": self.status,
            "function_error": self.function_error,
        }


@dataclass
class Run:
    stack: LocalStack
    architecture: str
    env_vars_file: Path
    sam_env: dict[str, str]
    image: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    outcomes: list[InvokeOutcome] = field(default_factory=list)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = round(time.perf_counter() - started, 1)


# --- this machine --------------------------------------------------------------------------


def host_architecture() -> str:
    """The Lambda name of this machine's instruction set: containers run natively, not emulated."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    raise SystemExit(f"sam-local: Lambda has no architecture for this machine ({machine})")


def docker_bridge_address() -> str:
    """Where a container on Docker's default bridge reaches this host.

    SAM's ``--docker-network host`` does not give its containers the host's
    network (SAM 1.170 treats "host" as "no extra network"), so the host's
    127.0.0.1 is out of their reach: the local stack listens on the bridge's
    own address instead, which only this host and its containers can reach.
    """
    override = os.environ.get("SAM_LOCAL_HOST_ADDRESS")
    if override:
        return override
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False)
    for word, following in zip(shown.stdout.split(), shown.stdout.split()[1:], strict=False):
        if word == "inet":
            return following.split("/")[0]
    raise SystemExit("sam-local: no docker0 bridge address; set SAM_LOCAL_HOST_ADDRESS to where containers reach you")


class BaseImagePick:
    """build_image.sh running in the background: it may spend a minute building the stand-in."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [str(HERE / "build_image.sh")], stdout=subprocess.PIPE, text=True, start_new_session=True
        )

    def wait(self) -> tuple[str, float]:
        """The image's name, and how long the run waited for it (beyond the work it overlapped)."""
        started = time.perf_counter()
        out, _ = self._process.communicate()
        if self._process.returncode != 0:
            raise SystemExit("sam-local: no base image (see the build output above)")
        return out.split()[-1], time.perf_counter() - started

    def stop(self) -> None:
        if self._process.poll() is None:  # the run failed before it needed the image
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=30)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# --- SAM -----------------------------------------------------------------------------------


def _sam(run: Run, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SAM), *map(str, arguments)], env=run.sam_env, capture_output=True, text=True, check=False, cwd=ROOT
    )


def _fail(what: str, process: subprocess.CompletedProcess[str]) -> None:
    print(f"{what} failed (exit {process.returncode}):", file=sys.stderr)
    print((process.stdout + process.stderr)[-6000:], file=sys.stderr)
    raise SystemExit(1)


def sam_build(run: Run, template: Path) -> Path:
    _say(f"sam build ({run.architecture}) into {WORK.relative_to(ROOT)}/build")
    with run.timed("sam_build_s"):
        process = _sam(
            run,
            "build",
            # The whole template: SAM keeps its build cache (build.toml) only for full builds.
            "--template-file",
            template,
            "--base-dir",
            ROOT,
            "--build-dir",
            WORK / "build",
            "--cache-dir",
            WORK / "cache",
            "--cached",
            "--parameter-overrides",
            f"Architecture={run.architecture}",
        )
    if process.returncode != 0:
        _fail("sam build", process)
    print(f"built in {run.timings['sam_build_s']} s (layer wheels for {run.architecture})")
    return WORK / "build" / "template.yaml"


def _common_options(run: Run, built: Path) -> list[str | Path]:
    return [
        "--template-file",
        built,
        "--env-vars",
        run.env_vars_file,
        "--parameter-overrides",
        f"Architecture={run.architecture}",
        # Without it SAM asks a registry for the image first, and none is reachable here.
        "--skip-pull-image",
        "--invoke-image",
        run.image,
    ]


def _report_line(logs: str) -> str:
    return next((line.strip() for line in reversed(logs.splitlines()) if line.startswith("REPORT")), "")


# --- what happened -------------------------------------------------------------------------


def _show_crm_request(run: Run, index: int, *, full: bool) -> None:
    request = run.stack.crm.requests[index]
    masked = masked_headers(request.headers)
    print(f"{request.method} {request.path}")
    if not full:
        print(f"  Idempotency-Key: {request.headers.get('Idempotency-Key')}; body {len(request.body)} bytes")
        return
    for name, value in request.headers.items():
        print(f"  {name}: {masked.get(name, value)}")
    print(json.dumps(request.json(), indent=2, ensure_ascii=False))


def _show_result(run: Run, call_id: str) -> str | None:
    from crm_push.jsonvalues import to_plain

    stored = run.stack.get_call(call_id)
    result = to_plain(stored.get("post_call_push_result"))
    print(json.dumps(result, indent=2))
    print(
        f"integration_log entries: {len(stored.get('integration_log', []))}; last event: "
        f"{json.dumps(to_plain(stored.get('events', [])[-1:]))}"
    )
    return result.get("status") if isinstance(result, dict) else None


def _outcome(
    run: Run,
    name: str,
    call_id: str,
    seconds: float,
    before: int,
    response: Any,
    error: str | None,
    *,
    expected_crm_requests: int,
    full: bool,
) -> InvokeOutcome:
    received = len(run.stack.crm.requests) - before
    _say("what the CRM received")
    if not received:
        print("nothing")
    for index in range(before, before + received):
        _show_crm_request(run, index, full=full)
    _say(f"post_call_push_result written back on {call_id}")
    status = _show_result(run, call_id)
    outcome = InvokeOutcome(name, call_id, seconds, expected_crm_requests, received, status, response, error)
    run.outcomes.append(outcome)
    return outcome


def invoke_stream_insert(run: Run, built: Path, call_id: str) -> None:
    _say("sam local invoke -e events/stream_insert.json")
    before = len(run.stack.crm.requests)
    started = time.perf_counter()
    process = _sam(
        run, "local", "invoke", FUNCTION_ID, "--event", EVENTS / "stream_insert.json", *_common_options(run, built)
    )
    seconds = time.perf_counter() - started
    run.timings["sam_local_invoke_s"] = round(seconds, 1)
    if process.returncode != 0:
        _fail("sam local invoke", process)
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    response = json.loads(lines[-1]) if lines else None
    print(f"handler returned {json.dumps(response)} in {seconds:.1f} s")
    print(_report_line(process.stderr))
    _outcome(
        run,
        "sam local invoke (stream INSERT)",
        call_id,
        seconds,
        before,
        response,
        None,
        expected_crm_requests=1,
        full=True,
    )


@contextmanager
def start_lambda(run: Run, built: Path) -> Iterator[str]:
    """``sam local start-lambda`` on a free port; its url. Stops it, and any container it left, afterwards."""
    port = _free_port("127.0.0.1")
    log_path = WORK / "start-lambda.log"
    containers_before = _lambda_containers()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(SAM),
                "local",
                "start-lambda",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                # LAZY: the first invoke starts the container, the next ones reuse it (Lambda's warm start).
                "--warm-containers",
                "LAZY",
                *map(str, _common_options(run, built)),
            ],
            env=run.sam_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped as one, never by the terminal's Ctrl-C twice
        )
    try:
        with run.timed("start_lambda_ready_s"):
            _wait_for_port(port, process, log_path)
        print(f"listening on 127.0.0.1:{port} after {run.timings['start_lambda_ready_s']} s (log: {log_path})")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)
        leftovers = sorted(_lambda_containers() - containers_before)
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)
            print(f"removed {len(leftovers)} container(s) start-lambda left behind")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    give_up = time.monotonic() + START_LAMBDA_READY_SECONDS
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise SystemExit(f"sam local start-lambda exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"sam local start-lambda did not listen within {START_LAMBDA_READY_SECONDS} s; see {log_path}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # SIGINT is SAM's Ctrl-C: it shuts its warm containers down before exiting.
    for signum, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        os.killpg(process.pid, signum)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _lambda_containers() -> set[str]:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", "label=sam.cli.container.type=lambda"],
        capture_output=True,
        text=True,
        check=False,
    )
    return set(listed.stdout.split())


def invoke_through_start_lambda(
    run: Run, endpoint: str, name: str, call_id: str, event: Mapping[str, Any], *, expected_crm_requests: int
) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name=run.sam_env["AWS_DEFAULT_REGION"],
        aws_access_key_id="local",
        aws_secret_access_key="local",  # start-lambda checks no signature
        # One attempt: a retried invoke would be a second delivery of the event.
        config=Config(read_timeout=INVOKE_READ_TIMEOUT_SECONDS, retries={"total_max_attempts": 1}),
    )
    before = len(run.stack.crm.requests)
    started = time.perf_counter()
    answer = client.invoke(FunctionName=FUNCTION_ID, Payload=json.dumps(event).encode())
    seconds = time.perf_counter() - started
    body = answer["Payload"].read()
    response = json.loads(body) if body else None
    error = answer.get("FunctionError")
    print(f"lambda.invoke answered {answer['StatusCode']} in {seconds:.2f} s: {json.dumps(response)}")
    if error:
        print(f"function error: {error}")
    _outcome(
        run, name, call_id, seconds, before, response, error, expected_crm_requests=expected_crm_requests, full=False
    )


# --- the run -------------------------------------------------------------------------------


def _sam_environment(function_env: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # SAM gives the container the credentials and region it runs with: the stack's fake ones.
    env.update({name: value for name, value in function_env.items() if name in SET_BY_SAM})
    env.pop("AWS_PROFILE", None)
    env.setdefault("PYENV_VERSION", PYENV_VERSION)
    env["SAM_CLI_TELEMETRY"] = "0"
    return env


def expectations_met(outcomes: list[InvokeOutcome]) -> list[str]:
    """What went wrong, if anything: each push reaches the CRM once with ok; a repeat not at all."""
    problems = []
    for outcome in outcomes:
        if outcome.crm_requests != outcome.expected_crm_requests:
            problems.append(
                f"{outcome.name}: {outcome.crm_requests} CRM request(s), expected {outcome.expected_crm_requests}"
            )
        if outcome.status != "ok" or outcome.function_error:
            problems.append(f"{outcome.name}: status {outcome.status}, function error {outcome.function_error}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.sam_local.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="base image to run the function in (default: what build_image.sh picks)")
    options = parser.parse_args(argv)
    if not SAM.exists():
        raise SystemExit(f"sam-local: no SAM CLI at {SAM.relative_to(ROOT)}; `make sam-local` installs it")
    if shutil.which("docker") is None:
        raise SystemExit("sam-local: no docker client; `make sam-local` installs and starts Docker")

    started = time.perf_counter()
    image_pick = None if options.image else BaseImagePick()
    try:
        run = _run(options.image, image_pick)
    finally:
        if image_pick is not None:
            image_pick.stop()
    run.timings["total_s"] = round(time.perf_counter() - started, 1)

    problems = expectations_met(run.outcomes)
    _say("summary")
    for problem in problems:
        print(f"NOT AS EXPECTED: {problem}")
    print(f"timings: {json.dumps(run.timings)}")
    summary = {
        "image": run.image,
        "stand_in": _is_stand_in(run.image),
        "architecture": run.architecture,
        "invokes": [outcome.as_summary() for outcome in run.outcomes],
        "timings": run.timings,
        "ok": not problems,
    }
    print(f"sam-local summary: {json.dumps(summary)}", flush=True)
    return 0 if not problems else 1


def _is_stand_in(image: str) -> bool:
    return not image.startswith("public.ecr.aws/lambda/")


def _run(image: str | None, image_pick: BaseImagePick | None) -> Run:
    address = docker_bridge_address()
    WORK.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(host=address, public_host=address, set_environ=False)
    with stack:
        bot, call = stack.seed_sample()
        function_env = stack.function_env()
        _say("local stack")
        print(
            f"DynamoDB Local {stack.endpoints.dynamodb}, moto {stack.endpoints.moto}, CRM {stack.crm_url}"
            f" (on the Docker bridge {address}, where the container reaches them)"
        )
        print(f"seeded bot {bot['bot_id']} and call {call['call_id']}")

        missing = write_local_template(ROOT / "template.yaml", WORK / "template.json", function_env)
        if missing:
            print(
                f"template.yaml does not declare {', '.join(missing)}; declared (empty) in the local copy"
                f" {(WORK / 'template.json').relative_to(ROOT)} only, as sam local --env-vars ignores undeclared names"
            )
        env_vars_file = WORK / "env.json"
        env_vars_file.write_text(
            json.dumps({FUNCTION_ID: {k: v for k, v in function_env.items() if k not in SET_BY_SAM}}, indent=1)
        )
        run = Run(stack, host_architecture(), env_vars_file, _sam_environment(function_env))
        built = sam_build(run, WORK / "template.json")

        if image_pick is not None:
            image, seconds = image_pick.wait()
            run.timings["waited_for_base_image_s"] = round(seconds, 1)
        assert image is not None
        run.image = image
        _say(f"base image {image}")
        print(STAND_IN_NOTE if _is_stand_in(image) else "AWS's own Lambda base image")

        invoke_stream_insert(run, built, call["call_id"])

        # The first call is pushed now, and pushing it again is exactly what the function must refuse:
        # the EventBridge event names a second call with the same content, then the first one again.
        second_call = {**call, "call_id": f"{call['call_id']}-eventbridge"}
        stack.put_call(second_call)
        results_stored = json.loads((EVENTS / "eventbridge_results_stored.json").read_text())
        for_second_call = {**results_stored, "detail": {**results_stored["detail"], "call_id": second_call["call_id"]}}

        _say("sam local start-lambda")
        with start_lambda(run, built) as endpoint:
            _say(f"lambda.invoke with events/eventbridge_results_stored.json, detail.call_id {second_call['call_id']}")
            invoke_through_start_lambda(
                run,
                endpoint,
                "start-lambda invoke (EventBridge)",
                second_call["call_id"],
                for_second_call,
                expected_crm_requests=1,
            )
            _say("lambda.invoke with events/eventbridge_results_stored.json as is (its call was pushed above)")
            invoke_through_start_lambda(
                run,
                endpoint,
                "start-lambda invoke (EventBridge, repeat)",
                call["call_id"],
                results_stored,
                expected_crm_requests=0,
            )
    return run


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
