"""Keeps the AWS SDK's wire logging out of the logs, whatever the log level (contract §11).

With the root logger at DEBUG, botocore logs every request's params ("Making
request for ... with params"), every response body ("Response body:") and the
signing material (canonical request, string to sign, with the session token).
For this function those are the Bots ``GetItem`` response (a plaintext token
and header values), the Secrets Manager ``GetSecretValue`` response and the
SSM ``GetParameter`` response (the resolved credentials themselves).

A filter on each logger that emits such records drops them. Filters on a
logger only see that logger's own records (not its children's, not the ones
propagated to it), so the filter is installed on each emitting logger by name;
a level set on ``botocore`` would not do, since anyone can lower it again.
"""

from __future__ import annotations

import logging
import threading

# Every record of these carries signing material: the canonical request names the security token.
_SIGNING_LOGGERS = ("botocore.auth",)
# These log params, bodies or items as %-arguments next to harmless lines with numbers only.
_WIRE_LOGGERS = (
    "botocore.endpoint",
    "botocore.parsers",
    "botocore.awsrequest",
    "botocore.handlers",
    "botocore.utils",
    "botocore.discovery",
    "botocore.httpchecksum",
    "boto3.resources.action",
    "boto3.resources.collection",
    "boto3.resources.factory",
    "boto3.dynamodb.table",
)
_SCALARS = (int, float, bool, type(None))


class AwsWireFilter(logging.Filter):
    """Drops AWS SDK records that may carry request params, response bodies or signing material."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in _SIGNING_LOGGERS:
            return False
        args = record.args
        if not args:
            # No %-arguments: a fixed text of the SDK's own ("No retry needed."), unless an object was logged.
            return isinstance(record.msg, str)
        values = args.values() if isinstance(args, dict) else args
        # Text, maps, bytes and objects may all be data from the wire; counts and durations are not.
        return all(isinstance(value, _SCALARS) for value in values)


_FILTER = AwsWireFilter("aws-wire")
_lock = threading.Lock()


def install() -> None:
    """Install the filter on every logger that can carry AWS wire data. Idempotent; call once per process."""
    with _lock:
        for name in (*_SIGNING_LOGGERS, *_WIRE_LOGGERS):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


def uninstall() -> None:
    """Remove the filter again (tests that show what leaks without it)."""
    with _lock:
        for name in (*_SIGNING_LOGGERS, *_WIRE_LOGGERS):
            logging.getLogger(name).removeFilter(_FILTER)


def installed() -> bool:
    return all(_FILTER in logging.getLogger(name).filters for name in (*_SIGNING_LOGGERS, *_WIRE_LOGGERS))
