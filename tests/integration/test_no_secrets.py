"""No credential ever reaches a log line, a metric, the result or integration_log."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from scripts.local_crm import CrmAnswer
from tests.conftest import Stack, insert_event

TOKEN = "Bearer tok-9f8e7d6c5b4a"
HEADER_SECRET = "hdr-secret-31337"
USERINFO_PASSWORD = "pw-userinfo-4242"
QUERY_SECRET = "qs-secret-5151"
SECRETS = (TOKEN, "tok-9f8e7d6c5b4a", HEADER_SECRET, USERINFO_PASSWORD, QUERY_SECRET)


@pytest.mark.parametrize(
    ("config", "answer"),
    [
        ({"token": TOKEN}, CrmAnswer(200)),
        ({"token": TOKEN}, CrmAnswer(401, b'{"error":"bad token"}')),
        ({"headers": {"X-Api-Key": HEADER_SECRET}}, CrmAnswer(503, b"busy")),
        ({"headers": {"X-Api-Key": HEADER_SECRET, "X-Bad": "a\r\nb"}}, CrmAnswer(200)),
        ({"token": TOKEN, "method": "GET"}, CrmAnswer(200)),
    ],
    ids=["ok", "rejected", "scheduled-503", "invalid-header", "get"],
)
def test_secrets_appear_in_no_log_line_and_no_record(
    stack: Stack,
    handler: Any,
    sample_call: dict[str, Any],
    sample_bot: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    config: dict[str, Any],
    answer: CrmAnswer,
) -> None:
    # Given a config whose URL, token and headers all carry credentials
    host = stack.crm.url.removeprefix("http://")
    sample_bot["post_call_push"] = {
        **{k: v for k, v in sample_bot["post_call_push"].items() if k not in ("token", "headers")},
        "url": f"http://crm-user:{USERINFO_PASSWORD}@{host}/in?api_key={QUERY_SECRET}",
        **config,
    }
    stack.crm.responder = lambda _req: answer
    stack.put_bot(sample_bot)
    stack.put_call(sample_call)
    # Every logger at its most verbose, the AWS SDK's too: its wire lines (which print whole
    # bot items) are dropped by crm_push.logsafety, installed when the function wires itself.
    for name in ("crm_push", "post-call-push", "app", "botocore", "boto3", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)

    # When the whole push runs
    handler(insert_event(sample_call))

    # Then no secret is in stdout (Powertools JSON logs and EMF metrics), any log record, or the call item
    stored = stack.get_call(sample_call["call_id"])
    assert stored["post_call_push_result"]["status"] in ("ok", "rejected", "failed")
    everything = "\n".join(
        [
            capsys.readouterr().out,
            *(record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records),
            json.dumps(stored["post_call_push_result"], default=str),
            json.dumps(stored["integration_log"], default=str),
        ]
    )
    for secret in SECRETS:
        assert secret not in everything, f"{secret!r} leaked"
    assert "crm-user" not in json.dumps(stored["post_call_push_result"], default=str)
